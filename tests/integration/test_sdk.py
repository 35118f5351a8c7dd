"""The connector SDK on the real broker: what it sends lands where its state lives and a worker applies it."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest import events as ev
from streams.contract.codec import Codec
from streams.contract.keys import order_key, partition_for
from streams.contract.schema_registry import SchemaRegistry
from streams.contract.topics import ensure_topics
from streams.engine.topicreader import read_all
from streams.sdk import Delivery, StockflowProducer
from streams.settings import Settings
from tests.helpers import reservation_decisions, wait_for, wait_stock
from tests.unit.contract.registry_stub import registry_stub

pytestmark = pytest.mark.broker


def owned_by_its_key(settings: Settings, delivery: Delivery, topic: str) -> bool:
    return delivery.topic == settings.topic(topic) and delivery.partition == partition_for(
        delivery.key.encode("utf-8"), settings.partitions
    )


def test_events_sent_with_the_sdk_land_on_their_partition_and_are_applied(
    make_settings: Any, start_worker: Any
) -> None:
    settings = make_settings(safety_threshold=0)
    worker = start_worker(settings)
    skus = [f"SKU-SDK-{n}" for n in range(6)]
    orders = [("jd", f"sdk-{n}") for n in range(6)] + [("tmall", "天猫-7")]  # a non-ASCII order id too

    with StockflowProducer(settings) as producer:
        receipts = [
            producer.send_stock_adjusted(ev.stock_adjusted(sku, "WH-SH", 10, adjustment_id=f"GRN-1:{sku}"))
            for sku in skus
        ]
        stocked = [pending.result() for pending in receipts]
    assert [d.key for d in stocked] == skus
    assert all(owned_by_its_key(settings, d, "stock.adjustments") for d in stocked)
    assert len({d.partition for d in stocked}) > 1  # spread by key, not all on one partition
    for sku in skus:
        wait_stock(worker, sku, on_hand=10)

    with StockflowProducer(settings) as producer:
        placed = [
            producer.send_order_placed(ev.order_placed(channel, number, [ev.line(1, skus[n % len(skus)], 2)]))
            for n, (channel, number) in enumerate(orders)
        ]
        paid = [producer.send_payment_confirmed(ev.payment_confirmed(channel, number)) for channel, number in orders]
    # Leaving the with block flushed: every event is acknowledged, result() only reads where it landed.
    landed = [p.result(0) for p in (*placed, *paid)]
    assert all(owned_by_its_key(settings, d, "order.events") for d in landed)
    ids = [order_key(c, n) for c, n in orders]
    assert [d.key for d in landed] == ids + ids

    def all_decided() -> dict[str, Any] | None:
        decided = reservation_decisions(settings)
        return decided if set(ids) <= set(decided) else None

    decided = wait_for(all_decided, what="a reservation decision for every order")
    assert {decided[i]["outcome"] for i in ids} == {"RESERVED"}
    wait_stock(worker, skus[0], locked=4)  # orders 0 and 6 hold two units each

    with StockflowProducer(settings) as producer:
        cancelled = producer.send_order_cancelled(ev.order_cancelled(*orders[1]))
        # Refund only of all it was paid (two units), before shipment: approved at once, and the order is cancelled.
        # (Of one unit, naming no lines, it would go to customer service: a part is not the whole order.)
        refund = producer.send_refund_requested(ev.refund_requested(*orders[2], "R-SDK-1", 2 * ev.DEFAULT_PRICE_FEN,
                                                                    kind="REFUND_ONLY"))  # fmt: skip
    assert owned_by_its_key(settings, cancelled.result(0), "order.events")
    assert owned_by_its_key(settings, refund.result(0), "refund.events") and refund.result(0).key == ids[2]
    wait_for(lambda: worker.get(f"/orders/{ids[1]}").get("state") == "cancelled", what="the cancel applied")
    wait_for(lambda: worker.get(f"/orders/{ids[2]}").get("state") == "cancelled", what="the refund applied")
    wait_stock(worker, skus[1], locked=0)
    wait_stock(worker, skus[2], locked=0)
    wait_stock(worker, skus[3], locked=2)  # untouched: still held for its paid order


def test_the_sdk_writes_the_configured_wire_format(make_settings: Any) -> None:
    """STOCKFLOW_WIRE_FORMAT=confluent: Schema Registry frames on the broker. The registry here is the
    PROTOCOL STUB of tests/unit/contract/registry_stub.py (no registry server installs here): this checks
    the SDK's wiring, the framing itself is pinned by tests/unit/contract/test_wire_format.py."""
    with registry_stub() as (url, state):
        settings = make_settings(wire_format="confluent", schema_registry_url=url)
        ensure_topics(settings)
        record = ev.stock_adjusted("SKU-CF", "WH-SH", 3, adjustment_id="GRN-CF:SKU-CF")
        with StockflowProducer(settings) as producer:
            landed = producer.send_stock_adjusted(record).result()
        (raw,) = [r.value for r in read_all(settings.bootstrap, settings.topic("stock.adjustments"))]
        schema_id = int.from_bytes(raw[1:5], "big")
        assert raw[:1] == b"\x00" and state.schemas[schema_id]  # a registered id, not a fingerprint
        assert Codec(registry=SchemaRegistry(url)).decode(raw)[1] == record
        assert owned_by_its_key(settings, landed, "stock.adjustments")


def test_the_sdk_refuses_what_is_no_input_event(make_settings: Any) -> None:
    with StockflowProducer(make_settings()) as producer:
        with pytest.raises(ValueError, match="no input event"):
            producer.send("ReservationDecided", {"event_id": "x"})
        with pytest.raises(ValueError, match="channel_order_id"):
            producer.send("OrderCancelled", {**ev.order_cancelled("jd", "1"), "channel_order_id": ""})
        with pytest.raises(ValueError, match="does not fit the schema"):
            producer.send("StockAdjusted", {"event_id": "x", "sku": "S"})
