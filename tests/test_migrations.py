"""cira_db.migrations: the Migrator against a real PostgreSQL."""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from importlib import resources
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from cira_db import Database, JobRepository
from cira_db._migrations._split import statements
from cira_db.errors import ConfigurationError, MigrationError, ValidationError
from cira_db.migrations import LOCK_KEY, Migrator, checksum, load_migrations, split_statements

FIXTURES = Path(__file__).parent / "fixtures"
PACKAGED = load_migrations()
LATEST = len(PACKAGED)
VERSIONS = [m.version for m in PACKAGED]
HISTORY = [(m.version, m.name) for m in PACKAGED]


# -- helpers ----------------------------------------------------------------------


def scalar(url: str, sql: Any, params: Any = None) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def execute(url: str, sql: Any) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def history(url: str) -> list[tuple[int, str]]:
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,):
            return []
        rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY 1").fetchall()
    return [(int(v), str(n)) for v, n in rows]


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """The parts of the catalog a migration changes, in a comparable form."""
    queries = {
        "columns": """
            SELECT table_name, column_name, data_type, udt_name, is_nullable,
                   column_default, character_maximum_length, numeric_precision, numeric_scale
            FROM information_schema.columns
            WHERE table_schema = 'public' AND table_name <> 'schema_migrations'
            ORDER BY 1, 2""",
        "indexes": """
            SELECT tablename, indexname, indexdef FROM pg_indexes
            WHERE schemaname = 'public' AND tablename <> 'schema_migrations' ORDER BY 1, 2""",
        "constraints": """
            SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
            FROM pg_constraint WHERE connamespace = 'public'::regnamespace
              AND conrelid <> 'schema_migrations'::regclass ORDER BY 1, 2""",
        "triggers": """
            SELECT event_object_table, trigger_name, action_timing, event_manipulation,
                   action_condition
            FROM information_schema.triggers WHERE trigger_schema = 'public' ORDER BY 1, 2, 4""",
        "enums": """
            SELECT t.typname, e.enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid
            ORDER BY 1, e.enumsortorder""",
    }
    with psycopg.connect(url, autocommit=True) as conn:
        return {name: conn.execute(sql).fetchall() for name, sql in queries.items()}


def load_story_schema(url: str) -> None:
    """Build the origin story's schema.sql, verbatim where the server allows.

    The embedded PostgreSQL 16 ships no contrib extensions, so when uuid-ossp
    is not available its uuid_generate_v4() is stood in for by a SQL function;
    the PostgreSQL 15 service has the real extension.
    """
    text = (FIXTURES / "story_schema.sql").read_text()
    has_uuid_ossp = scalar(
        url, "SELECT count(*) FROM pg_available_extensions WHERE name = 'uuid-ossp'"
    )
    if not has_uuid_ossp:
        text = text.replace(
            'CREATE EXTENSION IF NOT EXISTS "uuid-ossp";',
            "CREATE FUNCTION uuid_generate_v4() RETURNS uuid LANGUAGE sql "
            "AS 'SELECT gen_random_uuid()';",
        )
    execute(url, text.encode())


@pytest.fixture
def migrations_dir(tmp_path: Path) -> Path:
    """A writable copy of the packaged migrations 0001 and 0002, for tampering tests.

    The tests add their own 0003; the packaged 0003 onwards are tested with
    the package itself (and in test_migration_0003.py).
    """
    target = tmp_path / "migrations"
    target.mkdir()
    source = resources.files("cira_db.sql.migrations")
    for entry in source.iterdir():
        if entry.name.endswith(".sql") and entry.name[:4] in ("0001", "0002"):
            (target / entry.name).write_text(entry.read_text(encoding="utf-8"))
    return target


@pytest.fixture
def empty(cira_db_empty_url: str) -> Iterator[str]:
    return cira_db_empty_url  # type: ignore[return-value]


# -- loading ----------------------------------------------------------------------


def test_packaged_migrations_are_numbered_and_have_down_files() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert [m.name for m in migrations[:2]] == ["initial_schema", "hardening"]
    for migration in migrations:
        assert migration.down_sql is not None, migration.filename
        # Only CONCURRENTLY needs a file outside a transaction; every other runs in one.
        concurrent = (
            re.search(r"^(CREATE|DROP) INDEX CONCURRENTLY", migration.sql, re.M) is not None
        )
        assert migration.transactional is not concurrent, migration.filename
        assert migration.down_transactional is not concurrent, migration.down_filename


def test_checksum_ignores_line_endings_only() -> None:
    assert checksum("a\nb\n") == checksum("a\r\nb\r\n") == checksum("a\rb\r")
    assert checksum("a\nb\n") != checksum("a\nb \n")


def test_split_statements_keeps_function_bodies_and_strings_whole() -> None:
    sql = """
        -- a comment; with a semicolon
        CREATE FUNCTION f() RETURNS int AS $$ BEGIN RETURN 1; END $$ LANGUAGE plpgsql;
        SELECT 'a;b', "we;ird";  /* block; comment */
        CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (c)
    """
    statements = split_statements(sql)
    assert len(statements) == 3
    assert "RETURN 1; END $$" in statements[0]
    assert statements[1].startswith("SELECT 'a;b'")
    assert statements[2].endswith("CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (c)")


