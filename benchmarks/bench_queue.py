"""Benchmark 2: queue throughput, worker processes claiming and completing until empty.

N no-op jobs are queued (library ``create_many``, then ANALYZE); 1 or 2 worker
processes (multiprocessing ``spawn``) each open their own pooled `Database`
and loop: claim, complete with a small result, until the queue is empty. Each
worker and its own server backend are pinned to one CPU (worker i on CPU i).
The clock runs from one start signal, given once every worker has connected, to
the last worker's last completion (``time.monotonic``, shared by processes on Linux).
Every cell is the median of `ROUNDS` interleaved runs.
The same loop with raw psycopg and the library's statement text runs beside
it for the ratio, and so does the minimal hand-written loop issue 10 names as
the baseline (its own claim and complete statements, below). Every loop but
one encodes each job's result as it sends it, as a worker with real results
must; the exception, the minimal loop sending one JSON text made before the
loop, shows what that encoding costs. The library's loop and the minimal loop
also run on sessions whose commits do not wait for their WAL flush
(``synchronous_commit=off``): the CPU-bound case, beside the target's.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from functools import partial
from multiprocessing.synchronize import Event
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from bench_common import (
    Context,
    Section,
    Table,
    Target,
    connect_raw,
    encode_result,
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


def _library_loop(url: str, batch: int, name: str, start: Callable[[], None]) -> int:
    done = 0
    with Database(url, application_name=name) as db:
        jobs = JobRepository(db)
        with db.connection() as conn:  # the pool's connection exists before the clock runs
            conn.execute("SELECT 1")
        start()
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


def _raw_loop(url: str, batch: int, name: str, start: Callable[[], None]) -> int:
    # What the library runs: claim_next's LIMIT 1 statement, claim_batch's bound LIMIT.
    claim = library_sql("jobs.sql", "claim_job" if batch == 1 else "claim_jobs")
    claim_params: dict[str, Any] = (
        {"lease": LEASE} if batch == 1 else {"limit": batch, "lease": LEASE}
    )
    complete = library_sql("jobs.sql", "complete_job")
    complete_params = partial(library_defaults, complete)
    done = 0
    with _connect(url, 5, name) as conn:
        start()
        while True:
            with conn.cursor() as cur:
                cur.execute(claim, claim_params)
                ids = [row[0] for row in cur.fetchall()]
            if not ids:
                return done
            for job_id in ids:
                params = {
                    "id": job_id,
                    "result_id": uuid7(),
                    "extracted_data": encode_result(DATA),  # each job's own document
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


def _minimal_loop(
    url: str, name: str, start: Callable[[], None], *, encode_each: bool = True
) -> int:
    """One job at a time, hand-written: the baseline issue 10 names for claim_next + complete.

    Each job's result is its own document, so it is sent as psycopg's docs
    show a dict going to a ``jsonb`` column: ``Jsonb(result)``, encoded per
    job. With ``encode_each=False`` one JSON text made before the loop is sent
    for every job: less than any worker with real results can do, kept in
    the report as the lower bound of its cost per job.
    """
    made_once = encode_result(DATA)
    done = 0
    # The library's own prepare setting for this URL (on, off a proxy), so both sides match.
    threshold = Database(url).settings.prepare_threshold()
    with _connect(url, threshold, name) as conn:
        start()
        while True:
            with conn.cursor() as cur:
                cur.execute(MINIMAL_CLAIM, {"lease": LEASE})
                job = cur.fetchone()
            if job is None:
                return done
            params = {
                "id": job[0],
                "result_id": uuid7(),
                "extracted_data": Jsonb(DATA) if encode_each else made_once,
                "confidence_score": SCORE,
                "tokens_used": TOKENS,
            }
            with conn.cursor() as cur:
                cur.execute(MINIMAL_COMPLETE, params)
                if cur.fetchone() is None:
                    raise RuntimeError(f"job {job[0]} was not completed")
            done += 1


def _connect(url: str, threshold: int | None, name: str) -> psycopg.Connection[Any]:
    """An autocommit connection named ``name`` (so its server backend can be found and pinned)."""
    conn: psycopg.Connection[Any] = psycopg.connect(
        url, autocommit=True, prepare_threshold=threshold, application_name=name
    )
    return conn


def _pin_own_backends(url: str, name: str, cpu: int) -> int:
    """Pin the server backends of this worker's connections (``application_name``) to ``cpu``."""
    with connect_raw(url, prepare_threshold=None) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s",
            (name,),
        ).fetchall()
    for (pid,) in rows:
        os.sched_setaffinity(int(pid), {cpu})
    return len(rows)


# A side whose name ends in NO_WAIT runs the same loop on sessions whose commits do not wait
# for their WAL flush: the CPU-bound case, as on a machine whose disk flushes in no time.
NO_WAIT = "+no-wait"


