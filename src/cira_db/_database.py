"""`Database`: settings plus an optional connection pool, opened explicitly."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from types import TracebackType
from typing import Any, Self

import psycopg
from psycopg_pool import ConnectionPool

from cira_db._errors_map import wrap_errors
from cira_db._settings import DatabaseSettings
from cira_db.errors import ConfigurationError

__all__ = ["Database"]


class Database:
    """Where the data lives and how to reach it.

    ``Database(...)`` only stores settings; nothing connects until `open`
    (or ``with db:``). With ``pool=False`` every `connection` call opens a
    fresh connection and closes it afterwards, which suits scripts and
    one-shot tools.

    Connections handed out are in autocommit mode, so a single statement costs
    one round trip; use `transaction` to group statements.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        settings: DatabaseSettings | None = None,
        pool: bool = True,
        **overrides: Any,
    ) -> None:
        if settings is not None and (url is not None or overrides):
            raise ConfigurationError("pass either settings= or a URL/overrides, not both")
        if settings is None:
            settings = DatabaseSettings.load(url=url, **overrides)
        self._settings = settings
        self._use_pool = pool
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, *, pool: bool = True, **overrides: Any) -> Self:
        """A `Database` configured from ``CIRA_DB_*`` variables (plus ``overrides``)."""
        return cls(settings=DatabaseSettings.load(**overrides), pool=pool)

    @property
    def settings(self) -> DatabaseSettings:
        """The settings this database was built with."""
        return self._settings

    @property
    def is_open(self) -> bool:
        """True between `open` and `close` for a pooled database."""
        return self._pool is not None

    def __repr__(self) -> str:
        try:
            target = self._settings.describe()
        except ConfigurationError:
            target = "(unconfigured)"
        state = "open" if self.is_open else "closed"
        return f"<Database {target} pool={self._use_pool} {state}>"

    # -- lifecycle ----------------------------------------------------------

    def open(self, *, wait: bool = True) -> None:
        """Create the pool; with ``wait``, fail now if the server cannot be reached."""
        if not self._use_pool:
            return
        with self._lock:
            if self._pool is not None:
                return
            min_size, max_size = self._settings.pool_sizes()
            pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
                kwargs=self._connect_kwargs(),
                min_size=min_size,
                max_size=max_size,
                timeout=self._settings.pool_timeout,
                max_lifetime=self._settings.pool_max_lifetime,
                max_idle=self._settings.pool_max_idle,
                check=ConnectionPool.check_connection,
                name="cira_db",
                open=False,
            )
            with wrap_errors("open the database pool"):
                pool.open(wait=wait and min_size > 0, timeout=self._settings.pool_timeout)
            self._pool = pool

    def close(self) -> None:
        """Close the pool; calling it twice is harmless."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=0)

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- connections --------------------------------------------------------

    def _connect_kwargs(self, *, for_migrations: bool = False) -> dict[str, Any]:
        kwargs: dict[str, Any] = self._settings.conninfo_dict(for_migrations=for_migrations)
        kwargs["autocommit"] = True
        kwargs["prepare_threshold"] = None if for_migrations else self._settings.prepare_threshold()
        return kwargs

    def connect_direct(self, *, for_migrations: bool = False) -> psycopg.Connection[Any]:
        """A new connection outside the pool, in autocommit mode; the caller closes it."""
        with wrap_errors("connect to the database"):
            return psycopg.connect(**self._connect_kwargs(for_migrations=for_migrations))

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection in autocommit mode, returned to the pool afterwards."""
        if not self._use_pool:
            conn = self.connect_direct()
            try:
                yield conn
            finally:
                conn.close()
            return
        pool = self._pool
        if pool is None:
            raise ConfigurationError("the Database is not open: use `with db:` or db.open()")
        with ExitStack() as stack:
            with wrap_errors("get a connection from the pool"):
                conn = stack.enter_context(pool.connection())
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection inside one transaction: committed on success, rolled back on error."""
        with self.connection() as conn, conn.transaction():
            yield conn
