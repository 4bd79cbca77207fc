"""File rows (the bytes themselves live in blob storage)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, delete, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from openft.domain import ACTIVE_STATUSES
from openft.store.queries.reads import Db, Page, keyset_page, select_rows
from openft.store.tables import File, Job


def _visible(org_id: str):
    """Files of this organisation that have not expired."""
    now = datetime.now(UTC)
    return select_rows(File).where(
        File.org_id == org_id, or_(File.expires_at.is_(None), File.expires_at > now)
    )


async def create_file(session: AsyncSession, file: File) -> File:
    session.add(file)
    await session.flush()
    return file


async def read_file(db: Db, org_id: str, file_id: str) -> Row[Any] | None:
    return (await db.execute(_visible(org_id).where(File.id == file_id))).first()


async def list_files(
    db: Db,
    org_id: str,
    *,
    purpose: str | None,
    after: str | None,
    limit: int,
    newest_first: bool,
) -> Page[Row[Any]]:
    stmt = _visible(org_id)
    if purpose is not None:
        stmt = stmt.where(File.purpose == purpose)
    return await keyset_page(
        db, stmt, File, after=after, limit=limit, newest_first=newest_first
    )


async def touch_file(session: AsyncSession, org_id: str, file_id: str) -> bool:
    """Write-lock a file row for the rest of the transaction; False if it is gone.

    Job creation touches its files and deletion deletes the row first, so the
    two serialise on the row on both databases and never interleave.
    """
    result = await session.execute(
        update(File)
        .where(File.org_id == org_id, File.id == file_id)
        .values(last_used_at=datetime.now(UTC))
    )
    return result.rowcount > 0


async def delete_file(session: AsyncSession, org_id: str, file_id: str) -> bool:
    result = await session.execute(
        delete(File).where(File.org_id == org_id, File.id == file_id)
    )
    return result.rowcount > 0


async def file_in_active_job(session: AsyncSession, org_id: str, file_id: str) -> bool:
    active = [s.value for s in ACTIVE_STATUSES]
    stmt = select(
        exists().where(
            Job.org_id == org_id,
            Job.status.in_(active),
            or_(Job.training_file == file_id, Job.validation_file == file_id),
        )
    )
    return bool(await session.scalar(stmt))
