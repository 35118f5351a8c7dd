"""The ClickHouse sink (its own process, beside the worker) and the ops dashboards: expected numbers on both
backends, no loss, no double count, a poison event dead-lettered while the rest goes on."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agents.analytics import queries as dashboards
from loadtest import events as ev
from streams.contract.topics import ALERTS
from streams.devstack.localclickhouse import LocalClickHouseServer
from streams.engine.producer import EventProducer
from streams.engine.topicreader import read_all
from streams.settings import Settings
from tests.conftest import free_port, free_ports
from tests.helpers import read_topic, wait_for

pytestmark = pytest.mark.broker

S = 1000
MIN = 60 * S
HOUR = 60 * MIN
BASE = ev.now_ms() - 2 * HOUR  # two hours ago: inside the default 24 h range


def state(order_id: str, channel: str, new: str, times: dict[str, int], warehouse: str = "") -> dict[str, Any]:
    return {"event_id": f"{order_id}:{new}", "event_time_ms": times[new], "order_id": order_id,
            "channel": channel, "state": new, "previous_state": "", "reason": "", "warehouse_id": warehouse,
            "stage_times": times}  # fmt: skip


def lifecycle(order_id: str, channel: str, warehouse: str, start: int, steps: list[tuple[str, int]]) -> list:
    """Transitions of one order: each step (state, ms after the previous one), stage times accumulating."""
    times: dict[str, int] = {}
    at = start
    out = []
    for name, after in steps:
        at += after
        times = {**times, name: at}
        out.append(("order.states", order_id, "OrderStateChanged", state(order_id, channel, name, times, warehouse)))
    return out


def alert(kind: str, subject: str, at: int, severity: str = "RED", cleared: bool = False) -> tuple:
    return ("alerts", subject, "Alert", {"event_id": f"{kind}:{subject}:{at}", "event_time_ms": at, "kind": kind,
            "severity": severity, "subject": subject, "message": f"{kind} {subject}", "cleared": cleared,
            "details": {}})  # fmt: skip


def level(sku: str, at: int, available: int, locked: int, sold: int) -> tuple:
    return ("stock.levels", sku, "StockLevel", {
        "event_id": f"level:{sku}:{at}", "event_time_ms": at, "sku": sku, "on_hand": available + locked + sold,
        "locked": locked + sold, "presale_reserved": 0, "presale_cap": 0, "sold": sold, "available": available,
        "paused": available < 10, "sellable": {}, "on_hand_by_warehouse": {}, "allocated_by_warehouse": {},
        "newest_change_ms": at, "newest_source_ms": 0})  # fmt: skip


def reservation(order_id: str, channel: str, at: int, reasons: list[str]) -> tuple:
    lines = [
        {"line_no": n + 1, "sku": "SKU-D1", "qty": 1, "outcome": "REFUSED", "reason": r} for n, r in enumerate(reasons)
    ]
    return ("reservation.results", order_id, "ReservationDecided", {
        "event_id": f"{order_id}:reservation", "event_time_ms": at, "order_id": order_id, "channel": channel,
        "outcome": "REJECTED", "lines": lines, "placed_at_ms": at, "sent_at_ms": 0})  # fmt: skip


def decision(order_id: str, at: int, assignments: dict[str, list[int]], score: float) -> tuple:
    candidates = [{"warehouse_id": wh, "distance_km": 100.0, "distance": 0.5, "sufficiency": 0.8, "on_time": 0.9,
                   "cost": 0.2, "score": score} for wh in assignments]  # fmt: skip
    return ("routing.decisions", order_id, "RoutingDecision", {
        "event_id": f"{order_id}:route:1", "event_time_ms": at, "order_id": order_id, "channel": "tmall",
        "split": len(assignments) > 1,
        "assignments": [{"warehouse_id": w, "line_nos": n} for w, n in assignments.items()],
        "candidates": candidates, "weights": {"distance": 0.4}})  # fmt: skip


def health(order_id: str, at: int, score: float, returns: int) -> tuple:
    points = {"promptness": 20.0, "address": 30.0, "complexity": 20.0, "returns": 30.0 - 10 * returns, "coupon": 0.0}
    return ("order.health", order_id, "OrderHealthScored", {
        "event_id": f"{order_id}:health", "event_time_ms": at, "order_id": order_id, "channel": order_id.split(":")[0],
        "customer_id": "c-1", "score": score, "focus": score < 60, "focus_below": 60.0, "breakdown": points,
        "weights": {}, "notes": [f"{returns} returns in 180 days"], "paid_after_ms": MIN,
        "returns": returns})  # fmt: skip


# The fixed set of events every dashboard is checked against (times relative to BASE).
#   tmall:A and tmall:B: reserved after 1 s, paid 60 s later, routed 60 s later; A shipped 1 h later.
#   jd:C: reserved after 3 s, paid 120 s later, never routed.  jd:D: payment timeout.
#   Health scores: jd:C 40 (in the focus pool), tmall:B 90.
FIXED = [
    *lifecycle(
        "tmall:A",
        "tmall",
        "WH-SH",
        BASE,
        [("placed", 0), ("reserved", S), ("paid", MIN), ("routed", MIN), ("shipped", 60 * MIN)],
    ),
    *lifecycle(
        "tmall:B", "tmall", "WH-GZ,WH-SH", BASE + S, [("placed", 0), ("reserved", S), ("paid", MIN), ("routed", MIN)]
    ),
    *lifecycle("jd:C", "jd", "", BASE + 2 * S, [("placed", 0), ("reserved", 3 * S), ("paid", 2 * MIN)]),
    *lifecycle("jd:D", "jd", "", BASE + 3 * S, [("placed", 0), ("reserved", S), ("payment_timeout", 30 * MIN)]),
    reservation("jd:E", "jd", BASE + 5 * S, ["insufficient_stock"]),
    reservation("pdd:F", "pdd", BASE + 6 * S, ["channel_paused", "insufficient_stock"]),
    (
        "stock.hold-results",
        "jd:G",
        "HoldDecided",
        {
            "event_id": "jd:G#1:EXPIRE:EXPIRED",
            "event_time_ms": BASE + 7 * S,
            "order_id": "jd:G",
            "line_no": 1,
            "sku": "SKU-D1",
            "qty": 1,
            "action": "EXPIRE",
            "outcome": "EXPIRED",
            "reason": "hold_expired",
            "source_time_ms": 0,
        },
    ),
    level("SKU-D1", BASE, 20, 0, 0),
    level("SKU-D1", BASE + MIN, 12, 5, 3),
    level("SKU-D1", BASE + 2 * MIN, 5, 8, 7),
    level("SKU-D2", BASE, 50, 0, 0),
    alert("stock_paused", "SKU-D1", BASE + 2 * MIN, "WARNING"),
    alert("stock_resumed", "SKU-D1", BASE + 3 * MIN, "INFO", cleared=True),
    alert("sla_breach", "tmall:A", BASE + 20 * MIN),
    alert("sla_breach", "tmall:A", BASE + 25 * MIN, "INFO", cleared=True),
    alert("sla_breach", "jd:C", BASE + 21 * MIN),
    decision("tmall:A", BASE + 62 * S, {"WH-SH": [1]}, 0.7),
    decision("tmall:B", BASE + 63 * S, {"WH-SH": [1], "WH-GZ": [2]}, 0.5),
    health("jd:C", BASE + 125 * S, 40.0, 3),
    health("tmall:B", BASE + 62 * S, 90.0, 1),
]


def send_fixed(settings: Settings) -> int:
    producer = EventProducer(settings)
    for topic, key, kind, record in FIXED:
        producer.send(topic, key, kind, record)
    producer.send_raw("order.events", "tmall:X", b"not avro at all")  # one dead letter
    producer.flush()
    return len(FIXED)


def rows(settings: Settings, name: str, **given: str) -> list[dict[str, Any]]:
    return dashboards.run(settings, name, given)[1]


def expected_dashboards(settings: Settings) -> dict[str, Any]:
    return {
        "flow_time": rows(settings, "flow_time"),
        "by_channel": rows(settings, "flow_time", by="channel"),
        "waiting": rows(settings, "orders_waiting_now"),
        "sla": rows(settings, "sla_breaches"),
        "red": rows(settings, "orders_red_now"),
        "outcomes": rows(settings, "reservation_outcomes"),
        # Levels a minute apart: over a day's range (86 s steps) two of them can share a step.
        "timeline": rows(settings, "stock_timeline", sku="SKU-D1", from_ms=str(BASE - HOUR), to_ms=str(BASE + HOUR)),
        "pauses": rows(settings, "channel_pauses"),
        "low": rows(settings, "low_stock"),
        "share": rows(settings, "routing_share"),
        "split": rows(settings, "split_rate"),
        "dead": rows(settings, "dead_letters"),
        "focus": rows(settings, "focus_pool"),
        "standing": rows(settings, "alerts_standing"),
    }


@pytest.mark.parametrize("backend", ["embedded", "server"])
def test_a_fixed_set_of_events_gives_the_expected_numbers_in_every_dashboard(
    backend: str, make_settings, start_worker, start_sink, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue("clickhouse_server_url") if backend == "server" else f"chdb://{tmp_path / 'ch'}"
    settings = make_settings(clickhouse_url=url)
    start_worker(settings)
    start_sink(settings)  # with chdb the sink owns the folder: the dashboards are read through it
    send_fixed(settings)
    seen: dict[str, Any] = {}

    def complete() -> dict[str, Any] | None:
        seen.update(expected_dashboards(settings))
        names = ("split", "dead", "timeline", "outcomes", "flow_time", "share", "focus")
        counts = {name: len(seen[name]) for name in names}
        full = counts == {"split": 1, "dead": 1, "timeline": 3, "outcomes": 4, "flow_time": 4, "share": 2, "focus": 1}
        return dict(seen) if full and seen["split"][0]["routed_orders"] == 2 else None

    try:
        found = wait_for(complete, timeout_s=90, what="every fixed event in the dashboards")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {seen}") from None

    flow = {(r["stage"]): (r["orders"], r["p50_s"], r["p90_s"], r["p99_s"]) for r in found["flow_time"]}
    assert flow == {
        "1 placed→reserved": (4, 1.0, 3.0, 3.0),  # 1, 1, 1, 3 s: p90 and p99 catch the slow jd:C
        "2 reserved→paid": (3, 60.0, 120.0, 120.0),
        "3 paid→routed": (2, 60.0, 60.0, 60.0),
        "4 routed→shipped": (1, 3600.0, 3600.0, 3600.0),
    }
    by_channel = {(r["dimension"], r["stage"]): r["p50_s"] for r in found["by_channel"]}
    assert by_channel[("jd", "2 reserved→paid")] == 120.0 and by_channel[("tmall", "2 reserved→paid")] == 60.0
    waiting = {r["state"]: r["orders"] for r in found["waiting"]}
    assert waiting == {"shipped": 1, "routed": 1, "paid": 1}  # A with the carrier, B at its warehouses, C unrouted
    assert (sum(r["raised"] for r in found["sla"]), sum(r["clearings"] for r in found["sla"])) == (2, 1)
    assert [r["order_id"] for r in found["red"]] == ["jd:C"]
    standing = {(r["kind"], r["subject"]): r for r in found["standing"]}
    assert {subject for kind, subject in standing if kind == "sla_breach"} == {"jd:C"}  # the other one cleared
    assert standing[("sla_breach", "jd:C")]["severity"] == "RED" and found["standing"][0]["severity"] == "RED"
    outcomes = {(r["result"], r["reason"]): r["count"] for r in found["outcomes"]}
    assert outcomes == {
        ("rejected", "insufficient_stock"): 2,
        ("rejected", "channel_paused"): 1,
        ("hold_expired", "hold_expired"): 1,
        ("payment_timeout", "no payment within the timeout"): 1,
    }
    # One SKU: only its lines' rejections and expiries (payment timeouts are per order, not per SKU).
    by_sku = wait_for(
        lambda: (
            (found_rows := rows(settings, "reservation_outcomes", sku="SKU-D1")) and len(found_rows) == 3 and found_rows
        ),
        timeout_s=30,
        what="reservation outcomes of SKU-D1",
    )
    assert {(r["result"], r["reason"]): r["count"] for r in by_sku} == {
        ("rejected", "insufficient_stock"): 2,
        ("rejected", "channel_paused"): 1,
        ("hold_expired", "hold_expired"): 1,
    }
    assert rows(settings, "reservation_outcomes", sku="SKU-D2") == []
    names = {"flow_time": "flow_time", "waiting": "orders_waiting_now", "sla": "sla_breaches", "red": "orders_red_now",
             "outcomes": "reservation_outcomes", "timeline": "stock_timeline", "pauses": "channel_pauses",
             "low": "low_stock", "share": "routing_share", "split": "split_rate", "dead": "dead_letters",
             "focus": "focus_pool", "standing": "alerts_standing"}  # fmt: skip
    for key, name in names.items():  # the columns read from the SQL (an empty result's CSV header) are the real ones
        assert list(found[key][0]) == list(dashboards.find(name).columns), name
    assert [(r["available"], r["locked"], r["sold"]) for r in found["timeline"]] == [(20, 0, 0), (12, 8, 3), (5, 15, 7)]
    assert [(r["sku"], r["change"]) for r in found["pauses"]] == [("SKU-D1", "resumed"), ("SKU-D1", "paused")]
    assert [(r["sku"], r["available"]) for r in found["low"]] == [("SKU-D1", 5)]
    share = {r["warehouse_id"]: (r["orders"], r["share_pct"], r["avg_score"]) for r in found["share"]}
    assert share == {"WH-SH": (2, 100.0, 0.6), "WH-GZ": (1, 50.0, 0.5)}
    assert found["split"] == [{"routed_orders": 2, "split_orders": 1, "split_pct": 50.0}]
    assert [(r["reason"], r["count"]) for r in found["dead"]] == [("bad_header", 1)]
    assert found["dead"][0]["source_topic"] == settings.topic("order.events")
    [focus] = found["focus"]
    assert (focus["order_id"], focus["current_state"], focus["score"], focus["returns"], focus["why"]) == (
        "jd:C", "paid", 40.0, 0.0, "3 returns in 180 days")  # fmt: skip

    # Sent again (a producer retrying everything): the dashboards do not move.
    send_fixed(settings)
    time.sleep(3 * settings.sink_flush_interval_s + 2)
    again = expected_dashboards(settings)
    for name in ("flow_time", "outcomes", "share", "split", "low", "timeline", "pauses", "focus"):
        assert again[name] == found[name], name
    assert [r["order_id"] for r in again["red"]] == ["jd:C"]


def test_dashboard_parameters_are_checked_and_never_pasted_into_sql() -> None:
    settings = Settings()
    flow = dashboards.find("flow_time")
    with pytest.raises(dashboards.DashboardError, match="no dashboard"):
        dashboards.find("drop_table")
    with pytest.raises(dashboards.DashboardError, match="channel must be one of"):
        dashboards.bind(flow, {"channel": "tmall' OR 1=1 --"}, settings)
    with pytest.raises(dashboards.DashboardError, match="not a time"):
        dashboards.bind(flow, {"from_ms": "yesterday-ish"}, settings)
    with pytest.raises(dashboards.DashboardError, match="unknown parameter"):
        dashboards.bind(flow, {"limit": "5"}, settings)
    with pytest.raises(dashboards.DashboardError, match="empty"):
        dashboards.bind(flow, {"from_ms": "now", "to_ms": "-1h"}, settings)
    with pytest.raises(dashboards.DashboardError, match="needs a sku"):
        dashboards.bind(dashboards.find("stock_timeline"), {}, settings)
    bound = dashboards.bind(flow, {"from_ms": "-2h", "to_ms": "now", "by": "hour"}, settings, now_ms=10_000_000)
    assert bound["from_ms"] == 10_000_000 - 7_200_000 and bound["to_ms"] == 10_000_000 and bound["by"] == "hour"
    assert dashboards.parse_time("2026-11-11T00:00:00+08:00", 0) == 1794326400000
    for dash in dashboards.load_all().values():  # every value is a {name:Type} placeholder
        assert "'" + "{" not in dash.sql and dash.params, dash.name


def test_cli_prints_a_dashboard_and_refuses_bad_input_without_a_traceback(tmp_path: Path) -> None:
    import json
    import os
    import sys

    # No sink answers on its port, so the CLI opens the chdb folder itself.
    env = {**os.environ, "STOCKFLOW_HOME": str(tmp_path), "STOCKFLOW_CLICKHOUSE_URL": f"chdb://{tmp_path / 'ch'}",
           "STOCKFLOW_WEB_PORT": str(free_port()), "STOCKFLOW_SINK_PORT": str(free_port())}  # fmt: skip
    cli = [sys.executable, "-m", "agents.cli", "dash"]
    listed = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "flow_time" in listed.stdout
    ok = subprocess.run([*cli, "split_rate", "--format", "json"], env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == [{"routed_orders": 0, "split_orders": 0, "split_pct": 0}]
    csv_out = subprocess.run(
        [*cli, "split_rate", "--format", "csv"], env=env, capture_output=True, text=True, timeout=120
    )
    assert csv_out.stdout.splitlines()[0] == "routed_orders,split_orders,split_pct"
    # Nothing routed yet: the table says so, the CSV is its header alone, the JSON an empty list.
    empty = {fmt: subprocess.run([*cli, "routing_share", "--format", fmt], env=env, capture_output=True, text=True,
                                 timeout=120) for fmt in ("table", "csv", "json")}  # fmt: skip
    assert all(done.returncode == 0 for done in empty.values()), {f: d.stderr for f, d in empty.items()}
    assert empty["table"].stdout.splitlines()[0] == "Routing: share of orders per warehouse: no rows"
    assert "shares add up to more than 100%" in empty["table"].stdout
    assert empty["csv"].stdout.splitlines() == [",".join(dashboards.find("routing_share").columns)]
    assert json.loads(empty["json"].stdout) == []
    for args, message in (
        (["nope"], "no dashboard 'nope'"),
        (["flow_time", "--channel", "ebay"], "channel must be one of"),
        (["flow_time", "--from", "last tuesday"], "not a time"),
    ):
        bad = subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=120)
        assert bad.returncode == 1 and message in bad.stdout and "Traceback" not in bad.stdout + bad.stderr, args


def count_final(settings: Settings, table: str) -> int:
    from streams.stores.clickhouse import open_clickhouse

    ch = open_clickhouse(settings)
    try:
        return int(ch.query(f"SELECT count() AS n FROM {table} FINAL")[0]["n"])
    finally:
        ch.close()


def stream_alerts(settings: Settings, count: int, seconds: float, prefix: str) -> None:
    producer = EventProducer(settings)
    started = time.monotonic()
    for i in range(count):
        topic, key, kind, record = alert("drill", f"{prefix}-{i}", BASE + i, "INFO")
        producer.send(topic, key, kind, record)
        ahead = started + seconds * (i + 1) / count - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    producer.flush()


def test_killing_the_sink_mid_batch_loses_and_doubles_nothing(
    make_settings, start_worker, start_sink, clickhouse_server_url
) -> None:
    settings = make_settings(clickhouse_url=clickhouse_server_url, sink_batch_rows=400, sink_flush_interval_s=0.5)
    worker = start_worker(settings)
    sink = start_sink(settings)
    sender = threading.Thread(target=stream_alerts, args=(settings, 3000, 6.0, "kill"))
    sender.start()
    for n in range(2):
        time.sleep(2.0)
        sink.kill9()  # mid-batch: rows may be inserted and not yet committed, or fetched and not inserted
        sink = start_sink(settings, name=f"sink-restart{n}")
    sender.join()
    wait_for(lambda: count_final(settings, "alerts") == 3000, timeout_s=120, what="all 3000 alerts in ClickHouse")
    time.sleep(2)
    assert count_final(settings, "alerts") == 3000
    assert count_final(settings, "events") == 3000
    assert worker.alive()  # the worker never noticed: the sink is not in it


def test_a_sink_started_from_the_beginning_refills_a_clickhouse_that_lost_its_rows(
    make_settings, start_sink, clickhouse_server_url
) -> None:
    settings = make_settings(clickhouse_url=clickhouse_server_url, sink_flush_interval_s=0.3)
    sink = start_sink(settings)
    stream_alerts(settings, 200, 1.0, "refill")
    wait_for(lambda: count_final(settings, "alerts") == 200, timeout_s=60, what="200 alerts in ClickHouse")
    sink.stop()
    # ClickHouse lost what it had (a power cut before its pages reached the disk, a new server): here a new
    # database, while the group's offsets say everything was stored.
    lost = settings.model_copy(update={"clickhouse_database": f"{settings.clickhouse_database}_new"})
    plain = start_sink(lost)
    stream_alerts(lost, 1, 0.0, "after-restart")  # once it is in, the sink has read past what it had committed
    wait_for(lambda: count_final(lost, "alerts") >= 1, timeout_s=60, what="the alert sent after the restart")
    assert count_final(lost, "alerts") == 1  # a plain restart resumes after the committed offsets
    plain.stop()
    refill = start_sink(lost, name="sink-refill", args=("--from-beginning",))
    wait_for(lambda: count_final(lost, "alerts") == 201, timeout_s=60, what="the 200 alerts read again")
    refill.stop()
    start_sink(lost, name="sink-again", args=("--from-beginning",))  # run twice: still one row per event
    stream_alerts(lost, 1, 0.0, "after-second-refill")
    wait_for(lambda: count_final(lost, "alerts") >= 202, timeout_s=60, what="the alert after the second refill")
    assert count_final(lost, "alerts") == 202 and count_final(lost, "events") == 202


def test_a_clickhouse_outage_holds_the_sink_and_loses_nothing(
    make_settings, start_worker, start_sink, tmp_path: Path
) -> None:
    tcp, http = free_ports(2)
    server = LocalClickHouseServer(Settings(home=tmp_path / "chsrv"), tcp_port=tcp, http_port=http)
    server.up()
    try:
        settings = make_settings(clickhouse_url=server.url, sink_flush_interval_s=0.3)
        worker = start_worker(settings)
        sink = start_sink(settings)
        sender = threading.Thread(target=stream_alerts, args=(settings, 2000, 8.0, "outage"))
        sender.start()
        time.sleep(2.0)
        server.down()  # ClickHouse gone while events keep coming
        wait_for(
            lambda: (s := sink.get("/sink/status"))["retries"] > 0 and not s["ready"] and s,
            timeout_s=30,
            what="the sink retrying, not ready",
        )
        assert sink.get("/readyz")["ready"] is False
        server.up()  # stopped and started again: the sink reconnects and nothing is lost
        sender.join()
        wait_for(
            lambda: count_final(settings, "alerts") == 2000, timeout_s=120, what="all 2000 alerts after the outage"
        )
        time.sleep(2)
        assert count_final(settings, "alerts") == 2000 and count_final(settings, "events") == 2000
        assert sink.get("/sink/status")["unstorable"] == 0  # an outage dead-letters nothing
        wait_for(lambda: sink.get("/readyz")["ready"], what="the sink ready again")
        assert worker.alive()
    finally:
        server.down()


@pytest.mark.parametrize("backend", ["embedded", "server"])
def test_a_microsecond_event_time_is_dead_lettered_and_the_events_around_it_land(
    backend: str, make_settings, start_sink, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """One producer writing microseconds once must not stall the dashboards (a server refuses the row,
    chdb would clamp it to 2106): it becomes an ``unstorable`` dead letter and the stream goes on."""
    url = request.getfixturevalue("clickhouse_server_url") if backend == "server" else f"chdb://{tmp_path / 'ch'}"
    settings = make_settings(clickhouse_url=url)
    sink = start_sink(settings)
    producer = EventProducer(settings)
    at = ev.now_ms()
    for i in range(6):
        topic, key, kind, record = alert("drill", f"SKU-M{i}", at + i, "INFO")
        if i == 3:
            record = {**record, "event_time_ms": (at + i) * 1000}  # microseconds since the epoch
        producer.send(topic, key, kind, record)
    producer.flush()
    wait_for(lambda: sink.get("/sink/status")["rows"] >= 5, what="the five good alerts in ClickHouse")

    poison = next(r for r in read_all(settings.bootstrap, settings.topic(ALERTS.name))
                  if r.key == b"SKU-M3")  # fmt: skip
    letters = wait_for(lambda: [r for t, r in read_topic(settings, "deadletters") if r["reason"] == "unstorable"],
                       what="the unstorable dead letter")  # fmt: skip
    assert len(letters) == 1
    letter = letters[0]
    assert (letter["source_topic"], letter["source_partition"], letter["source_offset"]) == (
        settings.topic(ALERTS.name), poison.partition, poison.offset)  # fmt: skip
    assert letter["original_key"] == b"SKU-M3" and letter["original_value"] == poison.value
    assert "microseconds" in letter["detail"] and letter["stage"] == "agents.analytics.sink"

    # The dashboards keep moving: events sent after the poison land, and the dead letter is on its dashboard.
    topic, key, kind, record = alert("drill", "SKU-M-after", at + 10, "INFO")
    producer.send(topic, key, kind, record)
    producer.flush()
    wait_for(lambda: sink.get("/sink/status")["rows"] >= 7, what="the alert after the poison and the dead letter")
    dead = wait_for(lambda: rows(settings, "dead_letters"), what="the dead letters dashboard")
    assert [(r["reason"], r["count"]) for r in dead] == [("unstorable", 1)]
    status = sink.get("/sink/status")
    assert status["by_type"] == {"Alert": 6, "DeadLetter": 1} and status["unstorable"] == 1
    assert status["ready"] and sink.get("/readyz")["ready"] is True
    wait_for(lambda: sink.get("/sink/status")["lag"] == 0, what="the sink caught up (lag 0)")


def test_the_grafana_dashboards_are_generated_from_the_sql_files() -> None:
    import json
    import re

    from tests.helpers import REPO_ROOT

    committed = json.loads((REPO_ROOT / "deploy/grafana/dashboards/stockflow.json").read_text(encoding="utf-8"))
    regenerate = "stockflow dash --export-grafana deploy/grafana/dashboards/stockflow.json"
    assert committed == dashboards.grafana_dashboard(Settings()), f"out of date: run {regenerate}"
    for panel in committed["panels"]:  # every bound parameter became a Grafana macro or variable
        assert not re.search(r"(?<!\$)\{\w+:\w+\}", panel["targets"][0]["rawSql"]), panel["title"]
