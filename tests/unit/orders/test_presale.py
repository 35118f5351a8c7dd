"""Presale orders (预售): the deposit secures the order, the balance pays it.

The deposit keeps the order's units held (committed, so the pool never expires them) for the balance
window without paying the order: nothing is routed, no SLA or health score starts. The balance pays it as
any payment does. A balance that never comes cancels the order at the end of the window and gives the
units back; the deposit is forfeited by marketplace rules, so no refund is owed.
"""

from __future__ import annotations

from typing import Any

import pytest

from agents.inventory.hold_stock import STORE as POOL
from agents.inventory.hold_stock import sku_key
from agents.orders import rules as flow
from agents.orders.run_lifecycle import STORE as ORDERS
from agents.orders.run_lifecycle import order_rules
from agents.routing.warehouse_view import WarehouseView
from loadtest import events as ev
from streams.contract.reasons import Reason
from streams.contract.topics import STOCK_ADJUSTMENTS
from streams.engine.local import LocalRunner
from streams.engine.timers import Timers
from streams.settings import Settings
from tests.unit.orders.test_run_lifecycle import first_warehouse, order, pipeline, states, stock

RULES = order_rules(Settings(channels=("tmall", "jd"), payment_timeout_s=1800, hold_ttl_s=7200,
                             presale_balance_s=10 * 86_400))  # fmt: skip
HELD = {"action": "RESERVE", "outcome": "HELD", "reason": ""}


def placed(presale: bool = True) -> flow.OrderRecord:
    rec = flow.OrderRecord(order_id="jd:1")
    flow.on_placed(rec, ev.order_placed("jd", "1", [ev.line(1, "A", 1), ev.line(2, "B", 2)], presale=presale), 0,
                   RULES)  # fmt: skip
    return rec


def reserved(presale: bool = True) -> flow.OrderRecord:
    rec = placed(presale)
    for line_no in (1, 2):
        flow.on_hold_decided(rec, {**HELD, "line_no": line_no}, 0, RULES)
    assert rec.state == "reserved"
    return rec


def deposit(at_ms: int) -> dict[str, Any]:
    return {**ev.payment_confirmed("jd", "1"), "event_time_ms": at_ms}


def balance(at_ms: int) -> dict[str, Any]:
    return {**ev.payment_confirmed("jd", "1"), "event_id": "paid:jd:1:balance", "balance": True, "event_time_ms": at_ms}


def actions(fx: flow.Effects) -> list[tuple[str, int]]:
    return [(c["action"], c["line_no"]) for c in fx.hold_commands]


# ---- the rules -----------------------------------------------------------------------------------------


def test_a_presale_deposit_keeps_the_units_held_but_neither_pays_nor_routes_the_order() -> None:
    """Changed on purpose: the deposit paid the order, committed its holds and routed it, so goods left for
    a deposit and an order whose balance never came was shipped anyway."""
    rec = reserved()
    fx = flow.on_payment(rec, deposit(1_000), 1_000, RULES)
    assert (rec.state, rec.paid, rec.paid_at_ms) == ("reserved", False, 0)
    assert rec.stage_times["deposit_paid"] == 1_000 and "paid" not in rec.stage_times
    assert actions(fx) == [("COMMIT", 1), ("COMMIT", 2)]  # a committed hold never expires in the pool
    assert fx.route == [] and not fx.score_health and fx.dispatches == [] and fx.refusal is None
    assert fx.transitions == [("reserved", "reserved", "deposit_paid")]  # published: the stage time is seen now
    # The payment timeout is over; the balance window runs from the deposit.
    assert rec.next_deadline_ms(RULES) == 1_000 + RULES.presale_balance_ms
    fx = flow.on_tick(rec, RULES.payment_timeout_ms + 1, RULES)
    assert (fx.transitions, fx.hold_commands, rec.state) == ([], [], "reserved")
    assert flow.sla_alerts(rec, 1_000 + 100 * RULES.sla_ms, RULES) == []  # not paid: no SLA runs


