"""What the repositories share: statement requests, rows to dataclasses, errors.

The repositories are built as a sans-I/O core (docs/async.md): each method's
logic (``_core_jobs.py``, ``_core_results.py``) is a generator that yields
`Call` requests (a named statement, its parameters, its row factory, whether
repeating it is harmless) and receives their results. A runner performs the
I/O: `Runner` here (sync), ``AsyncRunner`` in ``_aio_base.py`` (asyncio).
The public repositories are one-line shells that hand the logic to a runner.

A repository is built on an `Executor`: a `Database` (each call borrows an
autocommit connection from the pool and runs one statement, so one round
trip) or a psycopg connection the caller owns (used as is, so several calls
can share the caller's transaction).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import MISSING, dataclass
from functools import partial
from types import new_class
from typing import Any, Final, Generic, Literal, NamedTuple, TypeAlias, TypeVar

import psycopg
import psycopg.errors as pg_errors
from psycopg.rows import BaseRowFactory, no_result

from cira_db._database import Database, kept_cursor, release
from cira_db._errors_map import translate, wrap_errors
from cira_db._models import STATUS_BY_LABEL, Job, JobResult, Usage
from cira_db._observe import Observation
from cira_db._settings import FIELDS, SettingsBase
from cira_db._sql import Query
from cira_db.errors import (
    CiraDbError,
    ConflictError,
    InvalidTransitionError,
    ValidationError,
)

__all__ = [
    "Call",
    "Executor",
    "Logic",
    "Outcome",
    "RowFactory",
    "Runner",
    "StatementRows",
    "job_outcome_row",
    "job_row",
    "make_result",
    "model_builder",
    "model_row",
    "prefixed_builder",
    "result_outcome_row",
    "result_row",
    "savepoint_in_transaction",
    "stream_size",
    "usage_row",
]

Executor: TypeAlias = Database | psycopg.Connection[Any]
"""What a repository runs its statements on: a `Database`, or a connection."""

R = TypeVar("R")
T = TypeVar("T")

# CHECK constraints (migration 0002) and the argument each one guards. The
# arguments are validated first, so these fire only if a check is bypassed.
_CHECK_FIELDS: Final = {
    "jobs_client_id_not_empty": "client_id",
    "jobs_pdf_url_not_empty": "pdf_url",
    "jobs_attempts_non_negative": "attempts",
    "job_results_confidence_range": "confidence_score",
    "job_results_tokens_non_negative": "tokens_used",
    "jobs_progress_small_object": "progress",
}


# -- rows ---------------------------------------------------------------------------
#
# Rows are built from psycopg's tuples without a dict per row and without the
# dataclass ``__init__`` (a frozen dataclass sets every field through
# ``object.__setattr__``). Each model has a twin: a plain class with the same
# ``__slots__`` and no ``__setattr__`` of its own, whose slots Python stores
# with its cheapest attribute store. A row is made as a twin, its slots set
# once each, and its class then switched to the model (``__class__``
# assignment, allowed between classes of the same layout): the result is the
# same frozen, slotted dataclass instance that ``Job(...)`` would make, at
# about a third of the cost of setting each slot through its descriptor.


_new: Final = object.__new__
# Converters applied to a column on its way into a field, by model. psycopg
# returns the job_status enum as its label (str): no adapter is registered
# anywhere, the label is mapped to the JobStatus member here.
_CONVERT: Final[Mapping[type, Mapping[str, Callable[[Any], Any]]]] = {
    Job: {"status": STATUS_BY_LABEL.__getitem__}
}


_TWINS: Final[dict[type, type | None]] = {}


def _twin(cls: type) -> type | None:
    """A plain class laid out like the slotted ``cls`` (None if ``__class__`` cannot switch)."""
    if cls in _TWINS:
        return _TWINS[cls]
    slots = vars(cls)["__slots__"]
    # The same bases (a generic model's ``Generic[T]``): ``__class__`` can only
    # switch between classes whose bases lay them out alike.
    bases = vars(cls).get("__orig_bases__", cls.__bases__)
    twin: type | None = new_class(
        f"_{cls.__name__}Twin", bases, exec_body=lambda namespace: namespace.update(__slots__=slots)
    )
    probe: Any = object.__new__(twin)  # type: ignore[arg-type]  # just made
    try:
        probe.__class__ = cls
    except TypeError:  # a layout the twin cannot share (a __weakref__ slot, a base, ...)
        twin = None
    _TWINS[cls] = twin
    return twin


def _column_names(result: Any) -> tuple[bytes, ...] | None:
    """The names of ``result``'s columns as libpq gives them (bytes); None if none."""
    if result is None or not result.nfields:
        return None
    return tuple(map(result.fname, range(result.nfields)))


