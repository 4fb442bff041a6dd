"""The repositories: jobs and job results over named, parameterised SQL."""

from __future__ import annotations

from cira_db._repositories._base import Executor
from cira_db._repositories._jobs import JobRepository
from cira_db._repositories._results import JobResultRepository

__all__ = ["Executor", "JobRepository", "JobResultRepository"]
