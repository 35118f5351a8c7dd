"""A batch publishes only the newest record per key on topics read as tables (``newest_per_batch``)."""

from __future__ import annotations

from streams.contract.topics import ALL_TOPICS, ORDER_STATES, RESERVATION_RESULTS
from streams.engine.loop import newest_per_batch
from streams.engine.processor import Output


def out(topic: str, key: str, state: str) -> Output:
    return Output(topic, key.encode(), "E", {"state": state})


def test_only_the_newest_record_of_a_key_is_kept_and_other_topics_are_untouched() -> None:
    outputs = [
        out(ORDER_STATES.name, "a", "placed"),
        out(RESERVATION_RESULTS.name, "a", "RESERVED"),
        out(ORDER_STATES.name, "b", "placed"),
        out(ORDER_STATES.name, "a", "reserved"),
        out(RESERVATION_RESULTS.name, "a", "again"),
    ]
    kept = newest_per_batch(outputs)
    assert [(o.topic, o.key, o.record["state"]) for o in kept] == [
        (RESERVATION_RESULTS.name, b"a", "RESERVED"),
        (ORDER_STATES.name, b"b", "placed"),
        (ORDER_STATES.name, b"a", "reserved"),
        (RESERVATION_RESULTS.name, b"a", "again"),
    ]


def test_a_batch_without_such_topics_is_returned_as_is() -> None:
    outputs = [out(RESERVATION_RESULTS.name, "a", "x")]
    assert newest_per_batch(outputs) is outputs


def test_only_compacted_topics_may_drop_superseded_records() -> None:
    assert all(t.compacted for t in ALL_TOPICS if t.newest_per_batch)
