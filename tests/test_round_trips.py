"""One round trip per single-job call, counted on the wire; and every named query is used.

The wire count uses libpq's protocol trace on the connection the repository
runs on: every exchange with the server ends with the server's
``ReadyForQuery`` message, so counting those counts round trips exactly.
The connection has server-side prepared statements off, as behind RDS Proxy
(with them on, psycopg spends one extra round trip the fifth time a
connection runs a statement, to prepare it; that cost is psycopg's, once).
"""

from __future__ import annotations

import re
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import pq

import cira_db
from cira_db import Completion, Database, Job, JobRepository, JobResultRepository, JobStatus
from cira_db._sql import load_queries
from cira_db.aio import AsyncDatabase, AsyncJobRepository
from cira_db.errors import (
    CiraDbError,
    ConflictError,
    InvalidTransitionError,
    JobCancelledError,
    NotFoundError,
)

A = "client-a"
LEASE = timedelta(minutes=5)
SRC = Path(cira_db.__file__).resolve().parent


class Wire:
    """The protocol messages of one traced block."""

    def __init__(self, text: str) -> None:
        self.messages = [line.split("\t") for line in text.splitlines() if line.strip()]

    def count(self, sender: str, name: str) -> int:
        return sum(1 for m in self.messages if m[0] == sender and len(m) > 2 and m[2] == name)

    @property
    def round_trips(self) -> int:
        return self.count("B", "ReadyForQuery")


