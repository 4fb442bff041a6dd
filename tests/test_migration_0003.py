"""Migrations 0003, 0004 (schema of the job features) and 0005 on a real PostgreSQL.

0003 adds the status label ``cancelled`` and the columns ``run_after``,
``priority``, ``progress`` and ``cancel_requested_at`` with NOT VALID CHECKs;
0004 (no-transaction) validates them and builds the claim, fair-share and
retention indexes concurrently. These tests run them over existing rows,
down and up again, check that the CHECKs refuse bad values, that a failed
concurrent build is repaired by a re-run, and which index each claim uses.
0005 (no-transaction) drops idx_jobs_queue, unused since 0004; its down file
builds it again concurrently.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from cira_db import Database, JobRepository, JobStatus
from cira_db._sql import load_queries
from cira_db.errors import MigrationError
from cira_db.migrations import Migrator, load_migrations, split_statements

PACKAGED = {m.version: m for m in load_migrations()}
NEW_COLUMNS = {
    # column: (udt_name, is_nullable, column_default)
    "run_after": ("timestamptz", "YES", None),
    "priority": ("int2", "NO", "0"),
    "progress": ("jsonb", "YES", None),
    "cancel_requested_at": ("timestamptz", "YES", None),
}
NEW_INDEXES = {
    "idx_jobs_claim": "CREATE INDEX idx_jobs_claim ON public.jobs USING btree "
    "(priority DESC, COALESCE(run_after, created_at), id) WHERE (status = 'queued'::job_status)",
    "idx_jobs_claim_client": "CREATE INDEX idx_jobs_claim_client ON public.jobs USING btree "
    "(client_id, priority DESC, COALESCE(run_after, created_at), id) "
    "WHERE (status = 'queued'::job_status)",
    "idx_jobs_ended_created": "CREATE INDEX idx_jobs_ended_created ON public.jobs USING btree "
    "(created_at) WHERE (status = ANY (ARRAY['completed'::job_status, 'failed'::job_status, "
    "'cancelled'::job_status]))",
}
NEW_CHECKS = ("jobs_priority_range", "jobs_progress_small_object", "jobs_cancel_request_not_queued")

# The claim the features will run: higher priority first, then the job that
# has waited longest; never before run_after (NULL: at once).
CLAIM = """
SELECT id FROM jobs
WHERE status = 'queued' AND coalesce(run_after, created_at) <= now()
ORDER BY priority DESC, coalesce(run_after, created_at), id
LIMIT 10
FOR UPDATE SKIP LOCKED"""
CLAIM_FOR_CLIENT = """
SELECT id FROM jobs
WHERE client_id = 'client-07' AND status = 'queued' AND coalesce(run_after, created_at) <= now()
ORDER BY priority DESC, coalesce(run_after, created_at), id
LIMIT 10
FOR UPDATE SKIP LOCKED"""
# Fair share starts from the clients that have queued jobs: a skip scan.
QUEUED_CLIENTS = """
WITH RECURSIVE clients AS (
    (SELECT client_id FROM jobs WHERE status = 'queued' ORDER BY client_id LIMIT 1)
    UNION ALL
    SELECT (SELECT j.client_id FROM jobs AS j
            WHERE j.status = 'queued' AND j.client_id > clients.client_id
            ORDER BY j.client_id LIMIT 1)
    FROM clients WHERE clients.client_id IS NOT NULL
)
SELECT client_id FROM clients WHERE client_id IS NOT NULL"""

# Rows of every status, as a database at version 2 holds them.
EXISTING_ROWS = b"""
INSERT INTO jobs (client_id, status, pdf_url, created_at, updated_at, completed_at,
                  error_message, attempts, lease_expires_at)
SELECT 'client-' || (n % 3),
       s,
       'https://files.example.com/' || n || '.pdf',
       timestamptz '2025-06-01 00:00:00+00' + n * interval '1 minute',
       timestamptz '2025-06-01 00:00:00+00' + n * interval '1 minute',
       CASE WHEN s = 'completed' THEN timestamptz '2025-06-02 00:00:00+00' END,
       CASE WHEN s = 'failed' THEN 'bad scan' END,
       CASE WHEN s = 'queued' THEN 0 ELSE 1 END,
       CASE WHEN s = 'processing' THEN now() + interval '10 minutes' END
FROM (SELECT n, (ARRAY['queued', 'processing', 'completed', 'failed'])[1 + n % 4]::job_status
      FROM generate_series(1, 40) AS n) AS g (n, s)
