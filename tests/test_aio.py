"""cira_db.aio: the asyncio face.

The repository scenarios themselves run on both faces (tests/test_jobs_repository.py
and tests/test_results_repository.py, the ``face`` fixture). Here: what only an
event loop can show (many tasks, cancellation, retries awaited) and the checks that
keep the two shells from drifting apart.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from botocore.stub import Stubber

from cira_db import Database, JobRepository, JobResultRepository, JobStatus, _aws_auth
from cira_db.aio import AsyncDatabase, AsyncJobRepository, AsyncJobResultRepository
from cira_db.errors import ConfigurationError, DatabaseUnavailableError, NotFoundError
from test_aws_auth import (  # the Secrets Manager rig of the sync tests
    ARN,
    Clock,
    clock,
    fake_aws,
    scram_server,
    secret_response,
    secrets_client,
)

__all__ = ["clock", "fake_aws", "scram_server"]  # fixtures, used by name

A = "client-a"
LEASE = timedelta(minutes=5)


def _url(n: int) -> str:
    return f"https://example.com/{n}.pdf"


@pytest.fixture
def anyio_backend() -> str:
    """psycopg's async API runs on asyncio."""
    return "asyncio"


# -- the shells cannot drift --------------------------------------------------------------


# Methods that return a context manager (``with`` / ``async with``), not a result.
_CONTEXT_MANAGERS = {"heartbeat"}


def _public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


@pytest.mark.parametrize(
    ("sync_cls", "async_cls"),
    [(JobRepository, AsyncJobRepository), (JobResultRepository, AsyncJobResultRepository)],
)
def test_the_async_repositories_mirror_the_sync_ones(sync_cls: type, async_cls: type) -> None:
    assert _public(sync_cls) == _public(async_cls)
    for name in _public(sync_cls):
        sync_method, async_method = getattr(sync_cls, name), getattr(async_cls, name)
        sync_sig, async_sig = inspect.signature(sync_method), inspect.signature(async_method)
        if name in _CONTEXT_MANAGERS:  # returns an async context manager, the sync one's twin
            assert sync_sig.parameters == async_sig.parameters, name
        else:
            assert inspect.iscoroutinefunction(async_method), name
            assert sync_sig == async_sig, name
        assert inspect.getdoc(sync_method) == inspect.getdoc(async_method), name
    sync_init = inspect.signature(sync_cls).parameters
    async_init = inspect.signature(async_cls).parameters
    assert list(sync_init) == list(async_init)


def test_async_database_takes_database_arguments() -> None:
    assert _public(AsyncDatabase) == _public(Database)
    assert inspect.signature(AsyncDatabase.__init__) == inspect.signature(Database.__init__)
    assert inspect.signature(AsyncDatabase.from_env) == inspect.signature(Database.from_env)
    for name in ("open", "close", "connect_direct", "connection_plan", "run"):
        assert inspect.iscoroutinefunction(getattr(AsyncDatabase, name)), name
    db = AsyncDatabase("postgresql://u:hunter2@db.example.com/app")
    assert "hunter2" not in repr(db)
    assert repr(db).startswith("<AsyncDatabase ")
    assert repr(db).endswith(" closed>")


def test_async_repositories_refuse_a_sync_executor(cira_db: Database) -> None:
    with pytest.raises(TypeError, match=r"AsyncDatabase or a psycopg\.AsyncConnection"):
        AsyncJobRepository(cira_db)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_closed_async_database_says_so() -> None:
    jobs = AsyncJobRepository(AsyncDatabase("postgresql://localhost/none"))
    with pytest.raises(ConfigurationError, match="not open"):
        await jobs.get(uuid.uuid4(), client_id=A)


# -- unit of work on an async connection ----------------------------------------------------


class _RollbackError(Exception):
    pass


async def _create_then_roll_back(db: AsyncDatabase) -> uuid.UUID:
    async with db.transaction() as conn:
        job = await AsyncJobRepository(conn).create(client_id=A, pdf_url=_url(1))
        assert await AsyncJobRepository(conn).get(job.id, client_id=A) == job
        raise _RollbackError(job.id)


