"""Benchmark 11: the peer queues (pgqueuer, procrastinate) and SQLAlchemy 2 Core, in one run.

Queues: the same number of no-op jobs is drained by 1 or 2 worker processes
(multiprocessing ``spawn``, one start signal, as in benchmark 2) of each of:

* cira_db: ``claim_batch(10)`` then ``complete_many`` of the batch (one
  statement), until a claim returns nothing;
* pgqueuer: its own schema (``Queries.install``) in a separate database on
  the same server, jobs put in with ``Queries.enqueue``, each worker a
  ``PgQueuer`` over a psycopg ``AsyncConnection`` (autocommit, as its driver
  requires) running a no-op ``async`` entrypoint with ``batch_size=10`` and
  ``QueueExecutionMode.drain`` (it stops once the queue is empty);
* procrastinate: its own schema (``SchemaManager.apply_schema``) in another
  database, jobs put in with ``batch_defer``, each worker an ``App`` on a
  ``PsycopgConnector`` running a no-op ``async`` task through
  ``run_worker_async(wait=False)`` (it stops once the queue is empty) with
  the worker's default concurrency (one job at a time).

On a server on this machine, worker i and every server backend it opens
(``application_name`` ``peers-worker-<i>``) are pinned to one CPU of their
own, alike for every system, and the backends' CPU time per job is reported
beside the worker's.

Per call: ``jobs.get``, ``jobs.create`` and a ``jobs.list`` page of 50
against SQLAlchemy 2 Core (``create_engine("postgresql+psycopg://...")``)
running the repository's own statement through ``text()``, one call at a
time, interleaved in blocks; wall time and this process's CPU time per call.

The peers come from the ``bench`` extra (``pip install -e ".[bench]"``;
``make bench`` installs it); without it this section fails, naming the extra.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import math
import multiprocessing as mp
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench_common import (
    Context,
    Samples,
    Section,
    Table,
    Target,
    _is_local_postgres,
    _local_server,
    connect_raw,
    fmt_int,
    fmt_ms,
    fmt_ratio,
    fmt_us,
    library_sql,
    truncate_jobs,
    uuid7,
)
from bench_queue import _collect, _fill
from cira_db import Completion, Database, JobRepository

__all__ = ["run_peers"]

EXTRA = ("pgqueuer", "procrastinate", "sqlalchemy")
BATCH = 10
LEASE = timedelta(minutes=15)
NOOP = "noop"  # the peers' entrypoint / task name and queue
CHUNK = 1_000  # jobs per enqueue statement when filling a peer's queue
TARGETS = {"pgqueuer": 1.2, "procrastinate": 2.5}
# runs per cell (the median is reported); procrastinate's take minutes and are far off target
ROUNDS = {"cira_db": 3, "cira_db_step": 3, "pgqueuer": 3, "procrastinate": 1}
SYSTEMS = {
    "cira_db": "cira_db `claim_batch(10)` + `complete_many`",
    "cira_db_step": "cira_db `complete_and_claim(items, 10)`",
    "pgqueuer": "pgqueuer, `batch_size=10`",
    "procrastinate": "procrastinate, default worker",
}
APP = "peers-worker-"  # application_name of worker i's connections: APP + str(i)
LIST_CLIENT = "peers-list"
RESULT = {"noop": True}
CREATE_CLIENT = "peers-create"


def _require_extra() -> None:
    missing = [name for name in EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeError(
            f"the `bench` extra is not installed (missing: {', '.join(missing)}): "
            'run `pip install -e ".[bench]"` (make bench does) to measure the peers'
        )


# -- databases ------------------------------------------------------------------------


def _with_params(url: str, **changes: str) -> str:
    params = dict(conninfo_to_dict(url))
    params.update(changes)
    return make_conninfo("", **params)


def _url_for(url: str, dbname: str) -> str:
    return _with_params(url, dbname=dbname)


@contextmanager
def _peer_database(url: str, suffix: str) -> Iterator[str]:
    """A database of its own for a peer's schema, on the benchmark's server; dropped after."""
    with connect_raw(url, prepare_threshold=None) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
        assert row is not None
        name = f"{row[0]}_{suffix}"
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _url_for(url, name)
    finally:
        with connect_raw(url, prepare_threshold=None) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _vacuum(url: str, table: str) -> None:
    with connect_raw(url, prepare_threshold=None) as conn:
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))


def _count(url: str, query: str) -> int:
    with connect_raw(url, prepare_threshold=None) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


# -- the drains, one per system (each runs in a worker process) ---------------------------


@dataclass
class Tally:
    """Jobs a worker ran, when it had its first job in hand and when it finished its last."""

    done: int = 0
    first: float = 0.0
    last: float = 0.0

    def start(self) -> None:
        if not self.done and not self.first:
            self.first = time.monotonic()

    def finish(self, count: int = 1) -> None:
        self.done += count
        self.last = time.monotonic()


def _cira_drain(url: str, tally: Tally) -> None:
    with Database(url) as db:
        jobs = JobRepository(db)
        while claimed := jobs.claim_batch(BATCH, lease=LEASE):
            tally.start()
            items = [Completion(j.id, RESULT, 1.0, 0, attempt=j.attempts) for j in claimed]
            tally.finish(sum(o.outcome == "done" for o in jobs.complete_many(items)))


def _cira_step_drain(url: str, tally: Tally) -> None:
    """The same loop with one statement per batch: complete the last batch, claim the next."""
    with Database(url) as db:
        jobs = JobRepository(db)
        items: list[Completion] = []
        while True:
            outcomes, claimed = jobs.complete_and_claim(items, BATCH, lease=LEASE)
            tally.finish(sum(o.outcome == "done" for o in outcomes))
            if not claimed:
                return
            tally.start()
            items = [Completion(j.id, RESULT, 1.0, 0, attempt=j.attempts) for j in claimed]


async def _pgqueuer_drain(url: str, tally: Tally) -> None:
    import psycopg
    from pgqueuer import PgQueuer
    from pgqueuer.types import QueueExecutionMode

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        pgq = PgQueuer.from_psycopg_connection(conn)

        async def noop(job: Any) -> None:
            tally.start()
            tally.finish()

        pgq.entrypoint(NOOP)(noop)
        await pgq.run(batch_size=BATCH, mode=QueueExecutionMode.drain)


def _procrastinate_app(url: str) -> Any:
    import procrastinate

    return procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))


async def _procrastinate_drain(url: str, tally: Tally) -> None:
    app = _procrastinate_app(url)

    async def noop() -> None:
        tally.start()
        tally.finish()

    app.task(name=NOOP, queue=NOOP)(noop)
    async with app.open_async():
        await app.run_worker_async(queues=[NOOP], wait=False, install_signal_handlers=False)


def _drain(system: str, url: str, tally: Tally) -> None:
    if system == "pgqueuer":
        asyncio.run(_pgqueuer_drain(url, tally))
    elif system == "procrastinate":
        asyncio.run(_procrastinate_drain(url, tally))
    elif system == "cira_db_step":
        _cira_step_drain(url, tally)
    else:
        _cira_drain(url, tally)


def _worker(inbox: Any, out: Any) -> None:
    """A worker process kept for every run: imports the peers once, then drains on request.

    Per run: ``(system, url, cpu)`` arrives, the worker pins itself to ``cpu``
    (None: any CPU), connects and reports ready,
    waits for ``"go"``, drains and reports; ``None`` ends the process.
    """
    for name in EXTRA[:2]:
        importlib.import_module(name)
    anywhere = os.sched_getaffinity(0)
    while (task := inbox.get()) is not None:
        system, url, cpu = task
        os.sched_setaffinity(0, anywhere if cpu is None else {cpu})
        try:
            with connect_raw(url) as conn:
                conn.execute("SELECT 1")
            out.put(("ready",))
            if inbox.get(timeout=300) != "go":
                raise RuntimeError("expected the start signal")
            start, cpu, tally = time.monotonic(), time.process_time(), Tally()
            _drain(system, url, tally)
            end, cpu = time.monotonic(), time.process_time() - cpu
            first, last = tally.first or start, tally.last or start
            out.put(("ok", tally.done, first, last, start, end, cpu))
        except BaseException as exc:
            out.put(("error", f"{type(exc).__name__}: {exc}"))
            raise


@dataclass
class Workers:
    """Two worker processes (``spawn``), each with its inbox, and the queue they report on."""

    procs: list[Any]
    inboxes: list[Any]
    out: Any


@contextmanager
def _workers(count: int) -> Iterator[Workers]:
    ctx = mp.get_context("spawn")
    inboxes: list[Any] = [ctx.Queue() for _ in range(count)]
    out: Any = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(box, out), daemon=True) for box in inboxes]
    for proc in procs:
        proc.start()
    try:
        yield Workers(procs, inboxes, out)
    finally:
        for box in inboxes:
            box.put(None)
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()


# -- filling each queue and checking it was drained exactly once -----------------------


async def _pgqueuer_fill(url: str, total: int) -> None:
    import psycopg
    from pgqueuer import Queries

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        queries = Queries.from_psycopg_connection(conn)
        if not await queries.schema_is_installed():
            await queries.install()
        await queries.clear_queue()
        await queries.clear_queue_log()
        for start in range(0, total, CHUNK):
            n = min(CHUNK, total - start)
            await queries.enqueue([NOOP] * n, [None] * n, [0] * n)


async def _procrastinate_fill(url: str, total: int, *, schema: bool) -> None:
    app = _procrastinate_app(url)
    task = app.task(name=NOOP, queue=NOOP)(_noop_task)
    async with app.open_async():
        if schema:
            await app.schema_manager.apply_schema_async()
        for start in range(0, total, CHUNK):
            await task.batch_defer_async(*({} for _ in range(min(CHUNK, total - start))))


async def _noop_task() -> None:
    return None


def _fill_system(system: str, url: str, total: int) -> None:
    if system == "pgqueuer":
        asyncio.run(_pgqueuer_fill(url, total))
        _vacuum(url, "pgqueuer")
    elif system == "procrastinate":
        installed = _count(
            url, "SELECT count(*) FROM pg_tables WHERE tablename = 'procrastinate_jobs'"
        )
        if installed:
            with connect_raw(url, prepare_threshold=None) as conn:
                conn.execute("TRUNCATE procrastinate_jobs CASCADE")
        asyncio.run(_procrastinate_fill(url, total, schema=not installed))
        _vacuum(url, "procrastinate_jobs")
    else:
        _fill(url, total)


CHECKS = {  # (jobs finished in the database, jobs left unfinished)
    "cira_db": "SELECT count(*) FILTER (WHERE status = 'completed' AND EXISTS "
    "(SELECT 1 FROM job_results r WHERE r.job_id = jobs.id)), "
    "count(*) FILTER (WHERE status <> 'completed') FROM jobs",
    # pgqueuer deletes a finished job from its queue table (its workers' count is the check)
    "pgqueuer": "SELECT NULL, count(*) FROM pgqueuer",
    "procrastinate": "SELECT count(*) FILTER (WHERE status = 'succeeded'), "
    "count(*) FILTER (WHERE status <> 'succeeded') FROM procrastinate_jobs",
}


def _check(system: str, url: str, total: int, done: int) -> None:
    with connect_raw(url, prepare_threshold=None) as conn:
        row = conn.execute(CHECKS[system.removesuffix("_step")]).fetchone()
    assert row is not None
    finished = done if row[0] is None else int(row[0])
    left = int(row[1])
    if not (finished == done == total and left == 0):
        raise RuntimeError(
            f"{system} lost or doubled work: {done} jobs run by its workers, {finished} "
            f"finished and {left} unfinished in the database, {total} queued"
        )


def _placement() -> list[int] | None:
    """One CPU per worker process (the first two this process may use), or None."""
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[:2] if len(cpus) >= 2 else None


def _on_cpu_ns(pid: int) -> int | None:
    """Nanoseconds process ``pid`` has run on a CPU (``/proc/<pid>/schedstat``), or None."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class _Backends(threading.Thread):
    """Finds the server backends of the workers (application_name ``APP + i``) as they open.

    Pins worker i's backends to ``cpus[i]`` (when ``cpus`` is given) and adds
    up the CPU time they run. The workers' libraries connect once the drain
    starts, so ``pg_stat_activity`` is polled (every 2 ms for the first 0.2 s,
    then every 50 ms); the CPU time of the backends found is read every 2 ms
    (a backend's last 2 ms before it exits can be missed).
    """

    def __init__(self, url: str, cpus: list[int] | None) -> None:
        super().__init__(daemon=True)
        self.url, self.cpus = url, cpus
        self.cpu_ns: dict[int, tuple[int, int]] = {}  # pid: (first reading, last reading)
        self.error = ""
        self._stop_event = threading.Event()

    def run(self) -> None:
        started = looked = time.monotonic()
        try:
            with connect_raw(self.url, prepare_threshold=None) as conn:
                self._find(conn)
                while not self._stop_event.wait(0.002):
                    self._read()
                    now = time.monotonic()
                    if now - started < 0.2 or now - looked > 0.05:
                        self._find(conn)
                        looked = now
                self._read()
        except Exception as exc:  # reported by the run, not lost in a thread
            self.error = f"{type(exc).__name__}: {exc}"

    def _find(self, conn: Any) -> None:
        rows = conn.execute(
            "SELECT pid, application_name FROM pg_stat_activity WHERE application_name LIKE %s",
            (APP + "%",),
        ).fetchall()
        for pid, name in rows:
            if pid in self.cpu_ns or not _is_local_postgres(int(pid)):
                continue
            if self.cpus is not None:
                os.sched_setaffinity(int(pid), {self.cpus[int(name.removeprefix(APP))]})
            first = _on_cpu_ns(int(pid))
            if first is not None:
                self.cpu_ns[pid] = (first, first)

    def _read(self) -> None:
        for pid, (first, _) in self.cpu_ns.items():
            now = _on_cpu_ns(pid)
            if now is not None:
                self.cpu_ns[pid] = (first, now)

    def stop(self) -> tuple[int, float]:
        """Stop; how many backends were found and the seconds of CPU they ran."""
        self._stop_event.set()
        self.join(10)
        if self.error:
            raise RuntimeError(f"following the workers' backends failed: {self.error}")
        return len(self.cpu_ns), sum(b - a for a, b in self.cpu_ns.values()) / 1e9


