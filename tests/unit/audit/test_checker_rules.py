"""The independent checker's judgements on what it read from the topics, no broker."""

from __future__ import annotations

import time
from typing import Any

from agents.audit import checker
from agents.audit.checker import DEPOSIT_PAID, RETAINED, Report, _check_order_states
from streams.contract.topics import (
    HOLD_RESULTS,
    ORDER_EVENTS,
    ORDER_STATES,
    REFUND_EVENTS,
    STOCK_RETURNS,
)
from streams.settings import Settings
from tests.unit.audit.test_checker_replay import WH, WH2, Topics

WAITS = {"reserved": 60_000, DEPOSIT_PAID: 3_600_000}


def test_a_split_order_partly_shipped_still_holds_what_it_should() -> None:
    """Changed on purpose: a split order stays paid or routed until its last warehouse ships, and its lines already
    shipped were taken for lines with no hold: the check failed a correct run."""
    last = {"jd:1#1": {"outcome": "SHIPPED"}, "jd:1#2": {"outcome": "COMMITTED"},
            "jd:2#1": {"outcome": "SHIPPED"}, "jd:2#2": {"outcome": "RELEASED"}}  # fmt: skip
    report = Report()
    _check_order_states(last, {}, {"jd:1": "routed", "jd:2": "routed"}, {}, WAITS, 0, report)
    assert report.paid_without_hold == ["jd:2"]
    paid = Report()
    _check_order_states({"jd:3#1": {"outcome": "SHIPPED"}, "jd:3#2": {"outcome": "EXPIRED"}}, {}, {"jd:3": "paid"},
                        {}, WAITS, 0, paid)  # fmt: skip
    assert paid.paid_without_hold == ["jd:3"]


def test_a_presale_order_waiting_for_its_balance_is_not_overdue_until_its_window_ends() -> None:
    """A presale order whose deposit is paid stays reserved, unpaid, for its balance window (days): judged by
    the payment timeout it was called a timer that did not fire."""
    states = {"tmall:1": "reserved", "tmall:2": "reserved", "tmall:3": "reserved"}
    times = {"tmall:1": {"reserved": 1_000, DEPOSIT_PAID: 2_000},  # within its window
             "tmall:2": {"reserved": 1_000, DEPOSIT_PAID: 2_000},  # past it: see below
             "tmall:3": {"reserved": 1_000}}  # no deposit: past its payment timeout  # fmt: skip
    within = Report()
    _check_order_states({}, {}, states, times, WAITS, 2_000 + 3_600_000, within)
    assert within.overdue_timers == ["order tmall:3 unpaid past its payment timeout"]
    late = Report()
    _check_order_states({}, {}, {"tmall:2": "reserved"}, times, WAITS, 2_000 + 3_600_000 + 61_000, late)
    assert late.overdue_timers == ["order tmall:2 unpaid past its balance window"]


def test_a_shipment_the_pool_never_deducted_is_found_from_the_wms_message() -> None:
    """New check: the audit took shipments from the pool's own SHIPPED answers, so a shipment whose SHIP the
    pipeline lost (units gone, still counted on the shelf) was invisible to it. Each ShipmentDispatched the
    pipeline took now needs a SHIPPED answer for the order's lines at that warehouse, and for lines allocated
    to none."""
    from agents.audit.checker import _check_shipments, _OrderInputs, _Reading
    from streams.contract.codec import default_codec
    from streams.settings import Settings

    orders = _OrderInputs(
        lines_of={"jd:1": [1, 2], "jd:2": [1, 2], "jd:3": [1], "jd:4": [1], "jd:5": [1, 2]},
        shipments={("jd:1", "WH-A"), ("jd:2", "WH-A"), ("jd:3", "WH-B"), ("jd:4", ""), ("jd:9", "WH-A"),
                   ("jd:5", "")},
    )
    allocated = {"jd:1#1": "WH-A", "jd:1#2": "WH-B", "jd:2#1": "WH-A", "jd:2#2": "WH-A", "jd:5#2": "WH-B"}
    last = {"jd:1#1": {"outcome": "SHIPPED"}, "jd:1#2": {"outcome": "COMMITTED"},  # a split order, one side shipped
            "jd:2#1": {"outcome": "SHIPPED"}, "jd:2#2": {"outcome": "RELEASED"},  # cancelled; one line not deducted
            "jd:3#1": {"outcome": "SHIPPED"},  # never routed: shipped where the WMS said
            "jd:4#1": {"outcome": "REFUSED"},
            "jd:5#1": {"outcome": "SHIPPED"}, "jd:5#2": {"outcome": "COMMITTED"}}  # none named: all go  # fmt: skip
    report = Report()
    _check_shipments(orders, allocated, last, _Reading(Settings(), default_codec()), report)
    # jd:9's order never reached the pipeline: its shipment was kept for it, then refused, and is not judged.
    assert report.shipped_not_deducted == ["jd:2 from WH-A: jd:2#2", "jd:4 from an unnamed warehouse: jd:4#1",
                                           "jd:5 from an unnamed warehouse: jd:5#2"]  # fmt: skip
    assert not report.ok and report.summary()["other_failures"] == {"shipped_not_deducted": 3}


