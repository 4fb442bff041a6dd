"""Many workers on one queue.

Threads and processes never claim a job twice and together finish every
job; a killed worker's job comes back once its lease runs out. Every worker
connects the way a deployment does (`AppTarget`): in the proxy pass through
pgbouncer with TLS, in its own process too.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import pytest
from psycopg import Connection
from psycopg.conninfo import conninfo_to_dict

from _proxy import AppTarget
from cira_db import Database, Job, JobRepository, JobResultRepository, JobStatus
from cira_db.errors import InvalidTransitionError

A, B = "client-a", "client-b"
LEASE = timedelta(seconds=30)
SHORT = timedelta(milliseconds=300)
# The killed worker's lease: long enough that "still running" checks made right after
# the worker reports hold on a loaded 2-core CI machine, short enough to wait out.
KILLED_LEASE = timedelta(seconds=3)


def _work(target: AppTarget, worker: str, batch: int, start: Any = None) -> list[str]:
    """A worker loop: claim (one or a batch), complete each, until the queue is empty.

    ``start`` (a barrier) makes every worker begin at the same moment.
    """
    done: list[str] = []
    with target.database(pool_min_size=1, pool_max_size=1) as db:
        jobs = JobRepository(db)
        if start is not None:
            start.wait(timeout=60)
        while True:
            claimed = jobs.claim_batch(batch, lease=LEASE)
            if not claimed:
                return done
            for job in claimed:
                jobs.complete(
                    job.id,
                    extracted_data={"worker": worker, "pid": os.getpid()},
                    confidence_score=0.9,
                    tokens_used=10,
                    attempt=job.attempts,
                )
                done.append(str(job.id))


def _process_worker(target: AppTarget, worker: str, batch: int, start: Any, out: Any) -> None:
    out.put(_work(target, worker, batch, start))


def _check_all_done_once(db: Database, made: list[UUID], done: list[str], workers: int) -> None:
    counts = Counter(done)
    assert [job_id for job_id, n in counts.items() if n > 1] == []
    assert {UUID(job_id) for job_id in done} == set(made)
    with db.connection() as conn:
        rows = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'completed'), count(*),"
            " (SELECT count(*) FROM job_results), max(attempts) FROM jobs"
        ).fetchone()
    assert rows == (len(made), len(made), len(made), 1)
    with db.connection() as conn:
        busy = conn.execute(
            "SELECT count(DISTINCT extracted_data->>'worker') FROM job_results"
        ).fetchone()
    assert busy == (workers,), "every worker should have completed some jobs"


def test_threads_never_claim_a_job_twice(cira_db: Database, app_target: AppTarget) -> None:
    jobs = JobRepository(cira_db)
    made = [
        job.id
        for job in jobs.create_many(
            client_id=A, pdf_urls=[f"https://e.com/{n}" for n in range(300)]
        )
    ]
    made += [
        job.id
        for job in jobs.create_many(
            client_id=B, pdf_urls=[f"https://e.com/{n}" for n in range(100)]
        )
    ]
    done: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def run(worker: str, batch: int) -> None:
        try:
            mine = _work(app_target, worker, batch, start)
        except BaseException as exc:  # pragma: no cover - surfaced by the assert below
            errors.append(exc)
            return
        with lock:
            done.extend(mine)

    threads = [threading.Thread(target=run, args=(f"t{n}", 1 if n % 2 else 5)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    _check_all_done_once(cira_db, made, done, workers=6)


def test_threads_sharing_one_pool(cira_db: Database) -> None:
    jobs = JobRepository(cira_db)
    made = [
        job.id
        for job in jobs.create_many(
            client_id=A, pdf_urls=[f"https://e.com/{n}" for n in range(120)]
        )
    ]
    done: list[str] = []
    lock = threading.Lock()

    start = threading.Barrier(4)

    def run(worker: str) -> None:
        start.wait(timeout=30)
        while (job := jobs.claim_next(lease=LEASE)) is not None:
            jobs.complete(
                job.id, extracted_data={"worker": worker}, confidence_score=1, tokens_used=1
            )
            with lock:
                done.append(str(job.id))

    threads = [threading.Thread(target=run, args=(f"t{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    _check_all_done_once(cira_db, made, done, workers=4)


@pytest.mark.slow
def test_processes_never_claim_a_job_twice(cira_db: Database, app_target: AppTarget) -> None:
    jobs = JobRepository(cira_db)
    made = [
        job.id
        for job in jobs.create_many(
            client_id=A, pdf_urls=[f"https://e.com/{n}" for n in range(300)]
        )
    ]
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(3), context.Queue()
    workers = [
        context.Process(
            target=_process_worker, args=(app_target, f"p{n}", 1 + 4 * (n % 2), start, out)
        )
        for n in range(3)
    ]
    for process in workers:
        process.start()
    try:
        outputs = [out.get(timeout=60) for _ in workers]
    finally:
        for process in workers:
            process.join(timeout=30)
            if process.is_alive():  # pragma: no cover - only when a worker hangs
                process.kill()
    assert [process.exitcode for process in workers] == [0, 0, 0]
    done = [job_id for output in outputs for job_id in output]
    _check_all_done_once(cira_db, made, done, workers=3)
    with cira_db.connection() as conn:
        pids = conn.execute(
            "SELECT count(DISTINCT (extracted_data->>'pid')::int) FROM job_results"
        ).fetchone()
    assert pids == (3,)  # three processes, none of them this one
    results = JobResultRepository(cira_db)
    assert results.get_for_job(made[0], client_id=A).extracted_data["pid"] != os.getpid()


def _how_connected(target: AppTarget, out: Any) -> None:
    with target.database(pool_min_size=1, pool_max_size=1) as db, db.connection() as conn:
        out.put((conn.info.port, bool(conn.pgconn.ssl_in_use)))


@pytest.mark.slow
def test_a_worker_process_connects_the_way_the_run_asks(app_target: AppTarget) -> None:
    """In the proxy pass a worker process goes through pgbouncer with TLS; else directly."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    worker = context.Process(target=_how_connected, args=(app_target, out))
    worker.start()
    try:
        port, tls = out.get(timeout=60)
    finally:
        worker.join(timeout=30)
    assert worker.exitcode == 0
    assert tls is app_target.via_proxy
    expected_port = conninfo_to_dict(app_target.url).get("port")
    if expected_port is not None:
        assert port == int(expected_port)


