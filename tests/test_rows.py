"""Rows built from psycopg's tuples (``_repositories/_base.py``): what the constructors make.

The builders skip the dataclass ``__init__`` for speed; these tests hold them
to what the constructor would give: equal, typed, frozen, defaults filled,
unknown or missing columns refused, and the status label mapped to `JobStatus`.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

import pytest

from cira_db import Database, Job, JobResult, JobStatus
from cira_db._repositories._base import (
    Outcome,
    job_outcome_row,
    job_row,
    make_result,
    model_builder,
    result_outcome_row,
    result_row,
)
from cira_db._sql import Query

_JOB_COLUMNS = """
    '0190a0a0-0000-7000-8000-000000000001'::uuid AS id, 'client-a' AS client_id,
    'processing'::job_status AS status, 'https://files.example.com/a.pdf' AS pdf_url,
    '2026-01-02 03:04:05+00'::timestamptz AS created_at,
    '2026-01-02 03:04:06+00'::timestamptz AS updated_at,
    NULL::timestamptz AS completed_at, NULL::text AS error_message, 2 AS attempts,
    '2026-01-02 03:19:06+00'::timestamptz AS lease_expires_at
"""


def test_a_job_row_equals_the_constructed_job_and_stays_frozen(cira_db: Database) -> None:
    with cira_db.connection() as conn, conn.cursor(row_factory=job_row) as cur:
        cur.execute(f"SELECT {_JOB_COLUMNS}, 5::smallint AS priority")
        job = cur.fetchone()
    assert job is not None
    assert type(job) is Job
    assert job.status is JobStatus.PROCESSING
    expected = Job(
        id=UUID("0190a0a0-0000-7000-8000-000000000001"),
        client_id="client-a",
        status=JobStatus.PROCESSING,
        pdf_url="https://files.example.com/a.pdf",
        created_at=job.created_at,
        updated_at=job.updated_at,
        completed_at=None,
        error_message=None,
        attempts=2,
        lease_expires_at=job.lease_expires_at,
        priority=5,
    )
    # Fields without a column (run_after, progress, cancel_requested_at) take their defaults.
    assert job == expected
    assert hash(job) == hash(expected)
    assert dataclasses.replace(job, attempts=3).attempts == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.attempts = 3  # type: ignore[misc]


def test_an_outcome_row_without_a_changed_row_holds_none(cira_db: Database) -> None:
    nulls = ", ".join(
        f"NULL::{kind} AS {name}"
        for name, kind in (
            ("id", "uuid"),
            ("job_id", "uuid"),
            ("extracted_data", "jsonb"),
            ("confidence_score", "numeric"),
            ("tokens_used", "integer"),
            ("created_at", "timestamptz"),
        )
    )
    with cira_db.connection() as conn, conn.cursor(row_factory=job_outcome_row) as cur:
        cur.execute(f"SELECT 'queued' AS outcome, 1 AS current_attempts, {_JOB_COLUMNS}")
        moved = cur.fetchone()
        cur.execute(f"SELECT 'completed' AS outcome, {_JOB_COLUMNS}")
        reported = cur.fetchone()
    assert isinstance(moved, Outcome)
    assert isinstance(moved.row, Job)
    assert (moved.outcome, moved.current_attempts, moved.row.attempts) == ("queued", 1, 2)
    assert isinstance(reported, Outcome)
    assert reported.current_attempts is None
    assert reported.row is not None
    with cira_db.connection() as conn, conn.cursor(row_factory=result_outcome_row) as cur2:
        cur2.execute(f"SELECT 'failed' AS outcome, 3 AS current_attempts, {nulls}")
        refused = cur2.fetchone()
    assert refused == Outcome("failed", 3, None)


def test_a_result_row_keeps_its_types(cira_db: Database) -> None:
    with cira_db.connection() as conn, conn.cursor(row_factory=result_row) as cur:
        cur.execute(
            "SELECT gen_random_uuid() AS id, gen_random_uuid() AS job_id,"
            " '{\"total\": 1}'::jsonb AS extracted_data, 0.95::numeric(3, 2) AS confidence_score,"
            " 12 AS tokens_used, now() AS created_at"
        )
        result = cur.fetchone()
    assert type(result) is JobResult
    assert result.extracted_data == {"total": 1}
    assert result.confidence_score == Decimal("0.95")


def test_columns_that_do_not_fit_the_model_are_refused() -> None:
    with pytest.raises(TypeError, match="no field"):
        model_builder(Job, ["id", "colour"])
    with pytest.raises(TypeError, match="required field"):
        model_builder(Job, ["id", "client_id"])
    build = model_builder(
        JobResult,
        ["tokens_used", "id", "job_id", "extracted_data", "confidence_score", "created_at"],
    )
    ids = UUID(int=1), UUID(int=2)
    made = build([7, *ids, {}, Decimal(1), None])
    assert (made.tokens_used, made.id, made.job_id) == (7, *ids)


@dataclasses.dataclass(frozen=True, slots=True, weakref_slot=True)
class _Watched:
    """A model whose layout (a ``__weakref__`` slot) no plain twin class shares."""

    name: str
    size: int = 0


def test_a_model_no_twin_fits_is_built_through_its_slots() -> None:
    build = model_builder(_Watched, ["name"])
    made = build(["a"])
    assert type(made) is _Watched
    assert made == _Watched("a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.size = 1  # type: ignore[misc]


def test_rows_built_through_the_twin_are_the_model_itself() -> None:
    build = model_builder(JobResult, [f.name for f in dataclasses.fields(JobResult)])
    when = datetime(2026, 1, 2, tzinfo=UTC)
    made = build([UUID(int=1), UUID(int=2), {"a": 1}, Decimal("0.5"), 3, when])
    assert type(made) is JobResult
    assert not hasattr(made, "__dict__")
    assert made == JobResult(UUID(int=1), UUID(int=2), {"a": 1}, Decimal("0.5"), 3, when)
    assert dataclasses.replace(made, tokens_used=4).tokens_used == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.tokens_used = 4  # type: ignore[misc]


def test_a_statement_factory_follows_the_columns_its_statement_returns(cira_db: Database) -> None:
    # Bound to one statement, the factory keeps the builder of the last reply; a
    # reply with other columns (a ``*`` over a table a migration changed) is
    # built by its own names, and refused if they do not fit, as the shared one does.
    rows = job_row.of(Query("jobs_now", "SELECT 1", frozenset(), ""))
    assert job_row.of(Query("jobs_now", "SELECT 1", frozenset(), "")) is rows
    with cira_db.connection() as conn, conn.cursor(row_factory=rows) as cur:
        cur.execute(f"SELECT {_JOB_COLUMNS}, 5::smallint AS priority")
        first = cur.fetchone()
        cur.execute(f"SELECT {_JOB_COLUMNS}, 6::smallint AS priority")
        again = cur.fetchone()
        # as many columns, another last one
        cur.execute(f"SELECT {_JOB_COLUMNS}, '2026-02-03 00:00:00+00'::timestamptz AS run_after")
        other = cur.fetchone()
        cur.execute(f"SELECT {_JOB_COLUMNS}")  # one column fewer
        fewer = cur.fetchone()
        with pytest.raises(TypeError, match="no field"):
            cur.execute(f"SELECT {_JOB_COLUMNS}, 1 AS priority, 'red' AS colour")
    with cira_db.connection() as conn, conn.cursor(row_factory=job_row) as cur:
        cur.execute(f"SELECT {_JOB_COLUMNS}, 5::smallint AS priority")
        shared = cur.fetchone()
    assert first == shared
    assert first is not None
    assert again is not None
    assert fewer is not None
    assert other is not None
    assert (first.priority, again.priority, fewer.priority, other.priority) == (5, 6, 0, 0)
    assert fewer.run_after is None
    assert other.run_after == datetime(2026, 2, 3, tzinfo=UTC)
    assert type(other) is Job


def test_make_result_makes_what_the_constructor_makes() -> None:
    when = datetime(2026, 1, 2, tzinfo=UTC)
    values = (UUID(int=1), UUID(int=2), {"a": [1, 2]}, Decimal("0.95"), 12, when)
    made = make_result(values)
    assert type(made) is JobResult
    assert made == JobResult(*values)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.tokens_used = 4  # type: ignore[misc]


def test_a_generic_model_is_built_through_its_twin_too(cira_db: Database) -> None:
    # Outcome is generic (a Generic[T] base): its twin shares that base, so the
    # row is an Outcome switched from the twin, equal to the constructed one.
    with cira_db.connection() as conn, conn.cursor(row_factory=job_outcome_row) as cur:
        cur.execute(f"SELECT 'queued' AS outcome, 1 AS current_attempts, {_JOB_COLUMNS}")
        moved = cur.fetchone()
    assert type(moved) is Outcome
    assert moved == Outcome("queued", 1, moved.row)
    assert not hasattr(moved, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        moved.outcome = "failed"  # type: ignore[misc]
