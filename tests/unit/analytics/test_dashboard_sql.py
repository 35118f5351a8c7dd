"""The dashboards' SQL on embedded ClickHouse (chdb) over the real DDL: events go in through the sink's own batch
writer, each dashboard is asked as ``stockflow dash`` asks it (``queries.bind``), and the figures are worked out
by hand."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agents.analytics import queries as dashboards
from agents.analytics.sink import BatchWriter, Received, SharedClickHouse, SinkStatus
from streams.contract.codec import default_codec
from streams.settings import Settings

CODEC = default_codec()
SHOP = ZoneInfo("Asia/Shanghai")
S = 1000
MIN = 60 * S
H = 60 * MIN
DAY = 24 * H
ORDER_STATES = ("placed", "reserved", "paid", "routed", "shipped", "delivered", "rejected", "cancelled",
                "payment_timeout")  # fmt: skip
REFUND_STATES = ("requested", "reviewing", "awaiting_return", "received", "refunding", "completed", "rejected",
                 "cancelled")  # fmt: skip
Event = tuple[str, str, str, dict[str, Any], int]  # topic, key, event type, record, broker timestamp


def shop_ms(text: str) -> int:
    """Epoch ms of a wall-clock time in the shop's zone."""
    return int(datetime.fromisoformat(text).replace(tzinfo=SHOP).timestamp() * 1000)


@pytest.fixture
def ch(tmp_path: Path) -> Iterator[SharedClickHouse]:
    shared = SharedClickHouse(Settings(clickhouse_url=f"chdb://{tmp_path}", clickhouse_database="t"))
    yield shared
    shared.drop()  # embedded ClickHouse holds one folder per process: the next test opens its own


def store(ch: SharedClickHouse, events: list[Event]) -> None:
    messages = [Received(topic, 0, n, key.encode(), CODEC.encode(kind, record), timestamp_ms=broker_ms)
                for n, (topic, key, kind, record, broker_ms) in enumerate(events)]  # fmt: skip
    assert BatchWriter(CODEC, ch, SinkStatus()).write(messages, shop_ms("2026-12-20T00:00")) == []


def dash(ch: SharedClickHouse, name: str, now_ms: int, **given: object) -> list[dict[str, Any]]:
    found = dashboards.find(name)
    return ch.query(found.sql, dashboards.bind(found, {k: str(v) for k, v in given.items()}, Settings(), now_ms))


# ---- orders ----------------------------------------------------------------------------------------------
def order(order_id: str, steps: list[tuple[str, int]], warehouse: str = "", channel: str = "jd") -> list[Event]:
    """The lifecycle's OrderStateChanged records: one per state entered, each with every stage time so far; the
    warehouses from the routing on."""
    times: dict[str, int] = {}
    previous, out = "", []
    for state, at in steps:
        times = {**times, state: at}
        routed = "routed" in times or "shipped" in times
        out.append(("order.states", order_id, "OrderStateChanged", {
            "event_id": f"{order_id}:{state}", "event_time_ms": at, "order_id": order_id, "channel": channel,
            "state": state, "previous_state": previous, "reason": "", "warehouse_id": warehouse if routed else "",
            "stage_times": dict(times)}, 0))  # fmt: skip
        previous = state
    return out


def routing(order_id: str, attempt: int, at: int, assignments: dict[str, list[int]], split: bool,
            channel: str = "jd") -> Event:  # fmt: skip
    candidates = [{"warehouse_id": wh, "distance_km": 100.0 * attempt, "distance": 0.5, "sufficiency": 1.0,
                   "on_time": 0.9, "cost": 0.4, "score": 0.1 * attempt} for wh in sorted(assignments)]  # fmt: skip
    given = [{"warehouse_id": wh, "line_nos": nos} for wh, nos in sorted(assignments.items())]
    return ("routing.decisions", order_id, "RoutingDecision", {
        "event_id": f"{order_id}:route:{attempt}", "event_time_ms": at, "order_id": order_id, "channel": channel,
        "split": split, "assignments": given, "candidates": candidates, "weights": {"distance": 1.0}}, 0)  # fmt: skip


def sla_alert(order_id: str, at: int, cleared: bool = False) -> Event:
    suffix = ":cleared" if cleared else ""
    return ("alerts", order_id, "Alert", {
        "event_id": f"sla_breach:{order_id}{suffix}", "event_time_ms": at, "kind": "sla_breach",
        "severity": "INFO" if cleared else "RED", "subject": order_id, "message": f"order {order_id}",
        "cleared": cleared, "details": {}}, 0)  # fmt: skip


