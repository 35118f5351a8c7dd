"""Per-partition timers: one due time per key; replaced and cancelled timers never fire."""

from __future__ import annotations

import random

from streams.engine.timers import Timers


def test_a_timer_fires_once_at_its_due_time() -> None:
    timers = Timers()
    timers.set(b"k", 100)
    assert len(timers) == 1 and timers.next_due_ms() == 100
    assert timers.pop_due(99) == []
    assert timers.pop_due(100) == [b"k"]
    assert timers.pop_due(10_000) == [] and len(timers) == 0 and timers.next_due_ms() == 0


def test_setting_a_key_again_replaces_its_timer() -> None:
    timers = Timers()
    timers.set(b"later", 100)
    timers.set(b"later", 200)
    timers.set(b"sooner", 200)
    timers.set(b"sooner", 50)
    assert len(timers) == 2 and timers.next_due_ms() == 50
    assert timers.pop_due(150) == [b"sooner"]
    assert timers.pop_due(199) == []  # the replaced 100 does not fire
    assert timers.pop_due(1_000) == [b"later"]  # nor does the replaced 200 of "sooner"


def test_setting_the_same_due_time_twice_fires_once() -> None:
    timers = Timers()
    timers.set(b"k", 100)
    timers.set(b"k", 100)
    timers.set(b"k", 200)
    timers.set(b"k", 100)  # back to a due time with a stale entry of its own in the heap
    assert timers.pop_due(1_000) == [b"k"]
    assert timers.pop_due(1_000) == []


def test_zero_or_negative_cancels() -> None:
    timers = Timers()
    timers.set(b"a", 100)
    timers.set(b"b", 100)
    timers.set(b"a", 0)
    timers.set(b"b", -5)
    timers.set(b"never-set", 0)
    assert len(timers) == 0 and timers.next_due_ms() == 0
    assert timers.pop_due(1_000) == []
    timers.set(b"a", 100)  # set again after a cancel: fires once, at its new time
    assert timers.pop_due(1_000) == [b"a"] and timers.pop_due(1_000) == []


def test_pop_due_gives_the_earliest_first_and_at_most_limit() -> None:
    timers = Timers()
    for key, due in [(b"c", 30), (b"a", 10), (b"e", 50), (b"b", 20), (b"d", 30), (b"late", 999)]:
        timers.set(key, due)
    timers.set(b"a", 40)  # a stale entry at 10 must not count against the limit
    assert timers.pop_due(100, limit=2) == [b"b", b"c"]
    assert timers.pop_due(100, limit=2) == [b"d", b"a"]  # equal due times: key order
    assert timers.pop_due(100) == [b"e"]
    assert len(timers) == 1 and timers.next_due_ms() == 999


def test_next_due_skips_replaced_and_cancelled_timers() -> None:
    timers = Timers()
    timers.set(b"a", 10)
    timers.set(b"b", 20)
    timers.set(b"c", 30)
    timers.set(b"a", 0)
    timers.set(b"b", 25)
    assert timers.next_due_ms() == 25
    assert timers.pop_due(25) == [b"b"] and timers.next_due_ms() == 30


def test_heap_compaction_keeps_the_right_due_times() -> None:
    rng = random.Random(7)
    timers = Timers()
    expected: dict[bytes, int] = {}
    keys = [f"k{i}".encode() for i in range(10)]
    for _ in range(5_000):
        key = rng.choice(keys)
        due = rng.choice([0, *range(1, 1_000)])
        timers.set(key, due)
        if due > 0:
            expected[key] = due
        else:
            expected.pop(key, None)
        # Replaced entries are dropped when they dominate: the heap stays a few times the live timers.
        assert len(timers._heap) <= max(64, 4 * len(timers)) + 1  # noqa: SLF001 - the heap's size is the point
    assert len(timers) == len(expected)
    assert timers.next_due_ms() == min(expected.values(), default=0)
    fired: list[tuple[int, bytes]] = []
    for now_ms in range(0, 1_001, 7):
        fired += [(now_ms, key) for key in timers.pop_due(now_ms)]
    by_key = {key: now_ms for now_ms, key in fired}
    assert len(fired) == len(by_key) == len(expected)  # each live timer once, no stale one
    assert all(expected[key] <= now_ms < expected[key] + 7 for key, now_ms in by_key.items())
    assert len(timers) == 0 and timers.next_due_ms() == 0