def test_the_balance_pays_and_routes_a_presale_order_and_everything_paid_counts_from_it() -> None:
    rec = reserved()
    flow.on_payment(rec, deposit(1_000), 1_000, RULES)
    paid_at = 5 * 86_400_000
    fx = flow.on_payment(rec, balance(paid_at - 7), paid_at, RULES)
    assert (rec.state, rec.paid, rec.paid_at_ms) == ("paid", True, paid_at - 7)
    assert rec.stage_times["paid"] == paid_at and rec.stage_times["deposit_paid"] == 1_000
    assert fx.route == ["1", "2"] and fx.score_health and fx.transitions == [("reserved", "paid", "")]
    assert actions(fx) == [("COMMIT", 1), ("COMMIT", 2)]  # the pool answers a committed line as it stands
    # SLA, health and the promised ship-by time measure from the full payment, not from the deposit.
    # The 15 minutes run from when the buyer paid (the channel's time, 7 ms before it was heard).
    since = paid_at - 7
    assert rec.next_deadline_ms(RULES) == since + RULES.sla_ms
    assert flow.sla_alerts(rec, since + RULES.sla_ms - 1, RULES) == []
    [breach] = flow.sla_alerts(rec, since + RULES.sla_ms, RULES)
    assert breach.kind == "sla_breach" and breach.details["paid_at_ms"] == str(since)
    assert flow.health_facts(rec, 0).paid_at_ms == paid_at - 7
    rec.allocated = {"1": "WH-SH", "2": "WH-SH"}
    assert flow.dispatch_records(rec, RULES)[0]["promised_ship_by_ms"] == paid_at + RULES.ship_promise_ms


def test_a_balance_before_its_deposit_pays_the_order_and_the_late_deposit_changes_nothing() -> None:
    rec = reserved()
    fx = flow.on_payment(rec, balance(1_000), 1_000, RULES)
    assert rec.state == "paid" and fx.route == ["1", "2"]
    fx = flow.on_payment(rec, deposit(2_000), 2_000, RULES)
    assert (fx.hold_commands, fx.transitions, fx.refusal) == ([], [], None)
    assert "deposit_paid" not in rec.stage_times and rec.state == "paid"


def test_repeated_deposits_and_balances_change_nothing() -> None:
    rec = reserved()
    flow.on_payment(rec, deposit(1_000), 1_000, RULES)
    fx = flow.on_payment(rec, deposit(1_000), 2_000, RULES)
    assert (fx.hold_commands, fx.transitions, fx.refusal) == ([], [], None)
    assert rec.stage_times["deposit_paid"] == 1_000 and rec.next_deadline_ms(RULES) == 1_000 + RULES.presale_balance_ms
    flow.on_payment(rec, balance(3_000), 3_000, RULES)
    fx = flow.on_payment(rec, balance(3_000), 4_000, RULES)
    assert (fx.hold_commands, fx.transitions, fx.refusal, fx.route) == ([], [], None, [])
    assert rec.stage_times["paid"] == 3_000


def test_a_deposit_before_the_reservation_completes_is_applied_when_every_line_is_held() -> None:
    rec = placed()
    fx = flow.on_payment(rec, deposit(5), 5, RULES)
    assert fx.hold_commands == [] and rec.state == "placed"
    flow.on_hold_decided(rec, {**HELD, "line_no": 1}, 6, RULES)
    fx = flow.on_hold_decided(rec, {**HELD, "line_no": 2}, 7, RULES)
    assert fx.transitions == [("placed", "reserved", ""), ("reserved", "reserved", "deposit_paid")]
    assert actions(fx) == [("COMMIT", 1), ("COMMIT", 2)] and fx.route == [] and not rec.paid
    assert rec.payment_deadline_ms == 0 and rec.next_deadline_ms(RULES) == 5 + RULES.presale_balance_ms


def test_a_presale_order_whose_balance_never_comes_is_cancelled_and_its_units_go_back() -> None:
    rec = reserved()
    flow.on_payment(rec, deposit(1_000), 1_000, RULES)
    due = 1_000 + RULES.presale_balance_ms
    assert flow.on_tick(rec, due - 1, RULES).transitions == []
    fx = flow.on_tick(rec, due, RULES)
    assert (rec.state, rec.reason) == ("cancelled", flow.BALANCE_UNPAID)
    assert fx.transitions == [("reserved", "cancelled", "balance_unpaid")]
    assert actions(fx) == [("RELEASE", 1), ("RELEASE", 2)]
    assert {c["reason"] for c in fx.hold_commands} == {"order_cancelled"}  # ours: the order knows the answers
    assert fx.alerts == []  # the deposit is forfeited: no refund is owed
    assert rec.next_deadline_ms(RULES) == 0
    late = flow.on_payment(rec, balance(due + 1), due + 1, RULES)
    assert late.refusal is not None and late.refusal.reason == Reason.ORDER_NOT_PAYABLE and late.hold_commands == []
    assert [a.kind for a in late.alerts] == ["paid_order_not_fulfilled"]  # a balance is money taken: owed back


