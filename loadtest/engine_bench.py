"""The pool processor alone on the engine: stateful events per second, against a plain loop.

Fills an isolated ``stock.hold-commands`` topic with RESERVE commands over a set of SKUs (each with
plenty of stock), then starts the engine with the ``HoldStock`` processor in this process and times
it from its first event to the commit of its last. The same run measures the plain confluent-kafka
consume->produce loop (``loadtest.baseline``) on the same broker, partitions and message count, so
the ratio carries over between noisy machines. Both processing guarantees can be measured.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents.inventory.buckets import MIN_BUCKETS
from agents.inventory.hold_stock import HoldStock
from agents.orders.hot_skus import HotSkus
from loadtest import events as ev
from loadtest.baseline import clean_plain_loop_events_per_s
from loadtest.stack import isolated
from streams.contract.codec import default_codec
from streams.contract.keys import order_key
from streams.contract.topics import HOLD_COMMANDS, ORDER_EVENTS, STOCK_ADJUSTMENTS, ensure_topics
from streams.engine.clock import Clock
from streams.engine.loop import Engine, EngineStats
from streams.engine.producer import EventProducer
from streams.settings import Settings


def stock_up(settings: Settings, skus: int) -> None:
    """Plenty of stock for every SKU, so every RESERVE is held: the dearest path (a new line record)."""
    producer = EventProducer(settings)
    for i in range(skus):
        sku = f"HOLD-{i:05d}"
        producer.send(STOCK_ADJUSTMENTS.name, sku, "StockAdjusted", ev.stock_adjusted(sku, "WH-SH", 10_000_000))
    producer.flush(300)


def fill(settings: Settings, commands: int, skus: int) -> int:
    """``commands`` RESERVE commands round-robin over the SKUs; the bytes per command."""
    producer = EventProducer(settings)
    codec = producer.codec
    names = [f"HOLD-{i:05d}" for i in range(skus)]
    size = 0
    for i in range(commands):
        sku = names[i % skus]
        value = codec.encode("HoldCommand", {
            "event_id": f"reserve:o{i}#1", "event_time_ms": 0, "action": "RESERVE", "order_id": f"bench:o{i}",
            "line_no": 1, "sku": sku, "qty": 1, "channel": "tmall", "presale": False, "expires_at_ms": 0,
            "reason": "", "source_time_ms": 0, "warehouse_id": "",
        })  # fmt: skip
        size = len(value)
        producer.send_raw(HOLD_COMMANDS.name, sku, value)
    producer.flush(300)
    return size


@dataclass
class Drained:
    """How an engine run went: seconds from its first event to the last wanted one, CPU, counters."""

    elapsed_s: float
    cpu_s: float
    stats: dict[str, float]
    samples: list[tuple[float, int]]  # (time, events consumed): the pace along the run


def drain(engine: Engine, done: Callable[[EngineStats], bool], timeout_s: float = 600.0) -> Drained:
    """Run ``engine`` in a thread until ``done(stats)``; time it from its first event."""
    stop = threading.Event()
    thread = threading.Thread(target=engine.run, args=(stop,), name="engine", daemon=True)
    samples: list[tuple[float, int]] = []
    cpu0 = time.process_time()
    thread.start()
    first = 0.0
    deadline = time.monotonic() + timeout_s
    try:
        while not done(engine.stats):
            if not first and engine.stats.events:
                first = time.perf_counter()
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"the engine stopped or timed out after {engine.stats.events} events")
            samples.append((time.perf_counter(), engine.stats.events))
            time.sleep(0.01)
        elapsed = time.perf_counter() - (first or time.perf_counter())
        samples.append((time.perf_counter(), engine.stats.events))
    finally:
        stop.set()
        thread.join(60)
    return Drained(elapsed, time.process_time() - cpu0, engine.stats.as_dict(), samples)


def engine_events_per_s(settings: Settings, expected: int, timeout_s: float = 600.0) -> dict[str, Any]:
    """Run the pool alone until it has applied ``expected`` events; its rate and counters."""
    from agents.routing.warehouses import load_warehouses

    proc = HoldStock.from_settings(settings, frozenset(load_warehouses(settings.warehouses_file)))
    run = drain(Engine(settings, default_codec(), Clock(), [proc]), lambda st: st.events >= expected, timeout_s)
    stats = run.stats
    return {
        "events_per_s": round(expected / max(run.elapsed_s, 1e-3)),
        "cpu_s": round(run.cpu_s, 2),
        "events_per_batch": round(stats["events"] / max(stats["batches"], 1), 1),
        "changelog_records_per_event": round(stats["changelog_records"] / max(stats["events"], 1), 3),
        "commit_ms_mean": round(1000 * stats["commit_s"] / max(stats["commits"], 1), 2),
        "stats": stats,
    }


def run(settings: Settings, commands: int, skus: int, guarantees: tuple[str, ...]) -> dict[str, Any]:
    results: dict[str, Any] = {"commands": commands, "skus": skus}
    size = 0
    for guarantee in guarantees:
        _, s = isolated(settings, "bench-engine", processing_guarantee=guarantee)
        ensure_topics(s)
        stock_up(s, skus)
        engine_events_per_s(s, skus)  # the stock is applied and committed before the clock starts
        size = fill(s, commands, skus)
        results[guarantee] = engine_events_per_s(s, commands)
    _, s = isolated(settings, "bench-baseline")
    baseline = clean_plain_loop_events_per_s(s, commands, size)
    results["baseline_events_per_s"] = round(baseline)
    for guarantee in guarantees:
        results[guarantee]["baseline_ratio"] = round(results[guarantee]["events_per_s"] / baseline, 3)
    return results


def fill_orders(settings: Settings, orders: int, skus: int) -> None:
    """``orders`` single-line orders over the SKUs, each placed and then paid, already in ``order.events``."""
    producer = EventProducer(settings)
    codec = producer.codec
    for i in range(orders):
        number = f"bench-{i}"
        key = order_key("tmall", number)
        sku = f"HOLD-{i % skus:05d}"
        placed = ev.order_placed("tmall", number, [ev.line(1, sku, 1)])
        producer.send_raw(ORDER_EVENTS.name, key, codec.encode("OrderPlaced", placed))
        paid = ev.payment_confirmed("tmall", number)
        producer.send_raw(ORDER_EVENTS.name, key, codec.encode("PaymentConfirmed", paid))
    producer.flush(300)


def pipeline_orders_per_s(settings: Settings, orders: int, skus: int, timeout_s: float = 600.0,
                          expected_events: int = 0, hot: HotSkus | None = None) -> dict[str, Any]:  # fmt: skip
    """The order lifecycle and the pool together on one engine, draining ``orders`` placed-and-paid
    single-line orders: each is reserved, then committed and allocated to a warehouse in one command
    (6 engine events: placed, paid, RESERVE, HELD, COMMIT at a warehouse, ALLOCATED). ``hot``: the
    lifecycle's view of split SKUs (their lines go straight to a bucket)."""
    from agents.orders.run_lifecycle import RunLifecycle
    from agents.routing.warehouse_view import WarehouseView
    from agents.routing.warehouses import load_warehouses

    view = WarehouseView.from_settings(settings)
    for i in range(skus):  # what the published levels would say: plenty everywhere
        view.apply_level({"sku": f"HOLD-{i:05d}", "on_hand_by_warehouse": dict.fromkeys(view.sites, 10_000_000),
                          "allocated_by_warehouse": {}, "newest_change_ms": 0})  # fmt: skip
    warehouses = frozenset(load_warehouses(settings.warehouses_file))
    processors = [RunLifecycle.from_settings(settings, view, hot=hot), HoldStock.from_settings(settings, warehouses)]
    engine = Engine(settings, default_codec(), Clock(), processors)
    expected = expected_events or orders * 6
    if expected_events:
        run = drain(engine, lambda st: st.events >= expected, timeout_s)
    else:
        run = drain(engine, lambda st: st.events + st.local_events >= expected, timeout_s)
    stats = run.stats
    return {
        "orders_per_s": round(orders / max(run.elapsed_s, 1e-3)),
        "engine_events_per_s": round((stats["events"] + stats["local_events"]) / max(run.elapsed_s, 1e-3)),
        "cpu_us_per_order": round(1e6 * run.cpu_s / orders),
        "records_written_per_order": round((stats["outputs"] + stats["changelog_records"]) / orders, 2),
        "changelog_records_per_order": round(stats["changelog_records"] / orders, 2),
        "events_per_batch": round(stats["events"] / max(stats["batches"], 1), 1),
        "first_tenth_per_s": _pace(run.samples, 0.0, 0.1),
        "last_tenth_per_s": _pace(run.samples, 0.9, 1.0),
        "stats": stats,
    }


