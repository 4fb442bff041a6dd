"""`Database`: settings plus an optional connection pool, opened explicitly."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from time import time as _wall_clock
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar, cast

import psycopg
import psycopg_pool
from psycopg_pool import ConnectionPool

from cira_db._aws_auth import SecretProvider, iam_token, is_auth_failure
from cira_db._errors_map import (
    connect_failure_is_permanent,
    is_stale_plan,
    translate,
    wrap_errors,
)
from cira_db._observe import (
    Counters,
    PoolStats,
    connect_failure_fields,
    pool_event,
    pool_log,
    pool_stats,
)
from cira_db._plan import ConnectionPlan, Purpose, plan_connection
from cira_db._retry import CheckoutFailed, RetryPolicy, call_with_retries
from cira_db._settings import SettingsBase, as_model, load_settings, running_in_lambda
from cira_db.errors import CiraDbError, ConfigurationError

if TYPE_CHECKING:
    from cira_db._settings import DatabaseSettings

__all__ = ["Connection", "Database"]

T = TypeVar("T")
Connection = psycopg.Connection[Any]
Mapper = Callable[[psycopg.Error, str], CiraDbError]

# While the pool has not yet made a connection (or its last attempt failed), a checkout
# waits in slices this long, looking between them for a failure that will not pass.
_FAIL_FAST_POLL = 0.05
# How often an opening pool is first looked at until its first connection is in it
# (the pause doubles up to _FAIL_FAST_POLL).
_OPEN_POLL = 0.002
_CONNECT = "connect to the database"
_log = logging.getLogger("psycopg")  # where psycopg logs the same ignored rollback


# The attribute of a pool connection holding the cursors the repositories keep
# on it for the calls that read rows, one per statement and row factory
# (`kept_cursor`). Set when the pool makes the connection; a caller's or a
# direct connection has none.
KEPT_CURSORS: Final = "cira_db_cursors"


# psycopg's own reset of a cursor (the first half of its ``close``): drops the
# results and the parameters sent, keeps the loaders. Private to psycopg, so
# looked up once: without it no cursor is kept, and every call makes its own.
# (tests/test_database_checkout.py checks that a kept cursor holds no result.)
_RESET: Final[Callable[[Any], None] | None] = getattr(psycopg.Cursor, "_reset", None)
# False once a kept cursor could not be reset (psycopg's internals changed): no more are kept.
_keep_cursors = _RESET is not None
# At most this many kept cursors per connection (the package has fewer statements): a
# statement or row factory made per call would otherwise add a cursor on every call.
KEPT_CURSORS_MAX: Final = 128


def kept_cursor(conn: Any, sql: str, row_factory: Any) -> Any:
    """``conn``'s kept cursor for statement ``sql`` read by ``row_factory``, or None.

    Only for a pool connection the call holds alone: its cursor is reused by
    the next call of that statement on that connection. A new cursor builds
    its loaders afresh, a Python lookup and a loader object per result
    column, which is most of what a one-row statement costs the client
    beyond the round trip (about 50,000 instructions for a 14-column job
    row). psycopg keeps a cursor's loaders and dumpers while it runs the same
    query object again, so there is one cursor per statement (and row
    factory). The caller hands it back with `release` once the rows are
    read. None: ``conn`` keeps no cursors (a direct connection).
    """
    cursors: dict[Any, Any] | None = getattr(conn, KEPT_CURSORS, None)
    if cursors is None or not _keep_cursors:
        return None
    key = (sql, row_factory)
    cur = cursors.get(key)
    if cur is None:
        if len(cursors) >= KEPT_CURSORS_MAX:
            return None
        cur = cursors[key] = conn.cursor(row_factory=row_factory)
    return cur


def release(cursor: Any) -> None:
    """Let a kept cursor drop its result and parameters: between calls it holds no data.

    A result may be large (a 64 MiB ``extracted_data``, a batch of 1,000
    jobs); kept until the next call on that connection, it would be memory
    no one can free.
    """
    try:
        _RESET(cursor)  # type: ignore[misc]  # set: `kept_cursor` gives none without it
        # Its transformer holds the last result too (to load its rows); a cursor
        # whose first statement failed before it was sent has none yet.
        transformer = getattr(cursor, "_tx", None)
        if transformer is not None:
            transformer.set_pgresult(None, set_loaders=False)
    except Exception as exc:  # the rows are read: never fail the call here
        _stop_keeping(cursor, exc)


def _stop_keeping(cursor: Any, exc: Exception) -> None:
    """Keep no more cursors (a psycopg upgrade changed what `release` relies on); say so once."""
    global _keep_cursors  # one process-wide switch, read by `kept_cursor`
    forget_cursors(cursor.connection)
    if _keep_cursors:
        _keep_cursors = False
        fields = {"event": "kept_cursors_off", "error": type(exc).__name__}
        pool_event(
            logging.WARNING,
            "kept cursors turned off: resetting one failed (%s); each call makes its own",
            fields,
            type(exc).__name__,
        )


def forget_cursors(conn: Any) -> None:
    """Drop the cursors ``conn`` keeps (it may have new session settings, or be done with)."""
    cursors: dict[Any, Any] | None = getattr(conn, KEPT_CURSORS, None)
    if cursors:
        cursors.clear()


class _PoolConnection(psycopg.Connection[Any]):
    """A connection of a `Database` pool, stamped when last created or returned.

    Wall-clock time, not monotonic: it must also count the time a Lambda
    environment spent frozen, which is when the proxy drops idle clients. An
    attribute of the connection (not a weak mapping) so that stamping it on
    every return costs one store.
    """

    cira_db_used_at: float | None = None


MADE_AT: Final = "cira_db_made_at"
"""Attribute of a pool's connection: ``time.monotonic()`` when it was made (`Renewal`)."""