def test_an_order_paid_and_then_timed_out_as_unpaid_is_found() -> None:
    """New check: a payment the pipeline took and then lost (parked and dropped, or applied to nothing) left the
    customer's order to time out as unpaid, and no check looked: the order was decided, so it was not lost."""
    from agents.audit.checker import _audit_orders, _OrderInputs
    from streams.settings import Settings

    class Topics:
        settings = Settings()

        def decoded(self, name: str) -> list[tuple[None, str, dict[str, Any]]]:
            if name == "order.states":
                return [(None, "OrderStateChanged", {"order_id": o, "state": s, "reason": r, "stage_times": {}})
                        for o, s, r in (("jd:1", "payment_timeout", ""), ("jd:2", "routed", ""),
                                        ("jd:3", "payment_timeout", ""), ("tmall:4", "cancelled", "balance_unpaid"),
                                        ("tmall:5", "cancelled", "balance_unpaid"))]  # fmt: skip
            if name == "reservation.results":
                return [(None, "ReservationDecided", {"order_id": o, "outcome": "RESERVED", "lines": []})
                        for o in ("jd:1", "jd:2", "jd:3", "tmall:4", "tmall:5")]  # fmt: skip
            return []

        def cut(self, name: str, key: str | None = None) -> bool:
            return False

    report = Report()
    # jd:3 was never paid; tmall:4's balance was taken and lost; tmall:5 paid its deposit alone
    orders = _OrderInputs(placed={"jd:1", "jd:2", "jd:3", "tmall:4", "tmall:5"},
                          paid={"jd:1", "jd:2", "tmall:4", "tmall:5"}, balance_paid={"tmall:4"})  # fmt: skip
    _audit_orders(Topics(), orders, {}, 0, report)  # type: ignore[arg-type]
    assert report.paid_but_timed_out == ["jd:1", "tmall:4"] and not report.lost_orders
    assert report.summary()["other_failures"] == {"paid_but_timed_out": 2}


def test_a_paid_order_with_a_line_the_pool_never_answered_has_no_hold_behind_it() -> None:
    """Changed on purpose: an order's lines were taken from the pool's answers, so a line never answered (never held)
    was in none of them, and a paid order holding only part of what it was placed with passed."""
    last = {"jd:1#1": {"outcome": "COMMITTED"}}
    report = Report()
    _check_order_states(last, {"jd:1": [1, 2]}, {"jd:1": "paid"}, {}, WAITS, 0, report)
    assert report.paid_without_hold == ["jd:1"]


def test_an_order_that_ended_still_holding_a_line_is_a_failure() -> None:
    """Changed on purpose: a cancelled, timed-out or delivered order whose line was never let go (a RELEASE lost)
    passed: its units locked for good (a sold line never expires), or until the hold's expiry hours later."""
    last = {"jd:1#1": {"outcome": "COMMITTED"}, "jd:2#1": {"outcome": "HELD"}, "jd:3#1": {"outcome": "RELEASED"},
            "jd:4#1": {"outcome": "SHIPPED"}}  # fmt: skip
    states = {"jd:1": "cancelled", "jd:2": "payment_timeout", "jd:3": "cancelled", "jd:4": "delivered"}
    report = Report()
    _check_order_states(last, {}, states, {}, WAITS, 0, report)
    assert report.ended_but_held == ["jd:1", "jd:2"]
    assert not report.ok and report.other_failures == {"ended_but_held": 2}