def model_builder(cls: type[T], names: Sequence[str]) -> Callable[[Sequence[Any]], T]:
    """A function from a row of the columns ``names`` (in that order) to a ``cls``.

    ``cls`` is a slotted dataclass; each column must be one of its fields,
    fields without a column take their default (none is a `TypeError`, like
    the constructor). Bypasses ``__init__`` (the models have no
    ``__post_init__``): each slot is set once, on the model's twin (see above)
    or, where no twin fits, through the slot's descriptor. A row must hold
    exactly the columns ``names``.
    """
    fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    unknown = [name for name in names if name not in fields]
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {unknown}")
    convert = _CONVERT.get(cls, {})
    twin = _twin(cls)
    # Straight-line code (as dataclasses writes ``__init__``): a loop over the
    # columns costs half as much again per row. Only indexes, generated names
    # and the model's own field names (identifiers of its class, checked
    # above) go into the text; nothing the database sent does.
    env: dict[str, Any] = {"_new": _new, "_cls": cls, "_twin": twin}
    lines = ["def build(values):", f"    obj = _new({'_cls' if twin is None else '_twin'})"]

    def store(name: str, value: str, slot: str) -> None:
        assert name.isidentifier()  # a dataclass field of cls
        if twin is None:
            env[slot] = vars(cls)[name].__set__
            lines.append(f"    {slot}(obj, {value})")
        else:
            lines.append(f"    obj.{name} = {value}")

    if twin is None:
        for i, name in enumerate(names):
            if name in convert:
                env[f"convert{i}"] = convert[name]
                store(name, f"convert{i}(values[{i}])", f"set{i}")
            else:
                store(name, f"values[{i}]", f"set{i}")
    elif names:
        # One unpacking of the row straight into the twin's slots (two
        # instructions a column instead of five); a column to convert goes
        # through a local first.
        targets: list[str] = []
        for i, name in enumerate(names):
            assert name.isidentifier()  # a dataclass field of cls
            if name in convert:
                env[f"convert{i}"] = convert[name]
                targets.append(f"value{i}")
            else:
                targets.append(f"obj.{name}")
        lines.append(f"    {', '.join(targets)}, = values")
        for i, name in enumerate(names):
            if name in convert:
                lines.append(f"    obj.{name} = convert{i}(value{i})")
    for j, (name, field) in enumerate(fields.items()):
        if name in names:
            continue
        if field.default is MISSING:
            raise TypeError(f"{cls.__name__}: no column for the required field {name!r}")
        env[f"default{j}"] = field.default
        store(name, f"default{j}", f"default_set{j}")
    if twin is not None:
        lines.append("    obj.__class__ = _cls")
    lines.append("    return obj")
    exec("\n".join(lines), env)  # noqa: S102 - text made above from indexes and field names
    build: Callable[[Sequence[Any]], T] = env["build"]
    return build


