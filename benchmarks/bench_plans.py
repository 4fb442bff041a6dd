"""Benchmark 4: the library's queries on a large table, and which index each plan uses.

``jobs`` is filled server-side (``INSERT ... SELECT generate_series``) with
1,000,000 rows (100,000 in a quick run) across 1,000 clients of very uneven
size, the newest ~1% queued; the migrations' secondary indexes are dropped
before the load and rebuilt from their own definitions afterwards, then
``VACUUM (ANALYZE)``. Each of the library's statements (read from the
packaged SQL files) is run under ``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)``
several times; the report gives the median execution time and the index
access nodes of the plan. The claim is an UPDATE, so it runs inside a
transaction that is rolled back. The same statements then run against a
copy of the table that carries the origin story's indexes instead (parsed
from the packaged 0001 migration), and once more with the library's partial
queue index added to the story's indexes (the planner trap).

Then (bench_sizes.py) ``job_results`` gets a row per completed job, every
relation of both tables is measured (the sizes docs/scaling.md scales per
million jobs), the tables are copied into day partitions to compare plans,
and retention by the library's batched delete is measured against dropping
the day partitions holding the same rows.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql

from bench_common import (
    Context,
    Section,
    Table,
    connect_raw,
    fmt_int,
    fmt_ms,
    fmt_ratio,
    library_sql,
    migration_text,
    percentile,
    truncate_jobs,
)
from bench_sizes import (
    PARTITIONED,
    Partitioned,
    ResultStats,
    Retention,
    Sizes,
    build_partitioned,
    drop_partitioned,
    fill_results,
    measure_retention,
    measure_sizes,
    retention_cutoff,
    retention_table,
    sizes_table,
)
from cira_db import Database, JobRepository

__all__ = ["run_plans"]

LEASE = timedelta(minutes=15)
STORY_TABLE = "jobs_story"

SEED_SQL = """
INSERT INTO jobs (id, client_id, status, pdf_url, created_at, updated_at, completed_at,
                  error_message, attempts, lease_expires_at)
SELECT encode(set_byte(b.raw, 6, (get_byte(b.raw, 6) & 15) | 112), 'hex')::uuid,
       b.client_id,
       b.status,
       'https://files.example.com/' || b.client_id || '/' || b.n || '.pdf',
       b.created_at,
       CASE WHEN b.status IN ('completed', 'failed') THEN b.created_at + b.took
            ELSE b.created_at END,
       CASE WHEN b.status = 'completed' THEN b.created_at + b.took END,
       CASE WHEN b.status = 'failed' THEN 'download failed: HTTP 404' END,
       CASE WHEN b.status = 'queued' THEN 0 ELSE 1 END,
       CASE WHEN b.status = 'processing' THEN now() + interval '15 minutes' END
FROM (
    SELECT g.*,
           overlay(uuid_send(gen_random_uuid())
                   PLACING substring(int8send((extract(epoch FROM g.created_at) * 1000)::bigint)
                                     FROM 3)
                   FROM 1 FOR 6) AS raw
    FROM (
        SELECT n,
               now() - (%(total)s - n) * (interval '30 days' / %(total)s) AS created_at,
               'client-' || lpad(floor(%(clients)s * power(random(), 3))::int::text, 4, '0')
                   AS client_id,
               (CASE WHEN n > %(total)s - %(queued)s THEN 'queued'
                     WHEN n > %(total)s - %(queued)s - %(processing)s THEN 'processing'
                     WHEN random() < 0.08 THEN 'failed'
                     ELSE 'completed' END)::job_status AS status,
               make_interval(secs => 20 + 280 * random()) AS took
        FROM generate_series(1, %(total)s) AS n
    ) AS g
) AS b
ORDER BY b.n
"""

SECONDARY_INDEXES = """
SELECT c.relname, pg_get_indexdef(i.indexrelid)
FROM pg_index AS i
JOIN pg_class AS c ON c.oid = i.indexrelid
WHERE i.indrelid = 'jobs'::regclass
  AND NOT i.indisprimary
  AND NOT EXISTS (SELECT 1 FROM pg_constraint AS k WHERE k.conindid = i.indexrelid)
