"""One Alembic chain, equal to the ORM tables, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from openft.config import to_async_url
from openft.store.db import create_engine, migrate
from openft.store.tables import Base


async def _diff_after_migrating(url: str, concurrent: int) -> list:
    engines = [create_engine(url) for _ in range(concurrent)]
    try:
        await asyncio.gather(*(migrate(e) for e in engines))
        await migrate(engines[0])  # idempotent
        async with engines[0].connect() as conn:
            return await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata
                )
            )
    finally:
        for engine in engines:
            await engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_migrations_match_tables(kind: str, tmp_path, postgres_database) -> None:
    url = postgres_database() if kind == "postgres" else f"sqlite:///{tmp_path / 'm.db'}"
    # Several replicas starting at once on one database must not trip over each other.
    assert asyncio.run(_diff_after_migrating(to_async_url(url), concurrent=3)) == []
