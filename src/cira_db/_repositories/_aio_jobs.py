"""`AsyncJobRepository`: `JobRepository`'s methods, awaited.

A thin asyncio shell: each method is one line that hands the method's logic
(``_core_jobs.JobLogic``, written once for both faces) to an `AsyncRunner`.
The method docstrings are the sync twin's, word for word (a test keeps them
equal).
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, overload
from uuid import UUID

from cira_db._models import (
    CompletedAndClaimed,
    Completion,
    Failure,
    ItemOutcome,
    Job,
    JobResult,
    JobStatus,
    Page,
    QueueStats,
)
from cira_db._repositories import _core_batches as _batches
from cira_db._repositories._aio_base import AsyncExecutor, AsyncRunner
from cira_db._repositories._core_jobs import JobLogic
from cira_db._repositories._heartbeat import AsyncHeartbeat

__all__ = ["AsyncJobRepository"]


class AsyncJobRepository:
    """Jobs, awaited: the asyncio twin of `JobRepository`, for code on an event loop.

    Built on an `AsyncDatabase` (each call borrows an autocommit connection
    from its async pool) or on a ``psycopg.AsyncConnection`` the caller owns
    (statements join the caller's transaction)::

        jobs = AsyncJobRepository(db)
        async with db.transaction() as conn:
            await AsyncJobRepository(conn).create(client_id="client-a", pdf_url="https://...")

    Every method has the sync twin's name, arguments, return type, errors and
    rules (client scoping, validation before any SQL, ``attempt`` fencing,
    retries of idempotent calls, and of any call a stale prepared statement
    stopped before it ran): the logic is the same code
    (docs/async.md). ``cursor_key`` signs the `list` cursors, as there; a
    cursor from one face works on the other with the same key.
    """

    __slots__ = ("_logic", "_run")

    def __init__(self, executor: AsyncExecutor, *, cursor_key: bytes | None = None) -> None:
        self._run = AsyncRunner(executor)
        self._logic = JobLogic(cursor_key)

    def __repr__(self) -> str:
        return f"<AsyncJobRepository on {self._run.executor!r}>"

    # -- creating ---------------------------------------------------------------

    async def create(
        self,
        *,
        client_id: str,
        pdf_url: str,
        job_id: UUID | str | None = None,
        run_after: datetime | timedelta | None = None,
        priority: int | None = None,
    ) -> Job:
        """Queue one PDF for ``client_id``; returns the new job (status queued).

        ``job_id`` makes the call idempotent: a retried request with the same
        id and the same client and URL returns the job stored the first time
        (one row, whatever state it is in now, whatever ``run_after`` and
        ``priority`` the retry passes: they are not compared); the same id
        with a different client or URL raises `ConflictError`. Without it a
        new time-ordered id (UUIDv7) is generated.

        ``run_after`` schedules the job: no claim takes it before then. A
        timezone-aware `datetime`, or a `timedelta` (0 to 365 days) added to
        the database server's ``now()`` (not this machine's clock); None: at
        once. ``priority`` (-100 to 100, default 0): claims take higher
        priorities first, then the job that has waited longest (since its
        ``run_after``, or its creation when it has none).
        """
        return await self._run.drive(
            self._logic.create(
                client_id=client_id,
                pdf_url=pdf_url,
                job_id=job_id,
                run_after=run_after,
                priority=priority,
            )
        )

    @overload
    async def create_many(
        self,
        *,
        client_id: str,
        pdf_urls: Sequence[str],
        job_ids: Sequence[UUID | str] | None = ...,
        returning: Literal["jobs"] = ...,
        run_after: datetime | timedelta | None = ...,
        priority: int | None = ...,
    ) -> builtins.list[Job]: ...
    @overload
    async def create_many(
        self,
        *,
        client_id: str,
        pdf_urls: Sequence[str],
        job_ids: Sequence[UUID | str] | None = ...,
        returning: Literal["ids"],
        run_after: datetime | timedelta | None = ...,
        priority: int | None = ...,
    ) -> builtins.list[UUID]: ...
    async def create_many(
        self,
        *,
        client_id: str,
        pdf_urls: Sequence[str],
        job_ids: Sequence[UUID | str] | None = None,
        returning: Literal["jobs", "ids"] = "jobs",
        run_after: datetime | timedelta | None = None,
        priority: int | None = None,
    ) -> builtins.list[Job] | builtins.list[UUID]:
        """Queue many PDFs (up to 100,000) for one client, all or nothing.

        One transaction: below 1,000 URLs one ``INSERT ... SELECT FROM
        unnest(...)`` statement (bound arrays, never statement text), from
        1,000 on ``COPY ... FROM STDIN`` straight into ``jobs`` (then, for
        jobs back, the transaction's ``now()``: the jobs are built from the
        call's values, no row is read back); no temporary table, nothing
        that pins the session behind RDS Proxy (docs/connections.md).
        Returns the jobs in the order of ``pdf_urls``, or with
        ``returning="ids"`` only their ids (``list[UUID]``, no `Job` built:
        the bounded-memory way to queue 100,000 rows, best for big batches
        and in Lambda).

        ``job_ids`` (one per URL, distinct) makes a retried bulk request
        safe, as ``create(job_id=...)`` does: an id stored already with the
        same client and URL is returned as stored and not inserted again; an
        id stored with another client or URL raises `ConflictError` naming
        the first such ``job_ids[i]``, and nothing is created. Without it,
        new time-ordered ids (UUIDv7) are generated, increasing in input order.

        ``run_after`` (an aware datetime, or a timedelta from now) and
        ``priority`` (-100..100, default 0) apply to every job of the call.
        """
        return await self._run.drive(
            self._logic.create_many(
                client_id=client_id,
                pdf_urls=pdf_urls,
                job_ids=job_ids,
                returning=returning,
                run_after=run_after,
                priority=priority,
            )
        )

    # -- reading ----------------------------------------------------------------

    async def find(self, job_id: UUID | str, *, client_id: str) -> Job | None:
        """The job, or None if it does not exist or belongs to another client."""
        return await self._run.drive(self._logic.find(job_id, client_id=client_id))

    async def get(self, job_id: UUID | str, *, client_id: str) -> Job:
        """The job; `NotFoundError` if it does not exist or belongs to another client."""
        return await self._run.drive(self._logic.get(job_id, client_id=client_id))

    async def list(
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
        return await self._run.drive(
            self._logic.list(client_id=client_id, status=status, limit=limit, cursor=cursor)
        )

    async def count_by_status(self, *, client_id: str) -> dict[JobStatus, int]:
        """How many jobs the client has in each status; every status is present."""
        return await self._run.drive(self._logic.count_by_status(client_id=client_id))

    # -- the worker's side ---------------------------------------------------------

    async def claim_next(self, *, lease: timedelta, client_id: str | None = None) -> Job | None:
        """Claim the next queued job that is due (of ``client_id``, or of any client).

        Claim order: higher ``priority`` first, then the job that has waited
        longest (``run_after``, or ``created_at`` when it has none), then the
        id; a job whose ``run_after`` is still in the future is never taken.
        The job moves to processing with ``attempts + 1`` and a lease until
        ``now() + lease``; None when no job is due. ``FOR UPDATE SKIP
        LOCKED``: concurrent workers never claim the same job and never wait
        for each other.
        """
        return await self._run.drive(self._logic.claim_next(lease=lease, client_id=client_id))

    async def claim_batch(
        self,
        limit: int,
        *,
        lease: timedelta,
        client_id: str | None = None,
        fair: bool = False,
    ) -> builtins.list[Job]:
        """Claim up to ``limit`` (1..1000) queued jobs that are due, in claim order.

        Like `claim_next`, in one statement; fewer (or none) when the queue
        holds fewer unlocked due jobs. With ``fair=True`` (not with
        ``client_id``) the batch takes turns between the clients that have
        due jobs: each gets its next job in claim order before any gets a
        second, so a client with 100,000 queued jobs does not hold back one
        with 10. Within a turn, clients with fewer jobs in progress go
        first, so a client a short batch left out goes first in the next. A
        batch that the turns do not fill is filled in plain claim order. The
        fair batch comes back in turn order.
        """
        return await self._run.drive(
            self._logic.claim_batch(limit, lease=lease, client_id=client_id, fair=fair)
        )

    async def extend_lease(
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
        claimed again since; nothing changes then. If a cancel was asked for
        (`cancel`), the same statement ends the job cancelled (lease cleared)
        and `JobCancelledError` is raised: stop working on it.
        """
        return await self._run.drive(
            self._logic.extend_lease(job_id, lease=lease, client_id=client_id, attempt=attempt)
        )

    async def complete(
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
        completed, failed or cancelled raises `InvalidTransitionError`, and
        nothing changes; a missing job raises `NotFoundError`. With ``attempt`` (the
        ``attempts`` of the worker's claim, ``attempt=claimed.attempts``) a
        job claimed again since that claim is refused the same way, so a
        worker whose lease ran out never writes over another worker's claim.
        A job whose cancel was asked for (`cancel`) still completes: the work
        is done and paid for, so its result is kept (``cancel_requested_at``
        stays set, a record that the cancel came too late).
        """
        return await self._run.drive(
            self._logic.complete(
                job_id,
                extracted_data=extracted_data,
                confidence_score=confidence_score,
                tokens_used=tokens_used,
                client_id=client_id,
                attempt=attempt,
            )
        )

    async def fail(
        self,
        job_id: UUID | str,
        *,
        error_message: str,
        client_id: str | None = None,
        attempt: int | None = None,
        retry_in: timedelta | None = None,
    ) -> Job:
        """Mark a processing job failed with ``error_message``; its lease is dropped.

        Only a processing job can fail: a queued job has not been tried (and
        a worker whose lease expired must not fail the job another worker
        may be about to claim), so that raises `InvalidTransitionError`. With
        ``attempt`` (the ``attempts`` of the worker's claim) a job claimed
        again since that claim is refused the same way. A job whose cancel was
        asked for (`cancel`) ends cancelled instead of failed (with
        ``error_message`` kept); the returned job says so.

        With ``retry_in`` (a `timedelta`, 0 to 365 days) the job goes back to
        the queue instead, not to be claimed before the server's ``now() +
        retry_in``; ``error_message`` is kept as the last error and
        ``attempts`` is kept (compare it with your own limit before asking
        for another try). A job whose cancel was requested ends cancelled
        instead of going back to the queue.
        """
        return await self._run.drive(
            self._logic.fail(
                job_id,
                error_message=error_message,
                client_id=client_id,
                attempt=attempt,
                retry_in=retry_in,
            )
        )

    async def report_progress(
        self,
        job_id: UUID | str,
        *,
        progress: dict[str, Any],
        attempt: int,
        client_id: str | None = None,
    ) -> Job:
        """Store a small JSON ``progress`` object on a processing job; returns the job.

        Visible as `Job.progress` on `get` and `list` (each report replaces the
        last). ``progress`` is a dict of JSON values of at most 4096 bytes as
        JSON text (`ValidationError` naming ``progress`` otherwise, before any
        SQL). ``attempt`` (the ``attempts`` of the worker's claim) is required:
        a worker whose claim is gone is refused with `InvalidTransitionError`,
        as a job that is not processing is; `NotFoundError` if the job does
        not exist (or is another client's). If a cancel was asked for
        (`cancel`), the same statement ends the job cancelled (the report is
        not stored) and `JobCancelledError` is raised: stop working on it.
        """
        return await self._run.drive(
            self._logic.report_progress(
                job_id, progress=progress, attempt=attempt, client_id=client_id
            )
        )

    async def cancel(self, job_id: UUID | str, *, client_id: str) -> Job:
        """Cancel the client's job; returns it as it is now. Safe to repeat.

        A queued job becomes cancelled at once (never claimed). A processing
        job stays processing with ``cancel_requested_at`` set: its worker
        learns it on its next `extend_lease` or `report_progress`
        (`JobCancelledError`, and the job ends cancelled); a `fail` ends it
        cancelled too, while a `complete` still completes it (the work is
        done). A job already cancelled, or whose cancel was already asked
        for, is returned unchanged. A completed or failed job raises
        `InvalidTransitionError`; another client's job `NotFoundError`.
        One statement.
        """
        return await self._run.drive(self._logic.cancel(job_id, client_id=client_id))

    async def retry(self, job_id: UUID | str, *, client_id: str | None = None) -> Job:
        """Put a failed job back in the queue (error cleared, attempts kept).

        Only a failed job: a cancelled one is final (`InvalidTransitionError`).
        """
        return await self._run.drive(self._logic.retry(job_id, client_id=client_id))

    async def release_expired(
        self,
        *,
        max_attempts: int = 3,
        limit: int = 1000,
        backoff: timedelta | None = None,
        backoff_max: timedelta = timedelta(hours=1),
    ) -> builtins.list[Job]:
        """Take back jobs whose worker's lease ran out; returns them as changed.

        An expired job that has been claimed fewer than ``max_attempts``
        times goes back to the queue; one claimed ``max_attempts`` times or
        more fails for good, its error message saying so (and keeping the
        last error a worker reported, if any); one whose cancel was
        requested ends cancelled. At most ``limit`` (1..1000) jobs per call,
        one statement: call again while it returns ``limit`` jobs.

        ``backoff`` (None by default: today's behaviour, the job is claimable
        at once in its old place) delays the next try: ``run_after = now() +
        min(backoff_max, backoff * 2 ** (attempts - 1))``, so 30 s, 60 s,
        120 s, ... for ``backoff=timedelta(seconds=30)``, never more than
        ``backoff_max`` (1 hour by default).

        Never repeated on a transient failure: if the reply was lost after
        the statement committed, a repeat would find nothing left to release
        and return ``[]``, hiding the jobs the first try moved. It raises
        `DatabaseUnavailableError` instead; call it again (a sweeper
        normally does), and read the jobs to see what the lost try did.
        """
        return await self._run.drive(
            self._logic.release_expired(
                max_attempts=max_attempts, limit=limit, backoff=backoff, backoff_max=backoff_max
            )
        )

    async def queue_stats(self, *, client_id: str | None = None) -> QueueStats:
        """The health of the queue of ``client_id`` (or of every client), one statement.

        Jobs per status (every status present), the age of the queued job
        that has waited longest since it became due and of the oldest queued
        job, how many queued jobs are scheduled for later and how many
        leases have expired: see `QueueStats`. Per client it reads that
        client's index entries only; for every client the counts by status
        read the whole table (docs/jobs.md).
        """
        return await self._run.drive(self._logic.queue_stats(client_id=client_id))

    # -- retention ------------------------------------------------------------------

    async def delete_finished_before(self, cutoff: datetime, *, batch_size: int = 1000) -> int:
        """Delete completed, failed and cancelled jobs created before ``cutoff``, with results.

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
        return await self._run.drive(
            self._logic.delete_finished_before(cutoff, batch_size=batch_size)
        )

    # -- batches ------------------------------------------------------------------------

    async def complete_many(
        self,
        items: Sequence[Completion],
        *,
        client_id: str | None = None,
        atomic: bool = False,
    ) -> builtins.list[ItemOutcome[JobResult]]:
        """Complete a batch of claimed jobs with their results: one statement, one round trip.

        Each `Completion` carries its job's result and the ``attempt`` of the
        worker's claim. Returns one `ItemOutcome` per item, in input order:
        ``"done"`` (``value`` is the stored `JobResult`), or refused with
        nothing written for it: ``"not_found"`` (also another client's job,
        given ``client_id``), ``"wrong_state"`` (not processing; ``status``
        says what it is), ``"claimed_again"`` (claimed again after the item's
        ``attempt``: a stale worker never writes over another's claim), or
        ``"cancelled"`` (the job was cancelled before it completed). A
        processing job whose cancel was requested still completes.

        Items are independent: a stale item does not block the others. With
        ``atomic=True`` either every item is applied or nothing is, and a
        refusal raises `NotFoundError` or `InvalidTransitionError` naming the
        first refused item. Items are validated before any SQL
        (`ValidationError` naming e.g. ``items[3].confidence_score``); at
        most 1000 items, one per job.

        Safe to repeat: the result ids are fixed before the first try, so a
        try whose reply was lost is found by the next one and its items are
        reported ``"done"`` with the results it stored.
        """
        return await self._run.drive(
            _batches.complete_many(items, client_id=client_id, atomic=atomic)
        )

    async def complete_and_claim(
        self,
        items: Sequence[Completion],
        limit: int,
        *,
        lease: timedelta,
        client_id: str | None = None,
    ) -> CompletedAndClaimed:
        """Complete a batch of claimed jobs and claim the next: one statement, one commit.

        The worker's loop in one call per batch instead of `complete_many`
        then `claim_batch`: half the round trips, and half the commits, each
        of which waits for the server to flush its WAL to disk (with two or
        more workers that wait, not CPU, is what limits a batched queue).
        ``items`` may be empty (the first turn only claims). ``outcomes`` are
        what `complete_many` reports for the items (each on its own: there is
        no ``atomic``); ``claimed`` is what `claim_batch` returns (up to
        ``limit`` due jobs in claim order, leased for ``lease``; with
        ``client_id``, only that client's jobs are completed and claimed).
        For fair turns between clients use `claim_batch` with ``fair=True``.

        A failure never loses finished work. When the statement fails or its
        reply is lost (`DatabaseUnavailableError`), the items are completed
        again on their own with retries (the same result ids, so a try that
        did commit reports them ``"done"`` with the rows it stored; logged at
        WARNING), then one more claim is made; if that fails, the error says
        the items were stored. Jobs a lost try claimed return to the queue
        when their lease ends, with that attempt used up, as after a worker
        crash. With no items, inside a caller's transaction, and for other
        errors (a statement timeout, ...) the error is raised as it is:
        nothing was written, and the items can go to `complete_many`.
        """
        return await self._run.drive(
            _batches.complete_and_claim(
                items,
                limit,
                lease=lease,
                client_id=client_id,
                recover=_batches.commits_each_statement(self._run.executor),
            )
        )

    async def fail_many(
        self,
        items: Sequence[Failure],
        *,
        client_id: str | None = None,
        atomic: bool = False,
    ) -> builtins.list[ItemOutcome[Job]]:
        """Fail a batch of claimed jobs: one statement, one round trip.

        Each `Failure` carries its ``error_message`` (kept on the job), the
        ``attempt`` of the worker's claim and, optionally, ``retry_in``: the
        job then goes back to the queue (attempts kept) and is claimed no
        earlier than ``now() + retry_in``; without it the job fails for good.
        A job whose cancel was requested ends cancelled instead (never
        re-queued; outcome ``"cancelled"``, ``value`` the cancelled `Job`).
        Returns one `ItemOutcome` per item, in input order, as
        `complete_many` does (``value`` is the changed `Job`); items are
        independent unless ``atomic=True``.

        Never repeated on a transient failure: a repeat after a lost reply
        would find the jobs failed (or re-queued) and misreport them; the
        call raises `DatabaseUnavailableError` instead.
        """
        return await self._run.drive(_batches.fail_many(items, client_id=client_id, atomic=atomic))

    async def extend_leases(
        self,
        job_ids: Sequence[UUID | str],
        *,
        lease: timedelta,
        attempts: Sequence[int | None] | None = None,
        client_id: str | None = None,
    ) -> builtins.list[ItemOutcome[Job]]:
        """Move the leases of a batch of claimed jobs to ``now() + lease``: one heartbeat.

        One statement for the whole batch. ``attempts`` (one per id, e.g.
        ``[job.attempts for job in claimed]``) fences stale claims as in
        `extend_lease`. Returns one `ItemOutcome` per id, in input order:
        ``"done"`` (``value`` is the job with its new lease), or
        ``"cancelled"``: its cancel was requested, so the job is now
        cancelled (moved there by this call, lease cleared) and the worker
        should stop it; or refused (``"not_found"``, ``"wrong_state"``,
        ``"claimed_again"``). Safe to repeat (retried on transient failures):
        a second try moves the leases again and reports the same outcomes.
        """
        return await self._run.drive(
            _batches.extend_leases(job_ids, lease=lease, attempts=attempts, client_id=client_id)
        )

    def heartbeat(
        self,
        claimed: Sequence[Job],
        *,
        lease: timedelta,
        every: timedelta | None = None,
        client_id: str | None = None,
    ) -> AsyncHeartbeat:
        """Keep the leases of a claimed batch alive while its jobs are processed.

        Use as a context manager around the work; every ``every`` (default:
        a third of ``lease``) a daemon thread (the asyncio face: a task)
        calls `extend_leases` for the jobs still held, each with its claim's
        ``attempts``. ``beat.done(job)`` drops a finished job;
        ``beat.cancelled`` holds the ids of jobs whose cancel was requested
        (now cancelled: stop working on them), ``beat.lost`` those the
        worker no longer holds (lease expired and claimed again, ...). A
        failing heartbeat is logged (WARNING) and tried again at the next
        tick; it never raises into the work. The heartbeat stops when the
        block ends (``with``; on the asyncio face ``async with``).
        docs/jobs.md shows a worker loop built on it.
        """
        return AsyncHeartbeat(self, claimed, lease=lease, every=every, client_id=client_id)