def stale_plan_in(exc: BaseException | None) -> bool:
    """Whether ``exc``, or the psycopg error it was translated from, is a stale statement.

    A repository on a caller's ``connection()`` block raises the cira_db
    error, with psycopg's as its cause (`cira_db._errors_map.is_stale_plan`).
    """
    return exc is not None and (is_stale_plan(exc) or is_stale_plan(exc.__cause__))


class Renewal:
    """When a pool was last drained because a prepared statement went stale (both faces).

    After a migration changed the type of a column a statement returns, every
    connection made before it may hold that statement prepared, and psycopg
    would send it again on every call. The first call that meets one drains
    the pool (psycopg_pool's ``drain``: idle connections are closed at once,
    busy ones when given back, and new ones are made). A call that meets
    another connection made before that drain does not drain again.
    """

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = -1.0  # never: monotonic() is never negative

    def due(self, conn: object) -> bool:
        """True (and noted) when ``conn`` was made after the last drain, or not by the pool."""
        made = getattr(conn, MADE_AT, None)
        if made is not None and made <= self.at:
            return False
        self.at = time.monotonic()
        return True


def renewal_event() -> None:
    """Log a drain after a stale prepared statement (INFO, ``cira_db.pool``)."""
    pool_event(
        logging.INFO,
        "pool drained: a migration changed a prepared statement's result type",
        {"event": "pool_drained", "reason": "stale_prepared_statement"},
    )


