"""``stockflow demo``: the whole path on one machine, from a cold start to rows in ClickHouse.

Starts Kafka if none runs, creates the topics, runs a worker, sends sample channel events (and one
malformed message), waits until the sink has written them, then shows what landed in ClickHouse
and stops everything it started.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from loadtest import events as ev
from streams.localkafka import LocalKafka, MissingTool
from streams.producer import EventProducer
from streams.settings import Settings
from streams.topics import ORDER_EVENTS, STOCK_ADJUSTMENTS, ensure_topics
from streams.workerproc import WorkerProcess

CHANNELS = ("tmall", "jd", "douyin", "pdd", "kuaishou", "own")


def send_sample_events(producer: EventProducer) -> int:
    """Stock for three SKUs, one order per channel with payment, one malformed message."""
    sent = 0
    for sku in ("SKU-RED-S", "SKU-RED-M", "SKU-BLUE-L"):
        producer.send(STOCK_ADJUSTMENTS.name, sku, "StockAdjusted", ev.stock_adjusted(sku, "WH-SH", 50))
        sent += 1
    stamp = int(time.time())
    for i, channel in enumerate(CHANNELS):
        number = f"demo-{stamp}-{i}"
        order = ev.order_placed(channel, number, [ev.line(1, "SKU-RED-S", 1), ev.line(2, "SKU-BLUE-L", 2)])
        key = ev.order_id(channel, number)
        producer.send(ORDER_EVENTS.name, key, "OrderPlaced", order)
        producer.send(ORDER_EVENTS.name, key, "PaymentConfirmed", ev.payment_confirmed(channel, number))
        sent += 2
    producer.send_raw(ORDER_EVENTS.name, "bad:1", b"this is not avro")
    producer.flush()
    return sent


def run_demo(settings: Settings, console: Console, timeout_s: float) -> int:
    kafka = LocalKafka(settings)
    started_kafka = False
    worker = WorkerProcess(settings, settings.home_dir / "logs" / "demo-worker.log")
    try:
        if not settings.kafka_bootstrap and kafka.running_pid() is None:
            with console.status("starting Kafka (first run resolves the broker jars)..."):
                console.print(kafka.up())
            started_kafka = True
        ensure_topics(settings)
        with console.status("starting a worker..."):
            worker.start().wait_ready()
        sent = send_sample_events(EventProducer(settings))
        console.print(f"sent {sent} events and 1 malformed message")
        deadline = time.monotonic() + timeout_s
        with console.status("waiting for the sink...") as status:
            while time.monotonic() < deadline:
                sink = worker.get("/sink/status")
                status.update(f"waiting for the sink: {sink['rows']} rows in ClickHouse")
                if sink["by_type"].get("DeadLetter", 0) >= 1 and sink["rows"] >= sent:
                    break
                time.sleep(0.5)
            else:
                console.print(f"[red]timed out; worker log: {worker.log_file}[/red]")
                return 1
        table = Table("event type", "rows in ClickHouse", title="What landed in ClickHouse")
        for row in worker.get("/sink/query/events-by-type"):
            table.add_row(row["event_type"], str(row["n"]))
        console.print(table)
        console.print(f"ClickHouse: {settings.clickhouse_url} (database {settings.clickhouse_database})")
        return 0
    except (MissingTool, RuntimeError) as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    finally:
        worker.stop()
        if started_kafka:
            kafka.down()