# ---- blind spots: wrong runs the checker passed, each with a correct variant that still passes ------------------

DAY_MS = 86_400_000
GARBAGE = b"\xc3\x01" + bytes(8) + b"not a record"


def _placed_lines(topics: Topics, order_id: str, lines: list[tuple[int, str, int]], presale: bool = False) -> None:
    channel, _, number = order_id.partition(":")
    topics.event(ORDER_EVENTS.name, "OrderPlaced", {
        "event_id": f"placed:{order_id}", "event_time_ms": 1, "channel": channel, "channel_order_id": number,
        "customer_id": "c1", "amount_fen": 100, "coupon_type": "", "presale": presale, "vip": False,
        "sent_at_ms": 0, "address": {"province": "上海", "city": "上海", "district": "青浦", "detail": "1号"},
        "lines": [{"line_no": n, "sku": sku, "qty": qty, "unit_price_fen": 100, "custom": False, "bundle": False}
                  for n, sku, qty in lines]})  # fmt: skip


def _state(topics: Topics, order_id: str, state: str, stage_times: dict[str, int], reason: str = "") -> None:
    topics.event(ORDER_STATES.name, "OrderStateChanged", {
        "event_id": f"{order_id}:{state}", "event_time_ms": max(stage_times.values()), "order_id": order_id,
        "channel": order_id.partition(":")[0], "state": state, "previous_state": "", "reason": reason,
        "warehouse_id": "", "stage_times": stage_times})  # fmt: skip


def _payment(topics: Topics, order_id: str, at_ms: int, amount_fen: int = 100, balance: bool = False) -> None:
    channel, _, number = order_id.partition(":")
    topics.event(ORDER_EVENTS.name, "PaymentConfirmed", {
        "event_id": f"paid:{order_id}:{at_ms}", "event_time_ms": at_ms, "channel": channel,
        "channel_order_id": number, "payment_id": "P1", "amount_fen": amount_fen, "balance": balance})  # fmt: skip


def _held_then_cancelled(topics: Topics, order_id: str, sku: str, qty: int) -> None:
    topics.placed(order_id, sku, qty)
    topics.answer(order_id, sku, qty, "RESERVE", "HELD", 1_000)
    topics.decided(order_id, sku, qty)
    topics.answer(order_id, sku, qty, "RELEASE", "RELEASED", 2_000, reason="order_cancelled")
    _state(topics, order_id, "cancelled", {"placed": 1, "reserved": 1_000, "cancelled": 2_000})


def test_holds_on_a_sku_that_never_had_stock_are_oversold(topics: Topics) -> None:
    """New check: a SKU was audited only with a valid adjustment or a line open at the end, so 3 units held (and
    let go) of a SKU that never had one passed. Every SKU an answer names is audited; with the stock, it passes."""
    _held_then_cancelled(topics, "jd:1", "Z", 3)
    topics.totals("Z", {})
    report = checker.audit(Settings())
    assert report.oversold_units == 3 and not report.ok
    topics.adjust("Z", "RECEIPT", 3, "rcpt-1", applied_ms=500)
    topics.totals("Z", {WH: 3})
    assert checker.audit(Settings()).ok


def test_a_sku_refused_as_unknown_with_nothing_in_the_store_passes(topics: Topics) -> None:
    """The correct run the new audit of every SKU must leave alone: an order for a SKU the pool never heard of,
    refused, with no store record for it."""
    topics.placed("jd:1", "NOPE", 1)
    topics.answer("jd:1", "NOPE", 1, "RESERVE", "REFUSED", 1_000, reason="unknown_sku")
    topics.decided("jd:1", "NOPE", 1, outcome="REJECTED")
    report = checker.audit(Settings())
    assert "NOPE" in report.skus and report.ok, report.summary()


