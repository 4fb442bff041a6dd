"""Schema migrations: plain SQL files shipped in the package, applied in order.

``Migrator(db)`` reads ``cira_db/sql/migrations/NNNN_name.sql`` (and the
``NNNN_name.down.sql`` beside each) with `importlib.resources`, so it works
from a wheel, a zip or a Lambda layer, and records what it applied in
``schema_migrations``.

Guarantees:

* Only one runner at a time: a session advisory lock on a dedicated direct
  connection (never a pooled or proxied one), waited for with polling up to
  ``migration_lock_wait`` seconds, then a `MigrationError`.
* Every run validates the history first: an applied file that changed, an
  applied version the package does not know, or a gap in the applied
  versions stops the run before anything executes.
* Each migration and its history record commit in one transaction, with
  ``lock_timeout`` and ``statement_timeout`` set for it. A file whose header
  holds ``-- cira_db: no-transaction`` runs statement by statement instead
  (for ``CREATE INDEX CONCURRENTLY``); such files must be re-runnable.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, LiteralString

import psycopg

from cira_db._database import Database
from cira_db._errors_map import translate
from cira_db._sql import query
from cira_db.errors import CiraDbError, ConfigurationError, MigrationError

__all__ = ["Migration", "MigrationStatus", "Migrator"]

_UP = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_DOWN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.down\.sql$")
_NO_TRANSACTION = re.compile(r"^--\s*cira_db:\s*no-transaction\s*$", re.MULTILINE)
# Key of the session advisory lock that serialises runners: "cira_db" in ASCII.
_log = logging.getLogger("cira_db.migrations")
LOCK_KEY = 0x0063_6972_615F_6462
_HISTORY_COLUMNS = ["version", "name", "checksum", "applied_at", "execution_ms", "applied_by"]
_SQL = "migrator.sql"

# The origin story's schema, as baseline() expects to find it.
_STORY_COLUMNS: dict[str, dict[str, str]] = {
    "jobs": {
        "id": "uuid",
        "client_id": "varchar",
        "status": "job_status",
        "pdf_url": "varchar",
        "created_at": "timestamp",
        "updated_at": "timestamp",
        "completed_at": "timestamp",
        "error_message": "text",
    },
    "job_results": {
        "id": "uuid",
        "job_id": "uuid",
        "extracted_data": "jsonb",
        "confidence_score": "numeric",
        "tokens_used": "int4",
        "created_at": "timestamp",
    },
}
_STORY_LABELS = ["queued", "processing", "completed", "failed"]
# (table, kind, columns, referenced table): the keys the repositories rely on.
_STORY_KEYS = {
    ("jobs", "p", "id", ""): "jobs has no primary key on id",
    ("job_results", "p", "id", ""): "job_results has no primary key on id",
    ("job_results", "u", "job_id", ""): "job_results.job_id is not UNIQUE",
    ("job_results", "f", "job_id", "jobs"): "job_results.job_id does not reference jobs",
}


def checksum(text: str) -> str:
    """SHA-256 of ``text`` with line endings normalised to ``\\n``."""
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file of the package (and its down file, when present)."""

    version: int
    name: str
    filename: str
    sql: str
    down_filename: str | None
    down_sql: str | None
    transactional: bool
    down_transactional: bool

    @property
    def checksum(self) -> str:
        """The checksum recorded when this migration is applied."""
        return checksum(self.sql)


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """One known migration and what the database says about it."""

    version: int
    name: str
    applied_at: datetime | None
    checksum_matches: bool | None
    """True or False once applied; None while pending."""

    @property
    def applied(self) -> bool:
        """Whether the database records this migration as applied."""
        return self.applied_at is not None


@dataclass(frozen=True, slots=True)
class _Applied:
    version: int
    name: str
    checksum: str
    applied_at: datetime


def load_migrations(directory: Traversable | Path | None = None) -> list[Migration]:
    """Read and check the migration files of ``directory`` (default: the package's).

    Versions must be unique and run 1, 2, 3... without gaps; every down file
    needs its up file.
    """
    folder: Traversable = (
        resources.files("cira_db.sql.migrations") if directory is None else directory
    )
    ups: dict[int, tuple[str, str]] = {}
    downs: dict[int, str] = {}
    for entry in folder.iterdir():
        if not entry.is_file():
            continue
        if match := _DOWN.match(entry.name):
            downs[int(match.group(1))] = entry.name
        elif match := _UP.match(entry.name):
            version = int(match.group(1))
            if version in ups:
                raise MigrationError(
                    f"two migration files share version {version:04d}: "
                    f"{ups[version][0]} and {entry.name}"
                )
            ups[version] = (entry.name, match.group(2))
    for version, orphan in downs.items():
        if version not in ups:
            raise MigrationError(f"{orphan} has no up migration beside it")
    migrations: list[Migration] = []
    for expected, version in enumerate(sorted(ups), start=1):
        filename, name = ups[version]
        if version != expected:
            raise MigrationError(
                f"migration {expected:04d} is missing: the files jump to {filename}"
            )
        sql = folder.joinpath(filename).read_text(encoding="utf-8")
        down_name = downs.get(version)
        down_sql = folder.joinpath(down_name).read_text(encoding="utf-8") if down_name else None
        migrations.append(
            Migration(
                version=version,
                name=name,
                filename=filename,
                sql=sql,
                down_filename=down_name,
                down_sql=down_sql,
                transactional=_is_transactional(sql),
                down_transactional=down_sql is None or _is_transactional(down_sql),
            )
        )
    return migrations


