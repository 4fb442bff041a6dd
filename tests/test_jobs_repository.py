"""JobRepository against a real PostgreSQL: every call, its errors and its client scoping."""

from __future__ import annotations

import dataclasses
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from _lost_reply import LostReply
from cira_db import Database, Job, JobRepository, JobResultRepository, JobStatus, Page
from cira_db._models import STATUS_BY_LABEL
from cira_db._sql import query
from cira_db.errors import (
    CiraDbError,
    ConflictError,
    DatabaseError,
    DatabaseUnavailableError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
)

A, B = "client-a", "client-b"
URL = "https://example.com/doc.pdf"
LEASE = timedelta(minutes=5)
SHORT = timedelta(milliseconds=200)


def _url(n: int) -> str:
    return f"https://example.com/{n}.pdf"


def _claim(jobs: JobRepository, job: Job, lease: timedelta = LEASE) -> Job:
    claimed = jobs.claim_next(lease=lease, client_id=job.client_id)
    assert claimed is not None
    assert claimed.id == job.id
    return claimed


def _rows(db: Database, sql: Any) -> list[tuple[Any, ...]]:
    with db.connection() as conn:
        return conn.execute(sql).fetchall()


# -- construction --------------------------------------------------------------------------


def test_the_status_mapping_matches_the_database_enum(cira_db: Database) -> None:
    labels = [label for (label,) in _rows(cira_db, "SELECT unnest(enum_range(NULL::job_status))")]
    assert labels == list(STATUS_BY_LABEL)
    assert list(STATUS_BY_LABEL) == [status.value for status in JobStatus]
    assert all(STATUS_BY_LABEL[status.value] is status for status in JobStatus)


def test_repository_needs_a_database_or_a_connection() -> None:
    with pytest.raises(TypeError, match=r"cira_db\.Database or a psycopg\.Connection"):
        JobRepository("postgresql://nowhere")  # type: ignore[arg-type]


def test_repr_names_the_target_without_secrets() -> None:
    db = Database("postgresql://user:s3cret@localhost/db")
    assert "s3cret" not in repr(JobRepository(db))
    assert "s3cret" not in repr(JobResultRepository(db))


def test_cursor_key_must_be_bytes(cira_db: Database) -> None:
    with pytest.raises(ValidationError) as info:
        JobRepository(cira_db, cursor_key="text")  # type: ignore[arg-type]
    assert info.value.field == "cursor_key"


# -- create ------------------------------------------------------------------------------


def test_create_returns_a_queued_job(jobs: JobRepository) -> None:
    before = datetime.now(UTC)
    job = jobs.create(client_id=A, pdf_url=URL)
    assert isinstance(job, Job)
    assert job.status is JobStatus.QUEUED
    assert (job.client_id, job.pdf_url) == (A, URL)
    assert job.attempts == 0
    assert job.completed_at is None
    assert job.error_message is None
    assert job.lease_expires_at is None
    assert job.created_at.tzinfo is not None
    assert job.updated_at == job.created_at
    assert job.created_at >= before - timedelta(seconds=5)
    assert job.id.version == 7


def test_created_ids_are_time_ordered(jobs: JobRepository) -> None:
    ids = [jobs.create(client_id=A, pdf_url=_url(n)).id for n in range(5)]
    assert ids == sorted(ids)


def test_create_with_the_same_id_twice_returns_the_same_job(
    jobs: JobRepository, cira_db: Database
) -> None:
    job_id = uuid.uuid4()
    first = jobs.create(client_id=A, pdf_url=URL, job_id=job_id)
    again = jobs.create(client_id=A, pdf_url=URL, job_id=str(job_id))
    assert first == again
    assert first.id == job_id
    assert _rows(cira_db, "SELECT count(*) FROM jobs") == [(1,)]


def test_create_again_returns_the_job_as_it_is_now(jobs: JobRepository) -> None:
    job = jobs.create(client_id=A, pdf_url=URL, job_id=uuid.uuid4())
    _claim(jobs, job)
    again = jobs.create(client_id=A, pdf_url=URL, job_id=job.id)
    assert again.status is JobStatus.PROCESSING


@pytest.mark.parametrize(
    ("client_id", "pdf_url"),
    [(A, "https://example.com/other.pdf"), (B, URL)],
    ids=["other-url", "other-client"],
)
def test_create_same_id_different_content_is_a_conflict(
    jobs: JobRepository, cira_db: Database, client_id: str, pdf_url: str
) -> None:
    job_id = uuid.uuid4()
    jobs.create(client_id=A, pdf_url=URL, job_id=job_id)
    with pytest.raises(ConflictError) as info:
        jobs.create(client_id=client_id, pdf_url=pdf_url, job_id=job_id)
    assert B not in str(info.value)
    assert "other.pdf" not in str(info.value)
    assert _rows(cira_db, "SELECT client_id, pdf_url FROM jobs") == [(A, URL)]


def test_create_conflict_reads_the_same_whichever_client_owns_the_id(
    jobs: JobRepository,
) -> None:
    job_id = uuid.uuid4()
    jobs.create(client_id=A, pdf_url=URL, job_id=job_id)
    messages = set()
    for client_id, pdf_url in [(A, "https://example.com/other.pdf"), (B, URL), (B, _url(9))]:
        with pytest.raises(ConflictError) as info:
            jobs.create(client_id=client_id, pdf_url=pdf_url, job_id=job_id)
        messages.add(str(info.value))
    assert messages == {f"job {job_id} exists already with a different client or pdf_url"}


