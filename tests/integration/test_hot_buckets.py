"""A hot SKU split into four stock buckets, on the real broker: the S1 race sells exactly its units, a
kill -9 mid-race changes nothing, and un-marking merges the buckets back into the SKU's home.

Two workers of one group share the four partitions and the SKU is one whose four buckets land on four
different partitions, so lines passed on, transfers and figures really travel through ``stock.buckets``
between workers (on one worker they are applied in the batch that wrote them and never published)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from agents.inventory.cli import send_hot
from loadtest import events as ev
from streams.contract.keys import bucket_key, order_key, partition_for
from streams.contract.topics import ORDER_EVENTS
from streams.devstack.workerproc import WorkerProcess
from streams.engine.producer import EventProducer
from tests.helpers import audit_problems, audit_until_ok, read_topic, reservation_decisions, stock, stock_up, wait_for

pytestmark = pytest.mark.broker
CHANNELS = ("tmall", "jd", "douyin", "pdd", "kuaishou")


def spread_sku(prefix: str, buckets: int, partitions: int) -> str:
    """The first SKU ``<prefix>-n`` whose buckets all land on different partitions."""
    n = 0
    while len({partition_for(bucket_key(f"{prefix}-{n}", b, partitions).encode(), partitions)
               for b in range(buckets)}) < buckets:  # fmt: skip
        n += 1
    return f"{prefix}-{n}"


def two_workers(settings, peer_settings, start_worker) -> tuple[list[Any], list[WorkerProcess]]:
    """Two workers of one group, each holding partitions; their settings and processes."""
    own = [settings, peer_settings(settings)]
    workers = [start_worker(own[0], name="a"), start_worker(own[1], name="b")]
    wait_for(lambda: all(w.get("/engine/status").get("owned_partitions") for w in workers), what="both workers own")
    return own, workers


def split(worker, settings, sku: str, buckets: int) -> dict[str, Any]:
    send_hot(sku, buckets, "test", "live stream", settings)
    return wait_for(lambda: (s := stock(worker, sku)).get("buckets", {}).get("state") == "hot" and s,
                    timeout_s=30, what=f"{sku} split into {buckets}")  # fmt: skip


def place(settings, sku: str, orders: int, prefix: str, delay_s: float = 0.0) -> list[str]:
    producer = EventProducer(settings)
    keys = []
    for i in range(orders):
        channel, number = CHANNELS[i % len(CHANNELS)], f"{prefix}-{i}"
        keys.append(order_key(channel, number))
        producer.send(
            ORDER_EVENTS.name, keys[-1], "OrderPlaced", ev.order_placed(channel, number, [ev.line(1, sku, 1)])
        )
        if delay_s and i % 50 == 49:
            producer.flush()
            time.sleep(delay_s)
    producer.flush()
    return keys


def decided(settings, orders: list[str], timeout_s: float = 50) -> dict[str, dict[str, Any]]:
    return wait_for(lambda: (d := reservation_decisions(settings)) and all(o in d for o in orders) and d,
                    timeout_s=timeout_s, what=f"{len(orders)} reservation decisions")  # fmt: skip


def assert_audit_ok(settings) -> None:
    report = audit_until_ok(settings, timeout_s=40)
    summary = report.summary()
    assert report.ok, audit_problems(report)
    assert summary["oversold_units"] == 0 and summary["double_holds"] == 0 and summary["skus_drifted"] == 0


def test_four_buckets_race_sells_exactly_the_units(make_settings, peer_settings, start_worker) -> None:
    settings = make_settings(safety_threshold=0, threshold_hysteresis=0)
    _, (worker, _) = two_workers(settings, peer_settings, start_worker)
    sku = spread_sku("SKU-B4", 4, settings.partitions)
    stock_up(EventProducer(settings), worker, sku, 100)
    shares = split(worker, settings, sku, 4)
    assert shares["on_hand"] == 100 and sum(shares["buckets"]["available"]) == 100
    orders = place(settings, sku, 1000, "b4")
    answers = decided(settings, orders)  # once: each call reads the whole results topic again
    outcomes = [answers[o]["outcome"] for o in orders]
    assert outcomes.count("RESERVED") == 100 and outcomes.count("REJECTED") == 900
    held = [r for t, r in read_topic(settings, "stock.hold-results") if r["outcome"] == "HELD"]
    assert len({r["bucket"] for r in held}) > 1, "every line was held by one bucket: the split did nothing"
    passed_on = [r for t, r in read_topic(settings, "stock.buckets") if t == "HoldCommand"]
    assert passed_on, "no line went from one worker's bucket to the other's: the test tests one worker"
    level = wait_for(lambda: (s := stock(worker, sku))["locked"] == 100 and s, what="one level for the SKU")
    assert (level["available"], level["on_hand"]) == (0, 100)
    assert_audit_ok(settings)


def test_kill_9_mid_race_still_sells_exactly_the_units(make_settings, peer_settings, start_worker) -> None:
    settings = make_settings(safety_threshold=0, threshold_hysteresis=0, session_timeout_s=6)
    own, workers = two_workers(settings, peer_settings, start_worker)
    sku = spread_sku("SKU-K4", 4, settings.partitions)
    home = partition_for(sku.encode(), settings.partitions)
    victim = next(i for i, w in enumerate(workers) if home in w.get("/engine/status")["owned_partitions"])
    stock_up(EventProducer(settings), workers[0], sku, 100)
    split(workers[0], settings, sku, 4)
    result: dict[str, list[str]] = {}
    sender = threading.Thread(target=lambda: result.update(orders=place(settings, sku, 1000, "k4", 0.1)))
    sender.start()
    # Mid-race: the home's worker dies with open transactions, transfers, figures and passed-on lines in flight.
    wait_for(lambda: stock(workers[victim], sku)["locked"] > 0, timeout_s=30, what="the race under way")
    workers[victim].kill9()
    workers[victim] = start_worker(own[victim], name="restarted")
    sender.join()
    answers = decided(settings, result["orders"], timeout_s=90)
    outcomes = [answers[o]["outcome"] for o in result["orders"]]
    assert outcomes.count("RESERVED") == 100 and outcomes.count("REJECTED") == 900
    level = wait_for(lambda: (s := stock(workers[0], sku))["locked"] == 100 and s, what="one level for the SKU")
    assert (level["available"], level["on_hand"]) == (0, 100)
    assert_audit_ok(settings)


def test_unmarking_merges_the_buckets_and_the_home_serves_later_orders(make_settings, peer_settings,
                                                                       start_worker) -> None:  # fmt: skip
    settings = make_settings(safety_threshold=0, threshold_hysteresis=0)
    _, (worker, _) = two_workers(settings, peer_settings, start_worker)
    sku = spread_sku("SKU-M4", 4, settings.partitions)
    stock_up(EventProducer(settings), worker, sku, 40)
    split(worker, settings, sku, 4)
    first = place(settings, sku, 6, "m4")
    assert {answer["outcome"] for o, answer in decided(settings, first).items() if o in first} == {"RESERVED"}
    send_hot(sku, 0, "test", "sale over", settings)
    # Open lines keep their bucket until they finish: cancelling them lets the buckets empty and go.
    producer = EventProducer(settings)
    for key in first:
        channel, number = key.split(":", 1)
        producer.send(ORDER_EVENTS.name, key, "OrderCancelled", ev.order_cancelled(channel, number))
    producer.flush()
    merged = wait_for(lambda: (s := stock(worker, sku)).get("locked") == 0 and "buckets" not in s and s,
                      timeout_s=30, what="the buckets merged home")  # fmt: skip
    assert (merged["on_hand"], merged["available"]) == (40, 40)
    later = place(settings, sku, 3, "after")
    assert {answer["outcome"] for o, answer in decided(settings, later).items() if o in later} == {"RESERVED"}
    answers = [r for t, r in read_topic(settings, "stock.hold-results") if r["order_id"] in later]
    assert answers and {r["bucket"] for r in answers} == {-1}, "a later order was held by a bucket"
    hot = [r for t, r in read_topic(settings, "stock.hot-skus") if r["sku"] == sku]
    assert [r["state"] for r in hot] == ["hot", "merging", ""]
    assert_audit_ok(settings)