def test_stock_from_a_receipt_the_pool_should_have_refused_is_drift(topics: Topics) -> None:
    """New check: a receipt at a warehouse that does not exist was dropped before it registered its SKU, so the 50
    phantom units the pool booked from it (and the hold taken on them) were never compared."""
    topics.adjust("Y", "RECEIPT", 50, "rcpt-bad", applied_ms=500, wh="WH-NOWHERE")
    _held_then_cancelled(topics, "jd:2", "Y", 50)
    topics.totals("Y", {"WH-NOWHERE": 50})
    report = checker.audit(Settings())
    assert [sa.sku for sa in report.drifted] == ["Y"] and report.oversold_units == 50
    topics.totals("Y", {})  # the pool refused it: nothing on hand, and the hold was oversold all the same
    report = checker.audit(Settings())
    assert report.drifted == [] and report.oversold_units == 50


def test_store_totals_no_topic_mentions_are_drift(topics: Topics) -> None:
    """New check: 40 units and 5 locked (no line record behind them) of a SKU no topic mentions were not judged."""
    topics.totals("X", {WH: 40}, locked=5)
    assert [sa.sku for sa in checker.audit(Settings()).drifted] == ["X"]
    topics.totals("X", {})
    assert checker.audit(Settings()).ok


def test_a_hold_for_an_order_no_placement_describes_counts_as_regular(topics: Topics) -> None:
    """New check: a hold whose order no OrderPlaced describes (a stray RESERVE) counted in neither regular nor
    presale holds: 5 held on a shelf of 2 reported no oversell. Counted as regular (the conservative side); where
    the order's OrderPlaced may be deleted by retention, its oversell is unjudged instead."""
    topics.adjust("A", "RECEIPT", 2, "rcpt-1", applied_ms=500)
    topics.answer("jd:stray", "A", 5, "RESERVE", "HELD", 1_000)
    topics.answer("jd:stray", "A", 5, "RELEASE", "RELEASED", 2_000)
    topics.totals("A", {WH: 2})
    assert checker.audit(Settings()).oversold_units == 3
    topics.placed("jd:other", "A", 1)  # offset 0 on order.events: deleted below
    topics.expire(ORDER_EVENTS.name, 1)
    report = checker.audit(Settings())
    assert report.oversold_units == 0
    assert report.unjudged == {"order jd:stray": f"presale or regular: {RETAINED} order.events"}


def _paid_and_shipped(topics: Topics, held_qty: int, placed_qty: int = 5, held_sku: str = "A") -> None:
    topics.adjust("A", "RECEIPT", 10, "rcpt-1", applied_ms=1_000)
    _placed_lines(topics, "jd:1", [(1, "A", placed_qty)])
    topics.answer("jd:1", held_sku, held_qty, "RESERVE", "HELD", 2_000)
    topics.decided("jd:1", "A", placed_qty)
    topics.answer("jd:1", held_sku, held_qty, "COMMIT", "COMMITTED", 3_000)
    topics.answer("jd:1", held_sku, held_qty, "SHIP", "SHIPPED", 4_000)
    _state(topics, "jd:1", "shipped", {"placed": 1, "reserved": 2_000, "paid": 3_000, "shipped": 4_000})
    topics.line(held_sku, "jd:1", held_qty, status="shipped")


def test_a_line_held_with_another_quantity_than_ordered_is_misheld(topics: Topics) -> None:
    """New check: an answer's quantity was never compared with its order line, so a line of 5 held, committed and
    shipped as 1 (4 units left the shelf the pool still counts) passed."""
    _paid_and_shipped(topics, held_qty=1)
    topics.totals("A", {WH: 9})
    report = checker.audit(Settings())
    assert report.lines_misheld == ["jd:1#1: HELD 1 of A, placed 5 of A"] and not report.ok
    assert report.summary()["other_failures"] == {"lines_misheld": 1}


def test_a_line_held_under_another_sku_is_misheld(topics: Topics) -> None:
    """New check: nor its SKU: a line of A held as B (B's stock gone, A's not) passed."""
    topics.adjust("B", "RECEIPT", 10, "rcpt-b", applied_ms=1_000)
    _paid_and_shipped(topics, held_qty=5, held_sku="B")
    topics.totals("A", {WH: 10})
    topics.totals("B", {WH: 5})
    assert checker.audit(Settings()).lines_misheld == ["jd:1#1: HELD 5 of B, placed 5 of A"]


def test_a_line_held_as_ordered_is_not_misheld(topics: Topics) -> None:
    _paid_and_shipped(topics, held_qty=5)
    topics.totals("A", {WH: 5})
    report = checker.audit(Settings())
    assert report.lines_misheld == [] and report.ok, report.summary()


