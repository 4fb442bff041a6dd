"""Retries with capped exponential backoff and full jitter, for harmless work only.

Only work that is safe to repeat goes through `call_with_retries` with
``idempotent=True``: reads, creates by a caller-chosen id, and transactions the
library opens and owns (a failed transaction left nothing behind). Anything
else gets one try; its failure surfaces as a cira_db error.

Two failures are safe to repeat whatever the call:

- Failing to get a connection, since then no statement was sent. The checkout
  raises it as `CheckoutFailed`, and the retry loops (`call_with_retries`,
  `AsyncDatabase.run`) give it the tries of an idempotent call.
- For a call whose work is one statement or one transaction of its own (every
  repository call: ``one_statement=True``), a prepared statement refused because a
  migration changed its result type (`is_stale_plan`): it failed before
  running, and its connection was closed (`tries_for`).

Any other failure after the statement was (possibly) sent still ends a call
that is not idempotent, whatever the checkouts before it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import psycopg

from cira_db._errors_map import is_stale_plan, is_transient, translate
from cira_db._observe import FIELD, note_retry
from cira_db.errors import CiraDbError

__all__ = ["CheckoutFailed", "RetryPolicy", "call_with_retries", "next_pause", "tries_for"]

T = TypeVar("T")
_log = logging.getLogger("cira_db.retry")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to repeat harmless work."""

    attempts: int = 3
    backoff: float = 0.05
    backoff_max: float = 2.0

    def delay(self, retry: int) -> float:
        """Seconds to sleep before retry number ``retry`` (1-based), with full jitter."""
        ceiling = min(self.backoff_max, self.backoff * (2 ** (retry - 1)))
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography


class CheckoutFailed(Exception):  # noqa: N818 - a marker around ``error``, not an error
    """Getting a connection failed (``error``): no statement was sent, so a retry is safe.

    Raised by the checkout of one try of `Database.run` / `AsyncDatabase.run`
    and caught by their retry loop only; ``error`` is what is judged and reported.
    """

    __slots__ = ("error",)

    def __init__(self, error: psycopg.Error) -> None:
        super().__init__(error)
        self.error = error


def tries_for(
    policy: RetryPolicy, exc: psycopg.Error, *, idempotent: bool, one_statement: bool
) -> int:
    """How many tries a call that failed with ``exc`` gets in all, shared by both faces.

    The policy's tries for harmless work: an idempotent call, or a call whose
    work is one statement (or one transaction of its own) refused for a stale
    prepared statement (`is_stale_plan`), since then nothing ran and its
    connection was closed. Otherwise one.
    """
    if idempotent or (one_statement and is_stale_plan(exc)):
        return policy.attempts
    return 1


def next_pause(
    policy: RetryPolicy, operation: str, exc: psycopg.Error, attempt: int, tries: int
) -> float | None:
    """The retry decision, shared by the sync and the asyncio loop.

    Seconds to wait before repeating after ``exc`` ended try ``attempt`` of
    ``tries`` (the retry is logged at INFO and counted), or None when the work must not be
    repeated: out of tries, or a failure that is not transient.
    """
    if attempt >= tries or not is_transient(exc):
        return None
    pause = policy.delay(attempt)
    note_retry()
    # INFO, not WARNING: the call may still succeed. A failure that reaches the
    # caller is logged once, by the repository driver (cira_db.calls).
    if _log.isEnabledFor(logging.INFO):
        _log.info(
            "%s: transient failure (%s), retry %d of %d in %.0f ms",
            operation,
            type(exc).__name__,
            attempt,
            tries - 1,
            pause * 1000,
            extra={
                FIELD: {
                    "operation": operation,
                    "attempt": attempt,
                    "retry": attempt,
                    "retries_max": tries - 1,
                    "pause_ms": round(pause * 1000, 1),
                    "error": type(exc).__name__,
                    "sqlstate": exc.sqlstate,
                }
            },
        )
    return pause


def call_with_retries(
    policy: RetryPolicy,
    operation: str,
    work: Callable[[], T],
    *,
    idempotent: bool,
    one_statement: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    mapper: Callable[[psycopg.Error, str], CiraDbError] = translate,
) -> T:
    """Run ``work``; repeat it after transient failures when ``idempotent``.

    A transient failure to get a connection (`CheckoutFailed`, from ``work``'s
    checkout) is repeated for any call, within the same ``policy``; so is a
    stale prepared statement when ``one_statement`` says ``work`` is one statement
    or one transaction of its own (`tries_for`).

    ``work`` lets psycopg's own errors out untranslated: whether to repeat is
    decided on them (`is_transient`), and the one that ends the call is
    translated here, once, by ``mapper`` (``operation`` in the message, the
    original as ``__cause__``). cira_db errors raised by ``work`` (a
    configuration error, a refused login) pass through and are never repeated.
    """
    attempt = 1
    while True:
        try:
            return work()
        except CheckoutFailed as failed:  # no statement sent: as safe as idempotent
            exc = failed.error
            pause = next_pause(policy, operation, exc, attempt, policy.attempts)
        except psycopg.Error as error:
            exc = error
            tries = tries_for(policy, exc, idempotent=idempotent, one_statement=one_statement)
            pause = next_pause(policy, operation, exc, attempt, tries)
        if pause is None:
            raise mapper(exc, operation) from exc
        sleep(pause)
        attempt += 1