@dataclass(frozen=True)
class Run:
    """Jobs per second from the first job in hand to the last finished, and the seconds
    before and after that (start-up: connecting, checks; wind-down: stopping)."""

    rate: float
    fixed: float
    cpu_us: float  # the worker processes' CPU time per job (start-up and wind-down included)
    backends: int  # the workers' server backends (each pinned to its worker's CPU, if pinning)
    server_us: float  # those backends' CPU time per job (start-up and wind-down included)
    flushes: float  # the server's WAL flushes (fsyncs) per 1,000 jobs, NaN where unknown


def _wal_flushes(url: str) -> int | None:
    """The server's WAL flushes so far (``pg_stat_wal.wal_sync``, PostgreSQL 14+), or None.

    A commit waits for its WAL to reach the disk (``synchronous_commit=on``), so
    flushes per job show how many commits a system makes and how well they group.
    """
    try:
        with connect_raw(url, prepare_threshold=None) as conn:
            row = conn.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()
    except psycopg.Error:
        return None
    return None if row is None else int(row[0])


def _one_run(
    pool: Workers, system: str, url: str, total: int, workers: int, cpus: list[int] | None
) -> Run:
    """``workers`` processes of ``system`` draining ``total`` jobs.

    With ``cpus``, worker i and every server backend it opens run on ``cpus[i]`` only.
    """
    _fill_system(system, url, total)
    procs, inboxes = pool.procs[:workers], pool.inboxes[:workers]
    for i, box in enumerate(inboxes):
        named = _with_params(url, application_name=f"{APP}{i}")
        box.put((system, named, None if cpus is None else cpus[i]))
    _collect(pool.out, procs, "ready", 120)
    # Only for a server on this machine: its backends' CPU time, and pinning.
    backends = _Backends(url, cpus) if _local_server(url) else None
    if backends is not None:
        backends.start()
    flushed = _wal_flushes(url)
    for box in inboxes:
        box.put("go")
    reports = _collect(pool.out, procs, "ok", 900)
    found, server_s = (0, math.nan) if backends is None else backends.stop()
    if backends is not None and found < workers:
        raise RuntimeError(f"{system}: {found} server backends found for {workers} workers")
    done = sum(int(r[1]) for r in reports)
    _check(system, url, total, done)
    time.sleep(1.1)  # a backend reports its WAL counts at most once a second, and as it exits
    after = _wal_flushes(url)
    flushes = math.nan if flushed is None or after is None else (after - flushed) / done * 1000
    first, last = min(r[2] for r in reports), max(r[3] for r in reports)
    fixed = (first - min(r[4] for r in reports)) + (max(r[5] for r in reports) - last)
    worker_us = sum(r[6] for r in reports) / done * 1e6
    return Run(done / (last - first), fixed, worker_us, found, server_s / done * 1e6, flushes)


