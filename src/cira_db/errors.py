"""Errors raised on purpose by cira_db.

Every error the library raises deliberately derives from `CiraDbError`; a
database error is never passed to callers raw: it is wrapped in one of these,
with a message that holds no SQL parameters, passwords or tokens, and the
original exception chained as ``__cause__``.

The tree::

    CiraDbError
    ├── ValidationError (also a ValueError)    bad input, field named, nothing written
    ├── NotFoundError                          missing, or another client's row
    ├── InvalidTransitionError                 illegal status move, nothing changed
    │   └── JobCancelledError                  a cancel was asked for: stop working on it
    ├── ConflictError                          same id, different content
    ├── DatabaseUnavailableError               transient failure that survived retries
    ├── DatabaseError                          any other database failure
    ├── ConfigurationError                     settings wrong: fails at once, never retried
    │   └── AuthenticationError                the server refused the login
    └── MigrationError                         history drift, lock timeout, failed migration
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CiraDbError",
    "ConfigurationError",
    "ConflictError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "InvalidTransitionError",
    "JobCancelledError",
    "MigrationError",
    "NotFoundError",
    "ValidationError",
]


class CiraDbError(Exception):
    """Base class of every error cira_db raises on purpose."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())


class ValidationError(CiraDbError, ValueError):
    """An input value was rejected before any SQL ran; nothing was written.

    ``field`` names the offending argument (``"pdf_url"``, ``"cursor"``, ...).
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class NotFoundError(CiraDbError):
    """The row does not exist, or belongs to another client.

    The two cases are indistinguishable on purpose, so a caller cannot probe
    for other clients' ids.
    """


class InvalidTransitionError(CiraDbError):
    """The job is not in a state that allows this move; nothing was changed."""


class JobCancelledError(InvalidTransitionError):
    """The job was cancelled: its worker should stop working on it.

    Raised by `extend_lease` and `report_progress` on a processing job whose
    cancel was asked for (`jobs.cancel`): the same statement ended the job
    ``cancelled`` (lease cleared), so nothing else of the worker's claim is
    left to do. An `InvalidTransitionError`, so code that treats "my claim is
    gone" one way keeps working.
    """


class ConflictError(CiraDbError):
    """A row with this id exists already with different content."""


class DatabaseUnavailableError(CiraDbError):
    """The database could not be reached, or a transient failure survived the retries."""


class DatabaseError(CiraDbError):
    """The database refused the operation for a reason that is not transient."""


class ConfigurationError(CiraDbError):
    """Connection settings are missing, contradict each other, or the server refused them.

    Raised at once, without retries or waiting for the pool, when a connection
    attempt fails for a reason that will not pass: the database does not exist,
    a TLS certificate was refused, an option is unknown. The message carries
    libpq's reason (never the password).
    """


class AuthenticationError(ConfigurationError):
    """The server refused the login: wrong password, unknown role, pg_hba or IAM refusal.

    A `ConfigurationError`: raised at once, never retried (after one re-fetch of
    a rotated Secrets Manager secret).
    """


class MigrationError(CiraDbError):
    """A migration could not run, or the recorded history does not match the package."""