def test_a_balance_for_an_order_that_is_not_presale_is_refused() -> None:
    rec = reserved(presale=False)
    fx = flow.on_payment(rec, balance(1_000), 1_000, RULES)
    assert fx.refusal is not None and fx.refusal.reason == Reason.NOT_PRESALE
    assert (fx.hold_commands, rec.paid, rec.state) == ([], False, "reserved")
    flow.on_payment(rec, deposit(2_000), 2_000, RULES)  # its one payment pays it as ever
    assert rec.state == "paid"
    fx = flow.on_payment(rec, balance(3_000), 3_000, RULES)
    assert fx.refusal is not None and fx.refusal.reason == Reason.NOT_PRESALE


def test_a_presale_order_let_go_after_its_deposit_says_the_deposit_is_owed_back() -> None:
    rec = placed()
    flow.on_payment(rec, deposit(5), 5, RULES)
    flow.on_hold_decided(rec, {**HELD, "line_no": 1}, 6, RULES)
    refused = {**HELD, "line_no": 2, "outcome": "REFUSED", "reason": Reason.INSUFFICIENT_PRESALE_STOCK}
    fx = flow.on_hold_decided(rec, refused, 7, RULES)
    assert rec.state == "rejected"
    assert [a.kind for a in fx.alerts] == ["paid_order_not_fulfilled"] and "deposit" in fx.alerts[0].message


# ---- in process, with the pool -------------------------------------------------------------------------


def restart(r: LocalRunner) -> None:
    """As a worker that starts again: timers are not stored, they are rebuilt from what the stores hold."""
    for proc in r.processors:
        if not proc.timer_store:
            continue
        serde = next(s.serde for s in proc.stores if s.name == proc.timer_store)
        for partition in range(r.partitions):
            timers = r.timers[(proc.name, partition)] = Timers()
            store = r.stores.get((proc.timer_store, partition))
            for key, raw in store.items() if store is not None else ():
                due = proc.due_ms(key, serde.loads(raw)) if proc.may_have_timer(key) else 0
                if due:
                    timers.set(key, due)


def presale_stock(r: LocalRunner, sku: str, cap: int) -> None:
    r.send([(sku, "StockAdjusted", ev.stock_adjusted(sku, "", cap, kind="PRESALE_CAP"))], STOCK_ADJUSTMENTS.name)


def payment(channel: str, order_id: str, is_balance: bool) -> dict[str, Any]:
    paid = ev.payment_confirmed(channel, order_id)
    return {**paid, "event_id": f"{paid['event_id']}:balance", "balance": True} if is_balance else dict(paid)


def of_type(outputs: list[Any], event_type: str) -> list[dict[str, Any]]:
    return [o.record for o in outputs if o.event_type == event_type]


def test_in_process_a_deposit_holds_the_units_past_every_timeout_and_the_balance_ships_them() -> None:
    r, view = pipeline(payment_timeout_s=60, hold_ttl_s=120)
    wh = first_warehouse()
    stock(r, view, "SKU-P", 5, wh)
    presale_stock(r, "SKU-P", 3)
    out = order(r, "OrderPlaced", ev.order_placed("tmall", "P1", [ev.line(1, "SKU-P", 2)], presale=True))
    assert states(out) == ["placed", "reserved"]
    out = order(r, "PaymentConfirmed", payment("tmall", "P1", is_balance=False))
    [record] = of_type(out, "OrderStateChanged")
    assert (record["event_id"], record["state"], record["reason"]) == (
        "tmall:P1:reserved:deposit_paid", "reserved", "deposit_paid")  # fmt: skip
    assert record["stage_times"]["deposit_paid"] == r.now_ms == record["event_time_ms"]
    assert [o for o in out if o.event_type in ("RoutingDecision", "WarehouseDispatched", "OrderHealthScored")] == []
    seen = r.read(ORDERS, b"tmall:P1").to_dict()  # what /orders/{id} answers
    assert (seen["state"], seen["paid"], "deposit_paid" in seen["stage_times"]) == ("reserved", False, True)
    out = r.advance(600_000)  # well past the payment timeout and the hold TTL
    assert states(out) == [] and [d for d in of_type(out, "HoldDecided") if d["outcome"] == "EXPIRED"] == []
    assert r.read(POOL, sku_key("SKU-P"), "SKU-P")["presale_reserved"] == 2
    out = order(r, "PaymentConfirmed", payment("tmall", "P1", is_balance=True))
    assert states(out) == ["paid", "routed"]
    assert [(d["warehouse_id"], d["action"]) for d in of_type(out, "WarehouseDispatched")] == [(wh, "DISPATCH")]
    [scored] = of_type(out, "OrderHealthScored")
    assert scored["event_time_ms"] == r.now_ms
    assert not r.refusals