def _is_transactional(sql: str) -> bool:
    return _NO_TRANSACTION.search(_header(sql)) is None


def _header(sql: str) -> str:
    lines: list[str] = []
    for line in sql.splitlines():
        if line.strip() and not line.lstrip().startswith("--"):
            break
        lines.append(line.strip())
    return "\n".join(lines)


def split_statements(sql: str) -> list[str]:
    """Split SQL text on top-level semicolons.

    Quotes, double quotes, dollar quotes and comments are respected, so
    function bodies stay whole. Used only for no-transaction migrations.
    """
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end == -1 else end
            current.append(sql[i:end])
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end == -1 else end + 2
            current.append(sql[i:end])
            i = end
        elif ch in ("'", '"'):
            end = i + 1
            while end < n:
                if sql[end] == ch:
                    if end + 1 < n and sql[end + 1] == ch:
                        end += 2
                        continue
                    break
                end += 1
            current.append(sql[i : end + 1])
            i = end + 1
        elif ch == "$" and (tag := re.match(r"\$[A-Za-z_]*\$", sql[i:])):
            delimiter = tag.group(0)
            end = sql.find(delimiter, i + len(delimiter))
            end = n if end == -1 else end + len(delimiter)
            current.append(sql[i:end])
            i = end
        elif ch == ";":
            statements.append("".join(current))
            current = []
            i += 1
        else:
            current.append(ch)
            i += 1
    statements.append("".join(current))
    return [s.strip() for s in statements if _has_code(s)]


