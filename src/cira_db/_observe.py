"""Logs, spans and counters of repository calls: one implementation for both faces.

`Runner.drive` and `AsyncRunner.drive` (the two places every repository call
passes) open an `Observation` when a method's logic yields its first `Call`,
feed it each call's result, and finish it once with what reached the caller.
Only the I/O differs between the two faces; what is logged, traced and
counted is decided here (docs/observability.md).

Cost: with DEBUG off and no OpenTelemetry SDK configured, a call costs two
``perf_counter`` readings, one cached ``isEnabledFor`` and one context
variable set and reset. ``import cira_db`` never loads opentelemetry, and a call
looks for an SDK only once something else has imported its API (the application
or its instrumentation: no SDK can be set before) or ``OTEL_PYTHON_TRACER_PROVIDER``
names one.

Never recorded: parameter values other than ``client_id`` and a single
``job_id``/``id``, row contents, error messages of psycopg (they can quote
values), passwords and tokens.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final
from uuid import UUID

import psycopg

from cira_db.errors import (
    ConflictError,
    DatabaseUnavailableError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
)

__all__ = [
    "FIELD",
    "Counters",
    "Observation",
    "PoolStats",
    "connect_failure_fields",
    "note_retry",
    "observation_fields",
    "pool_event",
    "pool_log",
    "pool_stats",
    "query_summary",
    "server_of",
    "step_span",
]

FIELD: Final = "cira_db"
"""The one ``extra`` key under which every record carries its structured fields."""

calls_log: Final = logging.getLogger("cira_db.calls")
_DEBUG: Final = logging.DEBUG
_WARNING: Final = logging.WARNING
_perf_counter: Final = time.perf_counter
# The parameters of a call that ran no statement (shared: only ever read).
_NO_PARAMS: Final[Mapping[str, Any]] = MappingProxyType({})

# Errors that answer the caller's request (the row is not there, the move is not
# allowed, the input is refused): the caller decides what they mean, so their
# record is DEBUG like a success. Anything else that reaches the caller is a
# failure of the system: WARNING when it may pass, ERROR when it will not.
_ANSWERS: Final = (ValidationError, NotFoundError, InvalidTransitionError, ConflictError)

# The observation of the call in progress, for the retry loop to count on: per
# thread for the sync face (a thread runs one call at a time; a thread-local is
# far cheaper than a context variable), per task for the asyncio face.
_thread = threading.local()
_task: ContextVar[Observation | None] = ContextVar("cira_db_observation", default=None)


def note_retry() -> None:
    """Count one retry against the repository call in progress, if any."""
    observation = getattr(_thread, "current", None) or _task.get()
    if observation is not None:
        observation.retries += 1


# -- OpenTelemetry (optional) ---------------------------------------------------------


class _Otel:
    """The tracer, resolved on first use; None while no SDK is configured."""

    tracer: Any = None
    missing = False  # opentelemetry-api is not installed
    trace: Any = None
    context: Any = None
    proxy: Any = None  # the API's ProxyTracerProvider class (no SDK set yet)

    @staticmethod
    @functools.cache
    def named_provider() -> bool:
        """OTEL_PYTHON_TRACER_PROVIDER names one: the API's getter would load it."""
        return bool(os.environ.get("OTEL_PYTHON_TRACER_PROVIDER"))


# Until something imports OpenTelemetry's API (or OTEL_PYTHON_TRACER_PROVIDER names
# a provider) no SDK can be set: a call checks that with one dict lookup, without
# calling `_tracer`.
_OTEL_API: Final = "opentelemetry.trace"
_modules: Final = sys.modules


