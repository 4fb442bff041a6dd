"""Benchmark 9: fair share between clients, and the claims on a large scheduled queue.

Part one: client A has 100,000 queued jobs (10,000 in a quick run), the
oldest, and clients B..K have 10 each. Workers claim in batches of 10 until
every client has had a job: oldest-first (`claim_batch`) against
`claim_batch(fair=True)`; how many calls and jobs that took.

Part two: ``jobs`` is filled with 1,000,000 rows (100,000 quick) the way
benchmark 4 does (1,000 clients of uneven size, the newest 1% queued); the
queued jobs then get mixed priorities (-1, 0, 1) and a fifth of them a
``run_after`` an hour ahead. The plain claim, one client's claim and the fair
claim run under ``EXPLAIN (ANALYZE, BUFFERS)`` in a rolled-back transaction;
the report gives the median execution and planning times (the service plans
every statement: prepares are off behind RDS Proxy), the index access nodes
and the plans. The claims of cira_db 0.1's first issue-11 version (a CTE that
locks, a join that updates, an outer sort) run in the same loop, one run of
each statement after the other, as the figure to compare with.
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta
from typing import Any

import psycopg

from bench_common import Context, Section, Table, connect_raw, fmt_int, fmt_ms, library_sql
from bench_plans import PlanResult, Query, _explain, _seed, _summarise
from cira_db import Database, JobRepository

__all__ = ["run_fair"]

LEASE = timedelta(minutes=15)
BIG, OTHERS = "client-a", [f"client-{letter}" for letter in "bcdefghijk"]
BATCH = 10
PLAIN_CLAIMS = 4  # the first queries of _claim_queries, measured in turns
CHUNK = 50_000

SCHEDULE_MIX = """
UPDATE jobs
SET priority = (get_byte(uuid_send(id), 15) % 3) - 1,
    run_after = CASE WHEN get_byte(uuid_send(id), 14) % 5 = 0
                     THEN now() + interval '1 hour' END
WHERE status = 'queued'
"""
MIX_SUMMARY = """
SELECT count(*) FILTER (WHERE status = 'queued'),
       count(*) FILTER (WHERE status = 'queued' AND run_after > now()),
       count(DISTINCT client_id) FILTER (WHERE status = 'queued'),
       count(*)
FROM jobs
"""


# The plain claim as it was before this benchmark's finding (a MATERIALIZED CTE
# that locks, an UPDATE joined to it, an outer sort): measured in the same loop
# as the packaged statement, so their ratio does not depend on the machine's load.
PREVIOUS_CLAIM = """
WITH picked AS MATERIALIZED (
    SELECT id
    FROM jobs
    WHERE status = 'queued'
      AND coalesce(run_after, created_at) <= now()
    ORDER BY priority DESC, coalesce(run_after, created_at), id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE jobs
    SET status = 'processing',
        attempts = jobs.attempts + 1,
        lease_expires_at = now() + %(lease)s::interval
    FROM picked
    WHERE jobs.id = picked.id
    RETURNING jobs.id, jobs.client_id, jobs.status, jobs.pdf_url, jobs.created_at,
              jobs.updated_at, jobs.completed_at, jobs.error_message, jobs.attempts,
              jobs.lease_expires_at,
              jobs.priority, jobs.run_after, jobs.progress, jobs.cancel_requested_at
)
SELECT * FROM claimed ORDER BY priority DESC, coalesce(run_after, created_at), id
"""


def _crowd(url: str, big: int) -> None:
    """Client A's ``big`` jobs first (the oldest), then 10 for each of B..K."""
    with Database(url) as db:
        jobs = JobRepository(db)
        for start in range(0, big, CHUNK):
            count = min(CHUNK, big - start)
            urls = [f"s3://bench-fair/{BIG}/{n}.pdf" for n in range(start, start + count)]
            jobs.create_many(client_id=BIG, pdf_urls=urls)
        for client in OTHERS:
            jobs.create_many(
                client_id=client, pdf_urls=[f"s3://bench-fair/{client}/{n}.pdf" for n in range(10)]
            )


def _until_everyone_served(url: str, *, fair: bool) -> tuple[int, int, float]:
    """Claim batches until each of the 11 clients got a job: (calls, jobs, seconds)."""
    served: set[str] = set()
    calls = jobs_claimed = 0
    with Database(url) as db:
        jobs = JobRepository(db)
        start = time.perf_counter()
        while len(served) < 1 + len(OTHERS):
            batch = jobs.claim_batch(BATCH, lease=LEASE, fair=fair)
            if not batch:
                break
            calls += 1
            jobs_claimed += len(batch)
            served.update(job.client_id for job in batch)
        seconds = time.perf_counter() - start
    return calls, jobs_claimed, seconds


