"""``cira-db demo``: an embedded PostgreSQL 16, migrated, with what happened printed."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from cira_db._database import Database
from cira_db._embedded import default_demo_dir, start_embedded
from cira_db.migrations import Migrator

__all__ = ["run_demo"]


def run_demo(
    *,
    directory: Path | None,
    keep_running: bool,
    url: str | None,
    out: TextIO,
) -> int:
    """Start the embedded server (unless ``url`` names one), migrate, report."""
    server = None
    if url is None:
        folder = directory or default_demo_dir()
        print(f"1. starting an embedded PostgreSQL 16 in {folder}", file=out)
        server = start_embedded(folder, keep_running=keep_running)
        url = server.url
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
    if server is not None:
        if keep_running:
            print(f"done. The server keeps running; connect with: psql '{server.url}'", file=out)
        else:
            print("done. The embedded server stops now; pass --keep to leave it running.", file=out)
    return 0
