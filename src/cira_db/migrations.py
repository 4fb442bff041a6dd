"""Schema migrations: plain SQL files shipped in the package, applied in order.

``Migrator(db)`` reads ``cira_db/sql/migrations/NNNN_name.sql`` (and the
``NNNN_name.down.sql`` beside each) with `importlib.resources`, so it works
from a wheel, a zip or a Lambda layer, and records what it applied in
``schema_migrations``.

Guarantees:

* Only one runner at a time: a session advisory lock on a dedicated direct
  connection (never a pooled or proxied one), waited for with polling up to
  ``migration_lock_wait`` seconds, then a `MigrationError`.
* Every run validates the history first: an applied file that changed, an
  applied version the package does not know, a version below 1, or a gap in
  the applied versions stops the run before anything executes.
* Each migration and its history record commit in one transaction, with
  ``lock_timeout`` and ``statement_timeout`` set for it; such a file may not
  hold transaction-control statements (refused when the files are loaded). A
  file whose header holds ``-- cira_db: no-transaction`` runs statement by
  statement instead (for ``CREATE INDEX CONCURRENTLY``); such files must be
  re-runnable.

The parts live in the private package ``cira_db._migrations``; this module is
the public face.
"""

from __future__ import annotations

from cira_db._migrations._files import Migration
from cira_db._migrations._files import checksum as checksum
from cira_db._migrations._files import load_migrations as load_migrations
from cira_db._migrations._history import MigrationStatus
from cira_db._migrations._runner import LOCK_KEY as LOCK_KEY
from cira_db._migrations._runner import Migrator
from cira_db._migrations._split import split_statements as split_statements

# checksum, load_migrations, split_statements and LOCK_KEY stay importable
# from here, as before the split, for tools and tests; the contract is these:
__all__ = ["Migration", "MigrationStatus", "Migrator"]

for _public in (Migration, MigrationStatus, Migrator):
    _public.__module__ = __name__
del _public
