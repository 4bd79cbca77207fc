"""Read helpers: plain rows with ORM attribute names, and keyset pagination
on the ``seq`` column (stable while rows are inserted).

Reads return SQLAlchemy ``Row`` objects whose attributes carry the ORM names
(``row.metadata_``), so services read rows and ORM objects alike. Rows skip
the ORM's identity map and instance loading, which cost more than the query
itself on the hot read paths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import cache
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, inspect, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from openft.errors import InvalidRequest

T = TypeVar("T")

Db = AsyncConnection | AsyncSession
Reader = Callable[[], AbstractAsyncContextManager[Db]]
"""Opens a read-only connection (``AppContext.reader``), for work that must not hold a transaction."""
"""Reads run on either: a plain connection (cheapest) or a unit of work's session."""


@cache
def row_columns(model: Any) -> tuple[Any, ...]:
    """The model's columns labelled with its attribute names."""
    return tuple(
        model.__table__.c[attr.columns[0].name].label(attr.key)
        for attr in inspect(model).column_attrs
    )


def select_rows(model: Any) -> Select[Any]:
    return select(*row_columns(model))


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    has_more: bool


async def keyset_page(
    db: Db,
    stmt: Select[Any],
    model: Any,
    *,
    after: str | None,
    limit: int,
    newest_first: bool = True,
    seq: Any = None,
) -> Page[Any]:
    """Rows of ``stmt`` after the row whose public id is ``after``.

    ``stmt`` must already carry its scope (organisation, job); the cursor is
    looked up within that same scope, so another tenant's id is not a cursor.
    ``seq``: the column to order and page by (default ``model.seq``; a join
    passes its driving index's copy so the database walks that index).
    """
    seq = model.seq if seq is None else seq
    if after is not None:
        cursor = await db.scalar(
            stmt.with_only_columns(seq).where(model.id == after).order_by(None)
        )
        if cursor is None:
            raise InvalidRequest(f"No such object for the `after` cursor: {after}", param="after")
        stmt = stmt.where(seq < cursor if newest_first else seq > cursor)
    order = seq.desc() if newest_first else seq.asc()
    rows = (await db.execute(stmt.order_by(order).limit(limit + 1))).all()
    return Page(items=rows[:limit], has_more=len(rows) > limit)


def scoped(model: Any, **equals: Any) -> Select[Any]:
    """Rows of ``model`` WHERE attribute = value ...: the start of every scoped listing."""
    return select_rows(model).where(*(getattr(model, k) == v for k, v in equals.items()))
