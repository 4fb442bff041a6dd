"""Benchmark 4, second half: what a large table weighs, and what retention costs.

Run by `bench_plans.run_plans` on its table of 1,000,000 jobs (100,000 in a
quick run), after its plans and wall times:

1. ``job_results`` gets one row per completed job, built server-side with
   invoice-like ``extracted_data`` (`RESULTS_SQL` says what was assumed),
   then ``VACUUM (ANALYZE)``;
2. the size of every relation of both tables: heap, free-space and
   visibility maps, TOAST, every index (with its number of entries), so
   docs/scaling.md can scale them per million jobs;
3. retention: the oldest tenth of the jobs copied into a table partitioned
   by day on ``created_at``; the library's batched delete
   (`JobRepository.delete_finished_before`, batches of 1,000) removes them
   from ``jobs`` (their results by cascade) while dropping the partitions
   that hold the same rows removes them from the copy, each with its time
   and WAL; then ``VACUUM`` and the heap sizes again.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from bench_common import Table, fmt_int
from cira_db import Database, JobRepository

__all__ = [
    "Partitioned",
    "ResultStats",
    "Retention",
    "Sizes",
    "build_partitioned",
    "drop_partitioned",
    "fill_results",
    "measure_retention",
    "measure_sizes",
    "retention_cutoff",
    "retention_table",
    "sizes_table",
]

MIB = 1024 * 1024
MAX_ITEMS = 30
"""Line items per result: 1 + floor(MAX_ITEMS * u^3) for uniform u (median 4, mean 8.5)."""
RAW_TEXT_SHARE = 0.02
"""Share of results that also keep the document's text (8 to 35 KB of it)."""
SLICE = 10
"""Retention removes the jobs of the days before the one holding the job at 1/SLICE."""

RESULTS_SQL = """
WITH done AS MATERIALIZED (
    SELECT id, client_id, completed_at,
           1 + floor(%(max_items)s * power(random(), 3))::int AS items,
           CASE WHEN random() < %(raw_share)s THEN 100 + floor(300 * random())::int
                ELSE 0 END AS text_chunks
    FROM jobs
    WHERE status = 'completed'
)
INSERT INTO job_results (id, job_id, extracted_data, confidence_score, tokens_used, created_at)
SELECT encode(set_byte(b.raw, 6, (get_byte(b.raw, 6) & 15) | 112), 'hex')::uuid,
       b.id, b.data, b.confidence, b.tokens, b.completed_at
FROM (
    SELECT d.id, d.completed_at,
           overlay(uuid_send(gen_random_uuid())
                   PLACING substring(int8send((extract(epoch FROM d.completed_at) * 1000)::bigint)
                                     FROM 3)
                   FROM 1 FOR 6) AS raw,
           jsonb_build_object(
               'document_type', 'invoice',
               'invoice_number', 'INV-' || upper(substr(md5(d.id::text), 1, 10)),
               'issue_date', to_char(d.completed_at - interval '9 days', 'YYYY-MM-DD'),
               'due_date', to_char(d.completed_at + interval '21 days', 'YYYY-MM-DD'),
               'currency', 'EUR',
               'supplier', jsonb_build_object(
                   'name', 'Supplier ' || upper(substr(md5(d.client_id), 1, 6)) || ' GmbH',
                   'vat_id', 'DE' || (100000000 + floor(899999999 * random()))::bigint,
                   'address', (1 + floor(200 * random()))::int || ' Industriestrasse, '
                              || (10000 + floor(89999 * random()))::int || ' Berlin'),
               'line_items', lines.items,
               'subtotal', lines.subtotal,
               'tax', round(lines.subtotal * 0.19, 2),
               'total', round(lines.subtotal * 1.19, 2),
               'page_count', 1 + d.items / 12)
           || CASE WHEN d.text_chunks > 0 THEN jsonb_build_object('raw_text', body.text)
                   ELSE '{}'::jsonb END AS data,
           round((0.55 + 0.44 * random())::numeric, 2) AS confidence,
           (400 + d.items * 90 + d.text_chunks * 30 + floor(200 * random()))::int AS tokens
    FROM done AS d
    CROSS JOIN LATERAL (
        SELECT jsonb_agg(jsonb_build_object(
                   'description', i.word || ' ' || upper(substr(md5(random()::text), 1, 8)),
                   'quantity', i.quantity,
                   'unit_price', i.price,
                   'amount', i.quantity * i.price) ORDER BY i.k) AS items,
               sum(i.quantity * i.price) AS subtotal
        FROM (
            SELECT g.k,
                   (ARRAY['Consulting services', 'Office chairs', 'Printer toner',
                          'Software licence', 'Freight', 'Maintenance contract',
                          'Laptop stand', 'Travel expenses'])[1 + floor(8 * random())::int]
                       AS word,
                   (1 + floor(12 * random()))::int AS quantity,
                   round((5 + 495 * random())::numeric, 2) AS price
            FROM generate_series(1, d.items) AS g(k)
        ) AS i
    ) AS lines
    CROSS JOIN LATERAL (
        SELECT string_agg('Page text ' || t.k || ': '
                          || encode(sha512((random()::text || d.id::text)::bytea), 'base64'),
                          ' ') AS text
        FROM generate_series(1, d.text_chunks) AS t(k)
    ) AS body
) AS b
ORDER BY b.completed_at
"""

