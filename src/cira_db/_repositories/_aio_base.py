"""`AsyncRunner`: runs the repositories' sans-I/O logic on psycopg's async API.

The asyncio twin of `Runner`: the same `Call` requests, the same row
factories and the same error mapping (`map_error` through `wrap_errors`);
only the awaiting is its own. On an `AsyncDatabase` each call borrows an
autocommit connection and may be retried (idempotent calls, and any call
refused as a stale prepared statement: the same policy as `Database.run`);
on a caller's ``psycopg.AsyncConnection`` it is run once, inside the
caller's transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, Final, TypeAlias, TypeVar

import psycopg

from cira_db._aio_database import AsyncConnection, AsyncDatabase
from cira_db._database import kept_cursor, release
from cira_db._errors_map import wrap_errors
from cira_db._observe import Observation
from cira_db._repositories._base import (
    Call,
    Logic,
    map_error,
    savepoint_in_transaction,
    slow_call_ms,
    stream_size,
)
from cira_db.errors import CiraDbError

__all__ = ["AsyncExecutor", "AsyncRunner"]

AsyncExecutor: TypeAlias = AsyncDatabase | psycopg.AsyncConnection[Any]
"""What an async repository runs its statements on: an `AsyncDatabase`, or a connection."""

R = TypeVar("R")
T = TypeVar("T")


class AsyncRunner:
    """Runs `Call` requests on an `AsyncDatabase` or on a caller's async connection."""

    __slots__ = ("_connection", "_database", "_server", "_slow_ms", "executor")

    def __init__(self, executor: AsyncExecutor) -> None:
        self._server: Any = None  # (host, port) for spans, found on first use
        self._slow_ms = slow_call_ms(executor)
        if isinstance(executor, AsyncDatabase):
            self._database: AsyncDatabase | None = executor
            self._connection: AsyncConnection | None = None
        elif isinstance(executor, psycopg.AsyncConnection):
            self._database = None
            self._connection = executor
        else:
            raise TypeError(
                "an async repository needs a cira_db.aio.AsyncDatabase or a "
                f"psycopg.AsyncConnection, not {type(executor).__name__}"
            )
        self.executor: AsyncExecutor = executor
        """The `AsyncDatabase` or connection statements run on."""

    async def drive(self, logic: Logic[T]) -> T:
        """Run a repository method's logic to its end, awaiting each `Call` (see `Runner.drive`)."""
        value: Any = None
        error: CiraDbError | None = None
        # Logged, traced and counted here once for every method (cira_db._observe).
        observation = Observation(getattr(logic, "__name__", "call"), self._slow_ms, task=True)
        try:
            while True:
                try:
                    call = logic.send(value) if error is None else logic.throw(error)
                except StopIteration as stop:
                    result: T = stop.value
                    break
                self._server = observation.begin(call, self.executor, self._server)
                value, error = None, None
                try:
                    value = await self.execute(call)
                except CiraDbError as exc:
                    error = exc
                else:
                    observation.got(call.kind, value, call.changes)
        except BaseException as exc:
            observation.finish(exc)
            raise
        observation.finish(None)
        return result

    def execute(self, call: Call[R]) -> Awaitable[R]:
        """Run one `Call`: one round trip, errors mapped, retried per ``idempotent``.

        Returns the awaitable of `AsyncDatabase.run`'s loop itself
        (``_retrying``, no coroutine of its own around it), or, on a caller's
        connection, `_once`'s.
        """
        database = self._database
        if database is None:  # the caller owns the transaction: one try, errors mapped
            connection = self._connection
            assert connection is not None  # one of the two is always set
            return _once(call.operation, partial(_STATEMENTS[call.kind], call), connection)
        work = partial(_POOLED_STATEMENTS[call.kind], call)
        return database._retrying(
            call.operation, work, idempotent=call.idempotent, mapper=map_error, one_statement=True
        )