def no_flush_wait(url: str) -> str:
    """``url`` with ``synchronous_commit=off`` for every session it opens (libpq ``options``)."""
    existing = conninfo_to_dict(url).get("options")
    option = "-c synchronous_commit=off"
    return make_conninfo(url, options=f"{existing} {option}" if existing else option)


def _confirm_no_wait(url: str) -> None:
    """Fail unless both the library's and a raw connection to ``url`` commit without waiting."""
    with Database(url) as db, db.connection() as conn:
        library = conn.execute("SHOW synchronous_commit").fetchone()
    with connect_raw(url, prepare_threshold=None) as conn:
        raw = conn.execute("SHOW synchronous_commit").fetchone()
    if library != ("off",) or raw != ("off",):
        raise RuntimeError(
            f"synchronous_commit=off did not reach the sessions (library {library}, raw {raw})"
        )


def _run_side(url: str, side: str, batch: int, name: str, start: Callable[[], None]) -> int:
    if side == "library":
        return _library_loop(url, batch, name, start)
    if side == "minimal":
        return _minimal_loop(url, name, start)
    if side == "minimal-once":
        return _minimal_loop(url, name, start, encode_each=False)
    return _raw_loop(url, batch, name, start)


def _worker(
    url: str, side: str, batch: int, cpu: int | None, name: str, go: Event, out: Any
) -> None:
    """One worker process: connect, pin, wait for the start, drain the queue, report.

    Its report holds the jobs done, the start and end of the drain, and the
    process's CPU seconds over the drain (waiting for the server costs none).
    """
    began = [0.0, 0.0]

    def start() -> None:
        # Runs once the loop's connection is open: connecting is outside the clock.
        if cpu is not None and _pin_own_backends(url, name, cpu) < 1:
            raise RuntimeError(f"no server backend named {name!r} to pin")
        out.put(("ready", 0, 0.0, 0.0))
        if not go.wait(timeout=300):
            raise TimeoutError("no start signal within 300 s")
        began[0], began[1] = time.monotonic(), time.process_time()

    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        done = _run_side(url, side, batch, name, start)
        out.put(("ok", done, began[0], time.monotonic(), time.process_time() - began[1]))
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


def _one_run(
    url: str, total: int, side: str, batch: int, places: list[int | None]
) -> tuple[float, int, float]:
    """Seconds to drain ``total`` queued jobs with ``len(places)`` processes, jobs done, and
    the workers' CPU seconds.

    Worker i and its server backend run on CPU ``places[i]`` (None: not pinned).
    """
    _fill(url, total)
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    out: Any = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(url, side, batch, cpu, f"cira_queue_{i}", go, out),
            daemon=True,
        )
        for i, cpu in enumerate(places)
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
    return elapsed, done, sum(r[4] for r in reports)


ROUNDS = 3


