"""Registered base models and fine-tuned models."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Row, delete
from sqlalchemy.ext.asyncio import AsyncSession

from openft.store.queries.jobs import read_checkpoint_model
from openft.store.queries.reads import Db, select_rows
from openft.store.tables import RegisteredModel, FineTunedModel


async def upsert_base_model(session: AsyncSession, model_id: str, path: str) -> None:
    row = await session.get(RegisteredModel, model_id)
    if row is None:
        session.add(RegisteredModel(id=model_id, path=path, created_at=datetime.now(timezone.utc)))
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


async def read_tuned_weights(db: Db, org_id: str, model_id: str) -> tuple[str, str] | None:
    """(storage key, base model) of a fine-tuned model or checkpoint of this
    organisation; None for anything else (a base model, or nothing)."""
    tuned = await read_fine_tuned_model(db, org_id, model_id)
    if tuned is not None:
        return tuned.storage_key, tuned.base_model
    checkpoint = await read_checkpoint_model(db, org_id, model_id)
    return (checkpoint.storage_key, checkpoint.base_model) if checkpoint is not None else None


async def list_fine_tuned_models(db: Db, org_id: str) -> list[Row[Any]]:
    stmt = select_rows(FineTunedModel).where(FineTunedModel.org_id == org_id)
    return list((await db.execute(stmt.order_by(FineTunedModel.seq.desc()))).all())


async def delete_fine_tuned_model(session: AsyncSession, org_id: str, model_id: str) -> bool:
    result = await session.execute(
        delete(FineTunedModel).where(FineTunedModel.org_id == org_id, FineTunedModel.id == model_id)
    )
    return result.rowcount > 0


