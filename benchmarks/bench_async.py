"""Benchmark 7: the asyncio face (`cira_db.aio`) against raw psycopg async.

Both sides use the same ``AsyncConnectionPool`` (the `AsyncDatabase`'s own)
and send the same statement text with the same parameters; the raw side
leaves rows as tuples.

* per-call latency: ``await jobs.get(...)`` and ``await jobs.list(...)``
  against ``pool.connection()`` + ``execute`` + ``fetch``, one call at a
  time, interleaved in blocks; a third variant runs the raw call with the
  library's row factory (``Job`` rows), to show what building rows costs;
* a queue drained by 100 concurrent tasks, each claiming one job and
  completing it until the queue is empty: `AsyncJobRepository` against a
  hand-written loop, rounds alternating between the two sides.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from bench_common import (
    Context,
    Samples,
    Section,
    Table,
    encode_result,
    fmt_int,
    fmt_ratio,
    fmt_us,
    library_defaults,
    library_sql,
    truncate_jobs,
    uuid7,
)
from cira_db._repositories._base import job_row
from cira_db.aio import AsyncDatabase, AsyncJobRepository

__all__ = ["run_async"]

LEASE = timedelta(minutes=15)
DATA = {"document_type": "invoice", "total": 118.5, "currency": "EUR", "pages": 2}
SCORE = Decimal("0.93")
TOKENS = 1200
CLIENT = "aio-client"
TASKS = 100
POOL = 8

AsyncCall = Callable[[], Awaitable[object]]


async def _measure(
    variants: dict[str, AsyncCall], n: int, *, block: int, warmup: int
) -> dict[str, Samples]:
    """Time ``n`` awaited calls of each variant, one at a time, interleaved in blocks."""
    for _ in range(warmup):
        for call in variants.values():
            await call()
    samples = {name: Samples() for name in variants}
    clock = time.perf_counter_ns
    done = 0
    while done < n:
        size = min(block, n - done)
        for name, call in variants.items():
            out = samples[name].ns
            for _ in range(size):
                start = clock()
                await call()
                out.append(clock() - start)
        done += size
    return samples


async def _latency(db: AsyncDatabase, n: int) -> Table:
    jobs = AsyncJobRepository(db)
    made = await jobs.create_many(
        client_id=CLIENT, pdf_urls=[f"https://files.example.com/a/{i}.pdf" for i in range(200)]
    )
    job_id = made[100].id
    pool = db.pool
    assert pool is not None
    get_sql = library_sql("jobs.sql", "get_job")
    list_sql = library_sql("jobs.sql", "list_jobs")
    list_params = {"client_id": CLIENT, "after_created_at": None, "after_id": None, "limit": 51}

    async def raw(statement: str, params: dict[str, Any], *, many: bool) -> object:
        async with pool.connection() as conn:
            cur = await conn.execute(statement, params)
            return await (cur.fetchall() if many else cur.fetchone())

    async def raw_jobs(statement: str, params: dict[str, Any], *, many: bool) -> object:
        # The raw call with the library's row factory: what building `Job`s costs.
        async with pool.connection() as conn, conn.cursor(row_factory=job_row) as cur:
            await cur.execute(statement, params)
            return await (cur.fetchall() if many else cur.fetchone())

    get_params = {"id": job_id, "client_id": CLIENT}
    pairs: list[tuple[str, AsyncCall, AsyncCall, AsyncCall]] = [
        (
            "`await jobs.get`",
            lambda: jobs.get(job_id, client_id=CLIENT),
            lambda: raw(get_sql, get_params, many=False),
            lambda: raw_jobs(get_sql, get_params, many=False),
        ),
        (
            "`await jobs.list` (50 rows)",
            lambda: jobs.list(client_id=CLIENT, limit=50),
            lambda: raw(list_sql, list_params, many=True),
            lambda: raw_jobs(list_sql, list_params, many=True),
        ),
    ]
    table = Table(
        [
            "call",
            "library median",
            "raw median",
            "ratio",
            "library p99",
            "raw p99",
            "n",
            "raw with the library's `Job` rows: median, ratio to raw",
        ],
        title=f"Awaited calls on one AsyncDatabase (pool of {POOL}), one at a time",
    )
    for label, library, raw_call, raw_rows in pairs:
        variants = {"library": library, "raw": raw_call, "rows": raw_rows}
        got = await _measure(variants, n, block=50, warmup=min(n, 200))
        lib, ref, rows = got["library"], got["raw"], got["rows"]
        table.add(
            label,
            fmt_us(lib.median_us),
            fmt_us(ref.median_us),
            fmt_ratio(lib.median_us / ref.median_us),
            fmt_us(lib.p99_us),
            fmt_us(ref.p99_us),
            fmt_int(lib.n),
            f"{fmt_us(rows.median_us)}, {fmt_ratio(rows.median_us / ref.median_us)}",
        )
    return table


async def _library_round(db: AsyncDatabase) -> int:
    jobs = AsyncJobRepository(db)

    async def task() -> int:
        done = 0
        while (job := await jobs.claim_next(lease=LEASE)) is not None:
            await jobs.complete(
                job.id, extracted_data=DATA, confidence_score=SCORE, tokens_used=TOKENS
            )
            done += 1
        return done

    return sum(await asyncio.gather(*(task() for _ in range(TASKS))))


async def _raw_round(db: AsyncDatabase) -> int:
    pool = db.pool
    assert pool is not None
    claim = library_sql("jobs.sql", "claim_jobs")
    complete = library_sql("jobs.sql", "complete_job")

    async def task() -> int:
        done = 0
        while True:
            async with pool.connection() as conn:
                cur = await conn.execute(claim, {"limit": 1, "lease": LEASE})
                row = await cur.fetchone()
            if row is None:
                return done
            job_id: UUID = row[0]
            params = {
                "id": job_id,
                "result_id": uuid7(),
                "extracted_data": encode_result(DATA),  # each job's own document
                "confidence_score": SCORE,
                "tokens_used": TOKENS,
                "client_id": None,
            }
            async with pool.connection() as conn:
                cur = await conn.execute(complete, library_defaults(complete, params))
                await cur.fetchone()
            done += 1

    return sum(await asyncio.gather(*(task() for _ in range(TASKS))))


async def _queue(ctx: Context, db: AsyncDatabase, size: int, rounds: int) -> Table:
    jobs = AsyncJobRepository(db)
    rates: dict[str, list[float]] = {"library": [], "raw": []}
    sides: dict[str, Callable[[AsyncDatabase], Awaitable[int]]] = {
        "library": _library_round,
        "raw": _raw_round,
    }
    for number in range(rounds):
        order = ("library", "raw") if number % 2 == 0 else ("raw", "library")
        for side in order:
            await asyncio.to_thread(truncate_jobs, ctx.url)
            urls = [f"https://files.example.com/q/{i}.pdf" for i in range(size)]
            await jobs.create_many(client_id=CLIENT, pdf_urls=urls)
            start = time.perf_counter()
            done = await sides[side](db)
            seconds = time.perf_counter() - start
            if done != size:
                raise AssertionError(f"{side}: {done} of {size} jobs drained")
            rates[side].append(size / seconds)
        ctx.log(f"async queue round {number + 1}/{rounds} done")
    lib, raw = statistics.median(rates["library"]), statistics.median(rates["raw"])
    table = Table(
        ["side", "jobs/s (median)", "rounds", "jobs per round"],
        title=f"{TASKS} tasks claiming and completing one queue (pool of {POOL})",
    )
    table.add("`AsyncJobRepository`", fmt_int(lib), str(rounds), fmt_int(size))
    table.add("hand-written async loop, same SQL", fmt_int(raw), str(rounds), fmt_int(size))
    table.add("library / raw", fmt_ratio(lib / raw), "", "")
    return table


async def _run(ctx: Context) -> Section:
    section = Section("async", "7. The asyncio face")
    section.intro.append(
        "`cira_db.aio` against raw psycopg async on the same `AsyncConnectionPool`, "
        "with the same SQL text and parameters (raw rows stay tuples)."
    )
    n = 300 if ctx.quick else 3000
    size, rounds = (300, 2) if ctx.quick else (3000, 5)
    await asyncio.to_thread(truncate_jobs, ctx.url)
    async with AsyncDatabase(ctx.url, pool_min_size=POOL, pool_max_size=POOL) as db:
        ctx.log("async: per-call latency")
        latency = await _latency(db, n)
        section.tables.append(latency)
        ctx.log("async: queue drained by 100 tasks")
        queue = await _queue(ctx, db, size, rounds)
        section.tables.append(queue)
    for row in latency.rows:
        section.headlines.append(f"{row[0]}: {row[3]} raw psycopg async (median)")
    section.headlines.append(
        f"100 tasks draining a queue: {queue.rows[2][1]} the hand-written loop"
    )
    await asyncio.to_thread(truncate_jobs, ctx.url)
    return section


def run_async(ctx: Context) -> Section:
    """Benchmark 7 (see the module docstring)."""
    return asyncio.run(_run(ctx))
