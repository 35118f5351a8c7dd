"""kill -9 the worker while orders stream in; an independent audit must find nothing wrong."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from agents.audit.checker import audit
from loadtest import events as ev
from streams.contract.keys import order_key, partition_for
from streams.contract.topics import ORDER_EVENTS, STOCK_ADJUSTMENTS, ensure_topics
from streams.engine.producer import EventProducer
from tests.helpers import read_topic, wait_for

pytestmark = pytest.mark.broker
SKUS = [f"SKU-C{i:02d}" for i in range(12)]
CHANNELS = ("tmall", "jd", "douyin", "pdd", "kuaishou", "own")


def stream_orders(settings, orders: int, seconds: float, seed: int, stop: threading.Event) -> int:
    """Open-loop: send ``orders`` orders over ``seconds`` whatever the worker is doing."""
    rng = random.Random(seed)
    producer = EventProducer(settings)
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
    producer.flush()
    return sent


@pytest.mark.parametrize(("seed", "kill_after"), [(1, (2.0, 4.5, 3.0)), (2, (6.0, 1.5, 5.0))])
def test_kill_9_mid_stream_leaves_no_drift(
    seed: int, kill_after: tuple[float, ...], make_settings, start_worker, tmp_path
) -> None:
    # STOCKFLOW_TEST_GUARANTEE=exactly_once runs the same crash test on Faust's transactional mode.
    guarantee = os.environ.get("STOCKFLOW_TEST_GUARANTEE", "at_least_once")
    settings = make_settings(safety_threshold=0, session_timeout_s=6, processing_guarantee=guarantee)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    for sku in SKUS:
        producer.send(STOCK_ADJUSTMENTS.name, sku, "StockAdjusted", ev.stock_adjusted(sku, "WH-SH", 60))
    producer.flush()
    wait_for(lambda: all(worker.get(f"/stock/{sku}").get("on_hand") == 60 for sku in SKUS), what="stock")

    stop = threading.Event()
    result: dict[str, int] = {}
    sender = threading.Thread(target=lambda: result.update(sent=stream_orders(settings, 1200, 20.0, seed, stop)))
    sender.start()
    kills = 0
    try:
        for delay in kill_after:
            time.sleep(delay)
            worker.kill9()  # no shutdown code runs: uncommitted offsets, unflushed sends, open RocksDB
            kills += 1
            worker = start_worker(settings, name=f"restart{kills}")
    finally:
        sender.join()
    assert kills == len(kill_after) and result["sent"] == 1200

    deadline = time.monotonic() + 180
    report = audit(settings)
    while not report.ok and time.monotonic() < deadline:
        time.sleep(2)
        report = audit(settings)
    summary = report.summary()
    details = {
        "drift": [
            (
                a.sku,
                a.table_on_hand,
                a.expected_on_hand,
                a.table_open,
                a.expected_open,
                a.open_keys_missing_in_table[:3],
                a.open_keys_only_in_table[:3],
            )
            for a in report.drifted[:5]
        ],
        "lost": report.lost_orders[:5],
        "double": report.double_holds[:5],
        "rejected_held": report.rejected_but_held[:5],
        "incomplete": report.reserved_incomplete[:5],
    }
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
    repaired = sum(log.read_text(errors="replace").count("consumer skipped") for log in tmp_path.glob("*.log"))
    print(f"crash test seed={seed}: {kills} kills, {summary}, consumer gaps repaired: {repaired}")


def test_orders_behind_a_committed_offset_that_skipped_them_are_still_applied(
    make_settings, start_worker, tmp_path
) -> None:
    """The consumer group's offset is moved past unprocessed orders (what a consumer bug would do):
    the agent's own input positions notice the gap, read the skipped orders and apply them."""
    settings = make_settings(safety_threshold=0, session_timeout_s=6)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    producer.send(STOCK_ADJUSTMENTS.name, "SKU-GAP", "StockAdjusted", ev.stock_adjusted("SKU-GAP", "WH-SH", 100))

    def place(numbers: range) -> None:
        for n in numbers:
            order = ev.order_placed("jd", f"gap-{n}", [ev.line(1, "SKU-GAP", 1)])
            producer.send(ORDER_EVENTS.name, order_key("jd", f"gap-{n}"), "OrderPlaced", order)
        producer.flush()

    def decided() -> int:
        return len(read_topic(settings, "reservation.results"))

    first = range(40)
    assert {partition_for(order_key("jd", f"gap-{n}").encode(), settings.partitions) for n in first} == set(
        range(settings.partitions)
    ), "every partition needs a position before the jump"
    place(first)
    wait_for(lambda: decided() == 40, what="the first orders decided")
    worker.kill9()
    place(range(40, 60))  # never seen by any worker...
    jump_group_offsets_to_end(settings, settings.topic(ORDER_EVENTS.name))  # ...and committed past

    start_worker(settings, name="after-jump")
    wait_for(lambda: decided() == 60, timeout_s=90, what="the skipped orders decided too")
    report = audit(settings)
    assert report.ok, report.summary()
    logs = "".join(log.read_text(errors="replace") for log in tmp_path.glob("after-jump*.log"))
    assert "consumer skipped" in logs


def jump_group_offsets_to_end(settings, topic: str) -> None:
    """Commit the end of every partition of ``topic`` for the worker's group, once the dead member is gone."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": settings.app_id,
                         "enable.auto.commit": False})  # fmt: skip
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = [TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p))[1])
                for p in partitions]  # fmt: skip

        def commit() -> bool:
            try:
                consumer.commit(offsets=ends, asynchronous=False)
                return True
            except KafkaException:  # the killed member still holds the group until its session ends
                return False

        wait_for(commit, timeout_s=30, what="the group to accept a commit")
    finally:
        consumer.close()


def test_messages_a_new_agent_never_saw_are_applied_even_if_the_group_committed_past_them(
    make_settings, start_worker
) -> None:
    """No position yet (the agent never ran) and a committed offset beyond offset 0, as Faust leaves
    it when it takes a committed 0 for none: the agent starts from the beginning of the log."""
    settings = make_settings(safety_threshold=0)
    producer = EventProducer(settings)
    ensure_topics(settings)
    producer.send(STOCK_ADJUSTMENTS.name, "SKU-NEW", "StockAdjusted", ev.stock_adjusted("SKU-NEW", "WH-SH", 50))
    numbers = range(12)
    for n in numbers:
        order = ev.order_placed("pdd", f"first-{n}", [ev.line(1, "SKU-NEW", 1)])
        producer.send(ORDER_EVENTS.name, order_key("pdd", f"first-{n}"), "OrderPlaced", order)
    producer.flush()
    jump_group_offsets_to_end(settings, settings.topic(ORDER_EVENTS.name))

    start_worker(settings)
    wait_for(lambda: len(read_topic(settings, "reservation.results")) == len(numbers), timeout_s=90,
             what="every order placed before the worker first ran")  # fmt: skip
    assert audit(settings).ok