def stock_level(sku: str, n: int, at: int) -> Event:
    return ("stock.levels", sku, "StockLevel", {
        "event_id": f"{sku}:level:{n}", "event_time_ms": at, "sku": sku, "on_hand": 10_000, "locked": n % 7,
        "presale_reserved": 0, "presale_cap": 0, "sold": n, "available": 10_000 - n, "paused": False,
        "sellable": {}, "on_hand_by_warehouse": {}, "allocated_by_warehouse": {}, "newest_change_ms": at,
        "newest_source_ms": at}, 0)  # fmt: skip


def test_a_split_order_counts_at_each_of_its_warehouses_in_flow_time_and_waiting(ch: SharedClickHouse) -> None:
    t = shop_ms("2026-11-11T10:00")
    store(ch, [
        *order("jd:A", [("placed", t), ("reserved", t + S), ("paid", t + MIN), ("routed", t + 3 * MIN)],
               "WH-BJ,WH-SH"),
        *order("jd:B", [("placed", t), ("reserved", t + S), ("paid", t + MIN), ("routed", t + 2 * MIN)], "WH-SH"),
    ])  # fmt: skip
    now = t + 10 * MIN
    by_warehouse = {(r["dimension"], r["stage"]): r["orders"] for r in dash(ch, "flow_time", now, by="warehouse")}
    assert by_warehouse[("WH-BJ", "3 paid→routed")] == 1
    assert by_warehouse[("WH-SH", "3 paid→routed")] == 2
    assert not any("," in dimension for dimension, _ in by_warehouse)
    one = dash(ch, "flow_time", now, by="warehouse", warehouse="WH-BJ")
    assert {(r["dimension"], r["stage"], r["orders"]) for r in one} == {
        ("WH-BJ", "1 placed→reserved", 1),
        ("WH-BJ", "2 reserved→paid", 1),
        ("WH-BJ", "3 paid→routed", 1),
    }
    assert [r["orders"] for r in dash(ch, "flow_time", now, warehouse="WH-BJ") if r["stage"] == "3 paid→routed"] == [1]
    waiting = dash(ch, "orders_waiting_now", now, warehouse="WH-BJ")
    assert [(r["state"], r["orders"]) for r in waiting] == [("routed", 1)]
    assert [(r["state"], r["orders"]) for r in dash(ch, "orders_waiting_now", now, warehouse="WH-SH")] == [
        ("routed", 2)
    ]


def test_the_now_panels_show_orders_waiting_or_red_since_before_the_range(ch: SharedClickHouse) -> None:
    now = shop_ms("2026-11-12T16:00")
    paid = now - 30 * H  # paid 30 h ago, never routed, red since: the oldest problem of all
    store(ch, [*order("jd:C", [("placed", paid - MIN), ("reserved", paid - MIN + S), ("paid", paid)]),
               sla_alert("jd:C", paid + 15 * MIN),
               *order("jd:D", [("placed", now - H), ("reserved", now - H + S), ("paid", now - H + MIN)]),
               sla_alert("jd:D", now - 30 * MIN), sla_alert("jd:D", now - 20 * MIN, cleared=True)])  # fmt: skip
    [waiting] = dash(ch, "orders_waiting_now", now)  # the default range: the last 24 h
    assert (waiting["state"], waiting["orders"], waiting["oldest_min"]) == ("paid", 2, 30 * 60.0)
    red = dash(ch, "orders_red_now", now)
    assert [(r["order_id"], r["red_for_min"]) for r in red] == [("jd:C", 30 * 60.0 - 15)]
    assert dash(ch, "orders_red_now", now, to_ms=paid) == []  # not red yet at the range's end


def test_a_presale_order_waiting_for_its_balance_is_not_counted_as_waiting_for_a_payment(
    ch: SharedClickHouse,
) -> None:
    """Changed on purpose: deposit-paid presale orders, waiting weeks for their balance by design, were
    'reserved' orders and topped the p90 of the orders waiting for a payment."""
    now = shop_ms("2026-11-12T16:00")
    presale = order("jd:PS", [("placed", now - 20 * 24 * H), ("reserved", now - 20 * 24 * H + S)])
    paid_at = now - 20 * 24 * H + MIN
    deposit = dict(presale[-1][3], event_id="jd:PS:deposit", reason="deposit_paid", event_time_ms=paid_at)
    store(ch, [*presale, ("order.states", "jd:PS", "OrderStateChanged", deposit, 0),
               *order("jd:R", [("placed", now - 10 * MIN), ("reserved", now - 10 * MIN + S)])])  # fmt: skip
    waiting = {r["state"]: (r["orders"], r["oldest_min"]) for r in dash(ch, "orders_waiting_now", now)}
    assert waiting["reserved"] == (1, 10.0) and waiting["deposit_paid"][0] == 1


