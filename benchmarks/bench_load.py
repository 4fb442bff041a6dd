"""Benchmark 12: many clients at once through pgbouncer, steady and across a server restart.

A private embedded PostgreSQL 16 (it is restarted, so never the run's shared
server), pgbouncer in front of it in transaction mode with client TLS
(``verify-full``, a throwaway CA; ``local_proxy.py``) and a server pool much
smaller than the number of clients. Each client is a thread with its own
`Database` (``via_proxy=True``, a pool of one connection, like a Lambda
environment) and its own ``client_id``, looping: ``create``, ``claim_next``
(any client's job), ``complete`` (with the claim's attempt), ``list`` (a page
of 20), ``count_by_status``; as fast as it can until the time is up.

Afterwards the database itself is asked whether anything acknowledged was lost
or doubled (`check_run`). The second phase restarts the server (``pg_ctl -m
fast``: every session cut) half-way through and counts what failed; the third
does the same with clients that retry harmless calls for longer (`WIDER_RETRIES`).
tests/test_load.py runs the same workload on a smaller scale for correctness.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import shutil
import statistics
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import psycopg

from bench_common import Context, Section, Table, Target, fmt_int, fmt_ms, percentile
from cira_db import Database, JobRepository
from cira_db._embedded import start_embedded
from cira_db.errors import CiraDbError
from cira_db.migrations import Migrator
from local_proxy import PgBouncer, PgBouncerUnavailableError, restart_embedded, start_pgbouncer

__all__ = [
    "CALLS",
    "WIDER_RETRIES",
    "Checks",
    "ClientLog",
    "LoadRun",
    "LoadSite",
    "check_run",
    "load_site",
    "run_load",
]

T = TypeVar("T")
CALLS = ("create", "claim", "complete", "list", "count")
LEASE = timedelta(minutes=30)  # never runs out during a run: a second claim is a double claim
SERVER_POOL = 10  # pgbouncer default_pool_size: server connections shared by all clients
PAUSE_AFTER_ERROR = 0.05
# Retries wide enough to outlast a restart of a second or two (full jitter: about 6 s in all).
WIDER_RETRIES: dict[str, Any] = {"retry_attempts": 10, "retry_backoff": 0.2}
_FAILED: Any = object()


# -- where: a private server behind pgbouncer --------------------------------------------


@dataclass(frozen=True)
class LoadSite:
    """The private server's folder, the direct (migrations, checks) and proxied URLs."""

    directory: Path
    direct_url: str
    bouncer: PgBouncer

    @property
    def proxy_url(self) -> str:
        return self.bouncer.url(_dbname(self.direct_url))


def _dbname(url: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])


@contextlib.contextmanager
def load_site(*, server_pool: int = SERVER_POOL, max_clients: int = 200) -> Iterator[LoadSite]:
    """A migrated database on a fresh embedded server, with pgbouncer (TLS) in front."""
    # Under /tmp and traversable: the server and pgbouncer run as an unprivileged user.
    directory = Path(tempfile.mkdtemp(prefix="cira_db-load-", dir="/tmp"))
    directory.chmod(0o755)
    server = start_embedded(directory)
    try:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE cira_load")
        direct = psycopg.conninfo.make_conninfo(server.url, dbname="cira_load")
        Migrator(direct).apply()
        bouncer = start_pgbouncer(
            server.url, default_pool_size=server_pool, max_client_conn=max_clients
        )
        try:
            yield LoadSite(directory=directory, direct_url=direct, bouncer=bouncer)
        finally:
            bouncer.stop()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def reset(site: LoadSite) -> None:
    """Empty the tables between phases."""
    with psycopg.connect(site.direct_url, autocommit=True) as conn:
        conn.execute("TRUNCATE job_results, jobs")


# -- one client ------------------------------------------------------------------------