def _claim_and_hang(target: AppTarget, ready: Any) -> None:
    """A worker that claims one job (lease `KILLED_LEASE`), reports it, then hangs until killed."""
    with target.database(pool_min_size=1, pool_max_size=1) as db:
        job = JobRepository(db).claim_next(lease=KILLED_LEASE)
        ready.put((str(job.id), job.lease_expires_at) if job else None)
        time.sleep(60)


@pytest.mark.slow
def test_a_killed_workers_job_comes_back(cira_db: Database, app_target: AppTarget) -> None:
    jobs = JobRepository(cira_db)
    job = jobs.create(client_id=A, pdf_url="https://e.com/a.pdf")
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    worker = context.Process(target=_claim_and_hang, args=(app_target, ready))
    worker.start()
    try:
        claimed_id, lease_until = ready.get(timeout=30)
    finally:
        worker.kill()
        worker.join(timeout=10)
    assert claimed_id == str(job.id)
    stored = jobs.get(job.id, client_id=A)
    assert stored.status is JobStatus.PROCESSING
    assert stored.lease_expires_at == lease_until
    assert jobs.claim_next(lease=LEASE) is None  # held by the dead worker's lease
    assert jobs.release_expired() == []  # lease still running (3 s from the claim)

    deadline = time.monotonic() + KILLED_LEASE.total_seconds() + 10
    released: list[Any] = []
    while not released and time.monotonic() < deadline:
        time.sleep(0.2)
        released = jobs.release_expired(max_attempts=3)
    assert [j.id for j in released] == [job.id]
    assert released[0].status is JobStatus.QUEUED

    rescuer = jobs.claim_next(lease=LEASE)
    assert rescuer is not None
    assert rescuer.id == job.id
    assert rescuer.attempts == 2
    result = jobs.complete(
        job.id,
        extracted_data={"by": "rescuer"},
        confidence_score=1,
        tokens_used=1,
        attempt=rescuer.attempts,
    )
    assert JobResultRepository(cira_db).get_for_job(job.id, client_id=A) == result


