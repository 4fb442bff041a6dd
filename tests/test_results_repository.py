"""JobResultRepository against a real PostgreSQL: results, usage, client scoping."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from cira_db import Database, JobRepository, JobResult, JobResultRepository, Usage
from cira_db.errors import NotFoundError, ValidationError

A, B = "client-a", "client-b"
LEASE = timedelta(minutes=5)


def _done(
    jobs: JobRepository,
    client_id: str,
    *,
    confidence: Any = 0.9,
    tokens: int = 100,
    data: dict[str, Any] | None = None,
) -> JobResult:
    job = jobs.create(client_id=client_id, pdf_url="https://example.com/a.pdf")
    claimed = jobs.claim_next(lease=LEASE, client_id=client_id)
    assert claimed is not None
    assert claimed.id == job.id
    return jobs.complete(
        job.id, extracted_data=data or {"n": 1}, confidence_score=confidence, tokens_used=tokens
    )


def test_get_for_job(jobs: JobRepository, results: JobResultRepository) -> None:
    data = {"invoice": {"number": "INV-1", "total": 99.5}, "pages": [1, 2], "ok": False}
    result = _done(jobs, A, data=data, confidence=Decimal("0.87"), tokens=4321)
    read = results.get_for_job(result.job_id, client_id=A)
    assert read == result
    assert read.extracted_data == data
    assert read.confidence_score == Decimal("0.87")
    assert isinstance(read.confidence_score, Decimal)
    assert read.tokens_used == 4321
    assert read.created_at.tzinfo is not None
    assert results.find_for_job(str(result.job_id), client_id=A) == result


def test_another_clients_result_is_not_found(
    jobs: JobRepository, results: JobResultRepository
) -> None:
    result = _done(jobs, A)
    with pytest.raises(NotFoundError):
        results.get_for_job(result.job_id, client_id=B)
    assert results.find_for_job(result.job_id, client_id=B) is None


def test_no_result_yet_or_no_job_is_not_found(
    jobs: JobRepository, results: JobResultRepository
) -> None:
    queued = jobs.create(client_id=A, pdf_url="https://example.com/a.pdf")
    for job_id in (queued.id, uuid.uuid4()):
        with pytest.raises(NotFoundError):
            results.get_for_job(job_id, client_id=A)


def test_get_for_job_validates_before_sql() -> None:
    results = JobResultRepository(Database("postgresql://localhost/none"))  # never opened
    with pytest.raises(ValidationError) as info:
        results.get_for_job("nope", client_id=A)
    assert info.value.field == "job_id"
    with pytest.raises(ValidationError) as client:
        results.get_for_job(uuid.uuid4(), client_id="")
    assert client.value.field == "client_id"


def test_usage_totals_one_clients_completed_jobs(
    jobs: JobRepository, results: JobResultRepository
) -> None:
    assert results.usage(client_id=A) == Usage(jobs=0, tokens_used=0, mean_confidence=None)
    _done(jobs, A, confidence=0.9, tokens=1000)
    _done(jobs, A, confidence=0.8, tokens=500)
    _done(jobs, A, confidence=0.75, tokens=1)
    _done(jobs, B, confidence=0.1, tokens=99_999)
    failed = jobs.create(client_id=A, pdf_url="https://example.com/f.pdf")
    jobs.claim_next(lease=LEASE, client_id=A)
    jobs.fail(failed.id, error_message="x")
    usage = results.usage(client_id=A)
    assert usage == Usage(jobs=3, tokens_used=1501, mean_confidence=Decimal("0.8167"))
    assert results.usage(client_id=B).tokens_used == 99_999
    assert results.usage(client_id="nobody").jobs == 0


def test_usage_time_range_is_half_open_on_completed_at(
    jobs: JobRepository, results: JobResultRepository
) -> None:
    first = _done(jobs, A, tokens=10)
    time.sleep(0.01)
    second = _done(jobs, A, tokens=20)
    since, until = first.created_at, second.created_at  # completed_at == result created_at
    assert results.usage(client_id=A, since=since).tokens_used == 30
    assert results.usage(client_id=A, since=since, until=until).tokens_used == 10
    assert results.usage(client_id=A, until=until).tokens_used == 10
    assert results.usage(client_id=A, since=until).tokens_used == 20
    assert results.usage(client_id=A, since=until, until=until).jobs == 0
    later = datetime.now(UTC) + timedelta(days=1)
    assert results.usage(client_id=A, since=later).jobs == 0


def test_usage_accepts_any_timezone(jobs: JobRepository, results: JobResultRepository) -> None:
    result = _done(jobs, A, tokens=7)
    from zoneinfo import ZoneInfo

    tokyo = result.created_at.astimezone(ZoneInfo("Asia/Tokyo"))
    assert results.usage(client_id=A, since=tokyo).tokens_used == 7
    assert results.usage(client_id=A, until=tokyo).tokens_used == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"since": datetime(2024, 1, 1)}, "since"),
        ({"until": "2024-01-01"}, "until"),
        (
            {
                "since": datetime(2024, 2, 1, tzinfo=UTC),
                "until": datetime(2024, 1, 1, tzinfo=UTC),
            },
            "until",
        ),
        ({"client_id": "x" * 51}, "client_id"),
    ],
)
def test_usage_validates_its_arguments(kwargs: dict[str, Any], field: str) -> None:
    results = JobResultRepository(Database("postgresql://localhost/none"))  # never opened
    arguments: dict[str, Any] = {"client_id": A, **kwargs}
    with pytest.raises(ValidationError) as info:
        results.usage(**arguments)
    assert info.value.field == field


def test_results_cascade_with_retention(jobs: JobRepository, results: JobResultRepository) -> None:
    result = _done(jobs, A)
    assert jobs.delete_finished_before(datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert results.find_for_job(result.job_id, client_id=A) is None


def test_results_repository_in_a_transaction(cira_db: Database) -> None:
    with cira_db.transaction() as conn:
        result = _done(JobRepository(conn), A, tokens=5)
        assert JobResultRepository(conn).usage(client_id=A).tokens_used == 5
    assert JobResultRepository(cira_db).get_for_job(result.job_id, client_id=A) == result
