"""Development seeding: realistic, reproducible, all or nothing, usable by the repositories."""

from __future__ import annotations

import re
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cira_db import Database, JobRepository, JobResultRepository, JobStatus
from cira_db._cli import _Progress, main
from cira_db._demo import DEMO_DATABASE, run_demo
from cira_db._embedded import start_embedded
from cira_db._seed import DEFAULT_ANCHOR, MOCK_CLIENT_IDS, client_ids, seed
from cira_db._settings import url_for_database
from cira_db._validation import check_client_id, check_pdf_url
from cira_db.errors import ConflictError, DatabaseError, ValidationError
from cira_db.testing import TestServer

_JOBS = (
    "SELECT id, client_id, status::text, pdf_url, created_at, updated_at, completed_at,"
    " error_message, attempts, lease_expires_at FROM jobs ORDER BY id"
)
_RESULTS = (
    "SELECT id, job_id, extracted_data, confidence_score, tokens_used, created_at"
    " FROM job_results ORDER BY id"
)


def _dump(db: Database) -> tuple[list[Any], list[Any]]:
    with db.connection() as conn:
        return conn.execute(_JOBS).fetchall(), conn.execute(_RESULTS).fetchall()


def test_counts_and_mix(cira_db: Database) -> None:
    calls: list[tuple[int, int]] = []
    summary = seed(
        cira_db, jobs=12_000, clients=4, seed=7, progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(5000, 12_000), (10_000, 12_000), (12_000, 12_000)]
    assert summary.jobs == 12_000
    assert summary.clients == MOCK_CLIENT_IDS[:4]
    jobs, results = _dump(cira_db)
    assert len(jobs) == 12_000
    assert len(results) == summary.results == summary.by_status[JobStatus.COMPLETED]
    by_status = {status: sum(1 for row in jobs if row[2] == status.value) for status in JobStatus}
    assert by_status == summary.by_status
    shares = {status: count / 12_000 for status, count in by_status.items()}
    assert 0.68 < shares[JobStatus.COMPLETED] < 0.76
    assert 0.06 < shares[JobStatus.FAILED] < 0.10
    assert 0.02 < shares[JobStatus.PROCESSING] < 0.06
    assert 0.13 < shares[JobStatus.QUEUED] < 0.19
    per_client = {name: sum(1 for row in jobs if row[1] == name) for name in summary.clients}
    assert per_client["client-a"] > per_client["client-b"] > per_client["test-client-1"] > 0


def test_rows_are_realistic_and_valid(cira_db: Database) -> None:
    seed(cira_db, jobs=2000, clients=6, seed=3)
    jobs, results = _dump(cira_db)
    start = DEFAULT_ANCHOR - timedelta(days=30, seconds=1)
    for (
        _id,
        client,
        status,
        url,
        created,
        updated,
        completed,
        error,
        attempts,
        lease,
    ) in jobs:
        assert check_client_id(client) == client
        assert check_pdf_url(url) == url
        assert start <= created <= DEFAULT_ANCHOR
        assert updated >= created
        assert (completed is not None) == (status == "completed")
        assert (error is not None) == (status == "failed")
        assert (lease is not None) == (status == "processing")
        assert (attempts == 0) == (status == "queued")
    completed_at = {row[0]: row[6] for row in jobs}
    for _id, job_id, data, confidence, tokens, created in results:
        assert created == completed_at[job_id]
        assert 0 <= confidence <= 1
        assert confidence == confidence.quantize(Decimal("0.01"))
        assert tokens > 0
        assert {"document_type", "total", "currency", "line_items", "vendor"} <= data.keys()


def test_the_same_seed_writes_the_same_rows(
    cira_db: Database, cira_db_server: TestServer, cira_db_template: str
) -> None:
    seed(cira_db, jobs=3000, clients=3, seed=42)
    first = _dump(cira_db)
    with cira_db_server.database(template=cira_db_template) as url, Database(url) as other:
        seed(other, jobs=3000, clients=3, seed=42)
        assert _dump(other) == first
        seed(other, jobs=3000, clients=3, seed=43)
        different = _dump(other)
    first_ids = {row[0] for row in first[0]}
    added = [row for row in different[0] if row[0] not in first_ids]
    assert len(added) == 3000  # seed 43 shares no id with seed 42
    assert [row[1:] for row in added[:50]] != [row[1:] for row in first[0][:50]]


def test_another_seed_writes_other_rows(cira_db: Database) -> None:
    seed(cira_db, jobs=500, seed=1)
    first = {row[0] for row in _dump(cira_db)[0]}
    seed(cira_db, jobs=500, seed=2)
    both = {row[0] for row in _dump(cira_db)[0]}
    assert len(both) == 1000
    assert first < both