def test_a_payment_timeout_before_its_time_is_an_early_timer(topics: Topics) -> None:
    """New check: only timers that did not fire were judged; an order timed out 2 s after it was reserved (payment
    timeout 30 min) passed. At its time exactly it is the lifecycle's own rule."""
    t0 = int(time.time() * 1000) - DAY_MS
    topics.adjust("A", "RECEIPT", 5, "rcpt-1", applied_ms=t0 - 1_000)
    topics.placed("jd:1", "A", 2)
    topics.answer("jd:1", "A", 2, "RESERVE", "HELD", t0)
    topics.decided("jd:1", "A", 2)
    topics.answer("jd:1", "A", 2, "RELEASE", "RELEASED", t0 + 2_000, reason="order_payment_timeout")
    _state(topics, "jd:1", "payment_timeout", {"placed": t0, "reserved": t0, "payment_timeout": t0 + 2_000})
    topics.totals("A", {WH: 5})
    settings = Settings(payment_timeout_s=1_800)
    report = checker.audit(settings)
    assert report.early_timers == ["order jd:1 timed out 2000 ms after it was reserved, due after 1800000"]
    assert not report.ok
    _state(topics, "jd:1", "payment_timeout", {"placed": t0, "reserved": t0, "payment_timeout": t0 + 1_800_000})
    assert checker.audit(settings).ok


def test_a_hold_expired_before_its_time_is_an_early_timer(topics: Topics) -> None:
    """New check: an EXPIRED answer 5 s after its HELD (hold TTL 2 h) passed, and the order timed out with it. An
    expiry is judged from the first answer that held the line (a replay repeats it later; the pool dates it by the
    first), and the order's timeout by its hold's, not the payment timeout."""
    t0 = int(time.time() * 1000) - DAY_MS
    topics.adjust("A", "RECEIPT", 5, "rcpt-1", applied_ms=t0 - 1_000)
    topics.placed("jd:1", "A", 2)
    topics.answer("jd:1", "A", 2, "RESERVE", "HELD", t0)
    topics.decided("jd:1", "A", 2)
    topics.answer("jd:1", "A", 2, "RESERVE", "HELD", t0 + 4_000)  # repeated
    topics.answer("jd:1", "A", 2, "EXPIRE", "EXPIRED", t0 + 5_000, reason="hold_expired")
    _state(topics, "jd:1", "payment_timeout", {"placed": t0, "reserved": t0, "payment_timeout": t0 + 5_000},
           reason="hold_expired")  # fmt: skip
    topics.totals("A", {WH: 5})
    settings = Settings(hold_ttl_s=7_200, payment_timeout_s=1_800)
    assert checker.audit(settings).early_timers == ["hold jd:1#1 expired 5000 ms after it was held, due after 7200000"]
    topics.answer("jd:1", "A", 2, "EXPIRE", "EXPIRED", t0 + 7_200_000, reason="hold_expired")  # the real one
    topics.records[Settings().topic(HOLD_RESULTS.name)].pop(-2)
    _state(topics, "jd:1", "payment_timeout", {"placed": t0, "reserved": t0, "payment_timeout": t0 + 7_200_000},
           reason="hold_expired")  # fmt: skip
    report = checker.audit(settings)
    assert report.early_timers == [] and report.ok, report.summary()


def _presale_deposit(topics: Topics, t0: int, cancelled_ms: int, *, deposit_ms: int | None = None) -> None:
    topics.adjust("P", "PRESALE_CAP", 5, "cap-1", applied_ms=t0 - 1_000)
    topics.placed("tmall:1", "P", 2, presale=True)
    topics.answer("tmall:1", "P", 2, "RESERVE", "HELD", t0)
    topics.decided("tmall:1", "P", 2)
    _payment(topics, "tmall:1", t0 if deposit_ms is None else deposit_ms, amount_fen=20)
    topics.answer("tmall:1", "P", 2, "COMMIT", "COMMITTED", t0 + 10)
    topics.answer("tmall:1", "P", 2, "RELEASE", "RELEASED", cancelled_ms, reason="order_cancelled")
    _state(topics, "tmall:1", "cancelled", {"placed": t0, "reserved": t0, "deposit_paid": t0,
                                            "cancelled": cancelled_ms}, reason="balance_unpaid")  # fmt: skip
    topics.totals("P", {})