def test_the_current_state_is_the_furthest_in_the_lifecycle_whatever_the_clocks_say(ch: SharedClickHouse) -> None:
    t = shop_ms("2026-11-11T10:00")
    # The marketplace's clock runs 3 s ahead: its placing is stamped after the reservation that followed it.
    store(ch, order("jd:E", [("placed", t + 3 * S), ("reserved", t + 2 * S)]))
    [waiting] = dash(ch, "orders_waiting_now", t + MIN)
    assert (waiting["state"], waiting["orders"], waiting["oldest_min"]) == ("reserved", 1, 1.0)
    # So for the focus pool: paid before the placing's stamp, it is paid, not placed.
    store(ch, [*order("jd:F", [("placed", t + 3 * S), ("reserved", t + S), ("paid", t + 2 * S)]),
               ("order.health", "jd:F", "OrderHealthScored", {
                   "event_id": "jd:F:health", "event_time_ms": t + 2 * S, "order_id": "jd:F", "channel": "jd",
                   "customer_id": "c", "score": 40.0, "focus": True, "focus_below": 60.0, "breakdown": {},
                   "weights": {}, "notes": [], "paid_after_ms": S, "returns": 0}, 0)])  # fmt: skip
    assert [r["current_state"] for r in dash(ch, "focus_pool", t + MIN)] == ["paid"]


def test_routing_share_and_split_rate_count_the_final_allocation_only(ch: SharedClickHouse) -> None:
    t = shop_ms("2026-11-11T10:00")
    store(ch, [
        # jd:G: WH-SH no longer had line 2's units; the second attempt sent it to WH-GZ.
        routing("jd:G", 1, t, {"WH-BJ": [1], "WH-SH": [2]}, split=True),
        routing("jd:G", 2, t + S, {"WH-GZ": [2]}, split=True),
        *order("jd:G", [("placed", t - MIN), ("reserved", t - MIN), ("paid", t - S), ("routed", t + 2 * S)],
               "WH-BJ,WH-GZ"),
        # jd:H: split at first, then line 2 found at WH-BJ as well: it ships from one warehouse.
        routing("jd:H", 1, t, {"WH-BJ": [1], "WH-SH": [2]}, split=True),
        routing("jd:H", 2, t + S, {"WH-BJ": [2]}, split=False),
        *order("jd:H", [("placed", t - MIN), ("reserved", t - MIN), ("paid", t - S), ("routed", t + 2 * S)], "WH-BJ"),
    ])  # fmt: skip
    now = t + H
    share = {r["warehouse_id"]: r for r in dash(ch, "routing_share", now)}
    assert {wh: (r["orders"], r["share_pct"]) for wh, r in share.items()} == {"WH-BJ": (2, 100.0),
                                                                              "WH-GZ": (1, 50.0)}  # fmt: skip
    assert share["WH-GZ"]["avg_km"] == 200.0  # the scores of the decision that gave it the line
    assert [r["warehouse_id"] for r in dash(ch, "routing_share", now, warehouse="WH-SH")] == []
    [rate] = dash(ch, "split_rate", now)
    assert (rate["routed_orders"], rate["split_orders"], rate["split_pct"]) == (2, 1, 50.0)


def test_an_order_routed_and_cancelled_in_one_batch_counts_as_routed(ch: SharedClickHouse) -> None:
    """Found by an operator's trial: routing_share and split_rate counted 155 routed orders where flow time counted
    158. The lifecycle publishes a batch's newest state per order alone, so an order routed and then cancelled in
    one batch has no 'routed' record; its cancelled one carries the routed time and the warehouses."""
    t = shop_ms("2026-11-11T10:00")
    steps = [("placed", t - MIN), ("reserved", t - MIN), ("paid", t - S), ("routed", t), ("cancelled", t)]
    collapsed = [e for e in order("jd:K", steps, "WH-SH") if e[3]["state"] != "routed"]
    store(ch, [*collapsed, routing("jd:K", 1, t, {"WH-SH": [1]}, split=False),
               *order("jd:L", [("placed", t - MIN), ("reserved", t - MIN), ("paid", t - S), ("routed", t + S),
                               ("shipped", t + H)], "WH-SH,WH-GZ")])  # fmt: skip
    now = t + 2 * H
    share = {r["warehouse_id"]: (r["orders"], r["share_pct"]) for r in dash(ch, "routing_share", now)}
    assert share == {"WH-SH": (2, 100.0), "WH-GZ": (1, 50.0)}
    [rate] = dash(ch, "split_rate", now)
    assert (rate["routed_orders"], rate["split_orders"]) == (2, 1)
    assert [r["orders"] for r in dash(ch, "flow_time", now) if r["stage"] == "3 paid→routed"] == [2]


