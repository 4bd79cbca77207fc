"""Database engine, sessions and migrations.

``OPENFT_DATABASE_URL`` picks the database: SQLite (WAL) in the home folder by
default, PostgreSQL by URL. Both run through SQLAlchemy's asyncio engine
(aiosqlite, psycopg). Migrations are one Alembic chain for both, applied at
start by :func:`migrate` under a lock, so several replicas may start at once.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

import openft.store.sqlite  # noqa: E402,F401  (registers sqlite+openft_aiosqlite)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_MIGRATION_LOCK_KEY = 0x6F70656E6674  # "openft": one advisory lock for every replica


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """An async engine; on SQLite, WAL with a busy timeout and enforced foreign keys."""
    if url.startswith("sqlite"):
        _ensure_sqlite_folder(url)
        # A pooled SQLite connection is one thread; keep enough of them that a
        # burst never opens and closes overflow connections (milliseconds each).
        engine = create_async_engine(
            url, echo=echo, connect_args={"timeout": 30}, pool_size=32, max_overflow=32
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, echo=echo, pool_size=20, max_overflow=20, pool_pre_ping=True)


def _ensure_sqlite_folder(url: str) -> None:
    path = url.split(":///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


Transaction = Callable[[], AbstractAsyncContextManager[AsyncSession]]
"""A factory of units of work (``AppContext.transaction``, ``Worker.transaction``)."""


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (idempotent; safe across replicas).

    PostgreSQL serialises replicas with a transaction-scoped advisory lock;
    SQLite (one machine by nature) with an exclusive lock on a file beside
    the database, since its driver runs DDL outside a transaction.
    """
    if engine.dialect.name == "sqlite":
        async with _file_lock(engine.url.database):
            async with engine.begin() as conn:
                await conn.run_sync(_upgrade_to_head)
        return
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        await conn.run_sync(_upgrade_to_head)


@contextlib.asynccontextmanager
async def _file_lock(database: str | None) -> AsyncIterator[None]:
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a") as handle:
        await anyio.to_thread.run_sync(fcntl.flock, handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def _upgrade_to_head(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")
