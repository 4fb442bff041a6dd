"""`AsyncDatabase`: the asyncio face of `Database`, on psycopg's async pool.

Only the I/O is its own: an ``AsyncConnectionPool`` of ``AsyncConnection``,
``asyncio.sleep`` between retries, and the blocking credential look-ups
(Secrets Manager, IAM tokens: boto3 calls) moved off the event loop with
``asyncio.to_thread``. Everything else is the sync `Database`'s: it keeps a
(never opened) `Database` built from the same arguments and asks it for the
settings, the connection plan, the connect arguments, the pool sizes, the
retry policy and the credential refresh after a secret rotation; errors go
through the same `wrap_errors`/`translate` seam.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any, Self, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from cira_db._aws_auth import is_auth_failure
from cira_db._database import Database
from cira_db._errors_map import translate, wrap_errors
from cira_db._plan import ConnectionPlan
from cira_db._retry import async_call_with_retries
from cira_db._settings import DatabaseSettings, running_in_lambda
from cira_db.errors import ConfigurationError, DatabaseUnavailableError

__all__ = ["AsyncConnection", "AsyncDatabase"]

T = TypeVar("T")
AsyncConnection = psycopg.AsyncConnection[Any]


class AsyncDatabase:
    """Where the data lives and how to reach it, for code running on an event loop.

    Takes exactly the arguments of `Database` (a URL, ``settings=``,
    ``pool=``, ``secrets_client=``, ``rds_client=``, setting overrides) and
    reads the same ``CIRA_DB_*`` variables. ``AsyncDatabase(...)`` only
    stores settings; nothing connects until ``await db.open()`` or
    ``async with db:``. Connections are ``psycopg.AsyncConnection`` in
    autocommit mode; ``pool=False`` opens one per `connection` call.

    Use one `AsyncDatabase` per event loop (open it in the loop that uses
    it, for example in a web application's lifespan).
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
        # The sync twin, never opened: the one place for settings, connection
        # plan, credentials and retry policy.
        self._config = Database(
            url,
            settings=settings,
            pool=pool,
            secrets_client=secrets_client,
            rds_client=rds_client,
            **overrides,
        )
        self._use_pool = pool
        self._pool: AsyncConnectionPool[AsyncConnection] | None = None
        self._opening: asyncio.Lock | None = None
        self._last_used: weakref.WeakKeyDictionary[AsyncConnection, float] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def from_env(cls, *, pool: bool = True, **overrides: Any) -> Self:
        """An `AsyncDatabase` configured from ``CIRA_DB_*`` variables (plus ``overrides``)."""
        return cls(settings=DatabaseSettings.load(**overrides), pool=pool)

    @property
    def settings(self) -> DatabaseSettings:
        """The settings this database was built with."""
        return self._config.settings

    @property
    def is_open(self) -> bool:
        """True between `open` and `close` for a pooled database."""
        return self._pool is not None

    @property
    def pool(self) -> AsyncConnectionPool[AsyncConnection] | None:
        """The psycopg async pool while open (for its ``get_stats()``), else None."""
        return self._pool

    def __repr__(self) -> str:
        return (
            repr(self._config)
            .replace("<Database ", "<AsyncDatabase ", 1)
            .replace(" closed>", " open>" if self.is_open else " closed>")
        )

    # -- lifecycle ----------------------------------------------------------

    async def open(self, *, wait: bool = True) -> None:
        """Create the pool; with ``wait``, fail now if the server cannot be reached."""
        if not self._use_pool:
            return
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is not None:
                return
            settings = self.settings
            settings.conninfo_dict()  # configuration errors surface here, not in a worker
            min_size, max_size = settings.pool_sizes()
            pool: AsyncConnectionPool[AsyncConnection] = AsyncConnectionPool(
                kwargs=self._connect_kwargs,
                connection_class=self._connection_class(),
                min_size=min_size,
                max_size=max_size,
                timeout=settings.pool_timeout,
                max_lifetime=settings.pool_max_lifetime,
                max_idle=settings.pool_max_idle,
                reconnect_timeout=max(settings.pool_timeout * 3, 30.0),
                num_workers=1 if max_size <= 2 else 2,
                check=self._check_connection,
                configure=self._configure,
                name="cira_db.aio",
                open=False,
            )
            try:
                with wrap_errors("open the database pool"):
                    await pool.open(wait=wait and min_size > 0, timeout=settings.pool_timeout)
            except DatabaseUnavailableError:
                await pool.close(timeout=0)
                # The pool only says "timed out"; one direct try names the real cause.
                await (await self.connect_direct()).close()
                raise
            except BaseException:
                await pool.close(timeout=0)
                raise
            self._pool = pool

    async def close(self) -> None:
        """Close the pool; calling it twice is harmless."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close(timeout=0 if running_in_lambda() else 2.0)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- pool callbacks ---------------------------------------------------------

    async def _configure(self, conn: AsyncConnection) -> None:
        self._last_used[conn] = time.time()

    async def _check_connection(self, conn: AsyncConnection) -> None:
        """Check a connection that sat idle long enough to have been dropped meanwhile."""
        last = self._last_used.get(conn)
        if last is None or time.time() - last >= self.settings.pool_check_after:
            await AsyncConnectionPool.check_connection(conn)

    # -- credentials (the sync Database's, off the event loop) -------------------

    async def connection_plan(self, *, for_migrations: bool = False) -> ConnectionPlan:
        """`Database.connection_plan`, with the Secrets Manager call off the event loop."""
        return await asyncio.to_thread(self._config.connection_plan, for_migrations=for_migrations)

    async def _connect_kwargs(self, *, for_migrations: bool = False) -> dict[str, Any]:
        """`Database`'s connect arguments; boto3 calls (secret, IAM token) run in a thread."""
        settings = self.settings
        if settings.secret_arn or settings.iam_auth:
            return await asyncio.to_thread(
                self._config._connect_kwargs, for_migrations=for_migrations
            )
        return self._config._connect_kwargs(for_migrations=for_migrations)

    async def _refresh_credentials(self) -> bool:
        return await asyncio.to_thread(self._config._refresh_credentials)

    def _connection_class(self) -> type[AsyncConnection]:
        """An AsyncConnection class whose connect() retries once after a secret rotation."""
        database = self

        class _AsyncConnection(psycopg.AsyncConnection[Any]):
            @classmethod
            async def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
                try:
                    return await super().connect(conninfo, **kwargs)
                except psycopg.OperationalError as exc:
                    if not (is_auth_failure(exc) and await database._refresh_credentials()):
                        raise
                kwargs.update(await database._connect_kwargs())
                return await super().connect(conninfo, **kwargs)

        return _AsyncConnection

    # -- connections --------------------------------------------------------

    async def connect_direct(self, *, for_migrations: bool = False) -> AsyncConnection:
        """A new connection outside the pool, in autocommit mode; the caller closes it."""
        with wrap_errors("connect to the database"):
            kwargs = await self._connect_kwargs(for_migrations=for_migrations)
            try:
                return await psycopg.AsyncConnection.connect(**kwargs)
            except psycopg.OperationalError as exc:
                if not (is_auth_failure(exc) and await self._refresh_credentials()):
                    raise
            kwargs = await self._connect_kwargs(for_migrations=for_migrations)
            return await psycopg.AsyncConnection.connect(**kwargs)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection in autocommit mode, returned to the pool afterwards."""
        if not self._use_pool:
            conn = await self.connect_direct()
            try:
                yield conn
            finally:
                await conn.close()
            return
        pool = self._pool
        if pool is None:
            raise ConfigurationError(
                "the AsyncDatabase is not open: use `async with db:` or await db.open()"
            )
        async with AsyncExitStack() as stack:
            with wrap_errors("get a connection from the pool"):
                conn = await stack.enter_async_context(pool.connection())
            try:
                yield conn
            finally:
                self._last_used[conn] = time.time()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A connection inside one transaction: committed on success, rolled back on error."""
        async with self.connection() as conn:
            try:
                async with conn.transaction():
                    yield conn
            except psycopg.Error as exc:
                raise translate(exc, "run a transaction") from exc

    async def run(
        self,
        operation: str,
        work: Callable[[AsyncConnection], Awaitable[T]],
        *,
        idempotent: bool,
    ) -> T:
        """Await ``work`` on a pooled connection, retrying transient failures if idempotent.

        The same rules as `Database.run` (the same policy and retry decision);
        only the pause between tries is ``asyncio.sleep``.
        """

        async def once() -> T:
            async with self.connection() as conn:
                return await work(conn)

        return await async_call_with_retries(
            self._config._retry, operation, once, idempotent=idempotent
        )