def test_seeding_the_same_seed_twice_is_a_conflict_and_writes_nothing(cira_db: Database) -> None:
    seed(cira_db, jobs=6000, seed=5)
    with pytest.raises(ConflictError, match="seed 5: these rows exist already"):
        seed(cira_db, jobs=6000, seed=5)
    assert len(_dump(cira_db)[0]) == 6000


def test_seed_on_a_callers_transaction(cira_db: Database) -> None:
    with cira_db.transaction() as conn:
        summary = seed(conn, jobs=100, seed=9)
        assert JobRepository(conn).count_by_status(client_id="client-a") != dict.fromkeys(
            JobStatus, 0
        )
    assert len(_dump(cira_db)[0]) == summary.jobs == 100


def test_seeded_data_works_with_the_repositories(cira_db: Database) -> None:
    now = datetime.now(UTC)
    summary = seed(cira_db, jobs=1000, clients=2, seed=11, anchor=now)
    jobs, results = JobRepository(cira_db), JobResultRepository(cira_db)
    counts = jobs.count_by_status(client_id="client-a")
    assert sum(counts.values()) > 500
    page = jobs.list(client_id="client-a", limit=20)
    assert len(page.items) == 20
    assert page.next_cursor is not None
    usage = results.usage(client_id="client-a", since=now - timedelta(days=31))
    assert usage.jobs == counts[JobStatus.COMPLETED]
    assert usage.tokens_used > 0
    assert usage.mean_confidence is not None
    assert jobs.release_expired() == []  # anchored at now: leases still run
    claimed = jobs.claim_next(lease=timedelta(minutes=1))
    assert claimed is not None
    assert claimed.attempts == 1
    assert summary.by_status[JobStatus.QUEUED] > 0


def test_default_anchor_leaves_expired_leases(cira_db: Database) -> None:
    summary = seed(cira_db, jobs=1000, seed=12)
    released = JobRepository(cira_db).release_expired(max_attempts=3)
    assert len(released) == summary.by_status[JobStatus.PROCESSING]


def test_zero_jobs(cira_db: Database) -> None:
    calls: list[tuple[int, int]] = []
    summary = seed(cira_db, jobs=0, progress=lambda d, t: calls.append((d, t)))
    assert summary.jobs == 0
    assert summary.results == 0
    assert calls == [(0, 0)]


