"""kill -9 the worker while orders stream in; an independent audit must find nothing wrong."""

from __future__ import annotations

import random
import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer

from loadtest import events as ev
from streams.contract.codec import codec_for
from streams.contract.keys import order_key
from streams.contract.topics import ORDER_EVENTS, STOCK_ADJUSTMENTS, WAREHOUSE_DISPATCH
from streams.engine.producer import EventProducer
from streams.kafkaconf import confluent_config
from tests.helpers import audit_problems, audit_until_ok, read_topic, wait_for

pytestmark = pytest.mark.broker
SKUS = [f"SKU-C{i:02d}" for i in range(12)]
CHANNELS = ("tmall", "jd", "douyin", "pdd", "kuaishou", "own")


def stream_orders(settings, orders: int, seconds: float, seed: int, stop: threading.Event, **producer_config) -> int:
    """Open-loop: send ``orders`` orders over ``seconds`` whatever the worker is doing."""
    rng = random.Random(seed)
    producer = EventProducer(settings, **producer_config)
    sent = 0
    started = time.monotonic()
    for i in range(orders):
        if stop.is_set():
            break
        channel = CHANNELS[i % len(CHANNELS)]
        number = f"crash-{seed}-{i}"
        key = order_key(channel, number)
        skus = rng.sample(SKUS, rng.randint(1, 3))
        lines = [ev.line(n + 1, sku, rng.randint(1, 3)) for n, sku in enumerate(skus)]
        producer.send(ORDER_EVENTS.name, key, "OrderPlaced", ev.order_placed(channel, number, lines))
        roll = rng.random()
        if roll < 0.5:
            producer.send(ORDER_EVENTS.name, key, "PaymentConfirmed", ev.payment_confirmed(channel, number))
        elif roll < 0.65:
            producer.send(ORDER_EVENTS.name, key, "OrderCancelled", ev.order_cancelled(channel, number))
        if rng.random() < 0.05:  # a channel retrying its callback
            producer.send(ORDER_EVENTS.name, key, "OrderPlaced", ev.order_placed(channel, number, lines))
        sent += 1
        ahead = started + seconds * (i + 1) / orders - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    # A broker stopped and restarted mid-stream (test_broker_outage) can take a while to take the
    # backlog on a loaded box: wait for it rather than fail the stream.
    producer.flush(120)
    producer.close()
    return sent


def ship_dispatched(settings, seed: int, stop: threading.Event, shipped: set[tuple[str, str]]) -> None:
    """The warehouse: it ships most of what stockflow pushed to it (``warehouse.dispatch``), soon after the push,
    whatever the worker is going through. Every shipment it reports must leave the pool's shelf."""
    rng = random.Random(seed)
    codec = codec_for(settings)
    producer = EventProducer(settings)
    consumer = Consumer({**confluent_config(settings), "group.id": f"wms-{uuid.uuid4().hex}",
                         "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([settings.topic(WAREHOUSE_DISPATCH.name)])
    try:
        while not stop.is_set():
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            _, push = codec.decode(msg.value())
            where = (push["order_id"], push["warehouse_id"])
            if push["action"] != "DISPATCH" or where in shipped or rng.random() >= 0.6:
                continue
            shipped.add(where)
            shipment = ev.shipment_dispatched(push["channel"], push["channel_order_id"], push["warehouse_id"])
            shipment["event_id"] = f"shipped:{push['order_id']}:{push['warehouse_id']}"
            producer.send(ORDER_EVENTS.name, push["order_id"], "ShipmentDispatched", shipment)
        producer.flush(120)
    finally:
        consumer.close()
        producer.close()


@pytest.mark.parametrize(
    ("seed", "kill_after", "guarantee"),
    [(1, (2.0, 4.5, 3.0), "exactly_once"), (2, (6.0, 1.5, 5.0), "at_least_once")],
)
def test_kill_9_mid_stream_leaves_no_drift(
    seed: int, kill_after: tuple[float, ...], guarantee: str, make_settings, start_worker, tmp_path
) -> None:
    """Both of the engine's guarantees: with transactions nothing is repeated; without, repeats are
    recognised by the rules, and either way the independent audit finds nothing wrong."""
    settings = make_settings(safety_threshold=0, session_timeout_s=6, processing_guarantee=guarantee)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    for sku in SKUS:
        producer.send(STOCK_ADJUSTMENTS.name, sku, "StockAdjusted", ev.stock_adjusted(sku, "WH-SH", 60))
    producer.flush()
    wait_for(lambda: all(worker.get(f"/stock/{sku}").get("on_hand") == 60 for sku in SKUS), what="stock")

    stop, wms_stop = threading.Event(), threading.Event()
    result: dict[str, int] = {}
    shipped: set[tuple[str, str]] = set()
    sender = threading.Thread(target=lambda: result.update(sent=stream_orders(settings, 1200, 20.0, seed, stop)))
    wms = threading.Thread(target=ship_dispatched, args=(settings, seed, wms_stop, shipped))
    sender.start()
    wms.start()
    kills = 0
    try:
        for delay in kill_after:
            time.sleep(delay)
            worker.kill9()  # no shutdown code runs: uncommitted offsets, unflushed sends, open RocksDB
            kills += 1
            worker = start_worker(settings, name=f"restart{kills}")
    finally:
        sender.join()
        time.sleep(5)  # the last pushes reach the warehouse
        wms_stop.set()
        wms.join()
    assert kills == len(kill_after) and result["sent"] == 1200 and shipped

    report = audit_until_ok(settings, timeout_s=180)
    summary = report.summary()
    details = audit_problems(report)
    if report.lost_orders:
        lost = report.lost_orders[0]
        details["lost_order_view"] = worker.get(f"/orders/{lost}")
        for name in ("order.events", "order.states", "stock.hold-commands", "stock.hold-results", "deadletters"):
            details[name] = [
                (
                    t,
                    {
                        k: v
                        for k, v in r.items()
                        if k in ("event_id", "state", "outcome", "action", "line_no", "reason", "source_offset")
                    },
                )
                for t, r in read_topic(settings, name)
                if lost in str(r)
            ]
    assert report.ok, f"{summary} {details}"
    assert summary["lost_orders"] == 0 and summary["oversold_units"] == 0
    assert summary["double_holds"] == 0 and summary["rejected_but_held"] == 0
    assert summary["skus_drifted"] == 0
    assert summary["orders_placed"] == 1200
    assert summary["orders_decided"] + summary["orders_cancelled_before_decision"] == 1200
    assert summary["shipped_not_deducted"] == 0
    print(f"crash test seed={seed} {guarantee}: {kills} kills, {len(shipped)} shipments, {summary}")
