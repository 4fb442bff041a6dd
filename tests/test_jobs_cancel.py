"""JobRepository's cancel, report_progress and queue_stats, on both faces, against PostgreSQL.

The cancel-requested rule of the worker's calls (extend_lease, report_progress,
complete, fail, retry) and retention of cancelled jobs are here too.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cira_db import Database, Job, JobRepository, JobStatus, QueueStats
from cira_db.errors import (
    InvalidTransitionError,
    JobCancelledError,
    NotFoundError,
    ValidationError,
)

A, B = "client-a", "client-b"
URL = "https://example.com/doc.pdf"
LEASE = timedelta(minutes=5)
SHORT = timedelta(milliseconds=200)


def _url(n: int) -> str:
    return f"https://example.com/{n}.pdf"


def _claimed(jobs: JobRepository, client_id: str = A, lease: timedelta = LEASE) -> Job:
    job = jobs.create(client_id=client_id, pdf_url=URL)
    claimed = jobs.claim_next(lease=lease, client_id=client_id)
    assert claimed is not None
    assert claimed.id == job.id
    return claimed


def _row(db: Database, job_id: uuid.UUID) -> tuple[Any, ...]:
    with db.connection() as conn:
        row = conn.execute(
            "SELECT status::text, lease_expires_at, cancel_requested_at, completed_at,"
            " error_message, progress, updated_at FROM jobs WHERE id = %s",
            (job_id,),
        ).fetchone()
    assert row is not None
    return tuple(row)


# -- the status and the error -----------------------------------------------------------------


def test_cancelled_is_a_status_and_job_cancelled_is_an_invalid_transition() -> None:
    assert JobStatus("cancelled") is JobStatus.CANCELLED
    assert issubclass(JobCancelledError, InvalidTransitionError)
    assert JobCancelledError().args[0].startswith("The job was cancelled")


# -- cancel ---------------------------------------------------------------------------------


def test_cancel_a_queued_job_ends_it_at_once(jobs: JobRepository, cira_db: Database) -> None:
    job = jobs.create(client_id=A, pdf_url=URL)
    cancelled = jobs.cancel(job.id, client_id=A)
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.lease_expires_at is None
    assert cancelled.completed_at is None
    assert cancelled.cancel_requested_at is None
    assert jobs.get(job.id, client_id=A) == cancelled
    # Never claimed.
    assert jobs.claim_next(lease=LEASE, client_id=A) is None
    assert _row(cira_db, job.id)[0] == "cancelled"


def test_cancel_a_processing_job_asks_its_worker(jobs: JobRepository) -> None:
    claimed = _claimed(jobs)
    asked = jobs.cancel(claimed.id, client_id=A)
    assert asked.status is JobStatus.PROCESSING
    assert asked.cancel_requested_at is not None
    assert asked.lease_expires_at == claimed.lease_expires_at
    assert asked.attempts == claimed.attempts
    assert jobs.get(claimed.id, client_id=A).cancel_requested_at == asked.cancel_requested_at


def test_cancel_is_idempotent(jobs: JobRepository, cira_db: Database) -> None:
    queued = jobs.create(client_id=A, pdf_url=URL)
    first = jobs.cancel(queued.id, client_id=A)
    before = _row(cira_db, queued.id)
    assert jobs.cancel(queued.id, client_id=A) == first
    assert _row(cira_db, queued.id) == before  # nothing written, not even updated_at
    claimed = _claimed(jobs)
    asked = jobs.cancel(claimed.id, client_id=A)
    before = _row(cira_db, claimed.id)
    again = jobs.cancel(claimed.id, client_id=A)
    assert again == asked
    assert again.cancel_requested_at == asked.cancel_requested_at  # the first request's time
    assert _row(cira_db, claimed.id) == before


def test_cancel_refuses_completed_and_failed_jobs(jobs: JobRepository, cira_db: Database) -> None:
    done = _claimed(jobs)
    jobs.complete(done.id, extracted_data={}, confidence_score=1, tokens_used=1)
    failed = _claimed(jobs)
    jobs.fail(failed.id, error_message="bad scan")
    for job, status in ((done, "completed"), (failed, "failed")):
        before = _row(cira_db, job.id)
        with pytest.raises(InvalidTransitionError, match=f"it is {status} already"):
            jobs.cancel(job.id, client_id=A)
        assert _row(cira_db, job.id) == before


def test_cancel_is_client_scoped(jobs: JobRepository, cira_db: Database) -> None:
    claimed = _claimed(jobs)
    queued = jobs.create(client_id=A, pdf_url=URL)
    for job in (queued, claimed):
        with pytest.raises(NotFoundError):
            jobs.cancel(job.id, client_id=B)
    with pytest.raises(NotFoundError):
        jobs.cancel(uuid.uuid4(), client_id=A)
    assert _row(cira_db, queued.id)[0] == "queued"
    assert _row(cira_db, claimed.id)[2] is None  # no cancel asked for


def test_cancel_validates_before_sql(jobs: JobRepository) -> None:
    with pytest.raises(ValidationError) as info:
        jobs.cancel("not-a-uuid", client_id=A)
    assert info.value.field == "job_id"
    with pytest.raises(ValidationError) as info:
        jobs.cancel(uuid.uuid4(), client_id="")
    assert info.value.field == "client_id"


# -- the worker of a job whose cancel was asked for ---------------------------------------------


def test_extend_lease_of_a_cancel_requested_job_ends_it(
    jobs: JobRepository, cira_db: Database
) -> None:
    claimed = _claimed(jobs)
    jobs.cancel(claimed.id, client_id=A)
    with pytest.raises(JobCancelledError, match=f"job {claimed.id} was cancelled"):
        jobs.extend_lease(claimed.id, lease=LEASE, attempt=claimed.attempts)
    job = jobs.get(claimed.id, client_id=A)
    assert job.status is JobStatus.CANCELLED
    assert job.lease_expires_at is None
    assert job.completed_at is None
    # Ended: a second heartbeat (or a repeat after a lost reply) hears the same.
    with pytest.raises(JobCancelledError, match="it is cancelled; stop working on it"):
        jobs.extend_lease(claimed.id, lease=LEASE, attempt=claimed.attempts)
    with pytest.raises(JobCancelledError):
        jobs.report_progress(claimed.id, progress={}, attempt=claimed.attempts)
    # The other worker calls are ordinary refusals: there is nothing left to finish.
    with pytest.raises(InvalidTransitionError, match="it is cancelled, not processing") as info:
        jobs.fail(claimed.id, error_message="x", attempt=claimed.attempts)
    assert not isinstance(info.value, JobCancelledError)


def test_a_stale_worker_is_refused_before_the_cancel_is_seen(
    jobs: JobRepository, cira_db: Database
) -> None:
    stale = _claimed(jobs, lease=SHORT)
    time.sleep(0.25)
    assert [j.id for j in jobs.release_expired()] == [stale.id]
    current = jobs.claim_next(lease=LEASE, client_id=A)
    assert current is not None
    assert current.attempts == 2
    jobs.cancel(stale.id, client_id=A)
    before = _row(cira_db, stale.id)
    calls: list[Callable[[], object]] = [
        lambda: jobs.extend_lease(stale.id, lease=LEASE, attempt=stale.attempts),
        lambda: jobs.report_progress(stale.id, progress={"page": 1}, attempt=stale.attempts),
    ]
    for call in calls:
        with pytest.raises(InvalidTransitionError, match=r"claimed again \(attempt 2\)") as info:
            call()
        assert not isinstance(info.value, JobCancelledError)
    assert _row(cira_db, stale.id) == before  # still processing, cancel still pending
    with pytest.raises(JobCancelledError):
        jobs.report_progress(current.id, progress={"page": 1}, attempt=current.attempts)


def test_complete_of_a_cancel_requested_job_still_completes(jobs: JobRepository) -> None:
    claimed = _claimed(jobs)
    asked = jobs.cancel(claimed.id, client_id=A)
    result = jobs.complete(
        claimed.id, extracted_data={"total": 1}, confidence_score=1, tokens_used=5
    )
    assert result.job_id == claimed.id
    job = jobs.get(claimed.id, client_id=A)
    assert job.status is JobStatus.COMPLETED
    assert job.cancel_requested_at == asked.cancel_requested_at  # the late request is recorded


def test_fail_of_a_cancel_requested_job_ends_it_cancelled(jobs: JobRepository) -> None:
    claimed = _claimed(jobs)
    jobs.cancel(claimed.id, client_id=A)
    ended = jobs.fail(claimed.id, error_message="stopped: cancelled", attempt=claimed.attempts)
    assert ended.status is JobStatus.CANCELLED
    assert ended.error_message == "stopped: cancelled"
    assert ended.lease_expires_at is None
    assert jobs.get(claimed.id, client_id=A) == ended
    # A plain fail still fails.
    other = _claimed(jobs)
    assert jobs.fail(other.id, error_message="x").status is JobStatus.FAILED


def test_a_cancelled_job_is_final(jobs: JobRepository, cira_db: Database) -> None:
    job = jobs.cancel(jobs.create(client_id=A, pdf_url=URL).id, client_id=A)
    before = _row(cira_db, job.id)
    with pytest.raises(InvalidTransitionError, match="it is cancelled, not failed"):
        jobs.retry(job.id)
    for call in (
        lambda: jobs.complete(job.id, extracted_data={}, confidence_score=1, tokens_used=1),
        lambda: jobs.fail(job.id, error_message="x"),
    ):
        with pytest.raises(InvalidTransitionError, match="it is cancelled, not processing"):
            call()
    for call in (
        lambda: jobs.extend_lease(job.id, lease=LEASE),
        lambda: jobs.report_progress(job.id, progress={}, attempt=1),
    ):
        with pytest.raises(JobCancelledError, match="it is cancelled"):
            call()
    assert _row(cira_db, job.id) == before


def test_retry_of_a_failed_job_clears_a_stale_cancel_request(
    jobs: JobRepository, cira_db: Database
) -> None:
    # A job the reaper failed for good while its cancel was pending (today's reaper).
    claimed = _claimed(jobs)
    jobs.cancel(claimed.id, client_id=A)
    with cira_db.connection() as conn:
        conn.execute(
            "UPDATE jobs SET status = 'failed', lease_expires_at = NULL WHERE id = %s",
            (claimed.id,),
        )
    retried = jobs.retry(claimed.id)
    assert retried.status is JobStatus.QUEUED
    assert retried.cancel_requested_at is None


# -- report_progress ----------------------------------------------------------------------------


def test_report_progress_is_stored_and_listed(jobs: JobRepository) -> None:
    claimed = _claimed(jobs)
    assert claimed.progress is None
    first = jobs.report_progress(claimed.id, progress={"page": 1}, attempt=claimed.attempts)
    assert first.progress == {"page": 1}
    assert first.status is JobStatus.PROCESSING
    assert first.lease_expires_at == claimed.lease_expires_at
    doc = {"page": 2, "of": 9, "stage": "ocr", "nested": {"ok": True, "list": [1, 2.5, None]}}
    second = jobs.report_progress(claimed.id, progress=doc, attempt=claimed.attempts, client_id=A)
    assert second.progress == doc
    assert jobs.get(claimed.id, client_id=A).progress == doc
    assert [job.progress for job in jobs.list(client_id=A).items] == [doc]


def test_report_progress_refusals(jobs: JobRepository, cira_db: Database) -> None:
    claimed = _claimed(jobs)
    queued = jobs.create(client_id=A, pdf_url=URL)
    with pytest.raises(InvalidTransitionError, match="it is queued, not processing"):
        jobs.report_progress(queued.id, progress={"page": 1}, attempt=1)
    with pytest.raises(NotFoundError):
        jobs.report_progress(claimed.id, progress={"page": 1}, attempt=1, client_id=B)
    with pytest.raises(NotFoundError):
        jobs.report_progress(uuid.uuid4(), progress={"page": 1}, attempt=1)
    with pytest.raises(InvalidTransitionError, match="on attempt 1, not 2"):
        jobs.report_progress(claimed.id, progress={"page": 1}, attempt=2)
    assert _row(cira_db, claimed.id)[5] is None
    # Finished on this very claim: the attempt matches, the status does not.
    jobs.complete(claimed.id, extracted_data={}, confidence_score=1, tokens_used=1, attempt=1)
    with pytest.raises(InvalidTransitionError, match="it is completed, not processing"):
        jobs.report_progress(claimed.id, progress={"page": 9}, attempt=1)
    assert _row(cira_db, claimed.id)[5] is None


def test_report_progress_of_a_cancel_requested_job_ends_it(jobs: JobRepository) -> None:
    claimed = _claimed(jobs)
    jobs.report_progress(claimed.id, progress={"page": 1}, attempt=claimed.attempts)
    jobs.cancel(claimed.id, client_id=A)
    with pytest.raises(JobCancelledError):
        jobs.report_progress(claimed.id, progress={"page": 2}, attempt=claimed.attempts)
    job = jobs.get(claimed.id, client_id=A)
    assert job.status is JobStatus.CANCELLED
    assert job.lease_expires_at is None
    assert job.progress == {"page": 1}  # the last stored report stays


def test_report_progress_size_limit_matches_the_check(jobs: JobRepository) -> None:
    claimed = _claimed(jobs)
    # {"n": "xxx..."} as jsonb::text: 4096 bytes exactly is stored, one more is refused.
    overhead = len(json.dumps({"n": ""}, separators=(", ", ": ")))
    fits = {"n": "x" * (4096 - overhead)}
    assert jobs.report_progress(claimed.id, progress=fits, attempt=1).progress == fits
    with pytest.raises(ValidationError) as info:
        jobs.report_progress(claimed.id, progress={"n": "x" * (4097 - overhead)}, attempt=1)
    assert info.value.field == "progress"
    # Multi-byte characters count as bytes.
    with pytest.raises(ValidationError):
        jobs.report_progress(claimed.id, progress={"n": "é" * 2100}, attempt=1)
    # A number PostgreSQL writes out longer than Python: the CHECK names the field too.
    with pytest.raises(ValidationError) as info:
        jobs.report_progress(claimed.id, progress={f"k{i}": 1e300 for i in range(14)}, attempt=1)
    assert info.value.field == "progress"
    assert jobs.get(claimed.id, client_id=A).progress == fits


_BAD_PROGRESS = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=3),
    st.dictionaries(st.text(max_size=3), st.sets(st.integers(), max_size=2), min_size=1),
    st.just({"x": float("nan")}),
    st.just({"x": (1, 2)}),
    st.just({"x": "\x00"}),
    st.just({"x": "y" * 5000}),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(bad=_BAD_PROGRESS)
def test_bad_progress_is_a_validation_error_before_sql(jobs: JobRepository, bad: object) -> None:
    # A job id that does not exist: any SQL would say NotFoundError instead.
    with pytest.raises(ValidationError) as info:
        jobs.report_progress(uuid.uuid4(), progress=bad, attempt=1)  # type: ignore[arg-type]
    assert info.value.field == "progress"


@pytest.mark.parametrize("attempt", [None, 0, -1, "1", 1.0, True])
def test_report_progress_needs_the_claims_attempt(jobs: JobRepository, attempt: object) -> None:
    with pytest.raises(ValidationError) as info:
        jobs.report_progress(uuid.uuid4(), progress={}, attempt=attempt)  # type: ignore[arg-type]
    assert info.value.field == "attempt"


# -- count_by_status, list, retention, factories --------------------------------------------------


def test_cancelled_jobs_are_counted_listed_and_deleted_by_retention(
    jobs: JobRepository, cira_db: Database
) -> None:
    made = jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(4)])
    jobs.cancel(made[0].id, client_id=A)
    jobs.cancel(made[1].id, client_id=A)
    counts = jobs.count_by_status(client_id=A)
    assert list(counts) == list(JobStatus)
    assert counts[JobStatus.CANCELLED] == 2
    assert counts[JobStatus.QUEUED] == 2
    listed = jobs.list(client_id=A, status=JobStatus.CANCELLED).items
    assert [job.id for job in listed] == [made[1].id, made[0].id]
    assert jobs.list(client_id=A, status="cancelled").items == listed
    cutoff = datetime.now(UTC) + timedelta(seconds=1)
    assert jobs.delete_finished_before(cutoff) == 2
    assert jobs.find(made[0].id, client_id=A) is None
    assert {job.id for job in jobs.list(client_id=A).items} == {made[2].id, made[3].id}


def test_retention_uses_the_index_of_ended_jobs(cira_db: Database) -> None:
    from cira_db._sql import query

    sql = query("jobs.sql", "delete_finished_jobs").sql
    with cira_db.connection() as conn, conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN " + sql, {"cutoff": datetime.now(UTC), "batch_size": 10}
            ).fetchall()
        )
    assert "idx_jobs_ended_created" in plan


# -- queue_stats -----------------------------------------------------------------------------------


def test_queue_stats_of_an_empty_queue(jobs: JobRepository) -> None:
    stats = jobs.queue_stats()
    assert isinstance(stats, QueueStats)
    assert stats.by_status == dict.fromkeys(JobStatus, 0)
    assert list(stats.by_status) == list(JobStatus)
    assert (stats.oldest_due_age, stats.oldest_queued_age) == (None, None)
    assert (stats.scheduled, stats.expired_leases) == (0, 0)
    assert stats.client_id is None
    assert stats.measured_at.tzinfo is not None


def test_queue_stats_per_client_and_overall(jobs: JobRepository, cira_db: Database) -> None:
    made = jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(6)])
    jobs.create_many(client_id=B, pdf_urls=[_url(n) for n in range(3)])
    with cira_db.connection() as conn:
        # Ages and a schedule the calls of this engineer cannot set (create(run_after=) is sched's).
        conn.execute(
            "UPDATE jobs SET created_at = now() - interval '1 hour' WHERE id = %s", (made[0].id,)
        )
        conn.execute(
            "UPDATE jobs SET run_after = now() + interval '1 day',"
            " created_at = now() - interval '2 hours' WHERE id = %s",
            (made[1].id,),
        )
        conn.execute(
            "UPDATE jobs SET run_after = now() - interval '10 minutes',"
            " created_at = now() - interval '3 hours' WHERE id = %s",
            (made[2].id,),
        )
    claimed = jobs.claim_batch(2, lease=SHORT, client_id=B)
    jobs.cancel(made[5].id, client_id=A)
    time.sleep(0.25)  # B's two leases run out
    a = jobs.queue_stats(client_id=A)
    assert a.client_id == A
    assert a.by_status == {
        JobStatus.QUEUED: 5,
        JobStatus.PROCESSING: 0,
        JobStatus.COMPLETED: 0,
        JobStatus.FAILED: 0,
        JobStatus.CANCELLED: 1,
    }
    assert a.scheduled == 1
    assert a.expired_leases == 0
    assert a.oldest_queued_age is not None
    assert timedelta(hours=3) <= a.oldest_queued_age < timedelta(hours=3, minutes=1)
    # The longest wait of a due job: made[0], due since its creation an hour ago
    # (made[2] is due only since its run_after, 10 minutes ago; made[1] is not due).
    assert a.oldest_due_age is not None
    assert timedelta(hours=1) <= a.oldest_due_age < timedelta(hours=1, minutes=1)
    b = jobs.queue_stats(client_id=B)
    assert b.by_status[JobStatus.PROCESSING] == 2
    assert b.by_status[JobStatus.QUEUED] == 1
    assert b.expired_leases == len(claimed) == 2
    assert b.scheduled == 0
    everyone = jobs.queue_stats()
    assert everyone.client_id is None
    assert everyone.by_status == {
        status: a.by_status[status] + b.by_status[status] for status in JobStatus
    }
    assert (everyone.scheduled, everyone.expired_leases) == (1, 2)
    assert everyone.oldest_queued_age is not None
    assert everyone.oldest_queued_age >= a.oldest_queued_age
    assert jobs.queue_stats(client_id="nobody").by_status == dict.fromkeys(JobStatus, 0)


def test_queue_stats_validates_the_client(jobs: JobRepository) -> None:
    with pytest.raises(ValidationError) as info:
        jobs.queue_stats(client_id="")
    assert info.value.field == "client_id"


def test_queue_stats_is_frozen() -> None:
    stats = QueueStats(
        client_id=None,
        by_status=dict.fromkeys(JobStatus, 0),
        oldest_due_age=None,
        oldest_queued_age=None,
        scheduled=0,
        expired_leases=0,
        measured_at=datetime.now(UTC),
    )
    with pytest.raises(AttributeError):
        stats.scheduled = 1  # type: ignore[misc]
    assert not hasattr(stats, "__dict__")


def _plan(db: Database, name: str, params: dict[str, Any]) -> str:
    from cira_db._sql import query

    with db.connection() as conn:
        rows = conn.execute("EXPLAIN (COSTS OFF) " + query("jobs.sql", name).sql, params)
        return "\n".join(row[0] for row in rows.fetchall())


def test_queue_stats_plans_on_a_realistic_table(cira_db: Database) -> None:
    # 50,000 jobs of 100 clients: 1% queued (a third scheduled), 0.5% processing, the rest ended.
    with cira_db.connection() as conn:
        conn.execute(
            """
            INSERT INTO jobs (id, client_id, status, pdf_url, created_at, completed_at,
                              error_message, attempts, lease_expires_at, run_after)
            SELECT gen_random_uuid(), 'client-' || (abs(hashtext(g::text)) % 100),
                   s.status::job_status, 'https://e.com/x.pdf', now() - g * interval '1 second',
                   CASE WHEN s.status = 'completed' THEN now() END,
                   CASE WHEN s.status = 'failed' THEN 'x' END,
                   CASE WHEN s.status = 'queued' THEN 0 ELSE 1 END,
                   CASE WHEN s.status = 'processing' THEN now() + interval '5 minutes' END,
                   CASE WHEN s.status = 'queued' AND g % 3 = 0 THEN now() + interval '1 hour' END
            FROM generate_series(1, 50000) AS g,
            LATERAL (SELECT CASE WHEN g % 100 = 0 THEN 'queued'
                                 WHEN g % 200 = 1 THEN 'processing'
                                 WHEN g % 50 = 7 THEN 'failed'
                                 WHEN g % 50 = 9 THEN 'cancelled'
                                 ELSE 'completed' END AS status) AS s
            """
        )
        conn.execute("VACUUM ANALYZE jobs")
    one = _plan(cira_db, "queue_stats_for_client", {"client_id": "client-7"})
    assert "Seq Scan" not in one, one
    assert "idx_jobs_client_status_created" in one, one
    every = _plan(cira_db, "queue_stats", {})
    # Only the counts by status read the whole table (documented); the queued and
    # the expired-lease figures read their partial indexes.
    assert every.count("Seq Scan") <= 1, every
    assert "Seq Scan on jobs queued" not in every, every
    assert "Seq Scan on jobs held" not in every, every
    # the queued rows through a claim index (0005 dropped idx_jobs_queue, their old index)
    assert "idx_jobs_claim" in every, every


# -- races: a cancel that meets a claim in flight ------------------------------------------------


@pytest.mark.parametrize("claim_commits", [True, False], ids=["claim-commits", "claim-rolls-back"])
def test_a_cancel_waits_for_a_claim_in_flight_and_acts_on_its_outcome(
    cira_db: Database, claim_commits: bool
) -> None:
    import threading

    import psycopg

    jobs = JobRepository(cira_db)
    job = jobs.create(client_id=A, pdf_url=URL)
    outcome: dict[str, Any] = {}
    with cira_db.connect_direct() as holder:
        with holder.transaction():
            claimed = JobRepository(holder).claim_next(lease=LEASE, client_id=A)
            assert claimed is not None
            assert claimed.id == job.id
            worker = threading.Thread(
                target=lambda: outcome.setdefault("job", jobs.cancel(job.id, client_id=A))
            )
            worker.start()
            worker.join(0.5)
            assert worker.is_alive()  # the cancel waits for the claim's row lock
            if not claim_commits:
                raise psycopg.Rollback
        worker.join(10)
        assert not worker.is_alive()
    cancelled: Job = outcome["job"]
    if claim_commits:
        # The claim won: the cancel saw the job processing and asked its worker.
        assert cancelled.status is JobStatus.PROCESSING
        assert cancelled.cancel_requested_at is not None
        assert cancelled.attempts == 1
    else:
        # The claim never happened: the cancel saw the job queued and ended it.
        assert cancelled.status is JobStatus.CANCELLED
        assert cancelled.attempts == 0
    assert jobs.get(job.id, client_id=A) == cancelled


def test_two_cancels_at_once_both_return_the_cancelled_job(cira_db: Database) -> None:
    import threading

    jobs = JobRepository(cira_db)
    job = jobs.create(client_id=A, pdf_url=URL)
    outcome: dict[str, Any] = {}
    with cira_db.connect_direct() as holder:
        with holder.transaction():
            first = JobRepository(holder).cancel(job.id, client_id=A)
            worker = threading.Thread(
                target=lambda: outcome.setdefault("job", jobs.cancel(job.id, client_id=A))
            )
            worker.start()
            worker.join(0.5)
            assert worker.is_alive()  # waits for the first cancel's row lock
        # The second statement's snapshot saw the job queued, its update found it
        # cancelled: it reads again and returns the job as the first cancel left it.
        worker.join(10)
        assert not worker.is_alive()
    assert first.status is JobStatus.CANCELLED
    assert outcome["job"] == first