def test_files_out_of_sequence_are_refused(migrations_dir: Path) -> None:
    (migrations_dir / "0004_skipped.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"migration 0003 is missing.*0004_skipped\.sql"):
        load_migrations(migrations_dir)


def test_down_file_without_up_file_is_refused(migrations_dir: Path) -> None:
    (migrations_dir / "0003_orphan.down.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"0003_orphan\.down\.sql has no up migration"):
        load_migrations(migrations_dir)


# -- apply ------------------------------------------------------------------------


def test_fresh_migrate_builds_the_hardened_schema(empty: str) -> None:
    applied = Migrator(empty).apply()
    assert [m.filename for m in applied][:2] == ["0001_initial_schema.sql", "0002_hardening.sql"]
    assert history(empty) == HISTORY
    columns = {(t, c): (udt, nullable) for t, c, _, udt, nullable, *_ in snapshot(empty)["columns"]}
    assert columns[("jobs", "created_at")] == ("timestamptz", "NO")
    assert columns[("jobs", "client_id")] == ("varchar", "NO")
    assert columns[("jobs", "attempts")] == ("int4", "NO")
    assert columns[("jobs", "lease_expires_at")] == ("timestamptz", "YES")
    assert columns[("job_results", "job_id")] == ("uuid", "NO")
    indexes = {name for _, name, _ in snapshot(empty)["indexes"]}
    assert {"idx_jobs_claim", "idx_jobs_client_created", "idx_jobs_lease_expiry"} <= indexes
    assert "idx_jobs_created_at" not in indexes  # the planner trap, see 0002
    assert "idx_jobs_queue" not in indexes  # 0002's queue index, unused since 0004: 0005


def test_history_records_checksum_timing_and_who(empty: str) -> None:
    Migrator(empty, applied_by="tester@ci").apply()
    with psycopg.connect(empty, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT version, checksum, execution_ms, applied_by, applied_at IS NOT NULL "
            "FROM schema_migrations ORDER BY version"
        ).fetchall()
    packaged = {m.version: m.checksum for m in load_migrations()}
    for version, digest, execution_ms, applied_by, has_time in rows:
        assert digest == packaged[version]
        assert execution_ms >= 0
        assert applied_by == "tester@ci"
        assert has_time


def test_rerun_is_idempotent(empty: str) -> None:
    Migrator(empty).apply()
    before = snapshot(empty)
    assert Migrator(empty).apply() == []
    assert snapshot(empty) == before
    assert len(history(empty)) == LATEST


def test_initial_schema_file_itself_is_rerunnable(empty: str) -> None:
    """0001's guards let it run over a half-created schema."""
    first = load_migrations()[0]
    execute(empty, first.sql.encode())
    execute(empty, first.sql.encode())
    assert scalar(empty, "SELECT to_regclass('jobs') IS NOT NULL")


def test_apply_to_a_version_then_the_rest(empty: str) -> None:
    migrator = Migrator(empty)
    assert [m.version for m in migrator.apply(to=1)] == [1]
    assert [s.applied for s in migrator.status()] == [True] + [False] * (LATEST - 1)
    assert [m.version for m in migrator.apply()] == VERSIONS[1:]


def test_apply_to_an_older_version_points_at_rollback(empty: str) -> None:
    Migrator(empty).apply()
    with pytest.raises(MigrationError, match=r"use rollback --to 1"):
        Migrator(empty).apply(to=1)
    with pytest.raises(ValidationError, match=rf"known versions are 0\.\.{LATEST}"):
        Migrator(empty).apply(to=LATEST + 5)


def test_dry_run_changes_nothing(empty: str) -> None:
    plan = Migrator(empty).apply(dry_run=True)
    assert [m.version for m in plan] == VERSIONS
    assert scalar(empty, "SELECT to_regclass('schema_migrations')") is None
    assert scalar(empty, "SELECT to_regclass('jobs')") is None


def test_status_reports_pending_then_applied(empty: str) -> None:
    migrator = Migrator(empty)
    before = migrator.status()
    assert [(s.version, s.applied_at, s.checksum_matches) for s in before] == [
        (v, None, None) for v in VERSIONS
    ]
    migrator.apply()
    after = migrator.status()
    assert all(s.applied_at is not None and s.applied_at.tzinfo for s in after)
    assert all(s.checksum_matches for s in after)


# -- rollback ---------------------------------------------------------------------


def test_rollback_to_zero_and_forward_again_gives_the_same_schema(empty: str) -> None:
    migrator = Migrator(empty)
    migrator.apply()
    migrated = snapshot(empty)
    assert [m.version for m in migrator.rollback(to=0)] == VERSIONS[::-1]
    assert scalar(empty, "SELECT to_regclass('jobs')") is None
    assert history(empty) == []
    migrator.apply()
    assert snapshot(empty) == migrated


def test_rollback_of_hardening_keeps_every_row(empty: str) -> None:
    migrator = Migrator(empty)
    migrator.apply(to=1)
    at_one = snapshot(empty)
    migrator.apply()
    execute(
        empty,
        b"""
        INSERT INTO jobs (id, client_id, pdf_url, created_at)
        SELECT gen_random_uuid(), 'client-' || (i % 3), 'https://example.com/' || i || '.pdf',
               timestamptz '2025-03-01 12:00:00+00' + i * interval '1 minute'
        FROM generate_series(1, 50) AS i;
        INSERT INTO job_results (job_id, extracted_data, confidence_score, tokens_used)
        SELECT id, '{"total": 1}', 0.9, 100 FROM jobs LIMIT 20;
        """,
    )
    assert [m.version for m in migrator.rollback(to=1)] == VERSIONS[:0:-1]
    assert scalar(empty, "SELECT count(*) FROM jobs") == 50
    assert scalar(empty, "SELECT count(*) FROM job_results") == 20
    # timestamptz went back to timestamp holding the same UTC wall time
    assert str(scalar(empty, "SELECT min(created_at) FROM jobs")) == "2025-03-01 12:01:00"
    after = snapshot(empty)
    # 0003's down file keeps the label 'cancelled': an enum label cannot be dropped in place.
    assert after.pop("enums") == [*at_one.pop("enums"), ("job_status", "cancelled")]
    assert after == at_one
    migrator.apply()
    assert scalar(empty, "SELECT count(*) FROM jobs") == 50


def test_rollback_beyond_known_versions_is_refused(empty: str) -> None:
    with pytest.raises(ValidationError, match=rf"cannot roll back to {LATEST + 1}"):
        Migrator(empty).rollback(to=LATEST + 1)


def test_rollback_without_a_down_file_is_refused(empty: str, migrations_dir: Path) -> None:
    Migrator(empty, directory=migrations_dir).apply()
    (migrations_dir / "0002_hardening.down.sql").unlink()
    with pytest.raises(MigrationError, match=r"0002_hardening\.sql has no .*down\.sql"):
        Migrator(empty, directory=migrations_dir).rollback(to=0)
    assert len(history(empty)) == 2  # nothing was rolled back, not even nothing-then-fail


def test_rollback_dry_run_changes_nothing(empty: str) -> None:
    Migrator(empty).apply()
    plan = Migrator(empty).rollback(to=0, dry_run=True)
    assert [m.version for m in plan] == VERSIONS[::-1]
    assert len(history(empty)) == LATEST


# -- history validation ------------------------------------------------------------


def test_changed_applied_file_stops_everything(empty: str, migrations_dir: Path) -> None:
    Migrator(empty, directory=migrations_dir).apply(to=1)
    path = migrations_dir / "0001_initial_schema.sql"
    path.write_text(path.read_text() + "\n-- an innocent-looking edit\n")
    migrator = Migrator(empty, directory=migrations_dir)
    with pytest.raises(MigrationError, match=r"0001_initial_schema\.sql changed after it was"):
        migrator.apply()
    assert history(empty) == [(1, "initial_schema")]  # 0002 did not run
    assert [s.checksum_matches for s in migrator.status()] == [False, None]
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrator.rollback(to=0)


def test_line_ending_change_is_not_a_change(empty: str, migrations_dir: Path) -> None:
    Migrator(empty, directory=migrations_dir).apply(to=1)
    path = migrations_dir / "0001_initial_schema.sql"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert [m.version for m in Migrator(empty, directory=migrations_dir).apply()] == [2]


def test_applied_migration_missing_from_package_stops_everything(
    empty: str, migrations_dir: Path
) -> None:
    (migrations_dir / "0003_extra.sql").write_text("CREATE TABLE extra (id int);")
    (migrations_dir / "0003_extra.down.sql").write_text("DROP TABLE extra;")
    Migrator(empty, directory=migrations_dir).apply()
    (migrations_dir / "0003_extra.sql").unlink()
    (migrations_dir / "0003_extra.down.sql").unlink()
    with pytest.raises(MigrationError, match=r"0003_extra\.sql is recorded as applied but"):
        Migrator(empty, directory=migrations_dir).apply()
    with pytest.raises(MigrationError, match=r"0003_extra\.sql"):
        Migrator(empty, directory=migrations_dir).rollback(to=1)
    assert len(history(empty)) == 3


def test_foreign_schema_migrations_table_is_refused(empty: str) -> None:
    execute(empty, "CREATE TABLE schema_migrations (id serial, filename text)")
    with pytest.raises(MigrationError, match=r"not cira_db's \(columns: id, filename\)"):
        Migrator(empty).apply()


# -- failures ---------------------------------------------------------------------


def test_failing_migration_leaves_no_partial_change_and_no_record(
    empty: str, migrations_dir: Path
) -> None:
    (migrations_dir / "0003_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nALTER TABLE jobs ADD COLUMN x int;\nSELECT 1 / 0;\n"
    )
    migrator = Migrator(empty, directory=migrations_dir)
    with pytest.raises(MigrationError, match=r"0003_broken\.sql failed and was rolled back") as e:
        migrator.apply()
    assert isinstance(e.value.__cause__, psycopg.errors.DivisionByZero)
    assert history(empty) == [(1, "initial_schema"), (2, "hardening")]
    assert scalar(empty, "SELECT to_regclass('half_done')") is None
    assert (
        scalar(
            empty,
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_name = 'jobs' AND column_name = 'x'",
        )
        == 0
    )


def test_lock_timeout_applies_to_migration_statements(empty: str, migrations_dir: Path) -> None:
    Migrator(empty).apply(to=2)
    (migrations_dir / "0003_needs_lock.sql").write_text("ALTER TABLE jobs ADD COLUMN y int;")
    holder = psycopg.connect(empty)
    try:
        holder.execute("LOCK TABLE jobs IN ACCESS SHARE MODE")  # open transaction holds it
        db = Database(empty, pool=False, migration_lock_timeout="200ms")
        with pytest.raises(MigrationError, match=r"0003_needs_lock\.sql failed.*55P03"):
            Migrator(db, directory=migrations_dir).apply()
    finally:
        holder.close()
    assert len(history(empty)) == 2


def test_no_transaction_migration_runs_concurrent_index(empty: str, migrations_dir: Path) -> None:
    (migrations_dir / "0003_concurrent_index.sql").write_text(
        "-- cira_db: no-transaction\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_test_pdf ON jobs (pdf_url);\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_test_err ON jobs (error_message);\n"
    )
    (migrations_dir / "0003_concurrent_index.down.sql").write_text(
        "-- cira_db: no-transaction\n"
        "DROP INDEX CONCURRENTLY IF EXISTS idx_test_pdf;\n"
        "DROP INDEX CONCURRENTLY IF EXISTS idx_test_err;\n"
    )
    migrator = Migrator(empty, directory=migrations_dir)
    assert not migrator.migrations[2].transactional
    migrator.apply()
    assert scalar(
        empty,
        "SELECT bool_and(indisvalid) FROM pg_index "
        "WHERE indexrelid IN ('idx_test_pdf'::regclass, 'idx_test_err'::regclass)",
    )
    assert history(empty)[-1] == (3, "concurrent_index")
    migrator.rollback(to=2)
    assert scalar(empty, "SELECT to_regclass('idx_test_pdf')") is None


def test_failing_no_transaction_migration_keeps_earlier_statements_and_says_so(
    empty: str, migrations_dir: Path
) -> None:
    path = migrations_dir / "0003_two_steps.sql"
    path.write_text(
        "-- cira_db: no-transaction\nCREATE TABLE IF NOT EXISTS step_one (id int);\nSELECT 1 / 0;\n"
    )
    with pytest.raises(MigrationError) as excinfo:
        Migrator(empty, directory=migrations_dir).apply()
    assert str(excinfo.value) == (
        "0003_two_steps.sql (no-transaction) failed part way: division by zero (22012); "
        "fix the cause and run it again (its statements must be re-runnable)"
    )
    assert isinstance(excinfo.value.__cause__, psycopg.errors.DivisionByZero)
    assert scalar(empty, "SELECT to_regclass('step_one') IS NOT NULL")
    assert [v for v, _ in history(empty)] == [1, 2]
    path.write_text(path.read_text().replace("SELECT 1 / 0;", "SELECT 1;"))
    assert [m.version for m in Migrator(empty, directory=migrations_dir).apply()] == [3]


def test_hardening_stops_on_null_client_id_with_no_change(empty: str) -> None:
    migrator = Migrator(empty)
    migrator.apply(to=1)
    execute(
        empty,
        "INSERT INTO jobs (client_id, pdf_url) VALUES (NULL, 'https://example.com/a.pdf'), "
        "('client-a', 'https://example.com/b.pdf')",
    )
    before = snapshot(empty)
    with pytest.raises(MigrationError, match=r"1 jobs have a NULL client_id.*nothing was changed"):
        migrator.apply()
    assert snapshot(empty) == before
    assert history(empty) == [(1, "initial_schema")]


# -- concurrency ------------------------------------------------------------------


def _apply_in_process(url: str) -> list[int]:
    return [m.version for m in Migrator(url).apply()]


def test_concurrent_runners_in_threads_apply_each_migration_once(empty: str) -> None:
    barrier = threading.Barrier(4)

    def run() -> list[int]:
        barrier.wait()
        return [m.version for m in Migrator(empty).apply()]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: run(), range(4)))
    assert sorted(v for result in results for v in result) == VERSIONS
    assert history(empty) == HISTORY