class RowFactory(Generic[T]):
    """A psycopg row factory: tuples of a result's columns -> ``T`` via a cached builder.

    ``shape(names)`` makes the per-row function for a result with those
    columns; it is made once per distinct set of columns and kept, keyed by
    the names as libpq gives them (bytes: no decoding on every call). Reading
    the names costs a call into libpq per column on every result: a
    repository's statements use `of` instead, which finds its builder once.
    """

    __slots__ = ("_builders", "_shape", "_statements")

    def __init__(self, shape: Callable[[tuple[str, ...]], Callable[[Sequence[Any]], T]]) -> None:
        self._shape = shape
        self._builders: dict[tuple[bytes, ...], Callable[[Sequence[Any]], T]] = {}
        self._statements: dict[str, StatementRows[T]] = {}

    def __call__(self, cursor: Any) -> Callable[[Sequence[Any]], T]:
        return self.builder(cursor.pgresult)

    def builder(self, result: Any) -> Callable[[Sequence[Any]], T]:
        """The per-row function for ``result``'s columns (psycopg's `no_result` if none)."""
        names = _column_names(result)
        if names is None:
            return no_result
        builder = self._builders.get(names)
        if builder is None:
            shape = self._shape(tuple([name.decode() for name in names]))
            builder = self._builders[names] = shape
        return builder

    def of(self, statement: Query) -> StatementRows[T]:
        """This factory for the rows of ``statement`` only (one per statement text)."""
        rows = self._statements.get(statement.sql)
        if rows is None:
            rows = self._statements.setdefault(statement.sql, StatementRows(self, statement.name))
        return rows


class StatementRows(Generic[T]):
    """A `RowFactory` bound to one named statement: its builder found once, not per call.

    A named statement's text fixes its columns, except where a ``*`` expands
    over a table that a migration changes while this process runs: ``ADD
    COLUMN`` appends (the count and the last name change), ``DROP COLUMN``
    removes (the count changes). So a result with as many columns as the
    last one, ending in the same name, is built by the last one's builder:
    two cheap reads instead of a libpq call per column; any other result
    goes through the factory's lookup by names, with its checks.
    """

    __slots__ = ("_factory", "_known", "name")

    def __init__(self, factory: RowFactory[T], name: str) -> None:
        self._factory = factory
        self.name = name
        # (column count, last column name, builder) of the last result: one
        # tuple, replaced whole, so that threads never see a mix of two.
        self._known: tuple[int, bytes | None, Callable[[Sequence[Any]], T]] = (-1, None, no_result)

    def __call__(self, cursor: Any) -> Callable[[Sequence[Any]], T]:
        result = cursor.pgresult
        if result is None:
            return no_result
        count, last, builder = self._known
        if result.nfields == count and result.fname(count - 1) == last:
            return builder
        builder = self._factory.builder(result)
        if builder is not no_result:
            count = result.nfields
            self._known = (count, result.fname(count - 1), builder)
        return builder


def model_row(cls: type[T]) -> RowFactory[T]:
    """Rows whose columns are fields of the dataclass ``cls`` -> ``cls`` instances."""
    return RowFactory(lambda names: model_builder(cls, names))


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """The reply of a statement that may refuse: what it found, and what it changed.

    ``outcome`` is the target row's status before the statement (``insert_job``
    reports ``created``, ``existing`` or ``conflict`` instead);
    ``current_attempts`` is the target's ``attempts`` where the statement
    reports it (the worker moves), else None; ``row`` is the changed (or
    created) row, None when nothing changed. No reply row at all means no
    target: not found.
    """

    outcome: str
    current_attempts: int | None
    row: T | None


_OUTCOME_COLUMNS: Final = ("outcome", "current_attempts")
_make_outcome: Final[Callable[[Sequence[Any]], Outcome[Any]]] = model_builder(
    Outcome, ("outcome", "current_attempts", "row")
)


def prefixed_builder(
    cls: type[T], names: tuple[str, ...], prefix: Sequence[str]
) -> tuple[int, Callable[[Sequence[Any]], T | None]]:
    """For rows of ``prefix`` columns (first) then ``cls``'s: (prefix length, row -> cls or None).

    The columns named in ``prefix`` must come first (in any order, some may
    be absent); the rest are ``cls``'s, and a NULL ``id`` means no row.
    """
    start = 0
    while start < len(names) and names[start] in prefix:
        start += 1
    columns = names[start:]
    if any(name in prefix for name in columns):
        raise TypeError(f"columns {list(prefix)} must come first, got {list(names)}")
    make = model_builder(cls, columns)
    at_id = columns.index("id")

    def build(values: Sequence[Any]) -> T | None:
        rest = values[start:]
        return None if rest[at_id] is None else make(rest)

    return start, build