def test_create_gives_up_when_the_row_keeps_changing(
    jobs: JobRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The statement finds no row only while a concurrent insert of the same id
    # commits after its snapshot; it is run again, at most three times.
    calls: list[str] = []

    def never(*args: Any, **kwargs: Any) -> None:
        calls.append("run")

    async def never_awaited(*args: Any, **kwargs: Any) -> None:
        calls.append("run")

    from cira_db._repositories._aio_base import AsyncRunner
    from cira_db._repositories._base import Runner

    monkeypatch.setattr(Runner, "execute", never)
    monkeypatch.setattr(AsyncRunner, "execute", never_awaited)
    with pytest.raises(DatabaseError, match="kept changing"):
        jobs.create(client_id=A, pdf_url=URL, job_id=uuid.uuid4())
    assert len(calls) == 3


# -- create_many ------------------------------------------------------------------------


def test_create_many_returns_jobs_in_the_given_order(jobs: JobRepository) -> None:
    urls = [_url(n) for n in range(250)]
    created = jobs.create_many(client_id=A, pdf_urls=urls)
    assert [job.pdf_url for job in created] == urls
    assert all(job.status is JobStatus.QUEUED and job.client_id == A for job in created)
    ids = [job.id for job in created]
    assert ids == sorted(ids)
    assert len(set(ids)) == 250
    assert jobs.count_by_status(client_id=A)[JobStatus.QUEUED] == 250


def test_create_many_keeps_order_in_claims(jobs: JobRepository) -> None:
    urls = [_url(n) for n in range(20)]
    jobs.create_many(client_id=A, pdf_urls=urls)
    claimed = jobs.claim_batch(20, lease=LEASE)
    assert [job.pdf_url for job in claimed] == urls


def test_create_many_of_nothing_runs_no_sql() -> None:
    closed = JobRepository(Database("postgresql://localhost/none"))
    assert closed.create_many(client_id=A, pdf_urls=[]) == []


def test_create_many_is_all_or_nothing(jobs: JobRepository, cira_db: Database) -> None:
    urls = [_url(n) for n in range(10)] + ["not a url"]
    with pytest.raises(ValidationError) as info:
        jobs.create_many(client_id=A, pdf_urls=urls)
    assert info.value.field == "pdf_urls[10]"
    assert _rows(cira_db, "SELECT count(*) FROM jobs") == [(0,)]


def test_create_many_rolls_back_on_a_database_error(
    jobs: JobRepository, cira_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    existing = jobs.create(client_id=A, pdf_url=URL)
    # Force a duplicate id inside the batch: the whole statement fails.
    from cira_db._repositories._ids import uuid7_batch

    def with_duplicate(count: int) -> list[uuid.UUID]:
        ids = uuid7_batch(count)
        ids[-1] = existing.id
        return ids

    monkeypatch.setattr("cira_db._repositories._core_jobs.uuid7_batch", with_duplicate)
    with pytest.raises(ConflictError) as info:
        jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(5)])
    assert isinstance(info.value.__cause__, psycopg.errors.UniqueViolation)
    assert _rows(cira_db, "SELECT count(*) FROM jobs") == [(1,)]


# -- get / find -----------------------------------------------------------------------------


def test_get_and_find(jobs: JobRepository) -> None:
    job = jobs.create(client_id=A, pdf_url=URL)
    assert jobs.get(job.id, client_id=A) == job
    assert jobs.get(str(job.id), client_id=A) == job
    assert jobs.find(job.id, client_id=A) == job


def test_another_clients_job_is_exactly_like_a_missing_one(jobs: JobRepository) -> None:
    job = jobs.create(client_id=A, pdf_url=URL)
    missing = uuid.uuid4()
    assert jobs.find(job.id, client_id=B) is None
    assert jobs.find(missing, client_id=B) is None
    with pytest.raises(NotFoundError) as foreign:
        jobs.get(job.id, client_id=B)
    with pytest.raises(NotFoundError) as absent:
        jobs.get(missing, client_id=B)
    assert str(foreign.value).replace(str(job.id), "ID") == str(absent.value).replace(
        str(missing), "ID"
    )


# -- list ---------------------------------------------------------------------------------


def _all_pages(jobs: JobRepository, **kwargs: Any) -> list[Page[Job]]:
    pages = [jobs.list(**kwargs)]
    while pages[-1].next_cursor is not None:
        pages.append(jobs.list(**kwargs, cursor=pages[-1].next_cursor))
    return pages


def test_list_pages_newest_first_without_gaps_or_repeats(jobs: JobRepository) -> None:
    created = jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(7)])
    created += [jobs.create(client_id=A, pdf_url=_url(n)) for n in range(7, 12)]
    jobs.create(client_id=B, pdf_url=URL)
    pages = _all_pages(jobs, client_id=A, limit=5)
    assert [len(page.items) for page in pages] == [5, 5, 2]
    listed = [job for page in pages for job in page.items]
    expected = sorted(created, key=lambda job: (job.created_at, job.id), reverse=True)
    assert listed == expected
    assert pages[-1].next_cursor is None


def test_list_exactly_full_page_has_no_next_cursor(jobs: JobRepository) -> None:
    jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(3)])
    page = jobs.list(client_id=A, limit=3)
    assert len(page.items) == 3
    assert page.next_cursor is None


def test_list_of_nothing(jobs: JobRepository) -> None:
    page = jobs.list(client_id=A)
    assert page.items == ()
    assert page.next_cursor is None
    assert type(page) is Page  # built without its __init__, the model itself
    assert page == Page(items=(), next_cursor=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        page.next_cursor = "x"  # type: ignore[misc]


def test_list_filters_by_status(jobs: JobRepository) -> None:
    made = jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(6)])
    claimed = jobs.claim_batch(4, lease=LEASE)
    assert [job.id for job in claimed] == [job.id for job in made[:4]]
    pages = _all_pages(jobs, client_id=A, status=JobStatus.PROCESSING, limit=3)
    listed = [job.id for page in pages for job in page.items]
    assert listed == [job.id for job in reversed(claimed)]
    jobs.create(client_id=B, pdf_url=_url(9))  # another client's queued job, the newest
    queued = jobs.list(client_id=A, status="queued")
    assert [job.id for job in queued.items] == [made[5].id, made[4].id]


