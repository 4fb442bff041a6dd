"""The suite's side of the local RDS Proxy stand-in: where application connections go.

The launcher itself (pgbouncer with client TLS from a throwaway CA) lives in
``benchmarks/local_proxy.py``, shared with the load benchmark; pytest puts
``benchmarks`` on the import path (pyproject ``pythonpath``). This module adds
what only the tests need: `AppTarget` and the ``CIRA_DB_TEST_VIA_PGBOUNCER`` switch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from cira_db import Database
from local_proxy import (
    CertificateAuthority,
    PgBouncer,
    PgBouncerUnavailableError,
    find_pgbouncer,
    make_ca,
    running_pgbouncer,
    start_pgbouncer,
)

__all__ = [
    "VIA_PGBOUNCER",
    "AppTarget",
    "CertificateAuthority",
    "PgBouncer",
    "PgBouncerUnavailableError",
    "find_pgbouncer",
    "make_ca",
    "running_pgbouncer",
    "start_pgbouncer",
]

VIA_PGBOUNCER_ENV = "CIRA_DB_TEST_VIA_PGBOUNCER"
# Read at import: the suite's autouse fixture clears CIRA_DB_* variables for each test.
VIA_PGBOUNCER = os.environ.get(VIA_PGBOUNCER_ENV) == "1"


@dataclass(frozen=True, slots=True)
class AppTarget:
    """Where a production deployment's connections go in this test run.

    ``url`` is what the application uses: the test database directly, or (in the
    proxy pass, ``CIRA_DB_TEST_VIA_PGBOUNCER=1``) the same database through
    pgbouncer with TLS ``verify-full`` and ``via_proxy=True``. ``migration_url``
    is always direct: migrations never go through the proxy, by design. Plain
    strings only, so it can be handed to worker processes.
    """

    url: str
    migration_url: str
    via_proxy: bool

    def database(self, **settings: Any) -> Database:
        """A `Database` (not yet open) the way the application would make it."""
        if self.via_proxy:
            return Database(self.url, via_proxy=True, migration_url=self.migration_url, **settings)
        return Database(self.url, **settings)

    def environ(self) -> dict[str, str]:
        """The ``CIRA_DB_*`` variables a deployment would set for the same target."""
        if not self.via_proxy:
            return {"CIRA_DB_URL": self.url}
        return {
            "CIRA_DB_URL": self.url,
            "CIRA_DB_VIA_PROXY": "true",
            "CIRA_DB_MIGRATION_URL": self.migration_url,
        }