def test_a_stalled_thread_worker_is_replaced(cira_db: Database) -> None:
    """A worker that stops (not killed) loses its job; its late complete is refused."""
    jobs = JobRepository(cira_db)
    job = jobs.create(client_id=A, pdf_url="https://e.com/a.pdf")
    stalled = jobs.claim_next(lease=SHORT)
    assert stalled is not None
    time.sleep(0.35)
    assert [j.id for j in jobs.release_expired()] == [job.id]
    second = jobs.claim_next(lease=LEASE)
    assert second is not None
    assert second.attempts == 2
    # The stalled worker wakes up before the second one finishes: its token is stale.
    with pytest.raises(InvalidTransitionError, match=r"claimed again \(attempt 2\)"):
        jobs.extend_lease(stalled.id, lease=LEASE, attempt=stalled.attempts)
    with pytest.raises(InvalidTransitionError, match=r"claimed again \(attempt 2\)"):
        jobs.complete(
            stalled.id,
            extracted_data={"by": "stalled"},
            confidence_score=1,
            tokens_used=1,
            attempt=stalled.attempts,
        )
    jobs.complete(
        second.id,
        extracted_data={"by": "second"},
        confidence_score=1,
        tokens_used=1,
        attempt=second.attempts,
    )
    with pytest.raises(InvalidTransitionError):
        jobs.complete(
            stalled.id, extracted_data={"by": "stalled"}, confidence_score=1, tokens_used=1
        )
    result = JobResultRepository(cira_db).get_for_job(job.id, client_id=A)
    assert result.extracted_data == {"by": "second"}


def test_concurrent_creates_with_one_id_make_one_row(
    cira_db: Database, app_target: AppTarget
) -> None:
    job_id = "01900000-0000-7000-8000-00000000abcd"
    outcomes: list[Any] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def create() -> None:
        with app_target.database(pool_min_size=1, pool_max_size=1) as db:
            repo = JobRepository(db)
            barrier.wait()
            job = repo.create(client_id=A, pdf_url="https://e.com/a.pdf", job_id=job_id)
        with lock:
            outcomes.append(job)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(outcomes) == 6
    assert len(set(outcomes)) == 1
    with cira_db.connection() as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (1,)


# -- claims, the reaper and retention beside each other -----------------------------------------
#
# Each of these statements picks its rows in a MATERIALIZED CTE with FOR UPDATE SKIP
# LOCKED. Without the lock, the UPDATE (or DELETE) waits for a row another session is
# changing and then applies to the row's new version without re-checking the CTE's
# conditions: a job claimed at that moment is claimed twice, a job completed at that
# moment goes back to the queue with its result, a job another reaper has just released
# is released (and counted) twice, a failed job put back in the queue is deleted. These
# tests hold one session's transaction open until the other call has either finished or
# is seen waiting on a row lock, so the interleaving is the same on every run.


T = TypeVar("T")


def _waits_or_ends(db: Database, other: threading.Thread) -> None:
    """Return once ``other`` has finished or is blocked on a row lock (10 s at most)."""
    deadline = time.monotonic() + 10
    while other.is_alive() and time.monotonic() < deadline:
        with db.connection() as conn:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
        if waiting != (0,):
            return
        time.sleep(0.02)