def _outcome_shape(cls: type[T]) -> Callable[[tuple[str, ...]], Callable[[Sequence[Any]], Any]]:
    def shape(names: tuple[str, ...]) -> Callable[[Sequence[Any]], Outcome[T]]:
        if names[0] != "outcome":
            raise TypeError(f"the first column must be outcome, got {list(names)}")
        _, make = prefixed_builder(cls, names, _OUTCOME_COLUMNS)
        at_attempts = names.index("current_attempts") if "current_attempts" in names else -1

        def build(values: Sequence[Any]) -> Outcome[T]:
            attempts = values[at_attempts] if at_attempts >= 0 else None
            return _make_outcome((values[0], attempts, make(values)))

        return build

    return shape


def _outcome_row(cls: type[T]) -> RowFactory[Outcome[T]]:
    """Rows of ``outcome`` (and maybe ``current_attempts``) plus ``cls``'s columns."""
    return RowFactory(_outcome_shape(cls))


job_row: Final[RowFactory[Job]] = model_row(Job)
"""Rows of the job columns -> `Job`."""

job_outcome_row: Final = _outcome_row(Job)
"""Rows of ``outcome`` [and ``current_attempts``] plus the job columns -> `Outcome` of `Job`."""

result_row: Final[RowFactory[JobResult]] = model_row(JobResult)
"""Rows of the six result columns -> `JobResult`."""

result_outcome_row: Final = _outcome_row(JobResult)
"""Rows of ``outcome`` and ``current_attempts`` plus the result columns -> `Outcome`."""

usage_row: Final[RowFactory[Usage]] = model_row(Usage)
"""The one row of ``usage_by_client`` -> `Usage`."""

make_result: Final[Callable[[Sequence[Any]], JobResult]] = model_builder(
    JobResult, ("id", "job_id", "extracted_data", "confidence_score", "tokens_used", "created_at")
)
"""A `JobResult` from its six values in field order, as ``JobResult(*values)`` makes it.

For a result built from values the caller has already (``complete`` sends all
but ``created_at``): a third of the constructor's cost (callgrind)."""


# -- statement requests -----------------------------------------------------------


