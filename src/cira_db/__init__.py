"""cira_db: jobs and job results of the CIRA PDF-extraction service, in PostgreSQL.

The public names are re-exported here; every other module whose name starts
with an underscore is private. Errors live in `cira_db.errors`, migrations in
`cira_db.migrations`, AWS helpers in `cira_db.aws` and the pytest plugin in
`cira_db.testing`.
"""

from __future__ import annotations

from cira_db._database import Database
from cira_db._models import (
    Completion,
    Failure,
    ItemOutcome,
    Job,
    JobResult,
    JobStatus,
    Page,
    QueueStats,
    Usage,
)
from cira_db._observe import PoolStats
from cira_db._repositories import JobRepository, JobResultRepository
from cira_db._repositories._heartbeat import Heartbeat
from cira_db._settings import DatabaseSettings
from cira_db._version import __version__

__all__ = [
    "Completion",
    "Database",
    "DatabaseSettings",
    "Failure",
    "Heartbeat",
    "ItemOutcome",
    "Job",
    "JobRepository",
    "JobResult",
    "JobResultRepository",
    "JobStatus",
    "Page",
    "PoolStats",
    "QueueStats",
    "Usage",
    "__version__",
]

for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and not isinstance(_obj, str):
        _obj.__module__ = "cira_db"
del _name, _obj