def test_a_busy_skus_timeline_covers_the_whole_range_one_point_per_bucket(ch: SharedClickHouse) -> None:
    now = shop_ms("2026-11-11T12:00")
    start = now - DAY
    store(ch, [stock_level("SKU-HOT", n, start + n * 12 * S) for n in range(7200)])  # one level every 12 s
    points = dash(ch, "stock_timeline", now, sku="SKU-HOT")
    assert 500 <= len(points) <= 1001
    times = [datetime.fromisoformat(p["time"]).replace(tzinfo=SHOP) for p in points]
    assert times == sorted(times)
    assert times[0].timestamp() * 1000 - start < 2 * MIN and now - times[-1].timestamp() * 1000 < 2 * MIN
    assert points[-1]["sold"] == 7199  # each bucket shows its last level


def test_a_refresh_a_moment_later_shows_the_same_timeline(ch: SharedClickHouse) -> None:
    """The default range slides with 'now'; steps on fixed clock times keep the same levels grouped the same
    way, where steps counted from the range's start regrouped them and made points come and go."""
    now = shop_ms("2026-11-12T12:00")
    store(ch, [stock_level("SKU-STILL", n, now - 2 * H + n * MIN) for n in range(30)])  # 60 s apart, steps of 86 s
    first = dash(ch, "stock_timeline", now, sku="SKU-STILL")
    for later in (7 * S, 29 * S, 51 * S, 77 * S):
        assert dash(ch, "stock_timeline", now + later, sku="SKU-STILL") == first, later
    assert first[-1]["sold"] == 29


def test_times_are_grouped_and_shown_in_the_shops_zone(ch: SharedClickHouse) -> None:
    placed = shop_ms("2026-11-11T00:30")  # 2026-11-10 16:30 UTC
    store(ch, [*order("jd:K", [("placed", placed), ("reserved", placed + S)]), sla_alert("jd:K", placed + MIN)])
    [row] = dash(ch, "flow_time", placed + H, by="hour")
    assert row["dimension"] == "2026-11-11 00:00:00"
    [hour] = dash(ch, "sla_breaches", placed + H)
    assert (hour["hour"], hour["raised"]) == ("2026-11-11 00:00:00", 1)
    [red] = dash(ch, "orders_red_now", placed + H)
    assert red["raised_at"] == "2026-11-11 00:31:00"


def test_no_dashboard_shows_a_time_in_the_servers_zone(ch: SharedClickHouse) -> None:
    now = shop_ms("2026-11-11T12:00")
    for name, found in dashboards.load_all().items():
        params = dashboards.bind(found, {"sku": "SKU-1"} if "sku" in found.params else {}, Settings(), now)
        types = {c["name"]: c["type"] for c in ch.query(f"DESCRIBE TABLE ({found.sql})", params)}
        naive = [column for column, kind in types.items() if re.search(r"\bDateTime\b(?!\()|DateTime64\(\d+\)", kind)]
        assert not naive, f"{name}: {naive} shown in the server's zone"
        for text in _calls(found.sql, "toString(toDateTime("):
            assert "{tz:String}" in text, f"{name}: {text}"
        # Rounded to an hour or a day in the server's zone, then shown in the shop's, a label is off by the
        # zones' difference (an order at 10:10 in Shanghai labelled 09:30 on a host in India).
        for opening in set(re.findall(r"toStartOf\w+\(", found.sql)):
            for text in _calls(found.sql, opening):
                assert all("{tz:String}" in t for t in _calls(text, "toDateTime(")), f"{name}: {text}"


def test_a_channel_clock_running_ahead_gives_no_negative_flow_time(ch: SharedClickHouse) -> None:
    placed = shop_ms("2026-11-11T10:00")
    # The marketplace stamped the placing 3 min ahead of the pipeline that reserved it 200 ms after.
    store(ch, order("douyin:S", [("placed", placed + 3 * MIN), ("reserved", placed + 200), ("paid", placed + 30 * S)],
                    channel="douyin"))  # fmt: skip
    rows = {r["stage"]: r for r in dash(ch, "flow_time", placed + H, by="channel")}
    assert rows["1 placed→reserved"]["p50_s"] == 0 and rows["2 reserved→paid"]["p50_s"] == 29.8


def _calls(sql: str, opening: str) -> list[str]:
    """Each call starting with ``opening``, to its closing bracket."""
    out = []
    for match in re.finditer(re.escape(opening), sql):
        depth, i = 0, match.start()
        while i < len(sql):
            depth += {"(": 1, ")": -1}.get(sql[i], 0)
            i += 1
            if depth == 0 and sql[i - 1] == ")":
                break
        out.append(sql[match.start() : i])
    return out


