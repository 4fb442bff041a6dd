"""cira_db: jobs and job results of the CIRA PDF-extraction service, in PostgreSQL.

The public names are re-exported here; every other module whose name starts
with an underscore is private. Errors live in `cira_db.errors`, migrations in
`cira_db.migrations`, AWS helpers in `cira_db.aws` and the pytest plugin in
`cira_db.testing`.
"""

from __future__ import annotations

import typing as _typing

from cira_db._database import Database
from cira_db._models import (
    CompletedAndClaimed,
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
from cira_db._version import __version__

if _typing.TYPE_CHECKING:
    from cira_db._settings_model import DatabaseSettings

__all__ = [
    "CompletedAndClaimed",
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
    _obj = globals().get(_name)
    if hasattr(_obj, "__module__") and not isinstance(_obj, str):
        _obj.__module__ = "cira_db"
del _name, _obj


def __getattr__(name: str) -> _typing.Any:
    # DatabaseSettings is a pydantic model, and importing pydantic costs more than the
    # rest of a cold start: it is built when first named (Database does not need it).
    if name == "DatabaseSettings":
        from cira_db._settings_model import DatabaseSettings

        DatabaseSettings.__module__ = "cira_db"
        globals()[name] = DatabaseSettings
        return DatabaseSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
