"""`stockflow bench-sink`: the ClickHouse sink's rows/s against plain batched inserts, same rows, same run.

1. N events of the kinds the dashboards read (order states, reservations, alerts, routing
   decisions) are produced once to fresh topics.
2. Baselines: the same events are turned into the same rows outside the timing, then inserted in
   batches of ``STOCKFLOW_SINK_BATCH_ROWS`` by the plain client of each backend - clickhouse-driver
   (``INSERT ... VALUES`` columnar) and chdb (``INSERT ... SELECT FROM Python(...)``).
3. The sink: a real sink process (``stockflow sink``) drains the backlog (consume, decode, build
   rows, insert every table, commit), timed from its first insert to its last as ``/sink/status``
   reports them.
The ratio sink / plain is the figure to read; absolute rows/s depend on the machine.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from loadtest.stack import isolated, scratch_folder
from streams.contract.codec import default_codec
from streams.contract.keys import order_key
from streams.contract.topics import ensure_topics
from streams.devstack.sinkproc import SinkProcess
from streams.engine.producer import EventProducer
from streams.settings import Settings
from streams.stores.clickhouse import ServerClickHouse, apply_migrations, open_clickhouse

KINDS = ("order.states", "alerts", "reservation.results", "routing.decisions")
CHANNELS = ("tmall", "jd", "douyin", "pdd", "kuaishou", "own")


def make_events(count: int, seed: int) -> list[tuple[str, str, str, dict[str, Any]]]:
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    out = []
    for i in range(count):
        channel = rng.choice(CHANNELS)
        order = order_key(channel, f"bench-{seed}-{i}")
        at = now - rng.randint(0, 3_600_000)
        kind = KINDS[i % len(KINDS)]
        if kind == "order.states":
            times = {"placed": at - 5000, "reserved": at - 4000, "paid": at}
            out.append(
                (
                    kind,
                    order,
                    "OrderStateChanged",
                    {
                        "event_id": f"{order}:paid",
                        "event_time_ms": at,
                        "order_id": order,
                        "channel": channel,
                        "state": "paid",
                        "previous_state": "reserved",
                        "reason": "",
                        "warehouse_id": "",
                        "stage_times": times,
                    },
                )
            )
        elif kind == "alerts":
            out.append(
                (
                    kind,
                    order,
                    "Alert",
                    {
                        "event_id": f"sla_breach:{order}",
                        "event_time_ms": at,
                        "kind": "sla_breach",
                        "severity": "RED",
                        "subject": order,
                        "message": f"order {order} paid 16 min ago",
                        "cleared": False,
                        "details": {},
                    },
                )
            )
        elif kind == "reservation.results":
            lines = [
                {"line_no": n, "sku": f"LOAD-{rng.randint(1, 1000):05d}", "qty": 1, "outcome": "HELD", "reason": ""}
                for n in range(1, rng.randint(1, 4) + 1)
            ]
            out.append(
                (
                    kind,
                    order,
                    "ReservationDecided",
                    {
                        "event_id": f"{order}:reservation",
                        "event_time_ms": at,
                        "order_id": order,
                        "channel": channel,
                        "outcome": "RESERVED",
                        "lines": lines,
                        "placed_at_ms": at - 50,
                        "sent_at_ms": at - 60,
                    },
                )
            )
        else:
            cand = [
                {
                    "warehouse_id": w,
                    "distance_km": rng.uniform(10, 2000),
                    "distance": rng.random(),
                    "sufficiency": rng.random(),
                    "on_time": rng.random(),
                    "cost": rng.random(),
                    "score": rng.random(),
                }
                for w in ("WH-SH", "WH-GZ", "WH-BJ", "WH-CD")
            ]
            out.append(
                (
                    kind,
                    order,
                    "RoutingDecision",
                    {
                        "event_id": f"{order}:route:1",
                        "event_time_ms": at,
                        "order_id": order,
                        "channel": channel,
                        "split": False,
                        "assignments": [{"warehouse_id": "WH-SH", "line_nos": [1]}],
                        "candidates": cand,
                        "weights": {"distance": 0.4, "sufficiency": 0.3, "on_time": 0.2, "cost": 0.1},
                    },
                )
            )
    return out  # fmt: skip


def plain_insert(settings: Settings, tables: dict[str, dict[str, list[Any]]], batch: int) -> float:
    """Seconds the backend's own client takes to insert ``tables`` in batches of ``batch`` rows."""
    ch = open_clickhouse(settings, migrate=False)
    apply_migrations(ch)
    if isinstance(ch, ServerClickHouse):
        from clickhouse_driver import Client

        host, _, port = settings.clickhouse_url.split("//", 1)[1].split("/")[0].partition(":")
        client = Client(host, port=int(port or 9000), database=settings.clickhouse_database)
    started = time.perf_counter()
    for table, columns in tables.items():
        n = len(next(iter(columns.values())))
        for lo in range(0, n, batch):
            part = {name: values[lo : lo + batch] for name, values in columns.items()}
            if isinstance(ch, ServerClickHouse):
                client.execute(f"INSERT INTO {table} ({', '.join(part)}) VALUES", list(part.values()), columnar=True)
            else:
                ch.insert(table, part)  # chdb's own way: INSERT ... SELECT FROM Python(<columns>)
    seconds = time.perf_counter() - started
    ch.close()
    return seconds