def _has_code(statement: str) -> bool:
    without_comments = re.sub(r"--[^\n]*|/\*.*?\*/", "", statement, flags=re.DOTALL)
    return bool(without_comments.strip())


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

    # -- public operations ----------------------------------------------------

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
        history = self._read_history(conn)
        applied = {row.version: row for row in history}
        statuses = [self._status_of(m, applied.get(m.version)) for m in self.migrations]
        return statuses, self._problems(history)

    def pending(self) -> list[Migration]:
        """Known migrations not yet applied, oldest first."""
        return [m for m, s in zip(self.migrations, self.status(), strict=True) if not s.applied]

    def apply(self, to: int | None = None, *, dry_run: bool = False) -> list[Migration]:
        """Apply pending migrations up to version ``to`` (default: all).

        Returns the migrations applied (or, with ``dry_run``, those that
        would be, with nothing executed or written).
        """
        target = self._check_target(to)
        with self._connect() as conn:
            if dry_run:
                history = self._read_history(conn)
                self._raise_problems(history)
                return self._plan_up(history, target)
            with self._locked(conn):
                self._ensure_history_table(conn)
                history = self._read_history(conn)
                self._raise_problems(history)
                plan = self._plan_up(history, target)
                for migration in plan:
                    self._run_up(conn, migration)
                return plan

    def rollback(self, to: int, *, dry_run: bool = False) -> list[Migration]:
        """Undo applied migrations newer than version ``to``, newest first."""
        if to < 0 or to > len(self.migrations):
            raise MigrationError(
                f"cannot roll back to {to}: known versions are 0..{len(self.migrations)}"
            )
        with self._connect() as conn:
            if dry_run:
                history = self._read_history(conn)
                self._raise_problems(history)
                return self._plan_down(history, to)
            with self._locked(conn):
                history = self._read_history(conn)
                self._raise_problems(history)
                plan = self._plan_down(history, to)
                for migration in plan:
                    self._run_down(conn, migration)
                return plan

    def baseline(self) -> MigrationStatus:
        """Adopt a database created by the origin story's ``schema.sql``.

        Checks that ``jobs``, ``job_results`` and the ``job_status`` enum are
        the story's, then records 0001 as applied (without running it), so
        `apply` brings the database forward from there.
        """
        first = self.migrations[0]
        with self._connect() as conn, self._locked(conn):
            self._ensure_history_table(conn)
            if self._read_history(conn):
                raise MigrationError(
                    "baseline refused: schema_migrations already records migrations; "
                    "baseline is only for databases created by the story's schema.sql"
                )
            self._check_story_schema(conn)
            with self._wrap("record the baseline"), conn.transaction():
                self._execute(
                    conn,
                    "record_migration",
                    version=first.version,
                    name=first.name,
                    checksum=first.checksum,
                    execution_ms=0,
                    applied_by=f"{self._applied_by} (baseline)",
                )
            history = {row.version: row for row in self._read_history(conn)}
        return self._status_of(first, history.get(first.version))

    # -- planning and validation ----------------------------------------------

    def _check_target(self, to: int | None) -> int:
        latest = len(self.migrations)
        if to is None:
            return latest
        if to < 0 or to > latest:
            raise MigrationError(f"cannot migrate to {to}: known versions are 0..{latest}")
        return to

    def _plan_up(self, history: Sequence[_Applied], target: int) -> list[Migration]:
        current = max((row.version for row in history), default=0)
        if target < current:
            raise MigrationError(
                f"the database is at version {current}, newer than {target}; "
                f"use rollback --to {target} to go back"
            )
        return [m for m in self.migrations if current < m.version <= target]

    def _plan_down(self, history: Sequence[_Applied], target: int) -> list[Migration]:
        applied = {row.version for row in history}
        plan = [m for m in reversed(self.migrations) if m.version > target and m.version in applied]
        for migration in plan:
            if migration.down_sql is None:
                raise MigrationError(
                    f"{migration.filename} has no {migration.filename[:-4]}.down.sql; "
                    "it cannot be rolled back"
                )
        return plan

    def _problems(self, history: Sequence[_Applied]) -> list[str]:
        known = {m.version: m for m in self.migrations}
        problems: list[str] = []
        for row in history:
            migration = known.get(row.version)
            if migration is None:
                problems.append(
                    f"migration {row.version:04d}_{row.name}.sql is recorded as applied but "
                    "this cira_db package has no such file; install the version that applied it"
                )
            elif migration.checksum != row.checksum:
                problems.append(
                    f"{migration.filename} changed after it was applied (recorded checksum "
                    f"{row.checksum[:12]}, file {migration.checksum[:12]}); restore the file "
                    "as applied and put the change in a new migration"
                )
            elif migration.name != row.name:
                problems.append(
                    f"migration {row.version:04d} was applied as {row.name!r} "
                    f"but the file is {migration.filename}"
                )
        applied = sorted(row.version for row in history)
        if applied and applied != list(range(1, applied[-1] + 1)):
            missing = sorted(set(range(1, applied[-1] + 1)) - set(applied))
            problems.append(
                "applied versions have gaps (missing "
                + ", ".join(f"{v:04d}" for v in missing)
                + "); the history was edited by hand"
            )
        return problems

    def _raise_problems(self, history: Sequence[_Applied]) -> None:
        problems = self._problems(history)
        if problems:
            raise MigrationError("; ".join(problems) + "; nothing was run")

    def _status_of(self, migration: Migration, row: _Applied | None) -> MigrationStatus:
        return MigrationStatus(
            version=migration.version,
            name=migration.name,
            applied_at=row.applied_at if row else None,
            checksum_matches=(row.checksum == migration.checksum) if row else None,
        )

    def _check_story_schema(self, conn: psycopg.Connection[Any]) -> None:
        with self._wrap("inspect the schema"):
            rows = self._execute(conn, "story_columns").fetchall()
            labels = [r[0] for r in self._execute(conn, "job_status_labels").fetchall()]
        found: dict[str, dict[str, str]] = {}
        for table, column, udt in rows:
            found.setdefault(table, {})[column] = udt
        if "jobs" not in found:
            raise MigrationError(
                "baseline refused: there is no jobs table to adopt; "
                "run `cira-db migrate` to create the schema instead"
            )
        differences: list[str] = []
        for table, expected in _STORY_COLUMNS.items():
            actual = found.get(table)
            if actual is None:
                differences.append(f"table {table} is missing")
                continue
            missing = sorted(set(expected) - set(actual))
            extra = sorted(set(actual) - set(expected))
            if missing:
                differences.append(f"{table} lacks column(s) {', '.join(missing)}")
            if extra:
                differences.append(f"{table} has unexpected column(s) {', '.join(extra)}")
            for column in sorted(set(expected) & set(actual)):
                if expected[column] != actual[column]:
                    differences.append(
                        f"{table}.{column} is {actual[column]}, expected {expected[column]}"
                    )
        if "job_results" in found:
            with self._wrap("inspect the schema"):
                keys = {tuple(r) for r in self._execute(conn, "story_constraints").fetchall()}
            differences.extend(message for key, message in _STORY_KEYS.items() if key not in keys)
        if labels != _STORY_LABELS:
            differences.append(
                f"enum job_status has labels {labels or 'none'}, expected {_STORY_LABELS}"
            )
        if differences:
            raise MigrationError(
                "baseline refused: the schema is not the story's schema.sql: "
                + "; ".join(differences)
            )

    # -- execution ------------------------------------------------------------

    def _run_up(self, conn: psycopg.Connection[Any], migration: Migration) -> None:
        self._run(
            conn,
            migration.filename,
            migration.sql,
            transactional=migration.transactional,
            record=lambda elapsed_ms: self._execute(
                conn,
                "record_migration",
                version=migration.version,
                name=migration.name,
                checksum=migration.checksum,
                execution_ms=elapsed_ms,
                applied_by=self._applied_by,
            ),
        )

    def _run_down(self, conn: psycopg.Connection[Any], migration: Migration) -> None:
        if migration.down_sql is None or migration.down_filename is None:  # pragma: no cover
            raise MigrationError(f"{migration.filename} has no down migration")
        self._run(
            conn,
            migration.down_filename,
            migration.down_sql,
            transactional=migration.down_transactional,
            record=lambda _elapsed_ms: self._execute(
                conn, "forget_migration", version=migration.version
            ),
        )

    def _run(
        self,
        conn: psycopg.Connection[Any],
        filename: str,
        sql: str,
        *,
        transactional: bool,
        record: Callable[[int], object],
    ) -> None:
        settings = self._db.settings
        timeouts = {
            "lock_timeout": settings.migration_lock_timeout,
            "statement_timeout": settings.migration_statement_timeout,
        }
        started = time.monotonic()
        _log.info("running %s", filename)
        try:
            if transactional:
                with conn.transaction():
                    self._execute(conn, "set_local_timeouts", **timeouts)
                    conn.execute(_as_literal(sql))
                    record(int((time.monotonic() - started) * 1000))
            else:
                self._execute(conn, "set_session_timeouts", **timeouts)
                for statement in split_statements(sql):
                    conn.execute(_as_literal(statement))
                record(int((time.monotonic() - started) * 1000))
            _log.info("finished %s in %.0f ms", filename, (time.monotonic() - started) * 1000)
        except psycopg.Error as exc:
            reason = _server_message(exc)
            raise MigrationError(
                f"{filename} failed and was rolled back: {reason}"
                if transactional
                else f"{filename} (no-transaction) failed part way: {reason}; "
                "fix the cause and run it again (its statements must be re-runnable)"
            ) from exc

    def _execute(
        self, conn: psycopg.Connection[Any], query_name: str, /, **params: Any
    ) -> psycopg.Cursor[Any]:
        q = query(_SQL, query_name)
        return conn.execute(q.sql, q.bind(params) if q.params else None)

    # -- connections, lock, history ---------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[psycopg.Connection[Any]]:
        settings = self._db.settings
        if (
            settings.migration_url is None
            and settings.secret_arn is None
            and (settings.behind_proxy())
        ):
            variable = "CIRA_DB_URL" if settings.url is not None else "CIRA_DB_HOST"
            raise ConfigurationError(
                f"migrations need a direct connection, but {variable} points at a "
                "transaction pooler (RDS Proxy/pgbouncer); set CIRA_DB_MIGRATION_URL to the "
                "database endpoint itself"
            )
        conn = self._db.connect_direct(for_migrations=True)
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _locked(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        wait = self._db.settings.migration_lock_wait
        deadline = time.monotonic() + wait
        delay = 0.05
        with self._wrap("take the migration lock"):
            while not _scalar(self._execute(conn, "try_lock", key=LOCK_KEY)):
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
                with self._wrap("release the migration lock"):
                    self._execute(conn, "unlock", key=LOCK_KEY)

    def _ensure_history_table(self, conn: psycopg.Connection[Any]) -> None:
        with self._wrap("create schema_migrations"):
            self._execute(conn, "create_history_table")

    def _read_history(self, conn: psycopg.Connection[Any]) -> list[_Applied]:
        with self._wrap("read schema_migrations"):
            if not _scalar(self._execute(conn, "history_table_exists")):
                return []
            columns = [r[0] for r in self._execute(conn, "history_columns").fetchall()]
            if columns != _HISTORY_COLUMNS:
                raise MigrationError(
                    "schema_migrations exists but is not cira_db's (columns: "
                    + ", ".join(columns)
                    + "); rename it before running cira_db migrations"
                )
            rows = self._execute(conn, "applied_migrations").fetchall()
        return [_Applied(version=r[0], name=r[1], checksum=r[2], applied_at=r[3]) for r in rows]

    @contextmanager
    def _wrap(self, operation: str) -> Iterator[None]:
        try:
            yield
        except CiraDbError:
            raise
        except psycopg.Error as exc:
            raise translate(exc, operation) from exc


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


def _scalar(cursor: psycopg.Cursor[Any]) -> Any:
    row = cursor.fetchone()
    return None if row is None else row[0]
