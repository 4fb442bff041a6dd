"""A cira_db worker: claim jobs in batches, keep their leases alive, finish them in bulk.

    CIRA_DB_URL=... python worker.py

Each round claims a batch (`JobRepository.claim_batch`), processes its jobs
one by one under `JobRepository.heartbeat` (a thread that extends the
leases of the whole batch in one statement, every third of the lease, so a
slow PDF does not let its own or its batch-mates' leases run out), and
writes the whole batch's outcome in two statements: `complete_many` for the
results and `fail_many` for the failures, each item fenced by its claim's
attempt number, so a job whose lease was lost (and claimed again) is not
written over. A job whose cancel was requested is skipped as soon as the
heartbeat reports it. SIGTERM or SIGINT stops the worker cleanly: the job in
hand is finished, claimed jobs not yet started go back to the queue at once
(``fail_many`` with ``retry_in=0``), and the process exits 0.

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

from cira_db import Completion, Database, Failure, Heartbeat, Job, JobRepository

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
    """Claims a batch, processes it under a heartbeat, completes or fails it in bulk."""

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
            with self.jobs.heartbeat(claimed, lease=self.lease) as beat:
                self._run_batch(claimed, beat)
        log.info("worker stopped")

    def _run_batch(self, claimed: list[Job], beat: Heartbeat) -> None:
        done: list[Completion] = []
        failed: list[Failure] = []
        for job in claimed:
            if self._stop.is_set():  # not started: straight back to the queue
                failed.append(Failure(job.id, "worker stopped", job.attempts, timedelta(0)))
                continue
            if job.id in beat.cancelled or job.id in beat.lost:
                log.info("job %s: cancelled or lost; skipped", job.id)
                continue
            try:
                out = self.process(job)
            except Exception as exc:  # the extractor's failure is the job's failure
                failed.append(Failure(job.id, f"{type(exc).__name__}: {exc}", job.attempts))
                continue
            done.append(Completion(job.id, out.data, out.confidence, out.tokens, job.attempts))
        # Two statements for the whole batch, written while the heartbeat still holds it.
        for completed in self.jobs.complete_many(done) if done else []:
            log.info(
                "job %s: %s", completed.job_id, "completed" if completed.ok else completed.outcome
            )
        for failure in self.jobs.fail_many(failed) if failed else []:
            log.info("job %s: failed (%s)", failure.job_id, failure.outcome)


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
