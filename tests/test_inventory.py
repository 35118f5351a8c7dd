"""The stock pool against the real broker: races, all-or-nothing, duplicates, timeouts, VIP."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from loadtest import events as ev
from streams.producer import EventProducer
from streams.topics import ORDER_EVENTS, STOCK_ADJUSTMENTS
from tests.helpers import read_topic, wait_for

pytestmark = pytest.mark.broker
CHANNELS = ("tmall", "jd", "douyin", "pdd", "kuaishou")


def reservations(settings) -> dict[str, dict[str, Any]]:
    return {r["order_id"]: r for t, r in read_topic(settings, "reservation.results") if t == "ReservationDecided"}


def wait_reservations(settings, n: int, timeout_s: float = 90) -> dict[str, dict[str, Any]]:
    return wait_for(lambda: (found := reservations(settings)) and len(found) >= n and found,
                    timeout_s=timeout_s, what=f"{n} reservation decisions")


def stock(worker, sku: str) -> dict[str, Any]:
    return worker.get(f"/stock/{sku}")


def test_five_channels_race_for_one_sku(make_settings, start_worker) -> None:
    settings = make_settings(safety_threshold=0, threshold_hysteresis=0)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    producer.send(STOCK_ADJUSTMENTS.name, "SKU-HOT", "StockAdjusted",
                  ev.stock_adjusted("SKU-HOT", "WH-SH", 100, adjustment_id="recv-1"))
    producer.flush()
    # 1,000 units requested: 250 orders of 1-7 units, interleaved across five channels.
    sizes = itertools.cycle([1, 2, 3, 4, 5, 6, 7])
    requested = 0
    orders = []
    for i in range(250):
        channel = CHANNELS[i % 5]
        qty = next(sizes) if requested < 1000 - 7 else 1000 - requested
        if qty <= 0:
            break
        requested += qty
        number = f"race-{i}"
        orders.append((ev.order_id(channel, number), qty))
        producer.send(ORDER_EVENTS.name, ev.order_id(channel, number), "OrderPlaced",
                      ev.order_placed(channel, number, [ev.line(1, "SKU-HOT", qty)]))
    producer.flush()
    decided = wait_reservations(settings, len(orders))
    reserved = sum(qty for oid, qty in orders if decided[oid]["outcome"] == "RESERVED")
    rejected = [decided[oid] for oid, _ in orders if decided[oid]["outcome"] == "REJECTED"]
    assert requested >= 1000 - 7
    assert reserved <= 100
    # Every refusal was for lack of stock, and nothing was left on the table that could serve it.
    assert all(r["lines"][0]["reason"] == "insufficient_stock" for r in rejected)
    smallest_rejected = min(r["lines"][0]["qty"] for r in rejected)
    assert 100 - reserved < smallest_rejected
    level = wait_for(lambda: (s := stock(worker, "SKU-HOT")) and s["locked"] == reserved and s, what="pool")
    assert level["available"] == 100 - reserved and level["on_hand"] == 100
    assert level["available"] >= 0


def test_multi_line_order_is_all_or_nothing(make_settings, start_worker) -> None:
    settings = make_settings(safety_threshold=0)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    producer.send(STOCK_ADJUSTMENTS.name, "SKU-A", "StockAdjusted", ev.stock_adjusted("SKU-A", "WH-SH", 10))
    producer.send(STOCK_ADJUSTMENTS.name, "SKU-B", "StockAdjusted", ev.stock_adjusted("SKU-B", "WH-SH", 1))
    producer.send(ORDER_EVENTS.name, "jd:multi-1", "OrderPlaced",
                  ev.order_placed("jd", "multi-1", [ev.line(1, "SKU-A", 3), ev.line(2, "SKU-B", 2)]))
    producer.send(ORDER_EVENTS.name, "jd:unknown-1", "OrderPlaced",
                  ev.order_placed("jd", "unknown-1", [ev.line(1, "SKU-A", 1), ev.line(2, "SKU-NOPE", 1)]))
    producer.flush()
    decided = wait_reservations(settings, 2)
    multi = decided["jd:multi-1"]
    assert multi["outcome"] == "REJECTED"
    assert [(ln["line_no"], ln["outcome"], ln["reason"]) for ln in multi["lines"]] == [
        (1, "HELD", ""), (2, "REFUSED", "insufficient_stock")]
    assert decided["jd:unknown-1"]["lines"][1]["reason"] == "unknown_sku"
    # The first line's hold was given back: nothing stays locked on SKU-A.
    wait_for(lambda: stock(worker, "SKU-A")["locked"] == 0, what="SKU-A released")
    assert stock(worker, "SKU-A")["available"] == 10


def test_every_event_sent_twice_changes_nothing(make_settings, start_worker) -> None:
    settings = make_settings(safety_threshold=0)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    events = [
        (STOCK_ADJUSTMENTS.name, "SKU-D", "StockAdjusted", ev.stock_adjusted("SKU-D", "WH-SH", 20, adjustment_id="d-1")),
        (STOCK_ADJUSTMENTS.name, "SKU-D", "StockAdjusted", ev.stock_adjusted("SKU-D", "WH-GZ", 5, adjustment_id="d-2")),
        (ORDER_EVENTS.name, "pdd:dup-1", "OrderPlaced", ev.order_placed("pdd", "dup-1", [ev.line(1, "SKU-D", 4)])),
        (ORDER_EVENTS.name, "pdd:dup-2", "OrderPlaced", ev.order_placed("pdd", "dup-2", [ev.line(1, "SKU-D", 3)])),
        (ORDER_EVENTS.name, "pdd:dup-1", "PaymentConfirmed", ev.payment_confirmed("pdd", "dup-1")),
        (ORDER_EVENTS.name, "pdd:dup-2", "OrderCancelled", ev.order_cancelled("pdd", "dup-2")),
    ]
    for topic, key, kind, record in events:
        producer.send(topic, key, kind, record)
        producer.send(topic, key, kind, record)
    producer.flush()
    # dup-2 is cancelled before its holds are answered: it ends cancelled, with no reservation.
    assert wait_reservations(settings, 1)["pdd:dup-1"]["outcome"] == "RESERVED"

    def settled() -> dict[str, Any] | None:
        level = stock(worker, "SKU-D")
        return level if level["locked"] == 4 and level["sold"] == 4 else None

    level = wait_for(settled, what="one paid hold of 4")
    assert level["on_hand"] == 25 and level["available"] == 21
    states = [r for t, r in read_topic(settings, "order.states") if r["order_id"] == "pdd:dup-2"]
    assert states[-1]["state"] == "cancelled"
    assert "pdd:dup-2" not in reservations(settings)
    results = [r for t, r in read_topic(settings, "stock.hold-results") if r["order_id"] == "pdd:dup-1"]
    held = {r["event_id"] for r in results if r["outcome"] == "HELD"}
    assert held == {"pdd:dup-1#1:RESERVE:HELD"}