def test_in_process_the_balance_window_survives_a_restart_and_gives_the_units_back() -> None:
    r, view = pipeline(payment_timeout_s=60, hold_ttl_s=120, presale_balance_s=3_600)
    stock(r, view, "SKU-Q", 5, first_warehouse())
    presale_stock(r, "SKU-Q", 3)
    order(r, "OrderPlaced", ev.order_placed("jd", "Q1", [ev.line(1, "SKU-Q", 3)], presale=True))
    order(r, "PaymentConfirmed", payment("jd", "Q1", is_balance=False))
    assert r.read(POOL, sku_key("SKU-Q"), "SKU-Q")["presale_reserved"] == 3
    restart(r)
    assert states(r.advance(3_599_000)) == []
    out = r.advance(1_000)
    assert [(s["state"], s["reason"]) for s in of_type(out, "OrderStateChanged")] == [("cancelled", "balance_unpaid")]
    assert r.read(POOL, sku_key("SKU-Q"), "SKU-Q")["presale_reserved"] == 0
    assert [a["kind"] for a in of_type(r.outputs, "Alert")] == []  # the deposit is forfeited: no refund owed
    out = order(r, "PaymentConfirmed", payment("jd", "Q1", is_balance=True))
    assert [x.reason for x in r.refusals] == [Reason.ORDER_NOT_PAYABLE]
    assert [(a["kind"], a["severity"]) for a in of_type(out, "Alert")] == [("paid_order_not_fulfilled", "RED")]


def test_in_process_a_balance_for_an_order_that_is_not_presale_is_dead_lettered() -> None:
    r, view = pipeline()
    stock(r, view, "SKU-R", 5, first_warehouse())
    order(r, "OrderPlaced", ev.order_placed("pdd", "R1", [ev.line(1, "SKU-R", 1)]))
    assert states(order(r, "PaymentConfirmed", payment("pdd", "R1", is_balance=True))) == []
    assert [x.reason for x in r.refusals] == [Reason.NOT_PRESALE]
    assert states(order(r, "PaymentConfirmed", payment("pdd", "R1", is_balance=False))) == ["paid", "routed"]


# ---- review of the presale change ----------------------------------------------------------------------


def test_the_balance_window_is_a_generous_safety_net_behind_the_marketplaces_own_close() -> None:
    """Changed on purpose: 10 days from the deposit cancelled Double-11 early depositors before the balance
    phase opened (it often starts 10+ days after the deposits), and their units were sold again. The
    marketplace closes a presale trade whose balance is unpaid itself (that cancel comes through intake)."""
    assert Settings().presale_balance_s == 30 * 86_400
    assert "safety net" in (Settings.model_fields["presale_balance_s"].description or "")


@pytest.mark.parametrize(
    ("channel_ms", "now_ms", "starts_ms"),
    [
        (1_000, 60_000, 1_000),  # heard late (a slow callback, a parked payment): the channel's time counts
        (0, 60_000, 60_000),  # no channel time: when it was heard
        (90_000, 60_000, 60_000),  # a channel clock ahead of the pipeline's never lengthens the window
    ],
)
def test_the_balance_window_runs_from_the_deposits_channel_time(channel_ms: int, now_ms: int, starts_ms: int) -> None:
    rec = reserved()
    flow.on_payment(rec, deposit(channel_ms), now_ms, RULES)
    assert rec.balance_deadline_ms == starts_ms + RULES.presale_balance_ms
    assert rec.next_deadline_ms(RULES) == starts_ms + RULES.presale_balance_ms
    assert rec.stage_times["deposit_paid"] == now_ms


