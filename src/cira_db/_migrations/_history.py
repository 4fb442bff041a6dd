"""``schema_migrations``: reading it, and what it must agree on with the files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from cira_db._errors_map import wrap_errors
from cira_db._migrations._files import Migration
from cira_db._migrations._queries import run_query, scalar
from cira_db.errors import MigrationError

__all__ = [
    "Applied",
    "MigrationStatus",
    "ensure_history_table",
    "history_problems",
    "read_history",
    "status_of",
]

_HISTORY_COLUMNS = ["version", "name", "checksum", "applied_at", "execution_ms", "applied_by"]


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
class Applied:
    """One row of ``schema_migrations``."""

    version: int
    name: str
    checksum: str
    applied_at: datetime


def ensure_history_table(conn: psycopg.Connection[Any]) -> None:
    """Create ``schema_migrations`` unless it exists."""
    with wrap_errors("create schema_migrations"):
        run_query(conn, "create_history_table")


def read_history(conn: psycopg.Connection[Any]) -> list[Applied]:
    """The applied migrations, oldest first; empty when the table does not exist."""
    with wrap_errors("read schema_migrations"):
        if not scalar(run_query(conn, "history_table_exists")):
            return []
        columns = [r[0] for r in run_query(conn, "history_columns").fetchall()]
        if columns != _HISTORY_COLUMNS:
            raise MigrationError(
                "schema_migrations exists but is not cira_db's (columns: "
                + ", ".join(columns)
                + "); rename it before running cira_db migrations"
            )
        rows = run_query(conn, "applied_migrations").fetchall()
    return [Applied(version=r[0], name=r[1], checksum=r[2], applied_at=r[3]) for r in rows]


def status_of(migration: Migration, row: Applied | None) -> MigrationStatus:
    """What ``row`` (None: not applied) says about ``migration``."""
    return MigrationStatus(
        version=migration.version,
        name=migration.name,
        applied_at=row.applied_at if row else None,
        checksum_matches=(row.checksum == migration.checksum) if row else None,
    )


def history_problems(migrations: Sequence[Migration], history: Sequence[Applied]) -> list[str]:
    """Every way ``history`` disagrees with the files; empty when it is sound."""
    known = {m.version: m for m in migrations}
    problems: list[str] = []
    for row in history:
        migration = known.get(row.version)
        if row.version < 1:
            problems.append(
                f"schema_migrations records version {row.version} ({row.name!r}), but versions "
                "start at 0001; the history was edited by hand: delete that row"
            )
        elif migration is None:
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
    applied = sorted(row.version for row in history if row.version >= 1)
    missing = sorted(set(range(1, applied[-1] + 1)) - set(applied)) if applied else []
    if missing:
        problems.append(
            "applied versions have gaps (missing "
            + ", ".join(f"{v:04d}" for v in missing)
            + "); the history was edited by hand"
        )
    return problems