RESULT_STATS_SQL = """
SELECT count(*),
       avg(octet_length(extracted_data::text)),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY octet_length(extracted_data::text)),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY octet_length(extracted_data::text)),
       max(octet_length(extracted_data::text)),
       sum(pg_column_size(extracted_data))::float8
           / nullif(sum(octet_length(extracted_data::text)), 0),
       count(*) FILTER (WHERE extracted_data ? 'raw_text')
FROM job_results
"""

RELATIONS_SQL = """
SELECT t.relname,
       pg_relation_size(t.oid, 'main'),
       pg_relation_size(t.oid, 'fsm') + pg_relation_size(t.oid, 'vm'),
       coalesce(pg_total_relation_size(nullif(t.reltoastrelid, 0)), 0),
       pg_total_relation_size(t.oid)
FROM pg_class AS t
WHERE t.oid = %(table)s::regclass
"""

INDEXES_SQL = """
SELECT c.relname, pg_relation_size(c.oid), c.reltuples::bigint,
       pg_get_expr(i.indpred, i.indrelid) IS NOT NULL
FROM pg_index AS i
JOIN pg_class AS c ON c.oid = i.indexrelid
WHERE i.indrelid = %(table)s::regclass
ORDER BY c.relname
"""


@dataclass
class Part:
    """One relation's size: a heap, its maps, its TOAST, or one index."""

    table: str
    name: str
    kind: str
    size: int
    entries: int | None = None


@dataclass
class Sizes:
    """Every part of ``jobs`` and ``job_results``, plus each table's total and row count."""

    jobs: int
    parts: list[Part]
    totals: dict[str, int]
    rows: dict[str, int]


@dataclass
class ResultStats:
    """What the generated ``extracted_data`` looks like (JSON text bytes)."""

    rows: int
    mean: float
    median: float
    p99: float
    largest: int
    stored_ratio: float
    with_text: int
    seconds: float


def fill_results(conn: psycopg.Connection[Any]) -> ResultStats:
    """One result per completed job (see `RESULTS_SQL`), then VACUUM (ANALYZE)."""
    conn.execute("SELECT setseed(0.17)")
    start = time.perf_counter()
    conn.execute(RESULTS_SQL, {"max_items": MAX_ITEMS, "raw_share": RAW_TEXT_SHARE})
    conn.execute("VACUUM (ANALYZE) job_results")
    seconds = time.perf_counter() - start
    row = conn.execute(RESULT_STATS_SQL).fetchone()
    assert row is not None
    return ResultStats(
        rows=int(row[0]),
        mean=float(row[1] or 0),
        median=float(row[2] or 0),
        p99=float(row[3] or 0),
        largest=int(row[4] or 0),
        stored_ratio=float(row[5] or 0),
        with_text=int(row[6]),
        seconds=seconds,
    )