@pytest.mark.anyio
async def test_async_repositories_join_the_callers_transaction(
    cira_db_async: AsyncDatabase,
) -> None:
    with pytest.raises(_RollbackError) as info:
        await _create_then_roll_back(cira_db_async)
    job_id = info.value.args[0]
    jobs = AsyncJobRepository(cira_db_async)
    assert await jobs.find(job_id, client_id=A) is None
    async with cira_db_async.transaction() as conn:
        tx = AsyncJobRepository(conn)
        job = await tx.create(client_id=A, pdf_url=_url(2))
        await tx.claim_next(lease=LEASE)
        result = await tx.complete(job.id, extracted_data={}, confidence_score=1, tokens_used=2)
    assert await AsyncJobResultRepository(cira_db_async).get_for_job(job.id, client_id=A) == result


@pytest.mark.anyio
async def test_async_create_many_copy_inside_the_callers_transaction(
    cira_db_async: AsyncDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A big batch (COPY) with a stored id: the COPY fails in a savepoint and the
    # caller's transaction goes on to the statement that finds the stored job.
    import cira_db._repositories._core_jobs as core

    monkeypatch.setattr(core, "_COPY_FROM", 1)
    ids = [uuid.uuid4() for _ in range(3)]
    urls = [_url(n) for n in range(3)]
    stored = await AsyncJobRepository(cira_db_async).create(
        client_id=A, pdf_url=urls[1], job_id=ids[1]
    )
    async with cira_db_async.transaction() as conn:
        tx = AsyncJobRepository(conn)
        made = await tx.create_many(client_id=A, pdf_urls=urls, job_ids=ids)
        assert [job.id for job in made] == ids
        assert made[1] == stored
        again = await tx.create_many(client_id=A, pdf_urls=urls, job_ids=ids, returning="ids")
        assert again == ids
        fresh = await tx.create_many(client_id=A, pdf_urls=urls)
        assert [job.pdf_url for job in fresh] == urls
    counts = await AsyncJobRepository(cira_db_async).count_by_status(client_id=A)
    assert counts[JobStatus.QUEUED] == 6


# -- many tasks ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_fifty_tasks_never_claim_a_job_twice(cira_db_url: str) -> None:
    async with AsyncDatabase(cira_db_url, pool_max_size=8) as db:
        jobs = AsyncJobRepository(db)
        made = await jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(300)])
        claimed: list[uuid.UUID] = []

        async def worker() -> None:
            while (job := await jobs.claim_next(lease=LEASE)) is not None:
                claimed.append(job.id)
                await asyncio.sleep(0)  # let the other tasks in between claim and complete
                await jobs.complete(
                    job.id,
                    extracted_data={"n": 1},
                    confidence_score=0.5,
                    tokens_used=1,
                    attempt=job.attempts,
                )

        await asyncio.gather(*(worker() for _ in range(50)))
        assert len(claimed) == len(set(claimed)) == 300
        assert set(claimed) == {job.id for job in made}
        counts = await jobs.count_by_status(client_id=A)
        assert counts[JobStatus.COMPLETED] == 300
        usage = await AsyncJobResultRepository(db).usage(client_id=A)
        assert usage.jobs == 300


# -- cancellation --------------------------------------------------------------------------------


