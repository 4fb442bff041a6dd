"""Benchmark 1: per-call latency, one call at a time, the library against raw psycopg.

Six variants of every operation run interleaved in blocks (library, raw and
raw on the library's pool, each with server-side prepares on and off), so
that drift in the machine's speed hits all of them alike and the ratios
compare like with like:

* ``Database(url, prepare_statements=True)`` (psycopg ``prepare_threshold=5``,
  the default off a proxy) and ``prepare_statements=False``
  (``prepare_threshold=None``, required behind RDS Proxy);
* one raw ``psycopg.connect(url, autocommit=True, prepare_threshold=...)``
  connection with the same setting, sending the same statement text with the
  same parameters, rows left as tuples;
* the same raw calls on a connection checked out of the `Database`'s own
  psycopg pool for each call (``with db.pool.connection()``): same SQL, same
  pool, so the ratio is what the library itself adds.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
from psycopg_pool import ConnectionPool

from bench_common import (
    Context,
    Samples,
    Section,
    Table,
    Target,
    connect_raw,
    encode_result,
    fmt_int,
    fmt_ratio,
    fmt_us,
    library_defaults,
    library_sql,
    pin_backends,
    uuid7,
)
from cira_db import Database, JobRepository, JobResultRepository, JobStatus

__all__ = ["run_latency"]

LEASE = timedelta(minutes=15)
DATA = {"document_type": "invoice", "total": 118.5, "currency": "EUR", "pages": 2}
SCORE = Decimal("0.93")
TOKENS = 1200
LIST_CLIENT = "lat-client"
QUEUE_CLIENT = "lat-queue"
CREATE_CLIENT = "lat-create"
SELECT_ONE = "`SELECT 1` (round-trip floor)"
GET = "`jobs.get`"
PAIR = "`jobs.claim_next` + `jobs.complete`"
FAIL_PAIR = "`jobs.claim_next` + `jobs.fail`"
ERROR = "unreadable PDF"

Call = Callable[[], object]
FLOOR_LABELS = {
    "raw": "raw autocommit connection",
    "pool": "`psycopg_pool.ConnectionPool`, no check",
    "checked": "`ConnectionPool(check=ConnectionPool.check_connection)`",
    "db": "`Database.connection()`",
}
RawConn = psycopg.Connection[Any]


def measure(variants: dict[str, Call], n: int, *, block: int, warmup: int) -> dict[str, Samples]:
    """Time ``n`` calls of each variant, one at a time, interleaved in blocks of ``block``."""
    for _ in range(warmup):
        for call in variants.values():
            call()
    samples = {name: Samples() for name in variants}
    clock = time.perf_counter_ns
    done = 0
    while done < n:
        size = min(block, n - done)
        for name, call in variants.items():
            out = samples[name].ns
            for _ in range(size):
                start = clock()
                call()
                out.append(clock() - start)
        done += size
    return samples


class _Fixture:
    """The data the latency calls work on, and both sides' handles."""

    def __init__(self, ctx: Context, *, list_jobs: int, queue_jobs: int) -> None:
        self.url = ctx.url
        self.db_on = Database(ctx.url, prepare_statements=True)
        self.db_off = Database(ctx.url, prepare_statements=False)
        self.db_on.open()
        self.db_off.open()
        self.raw_on = connect_raw(ctx.url, prepare_threshold=5)
        self.raw_off = connect_raw(ctx.url, prepare_threshold=None)
        setup = JobRepository(self.db_on)
        # The queue first: claims take the oldest queued job, so these go before
        # the listing client's jobs (which are then moved out of "queued").
        for start in range(0, queue_jobs, 50_000):
            urls = [
                f"https://files.example.com/q/{i}.pdf"
                for i in range(start, min(queue_jobs, start + 50_000))
            ]
            setup.create_many(client_id=QUEUE_CLIENT, pdf_urls=urls)
        setup.create_many(
            client_id=LIST_CLIENT,
            pdf_urls=[f"https://files.example.com/l/{i}.pdf" for i in range(list_jobs)],
        )
        with connect_raw(ctx.url, prepare_threshold=None) as conn:
            # A realistic mix for the listing client (benchmark set-up SQL, not the library's).
            conn.execute(
                """
                UPDATE jobs
                SET status = (CASE WHEN r < 0.85 THEN 'completed'
                                   WHEN r < 0.95 THEN 'failed' ELSE 'processing' END)::job_status,
                    completed_at = CASE WHEN r < 0.85 THEN created_at + interval '40 seconds' END,
                    error_message = CASE WHEN r >= 0.85 AND r < 0.95 THEN 'download failed' END,
                    lease_expires_at = CASE WHEN r >= 0.95 THEN now() + interval '15 minutes' END,
                    attempts = 1
                FROM (SELECT id AS rid, random() AS r FROM jobs WHERE client_id = %(c)s) AS pick
                WHERE jobs.id = pick.rid
                """,
                {"c": LIST_CLIENT},
            )
            conn.execute("VACUUM (ANALYZE) jobs")
            conn.execute("VACUUM (ANALYZE) job_results")
            rows = conn.execute(
                "SELECT id FROM jobs WHERE client_id = %(c)s ORDER BY random() LIMIT 1000",
                {"c": LIST_CLIENT},
            ).fetchall()
        self.job_ids: list[UUID] = [row[0] for row in rows]
        self.list_jobs = list_jobs
        self.completed: list[UUID] = []

    def close(self) -> None:
        self.raw_on.close()
        self.raw_off.close()
        self.db_on.close()
        self.db_off.close()


