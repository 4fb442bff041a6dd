"""cira_db._repositories._ids: time-ordered UUIDv7s, increasing in a process and across a fork."""

from __future__ import annotations

import os
import select
import signal
import threading
import time
import uuid

import pytest

from cira_db._repositories import _ids
from cira_db._repositories._ids import uuid7, uuid7_at, uuid7_batch

# A fixed millisecond in the past: ids made under it cannot meet the process's real ones.
FROZEN_MS = 1_700_000_000_000


def _counter(value: uuid.UUID) -> int:
    """The 74-bit counter of a UUIDv7 (rand_a, then rand_b)."""
    return ((value.int >> 64) & 0xFFF) << 62 | (value.int & ((1 << 62) - 1))


def test_ids_are_version_7_with_the_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    made = [uuid7(), *uuid7_batch(3)]
    after = time.time_ns() // 1_000_000
    for value in made:
        assert value.version == 7
        assert value.variant == uuid.RFC_4122
        assert before <= value.int >> 80 <= after


def test_ids_of_a_process_strictly_increase() -> None:
    made: list[uuid.UUID] = []
    for n in range(2000):
        made.extend(uuid7_batch(n % 5) if n % 3 else [uuid7()])
    assert made == sorted(made)
    assert len(set(made)) == len(made)


def test_uuid7_at_is_the_time_and_bits_given() -> None:
    value = uuid7_at(FROZEN_MS, (1 << 74) - 1)
    assert value.int >> 80 == FROZEN_MS
    assert _counter(value) == (1 << 74) - 1
    assert value.version == 7


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ids' clock at ``FROZEN_MS``; the test moves it by changing ``clock[0]``.

    The generator's state is set aside and put back after the test, so its
    ids in the past leave the process's later ids as they were.
    """
    now = [FROZEN_MS]
    monkeypatch.setattr(time, "time_ns", lambda: now[0] * 1_000_000)
    monkeypatch.setattr(_ids, "_last_ms", -1)
    monkeypatch.setattr(_ids, "_next_counter", 0)
    return now


def test_each_millisecond_starts_at_a_new_random_counter_from_the_buffered_block(
    clock: list[int],
) -> None:
    starts: list[int] = []
    for _ in range(2 * 400 + 3):  # the random starts of more than two blocks
        clock[0] += 1
        first, second = uuid7(), uuid7()
        assert first.int >> 80 == second.int >> 80 == clock[0]
        assert _counter(second) == _counter(first) + 1
        assert _counter(first) < 1 << 73  # the top bit clear: room to count on
        starts.append(_counter(first))
    assert len(set(starts)) == len(starts)
    assert max(starts) >= 1 << 65  # random, not small counts (odds against: 2**-2400)


def test_threads_share_one_increasing_sequence(clock: list[int]) -> None:
    made: list[list[uuid.UUID]] = [[] for _ in range(4)]

    def work(mine: list[uuid.UUID]) -> None:
        for n in range(500):
            mine.extend(uuid7_batch(2) if n % 2 else [uuid7()])

    threads = [threading.Thread(target=work, args=(mine,)) for mine in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [value for mine in made for value in mine]
    assert len(set(every)) == len(every) == 4 * 750
    for mine in made:
        assert mine == sorted(mine)


# Python 3.12+ warns that forking a process with threads may deadlock the child (pytest's
# warnings are errors): these tests fork with threads on purpose or among a suite's threads.
_forks = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform"),
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]


def _in_a_child(count: int, clock: list[int]) -> list[uuid.UUID]:
    """``count`` ids from a forked child in this millisecond, then ``count`` in the next."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child (coverage follows the parent)
        os.close(read)
        try:
            made = [uuid7() for _ in range(count)]
            clock[0] += 1
            made += uuid7_batch(count)
            os.write(write, b"".join(value.bytes for value in made))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        if not select.select([pipe], [], [], 30)[0]:  # a hung child fails the test, not the run
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child made no ids")
        data = pipe.read()
    assert os.waitpid(pid, 0)[1] == 0
    return [uuid.UUID(bytes=data[at : at + 16]) for at in range(0, len(data), 16)]


@_forks[0]
@_forks[1]
def test_a_forked_child_repeats_none_of_its_parents_ids(clock: list[int]) -> None:
    before = [uuid7() for _ in range(3)]  # the counter and the random block are in use
    start_ms = clock[0]
    child = _in_a_child(5, clock)
    # The parent goes on in the same millisecond, then the next, as the child did.
    parent = [uuid7() for _ in range(5)]
    clock[0] += 1
    parent += uuid7_batch(5)

    assert len(child) == len(parent) == 10
    every = before + parent + child
    assert len(set(every)) == len(every)  # neither repeats the other, nor itself
    # Each process is still increasing from the ids made before the fork.
    assert before + child == sorted(before + child)
    assert before + parent == sorted(before + parent)
    assert {value.int >> 80 for value in child} == {start_ms, start_ms + 1}
    # In the next millisecond the child drew its own random start, not the parent's next one.
    assert _counter(child[5]) != _counter(parent[5])


@_forks[0]
@_forks[1]
def test_a_child_forked_while_another_thread_holds_the_lock_can_make_ids(
    clock: list[int],
) -> None:
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with _ids._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        child = _in_a_child(1, clock)  # would hang on the copied, held lock
    finally:
        release.set()
        holder.join()
    assert len(child) == 2
