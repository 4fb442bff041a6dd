"""`JobResultRepository`: read results and the cost-tracking totals.

A thin sync shell over ``_core_results.ResultLogic`` (the logic, written once
for both faces), run by a `Runner`.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from cira_db._models import JobResult, Usage
from cira_db._repositories._base import Executor, Runner
from cira_db._repositories._core_results import ResultLogic

__all__ = ["JobResultRepository"]


class JobResultRepository:
    """Job results (written by `JobRepository.complete`) and usage per client.

    Built on a `Database` or a psycopg connection, like `JobRepository`.
    Every call is scoped by ``client_id``: another client's result is
    `NotFoundError`, exactly like a missing one, and counts in `usage` only
    ever include the client's own jobs.
    """

    __slots__ = ("_logic", "_run")

    def __init__(self, executor: Executor) -> None:
        self._run = Runner(executor)
        self._logic = ResultLogic()

    def __repr__(self) -> str:
        return f"<JobResultRepository on {self._run.executor!r}>"

    def find_for_job(self, job_id: UUID | str, *, client_id: str) -> JobResult | None:
        """The job's result, or None (no result yet, no such job, or another client's)."""
        return self._run.drive(self._logic.find_for_job(job_id, client_id=client_id))

    def get_for_job(self, job_id: UUID | str, *, client_id: str) -> JobResult:
        """The job's result; `NotFoundError` if there is none for this client."""
        return self._run.drive(self._logic.get_for_job(job_id, client_id=client_id))

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
        return self._run.drive(self._logic.usage(client_id=client_id, since=since, until=until))
