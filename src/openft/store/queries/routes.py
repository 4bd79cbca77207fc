"""Routes remembered by the gateway: which provider account holds an
organisation's upstream object (``openft.gateway``)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from openft.store.tables import RoutedObject


async def read_routes(db: AsyncSession | AsyncConnection, org_id: str, object_ids: list[str]) -> dict[str, str]:
    """The accounts of those of ``object_ids`` that ``org_id`` reached through one."""
    found: dict[str, str] = {}
    for start in range(0, len(object_ids), 500):
        rows = await db.execute(select(RoutedObject.object_id, RoutedObject.account).where(
            RoutedObject.org_id == org_id, RoutedObject.object_id.in_(object_ids[start:start + 500])))
        found.update((object_id, account) for object_id, account in rows)
    return found


async def remember_routes(session: AsyncSession, org_id: str, account: str, object_ids: list[str]) -> None:
    """Record ``object_ids`` as held by ``account``; the latest account to return an id holds it."""
    rows = [{"org_id": org_id, "object_id": object_id, "account": account, "created_at": datetime.now(UTC)}
            for object_id in object_ids]
    if not rows:
        return
    insert = pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
    statement = insert(RoutedObject).values(rows)
    statement = statement.on_conflict_do_update(
        index_elements=[RoutedObject.org_id, RoutedObject.object_id],
        set_={"account": statement.excluded.account},
        where=RoutedObject.account != statement.excluded.account,
    )
    await session.execute(statement)
