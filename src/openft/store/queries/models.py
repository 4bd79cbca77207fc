"""Registered base models and fine-tuned models."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from openft.store.queries.jobs import read_checkpoint_model
from openft.store.queries.reads import Db, row_columns, select_rows
from openft.store.tables import FineTunedModel, Job, RegisteredModel


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


async def read_tuned_weights(db: Db, org_id: str, model_id: str) -> TunedWeights | None:
    """The weights of a fine-tuned model or checkpoint of this organisation;
    None for anything else (a base model, another organisation's, nothing)."""
    tuned = await read_fine_tuned_model(db, org_id, model_id)
    if tuned is None:
        tuned = await read_checkpoint_model(db, org_id, model_id)
    return TunedWeights(tuned.storage_key, tuned.base_model, tuned.job_id) if tuned is not None else None


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


