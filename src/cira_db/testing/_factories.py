"""Test data factories: jobs in any status, made through the public repositories.

Everything here goes through `JobRepository` and `JobResultRepository`, the way
the service itself moves jobs, so a factory-made job is exactly what the
library would have produced: a processing job was claimed (``attempts`` 1, a
lease), a completed one has its result written by `JobRepository.complete`, a
failed one was failed by a worker.
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from decimal import Decimal
from typing import Any, Final

import psycopg

from cira_db._database import Database
from cira_db._models import Job, JobResult, JobStatus
from cira_db._repositories import JobRepository, JobResultRepository
from cira_db._validation import check_job_status

__all__ = ["CiraDbFactory"]

_CLAIM_BATCH: Final = 1000  # JobRepository.claim_batch's largest batch


class CiraDbFactory:
    """Makes jobs and results for a test (the ``cira_db_factory`` fixture).

    ::

        def test_lists_one_of_each(cira_db_factory: CiraDbFactory) -> None:
            queued = cira_db_factory.job()
            failed = cira_db_factory.job(status=JobStatus.FAILED, error_message="bad scan")
            job, result = cira_db_factory.completed_job(tokens_used=1200)

    Defaults: client ``"client-a"``, a new ``https://example.com/test/<n>.pdf``
    per job, a small invoice-like result with confidence 0.9 and 100 tokens.
    Each call is a few round trips (create, claim, then complete or fail).
    """

    __slots__ = ("_counter", "_db", "_jobs", "_results")

    def __init__(self, db: Database) -> None:
        self._db = db
        self._jobs = JobRepository(db)
        self._results = JobResultRepository(db)
        self._counter = itertools.count(1)

    def __repr__(self) -> str:
        return f"<CiraDbFactory on {self._db!r}>"

    @property
    def jobs(self) -> JobRepository:
        """The `JobRepository` the factory uses (on the test's `Database`)."""
        return self._jobs

    @property
    def results(self) -> JobResultRepository:
        """The `JobResultRepository` on the test's `Database`."""
        return self._results

    def job(
        self,
        *,
        client_id: str = "client-a",
        status: JobStatus | str = JobStatus.QUEUED,
        pdf_url: str | None = None,
        error_message: str = "failed in a test",
        extracted_data: dict[str, Any] | None = None,
        confidence_score: float | Decimal | int = Decimal("0.9"),
        tokens_used: int = 100,
        lease: timedelta = timedelta(minutes=15),
    ) -> Job:
        """A new job of ``client_id``, moved into ``status``; returns it as stored now.

        queued: created. processing: created and claimed (``attempts`` 1, a
        lease of ``lease``). completed: claimed, then completed with the
        given result (see `completed_job`). failed: claimed, then failed with
        ``error_message``. cancelled: created, then cancelled (never claimed:
        ``attempts`` 0). Other queued jobs of the same client are left as
        they are: the claim takes exactly the new job. A bad ``status`` is a
        `ValidationError` (field ``status``), before anything is written.
        """
        wanted = check_job_status(status)
        if wanted is JobStatus.COMPLETED:
            job, _ = self.completed_job(
                client_id=client_id,
                pdf_url=pdf_url,
                extracted_data=extracted_data,
                confidence_score=confidence_score,
                tokens_used=tokens_used,
                lease=lease,
            )
            return job
        job = self._create(client_id, pdf_url)
        if wanted is JobStatus.QUEUED:
            return job
        if wanted is JobStatus.CANCELLED:
            return self._jobs.cancel(job.id, client_id=client_id)
        claimed = self._claim(job, lease)
        if wanted is JobStatus.PROCESSING:
            return claimed
        return self._jobs.fail(claimed.id, error_message=error_message, attempt=claimed.attempts)

    def completed_job(
        self,
        *,
        client_id: str = "client-a",
        pdf_url: str | None = None,
        extracted_data: dict[str, Any] | None = None,
        confidence_score: float | Decimal | int = Decimal("0.9"),
        tokens_used: int = 100,
        lease: timedelta = timedelta(minutes=15),
    ) -> tuple[Job, JobResult]:
        """A new job, claimed and completed with a result; returns both as stored.

        ``extracted_data`` defaults to a small invoice-like dict; the
        arguments are validated by `JobRepository.complete` (the score is
        rounded half-even to 2 places, as always).
        """
        job = self._create(client_id, pdf_url)
        claimed = self._claim(job, lease)
        number = next(self._counter)
        data = (
            extracted_data
            if extracted_data is not None
            else {
                "document_type": "invoice",
                "reference": f"INV-{number}",
                "total": 129.5,
                "currency": "EUR",
            }
        )
        result = self._jobs.complete(
            claimed.id,
            extracted_data=data,
            confidence_score=confidence_score,
            tokens_used=tokens_used,
            attempt=claimed.attempts,
        )
        return self._jobs.get(job.id, client_id=client_id), result

    def result(
        self,
        *,
        client_id: str = "client-a",
        pdf_url: str | None = None,
        extracted_data: dict[str, Any] | None = None,
        confidence_score: float | Decimal | int = Decimal("0.9"),
        tokens_used: int = 100,
    ) -> JobResult:
        """The result of a new completed job (`completed_job` without the job)."""
        _, result = self.completed_job(
            client_id=client_id,
            pdf_url=pdf_url,
            extracted_data=extracted_data,
            confidence_score=confidence_score,
            tokens_used=tokens_used,
        )
        return result

    # -- steps --------------------------------------------------------------------

    def _create(self, client_id: str, pdf_url: str | None) -> Job:
        url = (
            pdf_url
            if pdf_url is not None
            else f"https://example.com/test/{next(self._counter)}.pdf"
        )
        return self._jobs.create(client_id=client_id, pdf_url=url)

    def _claim(self, job: Job, lease: timedelta) -> Job:
        """Claim exactly ``job`` from its client's queue.

        A claim takes the client's oldest queued job. When the client has
        others (older, or requeued), a second connection claims those first
        inside a transaction it then rolls back: it only holds their row
        locks meanwhile, so the real claim skips them (``SKIP LOCKED``) and
        takes ``job``, and they are left exactly as they were.
        """
        others = self._jobs.count_by_status(client_id=job.client_id)[JobStatus.QUEUED] - 1
        if others <= 0:
            claimed = self._jobs.claim_next(lease=lease, client_id=job.client_id)
        else:
            with self._db.connect_direct() as holder, holder.transaction():
                held = JobRepository(holder)
                claimed = None
                while others > 0:
                    batch = held.claim_batch(
                        min(others, _CLAIM_BATCH), lease=lease, client_id=job.client_id
                    )
                    if any(j.id == job.id for j in batch):
                        break  # a newer queued job (another session's): give up
                    others -= len(batch)
                    if not batch:
                        break
                else:
                    claimed = self._jobs.claim_next(lease=lease, client_id=job.client_id)
                raise psycopg.Rollback
        if claimed is None or claimed.id != job.id:
            raise RuntimeError(
                f"cira_db_factory: could not claim job {job.id} of {job.client_id!r}: "
                "another session is working on this client's queue"
            )
        return claimed
