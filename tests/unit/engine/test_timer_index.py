"""Timers kept in the store's own index, only the next hour of them in memory.

Changed on purpose: every stored key's timer lived in a heap in memory, rebuilt at each assignment by
parsing every stored value. Finished orders keep a purge timer for the 30 days they are retained, so a
worker held millions of timers (~300 bytes each) and parsed millions of values on every restart."""

# ruff: noqa: SLF001 - the last test drives the engine's loop from inside, as test_loop_recovery does

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from streams.engine.processor import Context
from streams.engine.state import PartitionStore
from streams.engine.timers import Timers
from tests.unit.engine.test_loop_recovery import Broker, Stock, engine

HOUR = 3_600_000


def due_of(key: bytes, raw: bytes) -> int | None:
    """Values are their due time; keys starting with 'n' never carry a timer."""
    return None if key.startswith(b"n") else int(orjson.loads(raw))


def dumps(value: int) -> bytes:
    return orjson.dumps(value)


def test_the_index_follows_every_change_of_a_keys_due_time(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "s", due_of)
    store.apply({b"a": dumps(5), b"b": dumps(7), b"n1": dumps(1)}, 0, dues={b"a": 5, b"b": 7})
    assert list(store.due_between(0, 100)) == [(5, b"a"), (7, b"b")]
    store.apply({b"a": dumps(9), b"b": None}, 1, dues={b"a": 9, b"b": 0})  # moved, deleted
    assert list(store.due_between(0, 100)) == [(9, b"a")]
    store.apply({b"a": dumps(0)}, 2, dues={b"a": 0})  # cancelled
    assert list(store.due_between(0, 100)) == []
    assert dict(store.items()) == {b"a": dumps(0), b"n1": dumps(1)}  # the index is not business data


def test_a_restore_indexes_from_the_values_and_a_range_read_sees_only_its_range(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "s", due_of)
    store.apply({b"a": dumps(10), b"b": dumps(20), b"c": dumps(30), b"n": dumps(1)}, 5, remember=False)
    assert list(store.due_between(10, 30)) == [(20, b"b"), (30, b"c")]
    assert list(store.due_between(0, 9)) == []


def test_a_folder_from_before_the_index_gets_one_built_once(tmp_path: Path) -> None:
    old = PartitionStore(tmp_path / "s")  # written by a version without the index
    old.apply({b"a": dumps(10), b"b": dumps(20), b"n": dumps(1)}, 3)
    old.close()
    store = PartitionStore(tmp_path / "s", due_of)
    assert list(store.due_between(0, 100)) == []
    assert store.ensure_due_index() == 2
    assert list(store.due_between(0, 100)) == [(10, b"a"), (20, b"b")]
    assert store.ensure_due_index() == 0  # built: never again
    assert PartitionStore(tmp_path / "fresh", due_of).ensure_due_index() == 0  # empty: complete as it is
    wiped = store.wipe()
    assert wiped.due_of is due_of and wiped.ensure_due_index() == 0


def test_memory_holds_the_window_and_loads_what_comes_into_it() -> None:
    timers = Timers()
    timers.load([(5, b"a"), (50, b"b")], until_ms=60)
    timers.set(b"c", 500)  # beyond the window: the index has it
    timers.set(b"b", 40)
    assert len(timers) == 2 and timers.pop_due(45) == [b"a", b"b"]
    timers.load([(500, b"c")], until_ms=600)
    assert timers.pop_due(600) == [b"c"]


class Dated(Stock):
    """Every stored count is due at its value."""

    def due_ms(self, key: bytes, value: Any) -> int:
        return int(value)

    def on_timer(self, ctx: Context, key: bytes) -> None:
        ctx.store("counts").set(key, 0)
        ctx.schedule(key, 0)  # as the areas' processors do: what they store and what they schedule agree


def test_a_worker_holds_the_next_hour_of_timers_and_fires_the_rest_when_they_come(tmp_path: Path) -> None:
    broker = Broker()
    eng, proc = engine(tmp_path, broker)
    timed = Dated(name=proc.name, inputs=proc.inputs, stores=proc.stores, timer_store=proc.timer_store)
    eng.processors = [timed]
    eng.timed_by = {"counts": timed}
    store = PartitionStore(tmp_path / "counts-indexed", eng._due_of("counts"))
    eng.owned[0].stores["counts"] = eng._open[("counts", 0)] = store
    now = eng.clock.now_ms()
    month = {f"o{i}".encode(): dumps(now + 30 * 24 * HOUR + i) for i in range(5000)}  # finished orders' purges
    store.apply({**month, b"soon": dumps(now + 60_000)}, 0, remember=False)
    eng._rebuild_timers(0)
    timers = eng.owned[0].timers[proc.name]
    assert len(timers) == 1  # the month waits in the index, not in memory
    eng.clock.advance_to(31 * 24 * HOUR)
    eng._process([])  # a batch of timers alone: the month comes into the window and fires
    assert eng.stats.timers_fired == 5001
    assert all(eng.read("counts", key) == 0 for key in month)  # each ran once
    assert list(store.due_between(0, now + 365 * 24 * HOUR)) == [] and len(timers) == 0


class Silent(Stock):
    """A timer that finds nothing to do: it stores nothing and sets no new timer."""

    def on_timer(self, ctx: Context, key: bytes) -> None:
        return None


def test_a_timer_that_fired_leaves_the_index_unless_it_is_set_again(tmp_path: Path) -> None:
    """A key whose timer fired and whose processor stored nothing and set no new timer (a timer on a key
    with no value) must not come back from the index at every restart."""
    eng, proc = engine(tmp_path, Broker())
    silent = Silent(name=proc.name, inputs=proc.inputs, stores=proc.stores, timer_store=proc.timer_store)
    eng.processors, eng.timed_by = [silent], {"counts": silent}
    store = PartitionStore(tmp_path / "counts-indexed", eng._due_of("counts"))
    eng.owned[0].stores["counts"] = eng._open[("counts", 0)] = store
    soon = eng.clock.now_ms() + 60_000
    store.apply({}, 0, dues={b"ghost": soon})  # scheduled once, nothing stored under it
    eng._rebuild_timers(0)
    eng.clock.advance_to(120_000)
    eng._process([])  # fires
    assert eng.stats.timers_fired == 1 and list(store.due_between(0, soon + 1)) == []