def measure_sizes(conn: psycopg.Connection[Any], jobs: int) -> Sizes:
    """The size of every part of both tables, read from the catalog."""
    parts: list[Part] = []
    totals: dict[str, int] = {}
    rows: dict[str, int] = {}
    for table in ("jobs", "job_results"):
        rel = conn.execute(RELATIONS_SQL, {"table": table}).fetchone()
        assert rel is not None
        count = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        ).fetchone()
        assert count is not None
        rows[table] = int(count[0])
        parts.append(Part(table, table, "heap", int(rel[1]), rows[table]))
        parts.append(Part(table, f"{table} (free space + visibility maps)", "maps", int(rel[2])))
        parts.append(Part(table, f"{table} (TOAST table and its index)", "toast", int(rel[3])))
        for name, size, entries, partial in conn.execute(INDEXES_SQL, {"table": table}):
            kind = "partial index" if partial else "index"
            parts.append(Part(table, str(name), kind, int(size), max(int(entries), 0)))
        totals[table] = int(rel[4])
    return Sizes(jobs=jobs, parts=parts, totals=totals, rows=rows)


def _mib(size: float) -> str:
    return f"{size / MIB:,.1f}" if size >= MIB else f"{size / MIB:,.3f}"


def sizes_table(sizes: Sizes) -> Table:
    """The size table of the report: each part, its size and its size per million jobs."""
    scale = 1_000_000 / sizes.jobs
    table = Table(
        [
            "relation",
            "kind",
            "entries",
            f"MiB at {fmt_int(sizes.jobs)} jobs",
            "MiB per 1,000,000 jobs",
            "bytes per entry",
        ],
        title=f"Table and index sizes at {fmt_int(sizes.jobs)} jobs and "
        f"{fmt_int(sizes.rows['job_results'])} results (after `VACUUM (ANALYZE)`)",
    )
    for part in sizes.parts:
        per_entry = (
            fmt_int(part.size / part.entries) if part.entries else "\u2013"
        )  # an empty partial index has no entries to divide by
        table.add(
            f"`{part.name}`",
            part.kind,
            fmt_int(part.entries) if part.entries is not None else "\u2013",
            _mib(part.size),
            _mib(part.size * scale),
            per_entry,
        )
    for name, total in sizes.totals.items():
        table.add(
            f"**`{name}` total** (`pg_total_relation_size`)",
            "all",
            fmt_int(sizes.rows[name]),
            _mib(total),
            _mib(total * scale),
            fmt_int(total / sizes.rows[name]) if sizes.rows[name] else "\u2013",
        )
    both = sum(sizes.totals.values())
    table.add("**both tables**", "all", "\u2013", _mib(both), _mib(both * scale), "\u2013")
    return table


# -- retention: the batched delete against day partitions -----------------------------

PARTITIONED = "jobs_by_day"
PARTITIONED_RESULTS = "job_results_by_day"


@dataclass
class Partitioned:
    """The partitioned copy: how many day partitions, how many end before the cutoff."""

    days: list[datetime]
    old: int
    seconds: float

    @property
    def partitions(self) -> int:
        return len(self.days)


@dataclass
class Retention:
    """The batched delete against dropping day partitions, on the same rows."""

    jobs: int
    results: int
    delete_seconds: float
    delete_wal: int
    vacuum_seconds: float
    vacuum_wal: int
    heap_before: dict[str, int]
    heap_after: dict[str, int]
    dropped_jobs: int
    drop_seconds: float
    drop_wal: int


