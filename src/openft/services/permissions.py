"""Checkpoint permissions: an organisation shares one of its checkpoints
with others, named by their organisation ids (what ``GET /me`` shows), in
the place of OpenAI's projects.

A shared checkpoint is usable by the organisations it names as a model and
as the start of a job, and that is all: chat completions, eval runs and
model graders resolve it (``store.queries.models.read_tuned_weights``), a
job may continue from it, and nothing else of the owner's (the job, its
events, other checkpoints, exports) becomes visible. Only the owner lists,
adds and removes permissions; for anyone else the checkpoint does not exist
(404). Removing a permission stops its use at once: the next request, or a
job that has not started yet, no longer finds the model.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from openft import domain
from openft.errors import InvalidRequest, NotFound
from openft.schemas.permissions import (
    CheckpointPermission,
    CheckpointPermissionList,
    CreateCheckpointPermissionRequest,
    DeletedCheckpointPermission,
)
from openft.store.queries import jobs as job_queries
from openft.store.queries import models as queries
from openft.store.queries import orgs
from openft.store.queries.reads import Db
from openft.store.tables import CheckpointPermission as PermissionRow


async def _own_checkpoint(db: Db, org_id: str, checkpoint: str) -> None:
    if await job_queries.read_checkpoint_model(db, org_id, checkpoint) is None:
        raise NotFound("checkpoint", checkpoint, param="fine_tuned_model_checkpoint")


async def create(session: AsyncSession, org_id: str, checkpoint: str,
                 body: CreateCheckpointPermissionRequest) -> CheckpointPermissionList:
    await _own_checkpoint(session, org_id, checkpoint)
    rows = []
    for index, grantee in enumerate(body.project_ids):
        if grantee == org_id or await orgs.read_org_name(session, grantee) is None:
            why = "is your own organisation" if grantee == org_id else "is not an organisation id (see GET /me)"
            raise InvalidRequest(f"Invalid 'project_ids.{index}': {grantee!r} {why}.", param=f"project_ids.{index}",
                                 code="invalid_project_id")
        rows.append(PermissionRow(id=domain.new_id("checkpoint_permission"), checkpoint=checkpoint,
                                  owner_org_id=org_id, grantee_org_id=grantee, created_at=datetime.now(UTC)))
    kept = await queries.add_permissions(session, rows)
    data = [to_wire(r) for r in kept]
    return CheckpointPermissionList(data=data, first_id=data[0].id, last_id=data[-1].id, has_more=False)


async def list_all(db: Db, org_id: str, checkpoint: str, *, project_id: str | None, after: str | None,
                   limit: int, order: str) -> CheckpointPermissionList:
    await _own_checkpoint(db, org_id, checkpoint)
    page = await queries.list_permissions(db, org_id, checkpoint, grantee=project_id, after=after, limit=limit,
                                          newest_first=order == "descending")
    data = [to_wire(r) for r in page.items]
    return CheckpointPermissionList(data=data, first_id=data[0].id if data else None,
                                    last_id=data[-1].id if data else None, has_more=page.has_more)


async def delete(session: AsyncSession, org_id: str, checkpoint: str, permission_id: str
                 ) -> DeletedCheckpointPermission:
    await _own_checkpoint(session, org_id, checkpoint)
    if not await queries.delete_permission(session, org_id, checkpoint, permission_id):
        raise NotFound("checkpoint_permission", permission_id, param="permission_id")
    return DeletedCheckpointPermission(id=permission_id, deleted=True)


def to_wire(row: Any) -> CheckpointPermission:
    return CheckpointPermission(id=row.id, created_at=int(row.created_at.timestamp()), project_id=row.grantee_org_id)
