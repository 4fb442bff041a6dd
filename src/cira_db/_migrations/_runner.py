"""`Migrator`: plan, lock, check the history, then run each step.

`apply` and `rollback` are one skeleton (`Migrator._migrate`) with a
different plan and a different way to run and record a step.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, LiteralString

import psycopg

from cira_db._database import Database
from cira_db._errors_map import wrap_errors
from cira_db._migrations._files import Migration, load_migrations
from cira_db._migrations._history import (
    Applied,
    MigrationStatus,
    ensure_history_table,
    history_problems,
    read_history,
    status_of,
)
from cira_db._migrations._queries import run_query, scalar
from cira_db._migrations._split import split_statements
from cira_db._migrations._story import check_story_schema
from cira_db._observe import FIELD, step_span
from cira_db.errors import MigrationError, ValidationError

__all__ = ["LOCK_KEY", "Migrator"]

_log = logging.getLogger("cira_db.migrations")
# Key of the session advisory lock that serialises runners: "cira_db" in ASCII.
LOCK_KEY = 0x0063_6972_615F_6462


@dataclass(frozen=True, slots=True)
class _Step:
    """One file to run: a migration's up file, or its down file."""

    migration: Migration
    up: bool
    filename: str
    sql: str
    transactional: bool

    @classmethod
    def forward(cls, m: Migration) -> _Step:
        """The step that applies ``m``."""
        return cls(m, up=True, filename=m.filename, sql=m.sql, transactional=m.transactional)

    @classmethod
    def back(cls, m: Migration) -> _Step:
        """The step that undoes ``m``; a `MigrationError` when it has no down file."""
        if m.down_sql is None or m.down_filename is None:
            raise MigrationError(
                f"{m.filename} has no {m.filename[:-4]}.down.sql; it cannot be rolled back"
            )
        return cls(
            m,
            up=False,
            filename=m.down_filename,
            sql=m.down_sql,
            transactional=m.down_transactional,
        )


