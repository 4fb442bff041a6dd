"""Benchmark 2: queue throughput, worker processes claiming and completing until empty.

N no-op jobs are queued (library ``create_many``, then ANALYZE); 1 or 2 worker
processes (multiprocessing ``spawn``) each open their own pooled `Database`
and loop: claim, complete with a small result, until the queue is empty. The
clock runs from one start signal, given once every worker has connected, to
the last worker's last completion (``time.monotonic``, shared by processes on Linux).
The same loop with raw psycopg and the library's statement text runs beside
it for the ratio, and so does the minimal hand-written loop issue 10 names as
the baseline (its own claim and complete statements, below).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import queue
import time
from datetime import timedelta
from decimal import Decimal
from functools import partial
from multiprocessing.synchronize import Event
from typing import Any

from bench_common import (
    Context,
    Section,
    Table,
    connect_raw,
    fmt_int,
    fmt_ratio,
    library_defaults,
    library_sql,
    truncate_jobs,
    uuid7,
)
from cira_db import Database, JobRepository

__all__ = ["run_queue"]

LEASE = timedelta(minutes=15)
DATA = {"document_type": "invoice", "total": 118.5, "currency": "EUR"}
SCORE = Decimal("0.93")
TOKENS = 1200
CLIENTS = 10


def _library_loop(url: str, batch: int) -> int:
    done = 0
    with Database(url) as db:
        jobs = JobRepository(db)
        while True:
            if batch == 1:
                one = jobs.claim_next(lease=LEASE)
                claimed = [one] if one is not None else []
            else:
                claimed = jobs.claim_batch(batch, lease=LEASE)
            if not claimed:
                return done
            for job in claimed:
                jobs.complete(
                    job.id, extracted_data=DATA, confidence_score=SCORE, tokens_used=TOKENS
                )
            done += len(claimed)


def _raw_loop(url: str, batch: int) -> int:
    claim = library_sql("jobs.sql", "claim_jobs")
    complete = library_sql("jobs.sql", "complete_job")
    data = json.dumps(DATA, separators=(",", ":"))
    complete_params = partial(library_defaults, complete)
    done = 0
    with connect_raw(url, prepare_threshold=5) as conn:
        while True:
            with conn.cursor() as cur:
                cur.execute(claim, {"limit": batch, "lease": LEASE})
                ids = [row[0] for row in cur.fetchall()]
            if not ids:
                return done
            for job_id in ids:
                params = {
                    "id": job_id,
                    "result_id": uuid7(),
                    "extracted_data": data,
                    "confidence_score": SCORE,
                    "tokens_used": TOKENS,
                    "client_id": None,
                }
                with conn.cursor() as cur:
                    cur.execute(complete, complete_params(params))
                    cur.fetchone()
            done += len(ids)


# The minimal hand-written loop of issue 10: claim one job with an UPDATE of the
# row a locking subquery picks, then complete it and insert its result in one CTE.
# Written for this benchmark, not the library's statements (same order, same index).
MINIMAL_CLAIM = """
UPDATE jobs SET status = 'processing', attempts = attempts + 1,
       lease_expires_at = now() + %(lease)s::interval