def _queues(ctx: Context, total: int, cpus: list[int] | None) -> dict[tuple[str, int], Run]:
    """Per system and worker count, the run with the median rate (systems interleaved)."""
    rounds = dict.fromkeys(SYSTEMS, 1) if ctx.quick else ROUNDS
    got: dict[tuple[str, int], list[Run]] = {}
    with (
        _peer_database(ctx.url, "pgq") as pgq_url,
        _peer_database(ctx.url, "proc") as proc_url,
        _workers(2) as pool,
    ):
        urls = {
            "cira_db": ctx.url,
            "cira_db_step": ctx.url,
            "pgqueuer": pgq_url,
            "procrastinate": proc_url,
        }
        for workers, turn, system in itertools.product((1, 2), range(3), SYSTEMS):
            if turn < rounds[system]:
                ctx.log(f"peers: {system}, {workers} worker process(es), {fmt_int(total)} jobs")
                run = _one_run(pool, system, urls[system], total, workers, cpus)
                got.setdefault((system, workers), []).append(run)
    truncate_jobs(ctx.url)
    return {cell: sorted(runs, key=lambda r: r.rate)[len(runs) // 2] for cell, runs in got.items()}


def _flushes(*runs: Run) -> str:
    """The runs' WAL flushes per 1,000 jobs, "1 / 2"."""
    return " / ".join("n/a" if math.isnan(r.flushes) else fmt_int(r.flushes) for r in runs)


def _queue_tables(runs: dict[tuple[str, int], Run]) -> list[Table]:
    table = Table(
        [
            "queue",
            "1 worker, jobs/s",
            "2 workers, jobs/s",
            "2 ÷ 1",
            "start-up + wind-down, s",
            "worker CPU per job, µs",
            "server CPU per job, µs",
            "WAL flushes per 1,000 jobs, 1 / 2 workers",
        ]
    )
    for system, label in SYSTEMS.items():
        one, two = runs[(system, 1)], runs[(system, 2)]
        table.add(
            label,
            fmt_int(one.rate),
            fmt_int(two.rate),
            fmt_ratio(two.rate / one.rate),
            fmt_ms(one.fixed),
            fmt_us(one.cpu_us),
            "n/a" if math.isnan(one.server_us) else fmt_us(one.server_us),
            _flushes(one, two),
        )
    ratio = Table(["cira_db ÷ peer (jobs/s)", "target", "1 worker", "2 workers", "met"])
    for peer, target in TARGETS.items():
        got = [runs[("cira_db", w)].rate / runs[(peer, w)].rate for w in (1, 2)]
        met = "yes" if min(got) >= target else "**no**"
        ratio.add(peer, f"≥ {fmt_ratio(target)}", *(fmt_ratio(g) for g in got), met)
    return [table, ratio]


def _queue_verdicts(runs: dict[tuple[str, int], Run]) -> list[str]:
    lines: list[str] = []
    for peer, target in TARGETS.items():
        for workers in (1, 2):
            got = runs[("cira_db", workers)].rate / runs[(peer, workers)].rate
            verdict = (
                f"met ({got / target:.2f} times the target)"
                if got >= target
                else f"**missed** by {(1 - got / target) * 100:.1f}%"
            )
            lines.append(
                f"cira_db ÷ {peer}, {workers} worker{'s' if workers > 1 else ''}: "
                f"{fmt_ratio(got)} against a target of {fmt_ratio(target)}: {verdict}."
            )
    step = [runs[("cira_db_step", w)].rate / runs[("pgqueuer", w)].rate for w in (1, 2)]
    lines.append(
        "With `complete_and_claim` (each batch completed and the next claimed in one "
        "statement: one commit and one round trip per batch instead of two), cira_db ÷ "
        f"pgqueuer is {fmt_ratio(step[0])} with 1 worker and {fmt_ratio(step[1])} with 2 "
        "(the target above is set for `claim_batch` + `complete_many`)."
    )
    cpu = {system: fmt_us(runs[(system, 1)].cpu_us) for system in SYSTEMS}
    lines.append(
        f"Worker CPU per job (1 worker): cira_db {cpu['cira_db']} µs, pgqueuer "
        f"{cpu['pgqueuer']} µs, procrastinate {cpu['procrastinate']} µs: the worker "
        "process only. The server's CPU per job is the last column: for cira_db two "
        "non-HOT updates of the `jobs` row (each adding entries to its indexes) and one "
        "`job_results` insert (its two unique indexes and the foreign key check) per job, "
        "in two statements per batch (one with `complete_and_claim`); for pgqueuer one "
        "update of its queue row, then a delete of it and an insert into its log table."
    )
    flushes = {system: _flushes(runs[(system, 1)], runs[(system, 2)]) for system in SYSTEMS}
    lines.append(
        f"WAL flushes per 1,000 jobs (1 / 2 workers): cira_db {flushes['cira_db']}, pgqueuer "
        f"{flushes['pgqueuer']}, procrastinate {flushes['procrastinate']}. Every commit waits "
        "for its flush (`synchronous_commit=on`); cira_db commits twice per batch (the claim, "
        "then `complete_many`), once with `complete_and_claim`."
    )
    return lines


def _queue_targets(runs: dict[tuple[str, int], Run]) -> list[Target]:
    targets: list[Target] = []
    for peer, bound in TARGETS.items():
        for workers in (1, 2):
            ours, theirs = runs[("cira_db", workers)], runs[(peer, workers)]
            step = runs[("cira_db_step", workers)].rate / theirs.rate
            targets.append(
                Target(
                    f"`claim_batch(10)` + `complete_many` \u00f7 {peer}, {workers} "
                    f"worker{'s' if workers > 1 else ''} (section 11)",
                    bound,
                    ours.rate / theirs.rate,
                    why=(
                        f"WAL flushes per 1,000 jobs (1 / 2 workers): cira_db "
                        f"{_flushes(runs[('cira_db', 1)], runs[('cira_db', 2)])}, {peer} "
                        f"{_flushes(runs[(peer, 1)], runs[(peer, 2)])}; worker CPU per job "
                        f"{fmt_us(ours.cpu_us)} \u00b5s against {fmt_us(theirs.cpu_us)}. Where "
                        "both wait for as many flushes per job, their rates converge. With "
                        f"`complete_and_claim` (one commit per batch) the ratio was "
                        f"{fmt_ratio(step)}."
                    ),
                )
            )
    return targets


# -- per call: the repository against SQLAlchemy 2 Core ----------------------------------


def _as_text(statement: str) -> Any:
    """The library's statement as a SQLAlchemy ``text()``: ``%(x)s`` becomes ``:x``.

    ``%(x)s::type`` becomes ``(:x)::type``: ``text()`` does not take a bind name
    followed by a ``::`` cast; the parentheses change nothing for PostgreSQL.
    """
    from sqlalchemy import text

    casts = re.sub(r"%\(([a-z_][a-z0-9_]*)\)[sb]::", r"(:\1)::", statement)
    return text(re.sub(r"%\(([a-z_][a-z0-9_]*)\)[sb]", r":\1", casts))


def _engine(url: str, *, prepare: bool) -> Any:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    params = conninfo_to_dict(url)
    target = make_url("postgresql+psycopg://").set(
        username=params.get("user"),
        password=params.get("password"),
        host=params.get("host"),
        port=int(str(params["port"])) if params.get("port") else None,
        database=params.get("dbname"),
    )
    return create_engine(
        target,
        isolation_level="AUTOCOMMIT",
        connect_args={"prepare_threshold": 5 if prepare else None},
    )


def _seed_list(url: str, count: int) -> list[Any]:
    with Database(url) as db:
        JobRepository(db).create_many(
            client_id=LIST_CLIENT,
            pdf_urls=[f"https://files.example.com/p/{i}.pdf" for i in range(count)],
        )
    _vacuum(url, "jobs")
    with connect_raw(url, prepare_threshold=None) as conn:
        rows = conn.execute(
            "SELECT id FROM jobs WHERE client_id = %(c)s ORDER BY random() LIMIT 500",
            {"c": LIST_CLIENT},
        ).fetchall()
    return [row[0] for row in rows]


Call = Callable[[], object]


def _pair_calls(db: Database, engine: Any, ids: list[Any]) -> dict[str, tuple[Call, Call]]:
    """Per operation: (repository call, SQLAlchemy Core call) sending the same statement."""
    jobs = JobRepository(db)
    get_sql, insert_sql, list_sql = (
        _as_text(library_sql("jobs.sql", name)) for name in ("get_job", "insert_job", "list_jobs")
    )
    pick = itertools.cycle(ids)
    counter = itertools.count()
    page = {"client_id": LIST_CLIENT, "after_created_at": None, "after_id": None, "limit": 51}

    def sa_get() -> object:
        with engine.connect() as conn:
            return conn.execute(get_sql, {"id": next(pick), "client_id": LIST_CLIENT}).one()

    def sa_create() -> object:
        params = {
            "id": uuid7(),
            "client_id": CREATE_CLIENT,
            "pdf_url": f"https://x.example/sa/{next(counter)}.pdf",
            "priority": 0,  # the values create() binds when none are given
            "run_at": None,
            "run_in": None,
        }
        with engine.connect() as conn:
            return conn.execute(insert_sql, params).one()

    def sa_list() -> object:
        with engine.connect() as conn:
            return conn.execute(list_sql, page).all()

    def lib_create() -> object:
        url = f"https://x.example/lib/{next(counter)}.pdf"
        return jobs.create(client_id=CREATE_CLIENT, pdf_url=url)

    return {
        "`jobs.get`": (lambda: jobs.get(next(pick), client_id=LIST_CLIENT), sa_get),
        "`jobs.create`": (lib_create, sa_create),
        "`jobs.list`, page of 50": (lambda: jobs.list(client_id=LIST_CLIENT, limit=50), sa_list),
    }


@dataclass
class Cost:
    """Per-call samples of one side: wall time, and this process's CPU time (all threads)."""

    wall: Samples
    cpu: Samples


def _measure(sides: dict[str, Call], n: int, *, block: int = 50) -> dict[str, Cost]:
    """``n`` calls of each side, one at a time, interleaved in blocks (after a warm-up)."""
    for _ in range(20):
        for call in sides.values():
            call()
    got = {name: Cost(Samples(), Samples()) for name in sides}
    wall, cpu = time.perf_counter_ns, time.process_time_ns
    for done in range(0, n, block):
        for name, call in sides.items():
            cost = got[name]
            for _ in range(min(block, n - done)):
                w, c = wall(), cpu()
                call()
                c, w = cpu() - c, wall() - w
                cost.wall.ns.append(w)
                cost.cpu.ns.append(c)
    return got


Found = dict[tuple[str, bool], tuple[Cost, Cost]]


def _per_call(ctx: Context, n: int, prepares: tuple[bool, ...]) -> Found:
    """(repository, SQLAlchemy Core) costs per operation and prepare setting."""
    ids = _seed_list(ctx.url, 2_000 if not ctx.quick else 200)
    found: Found = {}
    for prepare in prepares:
        engine = _engine(ctx.url, prepare=prepare)
        try:
            with Database(ctx.url, prepare_statements=prepare) as db:
                for label, (lib, core) in _pair_calls(db, engine, ids).items():
                    ctx.log(
                        f"peers: {label.replace('`', '')} against SQLAlchemy, prepare={prepare}"
                    )
                    got = _measure({"lib": lib, "sa": core}, n)
                    found[(label, prepare)] = (got["lib"], got["sa"])
        finally:
            engine.dispose()
    truncate_jobs(ctx.url)
    return found


def _call_table(found: Found) -> Table:
    table = Table(
        [
            "call",
            "prepares",
            "repository, µs",
            "Core, µs",
            "ratio",
            "repository CPU, µs",
            "Core CPU, µs",
            "CPU ratio",
        ],
        title="Per call, repository against SQLAlchemy Core: medians of wall and client CPU time",
    )
    for (label, prepare), (lib, core) in found.items():
        table.add(
            label,
            "on" if prepare else "off",
            fmt_us(lib.wall.median_us),
            fmt_us(core.wall.median_us),
            _marked(lib.wall.median_us / core.wall.median_us),
            fmt_us(lib.cpu.median_us),
            fmt_us(core.cpu.median_us),
            _marked(lib.cpu.median_us / core.cpu.median_us),
        )
    return table


def _marked(ratio: float) -> str:
    """A repository ÷ Core ratio, in bold when the repository is not below Core."""
    return fmt_ratio(ratio) if ratio < 1 else f"**{fmt_ratio(ratio)}**"


def _call_verdicts(found: Found) -> list[str]:
    missed = [
        f"{label} with prepares {'on' if p else 'off'} "
        f"({fmt_ratio(lib.wall.median_us / core.wall.median_us)} wall, "
        f"{fmt_ratio(lib.cpu.median_us / core.cpu.median_us)} CPU)"
        for (label, p), (lib, core) in found.items()
        if lib.wall.median_us >= core.wall.median_us
    ]
    if not missed:
        return ["Every repository call is below SQLAlchemy Core's cost for the same statement."]
    return [
        "Not below SQLAlchemy Core's median wall time (target **missed**): "
        f"{'; '.join(missed)}. The repository returns typed `Job`s (a `JobPage` with a cursor "
        "for a list) where Core returns `Row` tuples: building rows is the known per-row cost "
        "(section 1). Wall medians of sub-millisecond calls move with this machine's load; the "
        "CPU column is this process's own time per call, which load moves less."
    ]


def _call_targets(found: Found) -> list[Target]:
    return [
        Target(
            f"{label} \u00f7 SQLAlchemy Core, prepares {'on' if prepare else 'off'}, median "
            "wall time (section 11)",
            1.0,
            lib.wall.median_us / core.wall.median_us,
            at_least=False,
            why=(
                f"Client CPU per call {fmt_us(lib.cpu.median_us)} \u00b5s against "
                f"{fmt_us(core.cpu.median_us)} for Core; the repository builds typed rows where "
                "Core returns `Row` tuples."
            ),
        )
        for (label, prepare), (lib, core) in found.items()
    ]


# -- the section --------------------------------------------------------------------------


def _placement_text(cpus: list[int] | None) -> str:
    if cpus is None:
        return (
            "**CPU placement:** not pinned (the server is not on this machine, or this "
            "process may use only one CPU). "
        )
    return (
        "**CPU placement:** every system alike, worker process i and every server backend "
        "it opens (found by its `application_name` in `pg_stat_activity` as it connects) "
        f"run on CPU {cpus[0]} (worker 1) or {cpus[1]} (worker 2) only, since a round trip "
        "between two CPUs costs about three times one on a single CPU (section 1) and the "
        "scheduler would otherwise place each run's processes differently. "
    )


def _named(system: str) -> str:
    return system.replace("_step", " (complete_and_claim)")


def _intro(
    total: int, n: int, prepares: tuple[bool, ...], cpus: list[int] | None, *, quick: bool
) -> list[str]:
    runs = (
        "**One run per cell**"
        if quick
        else "**The median of "
        + ", ".join(
            f"{count} run{'s' if count > 1 else ''} of {_named(system)}"
            for system, count in ROUNDS.items()
        )
        + " per cell** (a run of procrastinate takes minutes)"
    )
    modes = " and ".join("on" if p else "off (behind RDS Proxy)" for p in prepares)
    return [
        f"**Queues.** {fmt_int(total)} no-op jobs, drained by 1 or 2 worker processes "
        "(multiprocessing `spawn`) of each system, each driven as its documentation shows: "
        "cira_db claims with `claim_batch(10)` and completes each batch with one "
        "`complete_many` (a small result and the claim's attempt per job), and again with "
        "`complete_and_claim` (each call completes the last batch and claims the next in one "
        "statement); pgqueuer (its own "
        "schema from `Queries.install`, in a separate database on the same server) runs a "
        "no-op `async` entrypoint on a `PgQueuer` over a psycopg `AsyncConnection` in "
        "autocommit with `batch_size=10` and `QueueExecutionMode.drain`; procrastinate (its "
        "schema from `apply_schema`, in another database) runs a no-op `async` task with "
        "`run_worker_async(wait=False)` and the default worker concurrency (one job at a "
        "time). The rate counts from the first job a worker has in hand to the last one "
        "finished (for the peers: the last no-op returned, before its acknowledgement is "
        "written, which favours them slightly); what a worker spends before (connecting, "
        "pgqueuer's schema checks) and after (stopping) is a column of its own, with the "
        "worker's CPU time per job (`time.process_time`, all of the run), both from the "
        "1-worker run, and the server CPU per job: the CPU time of the worker's server "
        "backends (`/proc/<pid>/schedstat`, read every 2 ms), and the server's WAL flushes "
        "per 1,000 jobs (`pg_stat_wal.wal_sync` before and after the run). "
        + _placement_text(cpus)
        + f"{runs}, systems interleaved, every queue refilled and "
        "`VACUUM (ANALYZE)`d before each run; after each run the benchmark checks that every "
        "job was finished exactly once.",
        "",  # a paragraph break in the report
        "**Per call.** `jobs.get`, `jobs.create` and a `jobs.list` page of 50 against "
        'SQLAlchemy 2 Core (`create_engine("postgresql+psycopg://...")` with '
        '`isolation_level="AUTOCOMMIT"`, so both sides send one statement per call; '
        "`engine.connect()` per call, as the repository checks a connection out of its pool) "
        "running the repository's own statement text through `text()`, rows fetched as "
        f"`Row`s. {fmt_int(n)} calls each, interleaved in blocks of 50, medians of the wall "
        "time and of this process's CPU time per call; prepares "
        f"{modes}. Target: each repository call below Core's cost for the same statement.",
    ]


def _rates(runs: dict[tuple[str, int], Run], system: str) -> str:
    return f"{fmt_int(runs[(system, 1)].rate)} / {fmt_int(runs[(system, 2)].rate)}"


def run_peers(ctx: Context) -> Section:
    _require_extra()
    total, n = (200, 100) if ctx.quick else (20_000, 2_000)
    prepares = (False,) if ctx.quick else (False, True)
    section = Section("peers", "11. Peer queues and SQLAlchemy Core")
    cpus = _placement() if _local_server(ctx.url) else None
    runs = _queues(ctx, total, cpus)
    found = _per_call(ctx, n, prepares)
    section.tables = [*_queue_tables(runs), _call_table(found)]
    section.intro = _intro(total, n, prepares, cpus, quick=ctx.quick)
    section.notes = [*_queue_verdicts(runs), *_call_verdicts(found)]
    section.targets = [*_queue_targets(runs), *_call_targets(found)]
    section.headlines = [
        f"Peers, {fmt_int(total)} no-op jobs, jobs/s with 1 / 2 workers: cira_db batched "
        f"{_rates(runs, 'cira_db')}, pgqueuer (batch 10) {_rates(runs, 'pgqueuer')}, "
        f"procrastinate {_rates(runs, 'procrastinate')}."
    ]
    return section