ORDER BY c.relname
"""

_STORY_INDEX = re.compile(r"CREATE INDEX IF NOT EXISTS (idx_jobs_\w+) ON jobs \(([^)]*)\)")


@dataclass
class Query:
    label: str
    sql: str
    params: dict[str, Any]
    rollback: bool = False


@dataclass
class PlanResult:
    runs: list[float] = field(default_factory=list)
    planning: list[float] = field(default_factory=list)
    access: list[str] = field(default_factory=list)
    removed: int = 0
    buffers: int = 0
    text: str = ""

    @property
    def median_ms(self) -> float:
        return statistics.median(self.runs)


def _walk(node: dict[str, Any], out: list[dict[str, Any]]) -> None:
    out.append(node)
    for child in node.get("Plans", []):
        _walk(child, out)


def _summarise(plan: dict[str, Any], result: PlanResult) -> None:
    """Index access nodes, rows removed by filters and buffers touched, from a JSON plan."""
    nodes: list[dict[str, Any]] = []
    _walk(plan["Plan"], nodes)
    access: list[str] = []
    removed = 0
    top = plan["Plan"]
    # The top node's counters cover the whole execution, subplans and CTEs included.
    buffers = int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0))
    for node in nodes:
        kind = str(node["Node Type"])
        if "Index Name" in node:
            fetches = (
                f" ({int(node.get('Heap Fetches', 0)):,} heap fetches)" if "Only" in kind else ""
            )
            access.append(f"{kind} `{node['Index Name']}`{fetches}")
        elif kind == "Seq Scan":
            access.append(f"Seq Scan `{node.get('Relation Name', '?')}`")
        removed += int(node.get("Rows Removed by Filter", 0))
    result.access = list(dict.fromkeys(access))
    result.removed = removed
    result.buffers = buffers


def _explain(conn: psycopg.Connection[Any], query: Query, runs: int) -> PlanResult:
    result = PlanResult()
    statement = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query.sql
    text_statement = "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + query.sql
    for attempt in range(runs + 1):  # the first run warms the cache and is not counted
        with conn.transaction(force_rollback=query.rollback):
            row = conn.execute(statement, query.params).fetchone()
        assert row is not None
        plan = row[0][0]
        if attempt > 0:
            result.runs.append(float(plan["Execution Time"]))
            result.planning.append(float(plan["Planning Time"]))
        if attempt == runs:
            _summarise(plan, result)
    with conn.transaction(force_rollback=query.rollback):
        lines = conn.execute(text_statement, query.params).fetchall()
    result.text = "\n".join(str(line[0]) for line in lines)
    return result


def _on_table(query: Query, table: str) -> Query:
    return Query(query.label, re.sub(r"\bjobs\b", table, query.sql), query.params, query.rollback)


def _seed(conn: psycopg.Connection[Any], total: int, clients: int) -> dict[str, float]:
    """Fill ``jobs``; returns the seconds each step took."""
    steps: dict[str, float] = {}
    defs = conn.execute(SECONDARY_INDEXES).fetchall()
    for name, _definition in defs:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    conn.execute("SELECT setseed(0.42)")
    params = {
        "total": total,
        "clients": clients,
        "queued": total // 100,
        "processing": total // 1000,
    }
    start = time.perf_counter()
    conn.execute(SEED_SQL, params)
    steps["insert"] = time.perf_counter() - start
    start = time.perf_counter()
    for _name, definition in defs:
        conn.execute(definition)
    steps["indexes"] = time.perf_counter() - start
    start = time.perf_counter()
    conn.execute("VACUUM (ANALYZE) jobs")
    steps["vacuum"] = time.perf_counter() - start
    conn.execute("CHECKPOINT")
    return steps


def _story_copy(conn: psycopg.Connection[Any]) -> list[str]:
    """Copy jobs into jobs_story with the story's indexes; returns the index DDL used."""
    table = sql.Identifier(STORY_TABLE)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    conn.execute(
        sql.SQL("CREATE TABLE {} (LIKE jobs INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(
            table
        )
    )
    conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM jobs").format(table))
    conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(table))
    made: list[str] = []
    for name, columns in _STORY_INDEX.findall(migration_text("0001_initial_schema.sql")):
        cols = [sql.Identifier(c.strip()) for c in columns.split(",")]
        statement = sql.SQL("CREATE INDEX {} ON {} ({})").format(
            sql.Identifier(name), table, sql.SQL(", ").join(cols)
        )
        conn.execute(statement)
        made.append(f"`{name}` ({columns})")
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(table))
    conn.execute("CHECKPOINT")
    return made