def _while_held(
    db: Database, hold: Callable[[Connection[Any]], T], other: Callable[[], Any]
) -> tuple[T, Any]:
    """Run ``hold`` in a transaction and ``other`` in a thread while that transaction is open.

    Returns what each returned (``other``'s exception, if it raised). The
    transaction commits once ``other`` has finished or waits on a lock.
    """
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(other())
        except BaseException as exc:  # pragma: no cover - surfaced by the callers' asserts
            out.append(exc)

    thread = threading.Thread(target=run)
    with db.transaction() as conn:
        held = hold(conn)
        thread.start()
        _waits_or_ends(db, thread)
    thread.join(timeout=30)
    assert not thread.is_alive()
    return held, out[0]


def _expired_claim(jobs: JobRepository) -> Job:
    job = jobs.create(client_id=A, pdf_url="https://e.com/late.pdf")
    claimed = jobs.claim_next(lease=SHORT)
    assert claimed is not None
    assert claimed.id == job.id
    time.sleep(SHORT.total_seconds() + 0.1)
    return claimed


@pytest.mark.parametrize("client_id", [None, A], ids=["any-client", "one-client"])
def test_a_claim_in_flight_is_skipped_not_repeated(
    cira_db: Database, client_id: str | None
) -> None:
    jobs = JobRepository(cira_db)
    first, second = jobs.create_many(client_id=A, pdf_urls=["https://e.com/1", "https://e.com/2"])
    mine, theirs = _while_held(
        cira_db,
        lambda conn: JobRepository(conn).claim_next(lease=LEASE, client_id=client_id),
        lambda: jobs.claim_next(lease=LEASE, client_id=client_id),
    )
    assert mine is not None
    assert mine.id == first.id
    assert not isinstance(theirs, BaseException)
    assert theirs is not None, "the second worker waited instead of skipping the locked job"
    assert theirs.id == second.id, "the second worker claimed the job the first one holds"
    assert jobs.get(first.id, client_id=A).attempts == 1


def test_a_job_completed_while_the_reaper_runs_stays_completed(cira_db: Database) -> None:
    jobs = JobRepository(cira_db)
    claimed = _expired_claim(jobs)
    # The worker completes in time (its lease ran out, nobody took the job yet); the
    # reaper runs while the worker's commit is in flight.
    result, reaped = _while_held(
        cira_db,
        lambda conn: JobRepository(conn).complete(
            claimed.id,
            extracted_data={"by": "worker"},
            confidence_score=1,
            tokens_used=1,
            attempt=claimed.attempts,
        ),
        jobs.release_expired,
    )
    assert reaped == [], "the reaper took back a job its worker was completing"
    stored = jobs.get(claimed.id, client_id=A)
    assert stored.status is JobStatus.COMPLETED
    assert stored.lease_expires_at is None
    assert JobResultRepository(cira_db).get_for_job(claimed.id, client_id=A) == result
    assert jobs.claim_next(lease=LEASE) is None  # not back in the queue


def test_two_reapers_never_release_one_job_twice(cira_db: Database) -> None:
    jobs = JobRepository(cira_db)
    claimed = _expired_claim(jobs)
    first, second = _while_held(
        cira_db, lambda conn: JobRepository(conn).release_expired(), jobs.release_expired
    )
    assert [job.id for job in first] == [claimed.id]
    assert second == [], "a second reaper released (and reported) the same job again"
    stored = jobs.get(claimed.id, client_id=A)
    assert stored.status is JobStatus.QUEUED
    assert stored.attempts == 1


def test_retention_leaves_a_job_that_is_being_retried(cira_db: Database) -> None:
    jobs = JobRepository(cira_db)
    job = jobs.create(client_id=A, pdf_url="https://e.com/r.pdf")
    claimed = jobs.claim_next(lease=LEASE)
    assert claimed is not None
    jobs.fail(job.id, error_message="unreadable", attempt=claimed.attempts)
    cutoff = datetime.now(UTC) + timedelta(seconds=1)
    retried, deleted = _while_held(
        cira_db,
        lambda conn: JobRepository(conn).retry(job.id),
        lambda: jobs.delete_finished_before(cutoff),
    )
    assert retried.status is JobStatus.QUEUED
    assert deleted == 0, "retention deleted a job that was going back to the queue"
    assert jobs.get(job.id, client_id=A).status is JobStatus.QUEUED