def _fetch_one(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()


def _fetch_all(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> list[Any]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


Factory = Callable[[], dict[str, Call]]


def _on_pool(plain: Callable[..., object], db: Database) -> Call:
    """``plain`` (a raw variant: its first parameter is the connection) on a connection
    checked out of ``db``'s own psycopg pool for each call: raw psycopg, same pool."""
    pool = db.pool
    assert pool is not None  # the fixture opened it

    def call() -> object:
        with pool.connection() as conn:
            return plain(conn)

    return call


def _with_pool(variants: dict[str, Call], fx: _Fixture) -> dict[str, Call]:
    """Add ``pool-on``/``pool-off``: each raw variant through the library's own pool."""
    for tag, db in (("on", fx.db_on), ("off", fx.db_off)):
        variants[f"pool-{tag}"] = _on_pool(variants[f"raw-{tag}"], db)
    return variants


def _operations(fx: _Fixture) -> list[tuple[str, str, Factory]]:
    """(label, what it does, variants factory) for every operation measured, in order.

    Factories run just before their operation is measured, so an operation can
    use what an earlier one left behind (results of the claim/complete pairs).
    """
    insert_job = library_sql("jobs.sql", "insert_job")
    get_job = library_sql("jobs.sql", "get_job")
    claim_jobs = library_sql("jobs.sql", "claim_jobs")
    complete_job = library_sql("jobs.sql", "complete_job")
    fail_job = library_sql("jobs.sql", "fail_job")
    get_result = library_sql("job_results.sql", "get_result_for_job")
    count_jobs = library_sql("jobs.sql", "count_jobs_by_status")
    list_jobs = library_sql("jobs.sql", "list_jobs")
    sides = [("on", fx.db_on, fx.raw_on), ("off", fx.db_off, fx.raw_off)]

    def select_one() -> dict[str, Call]:
        out: dict[str, Call] = {}
        for tag, db, raw in sides:

            def lib(db: Database = db) -> object:
                with db.connection() as conn:
                    return conn.execute("SELECT 1").fetchone()

            def plain(raw: RawConn = raw) -> object:
                return raw.execute("SELECT 1").fetchone()

            out[f"lib-{tag}"], out[f"raw-{tag}"] = lib, plain
        return out

    counter = itertools.count()

    def create() -> dict[str, Call]:
        out: dict[str, Call] = {}
        for tag, db, raw in sides:
            repo_ = JobRepository(db)

            def lib(repo: JobRepository = repo_) -> object:
                url = f"https://x.example/{next(counter)}.pdf"
                return repo.create(client_id=CREATE_CLIENT, pdf_url=url)

            def plain(raw: RawConn = raw) -> object:
                url = f"https://x.example/{next(counter)}.pdf"
                params = {
                    "id": uuid7(),
                    "client_id": CREATE_CLIENT,
                    "pdf_url": url,
                    "priority": 0,  # the values create() binds when none are given
                    "run_at": None,
                    "run_in": None,
                }
                return _fetch_one(raw, insert_job, params)

            out[f"lib-{tag}"], out[f"raw-{tag}"] = lib, plain
        return out

    def get() -> dict[str, Call]:
        out: dict[str, Call] = {}
        for tag, db, raw in sides:
            pick = itertools.cycle(fx.job_ids)

            repo_ = JobRepository(db)

            def lib(repo: JobRepository = repo_, pick: Any = pick) -> object:
                return repo.get(next(pick), client_id=LIST_CLIENT)

            def plain(raw: RawConn = raw, pick: Any = pick) -> object:
                return _fetch_one(raw, get_job, {"id": next(pick), "client_id": LIST_CLIENT})

            out[f"lib-{tag}"], out[f"raw-{tag}"] = lib, plain
        return out

    def pair() -> dict[str, Call]:
        out: dict[str, Call] = {}
        for tag, db, raw in sides:
            repo_ = JobRepository(db)

            def lib(repo: JobRepository = repo_) -> object:
                job = repo.claim_next(lease=LEASE)
                if job is None:
                    raise RuntimeError("the latency queue ran dry")
                result = repo.complete(
                    job.id, extracted_data=DATA, confidence_score=SCORE, tokens_used=TOKENS
                )
                fx.completed.append(result.job_id)
                return result

            def plain(raw: RawConn = raw) -> object:
                rows = _fetch_all(raw, claim_jobs, {"limit": 1, "lease": LEASE})
                if not rows:
                    raise RuntimeError("the latency queue ran dry")
                job_id = rows[0][0]
                params = {
                    "id": job_id,
                    "result_id": uuid7(),
                    "extracted_data": encode_result(DATA),
                    "confidence_score": SCORE,
                    "tokens_used": TOKENS,
                    "client_id": None,
                }
                row = _fetch_one(raw, complete_job, library_defaults(complete_job, params))
                fx.completed.append(job_id)
                return row

            out[f"lib-{tag}"], out[f"raw-{tag}"] = lib, plain
        return out

    def fail_pair() -> dict[str, Call]:
        out: dict[str, Call] = {}
        for tag, db, raw in sides:
            repo_ = JobRepository(db)

            def lib(repo: JobRepository = repo_) -> object:
                job = repo.claim_next(lease=LEASE)
                if job is None:
                    raise RuntimeError("the latency queue ran dry")
                return repo.fail(job.id, error_message=ERROR)

            def plain(raw: RawConn = raw) -> object:
                rows = _fetch_all(raw, claim_jobs, {"limit": 1, "lease": LEASE})
                if not rows:
                    raise RuntimeError("the latency queue ran dry")
                params = {"id": rows[0][0], "error_message": ERROR, "client_id": None}
                return _fetch_one(raw, fail_job, library_defaults(fail_job, params))

            out[f"lib-{tag}"], out[f"raw-{tag}"] = lib, plain
        return out

    def result() -> dict[str, Call]:
        out: dict[str, Call] = {}
        for tag, db, raw in sides:
            pick = itertools.cycle(fx.completed[:2000])

            results_ = JobResultRepository(db)

            def lib(results: JobResultRepository = results_, pick: Any = pick) -> object:
                return results.get_for_job(next(pick), client_id=QUEUE_CLIENT)

            def plain(raw: RawConn = raw, pick: Any = pick) -> object:
                params = {"job_id": next(pick), "client_id": QUEUE_CLIENT}
                return _fetch_one(raw, get_result, params)

            out[f"lib-{tag}"], out[f"raw-{tag}"] = lib, plain
        return out

    def count() -> dict[str, Call]:
        out: dict[str, Call] = {}
        for tag, db, raw in sides:
            repo_ = JobRepository(db)

            def lib(repo: JobRepository = repo_) -> object:
                return repo.count_by_status(client_id=LIST_CLIENT)

            def plain(raw: RawConn = raw) -> object:
                return _fetch_all(raw, count_jobs, {"client_id": LIST_CLIENT})

            out[f"lib-{tag}"], out[f"raw-{tag}"] = lib, plain
        return out

    def first_page() -> dict[str, Call]:
        params: dict[str, Any] = {
            "client_id": LIST_CLIENT,
            "after_created_at": None,
            "after_id": None,
            "limit": 51,
        }
        out: dict[str, Call] = {}
        for tag, db, raw in sides:
            repo_ = JobRepository(db)

            def lib(repo: JobRepository = repo_) -> object:
                return repo.list(client_id=LIST_CLIENT, limit=50)

            def plain(raw: RawConn = raw) -> object:
                return _fetch_all(raw, list_jobs, params)

            out[f"lib-{tag}"], out[f"raw-{tag}"] = lib, plain
        return out

    def keyset_page() -> dict[str, Call]:
        page = JobRepository(fx.db_on).list(client_id=LIST_CLIENT, limit=50)
        last = page.items[-1]
        cursor = page.next_cursor
        params: dict[str, Any] = {
            "client_id": LIST_CLIENT,
            "after_created_at": last.created_at,
            "after_id": last.id,
            "limit": 51,
        }
        out: dict[str, Call] = {}
        for tag, db, raw in sides:
            repo_ = JobRepository(db)

            def lib(repo: JobRepository = repo_) -> object:
                return repo.list(client_id=LIST_CLIENT, limit=50, cursor=cursor)

            def plain(raw: RawConn = raw) -> object:
                return _fetch_all(raw, list_jobs, params)

            out[f"lib-{tag}"], out[f"raw-{tag}"] = lib, plain
        return out

    return [
        (SELECT_ONE, "`db.connection()` + `execute`", select_one),
        ("`jobs.create`", "insert one job, `RETURNING`", create),
        (GET, "primary-key read scoped by client", get),
        (PAIR, "claim the oldest queued job, then complete it", pair),
        (FAIL_PAIR, "claim the oldest queued job, then fail it", fail_pair),
        ("`results.get_for_job`", "a result joined to its job, scoped", result),
        ("`jobs.count_by_status`", f"client with {fmt_int(fx.list_jobs)} jobs", count),
        ("`jobs.list` first page", "newest 50 of that client", first_page),
        ("`jobs.list` keyset page", "page 2, through the cursor", keyset_page),
    ]


def _floor_breakdown(fx: _Fixture, n: int, block: int, ready: Callable[[], None]) -> Table:
    """Where the per-call overhead of SELECT 1 goes: connection, pool, pool check, Database."""
    # Both pools copy the Database pool's sizes and lifetimes; only the check differs.
    model = fx.db_on.pool
    assert model is not None
    shape: dict[str, Any] = {
        "min_size": model.min_size,
        "max_size": model.max_size,
        "max_lifetime": model.max_lifetime,
        "max_idle": model.max_idle,
    }
    plain: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
        fx.url, kwargs={"autocommit": True}, open=True, **shape
    )
    checked: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
        fx.url,
        kwargs={"autocommit": True},
        check=ConnectionPool.check_connection,
        open=True,
        **shape,
    )
    try:
        plain.wait()
        checked.wait()
        ready()

        def via(pool: ConnectionPool[psycopg.Connection[Any]]) -> Call:
            def call() -> object:
                with pool.connection() as conn:
                    return conn.execute("SELECT 1").fetchone()

            return call

        def via_db() -> object:
            with fx.db_on.connection() as conn:
                return conn.execute("SELECT 1").fetchone()

        samples = measure(
            {
                "raw": lambda: fx.raw_on.execute("SELECT 1").fetchone(),
                "pool": via(plain),
                "checked": via(checked),
                "db": via_db,
            },
            n,
            block=min(block, 20),
            warmup=20,
        )
    finally:
        plain.close()
        checked.close()
    base = samples["raw"].median_us
    table = Table(
        ["`SELECT 1` through", "n", "median µs", "p99 µs", "vs raw connection"],
        title="Where the floor goes (same run, interleaved in blocks of "
        f"{min(block, 20)} calls; both pools sized like the `Database` pool)",
    )
    for key, label in FLOOR_LABELS.items():
        s = samples[key]
        table.add(
            label,
            fmt_int(s.n),
            fmt_us(s.median_us),
            fmt_us(s.p99_us),
            fmt_ratio(s.median_us / base),
        )
    return table