def test_list_keyset_is_stable_while_rows_are_added(jobs: JobRepository) -> None:
    jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(4)])
    first = jobs.list(client_id=A, limit=2)
    jobs.create(client_id=A, pdf_url=_url(99))  # newer: belongs before page one
    second = jobs.list(client_id=A, limit=2, cursor=first.next_cursor)
    assert {job.id for job in first.items}.isdisjoint(job.id for job in second.items)
    assert second.next_cursor is None


def test_list_cursor_is_bound_to_client_and_status(jobs: JobRepository) -> None:
    jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(3)])
    jobs.create_many(client_id=B, pdf_urls=[_url(n) for n in range(3)])
    cursor = jobs.list(client_id=A, limit=1).next_cursor
    assert cursor is not None
    for kwargs in ({"client_id": B}, {"client_id": A, "status": JobStatus.QUEUED}):
        with pytest.raises(ValidationError) as info:
            jobs.list(**kwargs, cursor=cursor)  # type: ignore[arg-type]
        assert info.value.field == "cursor"


def test_list_rejects_tampered_cursors(jobs: JobRepository) -> None:
    jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(3)])
    cursor = jobs.list(client_id=A, limit=1).next_cursor
    assert cursor is not None
    flipped = cursor[:10] + ("A" if cursor[10] != "A" else "B") + cursor[11:]
    for bad in (flipped, cursor + "A", cursor[:-1], "", "x" * 44, "!" * 44, "null"):
        with pytest.raises(ValidationError) as info:
            jobs.list(client_id=A, cursor=bad)
        assert info.value.field == "cursor"


def test_list_cursor_from_another_key_is_rejected(cira_db: Database) -> None:
    signed = JobRepository(cira_db, cursor_key=b"secret one")
    signed.create_many(client_id=A, pdf_urls=[_url(n) for n in range(3)])
    cursor = signed.list(client_id=A, limit=1).next_cursor
    assert cursor is not None
    assert len(signed.list(client_id=A, limit=5, cursor=cursor).items) == 2
    with pytest.raises(ValidationError):
        JobRepository(cira_db, cursor_key=b"secret two").list(client_id=A, cursor=cursor)
    with pytest.raises(ValidationError):
        JobRepository(cira_db).list(client_id=A, cursor=cursor)


# -- claim ------------------------------------------------------------------------------------


def test_claim_next_takes_the_oldest_queued_job(jobs: JobRepository) -> None:
    first = jobs.create(client_id=B, pdf_url=_url(1))
    jobs.create(client_id=A, pdf_url=_url(2))
    before = datetime.now(UTC)
    claimed = jobs.claim_next(lease=LEASE)
    assert claimed is not None
    assert claimed.id == first.id
    assert claimed.status is JobStatus.PROCESSING
    assert claimed.attempts == 1
    assert claimed.lease_expires_at is not None
    expected = before + LEASE
    assert abs(claimed.lease_expires_at - expected) < timedelta(seconds=5)
    assert claimed.updated_at > first.updated_at


def test_claim_next_on_an_empty_queue_is_none(jobs: JobRepository) -> None:
    assert jobs.claim_next(lease=LEASE) is None
    job = jobs.create(client_id=A, pdf_url=URL)
    _claim(jobs, job)
    assert jobs.claim_next(lease=LEASE) is None


def test_claim_next_for_one_client(jobs: JobRepository) -> None:
    jobs.create(client_id=B, pdf_url=_url(1))
    mine = jobs.create(client_id=A, pdf_url=_url(2))
    claimed = jobs.claim_next(lease=LEASE, client_id=A)
    assert claimed is not None
    assert claimed.id == mine.id
    assert jobs.claim_next(lease=LEASE, client_id=A) is None


def test_claim_batch(jobs: JobRepository) -> None:
    made = jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(5)])
    jobs.create(client_id=B, pdf_url=URL)
    batch = jobs.claim_batch(3, lease=LEASE, client_id=A)
    assert [job.id for job in batch] == [job.id for job in made[:3]]
    assert all(job.status is JobStatus.PROCESSING for job in batch)
    rest = jobs.claim_batch(10, lease=LEASE)
    assert len(rest) == 3
    assert jobs.claim_batch(10, lease=LEASE) == []


def test_claim_batch_for_one_client_takes_only_its_queued_jobs(jobs: JobRepository) -> None:
    other = jobs.create(client_id=B, pdf_url=_url(0))  # older than every job of A
    done, *mine = jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(1, 4)])
    claimed = jobs.claim_batch(1, lease=LEASE, client_id=A)
    assert [job.id for job in claimed] == [done.id]
    again = jobs.claim_batch(10, lease=LEASE, client_id=A)
    assert [job.id for job in again] == [job.id for job in mine]
    assert jobs.claim_batch(10, lease=LEASE, client_id=A) == []
    assert jobs.get(other.id, client_id=B).status is JobStatus.QUEUED


@pytest.mark.parametrize(("batch", "client"), [(None, None), (None, A), (2, None), (2, A)])
def test_claim_skips_rows_locked_by_another_transaction(
    jobs: JobRepository, cira_db: Database, batch: int | None, client: str | None
) -> None:
    first = jobs.create(client_id=A, pdf_url=_url(1))
    second = jobs.create(client_id=A, pdf_url=_url(2))

    def claim() -> list[uuid.UUID]:
        if batch is None:
            claimed = jobs.claim_next(lease=LEASE, client_id=client)
            return [] if claimed is None else [claimed.id]
        return [job.id for job in jobs.claim_batch(batch, lease=LEASE, client_id=client)]

    # The claim runs on another connection, in a thread: a claim that waited for the
    # lock instead of skipping it times out here (the lock is then released).
    with ThreadPoolExecutor(1) as pool, cira_db.transaction() as conn:
        conn.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (first.id,))
        assert pool.submit(claim).result(timeout=10) == [second.id]


# -- extend_lease ------------------------------------------------------------------------------


