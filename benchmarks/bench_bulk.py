"""Benchmark 3: bulk insert with ``create_many`` against raw COPY, and its peak memory.

Five ways to put the same rows (id, client_id, pdf_url) into ``jobs``, each
into an emptied table with every index of the migrations in place:

* the library's ``jobs.create_many`` (validation, UUIDv7 ids; from 1,000
  rows ``COPY ... FROM STDIN`` into ``jobs`` and the transaction's ``now()``
  read in the same transaction, `Job` objects back, built from the call's
  own values: no row is read back);
* ``create_many(..., returning="ids")`` (validation, UUIDv7 ids, ``COPY ...
  FROM STDIN`` straight into ``jobs``, no rows back);
* ``create_many(..., job_ids=..., returning="ids")`` (caller-chosen ids: the
  COPY first, which succeeds when no id is stored yet, as here);
* raw psycopg sending the library's ``insert_jobs_count`` statement (ids made
  in Python, arrays bound, no rows back): the array form without the library;
* raw psycopg ``COPY jobs (id, client_id, pdf_url) FROM STDIN`` with ``write_row``.

Peak memory of one call is measured in a fresh ``spawn`` process per probe:
the growth of the resident set's high-water mark during the call (``VmHWM``
after resetting it through ``/proc/self/clear_refs``, minus ``VmRSS`` before;
``ru_maxrss`` where that reset is not available), and separately the
``tracemalloc`` peak of Python allocations (a second process, since tracing
slows the call down).
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import resource
import statistics
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench_common import (
    Context,
    Section,
    Table,
    Target,
    connect_raw,
    fmt_int,
    fmt_ratio,
    library_sql,
    truncate_jobs,
    uuid7_batch,
)
from cira_db import Database, JobRepository

__all__ = ["run_bulk"]

CLIENT = "bulk-client"
METHODS = ("library", "library-ids", "library-job-ids", "unnest", "copy")
FULL_SIZES = (10_000, 100_000)
QUICK_SIZES = (2_000, 10_000)
LABELS = {
    "library": "`jobs.create_many` (returning jobs)",
    "library-ids": '`jobs.create_many(..., returning="ids")`',
    "library-job-ids": '`jobs.create_many(..., job_ids=..., returning="ids")`',
    "unnest": "raw psycopg, the library's `insert_jobs_count` statement",
    "copy": "raw psycopg `COPY ... FROM STDIN`",
}


def _urls(n: int) -> list[str]:
    return [f"https://files.example.com/{CLIENT}/2025/01/{i:07d}.pdf" for i in range(n)]


def _inserter(url: str, method: str) -> tuple[Callable[[list[str]], int], Callable[[], None]]:
    """A function inserting the given URLs with ``method`` (returns rows), and a closer."""
    if method == "library":
        db = Database(url)
        db.open()
        jobs = JobRepository(db)

        def library(urls: list[str]) -> int:
            return len(jobs.create_many(client_id=CLIENT, pdf_urls=urls))

        return library, db.close
    if method == "library-ids":
        db = Database(url)
        db.open()
        jobs = JobRepository(db)

        def library_ids(urls: list[str]) -> int:
            return len(jobs.create_many(client_id=CLIENT, pdf_urls=urls, returning="ids"))

        return library_ids, db.close
    if method == "library-job-ids":
        db = Database(url)
        db.open()
        jobs = JobRepository(db)

        def library_job_ids(urls: list[str]) -> int:
            # Caller-chosen ids (a retry-safe bulk request); made in the timing, like COPY's.
            ids = uuid7_batch(len(urls))
            made = jobs.create_many(client_id=CLIENT, pdf_urls=urls, job_ids=ids, returning="ids")
            return len(made)

        return library_job_ids, db.close
    conn = connect_raw(url, prepare_threshold=5)
    if method == "unnest":
        statement = library_sql("jobs.sql", "insert_jobs_count")

        def unnest(urls: list[str]) -> int:
            params = {
                "ids": uuid7_batch(len(urls)),
                "client_id": CLIENT,
                "pdf_urls": urls,
                "run_after_at": None,
                "run_after_in": None,
                "priority": None,
            }
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.rowcount

        return unnest, conn.close

    def copy(urls: list[str]) -> int:
        ids = uuid7_batch(len(urls))
        with (
            conn.cursor() as cur,
            cur.copy("COPY jobs (id, client_id, pdf_url) FROM STDIN") as stream,
        ):
            for job_id, pdf_url in zip(ids, urls, strict=True):
                stream.write_row((job_id, CLIENT, pdf_url))
        return len(urls)

    return copy, conn.close


def _memory_probe(url: str, method: str, n: int, mode: str) -> tuple[int, float]:
    """In a fresh process: (peak growth in bytes during one call, seconds it took)."""
    insert, close = _inserter(url, method)
    try:
        insert(_urls(100))  # load code paths and open the connection first
        truncate_jobs(url)
        urls = _urls(n)
        gc.collect()
        if mode == "tracemalloc":
            tracemalloc.start()
            start = time.perf_counter()
            insert(urls)
            seconds = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            return peak, seconds
        # Reset the resident high-water mark (Linux: write 5 to clear_refs), so the
        # peak after the call is this call's peak, not an earlier one from imports.
        reset = _reset_peak()
        before = _status_kib("VmRSS") if reset else _maxrss_kib()
        start = time.perf_counter()
        insert(urls)
        seconds = time.perf_counter() - start
        after = _status_kib("VmHWM") if reset else _maxrss_kib()
        return (after - before) * 1024, seconds
    finally:
        close()


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return False
    return _status_kib("VmHWM") <= _status_kib("VmRSS") + 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(field)


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _probe(url: str, method: str, n: int, mode: str) -> tuple[int, float]:
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(_memory_probe, url, method, n, mode).result(timeout=600)


def _mib(size: float) -> str:
    return f"{size / 2**20:,.1f}"


def run_bulk(ctx: Context) -> Section:
    sizes = QUICK_SIZES if ctx.quick else FULL_SIZES
    runs = 3
    section = Section("bulk", "3. Bulk insert")
    inserters = {m: _inserter(ctx.url, m) for m in METHODS}
    seconds: dict[tuple[str, int], list[float]] = {(m, n): [] for m in METHODS for n in sizes}
    cpu: dict[tuple[str, int], list[float]] = {(m, n): [] for m in METHODS for n in sizes}
    try:
        for m in METHODS:  # warm up each path once
            truncate_jobs(ctx.url)
            inserters[m][0](_urls(100))
        for n in sizes:
            urls = _urls(n)
            for r in range(runs):
                for m in METHODS:
                    ctx.log(f"bulk: {m} {fmt_int(n)} rows, run {r + 1}/{runs}")
                    truncate_jobs(ctx.url)
                    start, used = time.perf_counter(), time.process_time()
                    made = inserters[m][0](urls)
                    seconds[(m, n)].append(time.perf_counter() - start)
                    cpu[(m, n)].append(time.process_time() - used)
                    if made != n:
                        raise RuntimeError(f"bulk {m}: {made} rows instead of {n}")
    finally:
        for _insert, close in inserters.values():
            close()
    table = Table(
        [
            "method",
            *[f"{fmt_int(n)} rows: rows/s" for n in sizes],
            *[f"{fmt_int(n)}: \u00f7 COPY" for n in sizes],
            f"{fmt_int(sizes[-1])}: client CPU ms",
        ],
        title=f"Median of {runs} runs per cell, each into an emptied `jobs` table",
    )
    rate = {key: key[1] / statistics.median(vals) for key, vals in seconds.items()}
    for m in METHODS:
        table.add(
            LABELS[m],
            *[fmt_int(rate[(m, n)]) for n in sizes],
            *[fmt_ratio(rate[(m, n)] / rate[("copy", n)]) for n in sizes],
            fmt_int(1000 * statistics.median(cpu[(m, sizes[-1])])),
        )

    big = sizes[-1]
    ctx.log(f"bulk: peak memory probes, {fmt_int(big)} rows")
    memory = Table(
        [
            "one call of",
            "peak RSS growth MiB",
            "tracemalloc peak MiB",
            "bytes per row (tracemalloc)",
        ],
        title=f"Peak memory of one {fmt_int(big)}-row call, each in a fresh `spawn` process",
    )
    peaks: dict[str, tuple[int, int]] = {}
    for m in ("library", "library-ids", "copy"):
        rss, _ = _probe(ctx.url, m, big, "rss")
        traced, _ = _probe(ctx.url, m, big, "tracemalloc")
        peaks[m] = (rss, traced)
        memory.add(LABELS[m], _mib(rss), _mib(traced), fmt_int(traced / big))
    truncate_jobs(ctx.url)
    section.tables = [table, memory]
    section.intro = [
        "Five ways to insert the same rows (`id`, `client_id`, `pdf_url`; one client) into "
        "`jobs`, each into a table emptied by `TRUNCATE` first, with every index of the "
        "migrations in place: the library's `create_many` (argument validation, UUIDv7 ids; "
        "from 1,000 rows `COPY ... FROM STDIN` into `jobs`, then `SELECT now()` in the same "
        "transaction, a `Job` per row back: no row is read back, since every column the COPY "
        "leaves out is a constant default or `now()`, the transaction's time, so the jobs are "
        "built from the call's own values as their rows stream, and get that one timestamp "
        "at the end; docs/connections.md says why they are exactly the stored rows); "
        '`create_many(..., returning="ids")` (validation, UUIDv7 ids, `COPY ... FROM STDIN` '
        "straight into `jobs`, no rows back); the same with caller-chosen `job_ids=` (COPY "
        "first; the array statement that checks for stored ids only if an id is stored "
        "already, which it is not here); raw psycopg sending the library's "
        "`insert_jobs_count` array statement with ids made in Python (no rows back); and raw "
        "`COPY` with `write_row` (ids made in Python; the timing includes making them). The "
        "runs of the methods are interleaved. The library's calls include validating every "
        "URL; the raw ones validate nothing. Client CPU is this process's CPU time during "
        "the call (median; it does not move with the machine's load as wall time does): "
        "the library's own cost next to raw COPY's, the server's work being the same.",
        "",
        "Peak memory: the URL list is built before measuring. Peak RSS growth is the resident "
        "high-water mark during the call (`VmHWM`, reset just before it through "
        "`/proc/self/clear_refs`) minus the resident size before it; `tracemalloc` peak is "
        "Python allocations only (measured in a second process because tracing slows the "
        "call). Both include the returned objects, which are alive at the peak.",
    ]
    if ctx.quick:
        section.notes.append(
            f"Quick run: sizes {' and '.join(fmt_int(n) for n in sizes)} rows instead of "
            f"{' and '.join(fmt_int(n) for n in FULL_SIZES)}; the memory probe used the larger."
        )
    section.headlines = [
        f"`create_many` of {fmt_int(big)} URLs: {fmt_int(rate[('library', big)])} rows/s, "
        f"raw COPY {fmt_int(rate[('copy', big)])} rows/s "
        f"({fmt_ratio(rate[('library', big)] / rate[('copy', big)])} of COPY); peak memory "
        f"growth {_mib(peaks['library'][0])} MiB RSS, tracemalloc peak "
        f"{_mib(peaks['library'][1])} MiB ({_mib(peaks['copy'][0])} and "
        f"{_mib(peaks['copy'][1])} MiB for COPY).",
        f'`create_many(..., returning="ids")` of {fmt_int(big)} URLs: '
        f"{fmt_ratio(rate[('library-ids', big)] / rate[('copy', big)])} of COPY "
        f"(target 0.8x); tracemalloc peak {_mib(peaks['library-ids'][1])} MiB over the input "
        f"list (target 30 MiB); with `job_ids=` "
        f"{fmt_ratio(rate[('library-job-ids', big)] / rate[('copy', big)])} of COPY.",
    ]
    copy_ms = fmt_int(1000 * statistics.median(cpu[("copy", big)]))
    section.targets = [
        Target(
            f"{LABELS[m]} of {fmt_int(big)} rows \u00f7 raw `COPY` (section 3)",
            0.8,
            rate[(m, big)] / rate[("copy", big)],
            why=(
                f"Client CPU {fmt_int(1000 * statistics.median(cpu[(m, big)]))} ms against "
                f"{copy_ms} ms for raw COPY: validating every URL, making the ids and building "
                "what the call returns."
            ),
        )
        for m in ("library", "library-ids", "library-job-ids")
    ] + [
        Target(
            f"Peak Python memory of {LABELS[m]}, {fmt_int(big)} rows, over the input list "
            "(section 3)",
            30,
            peaks[m][1] / 2**20,
            at_least=False,
            unit=" MiB",
            why=f"{fmt_int(peaks[m][1] / big)} bytes per row at the peak (tracemalloc).",
        )
        for m in ("library", "library-ids")
    ]
    return section
