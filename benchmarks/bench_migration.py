"""Benchmark 6: which locks migrations 0003 to 0005 take on ``jobs``, and for how long.

The database is rolled back to version 2, ``jobs`` is filled with 1,000,000
rows (100,000 in a quick run) by the plans benchmark's ``generate_series``
load, then the two migrations run while a writer updates one job in a loop
(what a live service feels):

* 0003 is rehearsed once in a transaction that is rolled back, to read from
  ``pg_locks`` the locks it holds on ``jobs`` until commit; then the
  migrator applies it for real (its recorded ``execution_ms`` is how long it
  held them).
* 0004's statements run one by one as the migrator runs them (autocommit,
  the migrator's lock_timeout), each timed, while a sampler reads the locks
  that statement's backend holds on ``jobs`` every few milliseconds; the
  migrator then records 0004 (a re-run of a finished file: it skips
  everything).
* 0005 (drop ``idx_jobs_queue``), then its down file (build it again) and
  0005 once more, run the same way, statement by statement with sampled locks.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from bench_common import Context, Section, Table, connect_raw, fmt_int, fmt_ms, truncate_jobs
from bench_plans import _seed
from cira_db import Database
from cira_db.migrations import Migrator, load_migrations, split_statements

__all__ = ["run_migration"]

LOCKS_ON_JOBS = """
SELECT coalesce(string_agg(DISTINCT mode, ', ' ORDER BY mode), '')
FROM pg_locks
WHERE pid = %s AND relation = 'jobs'::regclass AND granted
"""
_COMMENT = re.compile(r"--[^\n]*")


@dataclass
class Probe:
    """A writer that updates one job in a loop; records (start, seconds) of each update."""

    url: str
    job_id: Any
    samples: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with connect_raw(self.url, prepare_threshold=None) as conn:
            while not self._stop.is_set():
                start = time.perf_counter()
                conn.execute("UPDATE jobs SET updated_at = now() WHERE id = %s", (self.job_id,))
                self.samples.append((start, time.perf_counter() - start))
                time.sleep(0.005)

    def worst_ms(self, start: float, end: float) -> float:
        """The longest update that overlapped [start, end], in ms."""
        overlapping = [s for t, s in self.samples if t <= end and t + s >= start]
        return max(overlapping, default=0.0) * 1000


@dataclass
class LockSampler:
    """Reads the locks one backend holds on jobs, every few milliseconds."""

    url: str
    pid: int
    seen: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with connect_raw(self.url, prepare_threshold=None) as conn:
            while not self._stop.is_set():
                row = conn.execute(LOCKS_ON_JOBS, (self.pid,)).fetchone()
                if row and row[0]:
                    self.seen.update(row[0].split(", "))
                time.sleep(0.002)


@contextmanager
def running(worker: Probe | LockSampler) -> Iterator[None]:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        worker._stop.set()
        thread.join()


def _label(statement: str) -> str:
    text = " ".join(_COMMENT.sub("", statement).split())
    if text.startswith("DO "):
        return "DO block: rename INVALID leftovers"
    text = re.sub(r"\s*\(.*", "", text.replace(" IF NOT EXISTS", "").replace(" IF EXISTS", ""))
    return f"`{text}`"


def _rehearse_0003(url: str, sql: str, lock_timeout: str) -> tuple[str, float]:
    """Run 0003 in a transaction that is rolled back: its locks on jobs, and its seconds."""
    with psycopg.connect(url, prepare_threshold=None) as conn:
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (lock_timeout,))
        start = time.perf_counter()
        conn.execute(sql.encode())
        seconds = time.perf_counter() - start
        row = conn.execute(LOCKS_ON_JOBS, (conn.info.backend_pid,)).fetchone()
        conn.rollback()
    return (row[0] if row else ""), seconds


def _run_0004(
    url: str, sql: str, probe: Probe, lock_timeout: str, table: Table, prefix: str = ""
) -> tuple[float, set[str]]:
    """Run a no-transaction file statement by statement as the migrator does; a row each.

    Returns the seconds the statements took and every lock mode seen on jobs.
    """
    total = 0.0
    modes: set[str] = set()
    with connect_raw(url, prepare_threshold=None) as conn:
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (lock_timeout,))
        for statement in split_statements(sql):
            sampler = LockSampler(url, conn.info.backend_pid)
            with running(sampler):
                start = time.perf_counter()
                conn.execute(statement.encode())
                end = time.perf_counter()
            total += end - start
            modes |= sampler.seen
            table.add(
                prefix + _label(statement),
                ", ".join(sorted(sampler.seen)) or "(none seen: too short to sample)",
                fmt_ms((end - start) * 1000),
                fmt_ms(probe.worst_ms(start, end)),
            )
    return total, modes


def run_migration(ctx: Context) -> Section:
    total = 100_000 if ctx.quick else 1_000_000
    section = Section("migration", "6. Migrations 0003 to 0005 on a large table")
    migrations = {m.version: m for m in load_migrations()}
    lock_timeout = Database(ctx.url, pool=False).settings.migration_lock_timeout
    truncate_jobs(ctx.url)
    Migrator(ctx.url).rollback(to=2)
    with connect_raw(ctx.url, prepare_threshold=None) as conn:
        conn.execute("SET maintenance_work_mem = '256MB'")
        ctx.log(f"migration: seeding {fmt_int(total)} jobs at version 2")
        steps = _seed(conn, total, 1000)
        row = conn.execute("SELECT id FROM jobs WHERE status = 'queued' LIMIT 1").fetchone()
        assert row is not None
    probe = Probe(ctx.url, row[0])
    table = Table(["step", "locks held on `jobs`", "ms", "worst concurrent UPDATE, ms"])
    with running(probe):
        start = time.perf_counter()
        time.sleep(1.0)
        table.add(
            "(no migration: the writer alone, for comparison)",
            "",
            fmt_ms((time.perf_counter() - start) * 1000),
            fmt_ms(probe.worst_ms(start + 0.05, time.perf_counter())),
        )
        start = time.perf_counter()
        modes, rehearsal = _rehearse_0003(ctx.url, migrations[3].sql, lock_timeout)
        ctx.log("migration: applying 0003")
        Migrator(ctx.url, applied_by="bench").apply(to=3)
        end = time.perf_counter()
        with connect_raw(ctx.url, prepare_threshold=None) as conn:
            recorded = conn.execute(
                "SELECT execution_ms FROM schema_migrations WHERE version = 3"
            ).fetchone()
        recorded_ms = int(recorded[0]) if recorded else -1
        table.add(
            "0003 (one transaction: until commit)",
            modes,
            fmt_ms(rehearsal * 1000),
            fmt_ms(probe.worst_ms(start, end)),
        )
        ctx.log("migration: running 0004 statement by statement")
        seconds_0004, modes_0004 = _run_0004(ctx.url, migrations[4].sql, probe, lock_timeout, table)
        ctx.log("migration: running 0005, its down file, and 0005 again")
        seconds_0005, modes_0005 = _run_0004(
            ctx.url, migrations[5].sql, probe, lock_timeout, table, "0005: "
        )
        down_sql = migrations[5].down_sql
        assert down_sql is not None
        seconds_down, modes_down = _run_0004(
            ctx.url, down_sql, probe, lock_timeout, table, "0005 down: "
        )
        _run_0004(ctx.url, migrations[5].sql, probe, lock_timeout, table, "0005 again: ")
        time.sleep(0.2)
    start = time.perf_counter()
    Migrator(ctx.url, applied_by="bench").apply()  # records 0004, 0005: re-runs that skip all
    rerun = time.perf_counter() - start
    start = time.perf_counter()
    Migrator(ctx.url, applied_by="bench").rollback(to=2)
    down = time.perf_counter() - start
    start = time.perf_counter()
    Migrator(ctx.url, applied_by="bench").apply()
    up_again = time.perf_counter() - start
    writes = [s for _, s in probe.samples]
    section.tables = [table]
    section.intro = [
        f"`jobs` at version 2 filled with {fmt_int(total)} rows (the plans benchmark's "
        f"`generate_series` load, {steps['insert']:.1f} s, then `VACUUM (ANALYZE)`). "
        "Meanwhile a writer updates one queued job every 5 ms on its own connection "
        f"({fmt_int(len(writes))} updates in all); the last column is the longest of its "
        "updates that overlapped the step: what a live service would have waited. The first "
        "row is the writer alone for one second before the migrations: the noise to compare "
        "with.",
        "",
        "0003's locks and time are read in a rehearsal: the file run in a transaction "
        "(`lock_timeout` as the migrator sets it), `pg_locks` read, then rolled back; the "
        "locks are held from its ALTER TABLE until the end of the transaction. The migrator "
        f"then applied 0003 for real and recorded `execution_ms` = {recorded_ms} (whole "
        "milliseconds); the worst-UPDATE column covers both runs. 0004's statements run "
        "one by one as the migrator runs them "
        f"(autocommit, `lock_timeout` {lock_timeout}); their locks are sampled every 2 ms "
        "from another connection. 0005 (drop `idx_jobs_queue`), its down file (build it "
        "again) and 0005 once more run the same way.",
    ]
    section.notes.append(
        f"After the table: recording 0004 and 0005 with the migrator (re-runs of whole files "
        f"over themselves, which skip everything) took {fmt_ms(rerun * 1000)} ms; rolling "
        f"back to 2 (the down files of 0005, 0004 and 0003) {down:.1f} s; applying 0003 to "
        f"0005 again {up_again:.1f} s."
    )
    seen_0005 = ", ".join(sorted(modes_0005)) or "no lock it could sample"
    seen_down = ", ".join(sorted(modes_down)) or "no lock it could sample"
    section.notes.append(
        f"0005 drops `idx_jobs_queue` in {fmt_ms(seconds_0005 * 1000)} ms holding only "
        f"{seen_0005}; its down file builds it again in {seconds_down:.1f} s holding only "
        f"{seen_down}."
    )
    seen_0004 = ", ".join(sorted(modes_0004)) or "no lock it could sample"
    section.headlines = [
        f"On {fmt_int(total)} jobs, 0003 holds {modes or 'no lock'} on jobs for "
        f"{fmt_ms(rehearsal * 1000)} ms; 0004 runs {seconds_0004:.1f} s holding only {seen_0004}; "
        f"the longest concurrent single-row UPDATE took {fmt_ms(max(writes) * 1000)} ms.",
    ]
    truncate_jobs(ctx.url)
    return section