def _tracer() -> Any:
    tracer = _Otel.tracer
    if tracer is not None or _Otel.missing:
        return tracer
    trace: Any = _Otel.trace
    if trace is None:
        if _OTEL_API not in _modules and not _Otel.named_provider():
            # No SDK can be set before the API is imported: spare a cold start its
            # import until someone (the app, the instrumentation) has loaded it.
            return None
        try:
            from opentelemetry import context
            from opentelemetry import trace as api
            from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider
        except ImportError:
            _Otel.missing = True
            return None
        trace = _Otel.trace = api
        _Otel.context = context
        _Otel.proxy = (ProxyTracerProvider, NoOpTracerProvider)
        trace.get_tracer_provider()  # sets one named by OTEL_PYTHON_TRACER_PROVIDER, if any
    # The API keeps the provider set by set_tracer_provider() in this global: reading
    # it is the cheap way to see that none is set yet (the public getter reads
    # os.environ on every call). Without it, ask the public getter.
    if getattr(trace, "_TRACER_PROVIDER", True) is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, _Otel.proxy):
        return None  # no SDK (yet): spans would be dropped, so make none
    from cira_db._version import __version__

    _Otel.tracer = provider.get_tracer("cira_db", __version__)
    return _Otel.tracer


_VERBS: Final = ("select", "insert", "update", "delete")


def query_summary(sql: str) -> tuple[str, str | None]:
    """(verb, table) that sum up a statement: ``("UPDATE", "jobs")``.

    A statement that writes is named after its first write (in a ``WITH``
    list or not); a read after ``SELECT`` and its first table that is not a
    ``WITH`` name (``FOR UPDATE`` is a lock, not a write). Cached per query by the caller.
    """
    words = re.findall(r"[a-z_][a-z0-9_]*", sql.lower())
    ctes = {w for i, w in enumerate(words[:-2]) if words[i + 1] == "as" and words[i + 2] in _VERBS}
    for i, word in enumerate(words):
        if word in ("insert", "update", "delete") and words[i - 1 : i] not in (["for"], ["key"]):
            rest = words[i + 1 : i + 3]
            target = rest[0] if word == "update" else (rest[1] if len(rest) > 1 else None)
            return (word.upper(), target if target and target not in ctes else None)
    if "select" not in words:
        return ("SQL", None)
    tables = (words[i + 1] for i, w in enumerate(words[:-1]) if w == "from")
    return ("SELECT", next((t for t in tables if t not in ctes and t not in _VERBS), None))


_summaries: dict[str, tuple[str, str | None]] = {}


def _summary(call: Any) -> tuple[str, str | None]:
    name = call.query.name
    found = _summaries.get(name)
    if found is None:
        found = _summaries[name] = query_summary(call.query.sql)
    return found


def server_of(executor: Any) -> tuple[str | None, int | None]:
    """The server a `Database` (or connection) talks to: (host, port), for spans."""
    info = getattr(executor, "info", None)
    if info is not None:  # a psycopg connection
        try:
            return info.host, int(info.port)
        except Exception:  # a closed connection: leave them out
            return None, None
    try:
        from cira_db._plan import plan_connection

        # A database's own settings, light or pydantic: ``settings`` would build
        # the pydantic model (loading pydantic) from light ones.
        plan = plan_connection(getattr(executor, "_settings", None) or executor.settings)
        return plan.hosts[0] if plan.hosts else None, int(plan.port.split(",")[0] or 5432)
    except Exception:  # incomplete settings fail at connect, not here
        return None, None


# -- one repository call --------------------------------------------------------------


def _sqlstate(exc: BaseException) -> str | None:
    cause: BaseException | None = exc
    for _ in range(4):
        if cause is None:
            return None
        if isinstance(cause, psycopg.Error):
            return cause.sqlstate
        cause = cause.__cause__
    return None


def _level(exc: BaseException | None, *, slow: bool) -> int:
    # A cancellation (asyncio.CancelledError, KeyboardInterrupt) is the caller's
    # decision, not a failure: like a success.
    if exc is None or isinstance(exc, _ANSWERS) or not isinstance(exc, Exception):
        return logging.WARNING if slow else _DEBUG
    if isinstance(exc, DatabaseUnavailableError):
        return logging.WARNING  # may pass
    return logging.ERROR