def _count_plan(fx: _Fixture) -> tuple[str, int, int, int]:
    """count_by_status for the listing client, now: (scans, heap fetches, rows removed, rows)."""
    statement = "EXPLAIN (ANALYZE, FORMAT JSON) " + library_sql("jobs.sql", "count_jobs_by_status")
    row = fx.raw_off.execute(statement, {"client_id": LIST_CLIENT}).fetchone()
    assert row is not None
    nodes = [row[0][0]["Plan"]]
    scans: list[str] = []
    fetches = removed = total = 0
    while nodes:
        node = nodes.pop()
        nodes += node.get("Plans", [])
        kind = str(node["Node Type"])
        if "Index Name" in node:
            scans.append(f"{kind} `{node['Index Name']}`")
        elif "Scan" in kind and "Relation Name" in node:
            scans.append(f"{kind} `{node['Relation Name']}`")
        fetches += int(node.get("Heap Fetches", 0))
        removed += int(node.get("Rows Removed by Filter", 0))
        if "Relation Name" in node or "Index Name" in node:
            total = max(total, int(node.get("Actual Rows", 0)))
    with fx.raw_off.cursor() as cur:
        cur.execute("SELECT count(*) FROM jobs")
        whole = cur.fetchone()
    return ", ".join(scans), fetches, removed, int(whole[0]) if whole else 0


