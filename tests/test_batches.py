"""complete_many, fail_many, extend_leases and create_many(job_ids=, returning=) on both faces.

Real PostgreSQL; each scenario runs on the sync and the asyncio face (the
``jobs`` fixture). Mixed batches (stale items, another client's, cancelled)
are the point: every item gets its own outcome.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from _lost_reply import LostReply
from cira_db import (
    Completion,
    Database,
    Failure,
    ItemOutcome,
    Job,
    JobRepository,
    JobResultRepository,
    JobStatus,
)
from cira_db.errors import ConflictError, InvalidTransitionError, NotFoundError, ValidationError

A, B = "client-a", "client-b"
LEASE = timedelta(minutes=5)


def _url(n: int) -> str:
    return f"https://example.com/{n}.pdf"


def _claimed(jobs: JobRepository, count: int, client: str = A) -> list[Job]:
    jobs.create_many(client_id=client, pdf_urls=[_url(n) for n in range(count)])
    claimed = jobs.claim_batch(count, lease=LEASE, client_id=client)
    assert len(claimed) == count
    return claimed


def _done(job: Job, score: str = "0.9") -> Completion:
    return Completion(job.id, {"n": str(job.id)}, Decimal(score), 7, attempt=job.attempts)


def _request_cancel(db: Database, job_id: uuid.UUID) -> None:
    with db.connection() as conn:
        conn.execute("UPDATE jobs SET cancel_requested_at = now() WHERE id = %s", (job_id,))


def _status(db: Database, job_id: uuid.UUID) -> tuple[str, Any, int]:
    with db.connection() as conn:
        row = conn.execute(
            "SELECT status::text, lease_expires_at, attempts FROM jobs WHERE id = %s", (job_id,)
        ).fetchone()
    assert row is not None
    return (row[0], row[1], row[2])


def _results(db: Database) -> int:
    with db.connection() as conn:
        row = conn.execute("SELECT count(*) FROM job_results").fetchone()
    assert row is not None
    return int(row[0])


# -- complete_many --------------------------------------------------------------------------


def test_complete_many_completes_every_item_in_order(
    jobs: JobRepository, cira_db: Database
) -> None:
    claimed = _claimed(jobs, 3)
    outcomes = jobs.complete_many([_done(job) for job in reversed(claimed)])
    assert [o.job_id for o in outcomes] == [job.id for job in reversed(claimed)]
    assert [o.index for o in outcomes] == [0, 1, 2]
    assert all(o.ok and o.outcome == "done" for o in outcomes)
    for outcome in outcomes:
        assert outcome.value is not None
        assert outcome.value.job_id == outcome.job_id
        assert outcome.value.extracted_data == {"n": str(outcome.job_id)}
        assert outcome.value.confidence_score == Decimal("0.90")
    assert all(_status(cira_db, job.id)[0] == "completed" for job in claimed)
    assert _results(cira_db) == 3


def test_complete_many_mixed_batch_reports_each_item_and_applies_the_rest(
    jobs: JobRepository, cira_db: Database
) -> None:
    mine = _claimed(jobs, 4)
    other = _claimed(jobs, 1, client=B)[0]
    queued = jobs.create(client_id=A, pdf_url=_url(99))
    stale, cancelled_job, good, claimed_again = mine
    # The stale item: its claim (attempt 1) was released and the job claimed again (attempt 2).
    with cira_db.connection() as conn:
        conn.execute("UPDATE jobs SET attempts = attempts + 1 WHERE id = %s", (claimed_again.id,))
        conn.execute(
            "UPDATE jobs SET status = 'failed', lease_expires_at = NULL WHERE id = %s", (stale.id,)
        )
        conn.execute(
            "UPDATE jobs SET status = 'cancelled', lease_expires_at = NULL WHERE id = %s",
            (cancelled_job.id,),
        )
    missing = uuid.uuid4()
    items = [
        _done(stale),
        _done(cancelled_job),
        _done(good),
        _done(claimed_again),
        _done(other),
        Completion(queued.id, {}, 1, 0),
        Completion(missing, {}, 1, 0),
    ]
    outcomes = jobs.complete_many(items, client_id=A)
    got = [(o.outcome, o.status) for o in outcomes]
    assert got == [
        ("wrong_state", JobStatus.FAILED),
        ("cancelled", JobStatus.CANCELLED),
        ("done", JobStatus.PROCESSING),
        ("claimed_again", JobStatus.PROCESSING),
        ("not_found", None),  # another client's job looks missing
        ("wrong_state", JobStatus.QUEUED),
        ("not_found", None),
    ]
    assert outcomes[3].attempts == claimed_again.attempts + 1
    assert [o.value is not None for o in outcomes] == [
        False,
        False,
        True,
        False,
        False,
        False,
        False,
    ]
    assert _results(cira_db) == 1  # no result without a completed job
    assert _status(cira_db, claimed_again.id)[0] == "processing"  # the newer claim is untouched
    assert _status(cira_db, other.id)[0] == "processing"


def test_complete_many_atomic_changes_nothing_when_one_item_is_refused(
    jobs: JobRepository, cira_db: Database
) -> None:
    claimed = _claimed(jobs, 3)
    items = [_done(job) for job in claimed]
    items[1] = Completion(claimed[1].id, {}, 1, 0, attempt=claimed[1].attempts + 1)
    with pytest.raises(InvalidTransitionError, match=r"items\[1\]"):
        jobs.complete_many(items, atomic=True)
    assert all(_status(cira_db, job.id)[0] == "processing" for job in claimed)
    assert _results(cira_db) == 0
    with pytest.raises(NotFoundError, match=r"items\[0\]"):
        jobs.complete_many([Completion(uuid.uuid4(), {}, 1, 0), _done(claimed[0])], atomic=True)
    assert _status(cira_db, claimed[0].id)[0] == "processing"
    outcomes = jobs.complete_many([_done(job) for job in claimed], atomic=True)
    assert all(o.ok for o in outcomes)


def test_complete_many_completes_a_cancel_requested_job(
    jobs: JobRepository, cira_db: Database
) -> None:
    (job,) = _claimed(jobs, 1)
    _request_cancel(cira_db, job.id)
    (outcome,) = jobs.complete_many([_done(job)])
    assert outcome.outcome == "done"
    assert _status(cira_db, job.id)[0] == "completed"


def test_complete_many_repeated_statement_reports_its_own_results(cira_db: Database) -> None:
    # What a retry after a lost reply does: the same statement, the same result ids, again.
    from cira_db._repositories import _core_batches
    from cira_db._repositories._base import Runner

    jobs = JobRepository(cira_db)
    claimed = _claimed(jobs, 2)
    logic = _core_batches.complete_many([_done(j) for j in claimed], client_id=None, atomic=False)
    call = next(logic)
    runner = Runner(cira_db)
    first = runner.execute(call)
    again = runner.execute(call)
    assert [row[1] for row in first] == ["processing", "processing"]
    assert [row[1] for row in again] == ["repeated", "repeated"]
    assert [row[3] for row in again] == [row[3] for row in first]  # the same created_at
    with pytest.raises(StopIteration) as stop:
        logic.send(again)
    assert [o.outcome for o in stop.value.value] == ["done", "done"]
    for outcome in stop.value.value:  # the result rows the first try stored
        assert outcome.status is JobStatus.COMPLETED
        assert _fields(outcome.value)[:2] == _stored(cira_db, outcome.job_id)[:2]
        assert outcome.value.created_at == _stored(cira_db, outcome.job_id)[5]
    assert call.idempotent
    assert _results(cira_db) == 2


def _stored(db: Database, job_id: uuid.UUID) -> tuple[Any, ...]:
    with db.connection() as conn:
        row = conn.execute(
            "SELECT id, job_id, extracted_data, confidence_score, tokens_used, created_at "
            "FROM job_results WHERE job_id = %s",
            (job_id,),
        ).fetchone()
    assert row is not None
    return tuple(row)


def _fields(value: Any) -> tuple[Any, ...]:
    # json.dumps tells 1e16 from 10**16, -0.0 from 0.0 and one key order from another.
    return (
        value.id,
        value.job_id,
        json.dumps(value.extracted_data),
        value.confidence_score,
        value.tokens_used,
        value.created_at,
    )


# Numbers jsonb writes back otherwise than json.dumps wrote them, and keys it reorders.
_AWKWARD: list[dict[str, Any]] = [
    {"big": 1e16, "bigger": 1.5e300, "small": 1e-07, "zero": -0.0, "x": 100.0, "int": 10**20},
    {"bb": 1, "a": {"ccc": [1.25, {"é": 1, "z": 2, "yy": 3}], "b": None}, "": True},
    {},
]
_SCORES: list[float | int | Decimal] = [0.935, 1, Decimal("0.5")]


def test_complete_many_results_are_the_stored_rows(jobs: JobRepository, cira_db: Database) -> None:
    # Built from what was sent (the reply carries only created_at): the same values as
    # reading the stored rows, numbers and key order included.
    claimed = _claimed(jobs, len(_AWKWARD))
    items = [
        Completion(job.id, data, score, 3, attempt=job.attempts)
        for job, data, score in zip(claimed, _AWKWARD, _SCORES, strict=True)
    ]
    outcomes = jobs.complete_many(items)
    assert [o.outcome for o in outcomes] == ["done"] * len(items)
    for outcome in outcomes:
        assert _fields(outcome.value) == tuple(
            (json.dumps(f) if i == 2 else f) for i, f in enumerate(_stored(cira_db, outcome.job_id))
        )
    assert [str(o.value.confidence_score) for o in outcomes if o.value] == ["0.94", "1.00", "0.50"]


def test_complete_many_validates_every_item_before_any_sql(
    jobs: JobRepository, cira_db: Database
) -> None:
    (job,) = _claimed(jobs, 1)
    with pytest.raises(ValidationError) as info:
        jobs.complete_many([_done(job), Completion(job.id, {}, Decimal("1.5"), 0)])
    assert info.value.field == "items[1].confidence_score"
    with pytest.raises(ValidationError) as alone:
        jobs.complete(job.id, extracted_data={}, confidence_score=Decimal("1.5"), tokens_used=0)
    renamed = str(alone.value).replace("confidence_score", "items[1].confidence_score", 1)
    assert str(info.value) == renamed
    with pytest.raises(ValidationError) as info:
        jobs.complete_many([_done(job), Completion(job.id, {"a": {1, 2}}, 1, 0)])
    assert info.value.field == "items[1].extracted_data"
    assert str(info.value).startswith("items[1].extracted_data: must be JSON-serialisable")
    with pytest.raises(ValidationError) as info:
        jobs.fail_many([Failure(job.id, "x"), Failure(job.id, "y", retry_in=timedelta(-1))])
    assert info.value.field == "items[1].retry_in"
    with pytest.raises(ValidationError) as info:
        jobs.complete_many([_done(job), _done(job)])
    assert info.value.field == "items[1]"
    with pytest.raises(ValidationError) as info:
        jobs.complete_many([_done(job), "nope"])  # type: ignore[list-item]
    assert info.value.field == "items[1]"
    with pytest.raises(ValidationError) as info:
        jobs.complete_many([Completion(job.id, {}, 1, -1)])
    assert info.value.field == "items[0].tokens_used"
    assert _status(cira_db, job.id)[0] == "processing"
    assert jobs.complete_many([]) == []


@pytest.mark.parametrize(
    "call", ["complete_many", "fail_many", "extend_leases", "complete_and_claim"]
)
def test_a_batch_waits_for_a_concurrent_change_and_reports_it(cira_db: Database, call: str) -> None:
    # The batch locks its rows (FOR UPDATE): an item whose job another transaction is
    # changing waits, then is judged on the committed row, not on a stale snapshot
    # (which would let it write over a job that is no longer processing).
    jobs = JobRepository(cira_db)
    (job,) = _claimed(jobs, 1)
    runs: dict[str, Callable[[], list[Any]]] = {
        "complete_many": lambda: list(jobs.complete_many([_done(job)])),
        "fail_many": lambda: list(jobs.fail_many([Failure(job.id, "x", job.attempts)])),
        "extend_leases": lambda: list(jobs.extend_leases([job.id], lease=LEASE)),
        "complete_and_claim": lambda: jobs.complete_and_claim([_done(job)], 1, lease=LEASE)[0],
    }
    run = runs[call]
    outcomes: list[Any] = []
    with cira_db.connection() as holder, holder.transaction():
        holder.execute(
            "UPDATE jobs SET status = 'failed', lease_expires_at = NULL WHERE id = %s", (job.id,)
        )
        worker = threading.Thread(target=lambda: outcomes.extend(run()))
        worker.start()
        time.sleep(0.5)
        assert worker.is_alive()  # waiting on the row lock
    worker.join(10)
    assert [(o.outcome, o.status) for o in outcomes] == [("wrong_state", JobStatus.FAILED)]
    assert _status(cira_db, job.id)[:2] == ("failed", None)


# -- complete_and_claim ---------------------------------------------------------------------


def test_complete_and_claim_completes_a_batch_and_claims_the_next_in_claim_order(
    jobs: JobRepository, cira_db: Database
) -> None:
    made = jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(5)])
    urgent = jobs.create(client_id=A, pdf_url=_url(9), priority=5)
    outcomes, first = jobs.complete_and_claim([], 2, lease=LEASE)  # the first turn only claims
    assert outcomes == []
    assert [j.id for j in first] == [urgent.id, made[0].id]  # claim order: priority, age
    assert all(j.status is JobStatus.PROCESSING and j.attempts == 1 for j in first)
    step = jobs.complete_and_claim([_done(j) for j in first], 10, lease=LEASE)
    assert [(o.index, o.job_id, o.outcome) for o in step.outcomes] == [
        (0, urgent.id, "done"),
        (1, made[0].id, "done"),
    ]
    for outcome in step.outcomes:
        assert outcome.value is not None
        assert _fields(outcome.value)[:2] == _stored(cira_db, outcome.job_id)[:2]
        assert outcome.value.created_at == _stored(cira_db, outcome.job_id)[5]
    assert [j.id for j in step.claimed] == [j.id for j in made[1:]]
    for job in step.claimed:  # each claimed job is the stored row
        status, lease, attempts = _status(cira_db, job.id)
        assert (status, lease, attempts) == ("processing", job.lease_expires_at, job.attempts)
    last = jobs.complete_and_claim([_done(j) for j in step.claimed], 10, lease=LEASE)
    assert [o.outcome for o in last.outcomes] == ["done"] * 4
    assert last.claimed == []
    assert _results(cira_db) == 6
    assert all(_status(cira_db, j.id)[0] == "completed" for j in [urgent, *made])


@pytest.mark.parametrize("scope", [None, A], ids=["any-client", "one-client"])
def test_complete_and_claim_reports_each_item_and_claims_only_due_jobs(
    jobs: JobRepository, cira_db: Database, scope: str | None
) -> None:
    good, stale, failed, cancelled_job, finished = _claimed(jobs, 5)
    other = _claimed(jobs, 1, client=B)[0]
    queued = jobs.create(client_id=A, pdf_url=_url(6))
    later = jobs.create(client_id=A, pdf_url=_url(8), run_after=datetime.now(UTC) + LEASE)
    later_b = jobs.create(client_id=B, pdf_url=_url(9), run_after=datetime.now(UTC) + LEASE)
    with cira_db.connection() as conn:
        conn.execute("UPDATE jobs SET attempts = attempts + 1 WHERE id = %s", (stale.id,))
        for job_id, status in ((failed.id, "failed"), (cancelled_job.id, "cancelled")):
            conn.execute(
                "UPDATE jobs SET status = %s::job_status, lease_expires_at = NULL WHERE id = %s",
                (status, job_id),
            )
    jobs.complete_many([_done(finished)])
    waiting_b = jobs.create(client_id=B, pdf_url=_url(7))
    items = [
        _done(good),
        _done(stale),
        _done(failed),
        _done(cancelled_job),
        _done(finished),
        Completion(queued.id, {}, 1, 0),
        _done(other),
    ]
    outcomes, claimed = jobs.complete_and_claim(items, 10, lease=LEASE, client_id=scope)
    assert [(o.outcome, o.status) for o in outcomes] == [
        ("done", JobStatus.PROCESSING),
        ("claimed_again", JobStatus.PROCESSING),
        ("wrong_state", JobStatus.FAILED),
        ("cancelled", JobStatus.CANCELLED),
        ("wrong_state", JobStatus.COMPLETED),
        ("wrong_state", JobStatus.QUEUED),
        ("not_found", None) if scope else ("done", JobStatus.PROCESSING),
    ]
    # Due queued jobs only (never a scheduled one); with client_id, that client's only.
    expected = [queued.id] if scope else [queued.id, waiting_b.id]
    assert [j.id for j in claimed] == expected
    for job in claimed:  # each claimed job is the stored row, field for field
        assert job == jobs.get(job.id, client_id=job.client_id)
        assert job.status is JobStatus.PROCESSING
        assert job.lease_expires_at is not None
    assert _results(cira_db) == (2 if scope else 3)  # finished's, good's (and other's)
    assert _status(cira_db, stale.id)[0] == "processing"  # the newer claim is untouched
    assert _status(cira_db, failed.id)[0] == "failed"
    assert _status(cira_db, cancelled_job.id)[0] == "cancelled"
    assert _status(cira_db, later.id)[0] == "queued"
    assert _status(cira_db, later_b.id)[0] == "queued"
    assert _status(cira_db, other.id)[0] == ("processing" if scope else "completed")


def test_the_per_client_complete_and_claim_differs_only_in_its_client_filters() -> None:
    # What the mutation guards check in complete_jobs_and_claim holds for the per-client
    # copy too: the two differ only in the client conditions.
    from cira_db._sql import load_queries

    queries = load_queries("jobs.sql")
    plain = queries["complete_jobs_and_claim"].sql
    scoped = queries["complete_jobs_and_claim_for_client"].sql
    held = "WHERE jobs.id = ANY (%(ids)b::uuid[])\n"
    due = "WHERE status = 'queued'"
    assert (plain.count(held), plain.count(due)) == (1, 1)
    assert scoped == plain.replace(
        held, "WHERE jobs.id = ANY (%(ids)b::uuid[]) AND jobs.client_id = %(client_id)s\n"
    ).replace(due, "WHERE client_id = %(client_id)s AND status = 'queued'")


def test_complete_and_claim_skips_a_queued_job_another_transaction_holds(
    cira_db: Database, cira_db_url: str
) -> None:
    jobs = JobRepository(cira_db)
    first, second = jobs.create_many(client_id=A, pdf_urls=[_url(1), _url(2)])
    with cira_db.connection() as holder, holder.transaction():
        holder.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (first.id,))
        # On a connection that gives up on a lock at once: waiting would be an error.
        with psycopg.connect(cira_db_url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '100ms'")
            _, claimed = JobRepository(conn).complete_and_claim([], 2, lease=LEASE)
    assert [j.id for j in claimed] == [second.id]
    assert _status(cira_db, first.id)[0] == "queued"


def test_complete_and_claim_validates_everything_before_any_sql(
    jobs: JobRepository, cira_db: Database
) -> None:
    (job,) = _claimed(jobs, 1)
    waiting = jobs.create(client_id=A, pdf_url=_url(5))
    bad_calls: list[tuple[Callable[[], object], str]] = [
        (lambda: jobs.complete_and_claim([_done(job)], 0, lease=LEASE), "limit"),
        (lambda: jobs.complete_and_claim([_done(job)], 1001, lease=LEASE), "limit"),
        (lambda: jobs.complete_and_claim([_done(job)], 1, lease=timedelta(0)), "lease"),
        (lambda: jobs.complete_and_claim([_done(job)], 1, lease=LEASE, client_id=""), "client_id"),
        (
            lambda: jobs.complete_and_claim([Completion(job.id, {}, 2, 0)], 1, lease=LEASE),
            r"items\[0\]\.confidence_score",
        ),
        (lambda: jobs.complete_and_claim([_done(job), _done(job)], 1, lease=LEASE), r"items\[1\]"),
        (lambda: jobs.complete_and_claim("nope", 1, lease=LEASE), "items"),  # type: ignore[arg-type]
    ]
    for call, field in bad_calls:
        with pytest.raises(ValidationError, match=field):
            call()
    assert _status(cira_db, job.id)[0] == "processing"
    assert _status(cira_db, waiting.id)[0] == "queued"
    assert _results(cira_db) == 0


def _drive_complete_and_claim(
    db: Database, items: list[Completion], *, commit_first: bool, fail_again: bool = False
) -> tuple[Any, list[Any]]:
    """complete_and_claim whose statement fails (``commit_first``: after it committed,
    as when the reply is lost): what it returns, and the calls it made. With
    ``fail_again`` the claim after the recovery fails too."""
    from cira_db._repositories import _core_batches
    from cira_db._repositories._base import Runner
    from cira_db.errors import DatabaseUnavailableError

    runner = Runner(db)
    logic = _core_batches.complete_and_claim(items, 10, lease=LEASE, client_id=None)
    first = next(logic)
    assert not first.idempotent  # never repeated as a whole: the claim may have happened
    if commit_first:
        runner.execute(first)
    calls = [first]
    call = logic.throw(DatabaseUnavailableError("complete and claim jobs: connection lost"))
    try:
        while True:
            calls.append(call)
            if fail_again and len(calls) == 3:
                call = logic.throw(DatabaseUnavailableError("claim jobs: connection lost"))
            else:
                call = logic.send(runner.execute(call))
    except StopIteration as stop:
        return stop.value, calls


@pytest.mark.parametrize("commit_first", [False, True], ids=["failed", "reply-lost"])
def test_complete_and_claim_failure_stores_the_results_then_claims_again(
    cira_db: Database, commit_first: bool, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = JobRepository(cira_db)
    claimed = _claimed(jobs, 2)
    jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(3)])
    with caplog.at_level("WARNING", logger="cira_db.calls"):
        got, calls = _drive_complete_and_claim(
            cira_db, [_done(j) for j in claimed], commit_first=commit_first
        )
    assert len(calls) == 3
    assert calls[1].idempotent  # the completion alone, with retries
    assert calls[1].params["result_ids"] == calls[0].params["result_ids"]
    assert not calls[2].idempotent  # then one claim, never repeated
    assert [o.outcome for o in got.outcomes] == ["done", "done"]
    assert _results(cira_db) == 2  # stored once, whether the first try committed or not
    for outcome in got.outcomes:
        assert outcome.value is not None
        assert outcome.value.created_at == _stored(cira_db, outcome.job_id)[5]
    # The lost try's claim holds the 3 queued jobs until their lease ends: the new claim
    # finds none. After a failed try, the new claim takes them.
    assert len(got.claimed) == (0 if commit_first else 3)
    with cira_db.connection() as conn:
        row = conn.execute("SELECT count(*) FROM jobs WHERE status = 'processing'").fetchone()
    assert row == (3,)
    assert any("completing the 2 items again" in r.getMessage() for r in caplog.records)


def test_complete_and_claim_says_the_items_are_stored_when_the_claim_fails_too(
    cira_db: Database,
) -> None:
    from cira_db.errors import DatabaseUnavailableError

    jobs = JobRepository(cira_db)
    claimed = _claimed(jobs, 2)
    with pytest.raises(DatabaseUnavailableError, match="the 2 items were completed first, 2 done"):
        _drive_complete_and_claim(
            cira_db, [_done(j) for j in claimed], commit_first=False, fail_again=True
        )
    assert _results(cira_db) == 2


def test_complete_and_claim_in_a_callers_transaction_raises_the_failure(
    cira_db_url: str,
) -> None:
    from cira_db._repositories import _core_batches
    from cira_db.errors import DatabaseUnavailableError

    with psycopg.connect(cira_db_url, autocommit=True) as conn:
        assert _core_batches.commits_each_statement(conn)
        with conn.transaction():
            # Inside the caller's transaction nothing commits on its own: no recovery.
            assert not _core_batches.commits_each_statement(conn)
            jobs = JobRepository(conn)
            job = jobs.create(client_id=A, pdf_url=_url(1))
            logic = _core_batches.complete_and_claim(
                [Completion(job.id, {}, 1, 0)],
                1,
                lease=LEASE,
                client_id=None,
                recover=_core_batches.commits_each_statement(conn),
            )
            next(logic)
            with pytest.raises(DatabaseUnavailableError, match="connection lost"):
                logic.throw(DatabaseUnavailableError("complete and claim jobs: connection lost"))
    with psycopg.connect(cira_db_url) as conn:
        assert not _core_batches.commits_each_statement(conn)  # not autocommit


def test_complete_and_claim_after_a_really_lost_reply_keeps_the_results(
    cira_db: Database, cira_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = JobRepository(cira_db)
    claimed = _claimed(jobs, 2)
    jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(3)])
    with (
        LostReply(cira_db_url) as relay,
        Database(relay.url, pool_min_size=1, pool_max_size=1, retry_backoff=0.01) as db,
        caplog.at_level("WARNING", logger="cira_db.calls"),
    ):
        relay.lose_reply("claimed AS (")  # the server commits; the reply never arrives
        outcomes, got = JobRepository(db).complete_and_claim(
            [_done(j) for j in claimed], 10, lease=LEASE
        )
    assert relay.lost == 1
    assert [o.outcome for o in outcomes] == ["done", "done"]  # found by the repeat
    assert got == []  # the lost try claimed all three: they wait for their lease
    assert _results(cira_db) == 2
    assert all(_status(cira_db, j.id)[0] == "completed" for j in claimed)
    assert [r.levelname for r in caplog.records if "items again" in r.getMessage()] == ["WARNING"]


def test_complete_and_claim_failure_with_no_items_is_raised(cira_db: Database) -> None:
    from cira_db._repositories import _core_batches
    from cira_db.errors import DatabaseUnavailableError

    logic = _core_batches.complete_and_claim([], 10, lease=LEASE, client_id=None)
    next(logic)
    with pytest.raises(DatabaseUnavailableError):
        logic.throw(DatabaseUnavailableError("complete and claim jobs: connection lost"))


def test_workers_draining_with_complete_and_claim_finish_every_job_once(
    cira_db: Database,
) -> None:
    total, batch = 300, 7
    jobs = JobRepository(cira_db)
    jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(total)])
    done: list[list[uuid.UUID]] = [[], [], []]
    errors: list[BaseException] = []

    def worker(mine: list[uuid.UUID]) -> None:
        try:
            items: list[Completion] = []
            while True:
                step = jobs.complete_and_claim(items, batch, lease=LEASE)
                assert all(o.ok for o in step.outcomes)
                mine.extend(o.job_id for o in step.outcomes)
                if not step.claimed:
                    return
                items = [_done(j) for j in step.claimed]
        except BaseException as exc:  # reported by the test, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(d,)) for d in done]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    finished = [job_id for d in done for job_id in d]
    assert len(finished) == total
    assert len(set(finished)) == total  # every job once
    assert _results(cira_db) == total
    with cira_db.connection() as conn:
        row = conn.execute(
            "SELECT count(*), min(attempts), max(attempts) FROM jobs WHERE status = 'completed'"
        ).fetchone()
    assert row == (total, 1, 1)  # no job was claimed twice


# -- fail_many ------------------------------------------------------------------------------


def test_fail_many_fails_retries_later_and_cancels(jobs: JobRepository, cira_db: Database) -> None:
    for_good, later, cancel, stale = _claimed(jobs, 4)
    queued = jobs.create(client_id=A, pdf_url=_url(50))
    _request_cancel(cira_db, cancel.id)
    outcomes = jobs.fail_many(
        [
            Failure(for_good.id, "broken pdf", attempt=for_good.attempts),
            Failure(later.id, "throttled", attempt=later.attempts, retry_in=timedelta(hours=1)),
            Failure(cancel.id, "stopped", attempt=cancel.attempts, retry_in=timedelta(1)),
            Failure(stale.id, "late", attempt=stale.attempts + 1),
            Failure(queued.id, "never claimed"),
        ]
    )
    assert [o.outcome for o in outcomes] == [
        "done",
        "done",
        "cancelled",
        "wrong_state",
        "wrong_state",
    ]
    assert outcomes[4].status is JobStatus.QUEUED
    assert jobs.get(queued.id, client_id=A).error_message is None
    failed, requeued, cancelled = (o.value for o in outcomes[:3])
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.error_message == "broken pdf"
    assert requeued is not None
    assert requeued.status is JobStatus.QUEUED
    assert requeued.error_message == "throttled"
    assert requeued.attempts == later.attempts
    assert requeued.run_after is not None
    assert requeued.run_after > datetime.now(UTC) + timedelta(minutes=59)
    assert requeued.lease_expires_at is None
    assert cancelled is not None
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.error_message == "stopped"
    assert cancelled.lease_expires_at is None
    assert _status(cira_db, stale.id)[0] == "processing"


def test_fail_many_refuses_another_clients_job_and_atomic_changes_nothing(
    jobs: JobRepository, cira_db: Database
) -> None:
    (mine,) = _claimed(jobs, 1)
    (theirs,) = _claimed(jobs, 1, client=B)
    items = [Failure(mine.id, "x"), Failure(theirs.id, "x")]
    with pytest.raises(NotFoundError, match=r"items\[1\]"):
        jobs.fail_many(items, client_id=A, atomic=True)
    assert _status(cira_db, mine.id)[0] == "processing"
    outcomes = jobs.fail_many(items, client_id=A)
    assert [o.outcome for o in outcomes] == ["done", "not_found"]
    assert _status(cira_db, theirs.id)[0] == "processing"
    with pytest.raises(ValidationError) as info:
        jobs.fail_many([Failure(mine.id, "x", retry_in=timedelta(seconds=-1))])
    assert info.value.field == "items[0].retry_in"


# -- extend_leases --------------------------------------------------------------------------


def test_extend_leases_moves_every_held_lease_and_reports_the_others(
    jobs: JobRepository, cira_db: Database
) -> None:
    held, cancel, stale, theirs_job = *_claimed(jobs, 3), _claimed(jobs, 1, client=B)[0]
    queued = jobs.create(client_id=A, pdf_url=_url(50))
    _request_cancel(cira_db, cancel.id)
    before = _status(cira_db, held.id)[1]
    ids = [held.id, cancel.id, stale.id, theirs_job.id, queued.id]
    attempts = [held.attempts, cancel.attempts, stale.attempts + 1, theirs_job.attempts, None]
    outcomes = jobs.extend_leases(ids, lease=timedelta(hours=2), attempts=attempts, client_id=A)
    expected = ["done", "cancelled", "wrong_state", "not_found", "wrong_state"]
    assert [o.outcome for o in outcomes] == expected
    assert _status(cira_db, queued.id)[:2] == ("queued", None)
    assert _status(cira_db, held.id)[1] > before + timedelta(minutes=100)
    status, lease, _ = _status(cira_db, cancel.id)
    assert (status, lease) == ("cancelled", None)
    assert outcomes[1].value is not None
    assert outcomes[1].value.status is JobStatus.CANCELLED
    assert _status(cira_db, stale.id)[1] < before + timedelta(minutes=1)  # the stale claim: unmoved
    # Repeating is harmless: the same outcomes (the cancelled job stays "cancelled").
    again = jobs.extend_leases(ids, lease=timedelta(hours=2), attempts=attempts, client_id=A)
    assert [o.outcome for o in again] == expected


def test_the_jobs_fail_many_and_extend_leases_return_are_the_stored_rows(
    jobs: JobRepository,
) -> None:
    held, failing = _claimed(jobs, 2)
    extended = jobs.extend_leases([held.id], lease=timedelta(hours=2))
    failed = jobs.fail_many([Failure(failing.id, "broken", retry_in=timedelta(minutes=3))])
    for outcome in (*extended, *failed):
        assert type(outcome) is ItemOutcome
        assert outcome.ok
        assert outcome.outcome == "done"
        assert type(outcome.value) is Job
        assert outcome.value == jobs.get(outcome.job_id, client_id=A)
    assert failed[0].value is not None
    assert failed[0].value.status is JobStatus.QUEUED
    assert failed[0].value.error_message == "broken"


def test_extend_leases_validates_its_arguments(jobs: JobRepository) -> None:
    with pytest.raises(ValidationError) as info:
        jobs.extend_leases([uuid.uuid4()], lease=LEASE, attempts=[1, 2])
    assert info.value.field == "attempts"
    with pytest.raises(ValidationError) as info:
        jobs.extend_leases(["nope"], lease=LEASE)
    assert info.value.field == "job_ids[0]"
    assert jobs.extend_leases([], lease=LEASE) == []


# -- create_many ----------------------------------------------------------------------------


def test_create_many_returning_ids_gives_the_ids_in_order(
    jobs: JobRepository, cira_db: Database
) -> None:
    ids = jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(5)], returning="ids")
    assert all(isinstance(i, uuid.UUID) for i in ids)
    with cira_db.connection() as conn:
        rows = conn.execute(
            "SELECT id, pdf_url FROM jobs WHERE id = ANY(%s) ORDER BY id", (ids,)
        ).fetchall()
    assert [r[0] for r in rows] == ids
    assert [r[1] for r in rows] == [_url(n) for n in range(5)]
    with pytest.raises(ValidationError) as info:
        jobs.create_many(client_id=A, pdf_urls=[_url(1)], returning="rows")  # type: ignore[call-overload]
    assert info.value.field == "returning"


def test_create_many_with_job_ids_is_safe_to_retry(jobs: JobRepository, cira_db: Database) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    urls = [_url(n) for n in range(3)]
    first = jobs.create_many(client_id=A, pdf_urls=urls, job_ids=ids)
    assert [job.id for job in first] == ids
    claimed = jobs.claim_next(lease=LEASE, client_id=A)
    assert claimed is not None
    again = jobs.create_many(client_id=A, pdf_urls=urls, job_ids=ids)
    assert [job.id for job in again] == ids
    now = {job.id: job.status for job in again}
    assert now[claimed.id] is JobStatus.PROCESSING  # the stored job, as it is now
    more = [*ids, uuid.uuid4()]
    assert (
        jobs.create_many(client_id=A, pdf_urls=[*urls, _url(3)], job_ids=more, returning="ids")
        == more
    )
    with cira_db.connection() as conn:
        row = conn.execute("SELECT count(*) FROM jobs").fetchone()
    assert row is not None
    assert row[0] == 4


def test_create_many_conflict_names_the_first_clash_and_creates_nothing(
    jobs: JobRepository, cira_db: Database
) -> None:
    taken = jobs.create(client_id=B, pdf_url=_url(0))
    other_url = jobs.create(client_id=A, pdf_url=_url(1))
    fresh = uuid.uuid4()
    with pytest.raises(ConflictError, match=r"job_ids\[1\]"):
        jobs.create_many(
            client_id=A,
            pdf_urls=[_url(5), _url(0), _url(9)],
            job_ids=[fresh, taken.id, other_url.id],
        )
    with cira_db.connection() as conn:
        row = conn.execute("SELECT count(*) FROM jobs").fetchone()
    assert row is not None
    assert row[0] == 2
    with pytest.raises(ValidationError) as info:
        jobs.create_many(client_id=A, pdf_urls=[_url(1), _url(2)], job_ids=[fresh, fresh])
    assert info.value.field == "job_ids[1]"
    with pytest.raises(ValidationError) as info:
        jobs.create_many(client_id=A, pdf_urls=[_url(1)], job_ids=[fresh, taken.id])
    assert info.value.field == "job_ids"


def test_create_many_schedules_and_prioritises(jobs: JobRepository) -> None:
    later = jobs.create_many(
        client_id=A, pdf_urls=[_url(1)], run_after=timedelta(hours=1), priority=5
    )
    at = datetime.now(UTC) + timedelta(days=1)
    fixed = jobs.create_many(
        client_id=A, pdf_urls=[_url(2)], job_ids=[uuid.uuid4()], run_after=at, priority=-3
    )
    assert later[0].priority == 5
    assert later[0].run_after is not None
    assert later[0].run_after > datetime.now(UTC) + timedelta(minutes=59)
    assert fixed[0].run_after == at
    assert fixed[0].priority == -3
    with pytest.raises(ValidationError) as info:
        jobs.create_many(client_id=A, pdf_urls=[_url(1)], priority=101)
    assert info.value.field == "priority"


def test_create_many_ids_mode_builds_no_job(cira_db: Database, monkeypatch: Any) -> None:
    import cira_db._repositories._core_jobs as core

    def boom(**_: Any) -> Job:
        raise AssertionError("a Job was built")

    monkeypatch.setattr(core, "Job", boom)
    jobs = JobRepository(cira_db)
    ids = jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(3)], returning="ids")
    assert len(ids) == 3


_ = (psycopg, JobResultRepository)


# -- the heartbeat helper -------------------------------------------------------------------


def _lease(db: Database, job_id: uuid.UUID) -> Any:
    return _status(db, job_id)[1]


def test_heartbeat_thread_moves_leases_drops_done_jobs_and_stops(
    cira_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = JobRepository(cira_db)
    first, second, cancel = _claimed(jobs, 3)
    _request_cancel(cira_db, cancel.id)
    start = {job.id: _lease(cira_db, job.id) for job in (first, second)}
    with jobs.heartbeat(
        [first, second, cancel], lease=LEASE, every=timedelta(milliseconds=100)
    ) as beat:
        assert beat.running
        beat.done(first)
        deadline = time.monotonic() + 10
        while (beat.beats < 2 or not beat.cancelled) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert beat.cancelled == {cancel.id}
        assert beat.held == {second.id}
    assert not beat.running
    assert _lease(cira_db, second.id) > start[second.id]  # really moved
    assert _lease(cira_db, first.id) == start[first.id]  # dropped before the first tick
    assert _status(cira_db, cancel.id)[0] == "cancelled"
    beats = beat.beats
    time.sleep(0.3)
    assert beat.beats == beats  # stopped with the block


def test_heartbeat_survives_a_killed_connection_and_a_closed_pool(
    app_target: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with app_target.database() as db:
        jobs = JobRepository(db)
        claimed = _claimed(jobs, 2)
        with caplog.at_level("WARNING", logger="cira_db.heartbeat"):
            with jobs.heartbeat(claimed, lease=LEASE, every=timedelta(milliseconds=100)) as beat:
                deadline = time.monotonic() + 10
                while beat.beats < 1 and time.monotonic() < deadline:
                    time.sleep(0.05)
                # Kill every other backend of this database: the pool's idle connections die.
                with psycopg.connect(app_target.migration_url, autocommit=True) as admin:
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                beats = beat.beats
                while beat.beats <= beats and time.monotonic() < deadline:
                    time.sleep(0.05)  # the heartbeat carries on (a new connection)
                db.close()  # now every tick fails
                failures = beat.failures
                while beat.failures < failures + 2 and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert beat.running  # the failures did not kill it, nor the work
                assert beat.held == {job.id for job in claimed}
            assert not beat.running
    assert beat.failures >= 2
    assert any("heartbeat for 2 jobs failed" in r.getMessage() for r in caplog.records)


def test_heartbeat_validates_its_arguments(cira_db: Database) -> None:
    jobs = JobRepository(cira_db)
    with pytest.raises(ValidationError) as info:
        jobs.heartbeat([], lease=LEASE, every=LEASE)
    assert info.value.field == "every"
    with pytest.raises(ValidationError) as info:
        jobs.heartbeat(["x"], lease=LEASE)  # type: ignore[list-item]
    assert info.value.field == "claimed[0]"


def test_async_heartbeat_task_moves_leases_and_survives_failures(
    cira_db: Database, aio_db: Any, aio_loop: Any
) -> None:
    import asyncio

    from cira_db.aio import AsyncJobRepository

    sync_jobs = JobRepository(cira_db)
    claimed = _claimed(sync_jobs, 2)
    _request_cancel(cira_db, claimed[1].id)
    before = _lease(cira_db, claimed[0].id)
    jobs = AsyncJobRepository(aio_db)

    async def work() -> Any:
        async with jobs.heartbeat(claimed, lease=LEASE, every=timedelta(milliseconds=100)) as beat:
            assert beat.running
            for _ in range(200):
                if beat.beats >= 2 and beat.cancelled:
                    break
                await asyncio.sleep(0.05)
            await aio_db.close()  # every further tick fails; the work goes on
            failures = beat.failures
            for _ in range(200):
                if beat.failures >= failures + 2:
                    break
                await asyncio.sleep(0.05)
            assert beat.running
        assert not beat.running
        return beat

    beat = aio_loop.run(work())
    assert beat.cancelled == {claimed[1].id}
    assert beat.failures >= 2
    assert _lease(cira_db, claimed[0].id) > before


def _count_jobs(db: Database) -> int:
    with db.connection() as conn:
        row = conn.execute("SELECT count(*) FROM jobs").fetchone()
    assert row is not None
    return int(row[0])


def test_create_many_ids_copy_is_all_or_nothing(cira_db: Database, monkeypatch: Any) -> None:
    # returning="ids" streams COPY into jobs: one statement, so a row that fails
    # (here: an id that exists, forced at position 50) leaves nothing behind.
    import cira_db._repositories._core_jobs as core

    jobs = JobRepository(cira_db)
    existing = jobs.create(client_id=A, pdf_url=_url(0))
    real = core.uuid7_batch  # type: ignore[attr-defined]

    def with_a_clash(count: int) -> list[uuid.UUID]:
        ids = real(count)
        ids[50] = existing.id
        return ids

    monkeypatch.setattr(core, "uuid7_batch", with_a_clash)
    with pytest.raises(ConflictError):
        jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(100)], returning="ids")
    assert _count_jobs(cira_db) == 1


def _copy_from(monkeypatch: Any, rows: int) -> None:
    """Make create_many use COPY from ``rows`` rows on (1000 in the library)."""
    import cira_db._repositories._core_jobs as core

    monkeypatch.setattr(core, "_COPY_FROM", rows)


@pytest.mark.parametrize("copy", [True, False], ids=["copy", "statement"])
def test_create_many_jobs_are_the_stored_rows(
    jobs: JobRepository, monkeypatch: Any, copy: bool
) -> None:
    # returning="jobs": COPY, then the rows read back in the same transaction
    # (a big batch), or one INSERT ... RETURNING (a small one).
    _copy_from(monkeypatch, 1 if copy else 10**6)
    urls = [_url(n) for n in range(300)] + ["s3://invoices-2025/a.pdf"]
    made = jobs.create_many(client_id=A, pdf_urls=urls, priority=7)
    assert [job.pdf_url for job in made] == urls
    if copy:  # the Jobs hold the caller's URL strings, no copies
        assert all(job.pdf_url is url for job, url in zip(made, urls, strict=True))
    for job in (made[0], made[150], made[-1]):
        assert jobs.get(job.id, client_id=A) == job  # each field as stored
    assert {(job.status, job.priority, job.attempts, job.run_after) for job in made} == {
        (JobStatus.QUEUED, 7, 0, None)
    }
    assert len({job.id for job in made}) == len(urls)


def test_create_many_jobs_copy_is_all_or_nothing(cira_db: Database, monkeypatch: Any) -> None:
    import cira_db._repositories._core_jobs as core

    _copy_from(monkeypatch, 1)

    jobs = JobRepository(cira_db)
    existing = jobs.create(client_id=A, pdf_url=_url(0))
    real = core.uuid7_batch  # type: ignore[attr-defined]

    def with_a_clash(count: int) -> list[uuid.UUID]:
        ids = real(count)
        ids[50] = existing.id
        return ids

    monkeypatch.setattr(core, "uuid7_batch", with_a_clash)
    with pytest.raises(ConflictError):
        jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(100)])
    assert _count_jobs(cira_db) == 1


def test_create_many_jobs_leaves_out_another_calls_job_in_its_id_range(
    jobs: JobRepository, monkeypatch: Any
) -> None:
    # The rows are read back by id range: a job of another call whose id falls
    # between the batch's ids (same client) is not part of the answer.
    import cira_db._repositories._core_jobs as core

    _copy_from(monkeypatch, 1)

    low, high = uuid.UUID(int=(1 << 120)), uuid.UUID(int=(3 << 120))
    between = jobs.create(client_id=A, pdf_url=_url(99), job_id=uuid.UUID(int=(2 << 120)))
    elsewhere = jobs.create(client_id=B, pdf_url=_url(98), job_id=uuid.UUID(int=(2 << 120) + 1))
    monkeypatch.setattr(core, "uuid7_batch", lambda count: [low, high][:count])
    made = jobs.create_many(client_id=A, pdf_urls=[_url(1), _url(2)])
    assert [(job.id, job.pdf_url) for job in made] == [(low, _url(1)), (high, _url(2))]
    assert between.id not in {job.id for job in made}
    assert elsewhere.id not in {job.id for job in made}


@pytest.mark.parametrize("returning", ["jobs", "ids"])
def test_create_many_job_ids_copy_first_still_names_the_clash(
    jobs: JobRepository, cira_db: Database, monkeypatch: Any, returning: str
) -> None:
    _copy_from(monkeypatch, 1)
    taken = jobs.create(client_id=B, pdf_url=_url(0))
    ids = [uuid.uuid4(), taken.id, uuid.uuid4()]
    with pytest.raises(ConflictError, match=r"job_ids\[1\]"):
        jobs.create_many(
            client_id=A,
            pdf_urls=[_url(5), _url(0), _url(9)],
            job_ids=ids,
            returning=returning,  # type: ignore[call-overload]
        )
    assert _count_jobs(cira_db) == 1
    made = jobs.create_many(client_id=A, pdf_urls=[_url(1), _url(2)], job_ids=ids[::2])
    assert [(job.id, job.pdf_url) for job in made] == [(ids[0], _url(1)), (ids[2], _url(2))]
    assert made == [jobs.get(job_id, client_id=A) for job_id in ids[::2]]  # as stored


def test_create_many_jobs_copy_joins_the_callers_transaction(
    cira_db: Database, monkeypatch: Any
) -> None:
    _copy_from(monkeypatch, 1)

    def unit() -> None:
        with cira_db.transaction() as conn:
            made = JobRepository(conn).create_many(
                client_id=A, pdf_urls=[_url(n) for n in range(10)]
            )
            assert [job.pdf_url for job in made] == [_url(n) for n in range(10)]
            assert _count_jobs(cira_db) == 0  # not committed yet: not visible outside
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        unit()
    assert _count_jobs(cira_db) == 0


@pytest.mark.parametrize("copy", [True, False], ids=["copy", "statement"])
def test_create_many_job_ids_retry_inside_the_callers_transaction(
    cira_db: Database, monkeypatch: Any, copy: bool
) -> None:
    # job_ids= on a big batch: the COPY is tried first; a stored id fails it (in
    # a savepoint), and the caller's transaction goes on to the statement that
    # finds it. A small batch runs that statement at once.
    _copy_from(monkeypatch, 1 if copy else 10**6)
    ids = [uuid.uuid4() for _ in range(4)]
    urls = [_url(n) for n in range(4)]
    stored = JobRepository(cira_db).create(client_id=A, pdf_url=urls[2], job_id=ids[2])
    with cira_db.transaction() as conn:
        made = JobRepository(conn).create_many(client_id=A, pdf_urls=urls, job_ids=ids)
        assert [job.id for job in made] == ids
        assert made[2] == stored
        assert (
            JobRepository(conn).create_many(
                client_id=A, pdf_urls=urls, job_ids=ids, returning="ids"
            )
            == ids
        )
    assert _count_jobs(cira_db) == 4


def test_create_many_ids_copy_joins_the_callers_transaction(cira_db: Database) -> None:
    def unit() -> None:
        with cira_db.transaction() as conn:
            ids = JobRepository(conn).create_many(
                client_id=A, pdf_urls=[_url(n) for n in range(10)], returning="ids"
            )
            assert len(ids) == 10
            assert _count_jobs(cira_db) == 0  # not committed yet: not visible outside
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        unit()
    assert _count_jobs(cira_db) == 0