def test_a_balance_after_the_window_cancelled_the_order_says_the_customer_is_owed_it_back() -> None:
    """Changed on purpose: the balance was only dead-lettered, so a buyer who had paid in full for a cancelled
    order (its units sold again) was owed money with nobody told."""
    rec = reserved()
    flow.on_payment(rec, {**deposit(1_000), "amount_fen": 3_000}, 1_000, RULES)
    flow.on_tick(rec, 1_000 + RULES.presale_balance_ms, RULES)
    assert (rec.state, rec.reason) == ("cancelled", flow.BALANCE_UNPAID)
    late = flow.on_payment(rec, {**balance(2_000_000_000), "amount_fen": 7_000}, 2_000_000_000, RULES)
    assert late.refusal is not None and late.refusal.reason == Reason.ORDER_NOT_PAYABLE
    assert [(a.kind, a.severity) for a in late.alerts] == [("paid_order_not_fulfilled", "RED")]
    [owed] = late.alerts
    assert "balance_unpaid" in owed.message and "70.00" in owed.message
    assert owed.event_id == "paid_order_not_fulfilled:jd:1:balance"
    assert (rec.state, rec.paid, late.hold_commands, late.transitions) == ("cancelled", False, [], [])
    assert rec.paid_fen == 10_000  # deposit and balance: what the customer has paid, refunds are bounded by it
    again = flow.on_payment(rec, {**balance(2_000_000_000), "amount_fen": 7_000}, 2_000_000_001, RULES)
    assert again.refusal is not None and again.alerts == []  # the same balance again: nothing new is owed
    repeated_deposit = flow.on_payment(rec, deposit(1_000), 2_000_000_002, RULES)
    assert repeated_deposit.refusal is not None and repeated_deposit.alerts == []  # forfeited, already known


def test_what_the_buyer_paid_is_kept_on_the_order() -> None:
    """Refunds are bounded by it (``OrderFacts.paid_fen``): a presale order may have only its deposit paid."""
    price = placed().amount_fen
    rec = reserved()
    assert rec.paid_fen == 0
    flow.on_payment(rec, {**deposit(1), "amount_fen": 3_000}, 1, RULES)
    flow.on_payment(rec, {**deposit(1), "amount_fen": 3_000}, 2, RULES)  # repeated
    assert (rec.paid_fen, rec.payments) == (3_000, {"deposit": 3_000})
    flow.on_payment(rec, {**balance(3), "amount_fen": price - 3_000}, 3, RULES)
    assert rec.paid_fen == price and rec.state == "paid"
    late_deposit = reserved()  # the balance heard first: the deposit that comes after it is money paid all the same
    flow.on_payment(late_deposit, {**balance(1), "amount_fen": price - 3_000}, 1, RULES)
    flow.on_payment(late_deposit, {**deposit(2), "amount_fen": 3_000}, 2, RULES)
    assert late_deposit.paid_fen == price and "deposit_paid" not in late_deposit.stage_times
    normal = reserved(presale=False)
    flow.on_payment(normal, {**deposit(1), "amount_fen": price - 500}, 1, RULES)  # a channel-funded discount
    assert (normal.paid_fen, normal.payments) == (price - 500, {"payment": price - 500})
    # A payment in full that names no amount (0) paid what the order asked; a deposit naming none, nothing known.
    unnamed = reserved(presale=False)
    flow.on_payment(unnamed, {}, 1, RULES)
    assert unnamed.paid_fen == price
    unnamed_deposit = reserved()
    flow.on_payment(unnamed_deposit, deposit(1), 1, RULES)
    assert unnamed_deposit.paid_fen == 0
    flow.on_payment(unnamed_deposit, balance(2), 2, RULES)
    assert unnamed_deposit.paid_fen == price
    stored_before = flow.OrderRecord.from_dict({k: v for k, v in normal.to_dict().items() if k != "payments"})
    assert stored_before.paid_fen == price  # a paid order stored before payments were kept: its price


@pytest.mark.parametrize(
    ("extra_fen", "in_full"),
    [(0, True), (1, True), (-1, False)],  # the order's amount, more (a fee), less (a deposit)
)
def test_a_presale_order_paid_in_full_at_once_is_paid_and_routed(extra_fen: int, in_full: bool) -> None:
    """全款预售: Tmall and Douyin send no step status for it, so its one payment reads balance=false. Taken as a
    deposit, the order waited for a balance that never comes and was cancelled with the buyer paid in full."""
    rec = reserved()
    fx = flow.on_payment(rec, {**deposit(1_000), "amount_fen": rec.amount_fen + extra_fen}, 1_000, RULES)
    if in_full:
        assert (rec.state, rec.paid, rec.paid_at_ms) == ("paid", True, 1_000)
        assert fx.route == ["1", "2"] and fx.score_health and fx.transitions == [("reserved", "paid", "")]
        assert "deposit_paid" not in rec.stage_times and rec.balance_deadline_ms == 0
        assert rec.next_deadline_ms(RULES) == 1_000 + RULES.sla_ms
    else:
        assert (rec.state, rec.paid, fx.route) == ("reserved", False, [])
        assert fx.transitions == [("reserved", "reserved", "deposit_paid")]


