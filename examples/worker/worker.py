"""A cira_db worker: claim jobs in batches, keep their leases alive, complete or fail them.

    CIRA_DB_URL=... python worker.py

While a batch is in hand, a heartbeat thread extends the lease of each of
its unfinished jobs (`JobRepository.extend_lease` with the claim's attempt
number), so a slow PDF does not let its own or its batch-mates' leases
run out and be handed to a second worker; if the lease was lost anyway (the
worker stalled and another worker claimed the job), the result is not
written. SIGTERM or SIGINT stops the worker cleanly: the job in hand is
finished, claimed jobs not yet started go back to the queue, and the
process exits 0.

`extract` stands in for the real PDF extraction.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType
from typing import Any

from cira_db import Database, Job, JobRepository
from cira_db.errors import CiraDbError, InvalidTransitionError

log = logging.getLogger("worker")


@dataclass(frozen=True)
class Extraction:
    """What processing one PDF produced."""

    data: dict[str, Any]
    confidence: float
    tokens: int


def extract(job: Job) -> Extraction:
    """Stand-in for the real extractor: a PDF named ``*slow*`` takes a while, ``*bad*`` fails."""
    if "bad" in job.pdf_url:
        raise ValueError("not a PDF")
    if "slow" in job.pdf_url:
        time.sleep(float(os.environ.get("WORKER_SLOW_SECONDS", "3")))
    return Extraction({"source": job.pdf_url, "pages": 1}, 0.9, 100)


class Worker:
    """Claims, heartbeats, completes or fails; `stop` ends `run` after the current job."""

    def __init__(
        self,
        jobs: JobRepository,
        process: Callable[[Job], Extraction] = extract,
        *,
        batch: int = 5,
        lease: timedelta = timedelta(minutes=2),
        idle_wait: float = 1.0,
    ) -> None:
        self.jobs = jobs
        self.process = process
        self.batch = batch
        self.lease = lease
        self.idle_wait = idle_wait
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask `run` to return after the job in hand."""
        self._stop.set()

    def run(self) -> None:
        """Claim and process batches until `stop`."""
        while not self._stop.is_set():
            claimed = self.jobs.claim_batch(self.batch, lease=self.lease)
            if not claimed:
                self._stop.wait(self.idle_wait)
                continue
            with Heartbeat(self.jobs, claimed, self.lease) as heartbeat:
                for index, job in enumerate(claimed):
                    if self._stop.is_set():
                        self._hand_back(claimed[index:], heartbeat)
                        break
                    self._handle(job, heartbeat)
        log.info("worker stopped")

    def _handle(self, job: Job, heartbeat: Heartbeat) -> None:
        outcome: Extraction | None = None
        error: str | None = None
        try:
            outcome = self.process(job)
        except Exception as exc:  # the extractor's failure is the job's failure
            error = f"{type(exc).__name__}: {exc}"
        if not heartbeat.release(job):
            log.warning("job %s: lease lost, result dropped", job.id)
            return
        try:
            if outcome is not None:
                self.jobs.complete(
                    job.id,
                    extracted_data=outcome.data,
                    confidence_score=outcome.confidence,
                    tokens_used=outcome.tokens,
                    attempt=job.attempts,
                )
                log.info("job %s completed", job.id)
            else:
                self.jobs.fail(job.id, error_message=error or "failed", attempt=job.attempts)
                log.info("job %s failed: %s", job.id, error)
        except InvalidTransitionError:
            log.warning("job %s was claimed again meanwhile; nothing written", job.id)

    def _hand_back(self, jobs: list[Job], heartbeat: Heartbeat) -> None:
        """Return claimed, unstarted jobs to the queue (failed, then retried)."""
        for job in jobs:
            if not heartbeat.release(job):
                continue
            try:
                self.jobs.fail(job.id, error_message="worker stopped", attempt=job.attempts)
                self.jobs.retry(job.id)
            except CiraDbError:
                log.warning("job %s left to its lease", job.id)


class Heartbeat:
    """Extends the lease of every job of a batch still in hand, every third of the lease.

    A job whose lease could not be extended because it was claimed again
    (`InvalidTransitionError`) is lost: `release` then returns False.
    """

    def __init__(self, jobs: JobRepository, batch: list[Job], lease: timedelta) -> None:
        self._jobs = jobs
        self._lease = lease
        self._held = {job.id: job for job in batch}
        self._lost: set[Any] = set()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def release(self, job: Job) -> bool:
        """Stop extending ``job``'s lease; False if the lease was lost meanwhile."""
        with self._lock:
            self._held.pop(job.id, None)
            return job.id not in self._lost

    def _beat(self) -> None:
        while not self._done.wait(self._lease.total_seconds() / 3):
            with self._lock:
                held = list(self._held.values())
            for job in held:
                try:
                    self._jobs.extend_lease(job.id, lease=self._lease, attempt=job.attempts)
                except InvalidTransitionError:
                    with self._lock:
                        self._lost.add(job.id)
                        self._held.pop(job.id, None)
                except CiraDbError:
                    log.warning("job %s: heartbeat failed; trying again", job.id)


def main() -> None:
    """Run a worker until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    lease = timedelta(seconds=float(os.environ.get("WORKER_LEASE_SECONDS", "120")))
    with Database.from_env() as db:
        worker = Worker(JobRepository(db), lease=lease)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: stopping after the current job", signum)
            worker.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        log.info("worker started")
        worker.run()


if __name__ == "__main__":
    main()