# ---- refunds ---------------------------------------------------------------------------------------------
def _ids(refund_id: str, order_id: str) -> dict[str, str]:
    channel, channel_refund_id = refund_id.split(":", 1)
    return {"channel": channel, "channel_order_id": order_id.split(":", 1)[1], "channel_refund_id": channel_refund_id}


def refund(refund_id: str, order_id: str, kind: str, steps: list[tuple[str, int]], amount_fen: int = 9_900
           ) -> list[Event]:  # fmt: skip
    """RefundStateChanged records as the refund processor wrote them before it stamped a stage reached while the
    state stays with that stage's time: with the time its state began. Such rows stay in ClickHouse. A stage
    reached with a transition at the same instant (settled, completed) is carried by the transition alone."""
    times: dict[str, int] = {}
    state, previous, out = "", "", []
    for n, (name, at) in enumerate(steps):
        times = {**times, name: at}
        if name in REFUND_STATES:
            previous, state, event_id, stamp = state, name, f"{refund_id}:{name}", at
        elif n + 1 < len(steps) and steps[n + 1][0] in REFUND_STATES and steps[n + 1][1] == at:
            continue
        else:
            previous, event_id, stamp = state, f"{refund_id}:{state}:{name}", times[state]
        out.append(("refund.states", refund_id, "RefundStateChanged", {
            "event_id": event_id, "event_time_ms": stamp, "refund_id": refund_id, "order_id": order_id,
            "channel": refund_id.split(":")[0], "kind": kind, "state": state, "previous_state": previous,
            "reason": "", "amount_fen": amount_fen, "auto_approved": True, "warehouse_id": "",
            "stage_times": dict(times), "customer_id": ""}, 0))  # fmt: skip
    return out


def issued(refund_id: str, order_id: str, at: int, amount_fen: int = 9_900) -> Event:
    return ("refund.issued", order_id, "RefundIssued", {
        "event_id": f"refund-issued:{refund_id}", "event_time_ms": at, "refund_id": refund_id, "order_id": order_id,
        "channel": refund_id.split(":")[0], "amount_fen": amount_fen, "platform_ref": "p", "attempts": 1,
        "replayed": False}, 0)  # fmt: skip


def returned(refund_id: str, order_id: str, at: int, qc_done: bool) -> Event:
    return ("refund.events", order_id, "ReturnReceived", {
        "event_id": f"return-{'qc' if qc_done else 'received'}:{refund_id}", "event_time_ms": at,
        **_ids(refund_id, order_id), "warehouse_id": "WH-SH", "qc_done": qc_done, "resellable": True,
        "qc_note": ""}, 0)  # fmt: skip


def settled(refund_id: str, order_id: str, at: int, broker_ms: int = 0, amount_fen: int = 9_900) -> Event:
    return ("refund.events", order_id, "RefundSettled", {
        "event_id": f"settled:{refund_id}", "event_time_ms": at, **_ids(refund_id, order_id),
        "amount_fen": amount_fen, "settlement_id": f"st-{refund_id}"}, broker_ms)  # fmt: skip


NOVEMBER = {"from_ms": shop_ms("2026-11-01T00:00"), "to_ms": shop_ms("2026-12-01T00:00")}
AFTER_NOVEMBER = shop_ms("2026-12-10T00:00")


def test_a_past_month_is_seen_as_it_stood_at_its_end_whatever_a_record_is_stamped(ch: SharedClickHouse) -> None:
    r1, r2 = ("jd:R1", "jd:O1"), ("jd:R2", "jd:O2")
    store(ch, [
        # Paid out at once; the goods came back on Nov 29 and were checked on Dec 3.
        *refund(*r1, "RETURN_AND_REFUND", [
            ("requested", shop_ms("2026-11-10T10:00")), ("refunding", shop_ms("2026-11-10T10:00")),
            ("issued", shop_ms("2026-11-10T10:10")), ("return_received", shop_ms("2026-11-29T10:00")),
            ("inspected", shop_ms("2026-12-03T10:00")), ("settled", shop_ms("2026-12-05T10:00")),
            ("completed", shop_ms("2026-12-05T10:00"))]),
        issued(*r1, shop_ms("2026-11-10T10:10")),
        returned(*r1, shop_ms("2026-11-29T10:00"), qc_done=False),
        returned(*r1, shop_ms("2026-12-03T10:00"), qc_done=True),
        settled(*r1, shop_ms("2026-12-05T10:00")),
        # Paid out on Nov 25, accepted by the marketplace on Dec 2.
        *refund(*r2, "REFUND_ONLY", [
            ("requested", shop_ms("2026-11-25T10:00")), ("refunding", shop_ms("2026-11-25T10:00")),
            ("issued", shop_ms("2026-12-02T10:00"))]),
        issued(*r2, shop_ms("2026-12-02T10:00")),
    ])  # fmt: skip
    qc = [r for r in dash(ch, "refund_exceptions", AFTER_NOVEMBER, **NOVEMBER) if r["exception"].startswith("qc")]
    assert [(r["refund_id"], r["exception"], r["left_at"], r["current_state"]) for r in qc] == [
        ("jd:R1", "qc_hanging", "", "refunding")
    ]
    [jd] = dash(ch, "refund_reconciliation", AFTER_NOVEMBER, **NOVEMBER)
    assert (jd["instructed"], jd["issued"], jd["not_issued"], jd["settled"], jd["unsettled_overdue"]) == (
        2, 1, 1, 0, 1)  # fmt: skip
    mismatches = dash(ch, "refund_mismatches", AFTER_NOVEMBER, **NOVEMBER)
    assert [(r["refund_id"], r["mismatch"], r["issued_at"]) for r in mismatches] == [
        ("jd:R1", "issued_not_settled", "2026-11-10 10:10:00"),
        ("jd:R2", "not_issued", ""),
    ]
    # December sees them as they are now.
    december = {"from_ms": NOVEMBER["to_ms"], "to_ms": shop_ms("2027-01-01T00:00")}
    qc = [r for r in dash(ch, "refund_exceptions", AFTER_NOVEMBER, **december) if r["exception"].startswith("qc")]
    assert [(r["exception"], r["left_at"]) for r in qc] == [("qc_late", "2026-12-03 10:00:00")]