@pytest.mark.slow
def test_concurrent_runners_in_processes_apply_each_migration_once(empty: str) -> None:
    with ProcessPoolExecutor(3, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(_apply_in_process, [empty] * 3))
    assert sorted(v for result in results for v in result) == VERSIONS
    assert history(empty) == HISTORY


def test_waiting_for_a_busy_lock_times_out_clearly(empty: str) -> None:
    with psycopg.connect(empty, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        db = Database(empty, pool=False, migration_lock_wait=0.3)
        with pytest.raises(MigrationError, match=r"another migration runner holds the lock"):
            Migrator(db).apply()
    assert history(empty) == []
    assert scalar(empty, "SELECT to_regclass('jobs')") is None


def test_lock_is_released_after_a_failed_run(empty: str, migrations_dir: Path) -> None:
    """The runner unlocks on failure even when its connection lives on (a caller's)."""
    (migrations_dir / "0003_broken.sql").write_text("SELECT 1 / 0;")
    migrator = Migrator(empty, directory=migrations_dir)
    with psycopg.connect(empty, autocommit=True) as conn:

        @contextmanager
        def keep_open() -> Iterator[psycopg.Connection[Any]]:
            yield conn  # not closed afterwards: closing would drop the lock anyway

        migrator._connect = keep_open  # type: ignore[method-assign]
        with pytest.raises(MigrationError, match="0003_broken"):
            migrator.apply()
        held = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        ).fetchone()
    assert held == (0,)
    assert history(empty) == [(1, "initial_schema"), (2, "hardening")]