class Call(NamedTuple, Generic[R]):
    """One statement a repository's logic asks a runner to run (one round trip).

    ``kind`` says what the logic gets back: ``"one"`` the first row or None,
    ``"all"`` every row, ``"rowcount"`` how many rows changed, ``"copy"`` how
    many rows a ``COPY ... FROM STDIN`` statement loaded (``rows()`` yields
    them, streamed: never all in memory at once), ``"copy_all"`` every row of
    the query ``then`` run after such a COPY in the same transaction (rows
    streamed from the server in chunks, not held twice). ``params`` are
    checked against the query's placeholders when the request is made, so a
    mistake shows up the same way whichever runner would have run it.
    ``idempotent`` says whether a runner may repeat it after a transient
    failure (only on a `Database`; never inside a caller's transaction).
    ``changes``, when set, is how many rows the statement writes when it
    succeeds (an all-or-nothing insert whose reply is one summary row):
    observation counts those instead of the reply's rows.
    A named tuple: immutable, and made on every call for the price of a tuple.
    """

    kind: Literal["one", "all", "rowcount", "copy", "copy_all"]
    query: Query
    params: Mapping[str, Any]
    row_factory: BaseRowFactory[Any] | None
    operation: str
    idempotent: bool
    rows: Callable[[], Iterable[Sequence[Any]]] | None = None
    then: Query | None = None
    changes: int | None = None

    @staticmethod
    def one(
        query: Query,
        params: Mapping[str, Any],
        row_factory: BaseRowFactory[T],
        operation: str,
        *,
        idempotent: bool,
        changes: int | None = None,
    ) -> Call[T | None]:
        """Ask for the statement's first row (None when it returns none)."""
        made: Call[T | None] = _tuple_new(
            Call,
            (
                "one",
                query,
                query.bind(params),
                row_factory,
                operation,
                idempotent,
                None,
                None,
                changes,
            ),
        )
        return made

    @staticmethod
    def all(
        query: Query,
        params: Mapping[str, Any],
        row_factory: BaseRowFactory[T],
        operation: str,
        *,
        idempotent: bool,
    ) -> Call[list[T]]:
        """Ask for every row of the statement."""
        made: Call[list[T]] = _tuple_new(
            Call,
            (
                "all",
                query,
                query.bind(params),
                row_factory,
                operation,
                idempotent,
                None,
                None,
                None,
            ),
        )
        return made

    @staticmethod
    def rowcount(
        query: Query, params: Mapping[str, Any], operation: str, *, idempotent: bool
    ) -> Call[int]:
        """Ask for the number of rows the statement changed."""
        made: Call[int] = _tuple_new(
            Call,
            ("rowcount", query, query.bind(params), None, operation, idempotent, None, None, None),
        )
        return made

    @staticmethod
    def copy(
        query: Query,
        rows: Callable[[], Iterable[Sequence[Any]]],
        operation: str,
        *,
        idempotent: bool,
    ) -> Call[int]:
        """Ask for a ``COPY ... FROM STDIN`` of ``rows()`` (one statement); the row count."""
        return Call("copy", query, query.bind({}), None, operation, idempotent, rows)

    @staticmethod
    def copy_all(
        query: Query,
        rows: Callable[[], Iterable[Sequence[Any]]],
        then: Query,
        params: Mapping[str, Any],
        row_factory: BaseRowFactory[T],
        operation: str,
        *,
        idempotent: bool,
        changes: int | None = None,
    ) -> Call[list[T]]:
        """A ``COPY ... FROM STDIN`` of ``rows()``, then every row of ``then``: one transaction."""
        return Call(
            "copy_all",
            query,
            then.bind(params),
            row_factory,
            operation,
            idempotent,
            rows,
            then,
            changes,
        )


# The named tuple's own ``__new__`` is a Python function; the three calls made on
# every repository call build the tuple directly (every field given).
_tuple_new: Final[Callable[..., Any]] = tuple.__new__

Logic: TypeAlias = Generator[Call[Any], Any, T]
"""A repository method's logic: yields `Call` requests, receives their results, returns."""


# -- errors -------------------------------------------------------------------------


def map_error(exc: psycopg.Error, operation: str) -> CiraDbError:
    """The cira_db error for a failed repository statement (raise it ``from exc``)."""
    constraint = getattr(exc.diag, "constraint_name", None)
    if isinstance(exc, pg_errors.CheckViolation) and constraint in _CHECK_FIELDS:
        return ValidationError(
            _CHECK_FIELDS[constraint],
            f"refused by the database (constraint {constraint}); nothing was written",
        )
    if isinstance(exc, pg_errors.UniqueViolation):
        if constraint == "job_results_job_id_key":
            return InvalidTransitionError(
                f"{operation}: the job has a result already; nothing was changed"
            )
        if constraint == "jobs_pkey":
            return ConflictError(f"{operation}: a job with this id exists already")
    return translate(exc, operation)


# -- running statements -------------------------------------------------------------


def slow_call_ms(executor: Any) -> int:
    """The slow-call threshold for calls on ``executor`` (``CIRA_DB_SLOW_CALL_MS``).

    A caller's connection has no settings: the setting's default applies.
    """
    settings = getattr(executor, "_settings", None)  # a Database's, light or pydantic
    if not isinstance(settings, SettingsBase):
        settings = getattr(executor, "settings", None)
    if isinstance(settings, SettingsBase):
        return settings.slow_call_ms
    default: int = FIELDS["slow_call_ms"][1]
    return default


