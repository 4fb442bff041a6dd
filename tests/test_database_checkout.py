"""The checkout and give-back of every `run` call (`Database._use`, `AsyncDatabase._once`).

Both are written out rather than built from context managers, for speed on
every repository call (issue 10). What `db.connection()` guarantees is held
here on that path itself, for both faces: a connection idle past
``pool_check_after`` is checked before use and one just returned is not, a
transaction the work left open is committed (or rolled back after an error)
before the connection goes back, the pool's request count moves by one per
call, and no connection serves two threads at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from cira_db import Database
from cira_db.aio import AsyncDatabase

SINGLE: dict[str, Any] = {"pool_min_size": 1, "pool_max_size": 1}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _left_open(conn: psycopg.Connection[Any]) -> None:
    conn.execute("BEGIN")
    conn.execute("INSERT INTO checkout_t VALUES (1)")


def _fails_in_a_transaction(conn: psycopg.Connection[Any]) -> None:
    conn.execute("BEGIN")
    conn.execute("INSERT INTO checkout_t VALUES (2)")
    raise RuntimeError("the work failed")


def _look(conn: psycopg.Connection[Any]) -> tuple[int, list[tuple[Any, ...]]]:
    status = conn.pgconn.transaction_status  # as handed out, before any statement
    return status, conn.execute("SELECT v FROM checkout_t ORDER BY v").fetchall()


# -- the idle check ---------------------------------------------------------------------


def test_a_call_is_checked_after_idling_and_not_right_after_another_call(
    cira_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements: list[str] = []
    original = psycopg.Connection.execute

    def counting(self: psycopg.Connection[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        statements.append(str(query))
        return original(self, query, *args, **kwargs)

    with Database(cira_db_url, **SINGLE, pool_check_after=0.2) as db:
        db.run("warm", lambda conn: conn.execute("SELECT 1"), idempotent=True)
        monkeypatch.setattr(psycopg.Connection, "execute", counting)
        time.sleep(0.3)  # idle past pool_check_after
        db.run("after idling", lambda conn: conn.execute("SELECT 2"), idempotent=True)
        assert statements == ["", "SELECT 2"]  # checked first (an empty query)
        statements.clear()
        # Just given back by a call: not checked. The only use since the sleep was
        # that call, so its give-back must have counted as use.
        db.run("right after", lambda conn: conn.execute("SELECT 3"), idempotent=True)
        assert statements == ["SELECT 3"]


@pytest.mark.anyio
async def test_an_awaited_call_is_checked_after_idling_and_not_right_after_another_call(
    cira_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements: list[str] = []
    original = psycopg.AsyncConnection.execute

    async def counting(
        self: psycopg.AsyncConnection[Any], query: Any, *args: Any, **kwargs: Any
    ) -> Any:
        statements.append(str(query))
        return await original(self, query, *args, **kwargs)

    async with AsyncDatabase(cira_db_url, **SINGLE, pool_check_after=0.2) as db:
        await db.run("warm", lambda conn: conn.execute("SELECT 1"), idempotent=True)
        monkeypatch.setattr(psycopg.AsyncConnection, "execute", counting)
        await asyncio.sleep(0.3)
        await db.run("after idling", lambda conn: conn.execute("SELECT 2"), idempotent=True)
        assert statements == ["", "SELECT 2"]
        statements.clear()
        await db.run("right after", lambda conn: conn.execute("SELECT 3"), idempotent=True)
        assert statements == ["SELECT 3"]


# -- what the work leaves open ------------------------------------------------------------


def test_a_transaction_left_open_is_committed_and_a_failed_one_rolled_back(
    cira_db_url: str,
) -> None:
    with Database(cira_db_url, **SINGLE) as db:  # one connection: each call gets the same
        db.run(
            "table",
            lambda conn: conn.execute("CREATE TEMP TABLE checkout_t (v int)"),
            idempotent=False,
        )
        db.run("left open", _left_open, idempotent=False)
        with pytest.raises(RuntimeError, match="the work failed"):
            db.run("fails", _fails_in_a_transaction, idempotent=False)
        status, rows = db.run("look", _look, idempotent=True)
    assert status == TransactionStatus.IDLE
    assert rows == [(1,)]


@pytest.mark.anyio
async def test_an_awaited_transaction_left_open_is_committed_and_a_failed_one_rolled_back(
    cira_db_url: str,
) -> None:
    async def create(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("CREATE TEMP TABLE checkout_t (v int)")

    async def left_open(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("BEGIN")
        await conn.execute("INSERT INTO checkout_t VALUES (1)")

    async def fails(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("BEGIN")
        await conn.execute("INSERT INTO checkout_t VALUES (2)")
        raise RuntimeError("the work failed")

    async def look(conn: psycopg.AsyncConnection[Any]) -> tuple[int, list[tuple[Any, ...]]]:
        status = conn.pgconn.transaction_status
        cur = await conn.execute("SELECT v FROM checkout_t ORDER BY v")
        return status, await cur.fetchall()

    async with AsyncDatabase(cira_db_url, **SINGLE) as db:
        await db.run("table", create, idempotent=False)
        await db.run("left open", left_open, idempotent=False)
        with pytest.raises(RuntimeError, match="the work failed"):
            await db.run("fails", fails, idempotent=False)
        status, rows = await db.run("look", look, idempotent=True)
    assert status == TransactionStatus.IDLE
    assert rows == [(1,)]


# -- stats and threads --------------------------------------------------------------------


def test_each_call_is_one_pool_request_and_every_connection_comes_back(
    cira_db_url: str,
) -> None:
    with Database(cira_db_url, **SINGLE) as db:  # no growth under way to count as in use
        before = db.stats()
        for _ in range(5):
            db.run("read", lambda conn: conn.execute("SELECT 1"), idempotent=True)
        after = db.stats()
    assert after.requests - before.requests == 5
    assert after.in_use == 0
    assert after.idle == after.size == 1


@pytest.mark.anyio
async def test_each_awaited_call_is_one_pool_request_and_every_connection_comes_back(
    cira_db_url: str,
) -> None:
    async with AsyncDatabase(cira_db_url, **SINGLE) as db:  # no growth under way to count as in use
        before = db.stats()
        for _ in range(5):
            await db.run("read", lambda conn: conn.execute("SELECT 1"), idempotent=True)
        after = db.stats()
    assert after.requests - before.requests == 5
    assert after.in_use == 0
    assert after.idle == after.size == 1


def test_threads_never_share_a_connection(cira_db_url: str) -> None:
    threads, calls = 4, 40
    busy: set[int] = set()
    shared: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(conn: psycopg.Connection[Any]) -> None:
        with lock:
            if id(conn) in busy:
                shared.append(id(conn))
            busy.add(id(conn))
        try:
            conn.execute("SELECT 1")
        finally:
            with lock:
                busy.discard(id(conn))

    with Database(cira_db_url, pool_min_size=2, pool_max_size=2) as db:
        before = db.stats()

        def worker() -> None:
            try:
                for _ in range(calls):
                    db.run("read", work, idempotent=True)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        started: list[threading.Thread] = [threading.Thread(target=worker) for _ in range(threads)]
        for thread in started:
            thread.start()
        for thread in started:
            thread.join(60)
        assert not any(thread.is_alive() for thread in started)
        after = db.stats()
    assert errors == []
    assert shared == []
    assert after.requests - before.requests == threads * calls
    assert after.in_use == 0
