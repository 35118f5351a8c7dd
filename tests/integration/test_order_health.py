"""The order health score on the real broker, worker and sink: a customer's returns, run through the refund
flow, reach every worker's view of returns; their next order scores lower than the same order from a customer
without returns, and lands in the focus pool that ``stockflow orders focus`` prints from ClickHouse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from agents.analytics import queries as dashboards
from loadtest import events as ev
from streams.contract.records import Address
from streams.engine.producer import EventProducer
from streams.settings import Settings
from tests.helpers import read_topic, stock_up, wait_for

pytestmark = pytest.mark.broker

ROAD_ONLY = Address(province="广东省", city="广州市", district="天河区", detail="体育西路 1 号")


def send(producer: EventProducer, topic: str, kind: str, record: Any) -> None:
    producer.send(topic, f"{record['channel']}:{record['channel_order_id']}", kind, record)


def order(producer: EventProducer, channel: str, oid: str, sku: str, customer: str) -> None:
    placed = ev.order_placed(channel, oid, [ev.line(1, sku, 1)], address=ROAD_ONLY)
    placed["customer_id"] = customer
    producer.send("order.events", f"{channel}:{oid}", "OrderPlaced", placed)
    producer.send("order.events", f"{channel}:{oid}", "PaymentConfirmed", ev.payment_confirmed(channel, oid))
    producer.flush()


def order_state(worker: Any, order_id: str) -> str:
    return str(worker.get(f"/orders/{order_id}").get("state", ""))


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.as_env(), "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "agents.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_a_customer_with_completed_returns_scores_lower_and_lands_in_the_focus_pool(
    make_settings: Any, start_worker: Any, start_sink: Any, clickhouse_server_url: str
) -> None:
    settings = make_settings(clickhouse_url=clickhouse_server_url, safety_threshold=0)
    worker = start_worker(settings)
    start_sink(settings)
    producer = EventProducer(settings)

    # Three delivered orders of buyer-r on jd, each returned within the no-reason window: approved and paid
    # back at once by the refund processor, then settled by the marketplace.
    for n in range(3):
        oid, sku = f"past-{n}", f"SKU-HP{n}"
        stock_up(producer, worker, sku, 5)
        order(producer, "jd", oid, sku, "buyer-r")
        wait_for(lambda oid=oid: order_state(worker, f"jd:{oid}") in ("paid", "routed"), what=f"jd:{oid} paid")
        send(producer, "order.events", "ShipmentDispatched", ev.shipment_dispatched("jd", oid, "WH-SH"))
        send(producer, "order.events", "ShipmentDelivered", ev.shipment_delivered("jd", oid))
        producer.flush()
        wait_for(lambda oid=oid: order_state(worker, f"jd:{oid}") == "delivered", what=f"jd:{oid} delivered")
        send(producer, "refund.events", "RefundRequested", ev.refund_requested("jd", oid, f"r{n}", 9_900))
        send(producer, "refund.events", "RefundSettled", ev.refund_settled("jd", oid, f"r{n}", 9_900))
        producer.flush()

    def completed() -> list[dict[str, Any]]:
        states = [r for t, r in read_topic(settings, "refund.states") if r["state"] == "completed"]
        return states if len(states) == 3 else []

    assert {s["customer_id"] for s in wait_for(completed, what="three completed returns")} == {"buyer-r"}
    wait_for(lambda: worker.get("/customers/jd/buyer-r/returns").get("returns") == 3,
             what="the worker's view counting buyer-r's returns")  # fmt: skip

    # The same order from buyer-r and from buyer-c, who never returned anything.
    stock_up(producer, worker, "SKU-HN", 5)
    order(producer, "jd", "new-r", "SKU-HN", "buyer-r")
    order(producer, "jd", "new-c", "SKU-HN", "buyer-c")

    def scores() -> dict[str, dict[str, Any]]:
        found = {r["order_id"]: r for t, r in read_topic(settings, "order.health")}
        return found if {"jd:new-r", "jd:new-c"} <= set(found) else {}

    scored = wait_for(scores, what="both new orders scored on order.health")
    # Paid at once: 20; 体育西路 1 号 (road number only): 15; one plain line: 20; returns: 30 - 3 * 10 = 0 or 30.
    assert (scored["jd:new-c"]["score"], scored["jd:new-c"]["focus"]) == (85.0, False)
    assert (scored["jd:new-r"]["score"], scored["jd:new-r"]["focus"], scored["jd:new-r"]["returns"]) == (55.0, True, 3)
    assert scored["jd:new-r"]["breakdown"]["returns"] == 0 and "3 returns in 180 days" in scored["jd:new-r"]["notes"]
    assert scored["jd:past-0"]["returns"] == 0  # scored when paid, before any return

    wait_for(lambda: [r for r in dashboards.run(settings, "focus_pool", {})[1] if r["order_id"] == "jd:new-r"],
             what="jd:new-r in the focus pool in ClickHouse")  # fmt: skip
    shown = run_cli(settings, "orders", "focus", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    pool = {row["order_id"]: row for row in json.loads(shown.stdout)}
    assert "jd:new-c" not in pool and not any(oid.startswith("jd:past-") for oid in pool)
    row = pool["jd:new-r"]
    assert (row["score"], row["returns"], row["customer_returns"], row["customer_id"]) == (55, 0, 3, "buyer-r")
    assert row["current_state"] in ("paid", "routed") and "3 returns in 180 days" in row["why"]

    table = run_cli(settings, "orders", "focus", "--channel", "jd")
    assert table.returncode == 0 and "jd:new-r" in table.stdout and "jd:new-c" not in table.stdout, table.stdout
    refused = run_cli(settings, "orders", "focus", "--channel", "ebay")
    assert refused.returncode == 1 and "channel must be one of" in refused.stdout
