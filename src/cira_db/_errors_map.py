"""The one error seam: which psycopg errors are worth a retry, and what callers see.

Two decisions live here and nowhere else, both taken on psycopg's (and
psycopg_pool's) own exceptions, never on already-translated ones:

* `is_transient`: may the same harmless work succeed if repeated? The retry
  loop (`cira_db._retry`) asks only this.
* `translate`: the cira_db error a caller gets. `wrap_errors` applies it (or a
  caller's mapper that falls back to it) at a boundary, once.

A failed connection attempt carries no SQLSTATE (libpq reports it as text), so
it is classified by libpq's reason: a database or role that does not exist, a
refused login, a refused certificate or an unknown option will fail the same
way next time (`ConfigurationError` / `AuthenticationError`, at once); a
refused or timed-out connection or a server that is starting or shutting down
may pass (`DatabaseUnavailableError`). When a reason is ambiguous, "may pass"
wins, so an outage is never reported as a configuration mistake.

psycopg's messages for statements can quote the values that were rejected
("Key (client_id)=(...) already exists"): they are never copied into ours.
Only the SQLSTATE, the error class and the constraint name are. libpq's
reason for a failed connection is copied (it names host, port, user and
database, never the password), with anything that looks like a password
removed. The original stays available as ``__cause__``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import psycopg.errors as pg_errors
import psycopg_pool

from cira_db._aws_auth import is_auth_failure
from cira_db.errors import (
    AuthenticationError,
    CiraDbError,
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
)

__all__ = [
    "connect_failure_is_permanent",
    "is_stale_plan",
    "is_transient",
    "libpq_reason",
    "translate",
    "wrap_errors",
]

# SQLSTATE classes and codes after which the same work may succeed on a new try.
_TRANSIENT_CLASSES = ("08",)  # connection exceptions
_TRANSIENT_CODES = frozenset(
    {
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now
        "57P05",  # idle_session_timeout
        "53300",  # too_many_connections
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "25P03",  # idle_in_transaction_session_timeout
    }
)

# libpq's reasons (lower case) for a failed connection attempt that may pass. They win
# over every marker of a lasting failure below.
_PASSING = (
    "starting up",  # 57P03
    "shutting down",  # 57P01 during start-up
    "in recovery",
    "not yet accepting connections",
    "too many",  # too many clients / connections for role (53300)
    "connection slots",  # remaining connection slots are reserved
    "timeout expired",  # connect_timeout
    "timed out",
    "timed-out",  # RDS Proxy: timed-out waiting to acquire database connection
    "temporar",  # temporary failure in name resolution, temporarily unavailable
    "try again",
    "cannot connect to server",  # a pooler that cannot reach its server
)

# Refused logins: wrong password, unknown role, pg_hba, IAM token (PAM on RDS).
_LOGIN_REFUSALS = (
    "authentication failed",
    "no pg_hba.conf entry",
    "not permitted to log in",
    "no such user",  # pgbouncer
)
# Patterns of this module are compiled (and cached by `re`) when an error needs them,
# not at import: a cold start meets none.
_ROLE_MISSING = r'role "[^"]*" does not exist'

_TLS_REFUSALS = (
    "certificate verify failed",
    "does not match host name",
    "ssl required",
    "server does not support ssl",
    "tlsv1 alert",
    "sslv3 alert",
    "root certificate file",
    "could not read root certificate",
    "certificate file",
    "private key",
    "wrong version number",
)

# Other reasons that will not pass by waiting, each with the setting to look at.
_LASTING: tuple[tuple[str, str], ...] = (
    ("permission denied", "grant CONNECT on the database to the user"),
    ("database", "check the database name (CIRA_DB_DBNAME or the URL's path)"),
    ("parameter", "check CIRA_DB_STATEMENT_TIMEOUT and the URL's options"),
    ("not supported", "remove options=... from the URL (set parameters on the role instead)"),
    ("invalid", "check the URL's query parameters"),
    ("name or service not known", "check the host name (CIRA_DB_HOST or the URL)"),
    ("nodename nor servname", "check the host name (CIRA_DB_HOST or the URL)"),
    ("no address associated", "check the host name (CIRA_DB_HOST or the URL)"),
)
_LASTING_MARKERS = (
    "does not exist",
    "no such database",  # pgbouncer
    "permission denied for database",
    "not currently accepting connections",  # ALLOW_CONNECTIONS false
    "unrecognized configuration parameter",
    "invalid value for parameter",
    "cannot be changed",
    "not supported",  # RDS Proxy: command-line options not supported
    "name or service not known",
    "nodename nor servname",
    "no address associated",
)
# libpq refusing its own parameters ('invalid sslmode value: "x"', 'invalid port number').
_INVALID_PARAMETER = r"\binvalid [a-z_ ]+ (value|number)\b"

# Never copy anything that may be a password, even if libpq ever quotes one.
_SECRETS = (
    (r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE, r"\1***"),
    (r"(\w+://[^:/@\s]*):[^@\s]*@", 0, r"\1:***@"),
)
_REASON_LIMIT = 500


def libpq_reason(exc: BaseException) -> str:
    """libpq's text for a failed connection, on one line, with secrets removed."""
    text = str(exc)
    for prefix in ("connection failed: ", "connection is bad: "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    text = " ".join(text.split())
    for pattern, flags, replacement in _SECRETS:
        text = re.sub(pattern, replacement, text, flags=flags)
    if len(text) > _REASON_LIMIT:
        text = text[: _REASON_LIMIT - 3] + "..."
    return text


def _connect_failure(exc: BaseException) -> bool:
    """A client-side failure without SQLSTATE: a connection attempt, or a lost connection."""
    return (
        isinstance(exc, psycopg.OperationalError)
        and not isinstance(exc, psycopg_pool.PoolTimeout | psycopg_pool.PoolClosed)
        and exc.sqlstate is None
    )


def _login_refused(exc: BaseException) -> bool:
    if is_auth_failure(exc):
        return True
    if not _connect_failure(exc):
        return False
    text = str(exc).lower()
    return any(marker in text for marker in _LOGIN_REFUSALS) or bool(re.search(_ROLE_MISSING, text))


def is_tls_refusal(exc: BaseException) -> bool:
    """True when TLS set-up was refused: a configuration problem, not a transient one."""
    text = str(exc).lower()
    return any(marker in text for marker in _TLS_REFUSALS)


def connect_failure_is_permanent(exc: BaseException) -> bool:
    """True for a failed connection attempt that will fail the same way when repeated.

    A psycopg error that is not transient, or a `ConfigurationError` raised
    while preparing the attempt (a bad secret, IAM without a host). Anything
    else (a `DatabaseUnavailableError` from Secrets Manager, an unknown
    exception) may pass.
    """
    if isinstance(exc, psycopg.Error):
        return not is_transient(exc)
    return isinstance(exc, ConfigurationError)


def _reason_will_not_pass(exc: psycopg.Error) -> bool:
    text = str(exc).lower()
    if any(marker in text for marker in _PASSING):
        return False
    return (
        _login_refused(exc)
        or is_tls_refusal(exc)
        or any(marker in text for marker in _LASTING_MARKERS)
        or re.search(_INVALID_PARAMETER, text) is not None
    )


def is_stale_plan(exc: BaseException | None) -> bool:
    """True if a prepared statement no longer matches the schema, so it did not run.

    A migration that changes the type of a column a statement returns makes
    PostgreSQL refuse that connection's prepared statement when it checks the
    cached plan, before running anything ("cached plan must not change result
    type", 0A000). psycopg keeps the prepared statement, so the connection
    fails the same way on every later call: it must be replaced (`Database`
    drains its pool). Recognised by the server function that raises it, in
    any language.
    """
    return (
        isinstance(exc, pg_errors.FeatureNotSupported)
        and exc.diag.source_function == "RevalidateCachedQuery"
    )


def is_transient(exc: BaseException) -> bool:
    """True if repeating the same harmless work may succeed: the one retry predicate.

    Decided on psycopg's own exceptions. A pool wait that timed out is not
    transient here: the pool already waited its whole timeout, and another
    try would wait as long again.
    """
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg_pool.PoolClosed):
        return False
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:
        # Client side: a connection lost or not made. Lost connections, refusals and
        # timeouts may pass; a missing database, a refused login or certificate won't.
        return isinstance(exc, psycopg.OperationalError) and not _reason_will_not_pass(exc)
    if is_auth_failure(exc):
        return False
    if state.startswith(_TRANSIENT_CLASSES) or state in _TRANSIENT_CODES:
        return True
    return is_stale_plan(exc)  # on a new connection the statement is planned afresh


