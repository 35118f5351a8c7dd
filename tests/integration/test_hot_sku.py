"""One hot SKU hammered by 20,000 orders: the pool decides each in O(1) and its stored state stays
bounded (the defect was one record per SKU holding every hold ever taken, growing past Kafka's
message limit until the worker fell over)."""

from __future__ import annotations

import time

import pytest

from loadtest import events as ev
from streams.contract.codec import default_codec
from streams.contract.keys import order_key
from streams.contract.topics import ORDER_EVENTS
from streams.engine.changelog import changelog_topic
from streams.engine.producer import EventProducer
from streams.engine.topicreader import read_all
from tests.helpers import stock_up, wait_for

pytestmark = pytest.mark.broker
SKU = "SKU-HOTTEST"
UNITS = 100
ATTEMPTS = 20_000
CHANNELS = ("tmall", "jd", "douyin", "pdd", "kuaishou", "own")


def decisions_per_s(count: int, start_ms: int, end_ms: int) -> float:
    return round(count / (max(end_ms - start_ms, 1) / 1000), 1)


def test_hot_sku_state_stays_bounded(make_settings, start_worker) -> None:
    settings = make_settings(safety_threshold=0, threshold_hysteresis=0)
    worker = start_worker(settings)
    pid = worker.proc.pid if worker.proc else None
    producer = EventProducer(settings)
    stock_up(producer, worker, SKU, UNITS)

    orders = [order_key(CHANNELS[i % len(CHANNELS)], f"hot-{i}") for i in range(ATTEMPTS)]
    for i, key in enumerate(orders):
        channel, number = key.split(":", 1)
        producer.send(ORDER_EVENTS.name, key, "OrderPlaced", ev.order_placed(channel, number, [ev.line(1, SKU, 1)]))
        if i % 2000 == 1999:
            producer.poll(0)
    producer.flush(120)

    results_topic = settings.topic("reservation.results")

    def all_decided() -> list | None:
        time.sleep(1.7)  # reading 20,000 records takes CPU the worker needs
        records = read_all(settings.bootstrap, results_topic, 30)
        return records if len(records) >= ATTEMPTS else None

    try:
        records = wait_for(all_decided, timeout_s=300, what=f"{ATTEMPTS} reservation decisions")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; engine {worker.get('/engine/status')}; log {worker.log_tail(1500)}") from None
    codec = default_codec()
    decided = {}
    for rec in records:
        record = codec.decode(rec.value)[1]
        decided[record["order_id"]] = record
    assert len(decided) == ATTEMPTS, f"{len(records)} results for {len(decided)} orders"
    outcomes = [decided[o]["outcome"] for o in orders]
    assert outcomes.count("RESERVED") == UNITS and outcomes.count("REJECTED") == ATTEMPTS - UNITS

    assert worker.alive() and worker.proc is not None and worker.proc.pid == pid, "the worker restarted or died"
    assert worker.get("/engine/status")["ready"] is True

    totals_key = b"s\x00" + SKU.encode()
    hold_prefix = b"h\x00" + SKU.encode() + b"\x00"
    totals_sizes: list[int] = []
    holds: dict[bytes, bool] = {}
    for rec in read_all(settings.bootstrap, changelog_topic(settings, "stock_by_sku"), 60):
        if rec.key == totals_key:
            totals_sizes.append(len(rec.value or b""))
        elif rec.key is not None and rec.key.startswith(hold_prefix):
            holds[rec.key] = rec.value is not None
    live_holds = sum(holds.values())
    assert totals_sizes and max(totals_sizes) < 1024, f"the SKU's totals record grew to {max(totals_sizes)} bytes"
    assert live_holds <= UNITS + 5, f"{live_holds} live hold records for {UNITS} units"

    # Information only, no assertion: decisions carry their batch's time, so a window's rate is measured
    # from the decision before it (the first window: from the first order's placing) to its last one.
    times = sorted(r["event_time_ms"] for r in decided.values())
    tenth = len(times) // 10
    first_placed = min(r["placed_at_ms"] for r in decided.values())
    first = decisions_per_s(tenth, first_placed, times[tenth - 1])
    last = decisions_per_s(tenth, times[-tenth - 1], times[-1])
    print(f"hot SKU: {ATTEMPTS} attempts, totals record <= {max(totals_sizes)} B over {len(totals_sizes)} "
          f"changelog records, {live_holds} live of {len(holds)} hold keys; decided/s first 10% {first} "
          f"({len(set(times[:tenth]))} batches), last 10% {last} ({len(set(times[-tenth:]))} batches), "
          f"overall {decisions_per_s(len(times), first_placed, times[-1])}")  # fmt: skip