@contextmanager
def traced(conn: psycopg.Connection[Any]) -> Iterator[list[Wire]]:
    """Trace ``conn``'s protocol messages inside the block; the Wire is set on exit."""
    found: list[Wire] = []
    with tempfile.TemporaryFile() as sink:
        conn.pgconn.trace(sink.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            yield found
        finally:
            conn.pgconn.untrace()
            sink.seek(0)
            found.append(Wire(sink.read().decode("utf-8", "replace")))


@pytest.fixture
def conn(cira_db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(cira_db_url, autocommit=True, prepare_threshold=None) as connection:
        yield connection


def _trips(
    conn: psycopg.Connection[Any],
    call: Callable[[], object],
    raises: type[CiraDbError] | None = None,
) -> int:
    """Round trips of ``call``, which must succeed, or raise exactly ``raises``."""
    with traced(conn) as wire:
        if raises is None:
            call()
        else:
            with pytest.raises(raises):
                call()
    (seen,) = wire
    return seen.round_trips


def test_the_trace_counts_round_trips(conn: psycopg.Connection[Any]) -> None:
    assert _trips(conn, lambda: conn.execute("SELECT 1")) == 1
    assert _trips(conn, lambda: (conn.execute("SELECT 1"), conn.execute("SELECT 2"))) == 2


def test_every_single_job_call_is_one_round_trip(conn: psycopg.Connection[Any]) -> None:
    jobs, results = JobRepository(conn), JobResultRepository(conn)
    fixed = uuid.uuid4()
    state: dict[str, Any] = {}

    def claim() -> None:
        state["job"] = jobs.claim_next(lease=LEASE)

    def claim_batch() -> None:
        state["batch"] = jobs.claim_batch(3, lease=LEASE, client_id=A)

    def make_many() -> None:
        state["many"] = jobs.create_many(client_id=A, pdf_urls=["https://e.com/m"] * 50)

    def page() -> None:
        state["page"] = jobs.list(client_id=A, limit=2)

    def job() -> uuid.UUID:
        claimed: Job = state["job"]
        return claimed.id

    def queued() -> uuid.UUID:
        last: Job = state["many"][-1]  # never claimed: claim_batch takes the oldest
        return last.id

    # (name, call, the error it must raise or None for success): a call that fails
    # unexpectedly is a test failure, not one round trip.
    calls: list[tuple[str, Callable[[], object], type[CiraDbError] | None]] = [
        ("create", lambda: jobs.create(client_id=A, pdf_url="https://e.com/1.pdf"), None),
        (
            "create with id",
            lambda: jobs.create(client_id=A, pdf_url="https://e.com/2", job_id=fixed),
            None,
        ),
        (
            "create again",
            lambda: jobs.create(client_id=A, pdf_url="https://e.com/2", job_id=fixed),
            None,
        ),
        (
            "create conflict",
            lambda: jobs.create(client_id=A, pdf_url="https://x", job_id=fixed),
            ConflictError,
        ),
        ("create_many", make_many, None),
        ("get", lambda: jobs.get(fixed, client_id=A), None),
        ("get missing", lambda: jobs.get(uuid.uuid4(), client_id=A), NotFoundError),
        ("find", lambda: jobs.find(fixed, client_id=A), None),
        ("list", page, None),
        (
            "list next",
            lambda: jobs.list(client_id=A, limit=2, cursor=state["page"].next_cursor),
            None,
        ),
        ("list by status", lambda: jobs.list(client_id=A, status="queued"), None),
        ("count_by_status", lambda: jobs.count_by_status(client_id=A), None),
        ("claim_next", claim, None),
        ("claim_batch", claim_batch, None),
        ("extend_lease", lambda: jobs.extend_lease(job(), lease=LEASE), None),
        (
            "extend_lease with attempt",
            lambda: jobs.extend_lease(job(), lease=LEASE, attempt=1),
            None,
        ),
        (
            "extend stale attempt",
            lambda: jobs.extend_lease(job(), lease=LEASE, attempt=2),
            InvalidTransitionError,
        ),
        (
            "complete",
            lambda: jobs.complete(
                job(), extracted_data={"a": 1}, confidence_score=0.9, tokens_used=5, attempt=1
            ),
            None,
        ),
        (
            "complete refused",
            lambda: jobs.complete(job(), extracted_data={}, confidence_score=0.9, tokens_used=5),
            InvalidTransitionError,
        ),
        (
            "extend refused",
            lambda: jobs.extend_lease(job(), lease=LEASE),
            InvalidTransitionError,
        ),
        ("fail", lambda: jobs.fail(fixed, error_message="x", attempt=1), None),
        ("fail refused", lambda: jobs.fail(queued(), error_message="x"), InvalidTransitionError),
        ("retry", lambda: jobs.retry(fixed), None),
        ("retry refused", lambda: jobs.retry(queued()), InvalidTransitionError),
        (
            "report_progress",
            lambda: jobs.report_progress(state["batch"][1].id, progress={"p": 1}, attempt=1),
            None,
        ),
        ("cancel processing", lambda: jobs.cancel(state["batch"][1].id, client_id=A), None),
        (
            "report_progress cancelled",
            lambda: jobs.report_progress(state["batch"][1].id, progress={"p": 2}, attempt=1),
            JobCancelledError,
        ),
        ("cancel queued", lambda: jobs.cancel(queued(), client_id=A), None),
        ("cancel again", lambda: jobs.cancel(queued(), client_id=A), None),
        ("cancel refused", lambda: jobs.cancel(job(), client_id=A), InvalidTransitionError),
        ("queue_stats", lambda: jobs.queue_stats(), None),
        ("queue_stats of a client", lambda: jobs.queue_stats(client_id=A), None),
        ("release_expired", lambda: jobs.release_expired(), None),
        ("get_for_job", lambda: results.get_for_job(job(), client_id=A), None),
        (
            "get_for_job missing",
            lambda: results.get_for_job(fixed, client_id=A),
            NotFoundError,
        ),
        (
            "usage",
            lambda: results.usage(client_id=A, since=datetime(2024, 1, 1, tzinfo=UTC)),
            None,
        ),
    ]
    counted = {name: _trips(conn, call, raises) for name, call, raises in calls}
    assert counted == dict.fromkeys(counted, 1)
    # The calls above moved the jobs they were meant to move.
    assert state["batch"][0].id == fixed
    assert jobs.get(fixed, client_id=A).status is JobStatus.QUEUED  # failed, then retried
    assert jobs.get(job(), client_id=A).status is JobStatus.COMPLETED


def test_a_big_create_many_loads_with_copy(conn: psycopg.Connection[Any]) -> None:
    # From 1000 rows: COPY into jobs (no statement text growing with the rows).
    jobs = JobRepository(conn)
    urls = [f"https://e.com/{n}.pdf" for n in range(1000)]
    with traced(conn) as wire:
        jobs.create_many(client_id=A, pdf_urls=urls, returning="ids")
    (ids_only,) = wire
    assert ids_only.count("F", "CopyData") >= 1
    assert ids_only.round_trips == 1
    with traced(conn) as wire:
        made = jobs.create_many(client_id=A, pdf_urls=urls)
    (with_jobs,) = wire
    assert with_jobs.count("F", "CopyData") >= 1
    assert with_jobs.round_trips == 4  # BEGIN, COPY, SELECT now(), COMMIT
    assert with_jobs.count("B", "DataRow") == 1  # no row per job comes back
    assert [job.pdf_url for job in made] == urls


def test_fail_and_retry_are_one_round_trip_each(conn: psycopg.Connection[Any]) -> None:
    jobs = JobRepository(conn)
    jobs.create(client_id=A, pdf_url="https://e.com/1.pdf")
    job = jobs.claim_next(lease=LEASE)
    assert job is not None
    assert _trips(conn, lambda: jobs.fail(job.id, error_message="broken")) == 1
    assert _trips(conn, lambda: jobs.retry(job.id)) == 1


def test_complete_is_atomic_in_one_statement(conn: psycopg.Connection[Any]) -> None:
    jobs = JobRepository(conn)
    jobs.create(client_id=A, pdf_url="https://e.com/1.pdf")
    job = jobs.claim_next(lease=LEASE)
    assert job is not None
    with traced(conn) as wire:
        jobs.complete(job.id, extracted_data={}, confidence_score=1, tokens_used=1)
    (seen,) = wire
    # One Parse/Bind/Execute/Sync: no BEGIN, no COMMIT, a single statement.
    assert seen.count("F", "Parse") == 1
    assert seen.count("F", "Sync") == 1
    assert seen.count("F", "Query") == 0


def test_refused_calls_change_nothing_in_one_round_trip(conn: psycopg.Connection[Any]) -> None:
    jobs = JobRepository(conn)
    job = jobs.create(client_id=A, pdf_url="https://e.com/1.pdf")
    with pytest.raises(InvalidTransitionError):
        jobs.complete(job.id, extracted_data={}, confidence_score=1, tokens_used=1)
    with pytest.raises(NotFoundError):
        jobs.complete(uuid.uuid4(), extracted_data={}, confidence_score=1, tokens_used=1)
    assert conn.execute("SELECT count(*) FROM job_results").fetchone() == (0,)


def test_on_a_database_each_call_runs_one_statement(
    cira_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the pool: one statement per call, and nothing else on the wire.

    The pool checks a connection (an empty query) only when it sat idle longer
    than ``pool_check_after`` (5 s by default), so back-to-back calls pay no check.
    """
    jobs, results = JobRepository(cira_db), JobResultRepository(cira_db)
    job = jobs.create(client_id=A, pdf_url="https://e.com/1.pdf")
    statements: list[str] = []
    original = psycopg.Cursor.execute

    def counting(self: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        statements.append(query if isinstance(query, str) else "<composed>")
        return original(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", counting)
    calls: list[Callable[[], object]] = [
        lambda: jobs.get(job.id, client_id=A),
        lambda: jobs.claim_next(lease=LEASE),
        lambda: jobs.extend_lease(job.id, lease=LEASE),
        lambda: jobs.complete(job.id, extracted_data={}, confidence_score=1, tokens_used=1),
        lambda: results.get_for_job(job.id, client_id=A),
        lambda: results.usage(client_id=A),
        lambda: jobs.count_by_status(client_id=A),
    ]
    for call in calls:
        statements.clear()
        call()
        assert len(statements) == 1, statements
        assert statements[0].strip()


@pytest.mark.anyio
async def test_the_async_face_sends_what_the_benchmarks_raw_loop_sends(cira_db_url: str) -> None:
    """``AsyncJobRepository`` and raw psycopg async on its pool (benchmarks/bench_async.py).

    On the pool's one connection, traced: each awaited call and its raw twin
    (the same named statement and parameters) send the same messages with the
    same statement text, in one round trip each, with no pool check on either
    side.
    """
    sql = {name: q.sql for name, q in load_queries("jobs.sql").items()}
    async with AsyncDatabase(
        cira_db_url, pool_min_size=1, pool_max_size=1, prepare_statements=False
    ) as db:
        pool = db.pool
        assert pool is not None
        jobs = AsyncJobRepository(db)
        client = f"trips-{uuid.uuid4()}"
        made = await jobs.create_many(client_id=client, pdf_urls=["https://e.com/a"] * 3)
        async with db.connection() as conn:
            pgconn = conn.pgconn

        async def raw(name: str, params: dict[str, Any]) -> None:
            async with pool.connection() as conn:
                cur = await conn.execute(sql[name], params)
                await cur.fetchall()

        async def sent(call: Callable[[], Awaitable[object]]) -> Wire:
            with tempfile.TemporaryFile() as sink:
                pgconn.trace(sink.fileno())
                pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
                try:
                    await call()
                finally:
                    pgconn.untrace()
                sink.seek(0)
                return Wire(sink.read().decode("utf-8", "replace"))

        job_id = made[0].id
        complete = {
            "id": job_id,
            "result_id": uuid.uuid4(),
            "extracted_data": "{}",
            "confidence_score": 1,
            "tokens_used": 1,
            "client_id": None,
            "attempt": None,
        }
        list_params = {"client_id": client, "after_created_at": None, "after_id": None}
        pairs: list[tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[object]]]] = [
            (
                lambda: jobs.get(job_id, client_id=client),
                lambda: raw("get_job", {"id": job_id, "client_id": client}),
            ),
            (
                lambda: jobs.list(client_id=client, limit=50),
                lambda: raw("list_jobs", {**list_params, "limit": 51}),
            ),
            (
                lambda: jobs.claim_next(lease=LEASE),
                lambda: raw("claim_jobs", {"limit": 1, "lease": LEASE}),
            ),
            (
                lambda: jobs.complete(job_id, extracted_data={}, confidence_score=1, tokens_used=1),
                lambda: raw("complete_job", {**complete, "id": made[1].id}),
            ),
        ]
        for library, raw_call in pairs:
            lib_wire, raw_wire = await sent(library), await sent(raw_call)
            assert lib_wire.round_trips == raw_wire.round_trips == 1
            lib_sent = [m[2] for m in lib_wire.messages if m[0] == "F"]
            assert lib_sent == [m[2] for m in raw_wire.messages if m[0] == "F"]
            assert lib_sent.count("Parse") == 1, lib_sent
            parse = [m[3:] for m in lib_wire.messages if m[0] == "F" and m[2] == "Parse"]
            assert parse == [m[3:] for m in raw_wire.messages if m[0] == "F" and m[2] == "Parse"]


# -- the SQL files and the code agree -------------------------------------------------------------

_USE = re.compile(r"""query\(\s*"(?P<file>[a-z_]+\.sql)",\s*"(?P<name>[a-z0-9_]+)"\s*\)""")
_FILES = ("jobs.sql", "job_results.sql")


def _used() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in SRC.rglob("*.py"):
        for match in _USE.finditer(path.read_text(encoding="utf-8")):
            found.add((match["file"], match["name"]))
    return found


def test_every_named_query_is_used_and_every_used_name_exists() -> None:
    used = {pair for pair in _used() if pair[0] in _FILES}
    defined = {(file, name) for file in _FILES for name in load_queries(file)}
    assert used, "no query(...) calls found: the pattern no longer matches the code"
    assert defined - used == set(), "named queries nobody runs"
    assert used - defined == set(), "query names the SQL files do not define"


def test_named_queries_bind_only_placeholders() -> None:
    for file in _FILES:
        for query in load_queries(file).values():
            assert query.description, f"{file}:{query.name} has no description"
            # Any % that is not a %(name)s (or binary %(name)b) placeholder must be an escaped %%.
            stripped = re.sub(r"%\([a-z_][a-z0-9_]*\)[sb]|%%", "", query.sql)
            assert "%" not in stripped, f"{file}:{query.name} has a stray %"


def test_complete_and_claim_is_one_statement_and_one_commit(conn: psycopg.Connection[Any]) -> None:
    jobs = JobRepository(conn)
    jobs.create_many(client_id=A, pdf_urls=[f"https://e.com/{n}" for n in range(4)])
    first = jobs.claim_batch(2, lease=LEASE)
    items = [Completion(j.id, {}, 1, 0, attempt=j.attempts) for j in first]
    with traced(conn) as wire:
        outcomes, claimed = jobs.complete_and_claim(items, 2, lease=LEASE)
    (seen,) = wire
    # One Parse/Bind/Execute/Sync in autocommit: one implicit transaction, one commit.
    assert (seen.count("F", "Parse"), seen.count("F", "Sync"), seen.count("F", "Query")) == (
        1,
        1,
        0,
    )
    assert [o.outcome for o in outcomes] == ["done", "done"]
    assert len(claimed) == 2