def test_extend_lease(jobs: JobRepository) -> None:
    job = _claim(jobs, jobs.create(client_id=A, pdf_url=URL), lease=timedelta(seconds=30))
    extended = jobs.extend_lease(job.id, lease=timedelta(hours=1))
    assert extended.lease_expires_at is not None
    assert job.lease_expires_at is not None
    assert extended.lease_expires_at > job.lease_expires_at + timedelta(minutes=50)
    assert extended.status is JobStatus.PROCESSING
    assert extended.attempts == 1
    assert jobs.extend_lease(job.id, lease=LEASE, client_id=A).id == job.id


def test_extend_lease_refusals(jobs: JobRepository) -> None:
    queued = jobs.create(client_id=A, pdf_url=URL)
    with pytest.raises(InvalidTransitionError, match="it is queued, not processing"):
        jobs.extend_lease(queued.id, lease=LEASE)
    with pytest.raises(NotFoundError):
        jobs.extend_lease(uuid.uuid4(), lease=LEASE)
    _claim(jobs, queued)
    with pytest.raises(NotFoundError):
        jobs.extend_lease(queued.id, lease=LEASE, client_id=B)


# -- complete ------------------------------------------------------------------------------------


def test_complete_writes_the_result_and_completes_the_job(
    jobs: JobRepository, results: JobResultRepository
) -> None:
    job = _claim(jobs, jobs.create(client_id=A, pdf_url=URL))
    data = {"total": 12.5, "lines": [{"sku": "A-1", "qty": 2}], "ok": True, "none": None}
    result = jobs.complete(job.id, extracted_data=data, confidence_score=0.93, tokens_used=1200)
    assert result.job_id == job.id
    assert result.extracted_data == data
    assert result.confidence_score == Decimal("0.93")
    assert result.tokens_used == 1200
    done = jobs.get(job.id, client_id=A)
    assert done.status is JobStatus.COMPLETED
    assert done.completed_at == result.created_at  # one statement, one now()
    assert done.lease_expires_at is None
    assert done.attempts == 1
    assert results.get_for_job(job.id, client_id=A) == result


@pytest.mark.parametrize(
    "data",
    [
        {"big": 1e16, "small": 1e-7, "neg": -0.0, "int": 2**62, "f": 1.0},
        {"text": 'Grüße \u2603 "quoted" \\', "nested": {"a": [1, [2, {"b": None}]]}},
        {"b": 1, "a": 2, "": "empty key", "dup": [True, False, None]},
    ],
)
def test_complete_returns_what_was_stored_and_not_the_callers_dict(
    jobs: JobRepository, results: JobResultRepository, data: dict[str, Any]
) -> None:
    # complete builds its result from what it sent (only created_at comes back):
    # it must equal what a later read finds, and be a copy of the caller's dict.
    job = _claim(jobs, jobs.create(client_id=A, pdf_url=URL))
    sent = {**data}
    result = jobs.complete(job.id, extracted_data=sent, confidence_score=0.5, tokens_used=3)
    assert result == results.get_for_job(job.id, client_id=A)
    sent["added later"] = 1
    assert "added later" not in result.extracted_data
    assert result.extracted_data == data


@pytest.mark.parametrize(("batch", "client"), [(None, None), (None, A), (10, None), (10, A)])
def test_a_prepared_claim_runs_a_cached_generic_plan(
    cira_db_url: str, batch: int | None, client: str | None
) -> None:
    # claim_next's statement has LIMIT 1 in its text and claim_batch's a
    # sub-select for its limit: once prepared, PostgreSQL keeps a generic plan.
    # A bare bound LIMIT made it plan afresh on every claim.
    with psycopg.connect(cira_db_url, autocommit=True, prepare_threshold=0) as conn:
        jobs = JobRepository(conn)
        # Enough rows that a generic plan guessing a tenth of the table for a
        # bound LIMIT looks dearer than the custom one (as on a real queue).
        jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(3000)])
        conn.execute("ANALYZE jobs")
        for _ in range(8):
            if batch is None:
                assert jobs.claim_next(lease=LEASE, client_id=client) is not None
            else:
                assert len(jobs.claim_batch(batch, lease=LEASE, client_id=client)) == batch
        plans = conn.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE '%FOR UPDATE SKIP LOCKED%' "
            "AND statement NOT LIKE '%pg_prepared_statements%'"
        ).fetchall()
    assert len(plans) == 1
    generic, custom = plans[0]
    assert generic >= 2
    assert custom <= 5


@pytest.mark.parametrize(
    "name", ["complete_job", "fail_job", "fail_job_retry", "extend_lease", "report_progress"]
)
def test_a_worker_move_probes_the_primary_key_on_all_queued_statistics(
    cira_db_url: str, name: str
) -> None:
    # Statistics taken while no job is processing make the partial index on
    # processing jobs look empty; the move must still find its one row by
    # jobs_pkey, not walk idx_jobs_lease_expiry (every processing job) filtering on id.
    with psycopg.connect(cira_db_url, autocommit=True) as conn:
        if conn.info.server_version < 160000:
            pytest.skip("EXPLAIN (GENERIC_PLAN) needs PostgreSQL 16 or later")
        JobRepository(conn).create_many(client_id=A, pdf_urls=[_url(n) for n in range(3000)])
        conn.execute("VACUUM (ANALYZE) jobs")
        names: list[str] = []

        def placeholder(match: re.Match[str]) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        text = re.sub(r"%\(([a-z_]+)\)s", placeholder, query("jobs.sql", name).sql)
        rows = conn.execute(f"EXPLAIN (GENERIC_PLAN, COSTS OFF) {text}").fetchall()
    plan = "\n".join(row[0] for row in rows)
    assert "idx_jobs_lease_expiry" not in plan, plan
    assert plan.count("Index Scan using jobs_pkey") == 2, plan


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (0.935, Decimal("0.94")),
        (0.925, Decimal("0.92")),
        (Decimal("0.9349"), Decimal("0.93")),
        (1, Decimal("1.00")),
        (0, Decimal("0.00")),
        (Decimal("0.995"), Decimal("1.00")),
    ],
)
def test_complete_rounds_confidence_half_even(
    jobs: JobRepository, given: Any, stored: Decimal
) -> None:
    job = _claim(jobs, jobs.create(client_id=A, pdf_url=URL))
    result = jobs.complete(job.id, extracted_data={}, confidence_score=given, tokens_used=0)
    assert result.confidence_score == stored


