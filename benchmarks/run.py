"""cira_db benchmark suite: ``.venv/bin/python benchmarks/run.py [--quick] [--url URL]``.

Starts an embedded PostgreSQL 16 in a temporary folder (or uses the server
given with ``--url``), creates a fresh database there, applies the
migrations, runs the benchmarks, prints their tables and rewrites
docs/performance.md below its marker line (``--output`` to write elsewhere).
The database is dropped and the embedded server stopped at the end.

1. per-call latency: the library against raw psycopg, prepares on and off;
2. queue throughput with 1 and 2 worker processes;
3. bulk insert: ``create_many`` against COPY, and peak memory;
5. time-ordered against random ids (before 4, while the table is small);
4. index plans on 1,000,000 jobs, the library's indexes against the story's;
6. the locks migrations 0003 to 0005 take on 1,000,000 jobs, and for how long;
7. the asyncio face against raw psycopg async on the same pool;
8. a Lambda cold start: fresh processes, the library against psycopg + psycopg_pool;
9. fair share between clients, and the claims on 1,000,000 scheduled, prioritised jobs.
10. what observing a call costs: logs off and on, with and without an OpenTelemetry SDK.
11. the peer queues (pgqueuer, procrastinate) and SQLAlchemy 2 Core (the ``bench`` extra).
12. 50 clients through pgbouncer (TLS), steady and across a server restart.

``--quick`` runs everything on small sizes as a smoke test (under a minute)
and writes a report only if ``--output`` is given.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench_async import run_async
from bench_bulk import run_bulk
from bench_coldstart import run_coldstart
from bench_common import Context, Section, connect_raw
from bench_fair import run_fair
from bench_ids import run_ids
from bench_latency import run_latency
from bench_load import run_load_section
from bench_migration import run_migration
from bench_observe import run_observe
from bench_peers import run_peers
from bench_plans import run_plans
from bench_queue import run_queue
from bench_report import (
    LoadSampler,
    RunInfo,
    describe_environment,
    print_err,
    render,
    write_report,
)
from cira_db._embedded import start_embedded
from cira_db.migrations import Migrator

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "docs" / "performance.md"
BENCHMARKS: dict[str, tuple[str, Callable[[Context], Section]]] = {
    "latency": ("1. Per-call latency, one call at a time", run_latency),
    "queue": ("2. Queue throughput", run_queue),
    "bulk": ("3. Bulk insert", run_bulk),
    "ids": ("5. Time-ordered ids against random ids", run_ids),
    "plans": ("4. Index plans at scale", run_plans),
    "migration": ("6. Migrations 0003 to 0005 on a large table", run_migration),
    "async": ("7. The asyncio face", run_async),
    "coldstart": ("8. Cold start of a Lambda function", run_coldstart),
    "fair": ("9. Fair share, the claim, cancel and queue_stats at scale", run_fair),
    "observe": ("10. Observability overhead", run_observe),
    "peers": ("11. Peer queues and SQLAlchemy Core", run_peers),
    "load": ("12. Under load through pgbouncer", run_load_section),
}
# report order
ORDER = (
    "latency",
    "queue",
    "bulk",
    "plans",
    "ids",
    "migration",
    "async",
    "coldstart",
    "fair",
    "observe",
    "peers",
    "load",
)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py", description="Benchmark cira_db and write docs/performance.md."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--url",
        help="use this server (needs CREATEDB) instead of starting an embedded PostgreSQL 16",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="report file (default: docs/performance.md; none for --quick unless given)",
    )
    parser.add_argument(
        "--only",
        help=f"comma-separated subset of: {', '.join(BENCHMARKS)} (the others are reported "
        "as skipped)",
    )
    return parser.parse_args(argv)


def _url_for(url: str, dbname: str) -> str:
    params = dict(conninfo_to_dict(url))
    params["dbname"] = dbname
    return make_conninfo("", **params)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    selected = list(BENCHMARKS)
    if args.only:
        selected = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in selected if name not in BENCHMARKS]
        if unknown:
            print_err(f"unknown benchmark(s): {', '.join(unknown)}")
            return 2
    output: Path | None = args.output or (None if args.quick else DEFAULT_OUTPUT)
    load_before = os.getloadavg()
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    server = None
    if args.url:
        admin_url = str(args.url)
    else:
        log("starting an embedded PostgreSQL 16 in a temporary folder")
        server = start_embedded(None)
        admin_url = server.url
    dbname = f"cira_bench_{uuid.uuid4().hex[:12]}"
    sections: list[Section] = []
    failures: list[str] = []
    sampler = LoadSampler()
    sampler.start()
    try:
        with connect_raw(admin_url, prepare_threshold=None) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        url = _url_for(admin_url, dbname)
        try:
            log(f"database {dbname}: applying migrations")
            Migrator(url).apply()
            env = describe_environment(url, embedded=server is not None)
            log(f"{env.server}; {env.connection}")
            ctx = Context(url=url, quick=args.quick, log=log)
            for key in BENCHMARKS:
                title, bench = BENCHMARKS[key]
                if key not in selected:
                    skipped = Section(key, title)
                    skipped.skipped.append("not selected in this run (`--only`).")
                    sections.append(skipped)
                    continue
                begin = time.monotonic()
                try:
                    section = bench(ctx)
                except Exception as exc:
                    traceback.print_exc()
                    section = Section(key, title)
                    message = f"{title}: failed with {type(exc).__name__}: {exc}"
                    section.skipped.append(f"failed with {type(exc).__name__}: {exc}")
                    failures.append(message)
                section.seconds = time.monotonic() - begin
                section.load = (sampler.peak(begin, time.monotonic()), 0.0, 0.0)
                sections.append(section)
                print(f"\n== {section.title} ({section.seconds:.0f} s)")
                for table in section.tables:
                    print(table.text(), end="\n\n")
                for note in section.skipped:
                    print(f"skipped: {note}")
        finally:
            with connect_raw(admin_url, prepare_threshold=None) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(dbname)
                    )
                )
    finally:
        sampler.stop()
        if server is not None:
            server.stop()

    ordered = sorted(sections, key=lambda s: ORDER.index(s.key))
    command = "benchmarks/run.py" + (" --quick" if args.quick else "")
    if args.url:
        command += " --url ..."
    if args.only:
        command += f" --only {args.only}"
    run = RunInfo(
        quick=args.quick,
        seconds=time.monotonic() - started,
        load_before=load_before,
        load_after=os.getloadavg(),
        command=command,
        failures=failures,
    )
    generated = render(env, ordered, run)
    print("\nHeadline figures:")
    for section in ordered:
        for line in section.headlines:
            print(f"- {line.replace('`', '')}")
    if output is not None:
        write_report(output, generated)
        log(f"wrote {output}")
    else:
        log("quick run: no report written (pass --output PATH to write one)")
    log(f"done in {(time.monotonic() - started) / 60:.1f} min")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
