"""Retries with capped exponential backoff and full jitter, for harmless work only.

Only work that is safe to repeat goes through `call_with_retries` with
``idempotent=True``: reads, creates by a caller-chosen id, and transactions the
library opens and owns (a failed transaction left nothing behind). Anything
else gets one try; its failure surfaces as a cira_db error.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import psycopg

from cira_db._errors_map import is_transient, translate
from cira_db.errors import CiraDbError

__all__ = ["RetryPolicy", "async_call_with_retries", "call_with_retries"]

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


def call_with_retries(
    policy: RetryPolicy,
    operation: str,
    work: Callable[[], T],
    *,
    idempotent: bool,
    sleep: Callable[[float], None] = time.sleep,
    mapper: Callable[[psycopg.Error, str], CiraDbError] = translate,
) -> T:
    """Run ``work``; repeat it after transient failures when ``idempotent``.

    ``work`` lets psycopg's own errors out untranslated: whether to repeat is
    decided on them (`is_transient`), and the one that ends the call is
    translated here, once, by ``mapper`` (``operation`` in the message, the
    original as ``__cause__``). cira_db errors raised by ``work`` (a
    configuration error, a refused login) pass through and are never repeated.
    """
    tries = policy.attempts if idempotent else 1
    for attempt in range(1, tries + 1):
        try:
            return work()
        except psycopg.Error as exc:
            if attempt < tries and is_transient(exc):
                pause = policy.delay(attempt)
                _log.warning(
                    "%s: transient failure (%s), retry %d of %d in %.0f ms",
                    operation,
                    type(exc).__name__,
                    attempt,
                    tries - 1,
                    pause * 1000,
                )
                sleep(pause)
                continue
            raise mapper(exc, operation) from exc
    raise AssertionError("unreachable")  # pragma: no cover


async def async_call_with_retries(
    policy: RetryPolicy,
    operation: str,
    work: Callable[[], Awaitable[T]],
    *,
    idempotent: bool,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """`call_with_retries` for coroutines: the same decision, ``asyncio.sleep`` between tries."""
    tries = policy.attempts if idempotent else 1
    for attempt in range(1, tries + 1):
        try:
            return await work()
        except (psycopg.Error, DatabaseUnavailableError) as exc:
            if attempt < tries and _retryable(exc):
                pause = policy.delay(attempt)
                _log.warning(
                    "%s: transient failure (%s), retry %d of %d in %.0f ms",
                    operation,
                    type(exc).__name__,
                    attempt,
                    tries - 1,
                    pause * 1000,
                )
                await sleep(pause)
                continue
            if isinstance(exc, psycopg.Error):
                raise translate(exc, operation) from exc
            raise
    raise AssertionError("unreachable")  # pragma: no cover