class Observation:
    """What one repository call did: opened at its first `Call`, finished once."""

    __slots__ = (
        "method",
        "operation",
        "outer",
        "params",
        "retries",
        "rows",
        "slow_ms",
        "span",
        "started",
        "statements",
        "token",
    )

    def __init__(self, method: str, slow_ms: int, *, task: bool = False) -> None:
        self.started = _perf_counter()
        self.method = method
        self.slow_ms = slow_ms
        self.operation: str | None = None
        self.params: Mapping[str, Any] = _NO_PARAMS
        self.rows = 0
        self.statements = 0
        self.retries = 0
        self.span: Any = None
        self.token: Any = None
        if task:
            self.outer: Any = _task.set(self)
        else:
            self.outer = getattr(_thread, "current", None)
            _thread.current = self

    def begin(self, call: Any, executor: Any, server: Any) -> Any:
        """Note a repository `Call` about to run; returns ``server`` (found if needed)."""
        self.statements += 1
        if self.operation is not None:
            return server
        self.operation = call.operation
        self.params = call.params
        tracer = _Otel.tracer
        if tracer is None and (_OTEL_API in _modules or _Otel.named_provider()):
            tracer = _tracer()  # the API is loaded: an SDK may have been set since
        if tracer is not None:
            if server is None:
                server = server_of(executor)
            verb, table = _summary(call)
            summary = f"{verb} {table}" if table else verb
            attributes: dict[str, Any] = {
                "db.system.name": "postgresql",
                "db.operation.name": verb,
                "db.query.summary": summary,
                "cira_db.operation": call.operation,
                "cira_db.method": self.method,
            }
            if table:
                attributes["db.collection.name"] = table
            host, port = server
            if host:
                attributes["server.address"] = host
            if port:
                attributes["server.port"] = port
            span = tracer.start_span(
                summary, kind=_Otel.trace.SpanKind.CLIENT, attributes=attributes
            )
            self.span = span
            # Current while the call runs: statement spans (e.g. of
            # opentelemetry-instrumentation-psycopg) become its children.
            self.token = _Otel.context.attach(_Otel.trace.set_span_in_context(span))
        return server

    def got(self, kind: str, value: Any, changes: int | None = None) -> None:
        """Count the rows of one call's reply (``changes``: the rows it wrote, if given)."""
        if changes is not None:
            self.rows += changes
        elif kind == "one":  # the busiest first
            self.rows += value is not None
        elif kind == "all" or kind == "copy_all":
            self.rows += len(value)
        else:
            self.rows += value

    def finish(self, exc: BaseException | None) -> None:
        """Log (and end the span of) the call, with what reached the caller."""
        outer = self.outer
        if outer is None or isinstance(outer, Observation):
            _thread.current = outer
        else:
            _task.reset(outer)
        elapsed_ms = (_perf_counter() - self.started) * 1000
        span = self.span
        if span is not None:
            _Otel.context.detach(self.token)
            if exc is not None:
                error_type = _error_type(exc)
                span.set_attribute("error.type", error_type)
                sqlstate = _sqlstate(exc)
                if sqlstate:
                    span.set_attribute("db.response.status_code", sqlstate)
                span.set_status(_Otel.trace.Status(_Otel.trace.StatusCode.ERROR, error_type))
            if self.retries:
                span.set_attribute("cira_db.retries", self.retries)
            span.end()
        slow = 0 < self.slow_ms <= elapsed_ms
        level = _WARNING if slow else _DEBUG  # `_level` of a success, without a call
        if exc is not None:
            level = _level(exc, slow=slow)
        if not calls_log.isEnabledFor(level):
            return
        fields = observation_fields(self, elapsed_ms, exc)
        operation = fields["operation"]
        if exc is None:
            message = "%s: slow call, %.1f ms" if slow else "%s: %.1f ms"
            calls_log.log(level, message, operation, elapsed_ms, extra={FIELD: fields})
        else:
            calls_log.log(
                level,
                "%s: %s after %.1f ms",
                operation,
                fields["error"],
                elapsed_ms,
                extra={FIELD: fields},
            )


def _error_type(exc: BaseException) -> str:
    module = type(exc).__module__
    name = type(exc).__qualname__
    return name if module == "builtins" else f"{module}.{name}"