class _ConnectState:
    """What the pool's connection attempts have shown since `Database.open`.

    Written by the pool's worker threads (each a single attribute store), read
    at checkout: a failure that will not pass is raised at once instead of
    waiting for the pool timeout, and a pool timeout names the last reason.
    """

    __slots__ = ("connected", "error")

    def __init__(self) -> None:
        self.connected = False  # a connection was made since open
        self.error: BaseException | None = None  # last attempt's failure, None after a success

    def failed(self, exc: BaseException) -> None:
        self.error = exc
        # DEBUG: psycopg_pool logs the failure itself (WARNING, logger psycopg.pool), and
        # a call that fails because of it is logged once by cira_db.calls.
        fields = connect_failure_fields(exc)
        pool_event(logging.DEBUG, "connection attempt failed (%s)", fields, fields["error"])

    def succeeded(self) -> None:
        self.error = None
        self.connected = True
        pool_event(logging.DEBUG, "new connection", {"event": "connected"})

    @property
    def permanent(self) -> BaseException | None:
        """The last attempt's failure if repeating it will not help."""
        error = self.error
        return error if error is not None and connect_failure_is_permanent(error) else None

    @property
    def healthy(self) -> bool:
        return self.connected and self.error is None


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
        # load_settings loads pydantic only if the values need it (cira_db._settings).
        resolved = settings if settings is not None else load_settings(url=url, **overrides)
        self._settings: SettingsBase = resolved
        self._use_pool = pool
        self._pool: ConnectionPool[Connection] | None = None
        self._state = _ConnectState()
        self._renewal = Renewal()
        self._lock = threading.Lock()
        self._secret = (
            SecretProvider(resolved.secret_arn, region=resolved.aws_region, client=secrets_client)
            if resolved.secret_arn
            else None
        )
        self._rds_client = rds_client
        self._counters = Counters()
        # Read on every checkout: kept here rather than asked of the settings each time.
        self._timeout = resolved.pool_timeout
        self._check_after = resolved.pool_check_after
        self._retry = RetryPolicy(
            attempts=resolved.retry_attempts,
            backoff=resolved.retry_backoff,
            backoff_max=resolved.retry_backoff_max,
        )

    @classmethod
    def from_env(cls, *, pool: bool = True, **overrides: Any) -> Self:
        """A `Database` configured from ``CIRA_DB_*`` variables (plus ``overrides``)."""
        # load_settings is DatabaseSettings.load without pydantic for plainly valid values;
        # its light Settings may stand in here, as __init__ reads only what they share.
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
        """Create the pool; with ``wait``, return once a first connection works.

        A connection failure that will not pass (database or role missing,
        login or certificate refused, unknown option) raises `ConfigurationError`
        (`AuthenticationError` for a refused login) at once, with libpq's
        reason; a server that cannot be reached raises `DatabaseUnavailableError`
        naming the last reason after ``pool_timeout``. ``wait=False`` connects
        in the background, and the first call fails the same way.
        """
        if not self._use_pool:
            return
        with self._lock:
            if self._pool is not None:
                return
            self._settings.conninfo_dict()  # configuration errors surface here, not in a worker
            min_size, max_size = self._settings.pool_sizes()
            state = _ConnectState()

            def connect_kwargs() -> dict[str, Any]:
                try:
                    return self._connect_kwargs()
                except Exception as exc:  # a bad secret or IAM setting: record it, then raise
                    state.failed(exc)
                    raise

            pool: ConnectionPool[Connection] = ConnectionPool(
                kwargs=connect_kwargs,
                connection_class=self._connection_class(state),
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
                pool.open(wait=False)
                if wait and min_size > 0:
                    with wrap_errors("open the database pool"):
                        deadline = time.monotonic() + self._timeout
                        pause = _OPEN_POLL
                        while not first_connection_ready(pool, state, deadline, self._timeout):
                            time.sleep(pause)
                            pause = min(pause * 2, _FAIL_FAST_POLL)
            except BaseException:
                pool.close(timeout=0)
                raise
            self._state = state
            self._pool = pool
        _opened(self._settings, "cira_db", min_size, max_size)

    def close(self) -> None:
        """Close the pool without waiting for anything; calling it twice is harmless."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            # In Lambda nothing may wait; elsewhere give the pool's threads a moment.
            pool.close(timeout=0 if running_in_lambda() else 2.0)
            pool_event(logging.INFO, "pool closed", {"event": "pool_closed", "pool": "cira_db"})

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
        """The pool's ``configure``: a new connection gets its kept cursors' map and a stamp."""
        setattr(conn, KEPT_CURSORS, {})
        setattr(conn, MADE_AT, time.monotonic())
        if isinstance(conn, _PoolConnection):
            conn.cira_db_used_at = _wall_clock()

    def _check_connection(self, conn: Connection) -> None:
        """Check a connection that sat idle long enough to have been dropped meanwhile.

        Called by the pool on every checkout (``check=``), so it is kept to one
        clock read and one comparison when no check is due.
        """
        last = conn.cira_db_used_at if isinstance(conn, _PoolConnection) else None
        if last is None or _wall_clock() - last >= self._check_after:
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

    def _connection_class(self, state: _ConnectState) -> type[Connection]:
        """A Connection class for the pool.

        Its connect() retries once after a secret rotation, and records in
        ``state`` whether the attempt worked (psycopg_pool only logs failures).
        """
        database = self

        class _Connection(_PoolConnection):
            @classmethod
            def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
                try:
                    try:
                        conn = super().connect(conninfo, **kwargs)
                    except psycopg.OperationalError as exc:
                        if not (is_auth_failure(exc) and database._refresh_credentials()):
                            raise
                        kwargs.update(database._connect_kwargs())
                        conn = super().connect(conninfo, **kwargs)
                except Exception as exc:
                    state.failed(exc)
                    raise
                state.succeeded()
                return conn

        return _Connection

    # -- connections --------------------------------------------------------

    def connect_direct(self, *, for_migrations: bool = False) -> Connection:
        """A new connection outside the pool, in autocommit mode; the caller closes it.

        A failure that will not pass raises `ConfigurationError` (or
        `AuthenticationError`) with libpq's reason; one that may pass,
        `DatabaseUnavailableError`. Never retried here.
        """
        with wrap_errors(_CONNECT):
            return self._connect(for_migrations=for_migrations)

    def _connect(self, *, for_migrations: bool = False) -> Connection:
        """`connect_direct` with psycopg's errors left raw, for the retry loop."""
        kwargs = self._connect_kwargs(for_migrations=for_migrations)
        try:
            return psycopg.connect(**kwargs)
        except psycopg.OperationalError as exc:
            if not (is_auth_failure(exc) and self._refresh_credentials()):
                raise
        return psycopg.connect(**self._connect_kwargs(for_migrations=for_migrations))

    def _getconn(
        self, pool: ConnectionPool[Connection], state: _ConnectState
    ) -> tuple[Connection, bool]:
        """Check a connection out of ``pool``: (connection, whether it is the pool's).

        Waits up to ``pool_timeout`` for a connection, but not for one that
        cannot come: when the pool's attempts fail for a reason that will not
        pass, that reason is raised at once (translated: it ends the call). A
        failure recorded before this checkout is tried again first, with one
        direct attempt; if that works, its connection serves this call (not the
        pool's: the pool is still backing off) and the pool recovers on its own.
        A timeout while no connection could be made names the reason. Other
        psycopg errors come out raw.
        """
        timeout = self._timeout
        if state.connected and state.error is None:  # state.healthy, without a property call
            # The usual case: the pool has connected and its last attempt worked, so
            # nothing is known to fail; wait in one piece, as the loop below would.
            try:
                return pool.getconn(timeout), True
            except psycopg_pool.PoolTimeout:
                if state.healthy:
                    raise  # pool exhausted by load: every connection is busy
                raise _timed_out(timeout) from state.error or _no_attempt(timeout)
        deadline = time.monotonic() + timeout
        known = state.permanent
        if known is not None:
            conn = self._probe(state)
            if conn is not None:
                return conn, False
        while True:
            failure = state.permanent
            if failure is not None and failure is not known:
                raise _fresh(failure) from failure
            remaining = deadline - time.monotonic()
            wait = remaining if state.healthy else min(remaining, _FAIL_FAST_POLL)
            try:
                return pool.getconn(timeout=wait), True
            except psycopg_pool.PoolTimeout:
                if time.monotonic() < deadline:
                    continue  # only a slice of the wait is over
                if state.healthy:
                    raise  # pool exhausted by load: every connection is busy
                raise _timed_out(timeout) from state.error or _no_attempt(timeout)

    def _probe(self, state: _ConnectState) -> Connection | None:
        """One direct attempt after a failure that will not pass: raise it if it still fails.

        Returns the new connection if the attempt worked, None if it failed for
        a reason that may pass (then the caller waits for the pool).
        """
        try:
            conn = self._connect()
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
        state.error = None  # the pool's own next attempt will succeed too
        return conn

    def _release(
        self,
        pool: ConnectionPool[Connection],
        conn: Connection,
        *,
        pooled: bool,
        broken: bool,
    ) -> None:
        """Give a checked-out connection back (a direct one is closed).

        When the connection broke during use, the pool's idle connections are
        checked before the next checkout: after a failover or a proxy restart
        they all died at once, and a retry must not land on another one.
        """
        # Stamped here rather than in a pool `reset` callback: with one, the
        # pool returns connections through a worker thread, and a caller's
        # next checkout would find none idle and grow the pool.
        if pooled:
            # The pool's connections are all `_PoolConnection` (`_connection_class`):
            # stamped without an isinstance or a cast, which cost a call at run time.
            conn.cira_db_used_at = _wall_clock()  # type: ignore[attr-defined]
            pool.putconn(conn)
        else:
            conn.close()
        if broken:
            forget_cursors(conn)  # the pool discards it: no cycle of it and its cursors left
            pool.check()  # discard every idle connection that died with this one

    def connection(self) -> AbstractContextManager[Connection]:
        """A connection in autocommit mode, returned to the pool afterwards.

        Failing to get one raises a cira_db error (see `open`); what the block
        does with the connection is psycopg's, untranslated.
        """
        return _Borrowed(self, "get a connection from the pool" if self._use_pool else _CONNECT)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection inside one transaction: committed on success, rolled back on error.

        A failure of BEGIN or COMMIT themselves (connection lost, serialization
        failure at commit) comes out as a cira_db error, like any other.
        """
        with self.connection() as conn, wrap_errors("run a transaction"), conn.transaction():
            yield conn

    def run(
        self,
        operation: str,
        work: Callable[[Connection], T],
        *,
        idempotent: bool,
        mapper: Mapper = translate,
    ) -> T:
        """Run ``work`` on a pooled connection, retrying transient failures if idempotent.

        ``work`` must be safe to repeat when ``idempotent`` is true: a read, a
        create by a caller-chosen id, or a transaction it opens itself. It must
        let psycopg's errors out untranslated: retries are decided on them, and
        the one that ends the call comes out as ``mapper(exc, operation)``
        (`cira_db._errors_map.translate` by default). A connection failure that
        will not pass is never retried. A transient failure to get the
        connection is retried for any call: no statement was sent yet.
        """
        return self._retrying(operation, work, idempotent=idempotent, mapper=mapper)

    def _retrying(
        self,
        operation: str,
        work: Callable[[Connection], T],
        *,
        idempotent: bool,
        mapper: Mapper,
        one_statement: bool = False,
    ) -> T:
        """`run`; every repository `Call` comes here directly, with ``one_statement=True``.

        ``one_statement``: ``work`` is one statement or one transaction of its own,
        so a prepared statement refused as stale (it did not run) is repeated
        whatever ``idempotent`` says (`cira_db._retry.tries_for`).
        """
        return call_with_retries(
            self._retry,
            operation,
            partial(self._use, work),
            idempotent=idempotent,
            one_statement=one_statement,
            mapper=mapper,
            sleep=self._pause,
        )

    def _use(self, work: Callable[[Connection], T]) -> T:
        """``work`` on a borrowed connection; psycopg's errors stay raw (one try of `run`).

        What ``with _Borrowed(db) as conn: return work(conn)`` does, written out:
        this is every repository call's path.
        """
        pool = self._pool
        if pool is None:  # pool=False (a fresh connection), or not open (raises)
            if not self._use_pool:
                try:
                    conn = self._connect()
                except psycopg.Error as exc:  # nothing sent: any call may repeat
                    raise CheckoutFailed(exc) from exc
                try:
                    return work(conn)
                finally:
                    conn.close()
            with _Borrowed(self) as conn:
                return work(conn)
        try:
            conn, pooled = self._getconn(pool, self._state)
        except psycopg.Error as exc:  # nothing sent: any call may repeat
            raise CheckoutFailed(exc) from exc
        try:
            result = work(conn)
            # `_end(conn, None)` inlined: commit only what the work left open. A
            # closed connection's status is UNKNOWN, never IDLE, hence the order.
            if conn.pgconn.transaction_status != _IDLE and not conn.closed:
                conn.commit()
        except BaseException as exc:
            _end(conn, exc)
            if stale_plan_in(exc):
                self._renew(pool, conn)
            self._release(pool, conn, pooled=pooled, broken=conn.broken)
            raise
        # `_release(pool, conn, pooled=pooled, broken=False)` inlined: every call's path.
        if pooled:
            conn.cira_db_used_at = _wall_clock()  # type: ignore[attr-defined]
            pool.putconn(conn)
        else:
            conn.close()
        return result

    def _renew(self, pool: ConnectionPool[Connection], conn: Connection) -> None:
        """``conn`` met a stale prepared statement: drain the pool (`Renewal`), once.

        Called before ``conn`` is given back, which then closes it.
        """
        forget_cursors(conn)  # it is closed on its way back: no cycle of it and its cursors
        if self._renewal.due(conn):
            renewal_event()
            pool.drain()

    def _pause(self, seconds: float) -> None:
        """The pause before a retry, counted for `stats`."""
        self._counters.retries += 1
        time.sleep(seconds)

    def stats(self) -> PoolStats:
        """A snapshot of the pool and the retry counter (see docs/observability.md).

        Built on psycopg_pool's own counters (``get_stats()``, counted since
        `open`); costs no round trip. A closed or pool-less database reports
        ``open=False`` and zero sizes.
        """
        return pool_stats(self._pool, self._settings, self._counters.retries)


def _opened(settings: SettingsBase, name: str, min_size: int, max_size: int) -> None:
    """Log a pool's opening (INFO, ``cira_db.pool``): where to, and how big; no secret."""
    if not pool_log.isEnabledFor(logging.INFO):
        return
    target = plan_connection(settings).describe()
    fields: dict[str, Any] = {"event": "pool_opened", "pool": name, "target": target}
    fields |= {"min_size": min_size, "max_size": max_size}
    pool_event(logging.INFO, "pool opened: %s", fields, target)