def test_a_presale_order_paid_in_full_before_its_reservation_completes_is_paid_when_it_does() -> None:
    rec = placed()
    flow.on_payment(rec, {**deposit(5), "amount_fen": rec.amount_fen}, 5, RULES)
    flow.on_hold_decided(rec, {**HELD, "line_no": 1}, 6, RULES)
    fx = flow.on_hold_decided(rec, {**HELD, "line_no": 2}, 7, RULES)
    assert rec.state == "paid" and fx.route == ["1", "2"] and "deposit_paid" not in rec.stage_times


def test_a_presale_payment_naming_no_amount_is_still_a_deposit() -> None:
    """An amount left out (0) cannot show the order was paid in full: the step it is stays the deposit."""
    rec = reserved()
    flow.on_payment(rec, deposit(1_000), 1_000, RULES)
    assert (rec.state, rec.paid, rec.deposit_paid) == ("reserved", False, True)


def test_in_process_a_presale_order_paid_in_full_at_once_is_routed_as_any_paid_order() -> None:
    r, view = pipeline()
    wh = first_warehouse()
    stock(r, view, "SKU-F", 5, wh)
    presale_stock(r, "SKU-F", 3)
    placed_event = ev.order_placed("douyin", "F1", [ev.line(1, "SKU-F", 2)], presale=True)
    order(r, "OrderPlaced", placed_event)
    in_full = {**payment("douyin", "F1", is_balance=False), "amount_fen": placed_event["amount_fen"]}
    out = order(r, "PaymentConfirmed", in_full)
    assert states(out) == ["paid", "routed"]
    assert [(d["warehouse_id"], d["action"]) for d in of_type(out, "WarehouseDispatched")] == [(wh, "DISPATCH")]
    assert not r.refusals


# ---- a routed presale line and its warehouse's units ---------------------------------------------------


def _levels(r: LocalRunner, view: WarehouseView, outputs: list[Any]) -> None:
    for out in outputs:
        if out.event_type == "StockLevel":
            view.apply_level(out.record)


def test_a_routed_presale_line_keeps_its_warehouse_units_from_the_next_order() -> None:
    """Changed on purpose: a presale line routed to a warehouse was not counted in that warehouse's allocated
    units (``presale units are not on a shelf yet``), though the pool keeps on-hand units back for it
    (available = on_hand - locked - presale_reserved). WH-SH and WH-GZ have 5 each, the presale cap is 5: a
    presale order for 5 pays its deposit and balance and is routed to WH-SH; a regular order for 5, paid after,
    saw WH-SH still free in the published level, the pool's allocation agreed, and it went to WH-SH too - WH-SH
    owed 10 with 5 on its shelf while WH-GZ's 5 sat unallocated. The presale line now counts against WH-SH
    like any allocated line: the regular order goes to WH-GZ."""
    r, view = pipeline()
    stock(r, view, "SKU-PA", 5, "WH-SH")  # nearest to the default address (Hangzhou)
    stock(r, view, "SKU-PA", 5, "WH-GZ")
    presale_stock(r, "SKU-PA", 5)
    order(r, "OrderPlaced", ev.order_placed("tmall", "pre1", [ev.line(1, "SKU-PA", 5)], presale=True))
    order(r, "PaymentConfirmed", payment("tmall", "pre1", is_balance=False))  # the deposit
    out = order(r, "PaymentConfirmed", payment("tmall", "pre1", is_balance=True))
    assert [(d["warehouse_id"], d["action"]) for d in of_type(out, "WarehouseDispatched")] == [("WH-SH", "DISPATCH")]
    assert r.read(POOL, sku_key("SKU-PA"), "SKU-PA")["allocated"] == {"WH-SH": 5}
    _levels(r, view, r.advance(1_000))  # the pool's level reaches routing: WH-SH has nothing free
    assert (view.free[("WH-SH", "SKU-PA")], view.free[("WH-GZ", "SKU-PA")]) == (0, 5)
    assert states(order(r, "OrderPlaced", ev.order_placed("tmall", "reg1", [ev.line(1, "SKU-PA", 5)]))) == [
        "placed", "reserved"]  # fmt: skip
    out = order(r, "PaymentConfirmed", payment("tmall", "reg1", is_balance=False))
    assert [(d["warehouse_id"], d["action"]) for d in of_type(out, "WarehouseDispatched")] == [("WH-GZ", "DISPATCH")]
    assert r.read(POOL, sku_key("SKU-PA"), "SKU-PA")["allocated"] == {"WH-SH": 5, "WH-GZ": 5}


