"""`AsyncJobResultRepository`: `JobResultRepository`'s methods, awaited.

A thin asyncio shell over ``_core_results.ResultLogic`` (the logic, written
once for both faces), run by an `AsyncRunner`. The method docstrings are the
sync twin's, word for word (a test keeps them equal).
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from cira_db._models import JobResult, Usage
from cira_db._repositories._aio_base import AsyncExecutor, AsyncRunner
from cira_db._repositories._core_results import ResultLogic

__all__ = ["AsyncJobResultRepository"]


class AsyncJobResultRepository:
    """Job results and usage per client, awaited: the asyncio twin of `JobResultRepository`.

    Built on an `AsyncDatabase` or a ``psycopg.AsyncConnection``, like
    `AsyncJobRepository`; every method has the sync twin's name, arguments,
    return type and errors: ``await results.get_for_job(job.id, client_id=...)``.
    Every call is scoped by ``client_id``: another client's result is
    `NotFoundError`, exactly like a missing one, and counts in `usage` only
    ever include the client's own jobs.
    """

    __slots__ = ("_logic", "_run")

    def __init__(self, executor: AsyncExecutor) -> None:
        self._run = AsyncRunner(executor)
        self._logic = ResultLogic()

    def __repr__(self) -> str:
        return f"<AsyncJobResultRepository on {self._run.executor!r}>"

    async def find_for_job(self, job_id: UUID | str, *, client_id: str) -> JobResult | None:
        """The job's result, or None (no result yet, no such job, or another client's)."""
        return await self._run.drive(self._logic.find_for_job(job_id, client_id=client_id))

    async def get_for_job(self, job_id: UUID | str, *, client_id: str) -> JobResult:
        """The job's result; `NotFoundError` if there is none for this client."""
        return await self._run.drive(self._logic.get_for_job(job_id, client_id=client_id))

    async def usage(
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
        return await self._run.drive(
            self._logic.usage(client_id=client_id, since=since, until=until)
        )
