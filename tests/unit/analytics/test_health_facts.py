"""The order health fact rows, without a broker or ClickHouse: what the sink makes of the lifecycle's real
``OrderHealthScored`` (after the Avro round trip), that the row fits ``order_health`` in ``schemas/ddl``, and the
focus-pool dashboard's header and parameters."""

from __future__ import annotations

import re
from typing import Any

from agents.analytics import facts
from agents.analytics import queries as dashboards
from agents.orders import cli as orders_cli
from streams.settings import Settings
from tests.unit.analytics.test_refund_facts import ddl_columns, sunk
from tests.unit.orders.test_health_lifecycle import health_of, paid, pipeline, placed, send, stock

MIN = 60_000


def scored_order() -> dict[str, Any]:
    r, view, wh = pipeline()
    stock(r, view, "SKU-F1", 5, wh)
    send(r, "OrderPlaced", placed(r, "douyin", "7", "SKU-F1", "dy-buyer", coupon_type="秒杀"))
    [record] = health_of(send(r, "PaymentConfirmed", paid(r, "douyin", "7", 20 * MIN)))
    return record


def test_a_health_score_becomes_one_order_health_row_with_every_factor() -> None:
    record = scored_order()
    [(table, row)] = sunk("OrderHealthScored", record)
    assert table == "order_health" and list(row) == ddl_columns()["order_health"]
    assert row == {
        "event_id": "douyin:7:health", "event_time": record["event_time_ms"] // 1000,
        "event_time_ms": record["event_time_ms"], "order_id": "douyin:7", "channel": "douyin",
        "customer_id": "dy-buyer", "score": 98.0, "focus": 0, "focus_below": 60.0, "promptness_points": 8.0,
        "address_points": 30.0, "complexity_points": 20.0, "returns_points": 30.0, "coupon_points": 10.0,
        "notes": "paid after 20 min; coupon 秒杀 +10", "paid_after_ms": 20 * MIN,
        "return_count": 0,
    }  # fmt: skip


def test_a_focus_order_row_and_a_record_without_optional_fields() -> None:
    minimal = {"event_id": "jd:1:health", "event_time_ms": 1_794_326_400_000, "order_id": "jd:1", "channel": "jd",
               "score": 42.5, "focus": True, "focus_below": 60.0, "breakdown": {"address": 12.5}}  # fmt: skip
    [(table, row)] = facts.rows_of("OrderHealthScored", minimal)
    assert table == "order_health" and list(row) == ddl_columns()["order_health"]
    assert (row["focus"], row["score"], row["address_points"], row["returns_points"]) == (1, 42.5, 12.5, 0.0)
    assert (row["customer_id"], row["notes"], row["paid_after_ms"], row["return_count"]) == ("", "", 0, 0)


def test_the_focus_pool_dashboard_reads_order_health_and_takes_a_channel_a_time_range_and_the_zone() -> None:
    dash = dashboards.find(orders_cli.FOCUS_DASHBOARD)
    assert dash.title == "Focus pool" and dash.chart.kind == "table"
    assert set(dash.params) == {"from_ms", "to_ms", "channel", "tz"}
    assert "order_health FINAL" in dash.sql and "focus = 1" in dash.sql
    bound = dashboards.bind(dash, {"channel": "jd", "from_ms": "-7d"}, Settings(), now_ms=10 * 86_400_000)
    assert bound == {"from_ms": 3 * 86_400_000, "to_ms": 10 * 86_400_000 + 60_000, "channel": "jd",
                     "tz": "Asia/Shanghai"}  # fmt: skip
    assert set(orders_cli.FOCUS_COLUMNS) <= _selected_columns(dash.sql)


def _selected_columns(sql: str) -> set[str]:
    return set(re.findall(r"\bAS (\w+),?\n", sql))