def test_a_settlement_without_a_time_of_its_own_counts_at_its_broker_timestamp(ch: SharedClickHouse) -> None:
    r3 = ("tmall:R3", "tmall:O3")
    at = shop_ms("2026-11-13T10:00")
    store(ch, [
        *refund(*r3, "REFUND_ONLY", [
            ("requested", shop_ms("2026-11-12T10:00")), ("refunding", shop_ms("2026-11-12T10:00")),
            ("issued", shop_ms("2026-11-12T10:05")), ("settled", at), ("completed", at)]),
        issued(*r3, shop_ms("2026-11-12T10:05")),
        settled(*r3, 0, broker_ms=at),
    ])  # fmt: skip
    assert ch.query("SELECT event_time_ms FROM refund_settlements FINAL") == [{"event_time_ms": at}]
    [tmall] = dash(ch, "refund_reconciliation", AFTER_NOVEMBER, **NOVEMBER)
    assert (tmall["issued"], tmall["settled"], tmall["unsettled"], tmall["unsettled_overdue"]) == (1, 1, 0, 0)
    assert dash(ch, "refund_mismatches", AFTER_NOVEMBER, **NOVEMBER) == []


def test_a_refunds_current_state_is_the_furthest_in_its_lifecycle_whatever_the_clocks_say(
    ch: SharedClickHouse,
) -> None:
    t = shop_ms("2026-11-11T10:00")
    # The marketplace stamped the request 3 s ahead; customer service took it up 1 s after it really came.
    store(ch, refund("douyin:R4", "douyin:O4", "RETURN_AND_REFUND", [("requested", t + 3 * S), ("reviewing", t + S)]))
    [late] = dash(ch, "refund_exceptions", t + 3 * H, from_ms=t - H, to_ms=t + 3 * H)
    assert (late["exception"], late["current_state"]) == ("respond_hanging", "reviewing")