WHERE id = (
    SELECT id FROM jobs
    WHERE status = 'queued' AND coalesce(run_after, created_at) <= now()
    ORDER BY priority DESC, coalesce(run_after, created_at), id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING id, client_id, pdf_url, attempts
"""
MINIMAL_COMPLETE = """
WITH done AS (
    UPDATE jobs SET status = 'completed', completed_at = now(), lease_expires_at = NULL
    WHERE id = %(id)s AND status = 'processing'
    RETURNING id
)
INSERT INTO job_results (id, job_id, extracted_data, confidence_score, tokens_used, created_at)
SELECT %(result_id)s, done.id, %(extracted_data)s::jsonb, %(confidence_score)s,
       %(tokens_used)s, now()
FROM done
RETURNING id
"""


def _minimal_loop(url: str) -> int:
    """One job at a time, hand-written: the baseline issue 10 names for claim_next + complete."""
    data = json.dumps(DATA, separators=(",", ":"))
    done = 0
    # The library's own prepare setting for this URL (on, off a proxy), so both sides match.
    threshold = Database(url).settings.prepare_threshold()
    with connect_raw(url, prepare_threshold=threshold) as conn:
        while True:
            with conn.cursor() as cur:
                cur.execute(MINIMAL_CLAIM, {"lease": LEASE})
                job = cur.fetchone()
            if job is None:
                return done
            params = {
                "id": job[0],
                "result_id": uuid7(),
                "extracted_data": data,
                "confidence_score": SCORE,
                "tokens_used": TOKENS,
            }
            with conn.cursor() as cur:
                cur.execute(MINIMAL_COMPLETE, params)
                if cur.fetchone() is None:
                    raise RuntimeError(f"job {job[0]} was not completed")
            done += 1


def _run_side(url: str, side: str, batch: int) -> int:
    if side == "library":
        return _library_loop(url, batch)
    if side == "minimal":
        return _minimal_loop(url)
    return _raw_loop(url, batch)


def _worker(url: str, side: str, batch: int, go: Event, out: Any) -> None:
    """One worker process: get ready, wait for the start, drain the queue, report."""
    try:
        # Connect and warm imports before the start line, as a running worker would be.
        with connect_raw(url) as conn:
            conn.execute("SELECT 1")
        out.put(("ready", 0, 0.0, 0.0))
        if not go.wait(timeout=300):
            raise TimeoutError("no start signal within 300 s")
        start = time.monotonic()
        done = _run_side(url, side, batch)
        out.put(("ok", done, start, time.monotonic()))
    except BaseException as exc:
        out.put(("error", f"{type(exc).__name__}: {exc}", 0.0, 0.0))
        raise


def _collect(out: Any, procs: list[Any], kind: str, wait: float) -> list[tuple[Any, ...]]:
    """One message of ``kind`` per process; fail fast if a process dies or reports an error."""
    got: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + wait
    while len(got) < len(procs):
        try:
            message = out.get(timeout=1.0)
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(
                    f"a queue worker process exited with code {dead[0]} before reporting "
                    f"'{kind}' (its traceback is on stderr)"
                ) from None
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"queue workers did not report '{kind}' in {wait:.0f} s"
                ) from None
            continue
        if message[0] == "error":
            raise RuntimeError(f"queue worker failed: {message[1]}")
        got.append(message)
    return got


def _fill(url: str, total: int) -> None:
    truncate_jobs(url)
    with Database(url) as db:
        jobs = JobRepository(db)
        per_client = -(-total // CLIENTS)
        made = 0
        for c in range(CLIENTS):
            count = min(per_client, total - made)
            for start in range(0, count, 50_000):
                urls = [
                    f"https://files.example.com/{c}/{i}.pdf"
                    for i in range(start, min(count, start + 50_000))
                ]
                jobs.create_many(client_id=f"queue-client-{c}", pdf_urls=urls)
            made += count
    with connect_raw(url, prepare_threshold=None) as conn:
        conn.execute("VACUUM (ANALYZE) jobs")


def _one_run(url: str, total: int, side: str, batch: int, workers: int) -> tuple[float, int]:
    """Seconds to drain ``total`` queued jobs with ``workers`` processes, and jobs done."""
    _fill(url, total)
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    out: Any = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(url, side, batch, go, out), daemon=True)
        for _ in range(workers)
    ]
    for proc in procs:
        proc.start()
    try:
        _collect(out, procs, "ready", 120)
        go.set()
        reports = _collect(out, procs, "ok", 900)
    finally:
        go.set()
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
    done = sum(r[1] for r in reports)
    elapsed = max(r[3] for r in reports) - min(r[2] for r in reports)
    with connect_raw(url, prepare_threshold=None) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'completed'), count(*),"
            " (SELECT count(*) FROM job_results) FROM jobs"
        ).fetchone()
    assert row is not None
    completed, rows, results = row
    if not (completed == rows == results == done == total):
        raise RuntimeError(
            f"queue run lost or doubled work: {done} reported, {completed} completed of {rows}, "
            f"{results} results, {total} queued"
        )
    return elapsed, done


def run_queue(ctx: Context) -> Section:
    total = 2_000 if ctx.quick else 20_000
    section = Section("queue", "2. Queue throughput")
    has_batch = callable(getattr(JobRepository, "claim_batch", None))
    loops: list[tuple[str, str, int]] = [
        ("`claim_next` + `complete`", "library", 1),
        ("minimal hand-written loop (issue 10), claim 1", "minimal", 1),
        ("raw psycopg, same statements, claim 1", "raw", 1),
    ]
    if has_batch:
        loops += [
            ("`claim_batch(10)` + `complete` each", "library", 10),
            ("raw psycopg, same statements, claim 10", "raw", 10),
        ]
    else:
        section.skipped.append(
            "Batch claiming: `JobRepository` has no `claim_batch`, so it was not measured."
        )
    rates: dict[tuple[str, int, int], float] = {}
    for workers in (1, 2):
        for label, side, batch in loops:
            ctx.log(f"queue: {label.replace('`', '')}, {workers} worker(s), {fmt_int(total)} jobs")
            elapsed, done = _one_run(ctx.url, total, side, batch, workers)
            rates[(side, batch, workers)] = done / elapsed
    table = Table(["loop", "1 worker, jobs/s", "2 workers, jobs/s", "2 ÷ 1"])
    for label, side, batch in loops:
        one, two = rates[(side, batch, 1)], rates[(side, batch, 2)]
        table.add(label, fmt_int(one), fmt_int(two), fmt_ratio(two / one))
    ratio = Table(["library ÷ raw (jobs/s)", "1 worker", "2 workers"])
    ratio.add(
        "claim 1 \u00f7 minimal hand-written loop (target \u2265 0.90\u00d7)",
        fmt_ratio(rates[("library", 1, 1)] / rates[("minimal", 1, 1)]),
        fmt_ratio(rates[("library", 1, 2)] / rates[("minimal", 1, 2)]),
    )
    for batch in (1, 10) if has_batch else (1,):
        ratio.add(
            f"claim {batch}",
            fmt_ratio(rates[("library", batch, 1)] / rates[("raw", batch, 1)]),
            fmt_ratio(rates[("library", batch, 2)] / rates[("raw", batch, 2)]),
        )
    section.tables = [table, ratio]
    section.intro = [
        f"{fmt_int(total)} queued no-op jobs across {CLIENTS} clients (created with "
        "`create_many`, then `VACUUM (ANALYZE)`), drained by 1 or 2 worker processes "
        "(multiprocessing `spawn`). Each worker opens its own pooled `Database` (defaults) and "
        "loops claim \u2192 `complete` (a small JSON result, confidence, tokens) until a claim "
        "returns nothing. The raw loop sends the library's own `claim_jobs` and `complete_job` "
        "statements on one autocommit connection with `prepare_threshold=5`. The minimal "
        "hand-written loop (the baseline of issue 10) claims by updating the one row a locking "
        "subquery picks (same order as the library's claim, `LIMIT 1`, `SKIP LOCKED`), "
        "returning its id, client, URL and attempts, and completes with one CTE that updates "
        "the job and inserts its result, on one autocommit connection with the library's "
        "prepare setting for the URL. Time runs from a start signal given once all workers "
        "have connected to the last completion; process start-up and connecting are outside "
        "it. **One run per cell** (the table is refilled "
        "before each run), so single cells carry this machine's run-to-run noise. After every "
        "run the benchmark checks that every job was completed exactly once, with one result each.",
    ]
    lib1, raw1 = rates[("library", 1, 1)], rates[("raw", 1, 1)]
    line = (
        f"Queue, {fmt_int(total)} jobs, claim 1 + complete: {fmt_int(lib1)} jobs/s with 1 worker, "
        f"{fmt_int(rates[('library', 1, 2)])} with 2 (raw psycopg: {fmt_int(raw1)} / "
        f"{fmt_int(rates[('raw', 1, 2)])}; minimal hand-written loop: "
        f"{fmt_int(rates[('minimal', 1, 1)])} / {fmt_int(rates[('minimal', 1, 2)])})"
    )
    if has_batch:
        line += (
            f"; `claim_batch(10)`: {fmt_int(rates[('library', 10, 1)])} / "
            f"{fmt_int(rates[('library', 10, 2)])} jobs/s"
        )
    section.headlines = [line + "."]
    truncate_jobs(ctx.url)
    return section