def _placement(fx: _Fixture, cpu: int, other: int, n: int, block: int) -> Table:
    """Raw SELECT 1 with its backend on the client's CPU and on the other one, alternating."""
    row = fx.raw_on.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    pid = int(row[0])
    samples = {"same": Samples(), "other": Samples()}
    clock = time.perf_counter_ns
    try:
        for _ in range(0, n, block):
            for key, where in (("same", cpu), ("other", other)):
                os.sched_setaffinity(pid, {where})
                for _ in range(20):  # let the move settle
                    fx.raw_on.execute("SELECT 1").fetchone()
                for _ in range(block):
                    start = clock()
                    fx.raw_on.execute("SELECT 1").fetchone()
                    samples[key].ns.append(clock() - start)
    finally:
        os.sched_setaffinity(pid, {cpu})
    same, cross = samples["same"], samples["other"]
    table = Table(
        ["raw `SELECT 1`, client on CPU " + str(cpu), "n", "median µs", "p99 µs", "÷ same CPU"],
        title="Placement: the same round trip with the server backend on the client's CPU "
        "or on the other one",
    )
    table.add(
        f"backend on CPU {cpu} (same)",
        fmt_int(same.n),
        fmt_us(same.median_us),
        fmt_us(same.p99_us),
        fmt_ratio(1.0),
    )
    table.add(
        f"backend on CPU {other} (other)",
        fmt_int(cross.n),
        fmt_us(cross.median_us),
        fmt_us(cross.p99_us),
        fmt_ratio(cross.median_us / same.median_us),
    )
    return table


