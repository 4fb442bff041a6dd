"""The migrator's named queries (``sql/migrator.sql``), run on a connection it owns."""

from __future__ import annotations

from typing import Any

import psycopg

from cira_db._sql import query

__all__ = ["run_query", "scalar"]

_SQL = "migrator.sql"


def run_query(
    conn: psycopg.Connection[Any], query_name: str, /, **params: Any
) -> psycopg.Cursor[Any]:
    """Execute the query ``query_name`` of migrator.sql with ``params``."""
    q = query(_SQL, query_name)
    return conn.execute(q.sql, q.bind(params) if q.params else None)


def scalar(cursor: psycopg.Cursor[Any]) -> Any:
    """The first column of the cursor's first row; None when there is no row."""
    row = cursor.fetchone()
    return None if row is None else row[0]