def test_complete_twice_is_refused_and_changes_nothing(
    jobs: JobRepository, cira_db: Database
) -> None:
    job = _claim(jobs, jobs.create(client_id=A, pdf_url=URL))
    first = jobs.complete(job.id, extracted_data={"n": 1}, confidence_score=0.5, tokens_used=1)
    with pytest.raises(InvalidTransitionError, match="it is completed, not processing"):
        jobs.complete(job.id, extracted_data={"n": 2}, confidence_score=0.9, tokens_used=9)
    rows = _rows(cira_db, "SELECT id, extracted_data FROM job_results")
    assert rows == [(first.id, {"n": 1})]


@pytest.mark.parametrize("state", ["queued", "failed"])
def test_complete_refuses_jobs_that_are_not_processing(
    jobs: JobRepository, cira_db: Database, state: str
) -> None:
    job = jobs.create(client_id=A, pdf_url=URL)
    if state == "failed":
        _claim(jobs, job)
        jobs.fail(job.id, error_message="broken")
    with pytest.raises(InvalidTransitionError, match=f"it is {state}"):
        jobs.complete(job.id, extracted_data={}, confidence_score=0.5, tokens_used=1)
    assert _rows(cira_db, "SELECT count(*) FROM job_results") == [(0,)]
    assert jobs.get(job.id, client_id=A).status.value == state


def test_complete_a_missing_or_foreign_job(jobs: JobRepository) -> None:
    with pytest.raises(NotFoundError):
        jobs.complete(uuid.uuid4(), extracted_data={}, confidence_score=0.5, tokens_used=1)
    job = _claim(jobs, jobs.create(client_id=A, pdf_url=URL))
    with pytest.raises(NotFoundError):
        jobs.complete(job.id, extracted_data={}, confidence_score=0.5, tokens_used=1, client_id=B)
    result = jobs.complete(
        job.id, extracted_data={}, confidence_score=0.5, tokens_used=1, client_id=A
    )
    assert result.job_id == job.id


def test_a_second_result_row_is_an_invalid_transition(
    jobs: JobRepository, cira_db: Database
) -> None:
    # A result left behind (e.g. written by hand) makes the insert hit the
    # unique job_id: the statement fails as a whole and the job stays processing.
    job = _claim(jobs, jobs.create(client_id=A, pdf_url=URL))
    with cira_db.connection() as conn:
        conn.execute(
            "INSERT INTO job_results (job_id, extracted_data, confidence_score, tokens_used)"
            " VALUES (%s, '{}', 0.5, 1)",
            (job.id,),
        )
    with pytest.raises(InvalidTransitionError, match="has a result already") as info:
        jobs.complete(job.id, extracted_data={}, confidence_score=0.5, tokens_used=1)
    assert isinstance(info.value.__cause__, psycopg.errors.UniqueViolation)
    assert jobs.get(job.id, client_id=A).status is JobStatus.PROCESSING


# -- fail / retry ---------------------------------------------------------------------------------


def test_fail_and_retry(jobs: JobRepository) -> None:
    job = _claim(jobs, jobs.create(client_id=A, pdf_url=URL))
    failed = jobs.fail(job.id, error_message="unreadable PDF")
    assert failed.status is JobStatus.FAILED
    assert failed.error_message == "unreadable PDF"
    assert failed.lease_expires_at is None
    assert failed.completed_at is None
    again = jobs.retry(job.id, client_id=A)
    assert again.status is JobStatus.QUEUED
    assert again.error_message is None
    assert again.attempts == 1  # kept
    reclaimed = _claim(jobs, again)
    assert reclaimed.attempts == 2


def test_fail_refusals(jobs: JobRepository) -> None:
    job = jobs.create(client_id=A, pdf_url=URL)
    with pytest.raises(InvalidTransitionError, match="it is queued"):
        jobs.fail(job.id, error_message="no")
    with pytest.raises(NotFoundError):
        jobs.fail(uuid.uuid4(), error_message="no")
    _claim(jobs, job)
    with pytest.raises(NotFoundError):
        jobs.fail(job.id, error_message="no", client_id=B)
    jobs.fail(job.id, error_message="first")
    with pytest.raises(InvalidTransitionError, match="it is failed"):
        jobs.fail(job.id, error_message="second")
    assert jobs.get(job.id, client_id=A).error_message == "first"


def test_retry_refusals(jobs: JobRepository) -> None:
    job = jobs.create(client_id=A, pdf_url=URL)
    with pytest.raises(InvalidTransitionError, match="it is queued, not failed"):
        jobs.retry(job.id)
    _claim(jobs, job)
    jobs.complete(job.id, extracted_data={}, confidence_score=1, tokens_used=1)
    with pytest.raises(InvalidTransitionError, match="it is completed, not failed"):
        jobs.retry(job.id)
    with pytest.raises(NotFoundError):
        jobs.retry(uuid.uuid4())


def test_retry_is_scoped(jobs: JobRepository) -> None:
    job = _claim(jobs, jobs.create(client_id=A, pdf_url=URL))
    jobs.fail(job.id, error_message="x")
    with pytest.raises(NotFoundError):
        jobs.retry(job.id, client_id=B)
    assert jobs.get(job.id, client_id=A).status is JobStatus.FAILED


# -- release_expired -----------------------------------------------------------------------------