def _floor_note(rows: dict[str, list[str]]) -> str:
    """What the SELECT 1 breakdown says about per-checkout costs, from its own figures."""

    def median(label: str) -> float:
        return float(rows[label][2].replace(",", ""))

    raw = median(FLOOR_LABELS["raw"])
    plain = median(FLOOR_LABELS["pool"])
    checked = median(FLOOR_LABELS["checked"])
    db = median(FLOOR_LABELS["db"])
    check_cost, db_cost = checked - plain, db - plain
    caveat = ""
    if min(plain, checked, db) < raw:
        caveat = (
            " A pooled variant came out faster than the raw connection, which cannot be a real "
            "effect: differences of this size were within this run's noise."
        )
    text = (
        f"Breakdown (median differences): a pool checkout without a check: "
        f"{plain - raw:+,.1f} \u00b5s against a raw `SELECT 1`; checking every checkout "
        f"(`check_connection`, an empty query: one more round trip): {check_cost:+,.1f} \u00b5s "
        f"against the unchecked pool; `Database.connection()`: {db_cost:+,.1f} \u00b5s against "
        "the unchecked pool. "
    )
    if check_cost > 0 and db_cost >= 0.7 * check_cost:
        return text + (
            "`Database` costs about as much as a pool that checks every checkout, "
            "consistent with one extra round trip per call here." + caveat
        )
    if check_cost > 0 and db_cost <= 0.5 * check_cost:
        return text + (
            "`Database` costs less than a check on every checkout would, so with calls coming "
            "back to back it does not pay an extra round trip per call." + caveat
        )
    return text + "The figures do not separate the two cases clearly in this run." + caveat


