"""Translate psycopg errors into cira_db errors with messages safe to show.

psycopg's own messages can quote the values that were rejected ("Key
(client_id)=(...) already exists", "invalid input syntax ... "): they are
never copied into ours. Only the SQLSTATE, the error class and the constraint
name are, and the original stays available as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import psycopg.errors as pg_errors
import psycopg_pool

from cira_db._aws_auth import is_auth_failure
from cira_db.errors import (
    CiraDbError,
    DatabaseError,
    DatabaseUnavailableError,
)

__all__ = ["is_transient", "translate", "wrap_errors"]

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


_TLS_REFUSALS = (
    "certificate verify failed",
    "does not match host name",
    "ssl required",
    "server does not support ssl",
    "tlsv1 alert",
    "sslv3 alert",
    "root certificate file",
    "could not read root certificate",
)


def is_tls_refusal(exc: BaseException) -> bool:
    """True when TLS set-up was refused: a configuration problem, not a transient one."""
    text = str(exc).lower()
    return any(marker in text for marker in _TLS_REFUSALS)


def is_transient(exc: BaseException) -> bool:
    """True if repeating the same harmless work may succeed."""
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg_pool.PoolClosed):
        return isinstance(exc, psycopg_pool.PoolTimeout)
    if not isinstance(exc, psycopg.Error):
        return False
    if is_auth_failure(exc) or is_tls_refusal(exc):
        return False  # wrong credentials or certificates do not fix themselves
    state = exc.sqlstate
    if state is None:
        # Client-side failure: socket closed, SSL EOF, connect timeout.
        return isinstance(exc, psycopg.OperationalError)
    return state.startswith(_TRANSIENT_CLASSES) or state in _TRANSIENT_CODES


def translate(exc: psycopg.Error, operation: str) -> CiraDbError:
    """The cira_db error for ``exc``; the caller raises it ``from exc``."""
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return DatabaseUnavailableError(
            f"{operation}: no database connection became free in time (pool exhausted)"
        )
    if isinstance(exc, psycopg_pool.PoolClosed):
        return DatabaseError(f"{operation}: the Database is closed; open it first")
    state = exc.sqlstate or "no SQLSTATE"
    kind = type(exc).__name__
    if is_auth_failure(exc):
        return DatabaseError(
            f"{operation}: the server refused the credentials (authentication failed); "
            "check the user and password, CIRA_DB_SECRET_ARN or the IAM policy"
        )
    if is_tls_refusal(exc):
        return DatabaseError(
            f"{operation}: TLS handshake or certificate check failed ({kind}); check "
            "CIRA_DB_SSLMODE, CIRA_DB_SSLROOTCERT and that the host name matches the certificate"
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
    """Re-raise psycopg errors inside the block as cira_db errors (``mapper`` picks which)."""
    try:
        yield
    except psycopg.Error as exc:
        raise mapper(exc, operation) from exc
