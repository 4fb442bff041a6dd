"""`JobResultRepository`: read results and the cost-tracking totals."""

from __future__ import annotations

from datetime import datetime
from typing import Final
from uuid import UUID

from cira_db._models import JobResult, Usage
from cira_db._repositories._base import Executor, Runner, result_row, usage_row
from cira_db._sql import query
from cira_db._validation import check_client_id, check_job_id, check_time_range
from cira_db.errors import NotFoundError

__all__ = ["JobResultRepository"]

_GET_RESULT_FOR_JOB: Final = query("job_results.sql", "get_result_for_job")
_USAGE_BY_CLIENT: Final = query("job_results.sql", "usage_by_client")


class JobResultRepository:
    """Job results (written by `JobRepository.complete`) and usage per client.

    Built on a `Database` or a psycopg connection, like `JobRepository`.
    Every call is scoped by ``client_id``: another client's result is
    `NotFoundError`, exactly like a missing one, and counts in `usage` only
    ever include the client's own jobs.
    """

    __slots__ = ("_run",)

    def __init__(self, executor: Executor) -> None:
        self._run = Runner(executor)

    def __repr__(self) -> str:
        return f"<JobResultRepository on {self._run.executor!r}>"

    def find_for_job(self, job_id: UUID | str, *, client_id: str) -> JobResult | None:
        """The job's result, or None (no result yet, no such job, or another client's)."""
        params = {"job_id": check_job_id(job_id), "client_id": check_client_id(client_id)}
        return self._run.one(
            _GET_RESULT_FOR_JOB, params, result_row, "read a job result", idempotent=True
        )

    def get_for_job(self, job_id: UUID | str, *, client_id: str) -> JobResult:
        """The job's result; `NotFoundError` if there is none for this client."""
        result = self.find_for_job(job_id, client_id=client_id)
        if result is None:
            raise NotFoundError(f"no result for job {check_job_id(job_id)}")
        return result

    def usage(
        self,
        *,
        client_id: str,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Usage:
        """Cost tracking: the client's jobs completed in ``[since, until)``.

        Returns how many, the tokens they used, and their mean confidence
        (rounded to 4 places; None when there are none). ``since`` and
        ``until`` are timezone-aware, compared with ``completed_at``; None
        leaves that side open. One statement on the partial index
        ``idx_jobs_client_completed``.
        """
        start, end = check_time_range(since, until)
        params = {"client_id": check_client_id(client_id), "since": start, "until": end}
        usage = self._run.one(_USAGE_BY_CLIENT, params, usage_row, "compute usage", idempotent=True)
        assert usage is not None  # an aggregate without GROUP BY returns one row
        return usage