def _wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.mark.anyio
async def test_a_cancelled_call_returns_its_connection_and_writes_nothing(
    cira_db_url: str,
) -> None:
    async with AsyncDatabase(cira_db_url, pool_min_size=1, pool_max_size=1) as db:
        jobs = AsyncJobRepository(db)
        job = await jobs.create(client_id=A, pdf_url=_url(1))
        claimed = await jobs.claim_next(lease=LEASE)
        assert claimed is not None
        with (
            psycopg.connect(cira_db_url) as holder,
            psycopg.connect(cira_db_url, autocommit=True) as watcher,
        ):
            # Another connection holds the job's row lock: complete() waits on it.
            holder.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job.id,))

            def waiting() -> bool:
                row = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                ).fetchone()
                return row is not None and row[0] == 1

            task = asyncio.create_task(
                jobs.complete(job.id, extracted_data={}, confidence_score=1, tokens_used=7)
            )
            await asyncio.to_thread(_wait_until, waiting)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The statement is gone from the server, not left waiting for the lock.
            await asyncio.to_thread(_wait_until, lambda: not waiting())
            holder.rollback()
        # The pool's only slot is free again, and the job is untouched.
        again = await asyncio.wait_for(jobs.get(job.id, client_id=A), timeout=10)
        assert again.status is JobStatus.PROCESSING
        assert await AsyncJobResultRepository(db).find_for_job(job.id, client_id=A) is None
        assert db.pool is not None
        stats = db.pool.get_stats()
        assert stats["pool_size"] == 1
        result = await jobs.complete(job.id, extracted_data={}, confidence_score=1, tokens_used=7)
        assert result.tokens_used == 7


# -- retries -----------------------------------------------------------------------------------


async def _backend_pid(db: AsyncDatabase) -> int:
    async with db.connection() as conn:
        row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
        assert row is not None
        return int(row[0])


def _terminate(url: str, pid: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        _wait_until(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchone()
                == (0,)
            )
        )


@pytest.mark.anyio
async def test_idempotent_calls_are_retried_after_a_terminated_backend(cira_db_url: str) -> None:
    settings: dict[str, Any] = {
        "pool_min_size": 1,
        "pool_max_size": 1,
        "pool_check_after": 3600,  # no check at checkout: the call meets the dead connection
        "retry_backoff": 0.01,
    }
    async with AsyncDatabase(cira_db_url, **settings) as db:
        jobs = AsyncJobRepository(db)
        job = await jobs.create(client_id=A, pdf_url=_url(1))
        first = await _backend_pid(db)
        await asyncio.to_thread(_terminate, cira_db_url, first)
        assert await jobs.get(job.id, client_id=A) == job  # a read: repeated on a new connection
        second = await _backend_pid(db)
        assert second != first

        await asyncio.to_thread(_terminate, cira_db_url, second)
        with pytest.raises(DatabaseUnavailableError) as info:
            await jobs.claim_next(lease=LEASE)  # a claim: never repeated
        assert isinstance(info.value.__cause__, psycopg.OperationalError)
        assert (await jobs.get(job.id, client_id=A)).status is JobStatus.QUEUED
        with pytest.raises(NotFoundError):
            await jobs.get(job.id, client_id="client-b")


