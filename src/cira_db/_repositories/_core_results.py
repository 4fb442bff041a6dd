"""The job results' logic, written once: what both result repositories do.

Sans-I/O, like ``_core_jobs``: generators that check arguments, yield `Call`
requests and interpret the rows; `Runner.drive` (sync) and
``AsyncRunner.drive`` (asyncio) do the I/O.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final
from uuid import UUID

from cira_db._models import JobResult, Usage
from cira_db._repositories._base import Call, Logic, result_row, usage_row
from cira_db._sql import query
from cira_db._validation import check_client_id, check_job_id, check_time_range
from cira_db.errors import NotFoundError

__all__ = ["ResultLogic"]

_GET_RESULT_FOR_JOB: Final = query("job_results.sql", "get_result_for_job")
_USAGE_BY_CLIENT: Final = query("job_results.sql", "usage_by_client")
# Each statement's row factory, bound to it: its builder is found once (`RowFactory.of`).
_GET_RESULT_FOR_JOB_ROWS: Final = result_row.of(_GET_RESULT_FOR_JOB)
_USAGE_BY_CLIENT_ROWS: Final = usage_row.of(_USAGE_BY_CLIENT)


class ResultLogic:
    """The logic of every `JobResultRepository` method (no state of its own)."""

    __slots__ = ()

    def find_for_job(self, job_id: UUID | str, *, client_id: str) -> Logic[JobResult | None]:
        """The client's result of the job, or None."""
        params = {"job_id": check_job_id(job_id), "client_id": check_client_id(client_id)}
        result: JobResult | None = yield Call.one(
            _GET_RESULT_FOR_JOB,
            params,
            _GET_RESULT_FOR_JOB_ROWS,
            "read a job result",
            idempotent=True,
        )
        return result

    def get_for_job(self, job_id: UUID | str, *, client_id: str) -> Logic[JobResult]:
        """The client's result of the job, or `NotFoundError`."""
        # `find_for_job` written out: one generator per call instead of two.
        key = check_job_id(job_id)
        params = {"job_id": key, "client_id": check_client_id(client_id)}
        result: JobResult | None = yield Call.one(
            _GET_RESULT_FOR_JOB,
            params,
            _GET_RESULT_FOR_JOB_ROWS,
            "read a job result",
            idempotent=True,
        )
        if result is None:
            raise NotFoundError(f"no result for job {key}")
        return result

    def usage(
        self, *, client_id: str, since: datetime | None, until: datetime | None
    ) -> Logic[Usage]:
        """Count, tokens and mean confidence of the client's jobs completed in the range."""
        start, end = check_time_range(since, until)
        params = {"client_id": check_client_id(client_id), "since": start, "until": end}
        usage: Usage | None = yield Call.one(
            _USAGE_BY_CLIENT, params, _USAGE_BY_CLIENT_ROWS, "compute usage", idempotent=True
        )
        assert usage is not None  # an aggregate without GROUP BY returns one row
        return usage
