"""Refunds on the real broker: the worker's engine runs them beside the orders and the pool."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest import events as ev
from streams.contract.keys import order_key
from streams.contract.topics import ORDER_EVENTS, REFUND_EVENTS
from streams.engine.producer import EventProducer
from streams.settings import Settings
from tests.helpers import audit_until_ok, read_topic, stock_up, wait_for, wait_stock

pytestmark = pytest.mark.broker


def refund_states(settings: Settings, refund_id: str) -> list[str]:
    return [r["state"] for t, r in read_topic(settings, "refund.states") if r["refund_id"] == refund_id]


def instructions(settings: Settings) -> list[dict[str, Any]]:
    return [r for _, r in read_topic(settings, "refund.instructions")]


def send(producer: EventProducer, topic: str, kind: str, record: Any) -> None:
    producer.send(topic, order_key(record["channel"], record["channel_order_id"]), kind, record)
    producer.flush()


def test_refunds_on_the_broker_return_pays_once_restocks_and_refund_only_cancels(
    make_settings: Any, start_worker: Any
) -> None:
    settings = make_settings(safety_threshold=0)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    stock_up(producer, worker, "SKU-RF", 5, "WH-SH")
    # A delivered order, returned within 7 days: approved and paid at once, back on hand after QC.
    for kind, record in (("OrderPlaced", ev.order_placed("jd", "100", [ev.line(1, "SKU-RF", 1)])),
                         ("PaymentConfirmed", ev.payment_confirmed("jd", "100")),
                         ("ShipmentDispatched", ev.shipment_dispatched("jd", "100", "WH-SH"))):  # fmt: skip
        send(producer, ORDER_EVENTS.name, kind, record)
    wait_stock(worker, "SKU-RF", on_hand=4)
    send(producer, ORDER_EVENTS.name, "ShipmentDelivered", ev.shipment_delivered("jd", "100"))
    wait_for(lambda: worker.get("/orders/jd:100").get("state") == "delivered", what="delivery")
    send(producer, REFUND_EVENTS.name, "RefundRequested", ev.refund_requested("jd", "100", "R-1", 9_900))
    wait_for(lambda: refund_states(settings, "jd:R-1") == ["requested", "refunding"], what="auto-approval")
    send(producer, REFUND_EVENTS.name, "ReturnReceived", ev.return_received("jd", "100", "R-1", "WH-SH"))
    wait_stock(worker, "SKU-RF", on_hand=5)
    # The same request and the same receipt again (a channel retry, a second scan): nothing more.
    send(producer, REFUND_EVENTS.name, "RefundRequested", ev.refund_requested("jd", "100", "R-1", 9_900))
    send(producer, REFUND_EVENTS.name, "ReturnReceived", ev.return_received("jd", "100", "R-1", "WH-SH"))
    # A paid order refunded before shipment: the order is cancelled and its units free again.
    send(producer, ORDER_EVENTS.name, "OrderPlaced", ev.order_placed("jd", "101", [ev.line(1, "SKU-RF", 2)]))
    send(producer, ORDER_EVENTS.name, "PaymentConfirmed", ev.payment_confirmed("jd", "101"))
    wait_stock(worker, "SKU-RF", locked=2)
    send(producer, REFUND_EVENTS.name, "RefundRequested",
         ev.refund_requested("jd", "101", "R-2", 19_800, kind="REFUND_ONLY"))  # fmt: skip
    level = wait_stock(worker, "SKU-RF", locked=0, on_hand=5)
    assert set(level["sellable"].values()) == {5}  # the returned unit sells again on every channel
    assert worker.get("/orders/jd:101")["state"] == "cancelled"
    view = worker.get("/orders/jd:100/refunds/R-1")
    assert view["state"] == "refunding" and view["restocked"] is True
    send(producer, REFUND_EVENTS.name, "RefundSettled", ev.refund_settled("jd", "100", "R-1", 9_900))
    wait_for(lambda: refund_states(settings, "jd:R-1")[-1:] == ["completed"], what="settlement")
    assert sorted(i["refund_id"] for i in instructions(settings)) == ["jd:R-1", "jd:R-2"]  # each exactly once
    returns = [r for _, r in read_topic(settings, "stock.returns")]
    assert [r["event_id"] for r in returns] == ["return:jd:R-1:1"]
    report = audit_until_ok(settings)  # the returned unit counts in the independent checker's on-hand too
    assert (report.refunds, report.refunds_paid_twice, report.refunds_lost) == (2, [], [])