def _placements() -> tuple[dict[int, list[int] | None], str]:
    """CPUs of the 1- and 2-worker runs (worker i and its backend on CPU i), and a sentence."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {1: None, 2: None}, "Workers and backends were not pinned (one CPU available)."
    return {1: cpus[:1], 2: cpus[:2]}, (
        f"Each worker process and its own server backend are pinned to one CPU (with 1 worker: "
        f"CPU {cpus[0]}; with 2: worker i and its backend on CPU i, i.e. CPUs {cpus[0]} and "
        f"{cpus[1]}), so every side pays the same-CPU round trip and none the ~3\u00d7 costlier "
        "cross-CPU one (section 1)."
    )


def run_queue(ctx: Context) -> Section:
    total = 2_000 if ctx.quick else 20_000
    rounds = 1 if ctx.quick else ROUNDS
    section = Section("queue", "2. Queue throughput")
    has_batch = callable(getattr(JobRepository, "claim_batch", None))
    loops: list[tuple[str, str, int]] = [
        ("`claim_next` + `complete`", "library", 1),
        ("minimal hand-written loop (issue 10), claim 1", "minimal", 1),
        ("minimal loop, one result text made before the loop, claim 1", "minimal-once", 1),
        ("raw psycopg, same statements, claim 1", "raw", 1),
        ("`claim_next` + `complete`, commits not waiting for their flush", "library" + NO_WAIT, 1),
        ("minimal hand-written loop, commits not waiting for their flush", "minimal" + NO_WAIT, 1),
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
    placements, placed = _placements()
    _confirm_no_wait(no_flush_wait(ctx.url))
    # rates[(side, batch, workers)][round]: the loops run interleaved, round after round,
    # each round in a rotated order, so no loop always runs first or last.
    rates: dict[tuple[str, int, int], list[float]] = {}
    cpu_us: dict[tuple[str, int, int], list[float]] = {}  # worker CPU per job
    for turn in range(rounds):
        for workers in (1, 2):
            shift = turn % len(loops)
            for label, side, batch in loops[shift:] + loops[:shift]:
                ctx.log(
                    f"queue: round {turn + 1}/{rounds}, {label.replace('`', '')}, "
                    f"{workers} worker(s), {fmt_int(total)} jobs"
                )
                cpus = placements[workers]
                places: list[int | None] = list(cpus) if cpus else [None] * workers
                url, run = ctx.url, side
                if side.endswith(NO_WAIT):
                    url, run = no_flush_wait(ctx.url), side.removesuffix(NO_WAIT)
                elapsed, done, cpu = _one_run(url, total, run, batch, places)
                rates.setdefault((side, batch, workers), []).append(done / elapsed)
                cpu_us.setdefault((side, batch, workers), []).append(cpu / done * 1e6)

    def med(side: str, batch: int, workers: int) -> float:
        return statistics.median(rates[(side, batch, workers)])

    def spread(side: str, batch: int, workers: int) -> str:
        got = rates[(side, batch, workers)]
        return (
            f"{fmt_int(med(side, batch, workers))} ({fmt_int(min(got))}\u2013{fmt_int(max(got))})"
        )

    def paired_value(side: str, batch: int, other: str, workers: int) -> float:
        mine, theirs = rates[(side, batch, workers)], rates[(other, batch, workers)]
        return statistics.median([a / b for a, b in zip(mine, theirs, strict=True)])

    def paired(side: str, batch: int, other: str, workers: int) -> str:
        return fmt_ratio(paired_value(side, batch, other, workers))

    def cpu_per_job(side: str, workers: int) -> str:
        return fmt_int(statistics.median(cpu_us[(side, 1, workers)]))

    table = Table(
        [
            "loop",
            "1 worker, jobs/s (min\u2013max)",
            "2 workers, jobs/s (min\u2013max)",
            "2 \u00f7 1",
            "worker CPU per job, \u00b5s (1 / 2 workers)",
        ]
    )
    for label, side, batch in loops:
        table.add(
            label,
            spread(side, batch, 1),
            spread(side, batch, 2),
            fmt_ratio(med(side, batch, 2) / med(side, batch, 1)),
            f"{fmt_int(statistics.median(cpu_us[(side, batch, 1)]))} / "
            f"{fmt_int(statistics.median(cpu_us[(side, batch, 2)]))}",
        )
    ratio = Table(
        ["library \u00f7 raw (jobs/s), median of the rounds' ratios", "1 worker", "2 workers"]
    )
    ratio.add(
        "claim 1 \u00f7 minimal hand-written loop (target \u2265 0.90\u00d7)",
        paired("library", 1, "minimal", 1),
        paired("library", 1, "minimal", 2),
    )
    ratio.add(
        "claim 1 \u00f7 minimal loop sending one result text made before the loop",
        paired("library", 1, "minimal-once", 1),
        paired("library", 1, "minimal-once", 2),
    )
    ratio.add(
        "claim 1 \u00f7 minimal loop, both with commits not waiting for their flush "
        "(the CPU-bound case; not the target's measurement)",
        paired("library" + NO_WAIT, 1, "minimal" + NO_WAIT, 1),
        paired("library" + NO_WAIT, 1, "minimal" + NO_WAIT, 2),
    )
    ratio.add(
        "raw psycopg with the library's statements, claim 1 \u00f7 minimal",
        paired("raw", 1, "minimal", 1),
        paired("raw", 1, "minimal", 2),
    )
    for batch in (1, 10) if has_batch else (1,):
        ratio.add(
            f"claim {batch}",
            paired("library", batch, "raw", 1),
            paired("library", batch, "raw", 2),
        )
    section.tables = [table, ratio]
    section.intro = [
        f"{fmt_int(total)} queued no-op jobs across {CLIENTS} clients (created with "
        "`create_many`, then `VACUUM (ANALYZE)`), drained by 1 or 2 worker processes "
        "(multiprocessing `spawn`). Each worker opens its own pooled `Database` (defaults) and "
        "loops claim \u2192 `complete` (a small JSON result, confidence, tokens) until a claim "
        "returns nothing. The raw loop sends the library's own statements (`claim_job`, as "
        "`claim_next` does, or `claim_jobs` for claims of 10, and `complete_job`) on one "
        "autocommit connection with `prepare_threshold=5`. The minimal "
        "hand-written loop (the baseline of issue 10) claims by updating the one row a locking "
        "subquery picks (same order as the library's claim, `LIMIT 1`, `SKIP LOCKED`), "
        "returning its id, client, URL and attempts, and completes with one CTE that updates "
        "the job and inserts its result, on one autocommit connection with the library's "
        "prepare setting for the URL. The target (library \u2265 0.90\u00d7 the minimal loop) is "
        "measured against that loop. Every loop but one encodes each job's result as it sends "
        "it, as a worker with real results must: the library in `complete` (which also "
        "validates the document and decodes the text back into the returned result's "
        "`extracted_data`), the raw loop with `json.JSONEncoder.encode`, the minimal loop as "
        "psycopg's docs send a dict to a `jsonb` column (`Jsonb(result)`). The exception is "
        "the row \u201cminimal loop, one result text made before the loop\u201d: the same "
        "minimal loop sending one JSON text, made once, for every job. No worker with real "
        "results can do that; it is the upper bound of the minimal loop's throughput, shown so "
        "the cost of encoding is measured in the same run. (Until 2026-12-02 this was the "
        "minimal loop, and the raw loop sent a pre-made text too: library \u00f7 minimal "
        "figures from before then compare with that row.) The two rows \u201ccommits not "
        "waiting for their flush\u201d run the library's loop and the minimal loop again on "
        "sessions with `synchronous_commit=off` (the libpq `options` parameter in their URL, "
        "checked before the runs), so no commit waits for the disk: the case where CPU per job "
        "alone decides, as on a machine whose disk flushes in no time. The target is measured "
        "with every commit waiting for its flush, PostgreSQL's default; this pair shows how "
        "far the ratio moves without that wait. "
        + placed
        + " Time runs from a start signal, given once "
        "every worker has opened its connection (and pinned it), to the last completion; "
        "process start-up and connecting are outside it. Worker CPU per job is the worker "
        "processes' CPU time (`time.process_time`) over the drain divided by the jobs (median "
        "of the runs): the client's own work per job, Python and psycopg; the server's work "
        "and the wait for each commit's WAL flush come on top. With a worker and its backend "
        "on one CPU, every microsecond of it adds to the time per job.",
        f"**{rounds} run(s) per cell, interleaved**: each round runs every loop once with 1 "
        "worker, then once with 2, in an order rotated by one loop each round (the table is "
        "refilled before each run). A cell shows the median run and, in brackets, the slowest "
        "and fastest; a ratio is the median of the rounds' ratios (each round's two runs ran "
        "minutes apart at most, so they share the machine's load). After every run the "
        "benchmark checks that every job was completed exactly once, with one result each.",
    ]
    lib1, raw1 = med("library", 1, 1), med("raw", 1, 1)
    line = (
        f"Queue, {fmt_int(total)} jobs, claim 1 + complete (median of {rounds}): "
        f"{fmt_int(lib1)} jobs/s with 1 worker, "
        f"{fmt_int(med('library', 1, 2))} with 2 (raw psycopg: {fmt_int(raw1)} / "
        f"{fmt_int(med('raw', 1, 2))}; minimal hand-written loop: "
        f"{fmt_int(med('minimal', 1, 1))} / {fmt_int(med('minimal', 1, 2))}; "
        f"library \u00f7 minimal {paired('library', 1, 'minimal', 1)} / "
        f"{paired('library', 1, 'minimal', 2)}; \u00f7 the minimal loop sending one result "
        f"text made before the loop {paired('library', 1, 'minimal-once', 1)} / "
        f"{paired('library', 1, 'minimal-once', 2)}; with commits not waiting for their "
        f"flush {paired('library' + NO_WAIT, 1, 'minimal' + NO_WAIT, 1)} / "
        f"{paired('library' + NO_WAIT, 1, 'minimal' + NO_WAIT, 2)})"
    )
    if has_batch:
        line += (
            f"; `claim_batch(10)`: {fmt_int(med('library', 10, 1))} / "
            f"{fmt_int(med('library', 10, 2))} jobs/s"
        )
    section.headlines = [line + "."]
    section.targets = [
        Target(
            f"One at a time (`claim_next` + `complete`) \u00f7 the minimal hand-written loop, "
            f"{workers} worker{'s' if workers > 1 else ''} (section 2)",
            0.9,
            paired_value("library", 1, "minimal", workers),
            why=(
                f"Worker CPU per job was {cpu_per_job('library', workers)} \u00b5s against "
                f"{cpu_per_job('minimal', workers)} for the minimal loop: the library's "
                "client work per call (the pool checkout, encoding the result and reading it "
                "back, observing the call, building the returned row), which adds to every job "
                "while a worker "
                "and its backend share a CPU. Raw psycopg sending the library's statements ran "
                f"at {paired('raw', 1, 'minimal', workers)} of the minimal loop (the statements' "
                "own share); with commits not waiting for their flush the ratio was "
                f"{paired('library' + NO_WAIT, 1, 'minimal' + NO_WAIT, workers)}. The "
                "spread of the runs (the table's min\u2013max) shows how much of the rest is "
                "this run's noise."
            ),
        )
        for workers in (1, 2)
    ]
    truncate_jobs(ctx.url)
    return section