"""
ROWS_AT_TWO = (
    b"SELECT id, client_id, status::text, pdf_url, created_at, updated_at, completed_at, "
    b"error_message, attempts, lease_expires_at FROM jobs ORDER BY id"
)


# -- helpers ----------------------------------------------------------------------


def rows(url: str) -> list[tuple[Any, ...]]:
    """Every job's columns of version 2, ordered by id."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(ROWS_AT_TWO).fetchall()


def one(url: str, sql: Any, params: Any = None) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def columns(url: str) -> dict[str, tuple[str, str, str | None]]:
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute(
            "SELECT column_name, udt_name, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_name = 'jobs'"
        ).fetchall()
    return {name: (udt, nullable, default) for name, udt, nullable, default in found}


def indexes(url: str) -> dict[str, tuple[str, bool]]:
    """Index name -> (definition, valid) for jobs."""
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid FROM pg_index AS i "
            "JOIN pg_class AS c ON c.oid = i.indexrelid WHERE i.indrelid = 'jobs'::regclass"
        ).fetchall()
    return {name: (definition, valid) for name, definition, valid in found}


def checks(url: str) -> dict[str, bool]:
    """CHECK constraint name -> validated, for jobs."""
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute(
            "SELECT conname, convalidated FROM pg_constraint "
            "WHERE conrelid = 'jobs'::regclass AND contype = 'c'"
        ).fetchall()
    return dict(found)