def _add_queue_index(conn: psycopg.Connection[Any], defs: list[tuple[str, str]]) -> str | None:
    """Add the library's partial queue index to jobs_story; returns its name, or None."""
    for name, definition in defs:
        if "WHERE" in definition and "'queued'" in definition:
            new_name = f"{name}_story"
            statement = re.sub(r"\bON (\w+\.)?jobs\b", f"ON \\1{STORY_TABLE}", definition)
            statement = statement.replace(f"INDEX {name} ", f"INDEX {new_name} ", 1)
            conn.execute(statement)
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(STORY_TABLE)))
            return new_name
    return None


def _wall_times(url: str, large: str, typical: str, deep: int, runs: int) -> dict[str, list[float]]:
    """Milliseconds per library call on the large table (pooled, default prepares)."""
    times: dict[str, list[float]] = {}
    with Database(url) as db:
        jobs = JobRepository(db)
        first = jobs.list(client_id=typical, limit=50)
        cursor = first.next_cursor
        deep_cursor: str | None = None
        pages = max(1, deep // 1000)
        for _ in range(pages):
            page = jobs.list(client_id=large, limit=1000, cursor=deep_cursor)
            deep_cursor = page.next_cursor
        calls: dict[str, Callable[[], object]] = {
            "count": lambda: jobs.count_by_status(client_id=large),
            "first": lambda: jobs.list(client_id=typical, limit=50),
            "keyset": lambda: jobs.list(client_id=typical, limit=50, cursor=cursor),
            "deep": lambda: jobs.list(client_id=large, limit=50, cursor=deep_cursor),
            "claim": lambda: jobs.claim_next(lease=LEASE),  # last: it moves jobs
        }
        for key, call in calls.items():
            samples = []
            for _ in range(runs):
                start = time.perf_counter()
                call()
                samples.append((time.perf_counter() - start) * 1000)
            times[key] = samples
    return times


@dataclass
class AtScale:
    """Sizes, results, the day-partitioned copy and retention, measured after the plans."""

    results: ResultStats
    sizes: Sizes
    partitioned: Partitioned
    plans: list[tuple[Query, PlanResult, PlanResult]]
    retention: Retention


def _get_query(conn: psycopg.Connection[Any], client: str) -> Query:
    row = conn.execute(
        "SELECT id FROM jobs WHERE client_id = %s ORDER BY created_at LIMIT 1", (client,)
    ).fetchone()
    assert row is not None
    return Query(
        "`get` one job by id (`get_job`)",
        library_sql("jobs.sql", "get_job"),
        {"id": row[0], "client_id": client},
    )


def _at_scale(
    ctx: Context,
    defs: list[tuple[str, str]],
    queries: list[Query],
    total: int,
    typical: str,
    runs: int,
) -> AtScale:
    """Fill job_results, measure every size, then day partitions against the batched delete."""
    with connect_raw(ctx.url, prepare_threshold=None) as conn:
        conn.execute("SET maintenance_work_mem = '256MB'")
        ctx.log("plans: one result per completed job")
        results = fill_results(conn)
        sizes = measure_sizes(conn, total)
        cutoff = retention_cutoff(conn, total)
        ctx.log("plans: copying jobs and results into day partitions")
        partitioned = build_partitioned(conn, defs, cutoff)
        plans = []
        for q in [_get_query(conn, typical), *queries]:
            ctx.log(f"plans: EXPLAIN, one table against day partitions: {q.label.replace('`', '')}")
            plain = _explain(conn, q, runs)
            plans.append((q, plain, _explain(conn, _on_table(q, PARTITIONED), runs)))
        ctx.log("plans: retention, the batched delete against dropping partitions")
        retention = measure_retention(conn, ctx.url, cutoff, partitioned)
        drop_partitioned(conn)
    return AtScale(results, sizes, partitioned, plans, retention)


def _partition_plans_table(scale: AtScale, runs: int) -> Table:
    table = Table(
        [
            "query",
            "one table: ms",
            "planning ms",
            "buffers",
            "day partitions: ms",
            "planning ms",
            "buffers",
            "scan nodes (partitions)",
            "partitions \u00f7 one table",
        ],
        title=f"The same statements on `jobs` and on a copy in {scale.partitioned.partitions} "
        f"day partitions: median of {runs} runs (after one warm-up run)",
    )
    for q, plain, part in scale.plans:
        kinds = sorted({a.split(" `")[0] for a in part.access})
        table.add(
            q.label,
            fmt_ms(plain.median_ms),
            fmt_ms(statistics.median(plain.planning)),
            fmt_int(plain.buffers),
            fmt_ms(part.median_ms),
            fmt_ms(statistics.median(part.planning)),
            fmt_int(part.buffers),
            f"{len(part.access)} ({', '.join(kinds)})",
            fmt_ratio(
                (part.median_ms + statistics.median(part.planning))
                / (plain.median_ms + statistics.median(plain.planning))
            ),
        )
    return table


def _scale_notes(scale: AtScale, total: int) -> list[str]:
    r, res = scale.retention, scale.results
    heaps = ", ".join(
        f"`{t}` {r.heap_before[t] / 2**20:,.1f} MiB before and {r.heap_after[t] / 2**20:,.1f} MiB "
        "after"
        for t in r.heap_before
    )
    return [
        f"`job_results`: one row per completed job ({fmt_int(res.rows)} rows, filled in "
        f"{res.seconds:,.1f} s with `VACUUM (ANALYZE)`). Assumed `extracted_data`: an invoice "
        "(number, dates, currency, supplier with VAT id and address, subtotal, tax, total, page "
        "count) with 1 + floor(30 \u00b7 u\u00b3) line items (description, quantity, unit "
        f"price, amount); {fmt_int(res.with_text)} of them (about 2%) also keep the document's "
        "text (8 to 35 KB, random base64, which does not compress). JSON text per result: mean "
        f"{fmt_int(res.mean)} bytes, median {fmt_int(res.median)}, p99 {fmt_int(res.p99)}, "
        f"largest {fmt_int(res.largest)}; stored (`pg_column_size`, after TOAST compression) "
        f"{res.stored_ratio:.2f}\u00d7 the text.",
        "Sizes are a freshly loaded, vacuumed table: the floor. A live table also carries dead "
        "row versions and free space left by claim/complete updates between vacuums. "
        "Index entries are the planner's count after `VACUUM (ANALYZE)`. "
        + (
            ""
            if total == 1_000_000
            else '"MiB per 1,000,000 jobs" scales the measured size linearly by '
            f"1,000,000 / {fmt_int(total)}. "
        )
        + "A partial index grows with the rows its predicate keeps (queued, processing, "
        "ended), not with the table.",
        f"Retention: the cutoff is midnight (UTC) of the day holding the job at 1/10 of the "
        f"table; {fmt_int(r.jobs)} jobs were created before it. The day-partitioned copy "
        f"(built in {scale.partitioned.seconds:,.1f} s) uses primary keys `(id, created_at)` "
        "and `(id, job_created_at)`, a foreign key `(job_id, job_created_at)` to `(id, "
        "created_at)` with `ON DELETE CASCADE`, and the migrations' secondary indexes created "
        "on the parent. Each side starts after a `CHECKPOINT`. Heap sizes around the delete "
        f"and its `VACUUM`: {heaps}: the space is reused by later rows, not returned.",
    ]


def _size_headline(scale: AtScale, total: int) -> str:
    sizes, r = scale.sizes, scale.retention
    per_million = 1_000_000 / total
    jobs, results = sizes.totals["jobs"], sizes.totals["job_results"]
    return (
        f"Per 1,000,000 jobs (measured at {fmt_int(total)}): `jobs` "
        f"{jobs * per_million / 2**20:,.0f} MiB with its indexes, `job_results` "
        f"{results * per_million / 2**20:,.0f} MiB; retention deleted "
        f"{fmt_int(r.jobs / r.delete_seconds)} jobs/s in batches of 1,000 "
        f"({fmt_int(r.delete_wal / r.jobs)} WAL bytes per job) against "
        f"{r.drop_seconds:,.3f} s to drop the day partitions holding the same "
        f"{fmt_int(r.dropped_jobs)} jobs."
    )


def run_plans(ctx: Context) -> Section:
    total = 100_000 if ctx.quick else 1_000_000
    clients = 1000
    runs = 5 if ctx.quick else 9
    section = Section("plans", "4. Index plans at scale")
    truncate_jobs(ctx.url)
    with connect_raw(ctx.url, prepare_threshold=None) as conn:
        conn.execute("SET maintenance_work_mem = '256MB'")
        defs: list[tuple[str, str]] = [
            (str(r[0]), str(r[1])) for r in conn.execute(SECONDARY_INDEXES).fetchall()
        ]
        ctx.log(f"plans: seeding {fmt_int(total)} jobs across {fmt_int(clients)} clients")
        steps = _seed(conn, total, clients)
        sizes = conn.execute(
            "SELECT client_id, count(*) FROM jobs GROUP BY client_id ORDER BY count(*), client_id"
        ).fetchall()
        large, large_n = sizes[-1]
        typical, typical_n = sizes[len(sizes) // 2]
        status_rows = conn.execute(
            "SELECT status::text, count(*) FROM jobs GROUP BY status ORDER BY status"
        ).fetchall()
        mix = {str(s): int(n) for s, n in status_rows}
        deep = min(50_000, int(large_n) // 2)
        after_typ = conn.execute(
            "SELECT created_at, id FROM jobs WHERE client_id = %s "
            "ORDER BY created_at DESC, id DESC OFFSET 49 LIMIT 1",
            (typical,),
        ).fetchone()
        after_deep = conn.execute(
            "SELECT created_at, id FROM jobs WHERE client_id = %s "
            "ORDER BY created_at DESC, id DESC OFFSET %s LIMIT 1",
            (large, deep - 1),
        ).fetchone()
        assert after_typ is not None
        assert after_deep is not None
        list_sql = library_sql("jobs.sql", "list_jobs")
        queries = [
            Query(
                "claim the oldest queued job (`claim_jobs`, limit 1)",
                library_sql("jobs.sql", "claim_jobs"),
                {"limit": 1, "lease": LEASE},
                rollback=True,
            ),
            Query(
                f"`count_by_status`, largest client ({fmt_int(large_n)} jobs)",
                library_sql("jobs.sql", "count_jobs_by_status"),
                {"client_id": large},
            ),
            Query(
                f"`list` newest 50, median-size client ({fmt_int(typical_n)} jobs)",
                list_sql,
                {"client_id": typical, "after_created_at": None, "after_id": None, "limit": 51},
            ),
            Query(
                "`list` keyset page 2, same client",
                list_sql,
                {
                    "client_id": typical,
                    "after_created_at": after_typ[0],
                    "after_id": after_typ[1],
                    "limit": 51,
                },
            ),
            Query(
                f"`list` keyset page after {fmt_int(deep)} rows, largest client",
                list_sql,
                {
                    "client_id": large,
                    "after_created_at": after_deep[0],
                    "after_id": after_deep[1],
                    "limit": 51,
                },
            ),
        ]
        results: dict[str, list[PlanResult]] = {"library": [], "story": [], "trap": []}
        for q in queries:
            ctx.log(f"plans: EXPLAIN {q.label.replace('`', '')}")
            results["library"].append(_explain(conn, q, runs))
        ctx.log("plans: copying the table with the story's indexes")
        start = time.perf_counter()
        story_indexes = _story_copy(conn)
        steps["story copy"] = time.perf_counter() - start
        for q in queries:
            ctx.log(f"plans: EXPLAIN on story indexes: {q.label.replace('`', '')}")
            results["story"].append(_explain(conn, _on_table(q, STORY_TABLE), runs))
        queue_index = _add_queue_index(conn, defs)
        if queue_index is not None:
            results["trap"].append(_explain(conn, _on_table(queries[0], STORY_TABLE), runs))
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(STORY_TABLE)))
    ctx.log("plans: library calls on the large table")
    wall_runs = 10 if ctx.quick else 30
    wall = _wall_times(ctx.url, str(large), str(typical), deep, wall_runs)
    scale = _at_scale(ctx, defs, [queries[0], queries[2], queries[4]], total, str(typical), runs)

    main = Table(
        [
            "query",
            "library indexes: ms",
            "index used",
            "rows filtered out",
            "buffers",
            "story's indexes: ms",
            "index used",
            "rows filtered out",
            "story \u00f7 library",
        ],
        title=f"EXPLAIN (ANALYZE, BUFFERS): median execution time of {runs} runs "
        "(after one warm-up run)",
    )
    for i, q in enumerate(queries):
        lib, story = results["library"][i], results["story"][i]
        main.add(
            q.label,
            fmt_ms(lib.median_ms),
            ", ".join(lib.access) or "(none)",
            fmt_int(lib.removed),
            fmt_int(lib.buffers),
            fmt_ms(story.median_ms),
            ", ".join(story.access) or "(none)",
            fmt_int(story.removed),
            fmt_ratio(story.median_ms / lib.median_ms),
        )
    tables = [main]
    if results["trap"]:
        trap = results["trap"][0]
        story_claim = results["story"][0]
        t = Table(
            ["claim on the story's indexes", "ms", "index used", "rows filtered out"],
            title="The planner trap: the story's indexes plus the library's partial queue index",
        )
        t.add(
            "story's indexes only",
            fmt_ms(story_claim.median_ms),
            ", ".join(story_claim.access),
            fmt_int(story_claim.removed),
        )
        t.add(
            f"story's indexes + `{queue_index}`",
            fmt_ms(trap.median_ms),
            ", ".join(trap.access),
            fmt_int(trap.removed),
        )
        tables.append(t)
        chose_partial = any(f"`{queue_index}`" in a for a in trap.access)
        section.notes.append(
            "Migration 0002 drops the story's `idx_jobs_created_at` because a planner was seen "
            "claiming through it, walking past every finished row, while the partial queue index "
            "existed. Here, with the library's claim statement (`ORDER BY created_at, id`) on "
            "the story's indexes plus the partial queue index, right after `VACUUM (ANALYZE)` "
            "with the newest 1% queued, the planner used "
            + ", ".join(trap.access)
            + f" and filtered out {fmt_int(trap.removed)} rows"
            + (
                ": the trap did not show in this state."
                if chose_partial
                else ": the trap showed in this run."
            )
        )
    else:
        section.skipped.append(
            "The planner-trap check: no partial queue index was found among the migrations' "
            "indexes, so it was not run."
        )

    calls = Table(
        ["library call (pooled `Database`, default prepares)", "n", "median ms", "p99 ms"],
        title=f"Wall time of the library's own calls on the {fmt_int(total)}-row table",
    )
    labels = {
        "claim": "`jobs.claim_next` (leaves the job processing)",
        "count": f"`jobs.count_by_status`, largest client ({fmt_int(large_n)} jobs)",
        "first": "`jobs.list` newest 50, median-size client",
        "keyset": "`jobs.list` keyset page 2, same client",
        "deep": f"`jobs.list` keyset page after {fmt_int(deep)} rows, largest client",
    }
    for key, label in labels.items():
        vals = wall[key]
        calls.add(
            label,
            fmt_int(len(vals)),
            fmt_ms(statistics.median(vals)),
            fmt_ms(percentile(vals, 0.99)),
        )
    tables.append(calls)
    tables += [
        sizes_table(scale.sizes),
        _partition_plans_table(scale, runs),
        retention_table(scale.retention, scale.partitioned),
    ]
    section.tables = tables
    section.notes += _scale_notes(scale, total)

    mix_text = ", ".join(f"{fmt_int(n)} {s}" for s, n in mix.items())
    section.intro = [
        f"`jobs` filled server-side with {fmt_int(total)} rows (one statement over "
        f"`generate_series`, {fmt_int(total / steps['insert'])} rows/s with only the primary key; "
        f"the migrations' {len(defs)} secondary indexes dropped first and rebuilt from their own "
        f"definitions in {steps['indexes']:.1f} s; then `VACUUM (ANALYZE)`). "
        f"{fmt_int(clients)} clients of very uneven size (client number = "
        f"floor({clients} \u00b7 u\u00b3) for uniform u); the newest 1% queued, "
        f"the 0.1% before them processing; status mix: {mix_text}. Ids are time-ordered "
        "(UUIDv7 layout built from `created_at`). `job_results` stays empty until the plans "
        "and wall times are measured (none of those queries reads it); then it gets a row "
        "per completed job for the size and retention tables at the end.",
        "",
        "Each query is the library's statement text (from the packaged SQL) with bound "
        'parameters, so the plan is the custom plan for those values. "index used" lists '
        'the plan\'s index access nodes, "rows filtered out" sums *Rows Removed by Filter*, '
        '"buffers" counts shared pages hit or read during execution (the top plan node\'s '
        "count, which includes subplans). The claim runs in a transaction that is rolled "
        "back, so every run sees the same queue. The story's indexes "
        f"({', '.join(story_indexes)}, parsed from the packaged 0001 migration) are measured "
        f"on a copy of the table (`{STORY_TABLE}`, same rows, primary key, `VACUUM (ANALYZE)`).",
    ]
    section.notes.append(
        "The wall-time table runs the library calls themselves (prepared after 5 executions, "
        "so later calls may use a generic plan): compare it with the EXPLAIN times to see "
        "the round trips and Python around each statement."
    )
    details = ["<details><summary>Plans (text, last run, costs off)</summary>", ""]
    for name, group in (
        ("library indexes", results["library"]),
        ("story's indexes", results["story"]),
    ):
        for q, r in zip(queries, group, strict=True):
            details += [f"{q.label} \u2014 {name}:", "", "```", r.text, "```", ""]
    if results["trap"]:
        details += [
            f"claim \u2014 story's indexes + `{queue_index}`:",
            "",
            "```",
            results["trap"][0].text,
            "```",
            "",
        ]
    details += ["</details>", ""]
    section.extra_markdown = details

    lib_claim, story_claim = results["library"][0], results["story"][0]
    lib_count, story_count = results["library"][1], results["story"][1]
    section.headlines = [
        f"At {fmt_int(total)} jobs: claim the oldest queued job {fmt_ms(lib_claim.median_ms)} ms "
        f"({', '.join(lib_claim.access)}) against {fmt_ms(story_claim.median_ms)} ms on the "
        f"story's indexes ({', '.join(story_claim.access)}); count by status for the largest "
        f"client {fmt_ms(lib_count.median_ms)} ms against {fmt_ms(story_count.median_ms)} ms.",
        _size_headline(scale, total),
    ]
    truncate_jobs(ctx.url)
    return section