class Migrator:
    """Apply, inspect and roll back the schema migrations of ``db``.

    ``db`` may be a `Database` (opened or not: the migrator always uses its
    own direct connection, from ``migration_url`` when set) or a URL.
    ``directory`` replaces the packaged migrations, for tests and tools.
    """

    def __init__(
        self,
        db: Database | str,
        *,
        directory: Traversable | Path | None = None,
        applied_by: str | None = None,
    ) -> None:
        self._db = Database(db, pool=False) if isinstance(db, str) else db
        self._directory = directory
        self._applied_by = applied_by or _default_applied_by()
        self._migrations: list[Migration] | None = None

    @property
    def migrations(self) -> list[Migration]:
        """The known migrations, oldest first."""
        if self._migrations is None:
            self._migrations = load_migrations(self._directory)
        return self._migrations

    # -- reading --------------------------------------------------------------------

    def status(self) -> list[MigrationStatus]:
        """One entry per known migration, oldest first; never changes anything."""
        with self._connect() as conn:
            return self.report(conn)[0]

    def problems(self) -> list[str]:
        """What `apply` would refuse to run over; empty when history is sound."""
        with self._connect() as conn:
            return self.report(conn)[1]

    def report(self, conn: psycopg.Connection[Any]) -> tuple[list[MigrationStatus], list[str]]:
        """`status` and `problems` read over ``conn``, a connection the caller owns.

        A plain read with no session state, so unlike the other calls it may go
        through a transaction pooler (``cira-db check`` uses it that way).
        """
        history = read_history(conn)
        applied = {row.version: row for row in history}
        statuses = [status_of(m, applied.get(m.version)) for m in self.migrations]
        return statuses, history_problems(self.migrations, history)

    def pending(self) -> list[Migration]:
        """Known migrations not yet applied, oldest first."""
        return [m for m, s in zip(self.migrations, self.status(), strict=True) if not s.applied]

    # -- changing -------------------------------------------------------------------

    def apply(self, to: int | None = None, *, dry_run: bool = False) -> list[Migration]:
        """Apply pending migrations up to version ``to`` (default: all).

        Returns the migrations applied (or, with ``dry_run``, those that
        would be, with nothing executed or written). A ``to`` that is not a
        known version (0 to the latest) raises `ValidationError` before any
        connection is made.
        """
        target = len(self.migrations) if to is None else self._check_target(to, "migrate")
        return self._migrate(
            lambda history: self._plan_up(history, target),
            dry_run=dry_run,
            create_history=True,
        )

    def rollback(self, to: int, *, dry_run: bool = False) -> list[Migration]:
        """Undo applied migrations newer than version ``to``, newest first.

        A ``to`` that is not a known version raises `ValidationError` before
        any connection is made.
        """
        target = self._check_target(to, "roll back")
        return self._migrate(
            lambda history: self._plan_down(history, target),
            dry_run=dry_run,
            create_history=False,
        )

    def baseline(self) -> MigrationStatus:
        """Adopt a database created by the origin story's ``schema.sql``.

        Checks that ``jobs``, ``job_results`` and the ``job_status`` enum are
        the story's, then records 0001 as applied (without running it), so
        `apply` brings the database forward from there.
        """
        first = self.migrations[0]
        with self._connect() as conn, self._locked(conn):
            ensure_history_table(conn)
            if read_history(conn):
                raise MigrationError(
                    "baseline refused: schema_migrations already records migrations; "
                    "baseline is only for databases created by the story's schema.sql"
                )
            check_story_schema(conn)
            with wrap_errors("record the baseline"), conn.transaction():
                self._record_applied(conn, first, 0, applied_by=f"{self._applied_by} (baseline)")
            history = {row.version: row for row in read_history(conn)}
        return status_of(first, history.get(first.version))

    # -- the skeleton ---------------------------------------------------------------

    def _migrate(
        self,
        plan: Callable[[Sequence[Applied]], list[_Step]],
        *,
        dry_run: bool,
        create_history: bool,
    ) -> list[Migration]:
        """Plan, lock, check the history, run each step (dry run: plan only)."""
        with self._connect() as conn:
            if dry_run:
                return [step.migration for step in plan(self._sound_history(conn))]
            with self._locked(conn):
                if create_history:
                    ensure_history_table(conn)
                steps = plan(self._sound_history(conn))
                for step in steps:
                    self._run(conn, step)
                return [step.migration for step in steps]

    def _check_target(self, to: object, verb: str) -> int:
        """``to`` as a known version, or a `ValidationError` naming it."""
        if isinstance(to, bool) or not isinstance(to, int):
            raise ValidationError(
                "to", f"must be a migration version (an int), not {type(to).__name__}"
            )
        latest = len(self.migrations)
        if not 0 <= to <= latest:
            raise ValidationError("to", f"cannot {verb} to {to}: known versions are 0..{latest}")
        return to

    def _sound_history(self, conn: psycopg.Connection[Any]) -> list[Applied]:
        history = read_history(conn)
        problems = history_problems(self.migrations, history)
        if problems:
            raise MigrationError("; ".join(problems) + "; nothing was run")
        return history

    def _plan_up(self, history: Sequence[Applied], target: int) -> list[_Step]:
        current = max((row.version for row in history), default=0)
        if target < current:
            raise MigrationError(
                f"the database is at version {current}, newer than {target}; "
                f"use rollback --to {target} to go back"
            )
        return [_Step.forward(m) for m in self.migrations if current < m.version <= target]

    def _plan_down(self, history: Sequence[Applied], target: int) -> list[_Step]:
        applied = {row.version for row in history}
        return [
            _Step.back(m)
            for m in reversed(self.migrations)
            if m.version > target and m.version in applied
        ]

    def _record(self, conn: psycopg.Connection[Any], step: _Step, elapsed_ms: int) -> None:
        """Record in schema_migrations that ``step`` ran (in its transaction, if it has one)."""
        if step.up:
            self._record_applied(conn, step.migration, elapsed_ms)
        else:
            run_query(conn, "forget_migration", version=step.migration.version)

    def _record_applied(
        self,
        conn: psycopg.Connection[Any],
        migration: Migration,
        elapsed_ms: int,
        *,
        applied_by: str | None = None,
    ) -> None:
        run_query(
            conn,
            "record_migration",
            version=migration.version,
            name=migration.name,
            checksum=migration.checksum,
            execution_ms=elapsed_ms,
            applied_by=applied_by or self._applied_by,
        )

    # -- running one step -----------------------------------------------------------

    def _run(self, conn: psycopg.Connection[Any], step: _Step) -> None:
        settings = self._db.settings
        timeouts = {
            "lock_timeout": settings.migration_lock_timeout,
            "statement_timeout": settings.migration_statement_timeout,
        }
        started = time.monotonic()
        _log.info("running %s", step.filename, extra={FIELD: {"migration": step.filename}})
        with step_span(step.filename, conn):
            self._run_step(conn, step, timeouts, started)
        elapsed_ms = round((time.monotonic() - started) * 1000, 1)
        _log.info(
            "finished %s in %.0f ms",
            step.filename,
            elapsed_ms,
            extra={FIELD: {"migration": step.filename, "duration_ms": elapsed_ms}},
        )

    def _run_step(
        self, conn: psycopg.Connection[Any], step: _Step, timeouts: dict[str, str], started: float
    ) -> None:
        if step.transactional:
            with wrap_errors(step.filename, mapper=_rolled_back), conn.transaction():
                run_query(conn, "set_local_timeouts", **timeouts)
                conn.execute(_as_literal(step.sql))
                self._record(conn, step, int((time.monotonic() - started) * 1000))
        else:
            with wrap_errors(step.filename, mapper=_failed_part_way):
                run_query(conn, "set_session_timeouts", **timeouts)
                for statement in split_statements(step.sql):
                    conn.execute(_as_literal(statement))
                self._record(conn, step, int((time.monotonic() - started) * 1000))

    # -- connection and lock --------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[psycopg.Connection[Any]]:
        conn = self._db.connect_direct(for_migrations=True)
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _locked(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        """Hold the runners' session advisory lock, polling for it up to the lock wait."""
        wait = self._db.settings.migration_lock_wait
        deadline = time.monotonic() + wait
        delay = 0.05
        with wrap_errors("take the migration lock"):
            while not scalar(run_query(conn, "try_lock", key=LOCK_KEY)):
                if time.monotonic() >= deadline:
                    raise MigrationError(
                        f"another migration runner holds the lock (waited {wait:g}s); "
                        "wait for it to finish, or raise CIRA_DB_MIGRATION_LOCK_WAIT"
                    )
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        try:
            yield
        finally:
            if not conn.closed and not conn.broken:
                with wrap_errors("release the migration lock"):
                    run_query(conn, "unlock", key=LOCK_KEY)


def _default_applied_by() -> str:
    function = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
    if function:
        return f"lambda:{function}"
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _as_literal(sql: str) -> LiteralString:
    # Migration text is read from files shipped inside the package (or a
    # directory the operator passed), never from request data. (mypy treats
    # LiteralString as str, so no cast is needed for it.)
    return sql


def _rolled_back(exc: psycopg.Error, filename: str) -> MigrationError:
    """The error of a transactional migration that failed (its transaction rolled back)."""
    return MigrationError(f"{filename} failed and was rolled back: {_server_message(exc)}")


def _failed_part_way(exc: psycopg.Error, filename: str) -> MigrationError:
    """The error of a no-transaction migration that failed after some statements ran."""
    return MigrationError(
        f"{filename} (no-transaction) failed part way: {_server_message(exc)}; "
        "fix the cause and run it again (its statements must be re-runnable)"
    )


def _server_message(exc: psycopg.Error) -> str:
    """The server's primary message and SQLSTATE.

    A migration's own errors (RAISE EXCEPTION in 0002's checks, syntax errors)
    are about the schema, not about request data, so their primary message is
    shown; parameters never reach migration SQL.
    """
    primary = exc.diag.message_primary or type(exc).__name__
    state = exc.sqlstate or "no SQLSTATE"
    hint = exc.diag.message_hint
    return f"{primary} ({state})" + (f" hint: {hint}" if hint else "")