def test_release_expired_requeues_then_fails_after_max_attempts(jobs: JobRepository) -> None:
    job = jobs.create(client_id=A, pdf_url=URL)
    live = jobs.create(client_id=A, pdf_url=_url(2))
    assert _claim(jobs, job, lease=SHORT).attempts == 1
    _claim(jobs, live)  # holds a long lease: never released
    time.sleep(0.25)
    released = jobs.release_expired(max_attempts=2)
    assert [j.id for j in released] == [job.id]
    assert released[0].status is JobStatus.QUEUED
    assert released[0].lease_expires_at is None
    assert released[0].error_message is None

    assert _claim(jobs, job, lease=SHORT).attempts == 2
    time.sleep(0.25)
    released = jobs.release_expired(max_attempts=2)
    assert [j.id for j in released] == [job.id]
    final = jobs.get(job.id, client_id=A)
    assert final == released[0]
    assert final.status is JobStatus.FAILED
    assert final.error_message == "lease expired on attempt 2 of 2; gave up"
    assert jobs.get(live.id, client_id=A).status is JobStatus.PROCESSING
    assert jobs.release_expired() == []


def test_release_expired_keeps_the_queue_order(jobs: JobRepository) -> None:
    old = jobs.create(client_id=A, pdf_url=_url(1))
    _claim(jobs, old, lease=SHORT)
    jobs.create(client_id=A, pdf_url=_url(2))
    time.sleep(0.25)
    assert len(jobs.release_expired()) == 1
    again = jobs.claim_next(lease=LEASE)
    assert again is not None
    assert again.id == old.id
    assert again.attempts == 2


def test_release_expired_honours_the_limit(jobs: JobRepository) -> None:
    jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(5)])
    jobs.claim_batch(5, lease=SHORT)
    time.sleep(0.25)
    assert len(jobs.release_expired(limit=2)) == 2
    assert len(jobs.release_expired(limit=10)) == 3


@pytest.fixture
def relay(cira_db_url: str) -> Iterator[LostReply]:
    """A relay to this test's database that can lose a reply after the work is done."""
    with LostReply(cira_db_url) as lost_reply:
        yield lost_reply


def _through(relay: LostReply) -> Database:
    return Database(relay.url, pool_min_size=1, pool_max_size=1, retry_backoff=0.01)


def test_a_lost_reply_to_a_read_is_retried(jobs: JobRepository, relay: LostReply) -> None:
    """The relay really loses a reply: a call that may repeat does, and succeeds."""
    jobs.create(client_id=A, pdf_url=URL)
    with _through(relay) as db:
        relay.lose_reply("GROUP BY status")
        assert JobRepository(db).count_by_status(client_id=A)[JobStatus.QUEUED] == 1
    assert relay.lost == 1


def test_a_lost_reply_to_release_expired_is_not_repeated(
    jobs: JobRepository, relay: LostReply
) -> None:
    made = jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(3)])
    jobs.claim_batch(3, lease=SHORT)
    time.sleep(0.25)
    with _through(relay) as db:
        relay.lose_reply("expired AS MATERIALIZED")
        # A repeat would find nothing left to release and return [], hiding three failures.
        with pytest.raises(DatabaseUnavailableError):
            JobRepository(db).release_expired(max_attempts=1)
    assert relay.lost == 1
    for job in made:  # the lost try did its work
        assert jobs.get(job.id, client_id=A).status is JobStatus.FAILED
    assert jobs.release_expired(max_attempts=1) == []


def test_a_late_worker_cannot_complete_a_released_job(jobs: JobRepository) -> None:
    job = _claim(jobs, jobs.create(client_id=A, pdf_url=URL), lease=SHORT)
    time.sleep(0.25)
    jobs.release_expired()
    with pytest.raises(InvalidTransitionError, match="it is queued"):
        jobs.complete(job.id, extracted_data={}, confidence_score=0.5, tokens_used=1)
    with pytest.raises(InvalidTransitionError):
        jobs.extend_lease(job.id, lease=LEASE)


# -- stale workers: attempt= is the claim's token ----------------------------------------------


def _reclaimed(jobs: JobRepository) -> tuple[Job, Job]:
    """Worker A's claim (attempt 1), expired and released; worker B's claim (attempt 2)."""
    job = jobs.create(client_id=A, pdf_url=URL)
    first = _claim(jobs, job, lease=SHORT)
    time.sleep(0.25)
    assert [j.id for j in jobs.release_expired()] == [job.id]
    second = _claim(jobs, job)
    assert (first.attempts, second.attempts) == (1, 2)
    return first, second


def _snapshot(db: Database, job_id: uuid.UUID) -> list[tuple[Any, ...]]:
    with db.connection() as conn:
        return conn.execute(
            "SELECT status::text, attempts, lease_expires_at, error_message, updated_at,"
            " (SELECT count(*) FROM job_results) FROM jobs WHERE id = %s",
            (job_id,),
        ).fetchall()


def test_a_stale_worker_is_refused_before_the_new_one_reports(
    jobs: JobRepository, results: JobResultRepository, cira_db: Database
) -> None:
    stale, current = _reclaimed(jobs)
    before = _snapshot(cira_db, current.id)
    claimed_again = r"claimed again \(attempt 2\)"
    with pytest.raises(InvalidTransitionError, match=claimed_again):
        jobs.extend_lease(stale.id, lease=timedelta(hours=2), attempt=stale.attempts)
    with pytest.raises(InvalidTransitionError, match=claimed_again):
        jobs.complete(
            stale.id,
            extracted_data={"by": "stale"},
            confidence_score=0.5,
            tokens_used=1,
            attempt=stale.attempts,
        )
    with pytest.raises(InvalidTransitionError, match=claimed_again):
        jobs.fail(stale.id, error_message="stale", attempt=stale.attempts, client_id=A)
    assert _snapshot(cira_db, current.id) == before  # nothing changed: not even the lease
    # The worker holding the current claim carries on as if nothing happened.
    extended = jobs.extend_lease(current.id, lease=LEASE, attempt=current.attempts)
    assert extended.attempts == 2
    result = jobs.complete(
        current.id,
        extracted_data={"by": "current"},
        confidence_score=1,
        tokens_used=1,
        attempt=current.attempts,
    )
    assert results.get_for_job(current.id, client_id=A) == result
    assert result.extracted_data == {"by": "current"}


