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


METHOD = '{"type": "supervised", "supervised": {"hyperparameters": {}}}'


async def _backfill(url: str) -> list[str]:
    from alembic import command
    from sqlalchemy import text

    from openft.store.db import alembic_config
    from openft.store.queries.jobs import list_jobs

    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), "0003"))
            await conn.execute(text(
                "INSERT INTO organizations (id, name, created_at) VALUES ('org-1', 'o', CURRENT_TIMESTAMP)"))
            for i, metadata in enumerate(['{"team": "a"}', '{"team": "b", "env": "x"}', None]):
                await conn.execute(text(
                    "INSERT INTO fine_tuning_jobs (id, org_id, model, training_file, status, method, seed, "
                    "metadata, result_files, created_at, updated_at) VALUES (:id, 'org-1', 'm', 'f', "
                    "'queued', :method, 0, :metadata, '[]', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"),
                    {"id": f"ftjob-{i}", "metadata": metadata, "method": METHOD})
        await migrate(engine)
        async with engine.connect() as conn:
            page = await list_jobs(conn, "org-1", after=None, limit=10, metadata={"team": "b", "env": "x"})
        return [row.id for row in page.items]
    finally:
        await engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_metadata_index_is_backfilled_for_existing_jobs(kind: str, tmp_path, postgres_database) -> None:
    url = postgres_database() if kind == "postgres" else f"sqlite:///{tmp_path / 'm.db'}"
    assert asyncio.run(_backfill(to_async_url(url))) == ["ftjob-1"]
