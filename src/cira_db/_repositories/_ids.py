"""Time-ordered ids (UUIDv7, RFC 9562) generated in the client.

New rows land at the right edge of the primary-key index instead of on a
random leaf page, so inserts are faster and the primary key smaller than
with random (v4) ids; `make bench` measures both (docs/performance.md). Ids
from one process are strictly increasing, so jobs created in one call sort
in the order they were given even when they share ``created_at``.

Layout: 48-bit Unix time in milliseconds, version 7, then a 74-bit counter
(``rand_a`` and ``rand_b``) that starts at a random value each millisecond
and is incremented for every further id in the same millisecond (RFC 9562
section 6.2, method 2, with a random start).

The random starts come from `os.urandom` a block at a time (400 starts per
read, a system call), not one read per millisecond. A forked child uses
neither its parent's unused starts nor its counter (`os.register_at_fork`):
the two processes would otherwise hand out the same ids.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Final
from uuid import UUID

__all__ = ["uuid7", "uuid7_at", "uuid7_batch"]

_VERSION_AND_VARIANT: Final = (0x7 << 76) | (0b10 << 62)
_LOW_62: Final = (1 << 62) - 1
_COUNTER_BITS: Final = 74
# The random start leaves the top bit clear, so a millisecond can hand out
# at least 2**73 ids before the counter would overflow.
_START_BITS: Final = _COUNTER_BITS - 1

_START_BYTES: Final = (_START_BITS + 7) // 8
_RANDOM_BLOCK: Final = 400 * _START_BYTES
"""Bytes read from `os.urandom` at a time: the random starts of 400 milliseconds."""

_lock = threading.Lock()
_last_ms = -1
_next_counter = 0
# Random starts still to use, read from one os.urandom block (changed in place, under _lock).
_starts: Final[list[int]] = []


def _reserve(count: int) -> tuple[int, int]:
    """(milliseconds, first counter) for ``count`` consecutive ids."""
    global _last_ms, _next_counter  # the process-wide monotonic clock state
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms, _next_counter = now_ms, _starts.pop() if _starts else _new_starts()
        counter = _next_counter
        _next_counter += count
        if _next_counter >> _COUNTER_BITS:  # pragma: no cover - needs 2**73 ids in one ms
            _last_ms, _next_counter = _last_ms + 1, _starts.pop() if _starts else _new_starts()
            counter = _next_counter
            _next_counter += count
        return _last_ms, counter


def _new_starts() -> int:
    """Fill ``_starts`` from a new `os.urandom` block and take one (called under ``_lock``).

    Each start is 73 random bits, as `random.SystemRandom().getrandbits(73)`
    gives them: 10 bytes, the lowest 7 bits dropped.
    """
    block = os.urandom(_RANDOM_BLOCK)
    drop = _START_BYTES * 8 - _START_BITS
    _starts[:] = [
        int.from_bytes(block[at : at + _START_BYTES], "big") >> drop
        for at in range(0, _RANDOM_BLOCK, _START_BYTES)
    ]
    return _starts.pop()


def _after_fork_in_child() -> None:
    """Run in a forked child: drop the parent's unused random starts, leave its counter.

    The child would otherwise hand out the parent's next ids: the same
    counter in the same millisecond, the same buffered random start in the
    next. It stays above every id it inherited (monotonic, as in any process),
    a random jump of up to 2**64 ahead of where the parent goes on counting.
    The lock is new: a thread of the parent may have held it at the fork.
    """
    global _lock, _next_counter
    _lock = threading.Lock()
    _starts.clear()
    _next_counter += 1 + int.from_bytes(os.urandom(8), "big")


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _compose(ms: int, counter: int) -> UUID:
    return UUID(
        int=(ms << 80) | _VERSION_AND_VARIANT | ((counter >> 62) << 64) | (counter & _LOW_62)
    )


def uuid7() -> UUID:
    """A new UUIDv7, greater than every id this process generated before."""
    ms, counter = _reserve(1)
    return _compose(ms, counter)


def uuid7_batch(count: int) -> list[UUID]:
    """``count`` new, strictly increasing UUIDv7s."""
    ms, start = _reserve(count)
    base = (ms << 80) | _VERSION_AND_VARIANT
    return [
        UUID(int=base | ((counter >> 62) << 64) | (counter & _LOW_62))
        for counter in range(start, start + count)
    ]


def uuid7_at(ms: int, random_bits: int) -> UUID:
    """A UUIDv7 for a given time (ms since the epoch) and 74 given bits (seeding)."""
    return _compose(ms, random_bits & ((1 << _COUNTER_BITS) - 1))
