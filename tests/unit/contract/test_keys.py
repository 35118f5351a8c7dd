"""Order keys, no broker: one format, and the partition an order's events land on."""

from __future__ import annotations

from loadtest import events as ev
from streams.contract.keys import order_key, partition_for
from streams.contract.topics import ORDER_EVENTS


def test_an_order_is_keyed_by_channel_and_channel_order_id() -> None:
    assert order_key("jd", "123") == "jd:123"
    assert order_key("tmall", "T:1") == "tmall:T:1"  # the channel's id is taken as it is
    assert "'<channel>:<channel_order_id>'" in ORDER_EVENTS.key  # what the contract table tells producers


def test_event_ids_of_generated_events_carry_the_order_key() -> None:
    placed = ev.order_placed("pdd", "9", [ev.line(1, "S", 1)])
    assert placed["event_id"] == f"placed:{order_key('pdd', '9')}"


def test_partition_for_is_stable_and_in_range() -> None:
    key = order_key("douyin", "42").encode()
    first = partition_for(key, 8)
    assert 0 <= first < 8 and all(partition_for(key, 8) == first for _ in range(3))
    assert partition_for(key, 1) == 0


def test_partition_for_remembers_recent_keys_within_a_bound() -> None:
    partition_for.cache_clear()
    partition_for(b"SKU-HOT", 8)
    partition_for(b"SKU-HOT", 8)
    info = partition_for.cache_info()
    assert info.hits == 1 and info.misses == 1 and info.maxsize is not None