def test_a_presale_cancelled_for_its_balance_before_the_window_ends_is_an_early_timer(topics: Topics) -> None:
    """New check: a presale order cancelled balance_unpaid an hour after its deposit (window 30 days) passed. The
    window runs from the deposit's channel time when that is earlier, as the lifecycle has it."""
    t0 = int(time.time() * 1000) - 40 * DAY_MS
    settings = Settings(presale_balance_s=30 * 86_400)
    _presale_deposit(topics, t0, t0 + 3_600_000)
    assert checker.audit(settings).early_timers == [
        "order tmall:1 cancelled balance_unpaid 3600000 ms after its deposit, due after 2592000000"]


def test_a_presale_cancelled_for_its_balance_at_the_window_from_the_deposits_channel_time_passes(
        topics: Topics) -> None:  # fmt: skip
    t0 = int(time.time() * 1000) - 40 * DAY_MS
    settings = Settings(presale_balance_s=30 * 86_400)
    _presale_deposit(topics, t0, t0 + 30 * DAY_MS - 60_000, deposit_ms=t0 - 60_000)  # paid a minute before heard
    report = checker.audit(settings)
    assert report.early_timers == [] and report.ok, report.summary()


def test_a_reserved_order_whose_line_holds_nothing_is_a_failure(topics: Topics) -> None:
    """New check: paid and routed orders had to hold their lines, reserved ones not: an order the pool's VIP
    override took the hold from, stuck 'reserved' (shown to the buyer as reserved, nothing held), passed."""
    now = int(time.time() * 1000)
    topics.adjust("A", "RECEIPT", 5, "rcpt-1", applied_ms=now - 60_000)
    topics.placed("jd:1", "A", 2)
    topics.answer("jd:1", "A", 2, "RESERVE", "HELD", now - 50_000)
    topics.decided("jd:1", "A", 2)
    _state(topics, "jd:1", "reserved", {"placed": now - 50_000, "reserved": now - 50_000})
    topics.line("A", "jd:1", 2)
    topics.totals("A", {WH: 5}, locked=2)
    assert checker.audit(Settings()).ok
    topics.answer("jd:1", "A", 2, "RELEASE", "RELEASED", now - 40_000, reason="vip_override:ov9")
    topics.line("A", "jd:1", 2, status="released")
    topics.totals("A", {WH: 5})
    report = checker.audit(Settings())
    assert report.paid_without_hold == ["jd:1"] and not report.ok


def test_a_reserved_vip_order_whose_set_aside_was_offered_and_let_go_holds_what_it_should(topics: Topics) -> None:
    """The answers on a VIP order's set-aside line (0: offered, let go once its lines have asked) are no line of
    the order: read as one, the reserved order looked as if a line of it held nothing."""
    now = int(time.time() * 1000)
    topics.adjust("A", "RECEIPT", 5, "rcpt-1", applied_ms=now - 60_000)
    for outcome, at_ms, reason in (("OFFERED", now - 55_000, "vip_override:ov1"),
                                   ("RELEASED", now - 50_000, "order_reserved")):  # fmt: skip
        topics.event(HOLD_RESULTS.name, "HoldDecided", {
            "event_id": f"own:vip#0:{outcome}", "event_time_ms": at_ms, "order_id": "own:vip", "line_no": 0,
            "sku": "A", "qty": 2, "action": "RESERVE" if outcome == "OFFERED" else "RELEASE", "outcome": outcome,
            "reason": reason, "source_time_ms": 0, "bucket": -1})  # fmt: skip
    topics.placed("own:vip", "A", 1)
    topics.answer("own:vip", "A", 1, "RESERVE", "HELD", now - 50_000)
    topics.decided("own:vip", "A", 1)
    _state(topics, "own:vip", "reserved", {"placed": now - 50_000, "reserved": now - 50_000})
    topics.line("A", "own:vip", 1)
    topics.totals("A", {WH: 5}, locked=1)
    report = checker.audit(Settings())
    assert report.ok, {k: v for k, v in report.summary().items() if v}