def observation_fields(
    observation: Observation, elapsed_ms: float, exc: BaseException | None
) -> dict[str, Any]:
    """The structured fields of a call's record (the value of ``extra["cira_db"]``)."""
    fields: dict[str, Any] = {
        "operation": observation.operation or observation.method,
        "method": observation.method,
        "duration_ms": round(elapsed_ms, 3),
        "rows": observation.rows,
        "statements": observation.statements,
        "attempt": observation.retries + 1 if observation.statements else 0,
        "retries": observation.retries,
        "outcome": "ok" if exc is None else "error",
    }
    params = observation.params
    client_id = params.get("client_id")
    if client_id is not None:
        fields["client_id"] = str(client_id)
    job_id = params.get("job_id", params.get("id"))
    if isinstance(job_id, (str, UUID)):  # one job (not a list of ids)
        fields["job_id"] = str(job_id)
    if exc is not None:
        fields["error"] = type(exc).__name__
        fields["error_type"] = _error_type(exc)
        sqlstate = _sqlstate(exc)
        if sqlstate:
            fields["sqlstate"] = sqlstate
        if isinstance(exc, ValidationError):
            fields["field"] = getattr(exc, "field", None)
    if 0 < observation.slow_ms <= elapsed_ms:
        fields["slow"] = True
        fields["slow_call_ms"] = observation.slow_ms
    return fields


# -- migrations -----------------------------------------------------------------------


class step_span:  # noqa: N801 - used as a context manager, like contextlib's
    """A span for one migration step (``migrate <file>``), when an SDK is configured."""

    __slots__ = ("_attributes", "_name", "_span", "_token")

    def __init__(self, filename: str, executor: Any) -> None:
        self._name = filename
        self._attributes = executor
        self._span: Any = None
        self._token: Any = None

    def __enter__(self) -> None:
        tracer = _tracer()
        if tracer is None:
            return
        host, port = server_of(self._attributes)
        attributes: dict[str, Any] = {
            "db.system.name": "postgresql",
            "db.operation.name": "migrate",
            "db.query.summary": f"migrate {self._name}",
            "cira_db.migration": self._name,
        }
        if host:
            attributes["server.address"] = host
        if port:
            attributes["server.port"] = port
        self._span = tracer.start_span(
            f"migrate {self._name}", kind=_Otel.trace.SpanKind.CLIENT, attributes=attributes
        )
        self._token = _Otel.context.attach(_Otel.trace.set_span_in_context(self._span))

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        span = self._span
        if span is None:
            return
        _Otel.context.detach(self._token)
        if exc is not None:
            error_type = _error_type(exc)
            span.set_attribute("error.type", error_type)
            span.set_status(_Otel.trace.Status(_Otel.trace.StatusCode.ERROR, error_type))
        span.end()


# -- metrics --------------------------------------------------------------------------


class Counters:
    """The library's own counters of one database (psycopg_pool counts the rest)."""

    __slots__ = ("_lock", "_retries")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._retries = 0

    @property
    def retries(self) -> int:
        """Retries after transient failures since the database was made."""
        return self._retries

    @retries.setter
    def retries(self, value: int) -> None:
        with self._lock:  # rare (one per retry): exact under threads
            self._retries = value


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a database's connection pool, from `Database.stats()`.

    Sizes are now; counts are since `open` (``retries`` since the database
    was made). Costs no round trip: psycopg_pool's ``get_stats()`` plus the
    library's retry counter. A closed or pool-less database has ``open``
    False and zero sizes and counts (``retries`` still counts).
    """

    open: bool
    """True while the pool is open."""
    min_size: int
    """The pool's minimum number of connections."""
    max_size: int
    """The pool's maximum number of connections."""
    size: int
    """Connections the pool holds now (idle, in use, or being checked)."""
    idle: int
    """Connections waiting in the pool, ready to be checked out."""
    in_use: int
    """Connections checked out now (``size - idle``)."""
    waiting: int
    """Callers waiting for a connection now."""
    requests: int
    """Checkouts requested."""
    requests_queued: int
    """Checkouts that had to wait for a connection."""
    request_wait_ms: int
    """Total time checkouts spent waiting, in milliseconds."""
    timeouts: int
    """Checkouts that failed (timed out) (psycopg_pool's ``requests_errors``)."""
    connections_made: int
    """Connections the pool opened."""
    connections_failed: int
    """Connection attempts of the pool that failed."""
    connections_lost: int
    """Connections found broken when checked, or lost while in use."""
    retries: int
    """Repository and `Database.run` calls repeated after a transient failure."""

    def as_dict(self) -> dict[str, int | bool]:
        """The snapshot as a plain dict (for a JSON log line or a metrics library)."""
        return {name: getattr(self, name) for name in self.__slots__}

    def describe(self) -> str:
        """One line for a terminal (``cira-db check``)."""
        if not self.open:
            return f"pool closed; retries {self.retries}"
        return (
            f"size {self.size} (min {self.min_size}, max {self.max_size}), idle {self.idle}, "
            f"in use {self.in_use}, waiting {self.waiting}; requests {self.requests} "
            f"(queued {self.requests_queued}, {self.request_wait_ms} ms waited, "
            f"{self.timeouts} failed); connections made {self.connections_made}, failed "
            f"{self.connections_failed}, lost {self.connections_lost}; retries {self.retries}"
        )