@dataclass
class ClientLog:
    """What one client was told. Ids are kept as 16 raw bytes each: the harness stays lean."""

    client_id: str
    created: bytearray = field(default_factory=bytearray)
    claimed: bytearray = field(default_factory=bytearray)
    completed: bytearray = field(default_factory=bytearray)
    latency_ns: dict[str, array[int]] = field(
        default_factory=lambda: {kind: array("q") for kind in CALLS}
    )
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    error_times: array[float] = field(default_factory=lambda: array("d"))
    complete_times: array[float] = field(default_factory=lambda: array("d"))

    def call(self, kind: str, work: Callable[[], T]) -> T:
        """``work()``, timed when it succeeds; a failure is counted and `_FAILED` returned."""
        start = time.perf_counter_ns()
        try:
            value = work()
        except Exception as exc:  # counted by type; anything not a CiraDbError is a finding
            name = type(exc).__name__
            self.errors[(kind, name if isinstance(exc, CiraDbError) else f"raw {name}")] += 1
            self.error_times.append(time.monotonic())
            time.sleep(PAUSE_AFTER_ERROR)
            return _FAILED  # type: ignore[no-any-return]
        self.latency_ns[kind].append(time.perf_counter_ns() - start)
        return value


def _one_round(jobs: JobRepository, log: ClientLog, serial: int) -> None:
    created = log.call(
        "create", lambda: jobs.create(client_id=log.client_id, pdf_url=f"https://e.com/{serial}")
    )
    if created is not _FAILED:
        log.created += created.id.bytes
    claimed = log.call("claim", lambda: jobs.claim_next(lease=LEASE))
    if claimed is not _FAILED and claimed is not None:
        log.claimed += claimed.id.bytes
        done = log.call(
            "complete",
            lambda: jobs.complete(
                claimed.id,
                extracted_data={"n": serial},
                confidence_score=0.9,
                tokens_used=serial,
                attempt=claimed.attempts,
            ),
        )
        if done is not _FAILED:
            log.completed += claimed.id.bytes
            log.complete_times.append(time.monotonic())
    log.call("list", lambda: jobs.list(client_id=log.client_id, limit=20))
    log.call("count", lambda: jobs.count_by_status(client_id=log.client_id))


def _client(db: Database, log: ClientLog, go: threading.Event, stop: threading.Event) -> None:
    jobs = JobRepository(db)
    go.wait()
    serial = 0
    while not stop.is_set():
        serial += 1
        _one_round(jobs, log, serial)


# -- memory ------------------------------------------------------------------------------


