"""A batch's view of a partition store: its own writes and deletes first, nothing stored until commit."""

from __future__ import annotations

from typing import Any

import orjson

from streams.engine.state import JSON, MemoryStore, Serde, StoreTransaction


def committed(data: dict[bytes, Any]) -> MemoryStore:
    store = MemoryStore()
    store.apply({k: orjson.dumps(v) for k, v in data.items()}, 0)
    return store


class CountingSerde:
    """JSON, counting how often each direction runs."""

    def __init__(self) -> None:
        self.dumped = 0
        self.loaded = 0

    def dumps(self, value: Any) -> bytes:
        self.dumped += 1
        return orjson.dumps(value)

    def loads(self, raw: bytes) -> Any:
        self.loaded += 1
        return orjson.loads(raw)

    def serde(self) -> Serde[Any]:
        return Serde(self.dumps, self.loads)


def test_reads_see_the_batchs_own_writes_and_deletes() -> None:
    store = committed({b"a": 1, b"b": 2})
    txn: StoreTransaction[Any] = StoreTransaction(store, JSON)
    assert (txn.get(b"a"), txn.get(b"b"), txn.get(b"missing")) == (1, 2, None)
    txn.set(b"a", 10)
    txn.delete(b"b")
    txn.set(b"new", {"x": 1})
    assert (txn.get(b"a"), txn.get(b"b"), txn.get(b"new")) == (10, None, {"x": 1})
    txn.delete(b"new")
    txn.set(b"b", 20)  # set again after a delete
    assert (txn.get(b"new"), txn.get(b"b")) == (None, 20)
    # Nothing reaches the store before the batch commits.
    assert (store.get(b"a"), store.get(b"b"), store.get(b"new")) == (b"1", b"2", None)


def test_a_key_is_parsed_once_per_batch_and_read_as_the_same_object() -> None:
    counting = CountingSerde()
    txn: StoreTransaction[Any] = StoreTransaction(committed({b"a": {"n": 1}}), counting.serde())
    first = txn.get(b"a")
    assert txn.get(b"a") is first and counting.loaded == 1
    assert txn.get(b"missing") is None and txn.get(b"missing") is None and counting.loaded == 1


def test_changes_serialise_each_dirty_key_once_with_its_final_value() -> None:
    counting = CountingSerde()
    store = committed({b"a": {"n": 0}, b"gone": 1, b"read-only": 3})
    txn: StoreTransaction[Any] = StoreTransaction(store, counting.serde())
    assert not txn
    txn.get(b"read-only")
    assert not txn  # a read is no change
    value = txn.get(b"a")
    assert value is not None
    for n in range(1, 1_001):
        value["n"] = n
        txn.set(b"a", value)
    value["n"] = 2_000  # changed in place after its last set: still part of this batch
    txn.delete(b"gone")
    txn.set(b"born-and-gone", 5)
    txn.delete(b"born-and-gone")
    assert txn and counting.dumped == 0  # serialised only when the changelog records are made
    changes = txn.changes()
    assert changes == {b"a": b'{"n":2000}', b"gone": None, b"born-and-gone": None}
    assert counting.dumped == 1
    store.apply(changes, 7)
    assert store.changelog_offset == 7
    assert dict(store.items()) == {b"a": b'{"n":2000}', b"read-only": b"3"}


def test_scan_merges_committed_and_batch_state_and_omits_deleted_keys() -> None:
    store = committed({b"h\x00S\x00o1": 1, b"h\x00S\x00o2": 2, b"h\x00S\x00o3": 3, b"h\x00T\x00o1": 9,
                       b"s\x00S": {"locked": 3}})  # fmt: skip
    txn: StoreTransaction[Any] = StoreTransaction(store, JSON)
    txn.set(b"h\x00S\x00o2", 20)
    txn.delete(b"h\x00S\x00o3")
    txn.set(b"h\x00S\x00o0", 0)
    txn.set(b"h\x00S\x00o4", 4)
    txn.delete(b"h\x00S\x00o4")
    txn.delete(b"h\x00S\x00never-stored")
    txn.set(b"h\x00T\x00o2", 8)  # another SKU's key: not under the prefix
    assert txn.scan(b"h\x00S\x00") == [(b"h\x00S\x00o0", 0), (b"h\x00S\x00o1", 1), (b"h\x00S\x00o2", 20)]
    assert txn.scan(b"h\x00T\x00") == [(b"h\x00T\x00o1", 9), (b"h\x00T\x00o2", 8)]
    assert txn.scan(b"x") == []
    assert store.get(b"h\x00S\x00o3") == b"3"  # the delete is the batch's alone until it commits