def _pace(samples: list[tuple[float, int]], start: float, end: float) -> int:
    """Events per second while the count went from ``start`` to ``end`` of its final value."""
    final = samples[-1][1] if samples else 0
    inside = [(t, n) for t, n in samples if start * final <= n <= end * final]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:  # noqa: PLR2004 - a pace takes two samples
        return 0
    return round((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]))


def run_pipeline(settings: Settings, orders: int, skus: int) -> dict[str, Any]:
    _, s = isolated(settings, "bench-pipeline")
    ensure_topics(s)
    stock_up(s, skus)
    engine_events_per_s(s, skus)
    fill_orders(s, orders, skus)
    return pipeline_orders_per_s(s, orders, skus)


def run_hot_sku(settings: Settings, attempts: int, units: int, buckets: int = 0) -> dict[str, Any]:
    """``attempts`` single-line orders for one SKU of ``units`` units, drained by the order lifecycle
    and the pool on one engine: how many were held, whether the pace held up from the first tenth to
    the last, and how big the SKU's stored state ended (its changelog, read back). ``buckets`` >= 2: the
    SKU is split into that many stock buckets first (``stockflow stock hot``), and the lifecycle sends
    each line to its bucket; the result also says which buckets held the units and how many lines a
    bucket passed on."""
    import orjson

    from agents.inventory.cli import send_hot
    from agents.inventory.rules import FORWARDED
    from streams.engine.changelog import changelog_topic
    from streams.engine.topicreader import read_all

    _, s = isolated(settings, "bench-hot-sku")
    ensure_topics(s)
    sku = "HOT-00000"
    producer = EventProducer(s)
    producer.send(STOCK_ADJUSTMENTS.name, sku, "StockAdjusted", ev.stock_adjusted(sku, "WH-SH", units))
    producer.flush(60)
    engine_events_per_s(s, 1)
    hot = None
    if buckets >= MIN_BUCKETS:
        # Its own run: the split (the home's transfers to every bucket) is committed before the clock starts.
        send_hot(sku, buckets, "bench", "bench-engine --mode hot-sku", s)
        engine_events_per_s(s, 1)
        hot = HotSkus(skus={sku: buckets}, ready=True)
    codec = producer.codec
    for i in range(attempts):
        number = f"hot-{i}"
        # The main channel: below the safety threshold the others stop selling, and this measures the race.
        placed = ev.order_placed(s.main_channel, number, [ev.line(1, sku, 1)])
        producer.send_raw(ORDER_EVENTS.name, order_key(s.main_channel, number), codec.encode("OrderPlaced", placed))
    producer.flush(600)
    drained = pipeline_orders_per_s(s, attempts, 1, expected_events=attempts, hot=hot)
    decided = [codec.decode(r.value)[1] for r in read_all(s, s.topic("reservation.results"), 120)]
    held_by: dict[int, int] = {}
    for r in read_all(s, s.topic("stock.hold-results"), 120):
        answer = codec.decode(r.value)[1]
        if answer["outcome"] == "HELD":
            held_by[answer["bucket"]] = held_by.get(answer["bucket"], 0) + 1
    live: dict[bytes, str] = {}
    totals_bytes: dict[bytes, int] = {}
    for rec in read_all(s, changelog_topic(s, "stock_by_sku"), 120):
        key = rec.key or b""
        owner = key.split(b"\x00")[1] if key.count(b"\x00") >= 1 else b""
        if owner.split(b"#")[0] != sku.encode():
            continue
        if key.startswith(b"s\x00"):
            if rec.value is None:
                totals_bytes.pop(owner, None)
            else:
                totals_bytes[owner] = len(rec.value)
        elif key.startswith(b"h\x00"):
            if rec.value is None:
                live.pop(key, None)
            else:
                live[key] = orjson.loads(rec.value)["status"]
    return {
        "attempts": attempts, "units": units, "buckets": buckets if hot else 0,
        "reserved": sum(1 for r in decided if r["outcome"] == "RESERVED"),
        "rejected": sum(1 for r in decided if r["outcome"] == "REJECTED"),
        "held_by_bucket": {str(k): n for k, n in sorted(held_by.items())},
        "orders_per_s": drained["orders_per_s"], "cpu_us_per_order": drained["cpu_us_per_order"],
        "first_tenth_per_s": drained["first_tenth_per_s"], "last_tenth_per_s": drained["last_tenth_per_s"],
        "totals_record_bytes": totals_bytes.get(sku.encode(), 0),
        "bucket_record_bytes_max": max((n for k, n in totals_bytes.items() if k != sku.encode()), default=0),
        "live_line_records": sum(1 for st in live.values() if st != FORWARDED),
        "passed_on_markers": sum(1 for st in live.values() if st == FORWARDED),
    }  # fmt: skip