async def _once(
    operation: str, work: Callable[[AsyncConnection], Awaitable[R]], connection: AsyncConnection
) -> R:
    """``work`` on the caller's connection: one try, its errors mapped."""
    with wrap_errors(operation, map_error):
        return await work(connection)


# Cursors left unclosed, as by the sync twins (``_base.py`` says why): here
# that also spares awaiting ``__aenter__``, ``__aexit__`` and ``close``.


async def _one(call: Call[Any], conn: AsyncConnection) -> Any:
    """Run a ``one`` call on ``conn``: its first row, or None."""
    cur = conn.cursor(row_factory=call.row_factory)  # type: ignore[arg-type]  # set
    await cur.execute(call.query.sql, call.params)
    return await cur.fetchone()


async def _one_kept(call: Call[Any], conn: AsyncConnection) -> Any:
    """`_one` through the connection's kept cursor, on an `AsyncDatabase`'s path only."""
    cur = kept_cursor(conn, call.query.sql, call.row_factory)
    if cur is None:
        return await _one(call, conn)
    try:
        await cur.execute(call.query.sql, call.params)
        return await cur.fetchone()
    finally:
        release(cur)


async def _all(call: Call[Any], conn: AsyncConnection) -> list[Any]:
    """Run an ``all`` call on ``conn``: every row."""
    cur = conn.cursor(row_factory=call.row_factory)  # type: ignore[arg-type]  # set
    await cur.execute(call.query.sql, call.params)
    return await cur.fetchall()


async def _all_kept(call: Call[Any], conn: AsyncConnection) -> list[Any]:
    """`_all` through the connection's kept cursor, on an `AsyncDatabase`'s path only."""
    cur = kept_cursor(conn, call.query.sql, call.row_factory)
    if cur is None:
        return await _all(call, conn)
    try:
        await cur.execute(call.query.sql, call.params)
        return await cur.fetchall()  # type: ignore[no-any-return]
    finally:
        release(cur)


async def _rowcount(call: Call[Any], conn: AsyncConnection) -> int:
    """Run a ``rowcount`` call on ``conn``: how many rows it changed."""
    cur = conn.cursor()
    await cur.execute(call.query.sql, call.params)
    return cur.rowcount


async def _copy(call: Call[Any], conn: AsyncConnection) -> int:
    """Run a ``copy`` call on ``conn`` (in a savepoint inside a caller's transaction)."""
    assert call.rows is not None  # every copy call has its rows
    async with savepoint_in_transaction(conn), conn.cursor() as cur:
        async with cur.copy(call.query.sql) as copy:
            for row in call.rows():
                await copy.write_row(row)
        return cur.rowcount


async def _copy_all(call: Call[Any], conn: AsyncConnection) -> list[Any]:
    """Run a ``copy_all`` call on ``conn``: the COPY, then ``call.then``, in one transaction."""
    assert call.rows is not None  # a copy_all call has its rows
    assert call.then is not None  # and its query
    assert call.row_factory is not None  # and its row factory
    async with conn.transaction(), conn.cursor(row_factory=call.row_factory) as cur:
        async with cur.copy(call.query.sql) as copy:
            for row in call.rows():
                await copy.write_row(row)
        streamed = cur.stream(call.then.sql, call.params, size=stream_size())
        return [row async for row in streamed]


# What a `Call` of each kind awaits on a connection (the sync twins are in
# ``_base.py``); `AsyncRunner.execute` binds the call with a `partial`.
_STATEMENTS: Final[Mapping[str, Callable[[Call[Any], AsyncConnection], Awaitable[Any]]]] = {
    "one": _one,
    "all": _all,
    "rowcount": _rowcount,
    "copy": _copy,
    "copy_all": _copy_all,
}
# On an `AsyncDatabase`: a call that reads rows goes through the connection's kept cursor.
_POOLED_STATEMENTS: Final = {**_STATEMENTS, "one": _one_kept, "all": _all_kept}