def test_a_presale_line_routed_on_a_stale_view_to_a_warehouse_now_short_is_routed_again() -> None:
    """Routing's view of free units can be a refresh interval old: the pool's allocation is the check, for a
    presale line as for a regular one. A regular order took WH-SH's 5 after the view last heard; the presale
    balance routes to WH-SH on the old figure, the pool refuses it (``warehouse_short``), and the line is routed
    again, to WH-GZ, instead of being sent to units another order has."""
    r, view = pipeline()
    stock(r, view, "SKU-PB", 5, "WH-SH")
    stock(r, view, "SKU-PB", 5, "WH-GZ")
    presale_stock(r, "SKU-PB", 5)
    order(r, "OrderPlaced", ev.order_placed("tmall", "pre2", [ev.line(1, "SKU-PB", 5)], presale=True))
    order(r, "PaymentConfirmed", payment("tmall", "pre2", is_balance=False))
    order(r, "OrderPlaced", ev.order_placed("tmall", "reg2", [ev.line(1, "SKU-PB", 5)]))
    out = order(r, "PaymentConfirmed", payment("tmall", "reg2", is_balance=False))
    assert [(d["warehouse_id"], d["action"]) for d in of_type(out, "WarehouseDispatched")] == [("WH-SH", "DISPATCH")]
    view.planned.clear()  # routing forgets its own plan: only the published level (not yet read) is left
    assert view.free[("WH-SH", "SKU-PB")] == 5  # stale
    out = order(r, "PaymentConfirmed", payment("tmall", "pre2", is_balance=True))
    refused = [d for d in of_type(out, "HoldDecided") if d["outcome"] == "REFUSED"]
    assert [(d["action"], d["reason"]) for d in refused] == [("ALLOCATE", Reason.WAREHOUSE_SHORT)]
    assert states(out) == ["paid", "routed"]
    assert [(d["warehouse_id"], d["action"]) for d in of_type(out, "WarehouseDispatched")] == [("WH-GZ", "DISPATCH")]
    assert r.read(POOL, sku_key("SKU-PB"), "SKU-PB")["allocated"] == {"WH-SH": 5, "WH-GZ": 5}


def test_a_presale_order_paid_before_its_stock_arrives_waits_for_it_and_is_routed_when_it_does() -> None:
    """A presale cap may run ahead of the shelf (stock still coming): the balance can come before the units.
    Nothing is allocated to a warehouse without them - the order is unroutable and retried, as a regular one
    whose units are not there, and is routed once the receipt is in."""
    r, view = pipeline(route_retry_s=30)
    presale_stock(r, "SKU-PC", 4)
    order(r, "OrderPlaced", ev.order_placed("tmall", "pre3", [ev.line(1, "SKU-PC", 4)], presale=True))
    order(r, "PaymentConfirmed", payment("tmall", "pre3", is_balance=False))
    out = order(r, "PaymentConfirmed", payment("tmall", "pre3", is_balance=True))
    assert states(out) == ["paid"] and of_type(out, "WarehouseDispatched") == []
    assert [(a["kind"], a["severity"]) for a in of_type(out, "Alert")] == [("unroutable", "WARNING")]
    assert r.read(POOL, sku_key("SKU-PC"), "SKU-PC")["allocated"] == {}
    stock(r, view, "SKU-PC", 4, "WH-GZ")  # the presale stock is received
    out = r.advance(30_000)
    assert states(out) == ["routed"]
    assert [(d["warehouse_id"], d["action"]) for d in of_type(out, "WarehouseDispatched")] == [("WH-GZ", "DISPATCH")]
    assert r.read(POOL, sku_key("SKU-PC"), "SKU-PC")["allocated"] == {"WH-GZ": 4}