def run_latency(ctx: Context) -> Section:
    n = 200 if ctx.quick else 2000
    block = 50 if ctx.quick else 100
    warmup = 20
    list_jobs = 2_000 if ctx.quick else 10_000
    queue_jobs = 8 * (n + warmup) + 500  # two pairs (complete, fail) x six variants
    section = Section("latency", "1. Per-call latency, one call at a time")
    ctx.log(f"latency: preparing {fmt_int(list_jobs)} + {fmt_int(queue_jobs)} jobs")
    fx = _Fixture(ctx, list_jobs=list_jobs, queue_jobs=queue_jobs)
    original = os.sched_getaffinity(0)
    cpus = sorted(original)
    pin_cpu = cpus[0] if len(cpus) >= 2 else None
    pin_problem = "" if pin_cpu is not None else "only one CPU is available to this process"

    def pin() -> None:
        nonlocal pin_problem
        if pin_cpu is None or pin_problem:
            return
        try:
            pin_backends(ctx.url, pin_cpu)
        except OSError as exc:
            pin_problem = f"{type(exc).__name__}: {exc}"
            os.sched_setaffinity(0, original)

    placement: Table | None = None
    try:
        results: list[tuple[str, str, dict[str, Samples]]] = []
        for label, what, factory in _operations(fx):
            ctx.log(f"latency: {label.replace('`', '')}")
            variants = _with_pool(factory(), fx)
            pin()
            results.append((label, what, measure(variants, n, block=block, warmup=warmup)))
        ctx.log("latency: SELECT 1 breakdown")
        floor = _floor_breakdown(fx, n, block, pin)
        if pin_cpu is not None and not pin_problem:
            ctx.log("latency: CPU placement")
            placement = _placement(fx, pin_cpu, cpus[1], n, block)
        # Sanity: the pair benchmark completed what it claimed, and nothing else.
        counts = JobRepository(fx.db_on).count_by_status(client_id=QUEUE_CLIENT)
        count_plan = _count_plan(fx)
        completed = fx.completed
    finally:
        os.sched_setaffinity(0, original)
        fx.close()

    section.intro = [
        "One call at a time from one Python thread. Every operation runs in six variants, "
        f"interleaved in blocks of {block} calls so that drift in machine speed hits all six "
        "alike: the library through a pooled `Database` (pool defaults: min 1, max 4 "
        "connections) with `prepare_statements=True` (psycopg `prepare_threshold=5`) and with "
        "`prepare_statements=False` (`prepare_threshold=None`, as behind RDS Proxy), and raw "
        "psycopg on one autocommit connection with the same prepare setting, sending **the same "
        "statement text with the same parameters** (read from the packaged "
        "`cira_db/sql/*.sql`), rows left as tuples; and the same raw calls on a connection "
        "checked out of the `Database`'s own psycopg pool for each call "
        "(`with db.pool.connection()`: same SQL, same pool, so that ratio is what the library "
        "adds on top of psycopg and psycopg_pool). "
        f"Each variant: {warmup} warm-up calls, then n timed calls; median and p99 (nearest "
        "rank) of the per-call wall time. Ratios are library \u00f7 raw medians from this run.",
        "",
        f"Data: the listing client `{LIST_CLIENT}` has {fmt_int(list_jobs)} jobs "
        "(about 85% completed, 10% failed, 5% processing); the claim + complete and "
        f"claim + fail pairs take jobs from a queue of {fmt_int(queue_jobs)} jobs created "
        "before them; `get_for_job` reads results the claim + complete pairs wrote.",
        "",
        (
            f"CPU placement: during every measurement the benchmark thread and all of this "
            f"database's server backends were pinned to CPU {pin_cpu}. On this machine a round "
            "trip between processes on two different CPUs costs far more than on one (see the "
            "placement table), and the scheduler keeps each connection wherever it first "
            "landed, so without pinning the variants' medians differ by where their backend "
            "happened to run rather than by what they do."
            if pin_cpu is not None and not pin_problem
            else f"CPU placement: not pinned ({pin_problem}); medians of different variants "
            "include whatever placement the scheduler chose for each connection."
        ),
    ]
    tables: list[Table] = []
    for tag, title in (
        (
            "on",
            "Server-side prepares on (`prepare_statements=True`, psycopg `prepare_threshold=5`)",
        ),
        ("off", "Server-side prepares off (`prepare_statements=False`, `prepare_threshold=None`)"),
    ):
        table = Table(
            [
                "operation",
                "n",
                "Database median µs",
                "p99 µs",
                "raw median µs",
                "p99 µs",
                "library ÷ raw",
                "extra µs",
                "raw on the same pool, median µs",
                "library ÷ raw on the pool",
            ],
            title=title,
        )
        for label, _what, samples in results:
            lib, raw = samples[f"lib-{tag}"], samples[f"raw-{tag}"]
            pooled = samples[f"pool-{tag}"]
            table.add(
                label,
                fmt_int(lib.n),
                fmt_us(lib.median_us),
                fmt_us(lib.p99_us),
                fmt_us(raw.median_us),
                fmt_us(raw.p99_us),
                fmt_ratio(lib.median_us / raw.median_us),
                fmt_us(lib.median_us - raw.median_us),
                fmt_us(pooled.median_us),
                fmt_ratio(lib.median_us / pooled.median_us),
            )
        tables.append(table)
    prep = Table(
        ["operation", "what", "Database off ÷ on", "raw off ÷ on"],
        title="Cost of turning prepares off (median ÷ median, same run)",
    )
    for label, what, samples in results:
        prep.add(
            label,
            what,
            fmt_ratio(samples["lib-off"].median_us / samples["lib-on"].median_us),
            fmt_ratio(samples["raw-off"].median_us / samples["raw-on"].median_us),
        )
    tables += [prep, floor]
    if placement is not None:
        tables.append(placement)
    section.tables = tables

    by_label = {label: samples for label, _w, samples in results}
    sel, pair, get = by_label[SELECT_ONE], by_label[PAIR], by_label[GET]
    floor_rows = {row[0]: row for row in floor.rows}
    lib_sel, raw_sel = sel["lib-on"].median_us, sel["raw-on"].median_us
    lib_get, raw_get = get["lib-on"].median_us, get["raw-on"].median_us
    lib_pair, raw_pair = pair["lib-on"].median_us, pair["raw-on"].median_us
    section.headlines = [
        f"`SELECT 1` through `Database`: {fmt_us(lib_sel)} \u00b5s median against "
        f"{fmt_us(raw_sel)} \u00b5s on a raw connection ({fmt_ratio(lib_sel / raw_sel)}).",
        f"`jobs.get`: {fmt_us(lib_get)} \u00b5s vs raw {fmt_us(raw_get)} \u00b5s "
        f"({fmt_ratio(lib_get / raw_get)}); claim + complete pair: {fmt_us(lib_pair)} \u00b5s "
        f"vs raw {fmt_us(raw_pair)} \u00b5s ({fmt_ratio(lib_pair / raw_pair)}).",
        "Prepares off, library \u00f7 raw psycopg on the same pool (target: at most 1.10\u00d7, "
        "a list page 1.3\u00d7): "
        + ", ".join(
            f"{label.replace('`', '')} "
            f"{fmt_ratio(samples['lib-off'].median_us / samples['pool-off'].median_us)}"
            for label, _what, samples in results
        )
        + ".",
    ]
    section.targets = [
        Target(
            f"{label} \u00f7 raw psycopg on the same pool, prepares off, median (section 1)",
            1.3 if "list" in label else 1.1,
            samples["lib-off"].median_us / samples["pool-off"].median_us,
            at_least=False,
            why=(
                f"{fmt_us(samples['lib-off'].median_us - samples['pool-off'].median_us)} \u00b5s "
                f"more per call (median {fmt_us(samples['lib-off'].median_us)} against "
                f"{fmt_us(samples['pool-off'].median_us)} \u00b5s): checking the arguments, "
                "observing the call and building typed rows."
            ),
        )
        for label, _what, samples in results
        if label != SELECT_ONE
    ]
    section.notes = [
        _floor_note(floor_rows),
        f"Plan of `count_by_status` for the listing client, taken after the measurements "
        f"(table then {fmt_int(count_plan[3])} rows): {count_plan[0]}, "
        f"{fmt_int(count_plan[1])} heap fetches, {fmt_int(count_plan[2])} rows removed by "
        "filter. The plan depends on how large a share of this small table the client holds; "
        "section 4 shows the same statement's plan on a large table.",
        "Check: after the pairs the queue client had "
        f"{fmt_int(counts[JobStatus.COMPLETED])} completed, "
        f"{fmt_int(counts[JobStatus.FAILED])} failed and "
        f"{fmt_int(counts[JobStatus.PROCESSING])} processing jobs "
        f"({fmt_int(len(completed))} claim + complete pairs ran, warm-up included; claims "
        "take the oldest queued job of any client, so some came from the jobs `jobs.create` "
        "made).",
    ]
    return section