STREAM_CHUNK: Final = 2000
"""Rows per chunk when a long reply is streamed (libpq 17's chunked mode)."""


def stream_size() -> int:
    """Rows per chunk for `Cursor.stream`: `STREAM_CHUNK` on libpq 17 or later, else 1."""
    return STREAM_CHUNK if psycopg.pq.version() >= 170000 else 1


def savepoint_in_transaction(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
) -> Any:
    """A savepoint when ``conn`` is in a caller's transaction, else nothing.

    A failed COPY then leaves the caller's transaction usable. On an idle
    autocommit connection the one statement is atomic on its own, and
    BEGIN and COMMIT would only add round trips.
    """
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        return nullcontext()
    return conn.transaction()


def _copy(call: Call[Any], conn: psycopg.Connection[Any]) -> int:
    """Run a ``copy`` call on ``conn`` (in a savepoint inside a caller's transaction)."""
    assert call.rows is not None  # every copy call has its rows
    with savepoint_in_transaction(conn), conn.cursor() as cur:
        with cur.copy(call.query.sql) as copy:
            for row in call.rows():
                copy.write_row(row)
        return cur.rowcount


def _copy_all(call: Call[Any], conn: psycopg.Connection[Any]) -> list[Any]:
    """Run a ``copy_all`` call on ``conn``: the COPY, then ``call.then``, in one transaction."""
    assert call.rows is not None  # a copy_all call has its rows
    assert call.then is not None  # and its query
    assert call.row_factory is not None  # and its row factory
    with conn.transaction(), conn.cursor(row_factory=call.row_factory) as cur:
        with cur.copy(call.query.sql) as copy:
            for row in call.rows():
                copy.write_row(row)
        return list(cur.stream(call.then.sql, call.params, size=stream_size()))


# The cursors of `_one`, `_all` and `_rowcount` are not closed: closing a
# client-side cursor only clears its fields (psycopg's ``_close``), and
# nothing else holds these; dropped on return, they are freed with their
# result all the same, for three Python calls fewer per statement.


def _one(call: Call[Any], conn: psycopg.Connection[Any]) -> Any:
    """Run a ``one`` call on ``conn``: its first row, or None."""
    cur = conn.cursor(row_factory=call.row_factory)  # type: ignore[arg-type]  # set
    return cur.execute(call.query.sql, call.params).fetchone()


def _one_kept(call: Call[Any], conn: psycopg.Connection[Any]) -> Any:
    """`_one` on a connection the call holds alone: through its kept cursor, if it keeps one.

    Only on a `Database`'s path: a caller's connection may be shared between
    threads (psycopg allows that, one cursor each), so its calls never share
    a cursor.
    """
    cur = kept_cursor(conn, call.query.sql, call.row_factory)
    if cur is None:
        return _one(call, conn)
    try:
        return cur.execute(call.query.sql, call.params).fetchone()
    finally:
        release(cur)


def _all(call: Call[Any], conn: psycopg.Connection[Any]) -> list[Any]:
    """Run an ``all`` call on ``conn``: every row."""
    cur = conn.cursor(row_factory=call.row_factory)  # type: ignore[arg-type]  # set
    return cur.execute(call.query.sql, call.params).fetchall()


def _all_kept(call: Call[Any], conn: psycopg.Connection[Any]) -> list[Any]:
    """`_all` through the connection's kept cursor (see `_one_kept`)."""
    cur = kept_cursor(conn, call.query.sql, call.row_factory)
    if cur is None:
        return _all(call, conn)
    try:
        return cur.execute(call.query.sql, call.params).fetchall()  # type: ignore[no-any-return]
    finally:
        release(cur)


def _rowcount(call: Call[Any], conn: psycopg.Connection[Any]) -> int:
    """Run a ``rowcount`` call on ``conn``: how many rows it changed."""
    return conn.cursor().execute(call.query.sql, call.params).rowcount


