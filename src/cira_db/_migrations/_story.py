"""The origin story's schema (its ``schema.sql``), as `Migrator.baseline` expects it."""

from __future__ import annotations

from typing import Any

import psycopg

from cira_db._errors_map import wrap_errors
from cira_db._migrations._queries import run_query
from cira_db.errors import MigrationError

__all__ = ["check_story_schema"]

# Column name -> udt_name, per table.
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


def check_story_schema(conn: psycopg.Connection[Any]) -> None:
    """Raise a `MigrationError` listing every difference from the story's schema."""
    with wrap_errors("inspect the schema"):
        rows = run_query(conn, "story_columns").fetchall()
        labels = [r[0] for r in run_query(conn, "job_status_labels").fetchall()]
        keys = {tuple(r) for r in run_query(conn, "story_constraints").fetchall()}
    found: dict[str, dict[str, str]] = {}
    for table, column, udt in rows:
        found.setdefault(table, {})[column] = udt
    if "jobs" not in found:
        raise MigrationError(
            "baseline refused: there is no jobs table to adopt; "
            "run `cira-db migrate` to create the schema instead"
        )
    differences = _column_differences(found)
    if "job_results" in found:
        differences.extend(message for key, message in _STORY_KEYS.items() if key not in keys)
    if labels != _STORY_LABELS:
        differences.append(
            f"enum job_status has labels {labels or 'none'}, expected {_STORY_LABELS}"
        )
    if differences:
        raise MigrationError(
            "baseline refused: the schema is not the story's schema.sql: " + "; ".join(differences)
        )


def _column_differences(found: dict[str, dict[str, str]]) -> list[str]:
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
    return differences
