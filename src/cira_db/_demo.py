"""``cira-db demo``: an embedded PostgreSQL 16, migrated, seeded, and a job's life, printed."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

import psycopg
from psycopg import sql

from cira_db._database import Database
from cira_db._embedded import default_demo_dir, start_embedded
from cira_db._repositories import JobRepository, JobResultRepository
from cira_db._seed import seed
from cira_db._settings import url_for_database
from cira_db.migrations import Migrator

__all__ = ["DEMO_DATABASE", "run_demo"]

DEMO_DATABASE = "cira_demo"


def _prepare_demo_database(admin_url: str, out: TextIO) -> None:
    """Create the demo database; recreate it when another cira_db version migrated it.

    It lives on the demo's own embedded server, so a database whose migration
    history no longer matches the packaged files (an older or newer cira_db
    ran the demo before) is a throwaway: it is dropped and made anew rather
    than stopping the demo with a checksum error.
    """
    name = sql.Identifier(DEMO_DATABASE)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_DATABASE,)
        ).fetchone()
        if exists and Migrator(url_for_database(admin_url, DEMO_DATABASE)).problems():
            print("   the demo database is from another cira_db version: recreating it", file=out)
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(name))
            exists = None
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(name))


def run_demo(
    *,
    directory: Path | None,
    keep_running: bool,
    url: str | None,
    out: TextIO,
) -> int:
    """Start the embedded server (unless ``url`` names one), migrate, seed, run a job."""
    server = None
    if url is None:
        folder = directory or default_demo_dir()
        print(f"1. starting an embedded PostgreSQL 16 in {folder}", file=out)
        server = start_embedded(folder, keep_running=keep_running)
        _prepare_demo_database(server.url, out)
        url = url_for_database(server.url, DEMO_DATABASE)
    else:
        print("1. using the database given with --url", file=out)
    db = Database(url, pool=False)
    print(f"   target: {db.settings.describe()}", file=out)
    migrator = Migrator(db, applied_by="cira-db demo")
    print("2. migrating", file=out)
    applied = migrator.apply()
    if applied:
        for migration in applied:
            print(f"   applied {migration.filename}", file=out)
    else:
        print("   nothing to apply: already up to date", file=out)
    print("3. migration status", file=out)
    for entry in migrator.status():
        when = f"{entry.applied_at:%Y-%m-%d %H:%M:%S}" if entry.applied_at else "pending"
        print(f"   {entry.version:04d} {entry.name:<24} {when}", file=out)
    _seed_some(db, out)
    _job_life(db, out)
    if server is not None:
        if keep_running:
            print(f"done. The server keeps running; connect with: psql '{server.url}'", file=out)
        else:
            print("done. The embedded server stops now; pass --keep to leave it running.", file=out)
    return 0


def _seed_some(db: Database, out: TextIO) -> None:
    # A new seed each run (the clock in µs), so the demo also works again on a
    # kept server that an earlier run seeded.
    number = time.time_ns() // 1000
    print(f"4. seeding 200 jobs for 3 mock clients (seed {number}, anchored now)", file=out)
    summary = seed(db, jobs=200, clients=3, seed=number, anchor=datetime.now(UTC))
    mix = ", ".join(f"{count} {status.value}" for status, count in summary.by_status.items())
    print(f"   {mix}; {summary.results} results; clients {', '.join(summary.clients)}", file=out)


def _job_life(db: Database, out: TextIO) -> None:
    jobs, results = JobRepository(db), JobResultRepository(db)
    # A client of this run alone: its queue holds just the job created below, so
    # claiming from it claims that job. (The seeded mock client "demo-client"
    # may have older queued jobs, which a claim would take first.)
    client = f"demo-{uuid.uuid4().hex[:8]}"
    print(f"5. a job's life, for {client}", file=out)
    job = jobs.create(client_id=client, pdf_url="https://example.com/demo/invoice-42.pdf")
    print(f"   create    job {job.id}: {job.status.value}, {job.pdf_url}", file=out)
    claimed = jobs.claim_next(lease=timedelta(minutes=15), client_id=client)
    if claimed is None:
        # Only a worker serving every client on this database can get there first.
        print("   claim     another worker took the job first; stopping here", file=out)
        return
    lease = f"{claimed.lease_expires_at:%H:%M:%S %Z}" if claimed.lease_expires_at else "-"
    print(
        f"   claim     job {claimed.id}: {claimed.status.value}, attempt {claimed.attempts}, "
        f"lease until {lease}",
        file=out,
    )
    result = jobs.complete(
        claimed.id,
        extracted_data={
            "document_type": "invoice",
            "reference": "INV-42",
            "total": 1234.5,
            "currency": "EUR",
        },
        confidence_score=0.935,
        tokens_used=1840,
        attempt=claimed.attempts,
    )
    done = jobs.get(claimed.id, client_id=client)
    print(
        f"   complete  {done.status.value} at {done.completed_at:%H:%M:%S}; result {result.id}, "
        f"confidence {result.confidence_score} (0.935 rounded half-even), "
        f"{result.tokens_used} tokens",
        file=out,
    )
    stored = results.get_for_job(claimed.id, client_id=client)
    print(f"   read      {json.dumps(stored.extracted_data, sort_keys=True)}", file=out)
    usage = results.usage(client_id=client, since=datetime.now(UTC) - timedelta(days=1))
    print(
        f"   usage     last 24 h: {usage.jobs} job(s), {usage.tokens_used} tokens, "
        f"mean confidence {usage.mean_confidence}",
        file=out,
    )