def labels(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute("SELECT unnest(enum_range(NULL::job_status))::text").fetchall()
    return [label for (label,) in found]


def plan_indexes(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> set[str]:
    """The index names an EXPLAIN (FORMAT JSON) of ``sql`` reads."""
    row = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}", params).fetchone()
    assert row is not None
    found: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        if "Index Name" in node:
            found.add(node["Index Name"])
        for child in node.get("Plans", ()):
            walk(child)

    walk(row[0][0]["Plan"])
    return found


def run_file(url: str, sql: str) -> None:
    """Run a no-transaction migration file statement by statement, as the runner does."""
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in split_statements(sql):
            conn.execute(statement.encode())


@pytest.fixture
def at_two(cira_db_empty_url: str) -> str:
    """A database at version 2 holding 40 jobs in every status."""
    Migrator(cira_db_empty_url).apply(to=2)
    with psycopg.connect(cira_db_empty_url, autocommit=True) as conn:
        conn.execute(EXISTING_ROWS)
    return cira_db_empty_url


# -- up ---------------------------------------------------------------------------


def test_the_files_are_one_transactional_and_one_concurrent_migration() -> None:
    assert PACKAGED[3].filename == "0003_job_features.sql"
    assert PACKAGED[3].transactional
    assert PACKAGED[3].down_transactional
    assert PACKAGED[4].filename == "0004_job_features_indexes.sql"
    assert not PACKAGED[4].transactional
    assert not PACKAGED[4].down_transactional


def test_up_keeps_existing_rows_unchanged(at_two: str) -> None:
    before = rows(at_two)
    assert [m.version for m in Migrator(at_two).apply(to=4)] == [3, 4]
    assert rows(at_two) == before  # not even updated_at moved: no row was written
    found = columns(at_two)
    assert {name: found[name] for name in NEW_COLUMNS} == NEW_COLUMNS
    added = one(
        at_two,
        "SELECT array_agg(DISTINCT (run_after, priority, progress, cancel_requested_at)::text) "
        "FROM jobs",
    )
    assert added == ["(,0,,)"]
    assert labels(at_two) == ["queued", "processing", "completed", "failed", "cancelled"]
    assert {name: checks(at_two)[name] for name in NEW_CHECKS} == dict.fromkeys(NEW_CHECKS, True)
    built = indexes(at_two)
    assert {name: built[name] for name in NEW_INDEXES} == {
        name: (definition, True) for name, definition in NEW_INDEXES.items()
    }
    assert "idx_jobs_finished_created" not in built  # replaced by idx_jobs_ended_created
    assert "idx_jobs_queue" in built  # kept: 0005, a migration of its own, drops it


def test_todays_repository_calls_work_on_rows_from_before(at_two: str) -> None:
    by_age = sorted(rows(at_two), key=lambda row: row[4])  # created_at
    oldest_first = [row[0] for row in by_age if row[2] == "queued"]
    finished = sum(1 for row in by_age if row[2] in ("completed", "failed"))
    Migrator(at_two).apply()
    with Database(at_two, pool=False) as db:
        jobs = JobRepository(db)
        claimed = jobs.claim_batch(len(oldest_first), lease=timedelta(minutes=5))
        assert [job.id for job in claimed] == oldest_first  # today's order: oldest first
        assert jobs.fail(claimed[0].id, error_message="x").status is JobStatus.FAILED
        assert jobs.retry(claimed[0].id).status is JobStatus.QUEUED
        counts = jobs.count_by_status(client_id="client-1")
        assert sum(counts.values()) == sum(1 for row in by_age if row[1] == "client-1")
        cutoff = max(row[4] for row in by_age) + timedelta(seconds=1)
        assert jobs.delete_finished_before(cutoff) == finished


# -- down and up again ------------------------------------------------------------


def test_down_keeps_every_row_and_up_again_gives_the_same_schema(at_two: str) -> None:
    migrator = Migrator(at_two)
    migrator.apply(to=4)
    migrated = (columns(at_two), indexes(at_two), checks(at_two), labels(at_two))
    with psycopg.connect(at_two, autocommit=True) as conn:
        conn.execute(
            "UPDATE jobs SET status = 'cancelled', priority = 7, run_after = now() "
            "WHERE id = (SELECT min(id::text)::uuid FROM jobs WHERE status = 'queued')"
        )
        conn.execute(
            "UPDATE jobs SET progress = '{\"pages\": 3}', cancel_requested_at = now() "
            "WHERE status = 'processing'"
        )
    cancelled = one(at_two, "SELECT id FROM jobs WHERE status = 'cancelled'")
    before = {row[0]: row for row in rows(at_two)}

    assert [m.version for m in migrator.rollback(to=2)] == [4, 3]
    after = {row[0]: row for row in rows(at_two)}
    assert after.keys() == before.keys()
    # the cancelled job is kept as a failed job that says why; every other row is as it was
    assert after.pop(cancelled)[2:8:5] == ("failed", "cancelled")
    before.pop(cancelled)
    assert {k: v[:5] + v[6:] for k, v in after.items()} == {
        k: v[:5] + v[6:] for k, v in before.items()
    }
    assert not set(NEW_COLUMNS) & set(columns(at_two))
    assert not set(NEW_CHECKS) & set(checks(at_two))
    back = indexes(at_two)
    assert not set(NEW_INDEXES) & set(back)
    assert back["idx_jobs_finished_created"][1]
    assert "cancelled" in labels(at_two)  # an enum label cannot be dropped in place

    assert [m.version for m in migrator.apply(to=4)] == [3, 4]
    assert (columns(at_two), indexes(at_two), checks(at_two), labels(at_two)) == migrated


def test_the_concurrent_files_run_again_over_themselves(at_two: str) -> None:
    """0004 and its down file are re-runnable, statement by statement."""
    Migrator(at_two).apply(to=4)
    built = indexes(at_two)
    run_file(at_two, PACKAGED[4].sql)
    assert indexes(at_two) == built
    assert PACKAGED[4].down_sql is not None
    run_file(at_two, PACKAGED[4].down_sql)
    run_file(at_two, PACKAGED[4].down_sql)
    assert not set(NEW_INDEXES) & set(indexes(at_two))
    run_file(at_two, PACKAGED[4].sql)
    assert indexes(at_two) == built


def test_an_index_left_invalid_by_a_failed_build_is_rebuilt(at_two: str) -> None:
    migrator = Migrator(at_two)
    migrator.apply(to=3)
    # A concurrent build that fails leaves an INVALID index under the name.
    with (
        psycopg.connect(at_two, autocommit=True) as conn,
        pytest.raises(psycopg.errors.UniqueViolation),
    ):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY idx_jobs_claim ON jobs (client_id)")
    assert indexes(at_two)["idx_jobs_claim"][1] is False
    assert [m.version for m in migrator.apply(to=4)] == [4]
    built = indexes(at_two)
    assert built["idx_jobs_claim"] == (NEW_INDEXES["idx_jobs_claim"], True)
    assert not [name for name in built if name.endswith("_invalid")]


def test_lock_timeout_bounds_the_wait_of_0003(at_two: str) -> None:
    """A reader's open transaction makes 0003 give up after lock_timeout, changing nothing."""
    holder = psycopg.connect(at_two)
    try:
        holder.execute("SELECT count(*) FROM jobs")  # ACCESS SHARE until the transaction ends
        db = Database(at_two, pool=False, migration_lock_timeout="200ms")
        with pytest.raises(MigrationError, match=r"0003_job_features\.sql failed.*55P03"):
            Migrator(db).apply()
    finally:
        holder.close()
    assert not set(NEW_COLUMNS) & set(columns(at_two))
    assert "cancelled" not in labels(at_two)
    assert [m.version for m in Migrator(at_two).apply(to=4)] == [3, 4]


# -- 0005: idx_jobs_queue goes -----------------------------------------------------

QUEUE_INDEX = (
    "CREATE INDEX idx_jobs_queue ON public.jobs USING btree (created_at, id) "
    "WHERE (status = 'queued'::job_status)"
)


def test_0005_is_one_concurrent_migration_both_ways() -> None:
    assert PACKAGED[5].filename == "0005_drop_idx_jobs_queue.sql"
    assert not PACKAGED[5].transactional
    assert not PACKAGED[5].down_transactional


def test_0005_drops_the_queue_index_and_its_down_file_builds_it_again(at_two: str) -> None:
    migrator = Migrator(at_two)
    migrator.apply(to=4)
    at_four, before = indexes(at_two), rows(at_two)
    assert at_four["idx_jobs_queue"] == (QUEUE_INDEX, True)
    assert [m.version for m in migrator.apply(to=5)] == [5]
    assert indexes(at_two) == {k: v for k, v in at_four.items() if k != "idx_jobs_queue"}
    assert rows(at_two) == before
    with Database(at_two, pool=False) as db:  # the claim and queue_stats work without it
        jobs = JobRepository(db)
        assert jobs.queue_stats().by_status[JobStatus.QUEUED] == 10
        assert len(jobs.claim_batch(3, lease=timedelta(minutes=5))) == 3
    assert [m.version for m in migrator.rollback(to=4)] == [5]
    assert indexes(at_two) == at_four
    assert [m.version for m in migrator.apply(to=5)] == [5]
    assert "idx_jobs_queue" not in indexes(at_two)


def test_0005_files_run_again_over_themselves(at_two: str) -> None:
    Migrator(at_two).apply()
    without = indexes(at_two)
    run_file(at_two, PACKAGED[5].sql)
    assert indexes(at_two) == without
    assert PACKAGED[5].down_sql is not None
    run_file(at_two, PACKAGED[5].down_sql)
    run_file(at_two, PACKAGED[5].down_sql)
    assert indexes(at_two)["idx_jobs_queue"] == (QUEUE_INDEX, True)
    run_file(at_two, PACKAGED[5].sql)
    assert indexes(at_two) == without


def test_0005_down_rebuilds_a_queue_index_left_invalid(at_two: str) -> None:
    migrator = Migrator(at_two)
    migrator.apply(to=5)
    with (
        psycopg.connect(at_two, autocommit=True) as conn,
        pytest.raises(psycopg.errors.UniqueViolation),
    ):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY idx_jobs_queue ON jobs (client_id)")
    assert indexes(at_two)["idx_jobs_queue"][1] is False
    assert [m.version for m in migrator.rollback(to=4)] == [5]
    back = indexes(at_two)
    assert back["idx_jobs_queue"] == (QUEUE_INDEX, True)
    assert not [name for name in back if name.endswith("_invalid")]


# -- the CHECKs -------------------------------------------------------------------


@pytest.fixture
def migrated(cira_db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to a migrated database holding one queued job (its id in `job_id`)."""
    with psycopg.connect(cira_db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO jobs (id, client_id, pdf_url) "
            "VALUES ('00000000-0000-0000-0000-000000000001', 'client-a', 'https://e.x/a.pdf')"
        )
        yield conn


SET_COLUMN = {
    "priority": b"UPDATE jobs SET priority = %s",
    "progress": b"UPDATE jobs SET progress = %s",
    "cancel_requested_at": b"UPDATE jobs SET cancel_requested_at = %s",
}


def change(conn: psycopg.Connection[Any], column: str, value: Any) -> None:
    """Set ``column`` of the one job to ``value``."""
    conn.execute(SET_COLUMN[column], (value,))


@given(priority=st.integers(min_value=-32768, max_value=32767))
@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_priority_outside_its_range_is_refused(
    migrated: psycopg.Connection[Any], priority: int
) -> None:
    if -100 <= priority <= 100:
        change(migrated, "priority", priority)
    else:
        with pytest.raises(psycopg.errors.CheckViolation, match="jobs_priority_range"):
            change(migrated, "priority", priority)


@pytest.mark.parametrize(
    "progress",
    [[1, 2], "half", 3, None, {"log": "x" * 4090}],
    ids=["array", "string", "number", "json-null", "over-4096-bytes"],
)
def test_progress_must_be_a_small_object(migrated: psycopg.Connection[Any], progress: Any) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match="jobs_progress_small_object"):
        change(migrated, "progress", Jsonb(progress))


def test_progress_up_to_4096_bytes_is_accepted(migrated: psycopg.Connection[Any]) -> None:
    largest = {"log": "x" * (4096 - len('{"log": ""}'))}
    change(migrated, "progress", Jsonb(largest))
    assert one_from(migrated, "SELECT octet_length(progress::text) FROM jobs") == 4096
    change(migrated, "progress", Jsonb({}))
    change(migrated, "progress", None)  # SQL NULL: no progress


def test_a_queued_job_never_holds_a_cancel_request(migrated: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match="jobs_cancel_request_not_queued"):
        change(migrated, "cancel_requested_at", "2025-01-01T00:00:00Z")
    migrated.execute(
        "UPDATE jobs SET status = 'processing', lease_expires_at = now() + interval '1 minute', "
        "cancel_requested_at = now()"
    )
    with pytest.raises(psycopg.errors.CheckViolation, match="jobs_cancel_request_not_queued"):
        migrated.execute("UPDATE jobs SET status = 'queued', lease_expires_at = NULL")
    migrated.execute("UPDATE jobs SET status = 'cancelled', lease_expires_at = NULL")
    assert one_from(migrated, "SELECT status::text FROM jobs") == "cancelled"


def one_from(conn: psycopg.Connection[Any], sql: str) -> Any:
    row = conn.execute(sql.encode()).fetchone()
    return None if row is None else row[0]


# -- plans ------------------------------------------------------------------------

REALISTIC_TABLE = b"""
INSERT INTO jobs (client_id, status, pdf_url, created_at, attempts, lease_expires_at,
                  priority, run_after)
SELECT 'client-' || lpad((n % 40)::text, 2, '0'),
       s,
       'https://files.example.com/' || n || '.pdf',
       now() - (6000 - n) * interval '1 minute',
       CASE WHEN s = 'queued' THEN 0 ELSE 1 END,
       CASE WHEN s = 'processing' THEN now() + interval '5 minutes' END,
       CASE WHEN s = 'queued' THEN n % 3 - 1 ELSE 0 END,
       CASE WHEN s = 'queued' AND n % 5 = 0 THEN now() + interval '1 hour' END
FROM (SELECT n, (CASE WHEN n > 5700 THEN 'queued' WHEN n > 5650 THEN 'processing'
                      WHEN n % 10 = 0 THEN 'failed' WHEN n % 97 = 0 THEN 'cancelled'
                      ELSE 'completed' END)::job_status
      FROM generate_series(1, 6000) AS n) AS g (n, s);
ANALYZE jobs;
"""


@pytest.fixture
def realistic(cira_db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """6,000 jobs of 40 clients, 5% queued (some scheduled later, priorities -1..1), analysed."""
    with psycopg.connect(cira_db_url, autocommit=True) as conn:
        conn.execute(REALISTIC_TABLE)
        assert one_from(conn, "SHOW enable_seqscan") == "on"
        yield conn


def test_the_claim_reads_the_claim_index(realistic: psycopg.Connection[Any]) -> None:
    assert plan_indexes(realistic, CLAIM) == {"idx_jobs_claim"}
    ids = [row[0] for row in realistic.execute(CLAIM.encode()).fetchall()]
    expected = realistic.execute(
        b"SELECT id FROM jobs WHERE status = 'queued' AND (run_after IS NULL OR run_after <= now())"
        b" ORDER BY priority DESC, coalesce(run_after, created_at), id LIMIT 10"
    ).fetchall()
    assert ids == [row[0] for row in expected]


def test_fair_share_reads_the_per_client_claim_index(realistic: psycopg.Connection[Any]) -> None:
    assert plan_indexes(realistic, CLAIM_FOR_CLIENT) == {"idx_jobs_claim_client"}
    assert plan_indexes(realistic, QUEUED_CLIENTS) == {"idx_jobs_claim_client"}
    clients = [row[0] for row in realistic.execute(QUEUED_CLIENTS.encode()).fetchall()]
    assert clients == [f"client-{n:02d}" for n in range(40)]


def test_todays_queries_still_read_an_index(realistic: psycopg.Connection[Any]) -> None:
    jobs_sql = load_queries("jobs.sql")
    lease = {"limit": 10, "lease": timedelta(minutes=5)}
    realistic.execute("BEGIN")
    try:
        claim = plan_indexes(realistic, jobs_sql["claim_jobs"].sql, lease)
        retention = plan_indexes(
            realistic,
            jobs_sql["delete_finished_jobs"].sql,
            {"cutoff": "2100-01-01T00:00:00Z", "batch_size": 100},
        )
    finally:
        realistic.execute("ROLLBACK")
    assert "idx_jobs_claim" in claim  # the claim moved to the new index (idx_jobs_queue unused)
    assert "idx_jobs_ended_created" in retention