def _fairness(ctx: Context, big: int) -> Table:
    table = Table(
        ["claim", "claim calls", "jobs claimed", "seconds"],
        title=f"Claims (batches of {BATCH}) until every client had one job: client A "
        f"{fmt_int(big)} queued (the oldest), clients B..K 10 each",
    )
    for fair in (False, True):
        with connect_raw(ctx.url, prepare_threshold=None) as conn:
            conn.execute("TRUNCATE job_results, jobs")
        ctx.log(f"fair: {fmt_int(big)} + 100 jobs, claiming {'fair' if fair else 'oldest-first'}")
        _crowd(ctx.url, big)
        calls, claimed, seconds = _until_everyone_served(ctx.url, fair=fair)
        label = "`claim_batch(10, fair=True)`" if fair else "`claim_batch(10)` (oldest first)"
        table.add(label, fmt_int(calls), fmt_int(claimed), f"{seconds:.2f}")
    return table


def _scheduled_queue(conn: psycopg.Connection[Any], total: int) -> tuple[int, int, int, str]:
    """The large table with mixed priorities and some future schedules; its summary."""
    _seed(conn, total, 1000)
    conn.execute(SCHEDULE_MIX)
    conn.execute("VACUUM (ANALYZE) jobs")
    row = conn.execute(MIX_SUMMARY).fetchone()
    assert row is not None
    typical = conn.execute(
        "SELECT client_id FROM jobs WHERE status = 'queued' GROUP BY client_id "
        "ORDER BY count(*) DESC, client_id LIMIT 1"
    ).fetchone()
    assert typical is not None
    return int(row[0]), int(row[1]), int(row[2]), str(typical[0])


def _queue_queries(client: str, job_id: Any) -> list[Query]:
    """cancel and queue_stats on the same table (issue 11: their plans at scale)."""
    return [
        Query(
            "`cancel` of a queued job (`cancel_job`)",
            library_sql("jobs.sql", "cancel_job"),
            {"id": job_id, "client_id": client},
            True,
        ),
        Query(
            f"`queue_stats(client_id=...)`, busiest queue ({client})",
            library_sql("jobs.sql", "queue_stats_for_client"),
            {"client_id": client},
        ),
        Query("`queue_stats()`, every client", library_sql("jobs.sql", "queue_stats"), {}),
    ]


def _claim_queries(client: str) -> list[Query]:
    claim = library_sql("jobs.sql", "claim_jobs")
    fair = library_sql("jobs.sql", "claim_jobs_fair")
    return [
        Query("`claim_next` (`claim_jobs`, limit 1)", claim, {"limit": 1, "lease": LEASE}, True),
        Query(
            "`claim_next`, previous statement (CTE, join, outer sort)",
            PREVIOUS_CLAIM,
            {"limit": 1, "lease": LEASE},
            True,
        ),
        Query("`claim_batch(10)` (`claim_jobs`)", claim, {"limit": 10, "lease": LEASE}, True),
        Query(
            "`claim_batch(10)`, previous statement",
            PREVIOUS_CLAIM,
            {"limit": 10, "lease": LEASE},
            True,
        ),
        Query(
            f"`claim_batch(10, client_id=...)`, busiest queue ({client})",
            library_sql("jobs.sql", "claim_jobs_for_client"),
            {"limit": 10, "lease": LEASE, "client_id": client},
            True,
        ),
        Query(
            "`claim_batch(10, fair=True)` (`claim_jobs_fair`)",
            fair,
            {"limit": 10, "lease": LEASE},
            True,
        ),
        Query("`claim_batch(100, fair=True)`", fair, {"limit": 100, "lease": LEASE}, True),
    ]


def _explain_together(
    conn: psycopg.Connection[Any], queries: list[Query], runs: int
) -> list[PlanResult]:
    """As bench_plans._explain, one run of each query in turn: load hits them alike."""
    results = [PlanResult() for _ in queries]
    for attempt in range(runs + 1):  # the first round warms the cache and is not counted
        for query, result in zip(queries, results, strict=True):
            with conn.transaction(force_rollback=query.rollback):
                row = conn.execute(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query.sql, query.params
                ).fetchone()
            assert row is not None
            plan = row[0][0]
            if attempt > 0:
                result.runs.append(float(plan["Execution Time"]))
                result.planning.append(float(plan["Planning Time"]))
            if attempt == runs:
                _summarise(plan, result)
    for query, result in zip(queries, results, strict=True):
        with conn.transaction(force_rollback=query.rollback):
            lines = conn.execute(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + query.sql, query.params
            ).fetchall()
        result.text = "\n".join(str(line[0]) for line in lines)
    return results


def _both(result: PlanResult) -> float:
    """Median of planning + execution: what a service that prepares nothing waits."""
    return statistics.median(p + e for p, e in zip(result.planning, result.runs, strict=True))


