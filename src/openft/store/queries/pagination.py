"""Keyset pagination on the ``seq`` column, stable while rows are inserted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from openft.errors import InvalidRequest

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    has_more: bool


async def keyset_page(
    session: AsyncSession,
    stmt: Select[Any],
    model: Any,
    *,
    after: str | None,
    limit: int,
    newest_first: bool = True,
) -> Page[Any]:
    """Rows of ``stmt`` after the row whose public id is ``after``.

    ``stmt`` must already carry its scope (organisation, job); the cursor is
    looked up within that same scope, so another tenant's id is not a cursor.
    """
    seq = model.seq
    if after is not None:
        cursor = await session.scalar(
            stmt.with_only_columns(seq).where(model.id == after).order_by(None)
        )
        if cursor is None:
            raise InvalidRequest(f"No such object for the `after` cursor: {after}", param="after")
        stmt = stmt.where(seq < cursor if newest_first else seq > cursor)
    order = seq.desc() if newest_first else seq.asc()
    rows = (await session.scalars(stmt.order_by(order).limit(limit + 1))).all()
    return Page(items=rows[:limit], has_more=len(rows) > limit)


def scoped(model: Any, **equals: Any) -> Select[Any]:
    """``SELECT model WHERE col = value ...``: the start of every scoped listing."""
    return select(model).filter_by(**equals)
