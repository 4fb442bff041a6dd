"""A heartbeat for a claimed batch: keeps its leases alive while the work runs.

``jobs.heartbeat(claimed, lease=...)`` returns one of these; used as a
context manager it calls ``extend_leases`` (one statement for the whole
batch) every ``every`` for the jobs still held, from a daemon thread
(`Heartbeat`) or an asyncio task (`AsyncHeartbeat`). What a tick learns is
kept for the worker: jobs whose cancel was requested (``cancelled``: stop
them) and jobs no longer held (``lost``). A failed tick (the database down,
the pool closed, the connection killed) is logged at WARNING and tried again
at the next tick; it never raises into the worker's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any
from uuid import UUID

from cira_db._models import ItemOutcome, Job
from cira_db._validation import check_lease
from cira_db.errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover - types for the type checker only
    from typing import Protocol

    # extend_leases of JobRepository and AsyncJobRepository: protocols, not those
    # classes, as the repositories build on this module and not the reverse.
    class LeaseExtender(Protocol):
        def extend_leases(
            self,
            job_ids: Sequence[UUID],
            *,
            lease: timedelta,
            attempts: list[int | None],
            client_id: str | None,
        ) -> list[ItemOutcome[Job]]: ...

    class AsyncLeaseExtender(Protocol):
        async def extend_leases(
            self,
            job_ids: Sequence[UUID],
            *,
            lease: timedelta,
            attempts: list[int | None],
            client_id: str | None,
        ) -> list[ItemOutcome[Job]]: ...


__all__ = ["AsyncHeartbeat", "Heartbeat"]

logger = logging.getLogger("cira_db.heartbeat")


class _Beats:
    """What both heartbeats share: the held jobs, and what the ticks learned."""

    def __init__(
        self,
        claimed: Sequence[Job],
        *,
        lease: timedelta,
        every: timedelta | None,
        client_id: str | None,
    ) -> None:
        self.lease = check_lease(lease)
        if every is None:
            every = self.lease / 3
        if not isinstance(every, timedelta) or not timedelta(0) < every < self.lease:
            raise ValidationError(
                "every", "must be a timedelta longer than zero, shorter than lease"
            )
        if isinstance(claimed, str | bytes) or not isinstance(claimed, Sequence):
            raise ValidationError("claimed", "must be a list of claimed Job")
        for index, job in enumerate(claimed):
            if not isinstance(job, Job):
                raise ValidationError(
                    f"claimed[{index}]", f"must be a Job, not {type(job).__name__}"
                )
        self.every = every
        self.client_id = client_id
        self._held: dict[UUID, int] = {job.id: job.attempts for job in claimed}
        self._cancelled: set[UUID] = set()
        self._lost: set[UUID] = set()
        self._lock = threading.Lock()
        self.beats = 0
        self.failures = 0

    @property
    def held(self) -> frozenset[UUID]:
        """The ids of the jobs whose leases the heartbeat still extends."""
        with self._lock:
            return frozenset(self._held)

    @property
    def cancelled(self) -> frozenset[UUID]:
        """Ids of jobs whose cancel was requested; now cancelled: stop working on them."""
        with self._lock:
            return frozenset(self._cancelled)

    @property
    def lost(self) -> frozenset[UUID]:
        """Ids of jobs no longer held (not found, not processing, claimed again)."""
        with self._lock:
            return frozenset(self._lost)

    def done(self, job: Job | UUID) -> None:
        """Stop extending ``job``'s lease (it was completed or failed)."""
        key = job.id if isinstance(job, Job) else job
        with self._lock:
            self._held.pop(key, None)

    def _due(self) -> tuple[list[UUID], list[int | None]]:
        with self._lock:
            return list(self._held), list(self._held.values())

    def _learn(self, outcomes: list[ItemOutcome[Job]]) -> None:
        with self._lock:
            for item in outcomes:
                if item.outcome == "done":
                    continue
                self._held.pop(item.job_id, None)
                (self._cancelled if item.outcome == "cancelled" else self._lost).add(item.job_id)
            self.beats += 1

    def _failed(self, exc: BaseException, count: int) -> None:
        self.failures += 1
        logger.warning(
            "heartbeat for %d jobs failed (%s: %s); trying again in %s",
            count,
            type(exc).__name__,
            exc,
            self.every,
        )


class Heartbeat(_Beats):
    """Extends a claimed batch's leases from a daemon thread (``with`` block)."""

    def __init__(
        self,
        jobs: LeaseExtender,
        claimed: Sequence[Job],
        *,
        lease: timedelta,
        every: timedelta | None = None,
        client_id: str | None = None,
    ) -> None:
        super().__init__(claimed, lease=lease, every=every, client_id=client_id)
        self._jobs = jobs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """One heartbeat now (what each tick does); never raises."""
        ids, attempts = self._due()
        if not ids:
            return
        try:
            outcomes = self._jobs.extend_leases(
                ids, lease=self.lease, attempts=attempts, client_id=self.client_id
            )
        except Exception as exc:
            self._failed(exc, len(ids))
            return
        self._learn(outcomes)

    def _run(self) -> None:
        while not self._stop.wait(self.every.total_seconds()):
            self.beat()

    def __enter__(self) -> Heartbeat:
        self._thread = threading.Thread(target=self._run, name="cira_db-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def running(self) -> bool:
        """True while the heartbeat thread runs."""
        return self._thread is not None and self._thread.is_alive()


class AsyncHeartbeat(_Beats):
    """Extends a claimed batch's leases from an asyncio task (``async with`` block)."""

    def __init__(
        self,
        jobs: AsyncLeaseExtender,
        claimed: Sequence[Job],
        *,
        lease: timedelta,
        every: timedelta | None = None,
        client_id: str | None = None,
    ) -> None:
        super().__init__(claimed, lease=lease, every=every, client_id=client_id)
        self._jobs = jobs
        self._task: asyncio.Task[Any] | None = None

    async def beat(self) -> None:
        """One heartbeat now (what each tick does); never raises."""
        ids, attempts = self._due()
        if not ids:
            return
        try:
            outcomes = await self._jobs.extend_leases(
                ids, lease=self.lease, attempts=attempts, client_id=self.client_id
            )
        except Exception as exc:
            self._failed(exc, len(ids))
            return
        self._learn(outcomes)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every.total_seconds())
            await self.beat()

    async def __aenter__(self) -> AsyncHeartbeat:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cira_db-heartbeat")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def running(self) -> bool:
        """True while the heartbeat task runs."""
        return self._task is not None and not self._task.done()