def test_a_reserved_order_the_wms_shipped_unpaid_holds_what_it_should() -> None:
    """A reserved order keeps its state when the WMS ships it unpaid (its line SHIPPED), and a presale one whose
    deposit is paid its lines COMMITTED: neither lacks a hold."""
    last = {"jd:1#1": {"outcome": "SHIPPED"}, "tmall:2#1": {"outcome": "COMMITTED"}, "jd:3#1": {"outcome": "EXPIRED"}}
    report = Report()
    _check_order_states(last, {}, {"jd:1": "reserved", "tmall:2": "reserved", "jd:3": "reserved"}, {}, WAITS, 0,
                        report)  # fmt: skip
    assert report.paid_without_hold == ["jd:3"]


def _returned(topics: Topics, refund: str, lines: list[tuple[int, str, int]], wh: str = WH) -> None:
    topics.event(REFUND_EVENTS.name, "RefundRequested", {
        "event_id": f"req:jd:{refund}", "event_time_ms": 4_000, "channel": "jd", "channel_order_id": "1",
        "channel_refund_id": refund, "kind": "RETURN_AND_REFUND", "amount_fen": 100, "reason": "no_reason_7d",
        "lines": [{"line_no": n, "sku": sku, "qty": qty} for n, sku, qty in lines], "tracking_no": "",
        "sent_at_ms": 0})  # fmt: skip
    topics.event(REFUND_EVENTS.name, "ReturnReceived", {
        "event_id": f"return-qc:jd:{refund}", "event_time_ms": 5_000, "channel": "jd", "channel_order_id": "1",
        "channel_refund_id": refund, "warehouse_id": wh, "qc_done": True, "resellable": True, "qc_note": ""})


def _bought_two(topics: Topics) -> None:
    """Order jd:1: 2 units of A, shipped."""
    topics.adjust("A", "RECEIPT", 2, "rcpt-1", applied_ms=1_000)
    _placed_lines(topics, "jd:1", [(1, "A", 2)])
    topics.answer("jd:1", "A", 2, "RESERVE", "HELD", 2_000)
    topics.decided("jd:1", "A", 2)
    topics.answer("jd:1", "A", 2, "SHIP", "SHIPPED", 3_000)


def test_a_restock_of_more_units_than_came_back_is_a_failure(topics: Topics) -> None:
    """New check: a restock needed a resellable QC report for its refund, never more: 1 unit returned, 5 put back
    on hand passed (4 phantom units, sold again)."""
    _bought_two(topics)
    _returned(topics, "r1", [(1, "A", 1)])
    topics.adjust("A", "RECEIPT", 5, "return:jd:r1:1", applied_ms=6_000, topic=STOCK_RETURNS.name)
    topics.totals("A", {WH: 5})
    report = checker.audit(Settings())
    assert report.restocked_unreturned == [f"return:jd:r1:1: 5 of A at {WH}, 1 returned"] and not report.ok


def test_a_restock_at_another_warehouse_than_the_return_reached_is_a_failure(topics: Topics) -> None:
    _bought_two(topics)
    _returned(topics, "r1", [(1, "A", 1)])
    topics.adjust("A", "RECEIPT", 1, "return:jd:r1:1", applied_ms=6_000, wh=WH2, topic=STOCK_RETURNS.name)
    topics.totals("A", {WH2: 1})
    assert checker.audit(Settings()).restocked_unreturned == [
        f"return:jd:r1:1: 1 of A at {WH2}, the return reached {WH}"]


def test_restocks_of_more_units_than_the_order_shipped_are_a_failure(topics: Topics) -> None:
    """Two refunds of one order, each returning both units it shipped: 4 restocked of 2 shipped."""
    _bought_two(topics)
    for refund in ("r1", "r2"):
        _returned(topics, refund, [(1, "A", 2)])
        topics.adjust("A", "RECEIPT", 2, f"return:jd:{refund}:1", applied_ms=6_000, topic=STOCK_RETURNS.name)
    topics.totals("A", {WH: 4})
    assert checker.audit(Settings()).restocked_unreturned == ["return:jd:r2:1: 2 of A at WH-SH, order jd:1 shipped 2"]