def test_scan_returns_the_objects_the_batch_already_read() -> None:
    txn: StoreTransaction[Any] = StoreTransaction(committed({b"p1": {"n": 1}, b"p2": {"n": 2}}), JSON)
    read = txn.get(b"p1")
    assert read is not None
    read["n"] = 10  # changed in place, not yet set: the batch still sees its own object
    scanned = dict(txn.scan(b"p"))
    assert scanned[b"p1"] is read and scanned == {b"p1": {"n": 10}, b"p2": {"n": 2}}


def test_a_scanned_value_is_the_object_later_reads_get_and_is_parsed_once() -> None:
    counting = CountingSerde()
    txn: StoreTransaction[Any] = StoreTransaction(committed({b"p1": {"n": 1}, b"p2": {"n": 2}}), counting.serde())
    scanned = dict(txn.scan(b"p"))
    scanned[b"p1"]["n"] = 10  # changed in place through the scan: a get in the same batch sees it
    assert txn.get(b"p1") is scanned[b"p1"] and txn.get(b"p1") == {"n": 10}
    assert dict(txn.scan(b"p"))[b"p2"] is scanned[b"p2"] and counting.loaded == 2


def test_memory_store_scans_in_key_order_and_applies_deletes() -> None:
    store = committed({b"b2": 2, b"a": 0, b"b1": 1, b"c": 3})
    assert [k for k, _ in store.scan(b"b")] == [b"b1", b"b2"]
    store.apply({b"b1": None, b"b3": b"3", b"absent": None}, -1)
    assert [k for k, _ in store.scan(b"b")] == [b"b2", b"b3"] and store.changelog_offset == 0


def test_a_reader_sees_the_owners_writes_of_the_same_batch_and_cannot_write() -> None:
    from streams.engine.state import ReadOnlyStore

    txn: StoreTransaction[Any] = StoreTransaction(committed({b"o1": {"state": "paid"}}), JSON)
    reader = ReadOnlyStore(txn)
    txn.set(b"o1", {"state": "routed"})
    assert reader.get(b"o1") == {"state": "routed"}
    assert not hasattr(reader, "set") and not hasattr(reader, "delete")


def test_an_engine_refuses_to_read_a_store_none_of_its_processors_owns() -> None:
    import pytest

    from agents.refunds.run_refunds import RunRefunds
    from streams.contract.codec import default_codec
    from streams.engine.clock import Clock
    from streams.engine.loop import Engine
    from streams.settings import Settings

    settings = Settings()
    with pytest.raises(ValueError, match="orders_by_id"):
        Engine(settings, default_codec(), Clock(), [RunRefunds.from_settings(settings)])


def test_recent_values_answer_reads_and_stay_bounded(tmp_path, monkeypatch) -> None:
    from streams.engine import state

    monkeypatch.setattr(state, "RECENT_BYTES", 6)  # three one-byte keys with one-byte values
    store = state.PartitionStore(tmp_path / "p0")
    store.apply({b"a": b"1", b"b": b"2"}, 0)
    store.apply({b"c": b"3", b"a": None}, 1)
    store.apply({b"d": b"4"}, 2)
    store.apply({b"e": b"5"}, 3, remember=False)  # a restore: written, not kept in memory
    assert [store.get(k) for k in (b"a", b"b", b"c", b"d", b"e")] == [None, b"2", b"3", b"4", b"5"]
    assert list(store._recent) == [b"c", b"a", b"d"]  # noqa: SLF001 - b, written first, left the memory, not RocksDB
    store.forget_recent()
    assert store.get(b"d") == b"4"
    store.close()
    reopened = state.PartitionStore(tmp_path / "p0")
    assert [reopened.get(k) for k in (b"a", b"b", b"c", b"d", b"e")] == [None, b"2", b"3", b"4", b"5"]
    assert reopened.changelog_offset == 3
    reopened.close()
