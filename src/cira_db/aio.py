"""The asyncio face of cira_db: the same behaviour, awaited.

``AsyncDatabase`` takes `Database`'s arguments and settings and hands out
``psycopg.AsyncConnection`` from a ``psycopg_pool.AsyncConnectionPool``;
``AsyncJobRepository`` and ``AsyncJobResultRepository`` have every method
of `JobRepository` and `JobResultRepository`, with the same names,
arguments, return types and errors::

    async with AsyncDatabase.from_env() as db:
        jobs = AsyncJobRepository(db)
        job = await jobs.create(client_id="client-a", pdf_url="https://example.com/a.pdf")

Built as a sans-I/O core: each repository method's logic is written once
(a generator of statement requests) and run either by the sync runner or by
the asyncio one, so the two faces cannot drift (docs/async.md).
"""

from __future__ import annotations

from cira_db._aio_database import AsyncDatabase
from cira_db._repositories._aio_base import AsyncExecutor
from cira_db._repositories._aio_jobs import AsyncJobRepository
from cira_db._repositories._aio_results import AsyncJobResultRepository
from cira_db._repositories._heartbeat import AsyncHeartbeat

__all__ = [
    "AsyncDatabase",
    "AsyncExecutor",
    "AsyncHeartbeat",
    "AsyncJobRepository",
    "AsyncJobResultRepository",
]
