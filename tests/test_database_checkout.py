"""The checkout and give-back of every `run` call (`Database._use`, `AsyncDatabase._once`).

Both are written out rather than built from context managers, for speed on
every repository call (issue 10). What `db.connection()` guarantees is held
here on that path itself, for both faces: a connection idle past
``pool_check_after`` is checked before use and one just returned is not, a
transaction the work left open is committed (or rolled back after an error)
before the connection goes back, the pool's request count moves by one per
call, and no connection serves two threads at once. A repository call on a
pool connection runs through the cursor the connection keeps for its statement
(and row factory), which holds no result between calls; a caller's connection keeps none.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus

import cira_db._database as database_module
from cira_db import Database, JobRepository, JobResultRepository
from cira_db._database import KEPT_CURSORS, KEPT_CURSORS_MAX, kept_cursor
from cira_db.aio import AsyncDatabase, AsyncJobRepository

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


# -- kept cursors -------------------------------------------------------------------------

BIG = {"pages": "x" * 4_000_000}  # a 4 MB document, read back by get_for_job


def _kept(conn: Any) -> list[Any]:
    """The cursors a pool connection keeps, each checked to hold no result."""
    cursors = list(getattr(conn, KEPT_CURSORS).values())
    for cur in cursors:
        assert cur.pgresult is None  # the cursor's own reference
        assert cur._tx.pgresult is None  # and its transformer's
        assert cur._query is None  # nor the parameters it sent
    return cursors


def test_repository_calls_reuse_one_cursor_per_statement_that_holds_no_result(
    cira_db_url: str,
) -> None:
    with Database(cira_db_url, **SINGLE) as db:
        jobs, results = JobRepository(db), JobResultRepository(db)

        def calls(n: int) -> tuple[Any, ...]:
            made = jobs.create(client_id="kept", pdf_url=f"https://x.example.com/{n}.pdf")
            claimed = jobs.claim_next(lease=timedelta(minutes=5))
            assert claimed is not None
            jobs.complete(claimed.id, extracted_data=BIG, confidence_score=0.9, tokens_used=1)
            stored = results.get_for_job(claimed.id, client_id="kept").extracted_data
            listed = jobs.list(client_id="kept", limit=5).items
            return made.id, claimed.id, stored, [job.id for job in listed]

        def look(conn: Any) -> set[int]:  # through run: a borrowed block would drop them
            return {id(cur) for cur in _kept(conn)}

        first = calls(1)
        kept = db.run("look", look, idempotent=True)  # the pool's one connection, between calls
        second = calls(2)
        assert db.run("look", look, idempotent=True) == kept  # the same cursors again
    assert len(kept) == 5  # create, claim, complete, result, list: one cursor each
    # Each call read its own rows through the shared cursors.
    assert (first[0], first[2]) == (first[1], BIG)
    assert (second[0], second[2]) == (second[1], BIG)
    assert second[3] == [second[0], first[0]]


def test_a_connection_keeps_a_bounded_number_of_cursors(cira_db_url: str) -> None:
    with Database(cira_db_url, **SINGLE) as db, db.connection() as conn:
        made = [kept_cursor(conn, f"SELECT {n}", None) for n in range(KEPT_CURSORS_MAX + 5)]
        assert all(cur is not None for cur in made[:KEPT_CURSORS_MAX])
        assert made[KEPT_CURSORS_MAX:] == [None] * 5  # past the bound: a cursor per call
        assert kept_cursor(conn, "SELECT 0", None) is made[0]  # the kept ones stay
        assert len(getattr(conn, KEPT_CURSORS)) == KEPT_CURSORS_MAX


def test_a_borrowed_connection_comes_back_without_kept_cursors(cira_db_url: str) -> None:
    # The block may change the session: the library's next call must read it
    # as a new cursor would (here, datetimes in the session's new time zone).
    with Database(cira_db_url, **SINGLE) as db:
        jobs = JobRepository(db)
        job = jobs.create(client_id="tz", pdf_url="https://x.example.com/1.pdf")
        before = jobs.get(job.id, client_id="tz").created_at
        with db.connection() as conn:
            assert getattr(conn, KEPT_CURSORS) != {}  # kept by the calls above
            conn.execute("SET TimeZone = 'America/New_York'")
        after = jobs.get(job.id, client_id="tz").created_at
        with db.connection() as conn:
            conn.execute("RESET TimeZone")
    assert after == before  # the same instant
    assert after.utcoffset() != before.utcoffset()  # read in the new zone


def test_a_cursor_that_cannot_be_reset_turns_kept_cursors_off_without_failing_the_call(
    cira_db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_reset(cursor: Any) -> None:
        raise TypeError("psycopg changed")

    monkeypatch.setattr(database_module, "_RESET", broken_reset)
    monkeypatch.setattr(database_module, "_keep_cursors", True)
    with Database(cira_db_url, **SINGLE) as db:
        jobs = JobRepository(db)
        made = jobs.create(client_id="off", pdf_url="https://x.example.com/1.pdf")
        assert jobs.get(made.id, client_id="off") == made  # the calls succeed
        with db.connection() as conn:
            assert getattr(conn, KEPT_CURSORS) == {}
        assert jobs.get(made.id, client_id="off") == made
    assert database_module._keep_cursors is False
    warnings = [r for r in caplog.records if "kept cursors turned off" in r.getMessage()]
    assert len(warnings) == 1  # said once


def test_a_callers_connection_keeps_no_cursor_and_serves_threads_their_own_rows(
    cira_db_url: str,
) -> None:
    # psycopg lets threads share a connection (one cursor each): calls on a
    # caller's connection, even one borrowed from the pool, never go through
    # the cursors it keeps for the Database's own calls.
    with Database(cira_db_url, **SINGLE) as db, db.connection() as conn:
        jobs = JobRepository(conn)
        urls = [f"https://x.example.com/{n}.pdf" for n in range(8)]
        made = [jobs.create(client_id="shared", pdf_url=url) for url in urls]
        wrong: list[tuple[Any, Any]] = []

        def reader(job_id: Any) -> None:
            for _ in range(50):
                got = jobs.get(job_id, client_id="shared")
                if got.id != job_id:  # pragma: no cover - reported below
                    wrong.append((job_id, got.id))

        started = [threading.Thread(target=reader, args=(job.id,)) for job in made]
        for thread in started:
            thread.start()
        for thread in started:
            thread.join(60)
        assert getattr(conn, KEPT_CURSORS) == {}
    assert wrong == []


@pytest.mark.anyio
async def test_awaited_repository_calls_reuse_one_cursor_per_statement_that_holds_no_result(
    cira_db_url: str,
) -> None:
    async with AsyncDatabase(cira_db_url, **SINGLE) as db:
        jobs = AsyncJobRepository(db)

        async def calls(n: int) -> tuple[Any, ...]:
            made = await jobs.create(client_id="kept", pdf_url=f"https://x.example.com/{n}.pdf")
            claimed = await jobs.claim_next(lease=timedelta(minutes=5))
            assert claimed is not None
            await jobs.complete(claimed.id, extracted_data=BIG, confidence_score=0.9, tokens_used=1)
            listed = (await jobs.list(client_id="kept", limit=5)).items
            return made.id, claimed.id, [job.id for job in listed]

        async def look(conn: Any) -> set[int]:  # through run: a borrowed block would drop them
            return {id(cur) for cur in _kept(conn)}

        first = await calls(1)
        kept = await db.run("look", look, idempotent=True)
        second = await calls(2)
        assert await db.run("look", look, idempotent=True) == kept
    assert len(kept) == 4  # create, claim, complete, list
    assert first[0] == first[1]
    assert second[0] == second[1]
    assert second[2] == [second[0], first[0]]


@pytest.mark.anyio
async def test_an_awaited_borrowed_connection_comes_back_without_kept_cursors(
    cira_db_url: str,
) -> None:
    async with AsyncDatabase(cira_db_url, **SINGLE) as db:
        jobs = AsyncJobRepository(db)
        job = await jobs.create(client_id="tz", pdf_url="https://x.example.com/1.pdf")
        before = (await jobs.get(job.id, client_id="tz")).created_at
        async with db.connection() as conn:
            assert getattr(conn, KEPT_CURSORS) != {}
            await conn.execute("SET TimeZone = 'America/New_York'")
        after = (await jobs.get(job.id, client_id="tz")).created_at
        async with db.connection() as conn:
            await conn.execute("RESET TimeZone")
    assert after == before
    assert after.utcoffset() != before.utcoffset()
