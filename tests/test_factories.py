"""The ``cira_db_factory`` fixture: jobs in every status, made through the public repositories."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from cira_db import Database, JobRepository, JobResultRepository, JobStatus
from cira_db.errors import ValidationError
from cira_db.testing import CiraDbFactory

A, B = "client-a", "client-b"


def test_the_fixture_is_a_factory_on_the_tests_database(
    cira_db_factory: CiraDbFactory, cira_db: Database
) -> None:
    assert isinstance(cira_db_factory, CiraDbFactory)
    job = cira_db_factory.job()
    assert JobRepository(cira_db).get(job.id, client_id=A) == job
    assert "CiraDbFactory" in repr(cira_db_factory)


def test_a_queued_job(cira_db_factory: CiraDbFactory) -> None:
    job = cira_db_factory.job()
    assert job.status is JobStatus.QUEUED
    assert job.client_id == A
    assert job.pdf_url.startswith("https://example.com/test/")
    assert job.attempts == 0
    other = cira_db_factory.job(client_id=B, pdf_url="https://example.com/b.pdf")
    assert (other.client_id, other.pdf_url) == (B, "https://example.com/b.pdf")
    assert other.pdf_url != job.pdf_url


def test_a_processing_job(cira_db_factory: CiraDbFactory) -> None:
    job = cira_db_factory.job(status=JobStatus.PROCESSING, lease=timedelta(hours=1))
    assert job.status is JobStatus.PROCESSING
    assert job.attempts == 1
    assert job.lease_expires_at is not None
    assert job.lease_expires_at > job.updated_at + timedelta(minutes=59)


def test_a_completed_job_and_its_result(cira_db_factory: CiraDbFactory, cira_db: Database) -> None:
    job = cira_db_factory.job(status="completed")
    assert job.status is JobStatus.COMPLETED
    assert job.completed_at is not None
    stored = JobResultRepository(cira_db).get_for_job(job.id, client_id=A)
    assert stored.extracted_data["document_type"] == "invoice"

    done, result = cira_db_factory.completed_job(
        client_id=B, extracted_data={"total": 1}, confidence_score=0.935, tokens_used=7
    )
    assert done.status is JobStatus.COMPLETED
    assert result.job_id == done.id
    assert result.created_at == done.completed_at
    assert (result.extracted_data, result.confidence_score, result.tokens_used) == (
        {"total": 1},
        Decimal("0.94"),
        7,
    )
    assert JobResultRepository(cira_db).get_for_job(done.id, client_id=B) == result


def test_result_is_the_result_of_a_new_completed_job(
    cira_db_factory: CiraDbFactory, cira_db: Database
) -> None:
    result = cira_db_factory.result(tokens_used=42)
    assert result.tokens_used == 42
    assert JobRepository(cira_db).get(result.job_id, client_id=A).status is JobStatus.COMPLETED
    assert JobResultRepository(cira_db).usage(client_id=A).tokens_used == 42


def test_a_failed_job(cira_db_factory: CiraDbFactory) -> None:
    job = cira_db_factory.job(status=JobStatus.FAILED, error_message="bad scan")
    assert job.status is JobStatus.FAILED
    assert job.error_message == "bad scan"
    assert job.attempts == 1
    assert job.lease_expires_at is None
    assert cira_db_factory.job(status=JobStatus.FAILED).error_message == "failed in a test"


def test_other_queued_jobs_of_the_client_are_left_alone(
    cira_db_factory: CiraDbFactory, cira_db: Database
) -> None:
    # A claim takes the oldest queued job: the factory must claim its new job, not these.
    jobs = JobRepository(cira_db)
    older = jobs.create_many(client_id=A, pdf_urls=[f"https://e.com/{n}" for n in range(1203)])
    processing = cira_db_factory.job(status=JobStatus.PROCESSING)
    failed = cira_db_factory.job(status=JobStatus.FAILED)
    completed, _ = cira_db_factory.completed_job()
    assert processing.status is JobStatus.PROCESSING
    assert processing.id not in {job.id for job in older}
    assert failed.status is JobStatus.FAILED
    assert completed.status is JobStatus.COMPLETED
    assert jobs.count_by_status(client_id=A) == {
        JobStatus.QUEUED: 1203,
        JobStatus.PROCESSING: 1,
        JobStatus.COMPLETED: 1,
        JobStatus.FAILED: 1,
        JobStatus.CANCELLED: 0,
    }
    untouched = jobs.list(client_id=A, status=JobStatus.QUEUED, limit=1000).items
    assert all(job.attempts == 0 and job.lease_expires_at is None for job in untouched)
    # The queue is as it was: the next claim takes the oldest of the older jobs.
    claimed = jobs.claim_next(lease=timedelta(minutes=1), client_id=A)
    assert claimed is not None
    assert claimed.id == older[0].id


def test_a_mix_of_statuses_for_one_client(
    cira_db_factory: CiraDbFactory, cira_db: Database
) -> None:
    # The factory makes no cancelled job yet (the "cancel" work adds it).
    made = [status for status in JobStatus if status is not JobStatus.CANCELLED]
    for status in (*made, *made):
        assert cira_db_factory.job(status=status).status is status
    expected: dict[JobStatus, int] = {**dict.fromkeys(made, 2), JobStatus.CANCELLED: 0}
    assert JobRepository(cira_db).count_by_status(client_id=A) == expected


def test_bad_arguments_are_the_librarys_validation_errors(cira_db_factory: CiraDbFactory) -> None:
    with pytest.raises(ValidationError) as info:
        cira_db_factory.job(client_id="")
    assert info.value.field == "client_id"
    with pytest.raises(ValidationError) as info:
        cira_db_factory.completed_job(confidence_score=2)
    assert info.value.field == "confidence_score"


@pytest.mark.parametrize("status", ["done", "bogus", "QUEUED", "", None, 3])
def test_a_bad_status_is_a_validation_error_and_writes_nothing(
    cira_db_factory: CiraDbFactory, status: object
) -> None:
    with pytest.raises(ValidationError) as info:
        cira_db_factory.job(status=status)  # type: ignore[arg-type]
    assert info.value.field == "status"
    assert "queued" in str(info.value)  # says what is allowed
    assert cira_db_factory.jobs.count_by_status(client_id=A) == dict.fromkeys(JobStatus, 0)


def test_the_factorys_repositories(cira_db_factory: CiraDbFactory) -> None:
    job = cira_db_factory.job()
    assert cira_db_factory.jobs.get(job.id, client_id=A) == job
    assert cira_db_factory.results.find_for_job(job.id, client_id=A) is None
