"""`AsyncDatabase`: the asyncio face of `Database`, on psycopg's async pool.

Only the I/O is its own: an ``AsyncConnectionPool`` of ``AsyncConnection``,
``asyncio.sleep`` between retries, and the blocking credential look-ups
(Secrets Manager, IAM tokens: boto3 calls) moved off the event loop with
``asyncio.to_thread``. Everything else is the sync `Database`'s: it keeps a
(never opened) `Database` built from the same arguments and asks it for the
settings, the connection plan, the connect arguments, the pool sizes, the
retry policy and the credential refresh after a secret rotation. Errors go
through the same seam (`wrap_errors`, `translate`, `next_pause`), and the
fail-fast rules of `Database` are the same: a connection failure that will
not pass (`connect_failure_is_permanent`, recorded in the same
``_ConnectState``) ends a checkout at once instead of after the pool timeout,
and a connection that broke during use makes the pool check its idle ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

import psycopg
import psycopg_pool
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from cira_db._aws_auth import is_auth_failure
from cira_db._database import (
    _CONNECT,
    _FAIL_FAST_POLL,
    _OPEN_POLL,
    KEPT_CURSORS,
    MADE_AT,
    Database,
    Mapper,
    Renewal,
    _ConnectState,
    _fresh,
    _no_attempt,
    _opened,
    _timed_out,
    first_connection_ready,
    forget_cursors,
    renewal_event,
    stale_plan_in,
)
from cira_db._errors_map import (
    connect_failure_is_permanent,
    translate,
    wrap_errors,
)
from cira_db._observe import PoolStats, pool_event, pool_stats
from cira_db._plan import ConnectionPlan, plan_connection
from cira_db._retry import CheckoutFailed, next_pause, tries_for
from cira_db._settings import SettingsBase, as_model, load_settings, running_in_lambda
from cira_db.errors import CiraDbError, ConfigurationError

if TYPE_CHECKING:
    # the pydantic model, built on first use only (as for `Database`: cira_db._settings)
    from cira_db._settings import DatabaseSettings

__all__ = ["AsyncConnection", "AsyncDatabase"]

T = TypeVar("T")
AsyncConnection = psycopg.AsyncConnection[Any]

_IDLE = TransactionStatus.IDLE
_log = logging.getLogger("psycopg")  # where psycopg's own `async with conn` warns
_LAST_USED = "_cira_db_last_used"
"""The attribute of a pooled connection holding when it was made or last checked out."""


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
        # What this class reads of the settings: the twin's, light or pydantic (never replaced);
        # `settings` gives the pydantic model, built on first use.
        self._settings: SettingsBase = self._config._settings
        self._use_pool = pool
        self._pool: AsyncConnectionPool[AsyncConnection] | None = None
        self._state = _ConnectState()
        self._renewal = Renewal()
        self._opening: asyncio.Lock | None = None
        # Read on every checkout: kept here rather than asked of the settings each time.
        self._timeout = self._settings.pool_timeout
        self._check_after = self._settings.pool_check_after

    @classmethod
    def from_env(cls, *, pool: bool = True, **overrides: Any) -> Self:
        """An `AsyncDatabase` configured from ``CIRA_DB_*`` variables (plus ``overrides``)."""
        # As `Database.from_env`: pydantic only if the values need it (cira_db._settings).
        return cls(settings=cast("DatabaseSettings", load_settings(**overrides)), pool=pool)

    @property
    def settings(self) -> DatabaseSettings:
        """The settings this database was built with."""
        return as_model(self._settings)

    @property
    def is_open(self) -> bool:
        """True between `open` and `close` for a pooled database."""
        return self._pool is not None

    @property
    def pool(self) -> AsyncConnectionPool[AsyncConnection] | None:
        """The psycopg async pool while open (for its ``get_stats()``), else None."""
        return self._pool

    def __repr__(self) -> str:
        try:
            target = plan_connection(self._settings).describe()
        except ConfigurationError:
            target = "(invalid or incomplete settings)"
        state = "open" if self.is_open else "closed"
        return f"<AsyncDatabase {target} pool={self._use_pool} {state}>"

    # -- lifecycle ----------------------------------------------------------

    async def open(self, *, wait: bool = True) -> None:
        """Create the pool; with ``wait``, return once a first connection works.

        Fails like `Database.open`: `ConfigurationError` (`AuthenticationError`
        for a refused login) at once for a failure that will not pass,
        `DatabaseUnavailableError` after ``pool_timeout`` for a server that
        cannot be reached.
        """
        if not self._use_pool:
            return
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is not None:
                return
            settings = self._settings
            settings.conninfo_dict()  # configuration errors surface here, not in a worker
            min_size, max_size = settings.pool_sizes()
            state = _ConnectState()

            async def connect_kwargs() -> dict[str, Any]:
                try:
                    return await self._connect_kwargs()
                except Exception as exc:  # a bad secret or IAM setting: record it, then raise
                    state.failed(exc)
                    raise

            pool: AsyncConnectionPool[AsyncConnection] = AsyncConnectionPool(
                kwargs=connect_kwargs,
                connection_class=self._connection_class(state),
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
                await pool.open(wait=False)
                if wait and min_size > 0:
                    with wrap_errors("open the database pool"):
                        deadline = time.monotonic() + settings.pool_timeout
                        pause = _OPEN_POLL
                        while not first_connection_ready(
                            pool, state, deadline, settings.pool_timeout
                        ):
                            await asyncio.sleep(pause)
                            pause = min(pause * 2, _FAIL_FAST_POLL)
            except BaseException:
                await pool.close(timeout=0)
                raise
            self._state = state
            self._pool = pool
        _opened(settings, "cira_db.aio", min_size, max_size)

    async def close(self) -> None:
        """Close the pool; calling it twice is harmless."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close(timeout=0 if running_in_lambda() else 2.0)
            fields = {"event": "pool_closed", "pool": "cira_db.aio"}
            pool_event(logging.INFO, "pool closed", fields)

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
        """The pool's ``configure``: a new connection gets its kept cursors' map and a stamp."""
        setattr(conn, KEPT_CURSORS, {})
        setattr(conn, MADE_AT, time.monotonic())
        setattr(conn, _LAST_USED, time.time())

    async def _check_connection(self, conn: AsyncConnection) -> None:
        """Check a connection that sat idle long enough to have been dropped meanwhile.

        The pool calls this on every checkout, whoever asks (a repository
        call or a caller's ``pool.connection()``), so the time is noted here:
        the time since the last checkout is never shorter than the time the
        connection sat idle, so no needed check is skipped, and no checkout
        pays a round trip because an earlier one did not note its return. It
        is an attribute of the pool's connection, not a weak mapping.
        """
        now = time.time()
        last = getattr(conn, _LAST_USED, None)
        if last is None or now - last >= self._check_after:
            await AsyncConnectionPool.check_connection(conn)
        setattr(conn, _LAST_USED, now)

    # -- credentials (the sync Database's, off the event loop) -------------------

    async def connection_plan(self, *, for_migrations: bool = False) -> ConnectionPlan:
        """`Database.connection_plan`, with the Secrets Manager call off the event loop."""
        return await asyncio.to_thread(self._config.connection_plan, for_migrations=for_migrations)

    async def _connect_kwargs(self, *, for_migrations: bool = False) -> dict[str, Any]:
        """`Database`'s connect arguments; boto3 calls (secret, IAM token) run in a thread."""
        settings = self._settings
        if settings.secret_arn or settings.iam_auth:
            return await asyncio.to_thread(
                self._config._connect_kwargs, for_migrations=for_migrations
            )
        return self._config._connect_kwargs(for_migrations=for_migrations)

    async def _refresh_credentials(self) -> bool:
        return await asyncio.to_thread(self._config._refresh_credentials)

    def _connection_class(self, state: _ConnectState) -> type[AsyncConnection]:
        """An AsyncConnection class for the pool (see `Database._connection_class`)."""
        database = self

        class _AsyncConnection(psycopg.AsyncConnection[Any]):
            @classmethod
            async def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
                try:
                    try:
                        conn = await super().connect(conninfo, **kwargs)
                    except psycopg.OperationalError as exc:
                        if not (is_auth_failure(exc) and await database._refresh_credentials()):
                            raise
                        kwargs.update(await database._connect_kwargs())
                        conn = await super().connect(conninfo, **kwargs)
                except Exception as exc:
                    state.failed(exc)
                    raise
                state.succeeded()
                return conn

        return _AsyncConnection

    # -- connections --------------------------------------------------------

    async def connect_direct(self, *, for_migrations: bool = False) -> AsyncConnection:
        """A new connection outside the pool, in autocommit mode; the caller closes it.

        Fails like `Database.connect_direct`; never retried here.
        """
        with wrap_errors(_CONNECT):
            return await self._connect(for_migrations=for_migrations)

    async def _connect(self, *, for_migrations: bool = False) -> AsyncConnection:
        """`connect_direct` with psycopg's errors left raw, for the retry loop."""
        kwargs = await self._connect_kwargs(for_migrations=for_migrations)
        try:
            return await psycopg.AsyncConnection.connect(**kwargs)
        except psycopg.OperationalError as exc:
            if not (is_auth_failure(exc) and await self._refresh_credentials()):
                raise
        kwargs = await self._connect_kwargs(for_migrations=for_migrations)
        return await psycopg.AsyncConnection.connect(**kwargs)

    async def _getconn(
        self, pool: AsyncConnectionPool[AsyncConnection], state: _ConnectState
    ) -> tuple[AsyncConnection, bool]:
        """`Database._getconn`, awaited: the same fail-fast rules, the same messages."""
        timeout = self._timeout
        if state.connected and state.error is None:  # state.healthy, without a property call
            # The usual case, as in `Database._getconn`: nothing is known to fail, so
            # wait in one piece, as the loop below would.
            try:
                return await pool.getconn(timeout), True
            except psycopg_pool.PoolTimeout:
                if state.healthy:
                    raise  # pool exhausted by load: every connection is busy
                raise _timed_out(timeout) from state.error or _no_attempt(timeout)
        deadline = time.monotonic() + timeout
        known = state.permanent
        if known is not None:
            conn = await self._probe(state)
            if conn is not None:
                return conn, False
        while True:
            failure = state.permanent
            if failure is not None and failure is not known:
                raise _fresh(failure) from failure
            remaining = deadline - time.monotonic()
            wait = remaining if state.healthy else min(remaining, _FAIL_FAST_POLL)
            try:
                return await pool.getconn(timeout=wait), True
            except psycopg_pool.PoolTimeout:
                if time.monotonic() < deadline:
                    continue  # only a slice of the wait is over
                if state.healthy:
                    raise  # pool exhausted by load: every connection is busy
                raise _timed_out(timeout) from state.error or _no_attempt(timeout)

    async def _probe(self, state: _ConnectState) -> AsyncConnection | None:
        """`Database._probe`, awaited."""
        try:
            conn = await self._connect()
        except psycopg.Error as exc:
            state.failed(exc)
            if connect_failure_is_permanent(exc):
                raise translate(exc, _CONNECT) from exc
            return None
        except CiraDbError as exc:  # preparing the attempt failed (secret, IAM token)
            state.failed(exc)
            if isinstance(exc, ConfigurationError):
                raise
            return None
        state.error = None
        return conn

    def _checkout_pool(self) -> AsyncConnectionPool[AsyncConnection]:
        pool = self._pool
        if pool is None:
            raise ConfigurationError(
                "the AsyncDatabase is not open: use `async with db:` or await db.open()"
            )
        return pool

    async def _checkin(
        self,
        pool: AsyncConnectionPool[AsyncConnection],
        conn: AsyncConnection,
        *,
        pooled: bool,
        broken: bool,
    ) -> None:
        """Give a checked-out connection back (or close a probe's); see `_borrow`."""
        if pooled:
            await pool.putconn(conn)
        else:
            await conn.close()
        if broken:
            forget_cursors(conn)  # the pool discards it: no cycle of it and its cursors left
            await pool.check()  # discard every idle connection that died with this one

    @asynccontextmanager
    async def _borrow(self) -> AsyncIterator[AsyncConnection]:
        """A connection (pooled, or fresh with ``pool=False``); psycopg's errors stay raw.

        A connection that broke during use makes the pool check its idle
        ones, as `Database` does. A task cancelled while its statement runs
        returns the connection all the same: psycopg cancels the statement
        (and the pool discards a connection left mid-statement), so nothing
        of an autocommit statement is left half-written.
        """
        if not self._use_pool:
            conn = await self._connect()
            try:
                yield conn
            finally:
                await conn.close()
            return
        pool = self._checkout_pool()
        conn, pooled = await self._getconn(pool, self._state)
        broken = False
        try:
            async with conn:  # as psycopg_pool's own connection(): roll back on error
                yield conn
        except BaseException as exc:
            broken = conn.broken
            if stale_plan_in(exc):
                await self._renew(pool, conn)
            raise
        finally:
            # The block may have changed the session or the adapters (see `Database`).
            forget_cursors(conn)
            await self._checkin(pool, conn, pooled=pooled, broken=broken)

    async def _once(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """``work`` on a connection of `_borrow`'s, without a context manager per call.

        `run` calls this for every repository statement: the same checkout,
        the same give-back (a cancelled task's connection too) and, for the
        pool's connections, psycopg's ``async with conn`` spelt out: on
        success ``COMMIT`` only if ``work`` left a transaction open (never
        for an autocommit statement, so no lock or wait for a no-op); on
        error psycopg's own rollback.
        """
        if not self._use_pool:
            try:
                fresh = await self._connect()
            except psycopg.Error as exc:  # nothing sent: any call may repeat
                raise CheckoutFailed(exc) from exc
            try:
                return await work(fresh)
            finally:
                await fresh.close()
        pool = self._pool
        if pool is None:
            pool = self._checkout_pool()  # raises: not open
        try:
            conn, pooled = await self._getconn(pool, self._state)
        except psycopg.Error as exc:  # nothing sent: any call may repeat
            raise CheckoutFailed(exc) from exc
        try:
            result = await work(conn)
            if conn.pgconn.transaction_status != _IDLE and not conn.closed:
                await conn.commit()
        except BaseException as exc:
            broken = conn.broken
            try:
                if not conn.closed:
                    try:
                        await conn.rollback()
                    except Exception as exc2:
                        _log.warning("error ignored in rollback on %s: %s", conn, exc2)
                if stale_plan_in(exc):
                    await self._renew(pool, conn)
            finally:
                await self._checkin(pool, conn, pooled=pooled, broken=broken)
            raise
        # `_checkin(pool, conn, pooled=pooled, broken=False)` written out: every call's path.
        await (pool.putconn(conn) if pooled else conn.close())
        return result

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection in autocommit mode, returned to the pool afterwards.

        Failing to get one raises a cira_db error (as `Database.connection`);
        what the block does with the connection is psycopg's, untranslated.
        """
        operation = "get a connection from the pool" if self._use_pool else _CONNECT
        async with AsyncExitStack() as stack:
            with wrap_errors(operation):
                conn = await stack.enter_async_context(self._borrow())
            yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A connection inside one transaction: committed on success, rolled back on error.

        A failure of BEGIN or COMMIT themselves comes out as a cira_db error.
        """
        async with self.connection() as conn:
            with wrap_errors("run a transaction"):
                async with conn.transaction():
                    yield conn

    async def run(
        self,
        operation: str,
        work: Callable[[AsyncConnection], Awaitable[T]],
        *,
        idempotent: bool,
        mapper: Mapper = translate,
    ) -> T:
        """Await ``work`` on a pooled connection, retrying transient failures if idempotent.

        The rules of `Database.run` (the same policy and retry decision,
        `next_pause`, the same ``mapper``, a failed checkout retried for any
        call); only the pause between tries is
        ``asyncio.sleep``.
        """
        return await self._retrying(operation, work, idempotent=idempotent, mapper=mapper)

    async def _retrying(
        self,
        operation: str,
        work: Callable[[AsyncConnection], Awaitable[T]],
        *,
        idempotent: bool,
        mapper: Mapper,
        one_statement: bool = False,
    ) -> T:
        """`run`; every awaited repository `Call` comes here directly, with ``one_statement=True``.

        ``one_statement`` as in `Database._retrying`: a stale prepared statement
        of one statement's work is repeated whatever ``idempotent`` says. The
        loop is written out here rather than wrapped in closures, since every
        awaited repository call comes through it.
        """
        policy = self._config._retry
        attempt = 1
        while True:
            try:
                return await self._once(work)
            except CheckoutFailed as failed:  # no statement sent: as safe as idempotent
                exc = failed.error
                pause = next_pause(policy, operation, exc, attempt, policy.attempts)
            except psycopg.Error as error:
                exc = error
                tries = tries_for(policy, exc, idempotent=idempotent, one_statement=one_statement)
                pause = next_pause(policy, operation, exc, attempt, tries)
            if pause is None:
                raise mapper(exc, operation) from exc
            await self._pause(pause)
            attempt += 1

    async def _renew(
        self, pool: AsyncConnectionPool[AsyncConnection], conn: AsyncConnection
    ) -> None:
        """`Database._renew`, awaited: drain the pool once after a stale prepared statement."""
        forget_cursors(conn)
        if self._renewal.due(conn):
            renewal_event()
            await pool.drain()

    async def _pause(self, seconds: float) -> None:
        """The pause before a retry, counted for `stats`."""
        self._config._counters.retries += 1
        await asyncio.sleep(seconds)

    def stats(self) -> PoolStats:
        """A snapshot of the pool and the retry counter, like `Database.stats` (no await)."""
        return pool_stats(self._pool, self._settings, self._config._counters.retries)
