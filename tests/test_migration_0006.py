"""Migration 0006: the updated_at trigger skips its PL/pgSQL call when the UPDATE set now().

0006 gives ``trigger_jobs_updated_at`` the condition ``WHEN (NEW.updated_at IS
DISTINCT FROM CURRENT_TIMESTAMP)``, and every UPDATE of ``jobs`` that cira_db runs sets
``updated_at = now()`` itself. These tests hold the three promises:

* every library UPDATE of jobs sets ``updated_at = now()`` (read from the named
  statements), and running each of them calls the trigger function zero times
  while ``updated_at`` still advances (the function is swapped for one that
  counts its calls);
* any other UPDATE (a user's, the previous cira_db version's) still gets
  ``updated_at = now()`` from the function, as before 0006;
* 0006 and its down file run over a table with rows, up, down and up again,
  without writing a row, and take no lock stronger than SHARE ROW EXCLUSIVE.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
import pytest

from cira_db import Completion, Database, Failure, JobRepository, JobStatus
from cira_db._sql import load_queries
from cira_db.migrations import Migrator, load_migrations

PACKAGED = {m.version: m for m in load_migrations()}
LEASE = timedelta(minutes=5)
TRIGGER_WITH_WHEN = (
    "CREATE TRIGGER trigger_jobs_updated_at BEFORE UPDATE ON public.jobs FOR EACH ROW "
    "WHEN ((new.updated_at IS DISTINCT FROM CURRENT_TIMESTAMP)) "
    "EXECUTE FUNCTION update_updated_at()"
)
TRIGGER_OF_0001 = (
    "CREATE TRIGGER trigger_jobs_updated_at BEFORE UPDATE ON public.jobs FOR EACH ROW "
    "EXECUTE FUNCTION update_updated_at()"
)
# update_updated_at() as 0001 wrote it, plus a row in trigger_calls per call.
COUNTING_FUNCTION = b"""
CREATE TABLE trigger_calls (job_id uuid NOT NULL);
CREATE OR REPLACE FUNCTION update_updated_at()
RETURNS TRIGGER AS $$
BEGIN
    INSERT INTO trigger_calls (job_id) VALUES (NEW.id);
    NEW.updated_at = NOW();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
"""
# The named statements of jobs.sql that UPDATE jobs, each driven by a call in
# test_no_library_update_calls_the_trigger_function (a new one must be added there).
UPDATING_STATEMENTS = {
    "claim_job",
    "claim_job_for_client",
    "claim_jobs",
    "claim_jobs_for_client",
    "claim_jobs_fair",
    "extend_lease",
    "extend_leases",
    "complete_job",
    "complete_jobs",
    "complete_jobs_and_claim",
    "complete_jobs_and_claim_for_client",
    "fail_job",
    "fail_job_retry",
    "fail_jobs",
    "retry_job",
    "release_expired_jobs",
    "cancel_job",
    "report_progress",
}
# The SET list of an UPDATE: up to its FROM or WHERE at the start of a line.
SET_LIST = re.compile(r"^\s*SET\b(?P<set>.*?)^\s*(?:FROM|WHERE)\b", re.DOTALL | re.MULTILINE)


def _set_lists(sql: str) -> list[str]:
    found = []
    for match in re.finditer(r"(?<!FOR )\bUPDATE\s+jobs\b", sql):
        rest = sql[match.end() :]
        set_list = SET_LIST.match(rest)
        assert set_list is not None, rest[:200]
        found.append(set_list["set"])
    return found


# -- the statements ----------------------------------------------------------------


def test_every_library_update_of_jobs_sets_updated_at_to_now() -> None:
    queries = load_queries("jobs.sql")
    updating = {name for name, q in queries.items() if _set_lists(q.sql)}
    assert updating == UPDATING_STATEMENTS
    for name in sorted(updating):
        for set_list in _set_lists(queries[name].sql):
            assigned = re.findall(r"\bupdated_at\s*=\s*([^,\n]+)", set_list)
            assert assigned == ["now()"], f"{name}: SET {set_list.strip()}"


def test_no_other_sql_file_updates_jobs() -> None:
    for resource in ("job_results.sql", "migrator.sql"):
        for name, q in load_queries(resource).items():
            assert not _set_lists(q.sql), f"{resource}:{name} updates jobs"


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE jobs\nSET status = 'queued'\nWHERE id = 1",
        "UPDATE jobs\n    SET status = 'queued',\n        updated_at = now() - interval '1 s'\n"
        "    WHERE id = 1",
    ],
)
def test_the_statement_check_catches_an_update_that_forgot_updated_at(sql: str) -> None:
    """The reading of SET lists above can fail: a SET without `updated_at = now()` is seen."""
    (set_list,) = _set_lists(sql)
    assert re.findall(r"\bupdated_at\s*=\s*([^,\n]+)", set_list) != ["now()"]


# -- behaviour ---------------------------------------------------------------------


@pytest.fixture
def counted(cira_db_url: str) -> str:
    """A migrated database whose update_updated_at() records each call in trigger_calls."""
    with psycopg.connect(cira_db_url, autocommit=True) as conn:
        conn.execute(COUNTING_FUNCTION)
    return cira_db_url


def _take_calls(url: str) -> int:
    """How many times the trigger function ran since the last look."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "WITH gone AS (DELETE FROM trigger_calls RETURNING 1) SELECT count(*) FROM gone"
        ).fetchone()
    assert row is not None
    return int(row[0])