def test_client_ids() -> None:
    assert client_ids(2) == ("client-a", "client-b")
    assert client_ids(8) == (*MOCK_CLIENT_IDS, "client-007", "client-008")
    assert len(set(client_ids(1000))) == 1000


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"jobs": -1}, "jobs"),
        ({"jobs": True}, "jobs"),
        ({"jobs": 10_000_001}, "jobs"),
        ({"clients": 0}, "clients"),
        ({"clients": 1001}, "clients"),
        ({"seed": "x"}, "seed"),
        ({"anchor": datetime(2025, 1, 1)}, "anchor"),
    ],
)
def test_seed_validates_its_arguments(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        seed(Database("postgresql://localhost/never-opened"), **kwargs)
    assert info.value.field == field


# -- the command line -------------------------------------------------------------------------


def test_cli_seed(cira_db_url: str, cira_db: Database, capsys: pytest.CaptureFixture[str]) -> None:
    out = StringIO()
    argv = ["--url", cira_db_url, "seed", "--jobs", "12000", "--clients", "2", "--seed", "3"]
    assert main(argv, out=out) == 0
    summary = out.getvalue()
    assert summary.startswith("seeded 12000 jobs (")
    assert "for 2 clients: client-a, client-b (seed 3)" in summary
    progress = capsys.readouterr().err
    assert "seeding: 41% (5000/12000 jobs)" in progress
    assert "seeding: 100% (12000/12000 jobs)" in progress
    assert len(_dump(cira_db)[0]) == 12_000

    assert main(argv, out=StringIO()) == 1  # the same seed again: a conflict, one line
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("cira-db: error: seed 3: these rows exist already")
    assert len(_dump(cira_db)[0]) == 12_000


def test_seeding_an_unmigrated_database_says_to_migrate_first(
    cira_db_empty_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with Database(cira_db_empty_url) as db, pytest.raises(DatabaseError, match="migrate") as info:
        seed(db, jobs=10)
    assert "`cira-db migrate`" in str(info.value)
    assert isinstance(info.value.__cause__, psycopg.errors.UndefinedTable)

    assert main(["seed", "--url", cira_db_empty_url, "--jobs", "10"], out=StringIO()) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("cira-db: error: seed: the database has no jobs tables")
    assert "`cira-db migrate`" in lines[-1]
    assert main(["migrate", "--url", cira_db_empty_url], out=StringIO()) == 0
    assert main(["seed", "--url", cira_db_empty_url, "--jobs", "10"], out=StringIO()) == 0


@pytest.mark.parametrize(
    "argv",
    [["seed", "--jobs", "-1"], ["seed", "--clients", "0"], ["seed", "--seed", "x"]],
)
def test_cli_seed_bad_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--url", "postgresql://localhost/unused", *argv])
    assert info.value.code == 2
    assert "usage error" in capsys.readouterr().err


def test_cli_progress_bar_on_a_terminal() -> None:
    class Terminal(StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    bar = _Progress(screen, width=10)
    bar(5, 10)
    bar(10, 10)
    bar.finish()
    assert screen.getvalue() == (
        "\rseeding [#####.....]  50%  5/10 jobs\rseeding [##########] 100%  10/10 jobs\n"
    )


def test_demo_seeds_and_runs_a_job(cira_db_empty_url: str) -> None:
    out = StringIO()
    assert run_demo(directory=None, keep_running=False, url=cira_db_empty_url, out=out) == 0
    text = out.getvalue()
    for step in ("2. migrating", "4. seeding 200 jobs", "5. a job's life", "   complete  "):
        assert step in text
    assert "confidence 0.94" in text
    assert "usage     last 24 h: 1 job(s), 1840 tokens, mean confidence 0.9400" in text
    # Run again on the same database: already migrated, seeded again with a new seed,
    # and a new client of its own, so its usage counts only its own job.
    again = StringIO()
    assert run_demo(directory=None, keep_running=False, url=cira_db_empty_url, out=again) == 0
    assert "nothing to apply" in again.getvalue()
    assert "usage     last 24 h: 1 job(s), 1840 tokens" in again.getvalue()
    assert _demo_client(text) != _demo_client(again.getvalue())


def _demo_client(text: str) -> str:
    match = re.search(r"5\. a job's life, for (\S+)", text)
    assert match is not None, text
    return match.group(1)


def test_demo_claims_the_job_it_created_after_a_full_seed(cira_db_url: str) -> None:
    """`cira-db seed --clients 6` leaves older queued jobs of "demo-client"; the demo skips them."""
    with Database(cira_db_url, pool=False) as db:
        seed(db, jobs=600, clients=6, seed=11, anchor=datetime.now(UTC))
        seeded_queue = JobRepository(db).count_by_status(client_id="demo-client")
    assert seeded_queue[JobStatus.QUEUED] > 0  # what a claim for "demo-client" would take first
    out = StringIO()
    assert run_demo(directory=None, keep_running=False, url=cira_db_url, out=out) == 0
    text = out.getvalue()
    created = re.search(r"create    job (\S+): queued", text)
    claimed = re.search(r"claim     job (\S+): processing, attempt 1", text)
    assert created is not None, text
    assert claimed is not None, text
    assert claimed.group(1) == created.group(1)
    client = _demo_client(text)
    assert client.startswith("demo-")
    assert client != "demo-client"
    with Database(cira_db_url, pool=False) as db:
        jobs, results = JobRepository(db), JobResultRepository(db)
        job = jobs.get(created.group(1), client_id=client)
        assert job.status is JobStatus.COMPLETED
        assert results.get_for_job(job.id, client_id=client).tokens_used == 1840
        # The seeded jobs of "demo-client" were left alone.
        assert jobs.count_by_status(client_id="demo-client") == seeded_queue


def test_demo_stops_when_another_worker_took_the_job(
    cira_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(JobRepository, "claim_next", lambda *_args, **_kwargs: None)
    out = StringIO()
    assert run_demo(directory=None, keep_running=False, url=cira_db_url, out=out) == 0
    text = out.getvalue()
    assert "another worker took the job first" in text
    assert "complete  " not in text


def test_demo_recreates_a_demo_database_left_by_another_version() -> None:
    """A cached demo whose history no longer matches the package starts afresh."""
    folder = Path(tempfile.mkdtemp(prefix="cira-demo-"))
    server = None
    try:
        first = StringIO()
        assert run_demo(directory=folder, keep_running=False, url=None, out=first) == 0
        server = start_embedded(folder)  # the same running server (one per folder)
        with psycopg.connect(url_for_database(server.url, DEMO_DATABASE)) as conn:
            conn.execute("UPDATE schema_migrations SET checksum = 'changed' WHERE version = 2")
        again = StringIO()
        assert run_demo(directory=folder, keep_running=False, url=None, out=again) == 0
        assert "recreating" not in first.getvalue()
        assert "from another cira_db version: recreating it" in again.getvalue()
        assert "applied 0002_hardening.sql" in again.getvalue()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