def _hint(text: str) -> str:
    for marker, hint in _LASTING:
        if marker in text:
            return hint
    return "check the connection settings"


def translate(exc: psycopg.Error, operation: str) -> CiraDbError:
    """The cira_db error for ``exc``; the caller raises it ``from exc``."""
    if isinstance(exc, psycopg_pool.PoolTimeout):
        cause = exc.__cause__
        if isinstance(cause, psycopg.Error | CiraDbError):
            # Raised by `Database` when no connection could be made at all.
            reason = libpq_reason(cause) if isinstance(cause, psycopg.Error) else str(cause)
            return DatabaseUnavailableError(
                f"{operation}: no database connection could be made in time: {reason}"
            )
        return DatabaseUnavailableError(
            f"{operation}: no database connection became free in time (pool exhausted)"
        )
    if isinstance(exc, psycopg_pool.PoolClosed):
        return DatabaseError(f"{operation}: the Database is closed; open it first")
    state = exc.sqlstate or "no SQLSTATE"
    kind = type(exc).__name__
    if isinstance(exc, psycopg.ProgrammingError) and exc.sqlstate is None:
        text = str(exc)
        if text.startswith("invalid connection option"):
            # libpq quotes only the option's name here.
            return ConfigurationError(f"{operation}: {libpq_reason(exc)}; check the URL")
        if "connection info string" in text or "URI" in text or "percent-encoded" in text:
            # libpq quotes the string it could not parse, which may hold the password.
            return ConfigurationError(
                f"{operation}: libpq could not parse the connection string; "
                "check CIRA_DB_URL (percent-encode special characters in the password)"
            )
    if _connect_failure(exc):
        reason = libpq_reason(exc)
        if is_transient(exc):
            return DatabaseUnavailableError(f"{operation}: database unavailable: {reason}")
        if _login_refused(exc):
            return AuthenticationError(
                f"{operation}: the server refused the login: {reason}; check the user and "
                "password, CIRA_DB_SECRET_ARN or the IAM policy"
            )
        if is_tls_refusal(exc):
            return ConfigurationError(
                f"{operation}: TLS handshake or certificate check failed: {reason}; check "
                "CIRA_DB_SSLMODE, CIRA_DB_SSLROOTCERT and that the host name matches the "
                "certificate"
            )
        return ConfigurationError(
            f"{operation}: the connection was refused for a reason that will not pass: "
            f"{reason}; {_hint(reason.lower())}"
        )
    if is_auth_failure(exc):
        return AuthenticationError(
            f"{operation}: the server refused the login ({kind}, {state}); check the user "
            "and password, CIRA_DB_SECRET_ARN or the IAM policy"
        )
    if is_stale_plan(exc):
        return DatabaseUnavailableError(
            f"{operation}: a prepared statement no longer matches the schema after a "
            f"migration ({kind}, {state}); that statement did not run. A Database replaces "
            "every connection made before the migration; on a connection of your own, "
            "reconnect"
        )
    if is_transient(exc):
        return DatabaseUnavailableError(f"{operation}: database unavailable ({kind}, {state})")
    if isinstance(exc, pg_errors.QueryCanceled):
        return DatabaseError(f"{operation}: statement cancelled or timed out ({state})")
    constraint = getattr(exc.diag, "constraint_name", None)
    where = f" on constraint {constraint}" if constraint else ""
    return DatabaseError(f"{operation}: database refused the operation ({kind}, {state}){where}")


@contextmanager
def wrap_errors(
    operation: str, mapper: Callable[[psycopg.Error, str], CiraDbError] = translate
) -> Iterator[None]:
    """Re-raise psycopg errors inside the block as cira_db errors (``mapper`` picks which).

    Use it at a boundary only, once: inside a retried block psycopg's own
    errors must stay raw, so that `is_transient` decides on them.
    """
    try:
        yield
    except psycopg.Error as exc:
        raise mapper(exc, operation) from exc