def _one(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def retention_cutoff(conn: psycopg.Connection[Any], total: int) -> datetime:
    """Midnight (UTC) of the day of the job at 1/SLICE of the table, oldest first."""
    cutoff: datetime = _one(
        conn,
        "SELECT date_trunc('day', created_at, 'UTC') FROM jobs "
        "ORDER BY created_at OFFSET %s LIMIT 1",
        (total // SLICE,),
    )
    return cutoff


def _days(conn: psycopg.Connection[Any]) -> list[datetime]:
    rows = conn.execute(
        "SELECT generate_series(date_trunc('day', min(created_at), 'UTC'), "
        "date_trunc('day', max(created_at), 'UTC'), interval '1 day') FROM jobs"
    ).fetchall()
    return [r[0] for r in rows]


def _make_partitions(conn: psycopg.Connection[Any], days: list[datetime]) -> None:
    parent, results = sql.Identifier(PARTITIONED), sql.Identifier(PARTITIONED_RESULTS)
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (LIKE jobs INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
            "PARTITION BY RANGE (created_at)"
        ).format(parent)
    )
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (LIKE job_results INCLUDING DEFAULTS INCLUDING CONSTRAINTS, "
            "job_created_at timestamptz NOT NULL) PARTITION BY RANGE (job_created_at)"
        ).format(results)
    )
    for day in days:
        for table in (PARTITIONED, PARTITIONED_RESULTS):
            conn.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(f"{table}_{day:%Y%m%d}"),
                    sql.Identifier(table),
                    sql.Literal(day),
                    sql.Literal(day + timedelta(days=1)),
                )
            )


def build_partitioned(
    conn: psycopg.Connection[Any], defs: list[tuple[str, str]], cutoff: datetime
) -> Partitioned:
    """``jobs`` and ``job_results`` copied into day partitions (range on the job's creation).

    The primary keys gain the partition key (``(id, created_at)``, and
    ``(id, job_created_at)`` for results, which carry their job's creation
    time), the foreign key references ``(id, created_at)``, and each of the
    migrations' secondary indexes is created on the parent (so on every
    partition) from its own definition.
    """
    start = time.perf_counter()
    days = _days(conn)
    _make_partitions(conn, days)
    parent, results = sql.Identifier(PARTITIONED), sql.Identifier(PARTITIONED_RESULTS)
    conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM jobs ORDER BY created_at").format(parent))
    conn.execute(
        sql.SQL(
            "INSERT INTO {} SELECT r.*, j.created_at FROM job_results AS r "
            "JOIN jobs AS j ON j.id = r.job_id ORDER BY r.created_at"
        ).format(results)
    )
    conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id, created_at)").format(parent))
    conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id, job_created_at)").format(results))
    conn.execute(
        sql.SQL(
            "ALTER TABLE {} ADD UNIQUE (job_id, job_created_at), "
            "ADD FOREIGN KEY (job_id, job_created_at) REFERENCES {} (id, created_at) "
            "ON DELETE CASCADE"
        ).format(results, parent)
    )
    for name, definition in defs:
        statement = re.sub(r"\bON (\w+\.)?jobs\b", f"ON \\1{PARTITIONED}", definition)
        conn.execute(statement.replace(f"INDEX {name} ", f"INDEX {name}_by_day ", 1))
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}, {}").format(parent, results))
    old = sum(1 for day in days if day + timedelta(days=1) <= cutoff)
    return Partitioned(days, old, time.perf_counter() - start)


def _old_days(partitioned: Partitioned, cutoff: datetime) -> list[datetime]:
    return [day for day in partitioned.days if day + timedelta(days=1) <= cutoff]


def _drop_old_partitions(conn: psycopg.Connection[Any], days: list[datetime]) -> None:
    """Detach and drop the day partitions of both tables, the referencing side first."""
    for day in days:
        for table in (PARTITIONED_RESULTS, PARTITIONED):
            part = sql.Identifier(f"{table}_{day:%Y%m%d}")
            conn.execute(
                sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(sql.Identifier(table), part)
            )
            conn.execute(sql.SQL("DROP TABLE {}").format(part))


def _heaps(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return {
        t: int(_one(conn, "SELECT pg_relation_size(%s::regclass)", (t,)))
        for t in ("jobs", "job_results")
    }


def _wal_since(conn: psycopg.Connection[Any], start: str) -> int:
    return int(
        _one(
            conn,
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s::pg_lsn)::bigint",
            (start,),
        )
    )