# What a `Call` of each kind runs on a connection (the parameters were bound,
# so checked, when the call was made); `Runner.execute` binds the call with a
# `partial` (made in C: no closure per call).
_STATEMENTS: Final[Mapping[str, Callable[[Call[Any], psycopg.Connection[Any]], Any]]] = {
    "one": _one,
    "all": _all,
    "rowcount": _rowcount,
    "copy": _copy,
    "copy_all": _copy_all,
}
# On a `Database`: a call that reads rows goes through the connection's kept cursor.
_POOLED_STATEMENTS: Final = {**_STATEMENTS, "one": _one_kept, "all": _all_kept}


class Runner:
    """Runs named queries on a `Database` or on a caller's connection."""

    __slots__ = ("_connection", "_database", "_server", "_slow_ms", "executor")

    def __init__(self, executor: Executor) -> None:
        self._server: Any = None  # (host, port) for spans, found on first use
        self._slow_ms = slow_call_ms(executor)
        if isinstance(executor, Database):
            self._database: Database | None = executor
            self._connection: psycopg.Connection[Any] | None = None
        elif isinstance(executor, psycopg.Connection):
            self._database = None
            self._connection = executor
        else:
            raise TypeError(
                "a repository needs a cira_db.Database or a psycopg.Connection, "
                f"not {type(executor).__name__}"
            )
        self.executor: Executor = executor
        """The `Database` or connection statements run on."""

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """The caller's connection, or an autocommit one borrowed from the pool."""
        if self._connection is not None:
            yield self._connection
            return
        assert self._database is not None  # one of the two is always set
        with self._database.connection() as conn:
            yield conn

    @contextmanager
    def transaction(self, operation: str) -> Iterator[psycopg.Connection[Any]]:
        """A transaction (a savepoint inside the caller's one, if any); errors mapped."""
        with self.connection() as conn, wrap_errors(operation, map_error), conn.transaction():
            yield conn

    def drive(self, logic: Logic[T]) -> T:
        """Run a repository method's logic to its end; returns what it returns.

        Each `Call` it yields is run here and its result sent back; a cira_db
        error from running it is thrown into the logic (at its ``yield``), so
        the logic's own ``try``/``except`` decides what that error means.
        """
        value: Any = None
        error: CiraDbError | None = None
        # Logged, traced and counted here once for every method (cira_db._observe).
        observation = Observation(getattr(logic, "__name__", "call"), self._slow_ms)
        try:
            while True:
                try:
                    call = logic.send(value) if error is None else logic.throw(error)
                except StopIteration as stop:
                    result: T = stop.value
                    break
                self._server = observation.begin(call, self.executor, self._server)
                value, error = None, None
                try:
                    value = self.execute(call)
                except CiraDbError as exc:
                    error = exc
                else:
                    observation.got(call.kind, value, call.changes)
        except BaseException as exc:
            observation.finish(exc)
            raise
        observation.finish(None)
        return result

    def execute(self, call: Call[R]) -> R:
        """Run one `Call` and return its result; its psycopg errors come out mapped by `map_error`.

        On a `Database`, transient failures (connection loss, serialization
        failure, ...) are retried with backoff when the call is ``idempotent``
        (`Database.run`'s loop, which maps the error that ends the call), and a
        prepared statement made stale by a migration for any call, since a
        `Call` is one statement or one transaction of its own; on a caller's
        connection never, since the caller owns the transaction.
        """
        database = self._database
        if database is None:  # the caller's connection: one try, errors mapped
            connection = self._connection
            assert connection is not None  # one of the two is always set
            with wrap_errors(call.operation, map_error):
                return _STATEMENTS[call.kind](call, connection)  # type: ignore[no-any-return]
        work = partial(_POOLED_STATEMENTS[call.kind], call)
        result: R = database._retrying(
            call.operation, work, idempotent=call.idempotent, mapper=map_error, one_statement=True
        )
        return result