def test_orders_per_hour_feeds_the_forecast_in_a_zone_off_the_hour(ch: SharedClickHouse) -> None:
    """Found by review: hours started at the shop's zone's hour (:30 UTC in India), and the forecast, which
    reads them on the epoch's hours, found none of its hours and learnt from nothing."""
    from zoneinfo import ZoneInfo

    from agents.forecast.series import from_hours

    zone = ZoneInfo("Asia/Kolkata")
    placed = int(datetime(2026, 11, 11, 10, 10, tzinfo=zone).timestamp() * 1000)
    store(ch, order("jd:I1", [("placed", placed)]) + order("jd:I2", [("placed", placed + MIN)]))
    start = (placed // H - 2) * H
    rows = dash(ch, "orders_per_hour", placed + 3 * H, from_ms=start, to_ms=start + 6 * H, tz=zone.key)
    assert from_hours({int(r["hour_ms"]): float(r["orders"]) for r in rows}, start, start + 6 * H).total() == 2
    assert [r["hour"] for r in rows] == ["2026-11-11 09:30:00"]  # the UTC hour 04:00, shown in India's zone


RANGED = ("flow_time", "sla_breaches", "split_rate", "routing_share", "stock_timeline", "channel_pauses",
          "reservation_outcomes", "dead_letters", "connector_health", "connector_failed_calls")  # fmt: skip


def test_a_dashboards_time_range_reads_its_months_not_the_tables_whole_history(ch: SharedClickHouse) -> None:
    """Failed before: FINAL merged across months, so no dashboard skipped a month outside its range. Each read
    the table's whole history, and on embedded ClickHouse held the sink's inserts while it did."""
    august = shop_ms("2026-08-10T10:00")
    history: list[Event] = []
    for n in range(1_500):
        at = august + n * MIN
        history += order(f"jd:old{n}", [("placed", at), ("reserved", at + S), ("paid", at + 2 * S)])
        history += [sla_alert(f"jd:old{n}", at), stock_level("SKU-OLD", n, at)]
    double11 = shop_ms("2026-11-11T00:30")
    store(ch, [*history, *order("jd:new", [("placed", double11), ("reserved", double11 + S)], "WH-SH"),
               sla_alert("jd:new", double11), stock_level("SKU-NEW", 1, double11)])  # fmt: skip
    ch.get().execute("SET max_rows_to_read = 1000")  # under any one table's August rows
    try:
        day = {"from_ms": shop_ms("2026-11-11T00:00"), "to_ms": shop_ms("2026-11-12T00:00")}
        for name in RANGED:
            dash(ch, name, day["to_ms"], **day, **({"sku": "SKU-OLD"} if name == "stock_timeline" else {}))
        assert [r["orders"] for r in dash(ch, "flow_time", day["to_ms"], **day)] == [1]
    finally:
        ch.get().execute("SET max_rows_to_read = 0")


def test_a_presale_orders_wait_for_its_balance_is_a_flow_time_stage_of_its_own(ch: SharedClickHouse) -> None:
    """Failed before: two presale orders' three weeks between deposit and balance were counted as reserved→paid,
    and topped that stage's p90 as if payments had stalled."""
    t = shop_ms("2026-11-11T10:00")
    events: list[Event] = []
    for n in range(8):
        events += order(f"jd:N{n}", [("placed", t), ("reserved", t + S), ("paid", t + S + MIN)])
    deposit_at = shop_ms("2026-10-21T20:00")
    for n in range(2):
        steps = order(f"jd:P{n}", [("placed", deposit_at), ("reserved", deposit_at + S), ("paid", t + 5 * MIN)])
        deposit = dict(steps[1][3], event_id=f"jd:P{n}:deposit", reason="deposit_paid", event_time_ms=deposit_at + S)
        events += [*steps, ("order.states", f"jd:P{n}", "OrderStateChanged", deposit, 0)]
    store(ch, events)
    rows = {r["stage"]: r for r in dash(ch, "flow_time", t + DAY, from_ms=shop_ms("2026-10-01T00:00"), to_ms=t + DAY)}
    assert (rows["2 reserved→paid"]["orders"], rows["2 reserved→paid"]["p90_s"]) == (8, 60.0)
    assert rows["2 deposit→balance"]["orders"] == 2 and rows["2 deposit→balance"]["p50_s"] > 19 * 86_400


def test_where_orders_waited_at_a_past_range_end_is_how_things_stood_then(ch: SharedClickHouse) -> None:
    """Failed before: the state and the age were today's, so an order waiting at the range's end but routed since
    was not shown at all."""
    t = shop_ms("2026-11-11T10:00")
    store(ch, order("jd:W", [("placed", t - MIN), ("reserved", t - MIN + S), ("paid", t),
                             ("routed", shop_ms("2026-11-12T09:00"))], "WH-SH"))  # fmt: skip
    rows = dash(ch, "orders_waiting_now", shop_ms("2026-11-12T12:00"), to_ms=shop_ms("2026-11-11T20:00"))
    assert [(r["state"], r["orders"], r["oldest_min"]) for r in rows] == [("paid", 1, 600.0)]
    now = dash(ch, "orders_waiting_now", shop_ms("2026-11-12T12:00"))  # now: routed 3 h ago, waiting to ship
    assert [(r["state"], r["orders"], r["oldest_min"]) for r in now] == [("routed", 1, 180.0)]


def test_a_no_reason_return_paid_at_once_whose_goods_are_late_is_a_return_exception(ch: SharedClickHouse) -> None:
    """Failed before: the return limit ran from awaiting_return alone, which a return paid at once never enters, so
    goods that never came back were on no exception list."""
    t = shop_ms("2026-11-02T10:00")
    store(ch, [*refund("jd:R5", "jd:O5", "RETURN_AND_REFUND", [("requested", t), ("refunding", t)]),
               *refund("jd:R6", "jd:O6", "RETURN_AND_REFUND", [("requested", t), ("refunding", t),
                                                              ("return_received", t + 2 * DAY)]),
               returned("jd:R6", "jd:O6", t + 2 * DAY, qc_done=False)])  # fmt: skip
    rows = dash(ch, "refund_exceptions", AFTER_NOVEMBER, **NOVEMBER)
    assert [(r["refund_id"], r["exception"]) for r in rows if r["exception"].startswith("return")] == [
        ("jd:R5", "return_hanging")]  # fmt: skip


def test_a_closed_refunds_parcel_not_checked_in_time_is_a_qc_exception(ch: SharedClickHouse) -> None:
    """Failed before: a rejection or withdrawal ended the QC stage, so a parcel received under review and never
    checked, or one received after the refund closed, was on no exception list, though the refund agent raises its
    QC breach (its units go back on hand only at QC)."""
    t = shop_ms("2026-11-02T10:00")
    store(ch, [
        *refund("jd:R7", "jd:O7", "REFUND_ONLY", [("requested", t), ("reviewing", t), ("rejected", t + H),
                                                   ("return_received", t + 2 * DAY)]),
        returned("jd:R7", "jd:O7", t + 2 * DAY, qc_done=False),
        *refund("jd:R8", "jd:O8", "RETURN_AND_REFUND", [("requested", t), ("reviewing", t),
                                                         ("return_received", t + H), ("cancelled", t + 2 * H)]),
        returned("jd:R8", "jd:O8", t + H, qc_done=False),
        *refund("jd:R9", "jd:O9", "RETURN_AND_REFUND", [("requested", t), ("reviewing", t), ("rejected", t + H),
                                                         ("return_received", t + 2 * DAY),
                                                         ("inspected", t + 2 * DAY + H)]),
        returned("jd:R9", "jd:O9", t + 2 * DAY, qc_done=False),
        returned("jd:R9", "jd:O9", t + 2 * DAY + H, qc_done=True),
    ])  # fmt: skip
    rows = dash(ch, "refund_exceptions", AFTER_NOVEMBER, **NOVEMBER)
    assert [(r["refund_id"], r["exception"], r["current_state"]) for r in rows if r["exception"].startswith("qc")] == [
        ("jd:R8", "qc_hanging", "cancelled"), ("jd:R7", "qc_hanging", "rejected")]  # fmt: skip


def raised(event_id: str, kind: str, subject: str, at: int, message: str = "", cleared: bool = False) -> Event:
    return ("alerts", subject, "Alert", {
        "event_id": event_id, "event_time_ms": at, "kind": kind, "severity": "INFO" if cleared else "RED",
        "subject": subject, "message": message or event_id, "cleared": cleared, "details": {}}, 0)  # fmt: skip


def test_alerts_standing_ends_each_alert_by_its_own_clearing(ch: SharedClickHouse) -> None:
    """Found in review: keyed on kind and subject alone, a refund's late settlement with the wrong amount vanished
    from the board - its amount_mismatch raised, and its settle limit cleared, in one batch at one time. A refund
    carries several reconciliation alerts at once; a clearing names the raise it ends."""
    t = shop_ms("2026-11-11T10:00")
    alerts = [
        raised("jd:R1:settle", "refund_reconciliation", "jd:R1", t, "not settled in time"),
        raised("jd:R1:settled_amount", "refund_reconciliation", "jd:R1", t + H, "settled 90.00, paid 99.00"),
        raised("jd:R1:settle:cleared", "refund_reconciliation", "jd:R1", t + H, cleared=True),
        # Ids holding the time raised (alerts.alert_id): a clearing ends every earlier raise of its subject,
        raised(f"connector_failing:jd/refund:{t}", "connector_failing", "jd/refund", t),
        raised(f"connector_failing:jd/refund:{t + MIN}:cleared", "connector_failing", "jd/refund", t + MIN,
               cleared=True),
        # and a raise after it stands again;
        raised(f"connector_failing:pdd/stock:{t}", "connector_failing", "pdd/stock", t),
        raised(f"connector_failing:pdd/stock:{t + MIN}:cleared", "connector_failing", "pdd/stock", t + MIN,
               cleared=True),
        raised(f"connector_failing:pdd/stock:{t + H}", "connector_failing", "pdd/stock", t + H, "pdd away again"),
        # a raise and its clearing in one millisecond end it.
        raised(f"sla_breach:jd:O1:{t}", "sla_breach", "jd:O1", t),
        raised(f"sla_breach:jd:O1:{t}:cleared", "sla_breach", "jd:O1", t, cleared=True),
    ]
    store(ch, alerts)
    standing = {(r["kind"], r["subject"]): r["message"] for r in dash(ch, "alerts_standing", t + 2 * H)}
    assert standing == {("refund_reconciliation", "jd:R1"): "settled 90.00, paid 99.00",
                        ("connector_failing", "pdd/stock"): "pdd away again"}  # fmt: skip