@pytest.mark.anyio
async def test_busy_async_connections_skip_the_check_and_idle_ones_get_it(
    cira_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements: list[str] = []
    original = psycopg.AsyncConnection.execute

    async def counting(
        self: psycopg.AsyncConnection[Any], query: Any, *args: Any, **kwargs: Any
    ) -> Any:
        statements.append(str(query))
        return await original(self, query, *args, **kwargs)

    settings: dict[str, Any] = {"pool_min_size": 1, "pool_max_size": 1, "pool_check_after": 0.2}
    async with AsyncDatabase(cira_db_url, **settings) as db:
        pool = db.pool
        assert pool is not None
        async with db.connection() as conn:
            await conn.execute("SELECT 1")
        monkeypatch.setattr(psycopg.AsyncConnection, "execute", counting)
        async with db.connection() as conn:  # just used: no check, one statement only
            await conn.execute("SELECT 2")
        assert statements == ["SELECT 2"]
        statements.clear()
        await asyncio.sleep(0.3)
        async with db.connection() as conn:  # idle past the threshold: checked first
            await conn.execute("SELECT 3")
        assert statements == ["", "SELECT 3"]
        statements.clear()
        await asyncio.sleep(0.3)
        async with pool.connection() as conn:  # the pool's own checkout: checked the same
            await conn.execute("SELECT 4")
        async with db.connection() as conn:  # and it counts as use: no second check
            await conn.execute("SELECT 5")
        assert statements == ["", "SELECT 4", "SELECT 5"]


# -- credentials off the event loop, the same fail-fast rules -------------------------------------


@pytest.mark.anyio
@pytest.mark.usefixtures("fake_aws")
async def test_the_secret_is_fetched_off_the_loop_and_again_after_a_rotation(
    clock: Clock, scram_server: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    admin_url, socket_dir = scram_server
    fetched_on: list[threading.Thread] = []
    fetch = _aws_auth.SecretProvider._fetch

    def recording_fetch(self: _aws_auth.SecretProvider) -> dict[str, Any]:
        fetched_on.append(threading.current_thread())
        return fetch(self)

    monkeypatch.setattr(_aws_auth.SecretProvider, "_fetch", recording_fetch)
    client = secrets_client()
    with Stubber(client) as stub:
        stub.add_response("get_secret_value", secret_response(socket_dir, "first-Pa55"))
        stub.add_response("get_secret_value", secret_response(socket_dir, "second-Pa55"))

        async def who(conn: psycopg.AsyncConnection[Any]) -> Any:
            return await (await conn.execute("SELECT current_user")).fetchone()

        async with AsyncDatabase(
            secret_arn=ARN, secrets_client=client, pool_min_size=1, pool_max_size=1
        ) as db:
            assert await db.run("read", who, idempotent=True) == ("rotating",)
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute("ALTER ROLE rotating PASSWORD 'second-Pa55'")
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE usename = 'rotating'"
                )
            clock.advance(_aws_auth._MIN_REFRESH_INTERVAL)
            assert await db.run("read", who, idempotent=True) == ("rotating",)
        stub.assert_no_pending_responses()
    assert len(fetched_on) == 2
    assert threading.current_thread() not in fetched_on  # never on the event loop's thread


@pytest.mark.anyio
async def test_a_missing_database_fails_at_once_not_after_the_pool_timeout(
    cira_db_url: str,
) -> None:
    missing = psycopg.conninfo.make_conninfo(cira_db_url, dbname="cira_no_such_db")
    db = AsyncDatabase(missing, pool_timeout=30)
    started = time.monotonic()
    with pytest.raises(ConfigurationError) as info:
        await db.open()
    assert time.monotonic() - started < 5
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    assert not db.is_open


@pytest.mark.anyio
async def test_an_unreachable_server_is_unavailable_after_the_pool_timeout() -> None:
    db = AsyncDatabase("postgresql://nobody@127.0.0.1:1/none", pool_timeout=1, connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match="Connection refused"):
        await db.open()
    assert time.monotonic() - started < 10
    assert not db.is_open


@pytest.mark.anyio
async def test_an_unpooled_async_database_opens_a_connection_per_call(cira_db_url: str) -> None:
    db = AsyncDatabase(cira_db_url, pool=False)
    await db.open()  # nothing to open
    assert db.pool is None
    jobs = AsyncJobRepository(db)
    job = await jobs.create(client_id=A, pdf_url=_url(1))
    first = await _backend_pid(db)
    assert await _backend_pid(db) != first  # a new connection each time
    assert await jobs.get(job.id, client_id=A) == job
    await db.close()


@pytest.mark.anyio
async def test_async_open_makes_one_connection_that_one_task_keeps_using(cira_db_url: str) -> None:
    # As the sync face: a checkout during open would queue and grow the pool.
    async with AsyncDatabase(cira_db_url) as db:
        backends = {await _backend_pid(db) for _ in range(20)}
        stats = db.stats()
    assert len(backends) == 1
    assert (stats.size, stats.connections_made, stats.requests_queued) == (1, 1, 0)


@pytest.mark.anyio
async def test_a_lazily_opened_async_database_serves_the_first_call(cira_db_url: str) -> None:
    db = AsyncDatabase(cira_db_url)
    await db.open(wait=False)
    try:
        assert db.is_open
        job = await AsyncJobRepository(db).create(client_id=A, pdf_url=_url(1))
        assert job.status is JobStatus.QUEUED
        await db.open()  # a second open is harmless
    finally:
        await db.close()
    assert not db.is_open
