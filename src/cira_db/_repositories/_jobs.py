"""`JobRepository`: create, read, list and move jobs through their life."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final, TypeVar
from uuid import UUID

from psycopg.rows import tuple_row

from cira_db._cursor import DEFAULT_KEY, decode_cursor, encode_cursor
from cira_db._models import STATUS_BY_LABEL, Job, JobResult, JobStatus, Page
from cira_db._repositories._base import (
    Executor,
    Outcome,
    Runner,
    job_outcome_row,
    job_row,
    result_outcome_row,
)
from cira_db._repositories._ids import uuid7, uuid7_batch
from cira_db._sql import query
from cira_db._validation import (
    check_aware_datetime,
    check_client_id,
    check_confidence_score,
    check_error_message,
    check_extracted_data,
    check_job_id,
    check_lease,
    check_limit,
    check_optional_attempt,
    check_optional_client_id,
    check_pdf_url,
    check_pdf_urls,
    check_positive_int,
    check_status,
    check_tokens_used,
)
from cira_db.errors import (
    ConflictError,
    DatabaseError,
    DatabaseUnavailableError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
)

__all__ = ["JobRepository"]

T = TypeVar("T")

_INSERT_JOB: Final = query("jobs.sql", "insert_job")
_INSERT_JOBS: Final = query("jobs.sql", "insert_jobs")
_GET_JOB: Final = query("jobs.sql", "get_job")
_LIST_JOBS: Final = query("jobs.sql", "list_jobs")
_LIST_JOBS_BY_STATUS: Final = query("jobs.sql", "list_jobs_by_status")
_CLAIM_JOBS: Final = query("jobs.sql", "claim_jobs")
_CLAIM_JOBS_FOR_CLIENT: Final = query("jobs.sql", "claim_jobs_for_client")
_EXTEND_LEASE: Final = query("jobs.sql", "extend_lease")
_COMPLETE_JOB: Final = query("jobs.sql", "complete_job")
_FAIL_JOB: Final = query("jobs.sql", "fail_job")
_RETRY_JOB: Final = query("jobs.sql", "retry_job")
_RELEASE_EXPIRED_JOBS: Final = query("jobs.sql", "release_expired_jobs")
_COUNT_JOBS_BY_STATUS: Final = query("jobs.sql", "count_jobs_by_status")
_DELETE_FINISHED_JOBS: Final = query("jobs.sql", "delete_finished_jobs")

_BATCH_SIZE_MAX: Final = 10_000
# An insert that met a concurrent insert of the same id sees neither its own
# row nor the other one (statement snapshot); running it again resolves it.
_CREATE_TRIES: Final = 3


def _not_found(job_id: UUID) -> NotFoundError:
    return NotFoundError(f"job {job_id} not found")


def _refused(
    job_id: UUID,
    action: str,
    status: str,
    needed: JobStatus,
    *,
    attempt: int | None = None,
    current: int | None = None,
) -> InvalidTransitionError:
    if attempt is not None and current is not None:
        # ``attempts`` only grows: a higher one means the worker's claim is gone.
        if current > attempt:
            return InvalidTransitionError(
                f"cannot {action} job {job_id}: it was claimed again (attempt {current}) "
                f"after attempt {attempt}; nothing was changed"
            )
        if current < attempt and status == needed.value:
            return InvalidTransitionError(
                f"cannot {action} job {job_id}: it is on attempt {current}, not {attempt}; "
                "nothing was changed"
            )
    if status == needed.value:
        return InvalidTransitionError(
            f"cannot {action} job {job_id}: it changed while this call ran; nothing was changed"
        )
    return InvalidTransitionError(
        f"cannot {action} job {job_id}: it is {status}, not {needed.value}; nothing was changed"
    )


class JobRepository:
    """Jobs: one PDF to process each, scoped by client, moved through their life.

    Built on a `Database` (every single-job call is one statement and one
    round trip on an autocommit connection from the pool) or on a psycopg
    connection the caller owns (statements join the caller's transaction)::

        jobs = JobRepository(db)
        with db.transaction() as conn:
            JobRepository(conn).create(client_id="client-a", pdf_url="https://...")

    Calls that take ``client_id`` only see that client's jobs: another
    client's job raises `NotFoundError` exactly like a missing one. Worker
    calls (`claim_next`, `extend_lease`, `complete`, `fail`, `retry`) serve
    every client unless given a ``client_id``. A worker passes
    ``attempt=claimed.attempts`` to `extend_lease`, `complete` and `fail`, so
    that once its lease ran out and the job was claimed again, its late
    calls are refused instead of acting on the other worker's claim.

    Arguments are validated before any SQL runs (`ValidationError` naming the
    argument); database errors come out as `cira_db.errors` types with the
    psycopg error as ``__cause__``.

    ``cursor_key`` signs the `list` cursors; give every process that serves
    the same listings the same secret to make cursors unforgeable.
    """

    __slots__ = ("_cursor_key", "_run")

    def __init__(self, executor: Executor, *, cursor_key: bytes | None = None) -> None:
        self._run = Runner(executor)
        if cursor_key is not None and not (isinstance(cursor_key, bytes) and cursor_key):
            raise ValidationError("cursor_key", "must be non-empty bytes")
        self._cursor_key = cursor_key or DEFAULT_KEY

    def __repr__(self) -> str:
        return f"<JobRepository on {self._run.executor!r}>"

    # -- creating ---------------------------------------------------------------

    def create(self, *, client_id: str, pdf_url: str, job_id: UUID | str | None = None) -> Job:
        """Queue one PDF for ``client_id``; returns the new job (status queued).

        ``job_id`` makes the call idempotent: a retried request with the same
        id and the same client and URL returns the job stored the first time
        (one row, whatever state it is in now); the same id with a different
        client or URL raises `ConflictError`. Without it a new time-ordered
        id (UUIDv7) is generated.
        """
        client = check_client_id(client_id)
        url = check_pdf_url(pdf_url)
        new_id = uuid7() if job_id is None else check_job_id(job_id)
        params = {"id": new_id, "client_id": client, "pdf_url": url}
        for _ in range(_CREATE_TRIES):
            # The id is fixed before the first try, so repeating the insert is
            # harmless: a try whose reply was lost makes the next one "existing".
            reply = self._run.one(
                _INSERT_JOB, params, job_outcome_row, "create a job", idempotent=True
            )
            if reply is None:
                continue  # a concurrent insert of this id committed after our snapshot
            if reply.row is None:
                raise ConflictError(
                    f"job {new_id} exists already with a different client or pdf_url"
                )
            return reply.row
        raise DatabaseError(f"create a job: job {new_id} kept changing concurrently; try again")

    def create_many(self, *, client_id: str, pdf_urls: Sequence[str]) -> builtins.list[Job]:
        """Queue many PDFs (up to 100,000) for one client, all or nothing.

        One ``INSERT ... SELECT FROM unnest(...)`` statement (no temporary
        table, which would pin the session behind RDS Proxy). Returns the jobs
        in the order of ``pdf_urls``; their UUIDv7 ids increase in that order.
        """
        client = check_client_id(client_id)
        urls = check_pdf_urls(pdf_urls)
        if not urls:
            return []
        ids = uuid7_batch(len(urls))
        params = {"ids": ids, "client_id": client, "pdf_urls": urls}
        # Not repeated on a transient failure: if the lost reply was a commit,
        # a second try would fail on the ids and hide the jobs made by the first.
        jobs = self._run.all(_INSERT_JOBS, params, job_row, "create jobs", idempotent=False)
        by_id = {job.id: job for job in jobs}
        return [by_id[new_id] for new_id in ids]

    # -- reading ----------------------------------------------------------------

    def find(self, job_id: UUID | str, *, client_id: str) -> Job | None:
        """The job, or None if it does not exist or belongs to another client."""
        params = {"id": check_job_id(job_id), "client_id": check_client_id(client_id)}
        return self._run.one(_GET_JOB, params, job_row, "read a job", idempotent=True)

    def get(self, job_id: UUID | str, *, client_id: str) -> Job:
        """The job; `NotFoundError` if it does not exist or belongs to another client."""
        job = self.find(job_id, client_id=client_id)
        if job is None:
            raise _not_found(check_job_id(job_id))
        return job

    def list(
        self,
        *,
        client_id: str,
        status: JobStatus | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Job]:
        """One page of the client's jobs, newest first (``created_at``, then id).

        Pass the page's ``next_cursor`` back as ``cursor`` for the next page;
        it is None on the last page. A cursor only works for the same
        ``client_id`` and ``status``: a tampered cursor or one from another
        listing raises `ValidationError` (field ``cursor``). Keyset
        pagination: a page costs the same however deep it is, and rows
        created meanwhile do not shift later pages.
        """
        client = check_client_id(client_id)
        wanted = check_status(status)
        size = check_limit(limit)
        after_created_at: datetime | None = None
        after_id: UUID | None = None
        if cursor is not None:
            after_created_at, after_id = decode_cursor(
                cursor, client_id=client, status=wanted, key=self._cursor_key
            )
        params: dict[str, Any] = {
            "client_id": client,
            "after_created_at": after_created_at,
            "after_id": after_id,
            "limit": size + 1,
        }
        if wanted is None:
            rows = self._run.all(_LIST_JOBS, params, job_row, "list jobs", idempotent=True)
        else:
            params["status"] = wanted.value
            rows = self._run.all(
                _LIST_JOBS_BY_STATUS, params, job_row, "list jobs", idempotent=True
            )
        next_cursor = None
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            next_cursor = encode_cursor(
                client_id=client,
                status=wanted,
                created_at=last.created_at,
                job_id=last.id,
                key=self._cursor_key,
            )
        return Page(items=tuple(rows), next_cursor=next_cursor)

    def count_by_status(self, *, client_id: str) -> dict[JobStatus, int]:
        """How many jobs the client has in each status; every status is present."""
        params = {"client_id": check_client_id(client_id)}
        counts = dict.fromkeys(JobStatus, 0)
        for status, jobs in self._run.all(
            _COUNT_JOBS_BY_STATUS, params, tuple_row, "count jobs by status", idempotent=True
        ):
            counts[STATUS_BY_LABEL[status]] = jobs
        return counts

    # -- the worker's side ---------------------------------------------------------

    def claim_next(self, *, lease: timedelta, client_id: str | None = None) -> Job | None:
        """Claim the oldest queued job (of ``client_id``, or of any client).

        The job moves to processing with ``attempts + 1`` and a lease until
        ``now() + lease``; None when the queue is empty. ``FOR UPDATE SKIP
        LOCKED``: concurrent workers never claim the same job and never wait
        for each other.
        """
        jobs = self.claim_batch(1, lease=lease, client_id=client_id)
        return jobs[0] if jobs else None

    def claim_batch(
        self, limit: int, *, lease: timedelta, client_id: str | None = None
    ) -> builtins.list[Job]:
        """Claim up to ``limit`` (1..1000) of the oldest queued jobs, oldest first.

        Like `claim_next`, in one statement; fewer (or none) when the queue
        holds fewer unlocked jobs.
        """
        params: dict[str, Any] = {
            "limit": check_limit(limit),
            "lease": check_lease(lease),
        }
        client = check_optional_client_id(client_id)
        if client is None:
            # Claims are never repeated: a lost reply may hide a claim that happened.
            return self._run.all(_CLAIM_JOBS, params, job_row, "claim jobs", idempotent=False)
        params["client_id"] = client
        return self._run.all(
            _CLAIM_JOBS_FOR_CLIENT, params, job_row, "claim jobs", idempotent=False
        )

    def extend_lease(
        self,
        job_id: UUID | str,
        *,
        lease: timedelta,
        client_id: str | None = None,
        attempt: int | None = None,
    ) -> Job:
        """Move a processing job's lease to ``now() + lease`` (a worker's heartbeat).

        `NotFoundError` if the job does not exist (or is another client's);
        `InvalidTransitionError` if it is not processing, for example because
        its lease already expired and `release_expired` put it back, or, with
        ``attempt`` (the ``attempts`` of the worker's claim), if it was
        claimed again since; nothing changes then.
        """
        key = check_job_id(job_id)
        claim = check_optional_attempt(attempt)
        params = {
            "id": key,
            "lease": check_lease(lease),
            "client_id": check_optional_client_id(client_id),
            "attempt": claim,
        }
        reply = self._run.one(
            _EXTEND_LEASE, params, job_outcome_row, "extend a lease", idempotent=True
        )
        return _moved(reply, key, "extend the lease of", JobStatus.PROCESSING, claim)

    def complete(
        self,
        job_id: UUID | str,
        *,
        extracted_data: dict[str, Any],
        confidence_score: float | Decimal | int,
        tokens_used: int,
        client_id: str | None = None,
        attempt: int | None = None,
    ) -> JobResult:
        """Store the result of a processing job and mark it completed, atomically.

        One statement, one round trip: the job becomes completed (with
        ``completed_at = now()``, lease cleared) and the result row is
        inserted with the same ``now()``. ``confidence_score`` is rounded
        half-even to 2 places (0.935 -> 0.94). A job that is queued,
        completed or failed raises `InvalidTransitionError`, and nothing
        changes; a missing job raises `NotFoundError`. With ``attempt`` (the
        ``attempts`` of the worker's claim, ``attempt=claimed.attempts``) a
        job claimed again since that claim is refused the same way, so a
        worker whose lease ran out never writes over another worker's claim.
        """
        key = check_job_id(job_id)
        claim = check_optional_attempt(attempt)
        params = {
            "id": key,
            "result_id": uuid7(),
            "extracted_data": check_extracted_data(extracted_data),
            "confidence_score": check_confidence_score(confidence_score),
            "tokens_used": check_tokens_used(tokens_used),
            "client_id": check_optional_client_id(client_id),
            "attempt": claim,
        }
        reply = self._run.one(
            _COMPLETE_JOB, params, result_outcome_row, "complete a job", idempotent=False
        )
        return _moved(reply, key, "complete", JobStatus.PROCESSING, claim)

    def fail(
        self,
        job_id: UUID | str,
        *,
        error_message: str,
        client_id: str | None = None,
        attempt: int | None = None,
    ) -> Job:
        """Mark a processing job failed with ``error_message``; its lease is dropped.

        Only a processing job can fail: a queued job has not been tried (and
        a worker whose lease expired must not fail the job another worker
        may be about to claim), so that raises `InvalidTransitionError`. With
        ``attempt`` (the ``attempts`` of the worker's claim) a job claimed
        again since that claim is refused the same way.
        """
        key = check_job_id(job_id)
        claim = check_optional_attempt(attempt)
        params = {
            "id": key,
            "error_message": check_error_message(error_message),
            "client_id": check_optional_client_id(client_id),
            "attempt": claim,
        }
        reply = self._run.one(_FAIL_JOB, params, job_outcome_row, "fail a job", idempotent=False)
        return _moved(reply, key, "fail", JobStatus.PROCESSING, claim)

    def retry(self, job_id: UUID | str, *, client_id: str | None = None) -> Job:
        """Put a failed job back in the queue (error cleared, attempts kept)."""
        key = check_job_id(job_id)
        params = {"id": key, "client_id": check_optional_client_id(client_id)}
        reply = self._run.one(_RETRY_JOB, params, job_outcome_row, "retry a job", idempotent=False)
        return _moved(reply, key, "retry", JobStatus.FAILED, None)

    def release_expired(self, *, max_attempts: int = 3, limit: int = 1000) -> builtins.list[Job]:
        """Take back jobs whose worker's lease ran out; returns them as changed.

        An expired job that has been claimed fewer than ``max_attempts``
        times goes back to the queue (keeping its place: oldest first); one
        claimed ``max_attempts`` times or more fails with an error message.
        At most ``limit`` (1..1000) jobs per call, one statement: call again
        while it returns ``limit`` jobs.

        Never repeated on a transient failure: if the reply was lost after
        the statement committed, a repeat would find nothing left to release
        and return ``[]``, hiding the jobs the first try moved. It raises
        `DatabaseUnavailableError` instead; call it again (a sweeper
        normally does), and read the jobs to see what the lost try did.
        """
        params = {
            "max_attempts": check_positive_int(max_attempts, "max_attempts"),
            "limit": check_limit(limit),
        }
        return self._run.all(
            _RELEASE_EXPIRED_JOBS, params, job_row, "release expired leases", idempotent=False
        )

    # -- retention ------------------------------------------------------------------

    def delete_finished_before(self, cutoff: datetime, *, batch_size: int = 1000) -> int:
        """Delete completed and failed jobs created before ``cutoff``, with their results.

        Works in batches of ``batch_size`` (1..10,000) rows, one statement
        (and, on a `Database`, one transaction) each, so locks stay short and
        the call can run beside live traffic; queued and processing jobs are
        never touched. ``cutoff`` must be timezone-aware. Returns how many
        jobs were deleted.

        A batch is never repeated on a transient failure, so the count is
        exact: a batch whose reply was lost raises `DatabaseUnavailableError`
        saying how many jobs the earlier batches deleted (the lost batch may
        or may not have run). Calling again carries on where it stopped.
        """
        size = check_limit(batch_size, "batch_size", _BATCH_SIZE_MAX)
        params = {"cutoff": check_aware_datetime(cutoff, "cutoff"), "batch_size": size}
        deleted = 0
        while True:
            try:
                count = self._run.rowcount(
                    _DELETE_FINISHED_JOBS, params, "delete finished jobs", idempotent=False
                )
            except DatabaseUnavailableError as exc:
                if not deleted:
                    raise
                raise DatabaseUnavailableError(
                    f"{exc} (earlier batches of this call deleted {deleted} jobs; the failed "
                    "batch may or may not have run: call again to go on)"
                ) from (exc.__cause__ or exc)  # the psycopg error stays the cause
            deleted += count
            if count < size:
                return deleted


def _moved(
    reply: Outcome[T] | None,
    job_id: UUID,
    action: str,
    needed: JobStatus,
    attempt: int | None,
) -> T:
    """The changed row of a move, or the error that says why nothing changed."""
    if reply is None:
        raise _not_found(job_id)
    if reply.row is None:
        raise _refused(
            job_id, action, reply.outcome, needed, attempt=attempt, current=reply.current_attempts
        )
    return reply.row