def sink_rate(settings: Settings, rows: int, log_dir: Path, timeout_s: float) -> tuple[float, dict[str, Any]]:
    sink = SinkProcess(settings, log_dir / f"bench-sink-{settings.app_id}.log").start()
    try:
        sink.wait_ready()
        deadline = time.monotonic() + timeout_s
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = sink.get("/sink/status")
            if status.get("rows", 0) >= rows:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"the sink wrote {status.get('rows')} of {rows} rows in {timeout_s:.0f}s")
        seconds = (status["last_insert_ms"] - status["first_insert_ms"]) / 1000
        return rows / max(seconds, 1e-3), status
    finally:
        sink.stop()


def run(settings: Settings, server_url: str, rows: int, seed: int, console: Console) -> dict[str, Any]:
    tag, base = isolated(settings, "bench-sink")
    ensure_topics(base)
    events = make_events(rows, seed)
    producer = EventProducer(base)
    with console.status(f"producing {rows} events..."):
        for topic, key, kind, record in events:
            producer.send(topic, key, kind, record)
        producer.flush()
    codec = default_codec()
    from agents.analytics.sink import Received, rows_for_batch

    messages = [Received(base.topic(t), 0, i, k.encode(), codec.encode(kind, r)) for i, (t, k, kind, r) in
                enumerate(events)]  # fmt: skip
    tables, _ = rows_for_batch(codec, messages, int(time.time() * 1000))
    row_count = sum(len(c["event_id"]) for c in tables.values())
    results: dict[str, Any] = {"events": rows, "rows_per_event": round(row_count / rows, 2)}
    backends = {"server": server_url, "embedded": f"chdb://{scratch_folder('bench-sink')}"}
    for name, url in backends.items():
        plain_settings = base.model_copy(update={"clickhouse_url": url, "clickhouse_database": f"plain_{tag}"})
        with console.status(f"{name}: plain inserts..."):
            plain_s = plain_insert(plain_settings, tables, base.sink_batch_rows)
        if name == "embedded":
            url = f"chdb://{scratch_folder('bench-sink')}"  # the sink process needs its own folder
        sink_settings = base.model_copy(update={
            "clickhouse_url": url, "clickhouse_database": f"sink_{tag}", "app_id": f"bench-sink-{tag}-{name}",
            "sink_port": base.sink_port + 1})  # fmt: skip
        with console.status(f"{name}: the sink drains {rows} events..."):
            sink_events_per_s, status = sink_rate(sink_settings, rows, base.home_dir / "logs", 600)
        plain_events_per_s = rows / plain_s
        results[name] = {
            "plain_events_per_s": round(plain_events_per_s),
            "plain_rows_per_s": round(row_count / plain_s),
            "sink_events_per_s": round(sink_events_per_s),
            "sink_rows_per_s": round(sink_events_per_s * row_count / rows),
            "sink_vs_plain": round(sink_events_per_s / plain_events_per_s, 3),
            "sink_batches": status["batches"],
        }
    return results


def print_results(results: dict[str, Any], console: Console) -> None:
    table = Table("backend", "plain insert rows/s", "sink rows/s", "sink / plain", title="ClickHouse sink")
    for name in ("server", "embedded"):
        r = results[name]
        table.add_row(name, f"{r['plain_rows_per_s']:,}", f"{r['sink_rows_per_s']:,}", f"{r['sink_vs_plain']:.2f}")
    console.print(table)
    console.print(f"{results['events']:,} events, {results['rows_per_event']} rows each (raw log + typed facts)")