def test_a_return_of_the_whole_order_restocks_what_it_shipped(topics: Topics) -> None:
    """A request naming no line returns the whole order (the refund agent restocks every line it was placed with);
    a partial return restocks its units; a restock read twice (at least once) is one."""
    _bought_two(topics)
    _returned(topics, "r1", [])
    for _ in range(2):
        topics.adjust("A", "RECEIPT", 2, "return:jd:r1:1", applied_ms=6_000, topic=STOCK_RETURNS.name)
    topics.totals("A", {WH: 2})
    report = checker.audit(Settings())
    assert report.restocked_unreturned == [] and report.ok, report.summary()


def test_an_unreadable_restock_no_one_dead_lettered_is_a_failure(topics: Topics) -> None:
    """New check: unreadable bytes on stock.returns (a pool input too: a return that never reaches the shelf)
    passed, while the same on stock.adjustments failed."""
    topics.adjust("A", "RECEIPT", 5, "rcpt-1", applied_ms=1_000)
    topics.totals("A", {WH: 5})
    assert checker.audit(Settings()).ok
    topics.raw(STOCK_RETURNS.name, b"A", GARBAGE)
    report = checker.audit(Settings())
    assert report.inputs_unrefused == [f"{STOCK_RETURNS.name} partition 0 offset 0"] and not report.ok


def test_an_unreadable_answer_of_the_pool_is_a_failure(topics: Topics) -> None:
    """New check: an answer the audit cannot read was skipped without a word, and the double hold it stood for (2
    units held on a shelf of 2 another order held) with it. An output the audit cannot read leaves it unable to
    judge: a failure, whether or not the sink dead-lettered it."""
    topics.adjust("A", "RECEIPT", 2, "rcpt-1", applied_ms=500)
    topics.placed("jd:2", "A", 2)
    topics.answer("jd:2", "A", 2, "RESERVE", "HELD", 1_600)
    topics.decided("jd:2", "A", 2)
    topics.line("A", "jd:2", 2)
    topics.totals("A", {WH: 2}, locked=2)
    assert checker.audit(Settings()).ok
    topics.raw(HOLD_RESULTS.name, b"jd:1", GARBAGE)
    report = checker.audit(Settings())
    assert report.outputs_unreadable == [f"{HOLD_RESULTS.name} partition 0 offset 1"] and not report.ok
    assert report.summary()["other_failures"] == {"outputs_unreadable": 1}


def test_at_least_once_a_hold_whose_first_answer_was_lost_expires_from_its_orders_placement(topics: Topics) -> None:
    """At least once, a crash in the flush may keep a batch's changelog and lose its HELD answer: the first HELD on
    the topic is the replay's, answered as the line stands, later than the hold the pool expires by. Judged from
    the order's placement then, no hold is taken before it; exactly once the answer commits with its hold."""
    t0 = int(time.time() * 1000) - DAY_MS
    topics.adjust("A", "RECEIPT", 5, "rcpt-1", applied_ms=t0 - 1_000)
    channel_time = t0 - 100
    topics.event(ORDER_EVENTS.name, "OrderPlaced", {
        "event_id": "placed:jd:1", "event_time_ms": channel_time, "channel": "jd", "channel_order_id": "1",
        "customer_id": "c1", "amount_fen": 100, "coupon_type": "", "presale": False, "vip": False, "sent_at_ms": 0,
        "address": {"province": "上海", "city": "上海", "district": "青浦", "detail": "1号"},
        "lines": [{"line_no": 1, "sku": "A", "qty": 2, "unit_price_fen": 100, "custom": False, "bundle": False}]})
    topics.answer("jd:1", "A", 2, "RESERVE", "HELD", t0 + 20_000)  # the replay's; the hold was taken at t0
    topics.decided("jd:1", "A", 2)
    topics.answer("jd:1", "A", 2, "EXPIRE", "EXPIRED", t0 + 7_200_000, reason="hold_expired")
    _state(topics, "jd:1", "payment_timeout", {"placed": channel_time, "reserved": t0,
                                               "payment_timeout": t0 + 7_200_000}, reason="hold_expired")  # fmt: skip
    topics.totals("A", {WH: 5})
    report = checker.audit(Settings(hold_ttl_s=7_200, processing_guarantee="at_least_once"))
    assert report.early_timers == [] and report.ok, report.summary()
    assert checker.audit(Settings(hold_ttl_s=7_200)).early_timers == [
        "hold jd:1#1 expired 7180000 ms after it was held, due after 7200000"]
