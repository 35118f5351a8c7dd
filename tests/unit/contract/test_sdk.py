"""The SDK's surface, without a broker: one typed method per input event, keys as the contract says."""

from __future__ import annotations

import re
import typing

import pytest

from loadtest import events as ev
from streams.contract import records
from streams.contract.topics import ALL_TOPICS
from streams.sdk import INPUT_EVENTS, StockflowProducer


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_every_event_outside_producers_write_has_a_typed_method() -> None:
    outside = {e for t in ALL_TOPICS if t.direction == "input" and t.writer.startswith("outside") for e in t.events}
    assert set(INPUT_EVENTS) == outside
    for name in outside:
        method = getattr(StockflowProducer, f"send_{_snake(name)}")
        hints = typing.get_type_hints(method)
        assert hints["record"] is getattr(records, name), name


@pytest.mark.parametrize(
    ("event", "record", "topic", "key"),
    [
        ("OrderPlaced", ev.order_placed("jd", "300012345", [ev.line(1, "S", 1)]), "order.events", "jd:300012345"),
        ("OrderCancelled", ev.order_cancelled("tmall", "天猫-1"), "order.events", "tmall:天猫-1"),
        ("RefundRequested", ev.refund_requested("pdd", "9", "R1", 100), "refund.events", "pdd:9"),
        ("StockAdjusted", ev.stock_adjusted("SKU-RED-S", "WH-SH", 5), "stock.adjustments", "SKU-RED-S"),
    ],
)
def test_each_event_goes_to_its_topic_under_its_key(event: str, record: typing.Any, topic: str, key: str) -> None:
    spec = INPUT_EVENTS[event]
    assert (spec.topic.name, spec.key_of(record)) == (topic, key)


def test_a_key_cannot_be_made_from_an_empty_id() -> None:
    with pytest.raises(ValueError, match="sku"):
        INPUT_EVENTS["StockAdjusted"].key_of({**ev.stock_adjusted("S", "WH-SH", 1), "sku": ""})