def _fresh(failure: BaseException) -> CiraDbError:
    """A new error for a failure recorded by the pool (never re-raise a shared exception)."""
    if isinstance(failure, psycopg.Error):
        return translate(failure, _CONNECT)
    if isinstance(failure, CiraDbError):
        return type(failure)(str(failure))
    return ConfigurationError(f"{_CONNECT}: {type(failure).__name__}")  # pragma: no cover


def first_connection_ready(
    pool: psycopg_pool.ConnectionPool[Any] | psycopg_pool.AsyncConnectionPool[Any],
    state: _ConnectState,
    deadline: float,
    timeout: float,
) -> bool:
    """Whether an opening pool holds its first connection; raises once waiting cannot help.

    `open` waits for this instead of checking a connection out: a checkout
    before the pool's first connection is ready queues, and a queued request
    makes psycopg_pool grow the pool by one, so every pool would start with
    two connections and a single thread would take turns between them (two
    server backends, colder caches). A failure that will not pass is raised
    at once; after ``deadline`` the timeout names the last reason.
    """
    if pool.get_stats()["pool_available"] > 0:
        return True
    failure = state.permanent
    if failure is not None:
        raise _fresh(failure) from failure
    if time.monotonic() >= deadline:
        raise _timed_out(timeout) from state.error or _no_attempt(timeout)
    return False