def _updated_at(url: str, job_id: UUID) -> datetime:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT updated_at FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def _sql(url: str, sql: Any, params: Any = None) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql, params)


def test_no_library_update_calls_the_trigger_function(counted: str) -> None:
    """Every UPDATE statement of jobs.sql runs, each job's updated_at advances, 0 calls."""
    with Database(counted, pool=False) as db:
        jobs = JobRepository(db)
        made = jobs.create_many(
            client_id="client-a", pdf_urls=[f"https://example.com/{n}.pdf" for n in range(12)]
        )
        ids = [job.id for job in made]
        assert _take_calls(counted) == 0
        seen = {job_id: _updated_at(counted, job_id) for job_id in ids}

        def moved(*job_ids: UUID) -> None:
            """The jobs' updated_at advanced, and no trigger function ran."""
            assert _take_calls(counted) == 0
            for job_id in job_ids:
                now = _updated_at(counted, job_id)
                assert now > seen[job_id]
                seen[job_id] = now

        one = jobs.claim_next(lease=LEASE)  # claim_job
        assert one is not None
        moved(one.id)
        two = jobs.claim_next(lease=LEASE, client_id="client-a")  # claim_job_for_client
        assert two is not None
        moved(two.id)
        three = jobs.claim_batch(2, lease=LEASE)  # claim_jobs
        moved(*(job.id for job in three))
        four = jobs.claim_batch(2, lease=LEASE, client_id="client-a")  # claim_jobs_for_client
        moved(*(job.id for job in four))
        five = jobs.claim_batch(2, lease=LEASE, fair=True)  # claim_jobs_fair
        moved(*(job.id for job in five))

        jobs.extend_lease(one.id, lease=LEASE, attempt=one.attempts)  # extend_lease
        moved(one.id)
        jobs.report_progress(one.id, progress={"page": 1}, attempt=one.attempts)
        moved(one.id)  # report_progress
        jobs.complete(  # complete_job
            one.id, extracted_data={"a": 1}, confidence_score=0.5, tokens_used=1, attempt=1
        )
        moved(one.id)
        jobs.fail(two.id, error_message="x", attempt=two.attempts)  # fail_job
        moved(two.id)
        jobs.retry(two.id)  # retry_job
        moved(two.id)
        jobs.extend_leases([job.id for job in three], lease=LEASE)  # extend_leases
        moved(*(job.id for job in three))
        done = jobs.complete_many(  # complete_jobs
            [Completion(job.id, {"n": 1}, Decimal("0.9"), 3, attempt=1) for job in three]
        )
        assert [item.outcome for item in done] == ["done", "done"]
        moved(*(job.id for job in three))
        failed = jobs.fail_many(  # fail_jobs
            [Failure(job.id, "bad", attempt=1, retry_in=timedelta(hours=1)) for job in four]
        )
        assert [item.outcome for item in failed] == ["done", "done"]
        moved(*(job.id for job in four))
        retried = jobs.fail(  # fail_job_retry
            five[0].id, error_message="later", attempt=1, retry_in=timedelta(hours=1)
        )
        assert retried.status is JobStatus.QUEUED
        moved(five[0].id)
        jobs.cancel(five[1].id, client_id="client-a")  # cancel_job (processing: request)
        moved(five[1].id)
        queued = [
            job_id
            for job_id in ids
            if jobs.get(job_id, client_id="client-a").status is JobStatus.QUEUED
        ]
        jobs.cancel(queued[-1], client_id="client-a")  # cancel_job (queued: cancelled)
        moved(queued[-1])

        _, (six,) = jobs.complete_and_claim([], 1, lease=LEASE)  # complete_jobs_and_claim
        moved(six.id)
        done_six, (seven,) = jobs.complete_and_claim(  # complete_jobs_and_claim_for_client
            [Completion(six.id, {}, 1, 0, attempt=six.attempts)],
            1,
            lease=LEASE,
            client_id="client-a",
        )
        assert [item.outcome for item in done_six] == ["done"]
        moved(six.id, seven.id)

        # release_expired_jobs: a lease that ran out (set by hand: one trigger call)
        _sql(
            counted,
            "UPDATE jobs SET lease_expires_at = now() - interval '1 s' WHERE id = %s",
            (five[1].id,),
        )
        assert _take_calls(counted) == 1
        seen[five[1].id] = _updated_at(counted, five[1].id)
        released = jobs.release_expired()
        assert [job.status for job in released] == [JobStatus.CANCELLED]
        moved(five[1].id)