def test_a_stale_worker_is_refused_after_the_new_one_reported(
    jobs: JobRepository, results: JobResultRepository
) -> None:
    stale, current = _reclaimed(jobs)
    failed = jobs.fail(current.id, error_message="current", attempt=current.attempts)
    assert failed.status is JobStatus.FAILED
    with pytest.raises(InvalidTransitionError, match=r"claimed again \(attempt 2\)"):
        jobs.complete(
            stale.id, extracted_data={}, confidence_score=1, tokens_used=1, attempt=stale.attempts
        )
    assert results.find_for_job(stale.id, client_id=A) is None
    assert jobs.get(stale.id, client_id=A).error_message == "current"


def test_attempt_none_acts_on_whatever_claim_holds_the_job(jobs: JobRepository) -> None:
    stale, _ = _reclaimed(jobs)
    # Without attempt=, the call cannot tell the claims apart (the old behaviour).
    assert jobs.extend_lease(stale.id, lease=LEASE).attempts == 2
    assert jobs.fail(stale.id, error_message="whoever").status is JobStatus.FAILED


def test_attempt_of_the_current_claim_and_other_refusals(jobs: JobRepository) -> None:
    job = jobs.create(client_id=A, pdf_url=URL)
    with pytest.raises(InvalidTransitionError, match="it is queued, not processing"):
        jobs.extend_lease(job.id, lease=LEASE, attempt=1)
    claimed = _claim(jobs, job)
    with pytest.raises(InvalidTransitionError, match="on attempt 1, not 3"):
        jobs.fail(job.id, error_message="x", attempt=3)
    with pytest.raises(NotFoundError):
        jobs.complete(uuid.uuid4(), extracted_data={}, confidence_score=1, tokens_used=1, attempt=1)
    assert jobs.extend_lease(job.id, lease=LEASE, attempt=claimed.attempts).id == job.id
    jobs.complete(job.id, extracted_data={}, confidence_score=1, tokens_used=1, attempt=1)
    with pytest.raises(InvalidTransitionError, match="it is completed, not processing"):
        jobs.fail(job.id, error_message="x", attempt=1)


# -- count_by_status -----------------------------------------------------------------------------


def test_count_by_status_has_every_status(jobs: JobRepository) -> None:
    assert jobs.count_by_status(client_id=A) == dict.fromkeys(JobStatus, 0)
    made = jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(6)])
    jobs.create_many(client_id=B, pdf_urls=[_url(n) for n in range(4)])
    claimed = jobs.claim_batch(3, lease=LEASE, client_id=A)
    jobs.complete(claimed[0].id, extracted_data={}, confidence_score=1, tokens_used=1)
    jobs.fail(claimed[1].id, error_message="x")
    counts = jobs.count_by_status(client_id=A)
    assert list(counts) == list(JobStatus)
    assert counts == {
        JobStatus.QUEUED: 3,
        JobStatus.PROCESSING: 1,
        JobStatus.COMPLETED: 1,
        JobStatus.FAILED: 1,
        JobStatus.CANCELLED: 0,
    }
    assert sum(counts.values()) == len(made)
    assert jobs.count_by_status(client_id=B)[JobStatus.QUEUED] == 4
    assert sum(jobs.count_by_status(client_id="nobody").values()) == 0


# -- delete_finished_before ------------------------------------------------------------------------


def test_delete_finished_before_in_batches(jobs: JobRepository, cira_db: Database) -> None:
    made = jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(9)])
    claimed = jobs.claim_batch(7, lease=LEASE)
    for job in claimed[:5]:
        jobs.complete(job.id, extracted_data={"x": 1}, confidence_score=1, tokens_used=1)
    jobs.fail(claimed[5].id, error_message="x")
    cutoff = datetime.now(UTC) + timedelta(seconds=1)
    assert jobs.delete_finished_before(cutoff, batch_size=2) == 6
    left = {row[0] for row in _rows(cira_db, "SELECT status::text FROM jobs")}
    assert left == {"queued", "processing"}
    assert _rows(cira_db, "SELECT count(*) FROM job_results") == [(0,)]  # cascade
    assert jobs.delete_finished_before(cutoff) == 0
    assert len(made) == 9


def test_a_lost_reply_to_a_delete_batch_is_not_repeated(
    jobs: JobRepository, relay: LostReply, cira_db: Database
) -> None:
    jobs.create_many(client_id=A, pdf_urls=[_url(n) for n in range(10)])
    for job in jobs.claim_batch(10, lease=LEASE):
        jobs.fail(job.id, error_message="x")
    cutoff = datetime.now(UTC) + timedelta(seconds=1)
    with _through(relay) as db:
        relay.lose_reply("doomed AS MATERIALIZED", nth=2)  # the second batch
        # A repeat of the batch would report 4 + 4 + 2 of the 10 deletions made.
        with pytest.raises(
            DatabaseUnavailableError, match="earlier batches of this call deleted 4 jobs"
        ) as info:
            JobRepository(db).delete_finished_before(cutoff, batch_size=4)
        assert isinstance(info.value.__cause__, psycopg.Error)
    assert relay.lost == 1
    assert _rows(cira_db, "SELECT count(*) FROM jobs") == [(2,)]  # two batches ran
    assert jobs.delete_finished_before(cutoff, batch_size=4) == 2  # and a new call goes on


def test_delete_finished_before_respects_the_cutoff(jobs: JobRepository) -> None:
    job = _claim(jobs, jobs.create(client_id=A, pdf_url=URL))
    jobs.fail(job.id, error_message="x")
    assert jobs.delete_finished_before(job.created_at) == 0  # strictly before
    assert jobs.delete_finished_before(job.created_at + timedelta(microseconds=1)) == 1