def _plans_table(queries: list[Query], results: list[PlanResult], runs: int, total: int) -> Table:
    table = Table(
        [
            "statement",
            "median ms",
            "planning ms",
            "planning + execution ms",
            "index used",
            "rows filtered out",
            "buffers",
        ],
        title=f"EXPLAIN (ANALYZE, BUFFERS) on {fmt_int(total)} jobs: median of {runs} runs "
        "(after one warm-up run), each rolled back; median ms is the execution time",
    )
    for query, result in zip(queries, results, strict=True):
        table.add(
            query.label,
            fmt_ms(result.median_ms),
            fmt_ms(statistics.median(result.planning)),
            fmt_ms(_both(result)),
            ", ".join(result.access) or "(none)",
            fmt_int(result.removed),
            fmt_int(result.buffers),
        )
    return table


def run_fair(ctx: Context) -> Section:
    big = 10_000 if ctx.quick else 100_000
    total = 100_000 if ctx.quick else 1_000_000
    runs = 5 if ctx.quick else 31
    section = Section("fair", "9. Fair share, the claim, cancel and queue_stats at scale")
    fairness = _fairness(ctx, big)
    with connect_raw(ctx.url, prepare_threshold=None) as conn:
        conn.execute("TRUNCATE job_results, jobs")
        conn.execute("SET maintenance_work_mem = '256MB'")
        ctx.log(f"fair: seeding {fmt_int(total)} jobs, then schedules and priorities")
        queued, later, clients, busiest = _scheduled_queue(conn, total)
        some_queued = conn.execute(
            "SELECT id FROM jobs WHERE status = 'queued' AND client_id = %s LIMIT 1", (busiest,)
        ).fetchone()
        assert some_queued is not None
        queries = _claim_queries(busiest) + _queue_queries(busiest, some_queued[0])
        ctx.log("fair: EXPLAIN the plain claims and their previous statement, in turns")
        results = _explain_together(conn, queries[:PLAIN_CLAIMS], runs)
        for query in queries[PLAIN_CLAIMS:]:
            ctx.log(f"fair: EXPLAIN {query.label.replace('`', '')}")
            results.append(_explain(conn, query, runs))
        conn.execute("TRUNCATE job_results, jobs")
    section.tables = [fairness, _plans_table(queries, results, runs, total)]
    section.intro = [
        f"Part one: client A has {fmt_int(big)} queued jobs, created before the 10 of each of "
        "clients B..K; workers claim batches of 10 until every client has had one, oldest-first "
        "against fair. Part two: the table of benchmark 4 refilled with "
        f"{fmt_int(total)} jobs; the {fmt_int(queued)} queued ones (of {fmt_int(clients)} "
        f"clients) get priorities -1, 0 and 1, and {fmt_int(later)} of them a `run_after` "
        "an hour ahead (not due). Each claim statement is the packaged SQL with bound "
        "parameters, run in a transaction that is rolled back (`cancel` too); the plain "
        "claims and the previous plain claim statement take turns, one run each.",
    ]
    section.notes.append(
        "A fair claim reads a few index probes per client that has queued jobs (the skip "
        "scan over `idx_jobs_claim_client`, the client's jobs in progress, its next "
        "ceil(limit / clients) due jobs) and locks only the jobs it takes, so its cost grows "
        "with the number of clients waiting, not with the queue's length."
    )
    details = ["<details><summary>Plans (text, last run, costs off)</summary>", ""]
    for query, result in zip(queries, results, strict=True):
        details += [f"{query.label}:", "", "```", result.text, "```", ""]
    section.extra_markdown = [*details, "</details>", ""]
    plain, previous, fair10 = results[0], results[1], results[5]
    oldest_calls, fair_calls = fairness.rows[0][1], fairness.rows[1][1]
    section.notes.append(
        f"`claim_next` at {fmt_int(total)} jobs: {fmt_ms(plain.median_ms)} ms to execute and "
        f"{fmt_ms(statistics.median(plain.planning))} ms to plan, against "
        f"{fmt_ms(previous.median_ms)} and {fmt_ms(statistics.median(previous.planning))} ms "
        "for the previous statement in the same loop. The claim is one UPDATE: a locking "
        "InitPlan reads `idx_jobs_claim` in claim order, the UPDATE finds the ids by "
        "`jobs_pkey`, and the library sorts a batch's rows; the CTE, the join and the outer "
        "sort of the previous statement cost planning and execution time and bought nothing."
    )
    section.headlines = [
        f"Every one of 11 clients served after {oldest_calls} claim calls oldest-first "
        f"against {fair_calls} fair (A: {fmt_int(big)} queued, B..K: 10 each).",
        f"At {fmt_int(total)} jobs: claim_next {fmt_ms(plain.median_ms)} ms "
        f"({', '.join(plain.access)}; planning {fmt_ms(statistics.median(plain.planning))} ms) "
        f"against {fmt_ms(previous.median_ms)} ms for the previous statement in the same run; "
        f"a fair batch of 10 over {fmt_int(clients)} waiting clients "
        f"{fmt_ms(fair10.median_ms)} ms.",
    ]
    return section
