"""Registered base models and fine-tuned models."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from openft.store.queries.jobs import read_checkpoint_model
from openft.store.queries.reads import Db, Page, keyset_page, row_columns, scoped, select_rows
from openft.store.tables import CheckpointPermission, FineTunedModel, Job, RegisteredModel


async def upsert_base_model(session: AsyncSession, model_id: str, path: str) -> None:
    row = await session.get(RegisteredModel, model_id)
    if row is None:
        session.add(RegisteredModel(id=model_id, path=path, created_at=datetime.now(UTC)))
    else:
        row.path = path
    await session.flush()


async def read_base_model(db: Db, model_id: str) -> Row[Any] | None:
    return (await db.execute(select_rows(RegisteredModel).where(RegisteredModel.id == model_id))).first()


async def list_base_models(db: Db) -> list[Row[Any]]:
    return list((await db.execute(select_rows(RegisteredModel).order_by(RegisteredModel.id))).all())


async def create_fine_tuned_model(session: AsyncSession, model: FineTunedModel) -> None:
    session.add(model)
    await session.flush()


async def read_fine_tuned_model(db: Db, org_id: str, model_id: str) -> Row[Any] | None:
    stmt = select_rows(FineTunedModel).where(
        FineTunedModel.org_id == org_id, FineTunedModel.id == model_id
    )
    return (await db.execute(stmt)).first()


@dataclass(frozen=True)
class TunedWeights:
    """Where a fine-tuned model's or checkpoint's weights are, and where they come from."""

    storage_key: str
    base_model: str
    """The base model at the root of its lineage."""
    job_id: str
    """The job that trained it."""


async def read_tuned_weights(db: Db, org_id: str, model_id: str, *, shared: bool = True) -> TunedWeights | None:
    """The weights of a fine-tuned model or checkpoint of this organisation,
    or (``shared``) of a checkpoint another organisation shared with it
    (``checkpoint_permissions``); None for anything else (a base model,
    another organisation's, nothing)."""
    tuned = await read_fine_tuned_model(db, org_id, model_id)
    if tuned is None:
        tuned = await read_checkpoint_model(db, org_id, model_id)
    if tuned is None and shared and ":ckpt-step-" in model_id:
        owner = await db.scalar(select(CheckpointPermission.owner_org_id).where(
            CheckpointPermission.checkpoint == model_id, CheckpointPermission.grantee_org_id == org_id))
        if owner is not None:
            tuned = await read_checkpoint_model(db, owner, model_id)
    return TunedWeights(tuned.storage_key, tuned.base_model, tuned.job_id) if tuned is not None else None


async def shared_ancestor(db: Db, org_id: str, job_id: str) -> str | None:
    """The shared checkpoint (``Job.shared_start``) at the start of the
    lineage of the model ``job_id`` trained, if any: a job continuing a model
    of the organisation continues its lineage."""
    seen: set[str] = set()
    while job_id not in seen:
        seen.add(job_id)
        job = (await db.execute(select(Job.shared_start, Job.base_model, Job.model).where(
            Job.org_id == org_id, Job.id == job_id))).first()
        if job is None or job.shared_start:
            return job.shared_start if job is not None else None
        if not job.base_model:
            return None
        parent = await read_tuned_weights(db, org_id, job.model, shared=False)
        if parent is None:
            return None
        job_id = parent.job_id
    return None


async def add_permissions(session: AsyncSession, rows: list[CheckpointPermission]) -> list[CheckpointPermission]:
    """Grant each row's organisation the checkpoint; one already granted keeps its permission (returned)."""
    kept = []
    for row in rows:
        existing = await _permission(session, row)
        if existing is None:
            try:
                async with session.begin_nested():  # a concurrent grant of the same pair wins: keep its row
                    session.add(row)
                    await session.flush()
                existing = row
            except IntegrityError:
                existing = await _permission(session, row)
        assert existing is not None
        kept.append(existing)
    return kept


async def _permission(session: AsyncSession, row: CheckpointPermission) -> CheckpointPermission | None:
    return (await session.scalars(select(CheckpointPermission).where(
        CheckpointPermission.checkpoint == row.checkpoint,
        CheckpointPermission.grantee_org_id == row.grantee_org_id))).first()


async def list_permissions(db: Db, owner_org_id: str, checkpoint: str, *, grantee: str | None, after: str | None,
                           limit: int, newest_first: bool) -> Page[Any]:
    stmt = scoped(CheckpointPermission, owner_org_id=owner_org_id, checkpoint=checkpoint)
    if grantee is not None:
        stmt = stmt.where(CheckpointPermission.grantee_org_id == grantee)
    return await keyset_page(db, stmt, CheckpointPermission, after=after, limit=limit, newest_first=newest_first)


async def delete_permission(session: AsyncSession, owner_org_id: str, checkpoint: str, permission_id: str) -> bool:
    result = await session.execute(delete(CheckpointPermission).where(
        CheckpointPermission.owner_org_id == owner_org_id, CheckpointPermission.checkpoint == checkpoint,
        CheckpointPermission.id == permission_id))
    return result.rowcount > 0


async def list_fine_tuned_models(db: Db, org_id: str, model_id: str | None = None) -> list[Row[Any]]:
    """The organisation's fine-tuned models (or the one named ``model_id``),
    newest first, each with ``parent``: the model its job started from (a base
    model, or a fine-tuned model or checkpoint it continued)."""
    stmt = (
        select(*row_columns(FineTunedModel), Job.model.label("parent"))
        .outerjoin(Job, Job.id == FineTunedModel.job_id)
        .where(FineTunedModel.org_id == org_id)
    )
    if model_id is not None:
        stmt = stmt.where(FineTunedModel.id == model_id)
    return list((await db.execute(stmt.order_by(FineTunedModel.seq.desc()))).all())


async def delete_fine_tuned_model(session: AsyncSession, org_id: str, model_id: str) -> bool:
    result = await session.execute(
        delete(FineTunedModel).where(FineTunedModel.org_id == org_id, FineTunedModel.id == model_id)
    )
    return result.rowcount > 0