def test_a_plain_update_still_advances_updated_at(counted: str) -> None:
    """An UPDATE that does not set updated_at (a user's, the previous version's) gets now()."""
    with Database(counted, pool=False) as db:
        job = JobRepository(db).create(client_id="client-a", pdf_url="https://example.com/a.pdf")
    with psycopg.connect(counted) as conn:
        updated, now = conn.execute(
            "UPDATE jobs SET pdf_url = 'https://example.com/b.pdf' WHERE id = %s "
            "RETURNING updated_at, now()",
            (job.id,),
        ).fetchone() or (None, None)
    assert updated == now
    assert updated > job.updated_at
    assert _take_calls(counted) == 1


def test_an_update_that_sets_another_time_still_gets_now(counted: str) -> None:
    """As before 0006: whatever an UPDATE writes to updated_at, the row holds now()."""
    with Database(counted, pool=False) as db:
        job = JobRepository(db).create(client_id="client-a", pdf_url="https://example.com/a.pdf")
    with psycopg.connect(counted) as conn:
        updated, now = conn.execute(
            "UPDATE jobs SET updated_at = timestamptz '2001-01-01 00:00+00' WHERE id = %s "
            "RETURNING updated_at, now()",
            (job.id,),
        ).fetchone() or (None, None)
    assert updated == now
    assert _take_calls(counted) == 1


def test_two_updates_of_a_row_in_one_transaction_both_hold_now(counted: str) -> None:
    """The second UPDATE finds updated_at = now() already: no call, and the value is right."""
    with Database(counted, pool=False) as db:
        job = JobRepository(db).create(client_id="client-a", pdf_url="https://example.com/a.pdf")
    with psycopg.connect(counted) as conn:
        conn.execute("UPDATE jobs SET priority = 1 WHERE id = %s", (job.id,))
        updated, now = conn.execute(
            "UPDATE jobs SET priority = 2 WHERE id = %s RETURNING updated_at, now()", (job.id,)
        ).fetchone() or (None, None)
    assert updated == now
    assert updated > job.updated_at
    assert _take_calls(counted) == 1  # the first UPDATE's; the second had nothing to change


# -- the migration -----------------------------------------------------------------


def _trigger(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_get_triggerdef(oid) FROM pg_trigger "
            "WHERE tgrelid = 'jobs'::regclass AND tgname = 'trigger_jobs_updated_at'"
        ).fetchone()
    assert row is not None
    return str(row[0])


