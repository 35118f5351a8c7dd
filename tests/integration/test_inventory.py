"""The stock pool against the real broker: races, all-or-nothing, duplicates, timeouts, VIP."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from loadtest import events as ev
from streams.contract.keys import order_key
from streams.contract.topics import ORDER_EVENTS, STOCK_ADJUSTMENTS
from streams.engine.producer import EventProducer
from tests.helpers import advance_clock, read_topic, stock, stock_up, wait_for, wait_stock

pytestmark = pytest.mark.broker
CHANNELS = ("tmall", "jd", "douyin", "pdd", "kuaishou")


def reservations(settings) -> dict[str, dict[str, Any]]:
    return {r["order_id"]: r for t, r in read_topic(settings, "reservation.results") if t == "ReservationDecided"}


def wait_reservations(
    settings, n: int, timeout_s: float = 90, *, including: tuple[str, ...] = ()
) -> dict[str, dict[str, Any]]:
    """At least ``n`` decisions, among them one for each order in ``including``."""
    return wait_for(
        lambda: (found := reservations(settings)) and len(found) >= n and set(including) <= found.keys() and found,
        timeout_s=timeout_s,
        what=f"{n} reservation decisions" + (f" including {', '.join(including)}" if including else ""),
    )


def test_five_channels_race_for_one_sku(make_settings, start_worker) -> None:
    settings = make_settings(safety_threshold=0, threshold_hysteresis=0)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    stock_up(producer, worker, "SKU-HOT", 100)
    # 1,000 units requested: 1,000 one-unit orders, interleaved across five channels.
    orders = []
    for i in range(1000):
        channel, number = CHANNELS[i % 5], f"race-{i}"
        orders.append(order_key(channel, number))
        producer.send(
            ORDER_EVENTS.name, orders[-1], "OrderPlaced", ev.order_placed(channel, number, [ev.line(1, "SKU-HOT", 1)])
        )
    producer.flush()
    decided = wait_reservations(settings, len(orders))
    outcomes = [decided[oid]["outcome"] for oid in orders]
    assert outcomes.count("RESERVED") == 100 and outcomes.count("REJECTED") == 900
    assert {decided[oid]["lines"][0]["reason"] for oid in orders if decided[oid]["outcome"] == "REJECTED"} == {
        "insufficient_stock"
    }
    assert {o.split(":")[0] for o in orders if decided[o]["outcome"] == "RESERVED"} <= set(CHANNELS)
    level = wait_stock(worker, "SKU-HOT", locked=100)
    assert level["available"] == 0 and level["on_hand"] == 100


def test_multi_line_order_is_all_or_nothing(make_settings, start_worker) -> None:
    settings = make_settings(safety_threshold=0)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    stock_up(producer, worker, "SKU-A", 10)
    stock_up(producer, worker, "SKU-B", 1)
    producer.send(
        ORDER_EVENTS.name,
        "jd:multi-1",
        "OrderPlaced",
        ev.order_placed("jd", "multi-1", [ev.line(1, "SKU-A", 3), ev.line(2, "SKU-B", 2)]),
    )
    producer.send(
        ORDER_EVENTS.name,
        "jd:unknown-1",
        "OrderPlaced",
        ev.order_placed("jd", "unknown-1", [ev.line(1, "SKU-A", 1), ev.line(2, "SKU-NOPE", 1)]),
    )
    producer.flush()
    decided = wait_reservations(settings, 2)
    multi = decided["jd:multi-1"]
    assert multi["outcome"] == "REJECTED"
    assert [(ln["line_no"], ln["outcome"], ln["reason"]) for ln in multi["lines"]] == [
        (1, "HELD", ""),
        (2, "REFUSED", "insufficient_stock"),
    ]
    assert decided["jd:unknown-1"]["lines"][1]["reason"] == "unknown_sku"
    # The first line's hold was given back: nothing stays locked on SKU-A.
    wait_for(lambda: stock(worker, "SKU-A")["locked"] == 0, what="SKU-A released")
    assert stock(worker, "SKU-A")["available"] == 10


def test_every_event_sent_twice_changes_nothing(make_settings, start_worker) -> None:
    settings = make_settings(safety_threshold=0)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    for adjustment in (
        ev.stock_adjusted("SKU-D", "WH-SH", 20, adjustment_id="d-1"),
        ev.stock_adjusted("SKU-D", "WH-GZ", 5, adjustment_id="d-2"),
    ):
        producer.send(STOCK_ADJUSTMENTS.name, "SKU-D", "StockAdjusted", adjustment)
        producer.send(STOCK_ADJUSTMENTS.name, "SKU-D", "StockAdjusted", adjustment)
    producer.flush()
    wait_stock(worker, "SKU-D", on_hand=25)
    events = [
        (ORDER_EVENTS.name, "pdd:dup-1", "OrderPlaced", ev.order_placed("pdd", "dup-1", [ev.line(1, "SKU-D", 4)])),
        (ORDER_EVENTS.name, "pdd:dup-2", "OrderPlaced", ev.order_placed("pdd", "dup-2", [ev.line(1, "SKU-D", 3)])),
        (ORDER_EVENTS.name, "pdd:dup-1", "PaymentConfirmed", ev.payment_confirmed("pdd", "dup-1")),
        (ORDER_EVENTS.name, "pdd:dup-2", "OrderCancelled", ev.order_cancelled("pdd", "dup-2")),
    ]
    for topic, key, kind, record in events:
        producer.send(topic, key, kind, record)
        producer.send(topic, key, kind, record)
    producer.flush()
    # dup-2 is cancelled right after it is placed: whether its hold was answered first depends on
    # the batch it lands in; either way it ends cancelled with nothing held (checked below).
    assert wait_reservations(settings, 1, including=("pdd:dup-1",))["pdd:dup-1"]["outcome"] == "RESERVED"

    def settled() -> dict[str, Any] | None:
        level = stock(worker, "SKU-D")
        return level if level["locked"] == 4 and level["sold"] == 4 else None

    level = wait_for(settled, what="one paid hold of 4")
    assert level["on_hand"] == 25 and level["available"] == 21
    # dup-2 may live on another partition, decided in another batch than dup-1.
    wait_for(lambda: worker.get("/orders/pdd:dup-2").get("state") == "cancelled", what="dup-2 cancelled")
    states = [r for t, r in read_topic(settings, "order.states") if r["order_id"] == "pdd:dup-2"]
    assert states[-1]["state"] == "cancelled"
    results = [r for t, r in read_topic(settings, "stock.hold-results") if r["order_id"] == "pdd:dup-1"]
    held = {r["event_id"] for r in results if r["outcome"] == "HELD"}
    assert held == {"pdd:dup-1#1:RESERVE:HELD"}


def test_payment_timeout_and_hold_expiry_release_stock(make_settings, start_worker) -> None:
    settings = make_settings(
        clock_control=True, safety_threshold=0, payment_timeout_s=1800, hold_ttl_s=7200
    )
    worker = start_worker(settings)
    producer = EventProducer(settings)
    stock_up(producer, worker, "SKU-T", 10)
    producer.send(
        ORDER_EVENTS.name, "jd:unpaid", "OrderPlaced", ev.order_placed("jd", "unpaid", [ev.line(1, "SKU-T", 3)])
    )
    producer.send(ORDER_EVENTS.name, "jd:paid", "OrderPlaced", ev.order_placed("jd", "paid", [ev.line(1, "SKU-T", 2)]))
    producer.send(ORDER_EVENTS.name, "jd:paid", "PaymentConfirmed", ev.payment_confirmed("jd", "paid"))
    # An orphaned hold: a RESERVE whose order the order agent never heard of.
    producer.send(
        "stock.hold-commands",
        "SKU-T",
        "HoldCommand",
        {
            "event_id": "orphan",
            "event_time_ms": ev.now_ms(),
            "action": "RESERVE",
            "order_id": "ghost:1",
            "line_no": 1,
            "sku": "SKU-T",
            "qty": 4,
            "channel": "jd",
            "presale": False,
            "expires_at_ms": 0,
            "reason": "",
            "source_time_ms": 0,
            "warehouse_id": "",
        },
    )
    producer.flush()
    wait_stock(worker, "SKU-T", locked=9, timeout_s=20)
    advance_clock(producer, 29)
    wait_for(lambda: worker.get("/orders/jd:unpaid")["state"] == "reserved", what="still reserved at 29 min")
    advance_clock(producer, 31)
    wait_for(lambda: worker.get("/orders/jd:unpaid")["state"] == "payment_timeout", what="payment timeout")
    wait_for(lambda: stock(worker, "SKU-T")["locked"] == 6, what="the unpaid hold released")
    advance_clock(producer, 121)  # past the 2 h hold TTL: the orphan expires, the paid hold stays
    level = wait_for(lambda: (s := stock(worker, "SKU-T"))["locked"] == 2 and s, what="orphan expired")
    assert level["sold"] == 2 and level["available"] == 8
    assert worker.get("/orders/jd:paid")["state"] in ("paid", "routed")


def test_presale_holds_come_from_the_presale_pool(make_settings, start_worker) -> None:
    settings = make_settings(safety_threshold=0)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    stock_up(producer, worker, "SKU-P", 5)
    producer.send(
        STOCK_ADJUSTMENTS.name, "SKU-P", "StockAdjusted", ev.stock_adjusted("SKU-P", "", 3, kind="PRESALE_CAP")
    )
    producer.flush()
    wait_for(lambda: stock(worker, "SKU-P").get("presale_cap") == 3, what="presale cap")
    for i in range(4):  # four presale orders of one unit against a cap of three
        producer.send(
            ORDER_EVENTS.name,
            f"tmall:pre-{i}",
            "OrderPlaced",
            ev.order_placed("tmall", f"pre-{i}", [ev.line(1, "SKU-P", 1)], presale=True),
        )
    producer.flush()
    decided = wait_reservations(settings, 4)
    outcomes = sorted(decided[f"tmall:pre-{i}"]["outcome"] for i in range(4))
    assert outcomes == ["REJECTED", "RESERVED", "RESERVED", "RESERVED"]
    rejected = next(r for r in decided.values() if r["outcome"] == "REJECTED")
    assert rejected["lines"][0]["reason"] == "insufficient_presale_stock"
    level = wait_for(lambda: (s := stock(worker, "SKU-P"))["presale_reserved"] == 3 and s, what="presale")
    assert level["locked"] == 0 and level["available"] == 2  # on_hand 5 - presale 3


def test_threshold_pauses_other_channels_with_hysteresis(make_settings, start_worker) -> None:
    settings = make_settings(safety_threshold=10, threshold_hysteresis=5, main_channel="tmall")
    worker = start_worker(settings)
    producer = EventProducer(settings)
    stock_up(producer, worker, "SKU-L", 12)
    producer.send(ORDER_EVENTS.name, "jd:l1", "OrderPlaced", ev.order_placed("jd", "l1", [ev.line(1, "SKU-L", 3)]))
    producer.flush()
    wait_reservations(settings, 1)
    level = wait_for(lambda: (s := stock(worker, "SKU-L"))["paused"] and s, what="paused at 9")
    assert level["sellable"]["jd"] == 0 and level["sellable"]["tmall"] == 9
    producer.send(ORDER_EVENTS.name, "jd:l2", "OrderPlaced", ev.order_placed("jd", "l2", [ev.line(1, "SKU-L", 1)]))
    producer.send(
        ORDER_EVENTS.name, "tmall:l3", "OrderPlaced", ev.order_placed("tmall", "l3", [ev.line(1, "SKU-L", 1)])
    )
    producer.flush()
    decided = wait_reservations(settings, 3)
    assert decided["jd:l2"]["lines"][0]["reason"] == "channel_paused"
    assert decided["tmall:l3"]["outcome"] == "RESERVED"
    # Back to 14 available: above 10 but not above 10 + 5, so still paused (no flapping).
    producer.send(STOCK_ADJUSTMENTS.name, "SKU-L", "StockAdjusted", ev.stock_adjusted("SKU-L", "WH-GZ", 6))
    producer.flush()
    wait_for(lambda: stock(worker, "SKU-L")["available"] == 14, what="receipt")
    assert stock(worker, "SKU-L")["paused"] is True
    producer.send(STOCK_ADJUSTMENTS.name, "SKU-L", "StockAdjusted", ev.stock_adjusted("SKU-L", "WH-GZ", 2))
    producer.flush()
    wait_for(lambda: stock(worker, "SKU-L")["paused"] is False, what="resumed at 16")
    alerts = [r for t, r in read_topic(settings, "alerts") if r["subject"] == "SKU-L"]
    assert [a["kind"] for a in alerts] == ["stock_paused", "stock_resumed"]
    # Levels go out on the pool's flush, at most one per SKU per refresh interval: a later batch.
    levels = wait_for(
        lambda: (lv := [r for t, r in read_topic(settings, "stock.levels") if r["sku"] == "SKU-L"])
        and lv[-1]["available"] == 16
        and lv,
        what="the level at 16",
    )
    assert levels[-1]["sellable"]["jd"] == 16


def test_vip_override_needs_a_second_approver_and_is_audited(make_settings, start_worker) -> None:
    settings = make_settings(safety_threshold=0)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    stock_up(producer, worker, "SKU-V", 5)
    producer.send(
        ORDER_EVENTS.name, "douyin:live-1", "OrderPlaced", ev.order_placed("douyin", "live-1", [ev.line(1, "SKU-V", 5)])
    )
    producer.flush()
    wait_reservations(settings, 1)

    def override(action: str, operator: str) -> None:
        producer.send(
            "ops.overrides",
            "SKU-V",
            "VipOverride",
            {
                "event_id": f"ov-1-{action}-{operator}",
                "event_time_ms": ev.now_ms(),
                "override_id": "ov-1",
                "action": action,
                "sku": "SKU-V",
                "qty": 2,
                "vip_order_id": "own:vip-9",
                "operator": operator,
                "reason": "key account launch",
            },
        )
        producer.flush()

    override("REQUEST", "alice")
    override("APPROVE", "alice")  # the requester cannot approve her own override
    audits = wait_for(
        lambda: (a := [r for t, r in read_topic(settings, "audit.overrides")]) and len(a) >= 2 and a,
        what="two audit records",
    )
    assert [(a["outcome"], a["detail"]) for a in audits[:2]] == [
        ("REQUESTED", ""),
        ("REFUSED", "approver_must_differ_from_requester"),
    ]
    assert stock(worker, "SKU-V")["locked"] == 5
    override("APPROVE", "bob")
    applied = wait_for(
        lambda: [r for t, r in read_topic(settings, "audit.overrides") if r["outcome"] == "APPLIED"],
        what="applied override",
    )[0]
    assert applied["requester"] == "alice" and applied["approver"] == "bob" and applied["qty"] == 2
    assert (applied["released_holds"], applied["detail"], applied["reason"]) == ([], "pledged:2", "key account launch")
    # Nothing free: the 2 units are pledged; the live-stream order keeps its hold until the VIP order's line comes.
    assert worker.get("/orders/douyin:live-1")["state"] == "reserved" and stock(worker, "SKU-V")["locked"] == 5
    producer.send(
        ORDER_EVENTS.name,
        "own:vip-9",
        "OrderPlaced",
        ev.order_placed("own", "vip-9", [ev.line(1, "SKU-V", 2)], vip=True),
    )
    producer.flush()
    assert wait_reservations(settings, 2, including=("own:vip-9",))["own:vip-9"]["outcome"] == "RESERVED"
    # The live-stream order lost its hold to the VIP order's line, which the override's audit names.
    wait_for(lambda: worker.get("/orders/douyin:live-1")["state"] == "cancelled", what="live order cancelled")
    taken = wait_for(lambda: [r for t, r in read_topic(settings, "audit.overrides") if r["outcome"] == "APPLIED"
                              and r["released_holds"]], what="the takeover audited")[0]  # fmt: skip
    assert (taken["released_holds"], taken["detail"]) == (["douyin:live-1#1"], "pledged:0 taken_by:own:vip-9#1")
    wait_for(lambda: stock(worker, "SKU-V")["locked"] == 2, what="only the VIP hold locked")


def test_bad_input_is_refused_with_a_reason_and_nothing_half_applied(make_settings, start_worker) -> None:
    settings = make_settings(safety_threshold=0)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    stock_up(producer, worker, "SKU-X", 10)
    producer.send(STOCK_ADJUSTMENTS.name, "SKU-X", "StockAdjusted", ev.stock_adjusted("SKU-X", "WH-MARS", 10))
    producer.send(STOCK_ADJUSTMENTS.name, "SKU-X", "StockAdjusted", ev.stock_adjusted("SKU-X", "WH-SH", -3))
    bad_qty = ev.order_placed("jd", "bad-qty", [ev.line(1, "SKU-X", 1), ev.line(2, "SKU-X", 0)])
    huge = ev.order_placed("jd", "huge", [ev.line(1, "SKU-X", 10_000_000)])
    no_city = ev.order_placed("jd", "no-city", [ev.line(1, "SKU-X", 1)])
    no_city["address"] = {**no_city["address"], "city": " "}
    unknown_channel = ev.order_placed("ebay", "u1", [ev.line(1, "SKU-X", 1)])
    for record in (bad_qty, huge, no_city, unknown_channel):
        key = order_key(record["channel"], record["channel_order_id"])
        producer.send(ORDER_EVENTS.name, key, "OrderPlaced", record)
    producer.send(ORDER_EVENTS.name, "jd:x", "OrderPlaced", ev.order_placed("jd", "y", [ev.line(1, "SKU-X", 1)]))
    # Paid before created: kept, then applied when the order arrives.
    producer.send(ORDER_EVENTS.name, "kuaishou:early", "PaymentConfirmed", ev.payment_confirmed("kuaishou", "early"))
    producer.flush()
    producer.send(
        ORDER_EVENTS.name,
        "kuaishou:early",
        "OrderPlaced",
        ev.order_placed("kuaishou", "early", [ev.line(1, "SKU-X", 2)]),
    )
    producer.flush()
    reasons = wait_for(
        lambda: (d := [r["reason"] for t, r in read_topic(settings, "deadletters")]) and len(d) >= 7 and sorted(d),
        what="seven dead letters",
    )
    assert reasons == sorted(
        [
            "unknown_warehouse",
            "invalid_qty",
            "invalid_qty",
            "invalid_qty",
            "missing_field",
            "unknown_channel",
            "key_mismatch",
        ]
    )
    wait_for(
        lambda: worker.get("/orders/kuaishou:early")["state"] in ("paid", "routed"),
        what="paid-before-created order paid",
    )
    level = stock(worker, "SKU-X")
    assert level["on_hand"] == 10 and level["locked"] == 2 and level["sold"] == 2


def test_levels_coalesce_per_refresh_interval_and_breaches_alert(make_settings, start_worker) -> None:
    settings = make_settings(safety_threshold=0, refresh_interval_ms=200)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    stock_up(producer, worker, "SKU-R", 10)
    for i in range(300):
        producer.send(
            STOCK_ADJUSTMENTS.name,
            "SKU-R",
            "StockAdjusted",
            ev.stock_adjusted("SKU-R", "WH-SH", 1, kind="CORRECTION", adjustment_id=f"r-{i}"),
        )
    producer.flush()
    wait_stock(worker, "SKU-R", on_hand=310)
    levels = wait_for(
        lambda: (
            (lv := [r for t, r in read_topic(settings, "stock.levels") if r["sku"] == "SKU-R"])
            and lv[-1]["on_hand"] == 310
            and lv
        ),
        what="the final level published",
    )
    assert len(levels) < 300
    gaps = [b["event_time_ms"] - a["event_time_ms"] for a, b in itertools.pairwise(levels)]
    assert all(gap >= 195 for gap in gaps), gaps  # at most one record per SKU per interval
    assert all(lv["newest_change_ms"] <= lv["event_time_ms"] for lv in levels)
    # A stock count below what is already sold: the pool says so loudly.
    producer.send(ORDER_EVENTS.name, "jd:big", "OrderPlaced", ev.order_placed("jd", "big", [ev.line(1, "SKU-R", 300)]))
    producer.flush()
    wait_stock(worker, "SKU-R", locked=300)
    producer.send(
        STOCK_ADJUSTMENTS.name, "SKU-R", "StockAdjusted", ev.stock_adjusted("SKU-R", "WH-SH", 250, kind="COUNT")
    )
    producer.flush()
    alert = wait_for(
        lambda: [r for t, r in read_topic(settings, "alerts") if r["kind"] == "invariant_breach"],
        what="invariant alert",
    )[0]
    assert alert["severity"] == "RED" and "locked 300 exceeds on-hand 250" in alert["message"]
    assert stock(worker, "SKU-R")["available"] == 0


def test_cli_reads_the_pool_and_check_passes(make_settings, start_worker) -> None:
    import json
    import os
    import subprocess
    import sys

    settings = make_settings(safety_threshold=0)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    stock_up(producer, worker, "SKU-Q", 7)
    producer.send(ORDER_EVENTS.name, "own:q1", "OrderPlaced", ev.order_placed("own", "q1", [ev.line(1, "SKU-Q", 2)]))
    producer.flush()
    wait_reservations(settings, 1)
    env = {**os.environ, **settings.as_env()}
    shown = subprocess.run(
        [sys.executable, "-m", "agents.cli", "stock", "SKU-Q"], env=env, capture_output=True, text=True, timeout=60
    )
    assert json.loads(shown.stdout)["available"] == 5
    checked = subprocess.run(
        [sys.executable, "-m", "agents.cli", "check", "--json", "--wait", "30"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout.strip().splitlines()[-1])["oversold_units"] == 0


def test_an_event_for_an_order_that_never_comes_is_dead_lettered_and_a_payment_is_kept_longer(
    make_settings, start_worker
) -> None:
    """Changed on purpose: a cancel was dead-lettered with the other events after the short grace, so an order
    arriving later was paid and shipped to a buyer who had called it off; it is kept like the payment now."""
    settings = make_settings(clock_control=True, parked_grace_s=600, parked_payment_grace_s=3600)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    producer.send(ORDER_EVENTS.name, "jd:ghost", "PaymentConfirmed", ev.payment_confirmed("jd", "ghost"))
    producer.send(ORDER_EVENTS.name, "jd:ghost2", "WmsAcknowledged", {
        "event_id": "ack:jd:ghost2", "event_time_ms": ev.now_ms(), "channel": "jd", "channel_order_id": "ghost2",
        "warehouse_id": "WH-SH", "wms_order_id": "W-1"})  # fmt: skip
    producer.send(ORDER_EVENTS.name, "jd:ghost3", "OrderCancelled", ev.order_cancelled("jd", "ghost3"))
    producer.flush()
    wait_for(lambda: len(worker.get("/orders/jd:ghost").get("parked", [])) == 1, what="payment parked")
    advance_clock(producer, 11)
    # The WMS's acknowledgement is given up on; the customer's payment and cancel are not: ops are told, they wait.
    letters = wait_for(lambda: [r for t, r in read_topic(settings, "deadletters")], what="dead letter")
    assert [(r["reason"], r["original_key"]) for r in letters] == [("unknown_order", b"jd:ghost2")]
    assert all(r["original_value"] and r["source_offset"] >= 0 for r in letters)
    kinds = ("payment_without_order", "event_without_order")
    alerts = wait_for(lambda: (a := [r for t, r in read_topic(settings, "alerts") if r["kind"] in kinds]) and
                      len(a) >= 2 and a, what="the payment's and the cancel's alerts")  # fmt: skip
    assert sorted((a["kind"], a["subject"]) for a in alerts) == [
        ("event_without_order", "jd:ghost3"), ("payment_without_order", "jd:ghost")]  # fmt: skip
    advance_clock(producer, 61)
    letters = wait_for(lambda: (d := [r for t, r in read_topic(settings, "deadletters")]) and len(d) >= 3 and d,
                       what="the payment and the cancel dead-lettered after their longer grace")  # fmt: skip
    assert {r["original_key"] for r in letters} == {b"jd:ghost", b"jd:ghost2", b"jd:ghost3"}