def _no_attempt(timeout: float) -> psycopg.OperationalError:
    return psycopg.OperationalError(
        f"no connection attempt finished within {timeout:g} s; check the host "
        "and CIRA_DB_CONNECT_TIMEOUT"
    )


def _timed_out(timeout: float) -> psycopg_pool.PoolTimeout:
    """The timeout of a checkout while no connection could be made (raise it from the reason)."""
    return psycopg_pool.PoolTimeout(f"couldn't get a connection after {timeout:.2f} sec")


_IDLE: Final = psycopg.pq.TransactionStatus.IDLE


def _end(conn: Connection, exc: BaseException | None) -> None:
    """End a pooled connection's use as ``with conn:`` does (psycopg_pool's ``connection()``).

    Roll back after an error (a failure to do so is logged, never raised over
    ``exc``); commit what is left open on success. An autocommit connection
    with no transaction open skips psycopg's commit, which would do nothing.
    """
    if conn.closed:
        return
    if exc is not None:
        try:
            conn.rollback()
        except Exception as exc2:
            _log.warning("error ignored in rollback on %s: %s", conn, exc2)
    elif conn.pgconn.transaction_status != _IDLE:
        conn.commit()


class _Borrowed:
    """`Database.connection()`: a connection checked out on entry, given back on exit.

    A class rather than generator-based context managers: this is on every
    call's path. With ``operation`` set, failing to get a connection raises a
    cira_db error; without it, psycopg's error stays raw (for the retry loop).
    """

    __slots__ = ("_conn", "_db", "_operation", "_pool", "_pooled")

    def __init__(self, db: Database, operation: str | None = None) -> None:
        self._db = db
        self._operation = operation
        self._conn: Connection | None = None
        self._pool: ConnectionPool[Connection] | None = None
        self._pooled = False

    def __enter__(self) -> Connection:
        db = self._db
        try:
            if not db._use_pool:
                conn = self._conn = db._connect()
                return conn
            pool = db._pool
            if pool is None:
                raise ConfigurationError("the Database is not open: use `with db:` or db.open()")
            conn, self._pooled = db._getconn(pool, db._state)
        except psycopg.Error as exc:
            if self._operation is None:
                raise
            raise translate(exc, self._operation) from exc
        self._conn, self._pool = conn, pool
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, pool = self._conn, self._pool
        assert conn is not None  # entered
        if pool is None:  # pool=False: the connection was made for this block
            conn.close()
            return
        # The block may have changed the session (SET TimeZone, DateStyle) or the
        # connection's adapters, which the kept cursors' loaders were made for.
        forget_cursors(conn)
        failed = exc is not None
        try:
            _end(conn, exc)
            if stale_plan_in(exc):
                self._db._renew(pool, conn)
        except BaseException:
            failed = True
            raise
        finally:
            self._db._release(pool, conn, pooled=self._pooled, broken=failed and conn.broken)