def _rows(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT * FROM jobs ORDER BY id").fetchall()


@pytest.fixture
def at_five(cira_db_empty_url: str) -> str:
    """A database at version 5 holding 40 jobs in every status."""
    Migrator(cira_db_empty_url).apply(to=5)
    _sql(
        cira_db_empty_url,
        b"""
        INSERT INTO jobs (client_id, status, pdf_url, created_at, updated_at, attempts,
                          lease_expires_at)
        SELECT 'client-' || (n % 3), s, 'https://files.example.com/' || n || '.pdf',
               timestamptz '2025-06-01 00:00:00+00' + n * interval '1 minute',
               timestamptz '2025-06-01 00:00:00+00' + n * interval '1 minute',
               CASE WHEN s = 'queued' THEN 0 ELSE 1 END,
               CASE WHEN s = 'processing' THEN now() + interval '10 minutes' END
        FROM (SELECT n, (ARRAY['queued', 'processing', 'completed', 'failed'])[1 + n % 4]
                        ::job_status
              FROM generate_series(1, 40) AS n) AS g (n, s)
        """,
    )
    return cira_db_empty_url


def test_0006_is_one_transactional_migration_both_ways() -> None:
    assert PACKAGED[6].filename == "0006_updated_at_trigger_when.sql"
    assert PACKAGED[6].transactional
    assert PACKAGED[6].down_transactional


def test_0006_up_down_and_up_again_over_rows(at_five: str) -> None:
    migrator = Migrator(at_five)
    before = _rows(at_five)
    assert _trigger(at_five) == TRIGGER_OF_0001
    assert [m.version for m in migrator.apply()] == [6]
    assert _trigger(at_five) == TRIGGER_WITH_WHEN
    assert _rows(at_five) == before  # no row written: updated_at of every job kept
    assert [m.version for m in migrator.rollback(to=5)] == [6]
    assert _trigger(at_five) == TRIGGER_OF_0001
    assert _rows(at_five) == before
    assert [m.version for m in migrator.apply()] == [6]
    assert _trigger(at_five) == TRIGGER_WITH_WHEN
    with Database(at_five, pool=False) as db:  # today's calls on the old rows
        jobs = JobRepository(db)
        claimed = jobs.claim_next(lease=LEASE)
        assert claimed is not None
        assert claimed.updated_at > before[0][5]
        done = jobs.complete(
            claimed.id, extracted_data={}, confidence_score=1, tokens_used=0, attempt=1
        )
        assert done.job_id == claimed.id


def test_after_the_down_file_every_update_still_gets_now(at_five: str) -> None:
    """Rolled back to 5 with this version's statements: the function runs, the value is right."""
    migrator = Migrator(at_five)
    migrator.apply()
    migrator.rollback(to=5)
    with Database(at_five, pool=False) as db:
        jobs = JobRepository(db)
        claimed = jobs.claim_next(lease=LEASE)
        assert claimed is not None
    with psycopg.connect(at_five) as conn:
        updated, now = conn.execute(
            "UPDATE jobs SET priority = 3 WHERE id = %s RETURNING updated_at, now()",
            (claimed.id,),
        ).fetchone() or (None, None)
    assert updated == now


def test_0006_files_run_again_over_themselves(at_five: str) -> None:
    Migrator(at_five).apply()
    _sql(at_five, PACKAGED[6].sql.encode())
    assert _trigger(at_five) == TRIGGER_WITH_WHEN
    assert PACKAGED[6].down_sql is not None
    _sql(at_five, PACKAGED[6].down_sql.encode())
    _sql(at_five, PACKAGED[6].down_sql.encode())
    assert _trigger(at_five) == TRIGGER_OF_0001


@pytest.mark.parametrize("direction", ["up", "down"])
def test_0006_takes_share_row_exclusive_on_jobs_and_no_stronger(
    at_five: str, direction: str
) -> None:
    """Reads of jobs go on while it runs (DROP TRIGGER's ACCESS EXCLUSIVE would stop them)."""
    if direction == "down":
        Migrator(at_five).apply()
    sql = PACKAGED[6].sql if direction == "up" else PACKAGED[6].down_sql
    assert sql is not None
    with psycopg.connect(at_five) as conn:
        conn.execute(sql.encode())
        held = conn.execute(
            "SELECT mode FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'relation' "
            "AND relation = 'jobs'::regclass"
        ).fetchall()
        with psycopg.connect(at_five, autocommit=True) as reader:  # a read is not blocked
            reader.execute("SET lock_timeout = '2s'")
            assert reader.execute("SELECT count(*) FROM jobs").fetchone() == (40,)
        conn.rollback()
    assert {mode for (mode,) in held} == {"ShareRowExclusiveLock"}
