"""The jobs' logic, written once: what `JobRepository` and `AsyncJobRepository` do.

Sans-I/O: every method here is a generator that checks its arguments,
yields `Call` requests (statement, parameters, row factory, whether it may
be repeated) and interprets what it gets back: found or not, refused and
why, claimed again. It never touches a connection. The sync shell
(``_jobs.py``) runs it with `Runner.drive`, the asyncio shell
(``cira_db.aio``) with ``AsyncRunner.drive``; a cira_db error from a
statement is thrown back in at the ``yield`` that asked for it.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final, TypeVar
from uuid import UUID

from psycopg.rows import dict_row, tuple_row

from cira_db._cursor import DEFAULT_KEY, decode_cursor, encode_cursor
from cira_db._models import STATUS_BY_LABEL, Job, JobResult, JobStatus, Page, QueueStats
from cira_db._repositories._base import (
    Call,
    Logic,
    Outcome,
    RowFactory,
    job_outcome_row,
    job_row,
    make_result,
    model_builder,
    prefixed_builder,
)
from cira_db._repositories._ids import uuid7, uuid7_batch
from cira_db._repositories._jsonb import stored_document
from cira_db._sql import query
from cira_db._validation import (
    PdfUrlChecker,
    check_aware_datetime,
    check_backoff,
    check_client_id,
    check_confidence_score,
    check_error_message,
    check_flag,
    check_job_id,
    check_job_ids,
    check_lease,
    check_limit,
    check_optional_attempt,
    check_optional_client_id,
    check_pdf_url,
    check_pdf_urls,
    check_positive_int,
    check_priority,
    check_progress,
    check_retry_in,
    check_run_after,
    check_status,
    check_tokens_used,
)
from cira_db.errors import (
    ConflictError,
    DatabaseError,
    DatabaseUnavailableError,
    InvalidTransitionError,
    JobCancelledError,
    NotFoundError,
    ValidationError,
)

__all__ = ["JobLogic"]

T = TypeVar("T")

_INSERT_JOB: Final = query("jobs.sql", "insert_job")
_INSERT_JOBS_BY_ID: Final = query("jobs.sql", "insert_jobs_by_id")
_INSERT_JOBS_STAMP: Final = query("jobs.sql", "insert_jobs_stamp")
_INSERT_JOBS_COUNT: Final = query("jobs.sql", "insert_jobs_count")
_COPY_NEW_JOBS: Final = query("jobs.sql", "copy_new_jobs")
_COPIED_JOBS_STAMP: Final = query("jobs.sql", "copied_jobs_stamp")
_GET_JOB: Final = query("jobs.sql", "get_job")
_LIST_JOBS: Final = query("jobs.sql", "list_jobs")
_LIST_JOBS_BY_STATUS: Final = query("jobs.sql", "list_jobs_by_status")
_CLAIM_JOBS: Final = query("jobs.sql", "claim_jobs")
_CLAIM_JOBS_FOR_CLIENT: Final = query("jobs.sql", "claim_jobs_for_client")
_CLAIM_JOB: Final = query("jobs.sql", "claim_job")
_CLAIM_JOB_FOR_CLIENT: Final = query("jobs.sql", "claim_job_for_client")
_CLAIM_JOBS_FAIR: Final = query("jobs.sql", "claim_jobs_fair")
_FAIL_JOB_RETRY: Final = query("jobs.sql", "fail_job_retry")
_EXTEND_LEASE: Final = query("jobs.sql", "extend_lease")
_COMPLETE_JOB: Final = query("jobs.sql", "complete_job")
_FAIL_JOB: Final = query("jobs.sql", "fail_job")
_RETRY_JOB: Final = query("jobs.sql", "retry_job")
_RELEASE_EXPIRED_JOBS: Final = query("jobs.sql", "release_expired_jobs")
_COUNT_JOBS_BY_STATUS: Final = query("jobs.sql", "count_jobs_by_status")
_DELETE_FINISHED_JOBS: Final = query("jobs.sql", "delete_finished_jobs")
_CANCEL_JOB: Final = query("jobs.sql", "cancel_job")
_REPORT_PROGRESS: Final = query("jobs.sql", "report_progress")
_QUEUE_STATS: Final = query("jobs.sql", "queue_stats")
_QUEUE_STATS_FOR_CLIENT: Final = query("jobs.sql", "queue_stats_for_client")


_Created = tuple[str, int | None, Job | None]


def _created(names: tuple[str, ...]) -> Callable[[Sequence[Any]], _Created]:
    """Rows of ``insert_jobs_by_id`` (``outcome``, ``n``, the job columns) -> tuples."""
    _, make = prefixed_builder(Job, names, ("outcome", "n"))
    at_n = names.index("n")

    def build(values: Sequence[Any]) -> _Created:
        return values[0], values[at_n], make(values)

    return build


_CREATED_ROWS: Final = RowFactory(_created)

# Each statement's row factory, bound to it (`RowFactory.of`): its builder is
# found once, not from the column names of every reply.
_INSERT_JOB_ROWS: Final = job_outcome_row.of(_INSERT_JOB)
_INSERT_JOBS_BY_ID_ROWS: Final = _CREATED_ROWS.of(_INSERT_JOBS_BY_ID)
_GET_JOB_ROWS: Final = job_row.of(_GET_JOB)
_LIST_JOBS_ROWS: Final = job_row.of(_LIST_JOBS)
_LIST_JOBS_BY_STATUS_ROWS: Final = job_row.of(_LIST_JOBS_BY_STATUS)
_CLAIM_JOB_ROWS: Final = job_row.of(_CLAIM_JOB)
_CLAIM_JOB_FOR_CLIENT_ROWS: Final = job_row.of(_CLAIM_JOB_FOR_CLIENT)
_CLAIM_JOBS_ROWS: Final = job_row.of(_CLAIM_JOBS)
_CLAIM_JOBS_FOR_CLIENT_ROWS: Final = job_row.of(_CLAIM_JOBS_FOR_CLIENT)
_CLAIM_JOBS_FAIR_ROWS: Final = job_row.of(_CLAIM_JOBS_FAIR)
_EXTEND_LEASE_ROWS: Final = job_outcome_row.of(_EXTEND_LEASE)
_FAIL_JOB_ROWS: Final = job_outcome_row.of(_FAIL_JOB)
_FAIL_JOB_RETRY_ROWS: Final = job_outcome_row.of(_FAIL_JOB_RETRY)
_REPORT_PROGRESS_ROWS: Final = job_outcome_row.of(_REPORT_PROGRESS)
_CANCEL_JOB_ROWS: Final = job_outcome_row.of(_CANCEL_JOB)
_RETRY_JOB_ROWS: Final = job_outcome_row.of(_RETRY_JOB)
_RELEASE_EXPIRED_JOBS_ROWS: Final = job_row.of(_RELEASE_EXPIRED_JOBS)


# A new job's fields: the id and the URL (one per job), then those every job
# of one create_many shares. Fields of Job not named here take their default.
_SHARED_FIELDS: Final = (
    "client_id",
    "status",
    "created_at",
    "updated_at",
    "completed_at",
    "error_message",
    "attempts",
    "lease_expires_at",
    "run_after",
    "priority",
    "progress",
    "cancel_requested_at",
)
_NEW_JOB: Final = model_builder(Job, ("id", "pdf_url", *_SHARED_FIELDS))
# A page of the listing, as ``Page(items, next_cursor)`` makes it (no frozen __init__).
_make_page: Final[Callable[[Sequence[Any]], Page[Job]]] = model_builder(
    Page, ("items", "next_cursor")
)
_SET_CREATED_AT: Final = vars(Job)["created_at"].__set__
_SET_UPDATED_AT: Final = vars(Job)["updated_at"].__set__
_SET_RUN_AFTER: Final = vars(Job)["run_after"].__set__


def _shared(
    client: str, priority: int, created_at: datetime | None, run_after: datetime | None
) -> tuple[Any, ...]:
    """The values of `_SHARED_FIELDS` for the new jobs of one call.

    A new row holds the value the call sent (the id, the client, the URL,
    the schedule, the priority) or its column's default (migrations
    0001-0003): status 'queued', attempts 0, NULL for the rest, and
    ``created_at`` = ``updated_at`` = ``now()``, the transaction's start
    time, the same for every row of the call; no trigger fires on INSERT.
    So the Jobs built from these values and the transaction's answer (its
    ``now()`` and the stored ``run_after``) are the stored rows, field for
    field: tests/test_create_many.py compares them, and fails on a column
    or a default this function does not know.
    """
    return (
        client,
        JobStatus.QUEUED.value,
        created_at,
        created_at,
        None,
        None,
        0,
        None,
        run_after,
        priority,
        None,
        None,
    )


def _new_jobs(
    ids: Sequence[UUID],
    urls: Sequence[str],
    client: str,
    priority: int,
    stamp: tuple[datetime, datetime | None],
) -> builtins.list[Job]:
    """The jobs an insert of ``ids`` and ``urls`` stored, built without reading them back.

    ``stamp`` is the (``created_at``, ``run_after``) row the insert's
    statement answered with (``insert_jobs_stamp``); `_shared` says why
    that is enough. The jobs hold the caller's id and URL objects and share
    one timestamp object.
    """
    shared = _shared(client, priority, *stamp)
    make = _NEW_JOB
    return [make((new_id, url, *shared)) for new_id, url in zip(ids, urls, strict=True)]


def _stamp(jobs: builtins.list[Job], stamp: tuple[datetime, datetime | None]) -> None:
    """Give the jobs `_copy_rows` built the ``created_at`` and ``run_after`` stored with them.

    ``stamp`` is the row of ``copied_jobs_stamp``, asked for in the COPY's
    transaction. ``run_after`` is set again as the column gives it back
    (the same time, in the session's time zone, as any read gives it).
    """
    created_at, run_after = stamp
    set_created, set_updated = _SET_CREATED_AT, _SET_UPDATED_AT
    for job in jobs:
        set_created(job, created_at)
        set_updated(job, created_at)
    if run_after is not None:
        set_run_after = _SET_RUN_AFTER
        for job in jobs:
            set_run_after(job, run_after)


def _stamped(row: tuple[Any, ...] | None) -> tuple[datetime, datetime | None]:
    """The (``created_at``, ``run_after``) row of a ``*_stamp`` statement, checked."""
    if row is None or not isinstance(row[0], datetime):  # pragma: no cover - one row, always
        raise DatabaseError("create jobs: the insert did not answer with its time")
    return row[0], row[1]


def _copy_rows(
    ids: Sequence[UUID],
    urls: Sequence[str],
    client: str,
    run_after: datetime | None,
    priority: int,
    built: builtins.list[Job] | None = None,
) -> Callable[[], Iterator[tuple[UUID, str, str, datetime | None, int]]]:
    """The rows ``copy_new_jobs`` streams: only the id and the URL differ per row.

    With ``built``, the Job of each row is made as the row goes (into that
    list, emptied first: a retry streams again), so that building them
    overlaps the server's work on the COPY instead of following it. Their
    ``created_at`` and ``updated_at`` are unknown until the transaction
    answers: None until `_stamp` sets them, before the list is returned.
    """

    def rows() -> Iterator[tuple[UUID, str, str, datetime | None, int]]:
        if built is None:
            for new_id, url in zip(ids, urls, strict=True):
                yield new_id, client, url, run_after, priority
            return
        built.clear()
        append, make = built.append, _NEW_JOB
        shared = _shared(client, priority, None, run_after)
        for new_id, url in zip(ids, urls, strict=True):
            append(make((new_id, url, *shared)))
            yield new_id, client, url, run_after, priority

    return rows


# From this many rows create_many loads with COPY (then, for Jobs back, asks
# for the transaction's now() in the same transaction: BEGIN, COPY, SELECT,
# COMMIT). Below it one INSERT ... unnest statement, one round trip. With
# neither reading rows back, on a local server (loaded, interleaved medians)
# the COPY form took 20% longer at 100 rows, 9% less at 500 and 17% less at
# 1,000 (28% less at 5,000): below about 1,000 the three extra round trips
# behind a proxy (about 1 ms each) eat the gain.
_COPY_FROM: Final = 1000
_BATCH_SIZE_MAX: Final = 10_000
# An insert that met a concurrent insert of the same id sees neither its own
# row nor the other one (statement snapshot); running it again resolves it.
_CREATE_TRIES: Final = 3
# A cancel whose target changed between the statement's snapshot and its row
# lock (claimed, or cancelled by another call) is run again on the new state.
_CANCEL_TRIES: Final = 3


def _claim_order(job: Job) -> tuple[int, datetime, UUID]:
    """Claim order, as the claim statements' ORDER BY: priority DESC, due time, id.

    The plain and per-client claims are one UPDATE whose RETURNING has no
    order; sorting their few rows here is cheaper than a CTE and an outer sort
    in the statement. Python orders UUIDs by their 128-bit value, as
    PostgreSQL orders uuid (bytes compared in order).
    """
    due = job.created_at if job.run_after is None else job.run_after
    return (-job.priority, due, job.id)


def _made_result(
    result_id: UUID,
    job_id: UUID,
    document: dict[str, Any],
    score: Decimal,
    tokens: int,
    created_at: datetime,
) -> JobResult:
    """The result `complete` stored, from the values it sent and the server's created_at.

    ``document`` is the sent JSON text read back as the jsonb column gives it
    (`stored_document`: numbers and key order), a copy the caller cannot
    change through their own dict. ``score`` is rounded to the column's two
    places already, as stored.
    """
    return make_result((result_id, job_id, document, score, tokens, created_at))


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


# Origins (scheme://host:port) of single `create` URLs that passed the full
# check: a service sends most of its PDFs from a few hosts. At most 1,024 kept.
_SINGLE_URLS: Final = PdfUrlChecker(limit=1024)


class JobLogic:
    """The logic of every `JobRepository` method, as generators of `Call` requests.

    Holds what a repository keeps between calls (the cursor signing key);
    the public shells document each method (their docstrings are the
    contract, checked equal between the sync and the asyncio face).
    """

    __slots__ = ("cursor_key",)

    def __init__(self, cursor_key: bytes | None = None) -> None:
        if cursor_key is not None and not (isinstance(cursor_key, bytes) and cursor_key):
            raise ValidationError("cursor_key", "must be non-empty bytes")
        self.cursor_key = cursor_key or DEFAULT_KEY

    # -- creating ---------------------------------------------------------------

    def create(
        self,
        *,
        client_id: str,
        pdf_url: str,
        job_id: UUID | str | None,
        run_after: datetime | timedelta | None = None,
        priority: int | None = None,
    ) -> Logic[Job]:
        """Insert one job by id; the same id, client and URL again returns the stored job."""
        client = check_client_id(client_id)
        # The host check once per origin (`PdfUrlChecker`, the same decisions);
        # only exact str: a subclass gets the full check every time.
        url = _SINGLE_URLS.check(pdf_url) if type(pdf_url) is str else check_pdf_url(pdf_url)
        run_at, run_in = check_run_after(run_after)
        rank = check_priority(priority)
        new_id = uuid7() if job_id is None else check_job_id(job_id)
        params = {
            "id": new_id,
            "client_id": client,
            "pdf_url": url,
            "priority": rank,
            "run_at": run_at,
            "run_in": run_in,
        }
        for _ in range(_CREATE_TRIES):
            # The id is fixed before the first try, so repeating the insert is
            # harmless: a try whose reply was lost makes the next one "existing".
            reply: Outcome[Job] | None = yield Call.one(
                _INSERT_JOB, params, _INSERT_JOB_ROWS, "create a job", idempotent=True
            )
            if reply is None:
                continue  # a concurrent insert of this id committed after our snapshot
            if reply.row is None:
                raise ConflictError(
                    f"job {new_id} exists already with a different client or pdf_url"
                )
            return reply.row
        raise DatabaseError(f"create a job: job {new_id} kept changing concurrently; try again")

    def create_many(
        self,
        *,
        client_id: str,
        pdf_urls: Sequence[str],
        job_ids: Sequence[UUID | str] | None,
        returning: str,
        run_after: datetime | timedelta | None,
        priority: int | None,
    ) -> Logic[builtins.list[Job] | builtins.list[UUID]]:
        """Insert many jobs in one transaction, all or nothing; jobs or ids in input order."""
        client = check_client_id(client_id)
        urls = check_pdf_urls(pdf_urls)
        if returning not in ("jobs", "ids"):
            raise ValidationError("returning", 'must be "jobs" or "ids"')
        run_after_at, run_after_in = check_run_after(run_after)
        params: dict[str, Any] = {
            "client_id": client,
            "pdf_urls": urls,
            "run_after_at": run_after_at,
            "run_after_in": run_after_in,
            "priority": check_priority(priority),
        }
        if job_ids is not None:
            params["ids"] = check_job_ids(job_ids, len(urls))
            if not urls:
                return []
            params["return_rows"] = returning == "jobs"
            return (yield from self._create_many_by_id(params))
        if not urls:
            return []
        ids = params["ids"] = uuid7_batch(len(urls))
        rank: int = params["priority"]
        # Not repeated on a transient failure: if the lost reply was a commit,
        # a second try would fail on the ids and hide the jobs made by the
        # first (pass job_ids to make a retry safe).
        if run_after_in is not None or (returning == "jobs" and len(ids) < _COPY_FROM):
            # One statement: a small batch (one round trip), or a run_after
            # relative to the server's now(), which COPY cannot compute.
            if returning == "ids":
                yield Call.rowcount(_INSERT_JOBS_COUNT, params, "create jobs", idempotent=False)
                return ids
            stamp = yield Call.one(
                _INSERT_JOBS_STAMP,
                params,
                tuple_row,
                "create jobs",
                idempotent=False,
                changes=len(ids),
            )
            return _new_jobs(ids, urls, client, rank, _stamped(stamp))
        # COPY streams the rows straight into jobs: memory stays near the
        # input's and it is the fastest load; no temporary table, no statement
        # text growing with the rows, so nothing that pins an RDS Proxy session
        # (docs/connections.md). The client, schedule and priority are checked
        # once for the batch; only the id and the URL differ per row.
        if returning == "ids":
            rows = _copy_rows(ids, urls, client, run_after_at, rank)
            yield Call.copy(_COPY_NEW_JOBS, rows, "create jobs", idempotent=False)
            return ids
        # returning="jobs": the same COPY, building each Job as its row goes,
        # then in the same transaction one small row (now(), the stored
        # run_after) instead of reading 100,000 rows back (`_shared` says
        # why the Jobs are then the stored rows).
        made: builtins.list[Job] = []
        stamps: builtins.list[tuple[Any, ...]] = yield Call.copy_all(
            _COPY_NEW_JOBS,
            _copy_rows(ids, urls, client, run_after_at, rank, made),
            _COPIED_JOBS_STAMP,
            {"run_after_at": run_after_at},
            tuple_row,
            "create jobs",
            idempotent=False,
            changes=len(ids),
        )
        _stamp(made, _stamped(stamps[0] if stamps else None))
        return made

    def _create_many_by_id(
        self, params: dict[str, Any]
    ) -> Logic[builtins.list[Job] | builtins.list[UUID]]:
        """``create_many`` with caller-chosen ids: stored ones returned, clashes refused."""
        ids: builtins.list[UUID] = params["ids"]
        if params["run_after_in"] is None and len(ids) >= _COPY_FROM:
            # First, COPY every row as if every id were new (a first request:
            # as fast as create_many without ids). One id stored already (a
            # retried request, a clash, a concurrent insert) fails the COPY as
            # a whole (jobs_pkey; a savepoint inside a caller's transaction),
            # and the statement below sorts each id out. Repeating is harmless
            # for the same reason.
            client, urls, rank = params["client_id"], params["pdf_urls"], params["priority"]
            run_after_at = params["run_after_at"]
            try:
                if not params["return_rows"]:
                    copied = _copy_rows(ids, urls, client, run_after_at, rank)
                    yield Call.copy(_COPY_NEW_JOBS, copied, "create jobs", idempotent=True)
                    return ids
                # The COPY stored every row (all new, or it failed): the Jobs
                # are built as create_many without ids builds them.
                made: builtins.list[Job] = []
                stamps: builtins.list[tuple[Any, ...]] = yield Call.copy_all(
                    _COPY_NEW_JOBS,
                    _copy_rows(ids, urls, client, run_after_at, rank, made),
                    _COPIED_JOBS_STAMP,
                    {"run_after_at": run_after_at},
                    tuple_row,
                    "create jobs",
                    idempotent=True,
                    changes=len(ids),
                )
                _stamp(made, _stamped(stamps[0] if stamps else None))
                return made
            except ConflictError:
                pass  # an id exists: the statement below tells "existing" from "conflict"
        for _ in range(_CREATE_TRIES):
            try:
                # Repeating is harmless: the rows of a try whose reply was lost
                # are found as "existing" by the next one.
                rows: builtins.list[tuple[str, int | None, Job | None]] = yield Call.all(
                    _INSERT_JOBS_BY_ID,
                    params,
                    _INSERT_JOBS_BY_ID_ROWS,
                    "create jobs",
                    idempotent=True,
                )
            except ConflictError:
                # jobs_pkey: a concurrent insert of one of these ids committed
                # after this statement's snapshot; the statement rolled back
                # as a whole. The next try sees that row.
                continue
            for outcome, n, _job in rows:
                if outcome == "conflict":
                    assert n is not None  # the conflict row carries the item's n
                    raise ConflictError(
                        f"job_ids[{n - 1}]: job {ids[n - 1]} exists already with a different "
                        "client or pdf_url; nothing was created"
                    )
            if not params["return_rows"]:
                return ids
            by_id = {job.id: job for _, _, job in rows if job is not None}
            return [by_id[new_id] for new_id in ids]
        raise DatabaseError("create jobs: the ids kept being inserted concurrently; try again")

    # -- reading ----------------------------------------------------------------

    def find(self, job_id: UUID | str, *, client_id: str) -> Logic[Job | None]:
        """The client's job, or None."""
        params = {"id": check_job_id(job_id), "client_id": check_client_id(client_id)}
        job: Job | None = yield Call.one(
            _GET_JOB, params, _GET_JOB_ROWS, "read a job", idempotent=True
        )
        return job

    def get(self, job_id: UUID | str, *, client_id: str) -> Logic[Job]:
        """The client's job, or `NotFoundError`."""
        # `find`'s two lines again rather than ``yield from self.find(...)``:
        # one generator per call instead of two, on the busiest read.
        key = check_job_id(job_id)
        params = {"id": key, "client_id": check_client_id(client_id)}
        job: Job | None = yield Call.one(
            _GET_JOB, params, _GET_JOB_ROWS, "read a job", idempotent=True
        )
        if job is None:
            raise _not_found(key)
        return job

    def list(
        self, *, client_id: str, status: JobStatus | str | None, limit: int, cursor: str | None
    ) -> Logic[Page[Job]]:
        """One keyset page of the client's jobs, newest first."""
        client = check_client_id(client_id)
        wanted = check_status(status)
        size = check_limit(limit)
        after_created_at: datetime | None = None
        after_id: UUID | None = None
        if cursor is not None:
            after_created_at, after_id = decode_cursor(
                cursor, client_id=client, status=wanted, key=self.cursor_key
            )
        params: dict[str, Any] = {
            "client_id": client,
            "after_created_at": after_created_at,
            "after_id": after_id,
            "limit": size + 1,
        }
        rows: builtins.list[Job]
        if wanted is None:
            rows = yield Call.all(_LIST_JOBS, params, _LIST_JOBS_ROWS, "list jobs", idempotent=True)
        else:
            params["status"] = wanted.value
            rows = yield Call.all(
                _LIST_JOBS_BY_STATUS,
                params,
                _LIST_JOBS_BY_STATUS_ROWS,
                "list jobs",
                idempotent=True,
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
                key=self.cursor_key,
            )
        return _make_page((tuple(rows), next_cursor))

    def count_by_status(self, *, client_id: str) -> Logic[dict[JobStatus, int]]:
        """The client's job count per status, every status present."""
        params = {"client_id": check_client_id(client_id)}
        counts = dict.fromkeys(JobStatus, 0)
        rows: builtins.list[tuple[str, int]] = yield Call.all(
            _COUNT_JOBS_BY_STATUS, params, tuple_row, "count jobs by status", idempotent=True
        )
        for status, jobs in rows:
            counts[STATUS_BY_LABEL[status]] = jobs
        return counts

    # -- the worker's side ---------------------------------------------------------

    def claim_next(self, *, lease: timedelta, client_id: str | None) -> Logic[Job | None]:
        """Claim the next due queued job (priority, then the longest waiting), or None."""
        params: dict[str, Any] = {"lease": check_lease(lease)}
        client = check_optional_client_id(client_id)
        statement, rows = _CLAIM_JOB, _CLAIM_JOB_ROWS
        if client is not None:
            params["client_id"] = client
            statement, rows = _CLAIM_JOB_FOR_CLIENT, _CLAIM_JOB_FOR_CLIENT_ROWS
        # Claims are never repeated once sent: a lost reply may hide a claim that happened.
        job: Job | None = yield Call.one(statement, params, rows, "claim jobs", idempotent=False)
        return job

    def claim_batch(
        self, limit: int, *, lease: timedelta, client_id: str | None, fair: bool = False
    ) -> Logic[builtins.list[Job]]:
        """Claim up to ``limit`` due queued jobs in one statement (by turns between clients)."""
        params: dict[str, Any] = {
            "limit": check_limit(limit),
            "lease": check_lease(lease),
        }
        client = check_optional_client_id(client_id)
        jobs: builtins.list[Job]
        if check_flag(fair, "fair"):
            if client is not None:
                raise ValidationError(
                    "fair", "shares between clients: it cannot be combined with client_id"
                )
            jobs = yield Call.all(
                _CLAIM_JOBS_FAIR, params, _CLAIM_JOBS_FAIR_ROWS, "claim jobs", idempotent=False
            )
            return jobs
        if client is None:
            # Claims are never repeated once sent: a lost reply may hide a claim that happened.
            jobs = yield Call.all(
                _CLAIM_JOBS, params, _CLAIM_JOBS_ROWS, "claim jobs", idempotent=False
            )
            return sorted(jobs, key=_claim_order)
        params["client_id"] = client
        jobs = yield Call.all(
            _CLAIM_JOBS_FOR_CLIENT,
            params,
            _CLAIM_JOBS_FOR_CLIENT_ROWS,
            "claim jobs",
            idempotent=False,
        )
        return sorted(jobs, key=_claim_order)

    def extend_lease(
        self,
        job_id: UUID | str,
        *,
        lease: timedelta,
        client_id: str | None,
        attempt: int | None,
    ) -> Logic[Job]:
        """Move a processing job's lease; refused unless processing (and on ``attempt``)."""
        key = check_job_id(job_id)
        claim = check_optional_attempt(attempt)
        params = {
            "id": key,
            "lease": check_lease(lease),
            "client_id": check_optional_client_id(client_id),
            "attempt": claim,
        }
        reply: Outcome[Job] | None = yield Call.one(
            _EXTEND_LEASE, params, _EXTEND_LEASE_ROWS, "extend a lease", idempotent=True
        )
        return _heard(reply, key, "extend the lease of", claim)

    def complete(
        self,
        job_id: UUID | str,
        *,
        extracted_data: dict[str, Any],
        confidence_score: float | Decimal | int,
        tokens_used: int,
        client_id: str | None,
        attempt: int | None,
    ) -> Logic[JobResult]:
        """Write the result and complete the job in one statement."""
        key = check_job_id(job_id)
        claim = check_optional_attempt(attempt)
        result_id = uuid7()
        text, document = stored_document(extracted_data)
        score = check_confidence_score(confidence_score)
        tokens = check_tokens_used(tokens_used)
        params = {
            "id": key,
            "result_id": result_id,
            "extracted_data": text,
            "confidence_score": score,
            "tokens_used": tokens,
            "client_id": check_optional_client_id(client_id),
            "attempt": claim,
        }
        # The reply is (outcome, current_attempts, created_at): no row, not found;
        # created_at NULL, refused. The rest of the result is what was sent.
        reply: tuple[str, int | None, datetime | None] | None = yield Call.one(
            _COMPLETE_JOB, params, tuple_row, "complete a job", idempotent=False
        )
        if reply is None:
            raise _not_found(key)
        outcome, current, created_at = reply
        if created_at is None:
            raise _refused(
                key, "complete", outcome, JobStatus.PROCESSING, attempt=claim, current=current
            )
        return _made_result(result_id, key, document, score, tokens, created_at)

    def fail(
        self,
        job_id: UUID | str,
        *,
        error_message: str,
        client_id: str | None,
        attempt: int | None,
        retry_in: timedelta | None = None,
    ) -> Logic[Job]:
        """Fail a processing job with ``error_message``; with ``retry_in``, queue it again."""
        key = check_job_id(job_id)
        claim = check_optional_attempt(attempt)
        params: dict[str, Any] = {
            "id": key,
            "error_message": check_error_message(error_message),
            "client_id": check_optional_client_id(client_id),
            "attempt": claim,
        }
        delay = check_retry_in(retry_in)
        statement, rows = _FAIL_JOB, _FAIL_JOB_ROWS
        if delay is not None:
            params["retry_in"] = delay
            statement, rows = _FAIL_JOB_RETRY, _FAIL_JOB_RETRY_ROWS
        reply: Outcome[Job] | None = yield Call.one(
            statement, params, rows, "fail a job", idempotent=False
        )
        return _moved(reply, key, "fail", JobStatus.PROCESSING, claim)

    def report_progress(
        self,
        job_id: UUID | str,
        *,
        progress: dict[str, Any],
        attempt: int,
        client_id: str | None,
    ) -> Logic[Job]:
        """Store a processing job's progress document; refused unless on ``attempt``."""
        key = check_job_id(job_id)
        claim = check_positive_int(attempt, "attempt")
        params = {
            "id": key,
            "progress": check_progress(progress),
            "client_id": check_optional_client_id(client_id),
            "attempt": claim,
        }
        # Repeating it is harmless: the same document again, or the same refusal.
        reply: Outcome[Job] | None = yield Call.one(
            _REPORT_PROGRESS, params, _REPORT_PROGRESS_ROWS, "report progress", idempotent=True
        )
        return _heard(reply, key, "report the progress of", claim)

    def cancel(self, job_id: UUID | str, *, client_id: str) -> Logic[Job]:
        """Cancel a queued job, or ask for a processing one to be cancelled."""
        key = check_job_id(job_id)
        params = {"id": key, "client_id": check_client_id(client_id)}
        for _ in range(_CANCEL_TRIES):
            # Idempotent: a repeat finds the job cancelled (or its cancel asked for).
            reply: Outcome[Job] | None = yield Call.one(
                _CANCEL_JOB, params, _CANCEL_JOB_ROWS, "cancel a job", idempotent=True
            )
            if reply is None:
                raise _not_found(key)
            if reply.row is not None:
                return reply.row
            if reply.outcome in (JobStatus.COMPLETED.value, JobStatus.FAILED.value):
                raise InvalidTransitionError(
                    f"cannot cancel job {key}: it is {reply.outcome} already; nothing was changed"
                )
            # Queued or processing when read, something else once locked: read again.
        raise DatabaseError(f"cancel a job: job {key} kept changing concurrently; try again")

    def retry(self, job_id: UUID | str, *, client_id: str | None) -> Logic[Job]:
        """Put a failed job back in the queue."""
        key = check_job_id(job_id)
        params = {"id": key, "client_id": check_optional_client_id(client_id)}
        reply: Outcome[Job] | None = yield Call.one(
            _RETRY_JOB, params, _RETRY_JOB_ROWS, "retry a job", idempotent=False
        )
        return _moved(reply, key, "retry", JobStatus.FAILED, None)

    def release_expired(
        self,
        *,
        max_attempts: int,
        limit: int,
        backoff: timedelta | None = None,
        backoff_max: timedelta = timedelta(hours=1),
    ) -> Logic[builtins.list[Job]]:
        """Requeue (with a backoff), cancel or fail jobs whose lease ran out, never repeated."""
        params = {
            "max_attempts": check_positive_int(max_attempts, "max_attempts"),
            "limit": check_limit(limit),
            "backoff": check_backoff(backoff),
            "backoff_max": check_backoff(backoff_max, "backoff_max"),
        }
        if params["backoff_max"] is None:
            raise ValidationError("backoff_max", "must be a datetime.timedelta, not NoneType")
        jobs: builtins.list[Job] = yield Call.all(
            _RELEASE_EXPIRED_JOBS,
            params,
            _RELEASE_EXPIRED_JOBS_ROWS,
            "release expired leases",
            idempotent=False,
        )
        return jobs

    def queue_stats(self, *, client_id: str | None) -> Logic[QueueStats]:
        """The queue's health (of one client, or of all) in one statement."""
        client = check_optional_client_id(client_id)
        row: dict[str, Any] | None
        if client is None:
            row = yield Call.one(_QUEUE_STATS, {}, dict_row, "read queue stats", idempotent=True)
        else:
            row = yield Call.one(
                _QUEUE_STATS_FOR_CLIENT,
                {"client_id": client},
                dict_row,
                "read queue stats",
                idempotent=True,
            )
        assert row is not None  # an aggregate without GROUP BY always returns one row
        by_status = dict.fromkeys(JobStatus, 0)
        for label, jobs in row["by_status"].items():
            by_status[STATUS_BY_LABEL[label]] = jobs
        return QueueStats(
            client_id=client,
            by_status=by_status,
            oldest_due_age=row["oldest_due_age"],
            oldest_queued_age=row["oldest_queued_age"],
            scheduled=row["scheduled"],
            expired_leases=row["expired_leases"],
            measured_at=row["measured_at"],
        )

    # -- retention ------------------------------------------------------------------

    def delete_finished_before(self, cutoff: datetime, *, batch_size: int) -> Logic[int]:
        """Delete finished jobs created before ``cutoff`` in batches; the exact count."""
        size = check_limit(batch_size, "batch_size", _BATCH_SIZE_MAX)
        params = {"cutoff": check_aware_datetime(cutoff, "cutoff"), "batch_size": size}
        deleted = 0
        while True:
            try:
                count: int = yield Call.rowcount(
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


def _heard(reply: Outcome[Job] | None, job_id: UUID, action: str, attempt: int | None) -> Job:
    """A heartbeat's or progress report's job, or the error the worker must hear.

    `JobCancelledError` when this statement ended the job cancelled (a cancel
    was asked for), and also when it was cancelled already, unless the
    worker's claim is gone (an older ``attempt``: that is the ordinary
    refusal). A repeat after a lost reply then says the same as the first try.
    """
    if reply is not None and reply.row is None and reply.outcome == JobStatus.CANCELLED.value:
        current = reply.current_attempts
        if attempt is None or current is None or current <= attempt:
            raise JobCancelledError(
                f"cannot {action} job {job_id}: it is cancelled; stop working on it"
            )
    job = _moved(reply, job_id, action, JobStatus.PROCESSING, attempt)
    if job.status is JobStatus.CANCELLED:
        raise JobCancelledError(
            f"job {job.id} was cancelled (a cancel was asked for at "
            f"{job.cancel_requested_at}); stop working on it: it is now cancelled"
        )
    return job


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
