"""Migration files: finding them, reading them, and what their headers say.

A migration is ``NNNN_name.sql`` with an optional ``NNNN_name.down.sql``
beside it, read with `importlib.resources` so it works from a wheel, a zip or
a Lambda layer. Everything wrong with the files is found here, when they are
loaded, before any connection is made.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from cira_db._migrations._split import Statement, statements
from cira_db.errors import MigrationError

__all__ = ["Migration", "checksum", "load_migrations"]

_UP = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_DOWN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.down\.sql$")
_NO_TRANSACTION = re.compile(r"^--\s*cira_db:\s*no-transaction\s*$", re.MULTILINE)
# Statements that end, open or split a transaction. Inside the transaction the
# runner wraps a migration in, a COMMIT would make what came before it
# permanent while a later failure is reported as "rolled back".
_TRANSACTION_CONTROL = {"abort", "begin", "commit", "end", "release", "rollback", "savepoint"}
_TRANSACTION_CONTROL_PAIRS = {("start", "transaction"), ("prepare", "transaction")}


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


def load_migrations(directory: Traversable | Path | None = None) -> list[Migration]:
    """Read and check the migration files of ``directory`` (default: the package's).

    Versions must be unique and run 1, 2, 3... without gaps; every down file
    needs its up file; a transactional file must not hold transaction-control
    statements (COMMIT, ROLLBACK, BEGIN, SAVEPOINT...). A `MigrationError`
    names the file (and line) otherwise.
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
                transactional=_transactional(filename, sql),
                down_transactional=(
                    down_name is None or down_sql is None or _transactional(down_name, down_sql)
                ),
            )
        )
    return migrations


def _transactional(filename: str, sql: str) -> bool:
    """Whether ``sql`` runs in one transaction; refuses transaction control if so."""
    if _NO_TRANSACTION.search(_header(sql)) is not None:
        return False
    for statement in statements(sql):
        if (keywords := _transaction_control(statement)) is not None:
            raise MigrationError(
                f"{filename} line {statement.line}: {keywords} is not allowed in a migration "
                "that runs in one transaction: the runner opens and commits that transaction "
                "itself, and a statement that ends or splits it would make part of the file "
                "permanent even when a later statement fails. Remove it, or start the file "
                "with `-- cira_db: no-transaction` to run it statement by statement"
            )
    return True


def _transaction_control(statement: Statement) -> str | None:
    """The keywords of a transaction-control statement, upper-cased; None for others."""
    words = statement.leading_words
    if words[:1] and words[0] in _TRANSACTION_CONTROL:
        if words[1:2] in (("prepared",), ("transaction",)):
            return f"{words[0]} {words[1]}".upper()
        return words[0].upper()
    if words[:2] in _TRANSACTION_CONTROL_PAIRS:
        return f"{words[0]} {words[1]}".upper()
    return None


def _header(sql: str) -> str:
    """The comment lines at the top of ``sql``, where flags such as no-transaction go."""
    lines: list[str] = []
    for line in sql.splitlines():
        if line.strip() and not line.lstrip().startswith("--"):
            break
        lines.append(line.strip())
    return "\n".join(lines)
