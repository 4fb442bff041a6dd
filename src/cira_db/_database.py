"""`Database`: settings plus an optional connection pool, opened explicitly."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from types import TracebackType
from typing import Any, Self, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from cira_db._aws_auth import SecretProvider, iam_token, is_auth_failure
from cira_db._errors_map import translate, wrap_errors
from cira_db._plan import ConnectionPlan, Purpose, plan_connection
from cira_db._retry import RetryPolicy, call_with_retries
from cira_db._settings import DatabaseSettings, running_in_lambda
from cira_db.errors import ConfigurationError, DatabaseUnavailableError

__all__ = ["Connection", "Database"]

T = TypeVar("T")
Connection = psycopg.Connection[Any]


class Database:
    """Where the data lives and how to reach it.

    ``Database(...)`` only stores settings; nothing connects until `open`
    (or ``with db:``). With ``pool=False`` every `connection` call opens a
    fresh connection and closes it afterwards, which suits scripts and
    one-shot tools.

    Connections handed out are in autocommit mode, so a single statement costs
    one round trip; use `transaction` to group statements.

    ``secrets_client`` and ``rds_client`` are optional boto3 clients to use for
    ``CIRA_DB_SECRET_ARN`` and ``CIRA_DB_IAM_AUTH`` (by default they are made on
    first use).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        settings: DatabaseSettings | None = None,
        pool: bool = True,
        secrets_client: Any = None,
        rds_client: Any = None,
        **overrides: Any,
    ) -> None:
        if settings is not None and (url is not None or overrides):
            raise ConfigurationError("pass either settings= or a URL/overrides, not both")
        if settings is None:
            settings = DatabaseSettings.load(url=url, **overrides)
        self._settings = settings
        self._use_pool = pool
        self._pool: ConnectionPool[Connection] | None = None
        self._lock = threading.Lock()
        self._secret = (
            SecretProvider(settings.secret_arn, region=settings.aws_region, client=secrets_client)
            if settings.secret_arn
            else None
        )
        self._rds_client = rds_client
        # Wall-clock time each pooled connection was last created or returned. Wall
        # time, not monotonic: it must also count the time a Lambda environment spent
        # frozen, which is when the proxy drops idle clients.
        self._last_used: weakref.WeakKeyDictionary[Connection, float] = weakref.WeakKeyDictionary()
        self._retry = RetryPolicy(
            attempts=settings.retry_attempts,
            backoff=settings.retry_backoff,
            backoff_max=settings.retry_backoff_max,
        )

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

    @property
    def pool(self) -> ConnectionPool[Connection] | None:
        """The psycopg pool while open (for its ``get_stats()``), else None."""
        return self._pool

    def __repr__(self) -> str:
        try:
            target = plan_connection(self._settings).describe()
        except ConfigurationError:
            target = "(invalid or incomplete settings)"
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
            self._settings.conninfo_dict()  # configuration errors surface here, not in a worker
            min_size, max_size = self._settings.pool_sizes()
            pool: ConnectionPool[Connection] = ConnectionPool(
                kwargs=self._connect_kwargs,
                connection_class=self._connection_class(),
                min_size=min_size,
                max_size=max_size,
                timeout=self._settings.pool_timeout,
                max_lifetime=self._settings.pool_max_lifetime,
                max_idle=self._settings.pool_max_idle,
                reconnect_timeout=max(self._settings.pool_timeout * 3, 30.0),
                num_workers=1 if max_size <= 2 else 2,
                check=self._check_connection,
                configure=self._mark_used,
                name="cira_db",
                open=False,
            )
            try:
                with wrap_errors("open the database pool"):
                    pool.open(wait=wait and min_size > 0, timeout=self._settings.pool_timeout)
            except DatabaseUnavailableError:
                pool.close(timeout=0)
                # The pool only says "timed out"; one direct try names the real cause
                # (refused certificate, wrong password, unreachable host).
                self.connect_direct().close()
                raise
            except BaseException:
                pool.close(timeout=0)
                raise
            self._pool = pool

    def close(self) -> None:
        """Close the pool without waiting for anything; calling it twice is harmless."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            # In Lambda nothing may wait; elsewhere give the pool's threads a moment.
            pool.close(timeout=0 if running_in_lambda() else 2.0)

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

    # -- pool callbacks ---------------------------------------------------------

    def _mark_used(self, conn: Connection) -> None:
        self._last_used[conn] = time.time()

    def _check_connection(self, conn: Connection) -> None:
        """Check a connection that sat idle long enough to have been dropped meanwhile."""
        last = self._last_used.get(conn)
        if last is None or time.time() - last >= self._settings.pool_check_after:
            ConnectionPool.check_connection(conn)

    # -- credentials ----------------------------------------------------------

    def connection_plan(self, *, for_migrations: bool = False) -> ConnectionPlan:
        """Where a new connection goes, with what TLS and credentials (see docs/connections.md).

        Its attributes (``hosts``, ``hostaddrs``, ``port``, ``user``, ``dbname``,
        ``sslmode``, ``is_local``, ``behind_proxy``) and ``describe()`` hold no
        secret. With ``CIRA_DB_SECRET_ARN`` this fetches the secret (once).
        Raises `ConfigurationError` for settings that cannot work, including
        migrations through a transaction pooler without ``CIRA_DB_MIGRATION_URL``.
        """
        secret = self._secret.get() if self._secret is not None else None
        purpose: Purpose = "migrations" if for_migrations else "app"
        return plan_connection(self._settings, purpose, secret=secret)

    def _connect_kwargs(self, *, for_migrations: bool = False) -> dict[str, Any]:
        """Everything psycopg.connect needs; evaluated for every new connection."""
        plan = self.connection_plan(for_migrations=for_migrations)
        kwargs = plan.connect_kwargs()
        if self._settings.iam_auth:
            kwargs["password"] = iam_token(
                host=plan.hosts[0],
                port=int(plan.port.split(",")[0] or 5432),
                user=str(plan.user),
                region=self._settings.aws_region,
                client=self._rds_client,
            )
        return kwargs

    def _refresh_credentials(self) -> bool:
        """After an authentication failure: re-fetch a rotated secret. True if worth retrying."""
        return self._secret.refresh() if self._secret is not None else False

    def _connection_class(self) -> type[Connection]:
        """A Connection class whose connect() retries once after a secret rotation."""
        database = self

        class _Connection(psycopg.Connection[Any]):
            @classmethod
            def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
                try:
                    return super().connect(conninfo, **kwargs)
                except psycopg.OperationalError as exc:
                    if not (is_auth_failure(exc) and database._refresh_credentials()):
                        raise
                kwargs.update(database._connect_kwargs())
                return super().connect(conninfo, **kwargs)

        return _Connection

    # -- connections --------------------------------------------------------

    def connect_direct(self, *, for_migrations: bool = False) -> Connection:
        """A new connection outside the pool, in autocommit mode; the caller closes it."""
        with wrap_errors("connect to the database"):
            kwargs = self._connect_kwargs(for_migrations=for_migrations)
            try:
                return psycopg.connect(**kwargs)
            except psycopg.OperationalError as exc:
                if not (is_auth_failure(exc) and self._refresh_credentials()):
                    raise
            return psycopg.connect(**self._connect_kwargs(for_migrations=for_migrations))

    @contextmanager
    def connection(self) -> Iterator[Connection]:
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
            try:
                yield conn
            finally:
                # Stamped here rather than in a pool `reset` callback: with one, the
                # pool returns connections through a worker thread, and a caller's
                # next checkout would find none idle and grow the pool.
                self._mark_used(conn)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection inside one transaction: committed on success, rolled back on error.

        A failure of BEGIN or COMMIT themselves (connection lost, serialization
        failure at commit) comes out as a cira_db error, like any other.
        """
        with self.connection() as conn:
            try:
                with conn.transaction():
                    yield conn
            except psycopg.Error as exc:
                raise translate(exc, "run a transaction") from exc

    def run(self, operation: str, work: Callable[[Connection], T], *, idempotent: bool) -> T:
        """Run ``work`` on a pooled connection, retrying transient failures if idempotent.

        ``work`` must be safe to repeat when ``idempotent`` is true: a read, a
        create by a caller-chosen id, or a transaction it opens itself. psycopg
        errors come out as cira_db errors named after ``operation``.
        """

        def once() -> T:
            with self.connection() as conn:
                return work(conn)

        return call_with_retries(self._retry, operation, once, idempotent=idempotent)