def test_delete_finished_before_needs_an_aware_cutoff(jobs: JobRepository) -> None:
    with pytest.raises(ValidationError) as info:
        jobs.delete_finished_before(datetime(2024, 1, 1))
    assert info.value.field == "cutoff"
    with pytest.raises(ValidationError) as size:
        jobs.delete_finished_before(datetime.now(UTC), batch_size=0)
    assert size.value.field == "batch_size"


# -- unit of work -------------------------------------------------------------------------------


class _RollbackError(Exception):
    pass


def _create_then_roll_back(db: Database) -> None:
    with db.transaction() as conn:
        tx = JobRepository(conn)
        job = tx.create(client_id=A, pdf_url=URL)
        assert tx.get(job.id, client_id=A) == job
        assert JobRepository(db).find(job.id, client_id=A) is None  # not committed yet
        raise _RollbackError


def test_repositories_join_the_callers_transaction(cira_db: Database) -> None:
    with pytest.raises(_RollbackError):
        _create_then_roll_back(cira_db)
    assert JobRepository(cira_db).count_by_status(client_id=A)[JobStatus.QUEUED] == 0

    with cira_db.transaction() as conn:
        tx = JobRepository(conn)
        job = tx.create(client_id=A, pdf_url=URL)
        claimed = tx.claim_next(lease=LEASE)
        assert claimed is not None
        result = tx.complete(job.id, extracted_data={}, confidence_score=0.5, tokens_used=3)
        assert JobResultRepository(conn).get_for_job(job.id, client_id=A) == result
    assert JobRepository(cira_db).get(job.id, client_id=A).status is JobStatus.COMPLETED


def _create_then_complete_queued(db: Database) -> None:
    with db.transaction() as conn:
        tx = JobRepository(conn)
        job = tx.create(client_id=A, pdf_url=URL)
        tx.complete(job.id, extracted_data={}, confidence_score=0.5, tokens_used=3)


def test_a_failed_statement_in_a_transaction_rolls_back_everything(cira_db: Database) -> None:
    with pytest.raises(InvalidTransitionError):
        _create_then_complete_queued(cira_db)
    assert JobRepository(cira_db).count_by_status(client_id=A)[JobStatus.QUEUED] == 0


# -- errors --------------------------------------------------------------------------------------


def test_database_errors_are_wrapped_with_the_cause(cira_db_url: str) -> None:
    with psycopg.connect(cira_db_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE jobs RENAME TO jobs_gone")
    with Database(cira_db_url) as db, pytest.raises(CiraDbError) as info:
        JobRepository(db).create(client_id=A, pdf_url=URL)
    assert isinstance(info.value.__cause__, psycopg.errors.UndefinedTable)
    assert "jobs_gone" not in str(info.value)
    assert URL not in str(info.value)
    assert "create a job" in str(info.value)


def test_check_violations_map_to_validation_errors(cira_db: Database) -> None:
    from cira_db._repositories._base import map_error

    with cira_db.connection() as conn, pytest.raises(psycopg.errors.CheckViolation) as info:
        conn.execute(
            "INSERT INTO jobs (client_id, pdf_url) VALUES (%s, %s)", ("  ", "https://x.io/a")
        )
    error = map_error(info.value, "create a job")
    assert isinstance(error, ValidationError)
    assert error.field == "client_id"


def test_the_closed_database_error_is_not_a_raw_psycopg_error() -> None:
    jobs = JobRepository(Database("postgresql://localhost/none"))
    with pytest.raises(CiraDbError):
        jobs.get(uuid.uuid4(), client_id=A)


# -- transient failures ---------------------------------------------------------------------------


def _fail_first_statement(monkeypatch: pytest.MonkeyPatch, failures: int = 1) -> list[str]:
    """Make the next ``failures`` repository statements fail with a serialization failure."""
    seen: list[str] = []
    original = psycopg.Cursor.execute
    original_async = psycopg.AsyncCursor.execute

    def inject(query: Any) -> None:
        if isinstance(query, str) and query.strip():  # not the pool's empty check
            seen.append(query)
            if len(seen) <= failures:
                raise psycopg.errors.SerializationFailure("injected")

    def flaky(self: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        inject(query)
        return original(self, query, *args, **kwargs)

    async def flaky_async(
        self: psycopg.AsyncCursor[Any], query: Any, *args: Any, **kwargs: Any
    ) -> Any:
        inject(query)
        return await original_async(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", flaky)
    monkeypatch.setattr(psycopg.AsyncCursor, "execute", flaky_async)
    return seen


def test_harmless_calls_are_retried_after_a_transient_failure(
    jobs: JobRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = jobs.create(client_id=A, pdf_url=URL)
    seen = _fail_first_statement(monkeypatch)
    assert jobs.get(job.id, client_id=A) == job
    assert len(seen) == 2
    seen = _fail_first_statement(monkeypatch)
    again = jobs.create(client_id=A, pdf_url=URL, job_id=job.id)
    assert again == job
    assert len(seen) == 2


def test_moves_are_not_retried_after_a_transient_failure(
    jobs: JobRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = jobs.create(client_id=A, pdf_url=URL)
    seen = _fail_first_statement(monkeypatch)
    with pytest.raises(DatabaseUnavailableError) as info:
        jobs.claim_next(lease=LEASE)
    assert isinstance(info.value.__cause__, psycopg.errors.SerializationFailure)
    assert len(seen) == 1
    monkeypatch.undo()
    claimed = _claim(jobs, job)
    seen = _fail_first_statement(monkeypatch)
    with pytest.raises(DatabaseUnavailableError):
        jobs.complete(claimed.id, extracted_data={}, confidence_score=1, tokens_used=1)
    assert len(seen) == 1
    monkeypatch.undo()
    assert jobs.get(job.id, client_id=A).status is JobStatus.PROCESSING


def test_no_retries_on_a_callers_connection(
    cira_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    with cira_db.connection() as conn:
        seen = _fail_first_statement(monkeypatch)
        with pytest.raises(DatabaseUnavailableError):
            JobRepository(conn).count_by_status(client_id=A)
        assert len(seen) == 1
