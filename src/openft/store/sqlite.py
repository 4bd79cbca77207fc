"""SQLAlchemy's aiosqlite dialect with one thread hop per statement.

aiosqlite runs each SQLite connection on its own thread; every awaited call
is a hand-off to that thread and back. SQLAlchemy's stock adapter makes four
such calls per statement (cursor, execute, fetchall, close) plus one to roll
back each connection it returns to the pool. Measured on the 2-core machine,
that made a one-row read cost ~700 µs where the same read through one
aiosqlite call costs ~85 µs.

This dialect keeps SQLAlchemy's asyncio engine, pool, types and compiler, and
changes only the driver adapter: a statement's execute, fetch and close run
as one function on the connection's thread, and a connection with no open
transaction is returned to the pool without a rollback round trip (the
transaction flag comes back with every statement's result).

It relies on two aiosqlite internals that SQLAlchemy's own adapter also uses
(``Connection._execute`` and ``Connection._conn``) and on the adapter classes
of SQLAlchemy 2.1 (hence the pin ``>=2.1,<2.2``); ``OPENFT_SQLITE_DRIVER=aiosqlite``
falls back to SQLAlchemy's stock adapter, and the suite runs the store on
both (tests/api/test_store_drivers.py). Registered as
``sqlite+openft_aiosqlite``; ``openft.config.to_async_url`` maps ``sqlite://``
URLs to it.
"""

from __future__ import annotations

import collections
import sqlite3
from typing import Any

from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    SQLiteDialect_aiosqlite,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

_Outcome = tuple[Any, int, int | None, list[Any], bool]


def _run_statement(conn: sqlite3.Connection, operation: str, parameters: Any, many: bool) -> _Outcome:
    """Runs on aiosqlite's thread: the whole life of one cursor."""
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        rows = cursor.fetchall() if cursor.description else []
        return cursor.description, cursor.rowcount, cursor.lastrowid, rows, conn.in_transaction
    finally:
        cursor.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    __slots__ = ("_description", "_rowcount", "_lastrowid")

    def __init__(self, adapt_connection: OneHopConnection):
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description = None
        self._rowcount = -1
        self._lastrowid = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    def execute(self, operation: Any, parameters: Any = None) -> None:
        self._run(operation, parameters, many=False)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> None:
        self._run(operation, seq_of_parameters, many=True)

    def _run(self, operation: Any, parameters: Any, *, many: bool) -> None:
        connection = self._connection
        try:
            outcome = await_(
                connection._execute(_run_statement, connection._conn, operation, parameters, many)
            )
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        self._description, self._rowcount, self._lastrowid, rows, in_transaction = outcome
        self._rows = collections.deque(rows)
        self._adapt_connection._in_transaction = in_transaction

    async def _async_soft_close(self) -> None:
        return None

    def close(self) -> None:
        self._rows.clear()


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ("_in_transaction",)

    _cursor_cls = OneHopCursor

    def __init__(self, dbapi: Any, connection: Any):
        super().__init__(dbapi, connection)
        self._in_transaction = False

    def rollback(self) -> None:
        # Nothing to undo (reads run outside a transaction): skip the round trip.
        if self._in_transaction:
            super().rollback()
            self._in_transaction = False

    def commit(self) -> None:
        super().commit()
        self._in_transaction = False


class _OneHopDbapi(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        stock = super().connect(*arg, **kw)
        return OneHopConnection(self, stock._connection)


class SQLiteDialect_openft(SQLiteDialect_aiosqlite):
    driver = "openft_aiosqlite"
    supports_statement_cache = True
    supports_server_side_cursors = False

    @classmethod
    def import_dbapi(cls) -> _OneHopDbapi:  # type: ignore[override]
        return _OneHopDbapi(__import__("aiosqlite"), __import__("sqlite3"))


registry.register("sqlite.openft_aiosqlite", "openft.store.sqlite", "SQLiteDialect_openft")
