"""Checkpoint permissions (``client.fine_tuning.checkpoints.permissions``)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from openft.api.context import AppContext
from openft.api.deps import Caller, get_caller, get_ctx, wire
from openft.api.routing import OpenFTRoute
from openft.schemas.permissions import (
    CheckpointPermissionList,
    CreateCheckpointPermissionRequest,
    DeletedCheckpointPermission,
)
from openft.services import permissions as service

router = APIRouter(prefix="/fine_tuning/checkpoints", tags=["Fine-tuning"], route_class=OpenFTRoute)

CallerDep = Annotated[Caller, Depends(get_caller)]
CtxDep = Annotated[AppContext, Depends(get_ctx)]


@router.post("/{fine_tuned_model_checkpoint:path}/permissions", response_model=CheckpointPermissionList)
async def create_permissions(fine_tuned_model_checkpoint: str, body: CreateCheckpointPermissionRequest,
                             caller: CallerDep, ctx: CtxDep) -> Response:
    async with ctx.transaction() as session:
        return wire(await service.create(session, caller.org_id, fine_tuned_model_checkpoint, body))


@router.get("/{fine_tuned_model_checkpoint:path}/permissions", response_model=CheckpointPermissionList)
async def list_permissions(fine_tuned_model_checkpoint: str, caller: CallerDep, ctx: CtxDep,
                           project_id: str | None = None, after: str | None = None,
                           limit: Annotated[int, Query(ge=1, le=100)] = 10,
                           order: Literal["ascending", "descending"] = "descending") -> Response:
    async with ctx.reader() as db:
        return wire(await service.list_all(db, caller.org_id, fine_tuned_model_checkpoint, project_id=project_id,
                                           after=after, limit=limit, order=order))


@router.delete("/{fine_tuned_model_checkpoint:path}/permissions/{permission_id}",
               response_model=DeletedCheckpointPermission)
async def delete_permission(fine_tuned_model_checkpoint: str, permission_id: str, caller: CallerDep,
                            ctx: CtxDep) -> Response:
    async with ctx.transaction() as session:
        return wire(await service.delete(session, caller.org_id, fine_tuned_model_checkpoint, permission_id))
