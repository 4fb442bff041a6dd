"""pytest plugin for suites that use cira_db.

Enable it in a ``conftest.py``::

    pytest_plugins = ["cira_db.testing"]

Nothing is registered automatically and no fixture is ``autouse``. Fixtures:

``cira_db_server``
    (session) the `TestServer`: ``CIRA_DB_TEST_URL``, else a testcontainers
    container of ``CIRA_DB_TEST_IMAGE`` (default ``postgres:16``) where Docker
    answers and the image can be had, else an embedded PostgreSQL 16. The
    terminal summary names the server used (and why, after a fallback).
``cira_db_template``
    (session) name of a database migrated once per session, cloned per test.
``cira_db_url``
    a fresh, fully migrated database for one test (dropped afterwards).
``cira_db_empty_url``
    a fresh, empty database for one test (for migration tests).
``cira_db``
    an opened `cira_db.Database` on ``cira_db_url``.
``cira_db_factory``
    a `CiraDbFactory` on ``cira_db``: ``job(status=...)``, ``completed_job()``
    and ``result()`` make jobs in any status through the public repositories.
``cira_db_async``
    an opened `cira_db.aio.AsyncDatabase` on ``cira_db_url`` (an async
    fixture: for tests run by anyio's pytest plugin, ``@pytest.mark.anyio``,
    on the asyncio backend; see docs/testing.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from cira_db._aio_database import AsyncDatabase
from cira_db._database import Database
from cira_db.testing._factories import CiraDbFactory
from cira_db.testing._server import TestServer, find_server, url_for_database

__all__ = [
    "CiraDbFactory",
    "TestServer",
    "cira_db",
    "cira_db_async",
    "cira_db_empty_url",
    "cira_db_factory",
    "cira_db_server",
    "cira_db_template",
    "cira_db_url",
    "url_for_database",
]


_SERVER_KEY = pytest.StashKey[TestServer]()


@pytest.fixture(scope="session")
def cira_db_server(pytestconfig: pytest.Config) -> Iterator[TestServer]:
    """The PostgreSQL server this test session uses."""
    server = find_server()
    pytestconfig.stash[_SERVER_KEY] = server
    try:
        yield server
    finally:
        server.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line naming the server the session used (and why, after a fallback)."""
    server = terminalreporter.config.stash.get(_SERVER_KEY, None)
    if server is not None:
        terminalreporter.write_line(f"cira_db test server: {server.kind}")


@pytest.fixture(scope="session")
def cira_db_template(cira_db_server: TestServer) -> Iterator[str]:
    """A database migrated once for the session; tests get copies of it."""
    name = cira_db_server.migrated_template()
    try:
        yield name
    finally:
        cira_db_server.drop_database(url_for_database(cira_db_server.admin_url, name))


@pytest.fixture
def cira_db_url(cira_db_server: TestServer, cira_db_template: str) -> Iterator[str]:
    """URL of a fresh, migrated database that only this test uses."""
    with cira_db_server.database(template=cira_db_template) as url:
        yield url


@pytest.fixture
def cira_db_empty_url(cira_db_server: TestServer) -> Iterator[str]:
    """URL of a fresh, empty database that only this test uses."""
    with cira_db_server.database() as url:
        yield url


@pytest.fixture
def cira_db(cira_db_url: str) -> Iterator[Database]:
    """An open `Database` (pooled) on this test's fresh database."""
    with Database(cira_db_url) as db:
        yield db


@pytest.fixture
def cira_db_factory(cira_db: Database) -> CiraDbFactory:
    """A `CiraDbFactory` making jobs and results in this test's database."""
    return CiraDbFactory(cira_db)


@pytest.fixture
async def cira_db_async(cira_db_url: str) -> AsyncIterator[AsyncDatabase]:
    """An open `AsyncDatabase` (pooled) on this test's fresh database.

    Opened and closed in the test's own event loop: request it from an
    async test run by anyio's pytest plugin (``@pytest.mark.anyio`` with the
    ``asyncio`` backend; psycopg's async API needs asyncio).
    """
    async with AsyncDatabase(cira_db_url) as db:
        yield db