def measure_retention(
    conn: psycopg.Connection[Any], url: str, cutoff: datetime, partitioned: Partitioned
) -> Retention:
    """The library's batched delete of the jobs before ``cutoff``, then dropping partitions.

    Each side starts right after a CHECKPOINT (so both pay the same full-page
    writes); the drop side counts the jobs in the partitions it drops.
    """
    jobs = int(_one(conn, "SELECT count(*) FROM jobs WHERE created_at < %s", (cutoff,)))
    results = int(
        _one(
            conn,
            "SELECT count(*) FROM job_results AS r JOIN jobs AS j ON j.id = r.job_id "
            "WHERE j.created_at < %s",
            (cutoff,),
        )
    )
    heap_before = _heaps(conn)
    conn.execute("CHECKPOINT")
    lsn = str(_one(conn, "SELECT pg_current_wal_insert_lsn()::text"))
    start = time.perf_counter()
    with Database(url) as db:
        deleted = JobRepository(db).delete_finished_before(cutoff, batch_size=1000)
    delete_seconds = time.perf_counter() - start
    delete_wal = _wal_since(conn, lsn)
    assert deleted == jobs, f"deleted {deleted} of the {jobs} jobs before the cutoff"
    lsn = str(_one(conn, "SELECT pg_current_wal_insert_lsn()::text"))
    start = time.perf_counter()
    conn.execute("VACUUM jobs, job_results")
    vacuum_seconds = time.perf_counter() - start
    vacuum_wal = _wal_since(conn, lsn)
    heap_after = _heaps(conn)
    old = _old_days(partitioned, cutoff)
    dropped = sum(
        int(
            _one(
                conn,
                sql.SQL("SELECT count(*) FROM {}").format(
                    sql.Identifier(f"{PARTITIONED}_{day:%Y%m%d}")
                ),
            )
        )
        for day in old
    )
    conn.execute("CHECKPOINT")
    lsn = str(_one(conn, "SELECT pg_current_wal_insert_lsn()::text"))
    start = time.perf_counter()
    _drop_old_partitions(conn, old)
    drop_seconds = time.perf_counter() - start
    drop_wal = _wal_since(conn, lsn)
    return Retention(
        jobs=jobs,
        results=results,
        delete_seconds=delete_seconds,
        delete_wal=delete_wal,
        vacuum_seconds=vacuum_seconds,
        vacuum_wal=vacuum_wal,
        heap_before=heap_before,
        heap_after=heap_after,
        dropped_jobs=dropped,
        drop_seconds=drop_seconds,
        drop_wal=drop_wal,
    )


def drop_partitioned(conn: psycopg.Connection[Any]) -> None:
    for table in (PARTITIONED_RESULTS, PARTITIONED):
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


def retention_table(r: Retention, part: Partitioned) -> Table:
    table = Table(
        ["way", "jobs removed", "seconds", "jobs/s", "WAL MiB", "WAL bytes per job"],
        title=f"Retention: the jobs created before the cutoff ({fmt_int(r.jobs)} jobs, "
        f"{fmt_int(r.results)} results), deleted in batches against dropping "
        f"{part.old} of {part.partitions} day partitions holding the same rows",
    )
    table.add(
        "`jobs.delete_finished_before(cutoff, batch_size=1000)` (results by cascade)",
        fmt_int(r.jobs),
        f"{r.delete_seconds:,.2f}",
        fmt_int(r.jobs / r.delete_seconds),
        _mib(r.delete_wal),
        fmt_int(r.delete_wal / r.jobs) if r.jobs else "\u2013",
    )
    table.add(
        "then `VACUUM jobs, job_results` (makes the space reusable)",
        "\u2013",
        f"{r.vacuum_seconds:,.2f}",
        "\u2013",
        _mib(r.vacuum_wal),
        fmt_int(r.vacuum_wal / r.jobs) if r.jobs else "\u2013",
    )
    table.add(
        f"`DETACH PARTITION` + `DROP TABLE` of {part.old} day partitions of each table",
        fmt_int(r.dropped_jobs),
        f"{r.drop_seconds:,.3f}",
        fmt_int(r.dropped_jobs / r.drop_seconds) if r.drop_seconds else "\u2013",
        _mib(r.drop_wal),
        fmt_int(r.drop_wal / r.dropped_jobs) if r.dropped_jobs else "\u2013",
    )
    return table