def pool_stats(pool: Any, settings: Any, retries: int) -> PoolStats:
    """`PoolStats` of a psycopg pool (sync or async; None when closed)."""
    if pool is None:
        return PoolStats(False, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, retries)
    raw = pool.get_stats()
    size = raw.get("pool_size", 0)
    idle = raw.get("pool_available", 0)
    return PoolStats(
        open=True,
        min_size=raw.get("pool_min", 0),
        max_size=raw.get("pool_max", 0),
        size=size,
        idle=idle,
        in_use=max(size - idle, 0),
        waiting=raw.get("requests_waiting", 0),
        requests=raw.get("requests_num", 0),
        requests_queued=raw.get("requests_queued", 0),
        request_wait_ms=raw.get("requests_wait_ms", 0),
        timeouts=raw.get("requests_errors", 0),
        connections_made=raw.get("connections_num", 0),
        connections_failed=raw.get("connections_errors", 0),
        connections_lost=raw.get("connections_lost", 0) + raw.get("returns_bad", 0),
        retries=retries,
    )


# -- connection events ----------------------------------------------------------------

pool_log: Final = logging.getLogger("cira_db.pool")

_OUR_POOLS: Final = frozenset({"cira_db", "cira_db.aio"})


class _OwnPoolConnectFailures(logging.Filter):
    """Drop psycopg_pool's WARNINGs about a cira_db pool's failed connection (and its close).

    cira_db records that attempt itself (DEBUG on ``cira_db.pool``, with its
    SQLSTATE and never libpq's text) and logs the failure that reaches the
    caller once, on ``cira_db.calls``: psycopg_pool's record would make it
    twice. Records about other pools pass untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.args, tuple) and record.args):
            return True
        message, subject = str(record.msg), str(record.args[0])
        if message.startswith("error connecting in"):
            return subject not in _OUR_POOLS
        if message.startswith("couldn't stop thread"):
            # Closing a pool whose open failed, without waiting (a Lambda must not):
            # its worker thread ends on its own; the failure itself was logged once.
            return not subject.startswith(tuple(f"{pool}-" for pool in _OUR_POOLS))
        return True


_POOL_FILTER: Final = _OwnPoolConnectFailures()
logging.getLogger("psycopg.pool").addFilter(_POOL_FILTER)


def pool_event(level: int, message: str, fields: dict[str, Any], *args: object) -> None:
    """Log a connection event on ``cira_db.pool`` with its fields under ``extra["cira_db"]``."""
    if pool_log.isEnabledFor(level):
        pool_log.log(level, message, *args, extra={FIELD: fields})


def connect_failure_fields(exc: BaseException) -> dict[str, Any]:
    """The fields of a failed connection attempt: its type and SQLSTATE, never its text."""
    fields: dict[str, Any] = {"event": "connect_failed", "error": type(exc).__name__}
    sqlstate = _sqlstate(exc)
    if sqlstate:
        fields["sqlstate"] = sqlstate
    return fields