def test_explicit_url_is_not_redirected_by_the_environment(
    empty: str, cira_db_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CIRA_DB_* variables must not send `Migrator(url)` to another database."""
    with cira_db_server.database() as other:
        monkeypatch.setenv("CIRA_DB_DBNAME", str(conninfo_to_dict(other)["dbname"]))
        monkeypatch.setenv("CIRA_DB_MIGRATION_URL", other)
        monkeypatch.setenv("CIRA_DB_USER", "someone_else")
        Migrator(empty).apply()
        assert len(history(empty)) == LATEST
        assert history(other) == []


# -- baseline ---------------------------------------------------------------------


def test_baseline_adopts_the_story_schema_and_upgrade_keeps_rows(empty: str) -> None:
    load_story_schema(empty)
    execute(
        empty,
        b"""
        INSERT INTO jobs (client_id, status, pdf_url, created_at, completed_at)
        VALUES ('client-a', 'completed', 'https://example.com/a.pdf',
                '2025-09-11 10:00:00', '2025-09-11 10:05:00'),
               ('client-b', 'queued', 'https://example.com/b.pdf', '2025-09-12 08:30:00', NULL);
        INSERT INTO job_results (job_id, extracted_data, confidence_score, tokens_used)
        SELECT id, '{"invoice": 42}', 0.93, 1200 FROM jobs WHERE client_id = 'client-a';
        """,
    )
    migrator = Migrator(empty)
    entry = migrator.baseline()
    assert (entry.version, entry.name, entry.checksum_matches) == (1, "initial_schema", True)
    assert [m.version for m in migrator.apply()] == VERSIONS[1:]
    assert scalar(empty, "SELECT count(*) FROM jobs") == 2
    assert scalar(empty, "SELECT tokens_used FROM job_results") == 1200
    # naive story timestamps were read as UTC
    with psycopg.connect(empty, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        row = conn.execute(
            "SELECT created_at::text FROM jobs WHERE client_id = 'client-a'"
        ).fetchone()
    assert row == ("2025-09-11 10:00:00+00",)
    assert scalar(empty, "SELECT attempts FROM jobs WHERE client_id = 'client-b'") == 0
    # the adopted database now has the same indexes and constraints as a fresh one
    indexes = {name for _, name, _ in snapshot(empty)["indexes"]}
    assert "idx_jobs_claim" in indexes
    assert "idx_jobs_status" not in indexes


def test_baseline_then_migrate_matches_a_fresh_database(empty: str, cira_db_server: Any) -> None:
    load_story_schema(empty)
    Migrator(empty).baseline()
    Migrator(empty).apply()
    with cira_db_server.database() as fresh:
        Migrator(fresh).apply()
        adopted, built = snapshot(empty), snapshot(fresh)
    # The only difference allowed: the story's uuid-ossp function may remain.
    assert adopted["columns"] == built["columns"]
    assert adopted["indexes"] == built["indexes"]
    assert adopted["constraints"] == built["constraints"]
    assert adopted["triggers"] == built["triggers"]


def test_adopted_processing_jobs_get_an_expired_lease_and_come_back(empty: str) -> None:
    load_story_schema(empty)
    execute(
        empty,
        "INSERT INTO jobs (client_id, status, pdf_url) "
        "VALUES ('client-a', 'processing', 'https://example.com/stuck.pdf')",
    )
    Migrator(empty).baseline()
    Migrator(empty).apply()
    assert scalar(empty, "SELECT lease_expires_at IS NOT NULL FROM jobs") is True
    with Database(empty) as db:
        released = JobRepository(db).release_expired(max_attempts=3)
    assert [j.pdf_url for j in released] == ["https://example.com/stuck.pdf"]
    assert scalar(empty, "SELECT status::text FROM jobs") == "queued"


def test_baseline_refuses_a_story_schema_missing_a_key(empty: str) -> None:
    load_story_schema(empty)
    execute(empty, "ALTER TABLE job_results DROP CONSTRAINT job_results_job_id_key")
    with pytest.raises(MigrationError, match=r"job_results\.job_id is not UNIQUE"):
        Migrator(empty).baseline()
    assert history(empty) == []


def test_baseline_refuses_a_database_without_the_schema(empty: str) -> None:
    with pytest.raises(MigrationError, match=r"no jobs table to adopt"):
        Migrator(empty).baseline()


def test_baseline_refuses_a_different_schema(empty: str) -> None:
    load_story_schema(empty)
    execute(
        empty,
        "ALTER TABLE jobs ADD COLUMN priority int; ALTER TABLE job_results DROP COLUMN tokens_used",
    )
    with pytest.raises(MigrationError) as excinfo:
        Migrator(empty).baseline()
    message = str(excinfo.value)
    assert "jobs has unexpected column(s) priority" in message
    assert "job_results lacks column(s) tokens_used" in message
    assert history(empty) == []


def test_baseline_refuses_a_database_with_history(empty: str) -> None:
    Migrator(empty).apply()
    with pytest.raises(MigrationError, match=r"already records migrations"):
        Migrator(empty).baseline()


# -- connections ------------------------------------------------------------------


def test_migrator_refuses_a_pooler_url_without_a_direct_one(empty: str) -> None:
    db = Database(empty, pool=False, via_proxy=True)
    with pytest.raises(ConfigurationError, match=r"CIRA_DB_MIGRATION_URL"):
        Migrator(db).status()


def test_migrator_uses_the_direct_migration_url(empty: str) -> None:
    db = Database(
        "postgresql://nobody@proxy.invalid/db",
        pool=False,
        via_proxy=True,
        sslmode="disable",
        allow_unverified_tls=True,
        migration_url=empty,
    )
    assert [m.version for m in Migrator(db).apply()] == VERSIONS


def test_migrator_works_from_an_open_pooled_database(cira_db: Database) -> None:
    statuses = Migrator(cira_db).status()
    assert all(s.applied for s in statuses)


def test_copy_of_package_dir_is_used_not_the_package(empty: str, migrations_dir: Path) -> None:
    shutil.rmtree(migrations_dir)
    migrations_dir.mkdir()
    (migrations_dir / "0001_only.sql").write_text("CREATE TABLE only_here (id int);")
    Migrator(empty, directory=migrations_dir).apply()
    assert scalar(empty, "SELECT to_regclass('only_here') IS NOT NULL")
    assert scalar(empty, "SELECT to_regclass('jobs')") is None


# -- transaction control in transactional migrations ---------------------------------

TRANSACTION_CONTROL = [
    "COMMIT",
    "commit and chain",
    "END",
    "ROLLBACK",
    "ABORT",
    "BEGIN",
    "BEGIN ISOLATION LEVEL SERIALIZABLE",
    "START TRANSACTION",
    "SAVEPOINT before_x",
    "RELEASE SAVEPOINT before_x",
    "RELEASE before_x",
    "ROLLBACK TO SAVEPOINT before_x",
    "PREPARE TRANSACTION 'tx1'",
    "COMMIT PREPARED 'tx1'",
    "ROLLBACK PREPARED 'tx1'",
    "/* a comment first */ Commit",
]


@pytest.mark.parametrize("statement", TRANSACTION_CONTROL)
def test_transaction_control_in_a_transactional_migration_is_refused_at_load(
    migrations_dir: Path, statement: str
) -> None:
    (migrations_dir / "0003_sneaky.sql").write_text(
        "-- a header comment\n"
        "CREATE TABLE made_before (id int);\n"
        "\n"
        f"{statement};\n"
        "CREATE TABLE made_after (id int);\n"
    )
    with pytest.raises(MigrationError) as excinfo:
        load_migrations(migrations_dir)
    message = str(excinfo.value)
    assert message.startswith("0003_sneaky.sql line 4: ")
    assert "transaction" in message
    assert "no-transaction" in message  # says how to write such a file instead


def test_transaction_control_in_a_down_file_is_refused_at_load(migrations_dir: Path) -> None:
    (migrations_dir / "0003_extra.sql").write_text("CREATE TABLE extra (id int);\n")
    (migrations_dir / "0003_extra.down.sql").write_text(
        "DROP TABLE extra;\n/* line two\n   line three */ ROLLBACK;\n"
    )
    with pytest.raises(MigrationError, match=r"^0003_extra\.down\.sql line 3: ROLLBACK "):
        load_migrations(migrations_dir)


def test_commit_inside_a_migration_is_refused_before_anything_runs(
    empty: str, migrations_dir: Path
) -> None:
    """The defect: COMMIT made the table before it permanent while reporting a rollback."""
    (migrations_dir / "0003_commit.sql").write_text(
        "CREATE TABLE made_before (id int);\nCOMMIT;\nSELECT 1 / 0;\n"
    )
    with pytest.raises(MigrationError, match=r"0003_commit\.sql line 2: COMMIT"):
        Migrator(empty, directory=migrations_dir).apply()
    assert scalar(empty, "SELECT to_regclass('made_before')") is None
    assert history(empty) == []


TRANSACTION_WORDS_THAT_ARE_NOT_STATEMENTS = [
    "SELECT 'COMMIT; ROLLBACK;' AS text_only;",
    'CREATE TABLE "commit" ("begin" int, "end" int);',
    "-- COMMIT;\nSELECT 1;",
    "/* ROLLBACK; /* nested */ BEGIN; */ SELECT 1;",
    "SELECT $tag1$ COMMIT; $tag1$;",
    "SELECT E'it\\'s; COMMIT';",
    "DO $$ BEGIN PERFORM 1; END $$;",
    "CREATE FUNCTION uses_case(x int) RETURNS int LANGUAGE sql\n"
    "BEGIN ATOMIC\n  SELECT CASE WHEN x > 0 THEN 1 ELSE 0 END;\n  SELECT 2;\nEND;",
    "CREATE PROCEDURE batches() LANGUAGE plpgsql AS $body$\n"
    "BEGIN\n  CREATE TABLE IF NOT EXISTS p (id int);\n  COMMIT;\nEND\n$body$;",
    "CREATE TABLE t (id int);\nCOMMENT ON TABLE t IS 'rollback; begin';",
]


@pytest.mark.parametrize("sql", TRANSACTION_WORDS_THAT_ARE_NOT_STATEMENTS)
def test_transaction_words_inside_text_bodies_and_names_are_not_refused(
    migrations_dir: Path, sql: str
) -> None:
    (migrations_dir / "0003_words.sql").write_text(sql + "\n")
    assert load_migrations(migrations_dir)[2].transactional


def test_no_transaction_migration_may_hold_transaction_control(
    empty: str, migrations_dir: Path
) -> None:
    (migrations_dir / "0003_own_transactions.sql").write_text(
        "-- cira_db: no-transaction\nBEGIN;\nCREATE TABLE IF NOT EXISTS own_tx (id int);\nCOMMIT;\n"
    )
    Migrator(empty, directory=migrations_dir).apply()
    assert scalar(empty, "SELECT to_regclass('own_tx') IS NOT NULL")
    assert history(empty)[-1] == (3, "own_transactions")


def test_sql_standard_function_bodies_stay_whole(empty: str, migrations_dir: Path) -> None:
    """A BEGIN ATOMIC body holds semicolons; a no-transaction file must not split it."""
    body = (
        "CREATE OR REPLACE FUNCTION sign_of(x int) RETURNS int LANGUAGE sql\n"
        "BEGIN ATOMIC\n  SELECT CASE WHEN x > 0 THEN 1 WHEN x < 0 THEN -1 ELSE 0 END;\nEND;\n"
        "CREATE TABLE IF NOT EXISTS after_function (id int);\n"
    )
    assert len(split_statements(body)) == 2
    (migrations_dir / "0003_atomic.sql").write_text(body)
    (migrations_dir / "0004_atomic_again.sql").write_text("-- cira_db: no-transaction\n" + body)
    Migrator(empty, directory=migrations_dir).apply()
    assert scalar(empty, "SELECT sign_of(-4)") == -1
    assert history(empty)[-2:] == [(3, "atomic"), (4, "atomic_again")]


@given(body=st.text(alphabet=st.characters(exclude_characters="\r")))
@hypothesis_settings(max_examples=200, deadline=None)
def test_text_inside_quotes_never_ends_a_statement_or_counts_as_one(body: str) -> None:
    """Whatever a string or dollar-quoted body holds, it stays inside its statement."""
    quoted = "'" + body.replace("'", "''") + "'"
    dollar = "$q$" + body.replace("$q$", "") + "$q$"
    identifier = '"' + body.replace('"', '""') + '"'
    sql = f"SELECT {quoted};\nSELECT {dollar};\nSELECT 1 AS {identifier};\nCOMMIT"
    found = statements(sql)
    assert [s.text for s in found] == [
        f"SELECT {quoted}",
        f"SELECT {dollar}",
        f"SELECT 1 AS {identifier}",
        "COMMIT",
    ]
    assert [s.leading_words[0] for s in found] == ["select", "select", "select", "commit"]
    assert found[3].line == 4 + 3 * body.count("\n")


def test_split_statements_knows_dollar_tags_with_digits_and_escape_strings() -> None:
    sql = "SELECT $a1$ x; y $a1$; SELECT E'a\\'; b'; SELECT price$1 FROM t; SELECT 2"
    assert split_statements(sql) == [
        "SELECT $a1$ x; y $a1$",
        "SELECT E'a\\'; b'",
        "SELECT price$1 FROM t",
        "SELECT 2",
    ]


# -- history rows no file can match -------------------------------------------------


@pytest.mark.parametrize(
    ("version", "shown"), [(0, "version 0"), (-5, "version -5"), (-1234567, "version -1234567")]
)
def test_history_rows_with_impossible_versions_are_named_clearly(
    empty: str, version: int, shown: str
) -> None:
    migrator = Migrator(empty)
    migrator.apply()
    with psycopg.connect(empty, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum, execution_ms, applied_by) "
            "VALUES (%s, 'hand_made', 'abc', 0, 'someone')",
            (version,),
        )
    problems = migrator.problems()
    assert problems == [
        f"schema_migrations records {shown} ('hand_made'), but versions start at 0001; "
        "the history was edited by hand: delete that row"
    ]
    with pytest.raises(MigrationError) as excinfo:
        migrator.apply()
    message = str(excinfo.value)
    assert shown in message
    assert "missing )" not in message
    assert "-005" not in message
    assert "gaps" not in message


# -- history that does not match the files --------------------------------------------


def test_file_renamed_after_it_was_applied_is_named(empty: str, migrations_dir: Path) -> None:
    Migrator(empty, directory=migrations_dir).apply()
    (migrations_dir / "0002_hardening.sql").rename(migrations_dir / "0002_renamed.sql")
    (migrations_dir / "0002_hardening.down.sql").rename(migrations_dir / "0002_renamed.down.sql")
    migrator = Migrator(empty, directory=migrations_dir)
    expected = "migration 0002 was applied as 'hardening' but the file is 0002_renamed.sql"
    assert migrator.problems() == [expected]
    with pytest.raises(MigrationError, match=re.escape(expected) + "; nothing was run$"):
        migrator.apply()
    with pytest.raises(MigrationError, match=re.escape(expected)):
        migrator.rollback(to=0)
    assert len(history(empty)) == 2


def test_gap_in_the_applied_history_stops_everything(empty: str) -> None:
    Migrator(empty).apply()
    execute(empty, "DELETE FROM schema_migrations WHERE version = 1")
    migrator = Migrator(empty)
    expected = "applied versions have gaps (missing 0001); the history was edited by hand"
    assert migrator.problems() == [expected]
    assert [s.applied for s in migrator.status()] == [False] + [True] * (LATEST - 1)
    with pytest.raises(MigrationError, match=re.escape(expected)):
        migrator.apply()
    with pytest.raises(MigrationError, match=re.escape(expected)):
        migrator.rollback(to=0)
    assert history(empty) == HISTORY[1:]


# -- every baseline difference ----------------------------------------------------------

STORY_LABELS = "['queued', 'processing', 'completed', 'failed']"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("DROP TABLE job_results", "table job_results is missing"),
        ("ALTER TABLE jobs DROP COLUMN error_message", "jobs lacks column(s) error_message"),
        (
            "ALTER TABLE job_results ADD COLUMN notes text",
            "job_results has unexpected column(s) notes",
        ),
        (
            "ALTER TABLE jobs ALTER COLUMN client_id TYPE text",
            "jobs.client_id is text, expected varchar",
        ),
        (
            "ALTER TABLE job_results ALTER COLUMN tokens_used TYPE bigint",
            "job_results.tokens_used is int8, expected int4",
        ),
        (
            "ALTER TYPE job_status ADD VALUE 'cancelled'",
            "enum job_status has labels ['queued', 'processing', 'completed', 'failed', "
            f"'cancelled'], expected {STORY_LABELS}",
        ),
        (
            "ALTER TYPE job_status RENAME VALUE 'failed' TO 'errored'",
            "enum job_status has labels ['queued', 'processing', 'completed', 'errored'], "
            f"expected {STORY_LABELS}",
        ),
        ("ALTER TABLE jobs DROP CONSTRAINT jobs_pkey CASCADE", "jobs has no primary key on id"),
        (
            "ALTER TABLE job_results DROP CONSTRAINT job_results_pkey",
            "job_results has no primary key on id",
        ),
        (
            "ALTER TABLE job_results DROP CONSTRAINT job_results_job_id_key",
            "job_results.job_id is not UNIQUE",
        ),
        (
            "ALTER TABLE job_results DROP CONSTRAINT job_results_job_id_fkey",
            "job_results.job_id does not reference jobs",
        ),
    ],
)
def test_baseline_names_each_difference_from_the_story(
    empty: str, change: str, expected: str
) -> None:
    load_story_schema(empty)
    execute(empty, change)
    with pytest.raises(MigrationError) as excinfo:
        Migrator(empty).baseline()
    message = str(excinfo.value)
    assert message.startswith("baseline refused: the schema is not the story's schema.sql: ")
    assert expected in message.split(": ", 2)[2].split("; ")
    assert history(empty) == []


def test_baseline_names_a_missing_enum(empty: str) -> None:
    load_story_schema(empty)
    execute(
        empty,
        "ALTER TABLE jobs ALTER COLUMN status DROP DEFAULT; "
        "ALTER TABLE jobs ALTER COLUMN status TYPE text; DROP TYPE job_status",
    )
    with pytest.raises(MigrationError) as excinfo:
        Migrator(empty).baseline()
    message = str(excinfo.value)
    assert "jobs.status is text, expected job_status" in message
    assert f"enum job_status has labels none, expected {STORY_LABELS}" in message


def test_every_story_key_has_a_baseline_test() -> None:
    from cira_db._migrations._story import _STORY_KEYS

    tested = {
        "jobs has no primary key on id",
        "job_results has no primary key on id",
        "job_results.job_id is not UNIQUE",
        "job_results.job_id does not reference jobs",
    }
    assert set(_STORY_KEYS.values()) == tested


# -- the target version ----------------------------------------------------------------

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/nowhere?connect_timeout=1"
BAD_TARGETS = st.one_of(
    st.booleans(),
    st.text(max_size=5),
    st.floats(allow_nan=True),
    st.integers(max_value=-1),
    st.integers(min_value=LATEST + 1),
    st.lists(st.integers(), max_size=2),
    st.decimals(allow_nan=False, allow_infinity=False),
)


@given(to=BAD_TARGETS)
@hypothesis_settings(max_examples=60, deadline=None)
def test_apply_refuses_a_bad_target_before_connecting(to: Any) -> None:
    with pytest.raises(ValidationError) as excinfo:
        Migrator(UNREACHABLE).apply(to=to)
    assert excinfo.value.field == "to"
    assert str(excinfo.value).startswith("to: ")


@given(to=st.one_of(BAD_TARGETS, st.none()))
@hypothesis_settings(max_examples=60, deadline=None)
def test_rollback_refuses_a_bad_target_before_connecting(to: Any) -> None:
    with pytest.raises(ValidationError) as excinfo:
        Migrator(UNREACHABLE).rollback(to=to)
    assert excinfo.value.field == "to"


@pytest.mark.parametrize(
    ("to", "message"),
    [
        ("1", "to: must be a migration version (an int), not str"),
        (True, "to: must be a migration version (an int), not bool"),
        (1.0, "to: must be a migration version (an int), not float"),
        (-1, f"to: cannot migrate to -1: known versions are 0..{LATEST}"),
        (LATEST + 1, f"to: cannot migrate to {LATEST + 1}: known versions are 0..{LATEST}"),
    ],
)
def test_apply_target_messages(to: Any, message: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        Migrator(UNREACHABLE).apply(to=to)
    assert str(excinfo.value) == message


def test_rollback_target_messages() -> None:
    with pytest.raises(ValidationError, match=r"^to: cannot roll back to \d+: known versions"):
        Migrator(UNREACHABLE).rollback(to=LATEST + 1)
    with pytest.raises(ValidationError, match=r"^to: must be a migration version \(an int\)"):
        Migrator(UNREACHABLE).rollback(to="0")  # type: ignore[arg-type]


def test_apply_accepts_every_known_target(empty: str) -> None:
    migrator = Migrator(empty)
    assert migrator.apply(to=0) == []
    assert [m.version for m in migrator.apply(to=2)] == [1, 2]
    assert [m.version for m in migrator.apply(to=None)] == VERSIONS[2:]
    assert migrator.apply(to=None) == []


# -- the advisory lock -----------------------------------------------------------------


def test_advisory_lock_serialises_concurrent_runners(empty: str, tmp_path: Path) -> None:
    """Runners started at once on a fresh database: each migration runs exactly once.

    The migration holds its transaction open for a moment, so without the
    runners' advisory lock every runner creates schema_migrations, reads an
    empty history and runs 0001 too, and fails on a table the first one is
    creating; with the lock the others wait, then find nothing to do. (The
    mutation check removes the lock and expects this test to fail.)
    """
    directory = tmp_path / "slow"
    directory.mkdir()
    (directory / "0001_slow.sql").write_text(
        "CREATE TABLE ran_once (id int PRIMARY KEY);\n"
        "INSERT INTO ran_once VALUES (1);\n"
        "SELECT pg_sleep(0.4);\n"
    )
    runners = 4
    barrier = threading.Barrier(runners)

    def run() -> list[int]:
        barrier.wait()
        return [m.version for m in Migrator(empty, directory=directory).apply()]

    with ThreadPoolExecutor(runners) as pool:
        futures = [pool.submit(run) for _ in range(runners)]
        outcomes = [f.exception() or f.result() for f in futures]
    assert sorted(map(str, outcomes)) == ["[1]"] + ["[]"] * (runners - 1)
    assert history(empty) == [(1, "slow")]
    assert scalar(empty, "SELECT count(*) FROM ran_once") == 1