def _trim() -> None:
    """Collect garbage and hand free heap pages back (glibc), so RSS shows what is live
    rather than what the allocator keeps after a burst."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_kib(pid: int | str = "self") -> int:
    """Resident set size of a process in KiB (0 when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# -- one phase -------------------------------------------------------------------------


@dataclass(frozen=True)
class MemorySample:
    """Memory at one moment of a phase, in KiB."""

    at: float  # seconds into the phase
    rss: int  # this process (all clients)
    records: int  # what the benchmark's own records (ids, latencies) held then
    bouncer: int  # pgbouncer's process


def records_kib(logs: list[ClientLog]) -> int:
    """Bytes the clients' records take (ids and timings), in KiB: growth that is ours.

    Each buffer counts as allocated (``sys.getsizeof``), not as filled: a growing
    ``bytearray`` or ``array`` holds spare room for the next appends, which is resident too.
    """
    total = 0
    for log in logs:
        buffers = [log.created, log.claimed, log.completed, log.error_times, log.complete_times]
        total += sum(sys.getsizeof(b) for b in [*buffers, *log.latency_ns.values()])
    return total // 1024


@dataclass
class LoadRun:
    """One phase: what the clients saw, for how long, and memory on both sides."""

    clients: list[ClientLog]
    seconds: float
    memory: list[MemorySample]  # all connected, then each quarter of the phase
    hung: int  # client threads still running after the time was up (a deadlock or a hang)
    deadlocks: int  # pg_stat_database.deadlocks during the phase
    restart: tuple[float, float] | None = None  # monotonic: server stopped, server back

    def errors(self) -> Counter[tuple[str, str]]:
        return sum((log.errors for log in self.clients), Counter())

    def samples(self, kind: str) -> list[int]:
        return [ns for log in self.clients for ns in log.latency_ns[kind]]

    def acknowledged(self, which: str) -> list[UUID]:
        """Every id the clients were handed back: ``created``, ``claimed`` or ``completed``."""
        raw = b"".join(getattr(log, which) for log in self.clients)
        return [UUID(bytes=raw[i : i + 16]) for i in range(0, len(raw), 16)]

    def calls(self) -> int:
        ok = sum(len(self.samples(kind)) for kind in CALLS)
        return ok + sum(self.errors().values())

    def growth_kib(self, since: int = 1) -> tuple[int, int]:
        """RSS growth from sample ``since`` (1: a quarter of the way in, 2: half-way) to the
        end, and how much of it the benchmark's own records account for."""
        start, end = self.memory[since], self.memory[-1]
        return end.rss - start.rss, end.records - start.records


def _deadlocks(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def _open_clients(site: LoadSite, count: int, *, wider_retries: bool) -> list[Database]:
    dbs: list[Database] = []
    retries = WIDER_RETRIES if wider_retries else {}
    for _ in range(count):
        db = Database(
            site.proxy_url,
            via_proxy=True,
            migration_url=site.direct_url,
            pool_min_size=1,
            pool_max_size=1,
            **retries,
        )
        db.open()
        dbs.append(db)
    return dbs


def _close_all(dbs: list[Database]) -> None:
    threads = [threading.Thread(target=db.close) for db in dbs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run_load(
    site: LoadSite,
    *,
    clients: int,
    seconds: float,
    restart_at: float | None = None,
    wider_retries: bool = False,
) -> LoadRun:
    """``clients`` threads for ``seconds``; with ``restart_at`` the server restarts then.

    ``wider_retries``: clients retry harmless calls for longer (`WIDER_RETRIES`)."""
    deadlocks_before = _deadlocks(site.direct_url)
    dbs = _open_clients(site, clients, wider_retries=wider_retries)
    logs = [ClientLog(client_id=f"load-{i:03d}") for i in range(clients)]
    go, stop = threading.Event(), threading.Event()
    threads = [
        threading.Thread(target=_client, args=(db, log, go, stop), daemon=True)
        for db, log in zip(dbs, logs, strict=True)
    ]
    for thread in threads:
        thread.start()
    phase = _Phase(site, logs, time.monotonic())
    go.set()
    phase.drive(seconds, restart_at)
    stop.set()
    elapsed = time.monotonic() - phase.started
    for thread in threads:
        thread.join(timeout=30)
    hung = sum(thread.is_alive() for thread in threads)
    _close_all(dbs)
    deadlocks = _deadlocks(site.direct_url) - deadlocks_before
    return LoadRun(logs, elapsed, phase.memory, hung, deadlocks, phase.restart)


@dataclass
class _Phase:
    """The main thread's part while the clients run: memory samples and the restart."""

    site: LoadSite
    logs: list[ClientLog]
    started: float
    memory: list[MemorySample] = field(default_factory=list)
    restart: tuple[float, float] | None = None

    def sample(self) -> None:
        _trim()
        self.memory.append(
            MemorySample(
                at=time.monotonic() - self.started,
                rss=rss_kib(),
                records=records_kib(self.logs),
                bouncer=rss_kib(self.site.bouncer.pid or 0),
            )
        )

    def bounce(self) -> None:
        down = time.monotonic()
        restart_embedded(self.site.directory)
        self.restart = (down, time.monotonic())

    def drive(self, seconds: float, restart_at: float | None) -> None:
        """Sample at the start and each quarter; restart the server on cue."""
        marks = [(seconds * k / 4, self.sample) for k in range(5)]
        if restart_at is not None:
            marks.append((restart_at, self.bounce))
        for at, action in sorted(marks, key=lambda mark: mark[0]):
            time.sleep(max(0.0, self.started + at - time.monotonic()))
            action()


# -- what the database says afterwards ------------------------------------------------------


@dataclass(frozen=True)
class Checks:
    """Acknowledged work against the stored rows. Every field but the first three is 0 when
    nothing acknowledged was lost or doubled."""

    created_acked: int
    completed_acked: int
    stored_jobs: int
    created_missing: int  # a create that returned, its job not in the table
    created_twice: int  # the same id returned by two creates
    completed_not_done: int  # a complete that returned, its job not completed with one result
    completed_twice: int  # the same job acknowledged completed twice
    claimed_twice: int  # the same job handed to two claims (acknowledged)
    attempts_over_one: int  # jobs claimed more than once (the lease never ran out)
    extra_results: int  # result rows beyond one per job, or for a job not completed
    stored_not_acked: int  # rows no acknowledged create accounts for (a create that raised)
    processing_left: int  # claimed, never completed (a claim or complete that raised)

    def failures(self) -> dict[str, int]:
        """The checks that must be zero and are not."""
        names = (
            "created_missing",
            "created_twice",
            "completed_not_done",
            "completed_twice",
            "claimed_twice",
            "attempts_over_one",
            "extra_results",
        )
        return {name: getattr(self, name) for name in names if getattr(self, name)}


_CHECK_SQL = """
SELECT
  (SELECT count(*) FROM jobs WHERE id = ANY(%(created)s)),
  (SELECT count(*) FROM jobs j WHERE j.id = ANY(%(completed)s) AND j.status = 'completed'
     AND (SELECT count(*) FROM job_results r WHERE r.job_id = j.id) = 1),
  (SELECT count(*) FROM jobs WHERE attempts > 1),
  (SELECT count(*) FROM job_results r JOIN jobs j ON j.id = r.job_id
     WHERE j.status <> 'completed')
  + (SELECT coalesce(sum(n - 1), 0) FROM
       (SELECT count(*) AS n FROM job_results GROUP BY job_id HAVING count(*) > 1) AS d),
  (SELECT count(*) FROM jobs),
  (SELECT count(*) FROM jobs WHERE status = 'processing')
"""


def check_run(site: LoadSite, run: LoadRun) -> Checks:
    """Ask the database (directly, not through pgbouncer) what became of the acknowledged work."""
    created, claimed = run.acknowledged("created"), run.acknowledged("claimed")
    completed = run.acknowledged("completed")
    with psycopg.connect(site.direct_url, autocommit=True) as conn:
        row = conn.execute(
            _CHECK_SQL, {"created": list(set(created)), "completed": list(set(completed))}
        ).fetchone()
    assert row is not None
    found, done, retried, extra, stored, processing = (int(value) for value in row)
    return Checks(
        created_acked=len(created),
        completed_acked=len(completed),
        stored_jobs=stored,
        created_missing=len(set(created)) - found,
        created_twice=len(created) - len(set(created)),
        completed_not_done=len(set(completed)) - done,
        completed_twice=len(completed) - len(set(completed)),
        claimed_twice=len(claimed) - len(set(claimed)),
        attempts_over_one=retried,
        extra_results=extra,
        stored_not_acked=stored - len(set(created)),
        processing_left=processing,
    )


# -- the report ---------------------------------------------------------------------------


def _mib(kib: int) -> str:
    return f"{kib / 1024:,.1f}"


@dataclass(frozen=True)
class Phase:
    """One phase of the section: its name, its run and the checks afterwards."""

    label: str
    run: LoadRun
    checks: Checks


def _latency_table(phase: Phase) -> Table:
    title = f"{phase.label}: per successful call"
    table = Table(["call", "calls/s", "p50, ms", "p99, ms", "max, ms", "failed"], title=title)
    run = phase.run
    errors = run.errors()
    for kind in CALLS:
        ns = run.samples(kind)
        failed = sum(n for (call, _), n in errors.items() if call == kind)
        if not ns:
            table.add(f"`{kind}`", "0", "-", "-", "-", fmt_int(failed))
            continue
        table.add(
            f"`{kind}`",
            fmt_int(len(ns) / run.seconds),
            fmt_ms(statistics.median(ns) / 1e6),
            fmt_ms(percentile(ns, 0.99) / 1e6),
            fmt_ms(max(ns) / 1e6),
            fmt_int(failed),
        )
    return table


def _summary_table(phases: list[Phase]) -> Table:
    table = Table(
        [
            "phase",
            "seconds",
            "calls/s",
            "jobs completed/s",
            "failed calls",
            "hung clients / deadlocks",
            "client RSS growth from \u00bc to the end, MiB (records)",
        ]
    )
    for phase in phases:
        run = phase.run
        table.add(
            phase.label,
            f"{run.seconds:.1f}",
            fmt_int(run.calls() / run.seconds),
            fmt_int(phase.checks.completed_acked / run.seconds),
            fmt_int(sum(run.errors().values())),
            f"{run.hung} / {run.deadlocks}",
            _growth(run, short=True),
        )
    return table


def _memory_table(phases: list[Phase]) -> Table:
    table = Table(
        ["phase", "seconds in", "client RSS, MiB", "records, MiB", "pgbouncer RSS, MiB"],
        title="Memory (records: the benchmark's own ids and timings, part of the client RSS)",
    )
    for phase in phases:
        for sample in phase.run.memory:
            table.add(
                phase.label,
                f"{sample.at:.1f}",
                _mib(sample.rss),
                _mib(sample.records),
                _mib(sample.bouncer),
            )
    return table


_CHECK_LABELS = {
    "created_acked": "creates acknowledged",
    "completed_acked": "completes acknowledged",
    "stored_jobs": "jobs stored",
    "created_missing": "acknowledged create, job missing",
    "created_twice": "same id returned by two creates",
    "completed_not_done": "acknowledged complete, not completed with one result",
    "completed_twice": "same job acknowledged completed twice",
    "claimed_twice": "same job handed to two claims",
    "attempts_over_one": "jobs with attempts > 1 (claimed twice)",
    "extra_results": "result rows beyond one per completed job",
    "stored_not_acked": "stored, no create acknowledged it",
    "processing_left": "left processing (claim or complete raised)",
}


def _checks_table(phases: list[Phase]) -> Table:
    table = Table(["from the database", *(p.label for p in phases)], title="Checks")
    for name, label in _CHECK_LABELS.items():
        table.add(label, *(fmt_int(getattr(p.checks, name)) for p in phases))
    return table


def _errors_table(phases: list[Phase]) -> Table:
    table = Table(["phase", "call", "error raised", "times"], title="What failed")
    for phase in phases:
        errors = phase.run.errors()
        for (call, name), count in sorted(errors.items()):
            table.add(phase.label, f"`{call}`", f"`{name}`", fmt_int(count))
        if not errors:
            table.add(phase.label, "(none)", "-", "0")
    return table


def _restart_note(phase: Phase) -> str:
    run = phase.run
    assert run.restart is not None
    down, back = run.restart
    errors = [t for log in run.clients for t in log.error_times]
    completes = sorted(t for log in run.clients for t in log.complete_times if t > back)
    last_error = f"{max(errors) - back:+.2f} s" if errors else "none"
    first_ok = f"{completes[0] - back:.2f} s" if completes else "never"
    return (
        f"{phase.label}: the server was down (pg_ctl stop `-m fast` to started) for "
        f"{back - down:.2f} s. Last failed call at {last_error} from the server being back; "
        f"first acknowledged complete {first_ok} after it."
    )


# -- the section ------------------------------------------------------------------------------


def _phase(ctx: Context, site: LoadSite, label: str, **kw: Any) -> Phase:
    reset(site)
    ctx.log(f"load: {label}, {kw['clients']} clients x {kw['seconds']:g} s")
    run = run_load(site, **kw)
    checks = check_run(site, run)
    ctx.log(f"load: {label}: {run.calls():,} calls, {sum(run.errors().values())} failed")
    return Phase(label, run, checks)


@contextlib.contextmanager
def quiet_call_log() -> Iterator[None]:
    """Keep the library's per-call warnings (failures, slow calls) off the console: the
    benchmark counts failures itself and reports the slowest calls."""
    calls = logging.getLogger("cira_db.calls")
    level = calls.level
    calls.setLevel(logging.ERROR)
    try:
        yield
    finally:
        calls.setLevel(level)


STEADY, RESTART, WIDER = "steady", "server restart", "server restart, wider retries"


def run_load_section(ctx: Context) -> Section:
    clients, seconds = (20, 2.0) if ctx.quick else (50, 20.0)
    section = Section("load", "12. Under load through pgbouncer")
    kw: dict[str, Any] = {"clients": clients, "seconds": seconds}
    try:
        with load_site() as site, quiet_call_log():
            phases = [
                # twice as long: its second half, where memory must stay flat, comes after
                # the clients' TLS sessions and the allocator have settled
                _phase(ctx, site, STEADY, clients=clients, seconds=2 * seconds),
                _phase(ctx, site, RESTART, restart_at=seconds / 2, **kw),
                _phase(ctx, site, WIDER, restart_at=seconds / 2, wider_retries=True, **kw),
            ]
    except PgBouncerUnavailableError as exc:
        section.skipped.append(f"pgbouncer could not run here: {exc}")
        return section
    _fill(section, phases, clients)
    return section


def _fill(section: Section, phases: list[Phase], clients: int) -> None:
    section.tables = [
        _summary_table(phases),
        *(_latency_table(phase) for phase in phases),
        _errors_table(phases[1:]),
        _checks_table(phases),
        _memory_table(phases),
    ]
    section.intro = [_intro(clients, phases[0].run.seconds, phases[1].run.seconds)]
    section.notes = [
        _memory_note(phases[0].run),
        *(_restart_note(phase) for phase in phases[1:]),
        *_verdicts(phases),
    ]
    section.headlines = [_headline(phases, clients)]
    section.targets = _targets(phases)


# RSS growth allowed, beyond the benchmark's own records, from half-way through the steady
# phase to its end: "memory flat" with room for the allocator's noise, where a leak of a few
# dozen bytes per call over the phase's calls would show. Half-way, not a quarter: 50 threads'
# TLS sessions, libpq buffers and allocator arenas are still settling at a quarter (in one
# process making the same calls under tracemalloc, RSS beyond the records grew 7.8 MiB, then
# 0.4, then nothing per 20,000 calls, while Python's own memory grew exactly as the records).
FLAT_MIB = 1.0
HALF_WAY = 2  # the memory sample taken half-way through a phase


def _targets(phases: list[Phase]) -> list[Target]:
    steady = phases[0]
    bad = {
        **{f"{call} {error}": n for (call, error), n in steady.run.errors().items()},
        **steady.checks.failures(),
        "hung": steady.run.hung,
        "deadlocks": steady.run.deadlocks,
    }
    grew, ours = steady.run.growth_kib(HALF_WAY)
    targets = [
        Target(
            "Under load, steady: errors, hung clients, deadlocks, double claims, rows lost or "
            "doubled (section 12)",
            0,
            sum(bad.values()),
            at_least=False,
            unit="",
            why=f"By kind: {', '.join(f'{k} {v}' for k, v in bad.items() if v)}.",
        ),
        Target(
            "Under load, steady: RSS growth from half-way to the end beyond the benchmark's "
            "records (section 12)",
            FLAT_MIB,
            max(0, grew - ours) / 1024,
            at_least=False,
            unit=" MiB",
            why=(
                f"RSS grew {grew / 1024:,.1f} MiB from half-way to the end, "
                f"{ours / 1024:,.1f} MiB of it the benchmark's own records. "
                + _memory_note(steady.run)
            ),
        ),
    ]
    for phase in phases[1:]:
        lost = {**phase.checks.failures(), "hung": phase.run.hung}
        targets.append(
            Target(
                f"{phase.label.capitalize()}: acknowledged calls lost or doubled, hung clients "
                "(section 12)",
                0,
                sum(lost.values()),
                at_least=False,
                unit="",
                why=f"By kind: {', '.join(f'{k} {v}' for k, v in lost.items() if v)}.",
            )
        )
    return targets


def _intro(clients: int, steady: float, restart: float) -> str:
    return (
        f"{clients} client threads in one process, each with its own `Database` "
        "(`via_proxy=True`, a pool of one connection, default retries) and its own `client_id`, "
        f"for {steady:.0f} s in the steady phase and {restart:.0f} s in each restart phase, "
        "through pgbouncer (transaction pooling, client TLS "
        f"`verify-full` with a throwaway CA, `default_pool_size = {SERVER_POOL}` server "
        "connections shared by all clients) to a private embedded PostgreSQL 16. Each client "
        "loops as fast as it can: `create`, `claim_next` (any client's job, 30 min lease), "
        "`complete` with the claim's attempt, `list` (20 rows), `count_by_status`. Latency is "
        "per successful call, measured in the client thread (so it includes waiting for the "
        "GIL and for a pgbouncer server connection). Memory: this process's RSS (after "
        "`gc.collect()` and glibc's `malloc_trim(0)`, so it shows live memory) once all "
        "clients have connected and at each quarter of the phase; growth is counted from "
        "the first quarter (warmed up: every list page full) to the end, beside what the "
        "benchmark's own records grew by (each record buffer counted as allocated); the "
        "target for flat memory looks from half-way, when the clients' TLS sessions and the "
        "allocator have settled. In the restart phases the server is stopped "
        "(`pg_ctl -m fast`: every session cut) half-way through and started again; the "
        f"wider-retries client tries harmless calls up to {WIDER_RETRIES['retry_attempts']} times "
        f"from a {WIDER_RETRIES['retry_backoff']:g} s backoff (the default: 3 from 0.05 s). "
        "The library repeats reads and creates (the id is chosen before the first try), never "
        "a claim or a complete. The checks read the tables directly after each phase."
    )


def _verdicts(phases: list[Phase]) -> list[str]:
    steady = phases[0]
    errors = sum(steady.run.errors().values())
    missed = {**steady.checks.failures(), **({"errors": errors} if errors else {})}
    if steady.run.hung or steady.run.deadlocks:
        missed["hung or deadlocked"] = steady.run.hung + steady.run.deadlocks
    notes = [
        "Steady: target met (zero errors, no hang, no deadlock, no double claim)."
        if not missed
        else f"Steady: **target missed**: {missed}."
    ]
    for phase in phases[1:]:
        lost = phase.checks.failures()
        notes.append(
            f"{phase.label}: nothing acknowledged was lost or doubled."
            if not lost and not phase.run.hung
            else f"{phase.label}: **target missed**: {lost}, hung clients {phase.run.hung}."
        )
    return notes


def _growth(run: LoadRun, *, short: bool = False) -> str:
    grew, ours = run.growth_kib()
    if short:
        return f"{grew / 1024:+,.1f} ({ours / 1024:,.1f})"
    return f"{grew / 1024:+,.1f} MiB from \u00bc to the end ({ours / 1024:,.1f} of it records)"


def _memory_note(run: LoadRun) -> str:
    grew, ours = run.growth_kib()
    quarter, end = run.memory[1], run.memory[-1]
    share = (end.at - quarter.at) / run.seconds
    calls = max(1, round(run.calls() * share))
    return (
        f"Memory, steady: RSS grew {grew / 1024:,.1f} MiB from a quarter of the way in to the "
        f"end, {ours / 1024:,.1f} MiB of it the benchmark's own records; the rest is "
        f"{max(0, grew - ours) * 1024 / calls:,.0f} bytes per call over about {calls:,} calls. "
        f"pgbouncer: {_mib(quarter.bouncer)} \u2192 {_mib(end.bouncer)} MiB."
    )


def _failed(phase: Phase) -> str:
    failed = phase.run.errors()
    by_call = Counter[str]()
    for (call, _), count in failed.items():
        by_call[call] += count
    detail = ", ".join(f"{call} {count}" for call, count in sorted(by_call.items()))
    return f"{sum(failed.values())} calls failed" + (f" ({detail})" if detail else "")


def _headline(phases: list[Phase], n: int) -> str:
    steady, restart, wider = phases
    run, checks = steady.run, steady.checks
    claim = run.samples("claim")
    lost = {**restart.checks.failures(), **wider.checks.failures()}
    return (
        f"Under load, {n} clients through pgbouncer ({SERVER_POOL} server connections, TLS): "
        f"{fmt_int(run.calls() / run.seconds)} calls/s, claim p99 "
        f"{fmt_ms(percentile(claim, 0.99) / 1e6) if claim else '-'} ms, "
        f"{sum(run.errors().values())} errors, {checks.claimed_twice + checks.attempts_over_one} "
        f"double claims, client RSS {_growth(run)}; a server restart: {_failed(restart)}, "
        f"with wider retries {_failed(wider)}; "
        + ("nothing acknowledged lost or doubled." if not lost else f"**{lost}**.")
    )
