"""Pure order-lifecycle rules, no broker: all-or-nothing reservation, payment, transitions, validation."""

from __future__ import annotations

import pytest

from agents.orders import rules as flow
from agents.orders.run_lifecycle import order_rules
from loadtest import events as ev
from streams.contract.set_aside import SET_ASIDE_LINE
from streams.settings import Settings

ORDER_RULES = order_rules(Settings(channels=("tmall", "jd"), max_line_qty=1000))


def order_of(*lines: tuple[str, int], **kw: object) -> dict:
    return dict(ev.order_placed("jd", "1", [ev.line(i + 1, s, q) for i, (s, q) in enumerate(lines)]), **kw)


def test_order_reserved_only_when_every_expected_line_answered() -> None:
    rec = flow.OrderRecord(order_id="jd:1")
    fx = flow.on_placed(rec, order_of(("A", 1), ("B", 2)), 0, ORDER_RULES)
    assert [c["action"] for c in fx.hold_commands] == ["RESERVE", "RESERVE"]
    answer = {"line_no": 1, "action": "RESERVE", "outcome": "HELD", "reason": ""}
    assert flow.on_hold_decided(rec, answer, 1, ORDER_RULES).reservation is None
    assert flow.on_hold_decided(rec, answer, 1, ORDER_RULES).reservation is None  # a duplicate is not line 2
    fx = flow.on_hold_decided(rec, {**answer, "line_no": 2}, 2, ORDER_RULES)
    assert fx.reservation is not None and fx.reservation.outcome == "RESERVED" and rec.state == "reserved"


def test_one_refused_line_releases_the_others() -> None:
    rec = flow.OrderRecord(order_id="jd:1")
    flow.on_placed(rec, order_of(("A", 1), ("B", 2)), 0, ORDER_RULES)
    flow.on_hold_decided(rec, {"line_no": 1, "action": "RESERVE", "outcome": "HELD", "reason": ""}, 1, ORDER_RULES)
    fx = flow.on_hold_decided(
        rec, {"line_no": 2, "action": "RESERVE", "outcome": "REFUSED", "reason": "insufficient_stock"}, 2, ORDER_RULES
    )
    assert rec.state == "rejected" and rec.reason == "insufficient_stock"
    assert [(c["action"], c["line_no"]) for c in fx.hold_commands] == [("RELEASE", 1)]


def test_paid_before_reserved_commits_when_reserved_and_timeout_releases() -> None:
    rec = flow.OrderRecord(order_id="jd:1")
    flow.on_placed(rec, order_of(("A", 1)), 0, ORDER_RULES)
    assert flow.on_payment(rec, {}, 1, ORDER_RULES).hold_commands == []
    fx = flow.on_hold_decided(rec, {"line_no": 1, "action": "RESERVE", "outcome": "HELD", "reason": ""}, 2, ORDER_RULES)
    assert rec.state == "paid" and [c["action"] for c in fx.hold_commands] == ["COMMIT"]
    unpaid = flow.OrderRecord(order_id="jd:2")
    flow.on_placed(unpaid, order_of(("A", 1)), 0, ORDER_RULES)
    flow.on_hold_decided(unpaid, {"line_no": 1, "action": "RESERVE", "outcome": "HELD", "reason": ""}, 0, ORDER_RULES)
    assert flow.on_tick(unpaid, ORDER_RULES.payment_timeout_ms - 1, ORDER_RULES).transitions == []
    fx = flow.on_tick(unpaid, ORDER_RULES.payment_timeout_ms, ORDER_RULES)
    assert unpaid.state == "payment_timeout" and [c["action"] for c in fx.hold_commands] == ["RELEASE"]


def test_illegal_transitions_are_refused() -> None:
    """Changed on purpose: a delivery of an order not paid was the example, refused, and its units stayed on the
    shelf; a delivery now means its shipment notice was lost, and the units come off (see test_run_lifecycle)."""
    rec = flow.OrderRecord(order_id="jd:1", state="delivered", lines={"1": {"sku": "A", "qty": 1}})
    assert flow.on_cancel(rec, {"reason": ""}, 1, ORDER_RULES).refusal == (
        "illegal_transition",
        "cannot cancel an order that is delivered",
    )
    assert not flow.can_transition("delivered", "cancelled")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"channel": "ebay"}, "unknown_channel"),
        ({"lines": []}, "missing_field"),
        ({"amount_fen": -1}, "invalid_amount"),
        ({"lines": [order_of(("A#2", 1))["lines"][0]]}, "invalid_sku"),  # A's bucket 2, were A hot
    ],
)
def test_order_validation(change: dict, reason: str) -> None:
    refusal = flow.validate_placed({**order_of(("A", 1)), **change}, ORDER_RULES)
    assert refusal is not None and refusal.reason == reason and refusal.detail.startswith(f"{reason}: ")
    assert flow.validate_placed(order_of(("A", 1)), ORDER_RULES) is None


def test_a_line_taken_back_before_the_other_lines_answered_rejects_the_order() -> None:
    """Changed on purpose: a VIP override could release a held line of an order still waiting for its
    other lines; the order then went on to "reserved" with that line's stale HELD, was paid, and had
    nothing behind it. It is now rejected when its last line answers, and only the lines still held
    are released."""
    rec = flow.OrderRecord(order_id="jd:1")
    flow.on_placed(rec, order_of(("A", 1), ("B", 2)), 0, ORDER_RULES)
    flow.on_hold_decided(rec, {"line_no": 1, "action": "RESERVE", "outcome": "HELD", "reason": ""}, 1, ORDER_RULES)
    taken = {"line_no": 1, "action": "RELEASE", "outcome": "RELEASED", "reason": "vip_override:ov1"}
    assert flow.on_hold_decided(rec, taken, 2, ORDER_RULES).transitions == []
    fx = flow.on_hold_decided(rec, {"line_no": 2, "action": "RESERVE", "outcome": "HELD", "reason": ""}, 3,
                              ORDER_RULES)  # fmt: skip
    assert rec.state == "rejected" and rec.reason == "vip_override:ov1"
    assert fx.reservation is not None and fx.reservation.outcome == "REJECTED"
    assert [(c["action"], c["line_no"]) for c in fx.hold_commands] == [("RELEASE", 2)]


def test_a_reserve_sent_again_goes_where_the_first_went_even_if_its_sku_turned_hot() -> None:
    """Changed on purpose: an order placed while its SKU was cold sent its RESERVE to the SKU's home; a
    duplicate OrderPlaced after the SKU was split into buckets sent it again to a bucket, which held the
    line a second time (the orphaned hold later expired and cancelled the paid order)."""
    rec = flow.OrderRecord(order_id="jd:1")
    placed = order_of(("S", 1))
    first = flow.on_placed(rec, placed, 0, ORDER_RULES).hold_commands
    flow.route_reserves(rec, first, lambda sku: 1)  # cold
    again = flow.on_placed(rec, placed, 1, ORDER_RULES).hold_commands
    flow.route_reserves(rec, again, lambda sku: 4)  # made hot meanwhile
    assert [c["bucket"] for c in first] == [c["bucket"] for c in again] == [-1]
    hot = flow.OrderRecord(order_id="jd:2")
    first = flow.on_placed(hot, order_of(("S", 1)), 0, ORDER_RULES).hold_commands
    flow.route_reserves(hot, first, lambda sku: 4)
    again = flow.on_placed(hot, order_of(("S", 1)), 1, ORDER_RULES).hold_commands
    flow.route_reserves(hot, again, lambda sku: 4)
    assert [c["bucket"] for c in again] == [c["bucket"] for c in first] != [-1]


def test_a_placed_order_missing_an_answer_asks_again_and_says_so() -> None:
    """Changed on purpose: a placed order had no timer, so a line whose answer was lost (its command
    dead-lettered, say) left the order placed for good."""
    rec = flow.OrderRecord(order_id="jd:1")
    flow.on_placed(rec, order_of(("A", 1), ("B", 2)), 5, ORDER_RULES)
    flow.on_hold_decided(rec, {"line_no": 1, "action": "RESERVE", "outcome": "HELD", "reason": ""}, 6, ORDER_RULES)
    due = 5 + ORDER_RULES.reserve_retry_ms
    assert rec.next_deadline_ms(ORDER_RULES) == due
    assert flow.on_tick(rec, due - 1, ORDER_RULES).hold_commands == []
    fx = flow.on_tick(rec, due, ORDER_RULES)
    assert [(c["action"], c["line_no"]) for c in fx.hold_commands] == [("RESERVE", 2)]
    assert [a.kind for a in fx.alerts] == ["reservation_unanswered"]
    assert rec.next_deadline_ms(ORDER_RULES) == due + ORDER_RULES.reserve_retry_ms
    flow.on_hold_decided(rec, {"line_no": 2, "action": "RESERVE", "outcome": "HELD", "reason": ""}, due + 1,
                         ORDER_RULES)  # fmt: skip
    assert rec.state == "reserved" and rec.next_deadline_ms(ORDER_RULES) == due + 1 + ORDER_RULES.payment_timeout_ms


def test_an_order_paid_and_then_refused_says_the_customer_is_owed_a_refund() -> None:
    """Changed on purpose: a payment heard while the order waited for its stock answers, then a refusal,
    left a paid order rejected with nothing saying the money must go back."""
    rec = flow.OrderRecord(order_id="jd:1")
    flow.on_placed(rec, order_of(("A", 1)), 5, ORDER_RULES)
    flow.on_payment(rec, {"event_time_ms": 6}, 6, ORDER_RULES)
    fx = flow.on_hold_decided(rec, {"line_no": 1, "action": "RESERVE", "outcome": "REFUSED",
                                    "reason": "insufficient_stock"}, 7, ORDER_RULES)  # fmt: skip
    assert rec.state == "rejected"
    assert [(a.kind, a.severity) for a in fx.alerts] == [("paid_order_not_fulfilled", "RED")]
    unpaid = flow.OrderRecord(order_id="jd:2")
    flow.on_placed(unpaid, order_of(("A", 1)), 5, ORDER_RULES)
    fx = flow.on_hold_decided(unpaid, {"line_no": 1, "action": "RESERVE", "outcome": "REFUSED",
                                       "reason": "insufficient_stock"}, 7, ORDER_RULES)  # fmt: skip
    assert fx.alerts == []


def test_a_line_held_by_a_reserve_asked_again_after_its_refusal_is_given_back() -> None:
    """Changed on purpose: after a RESERVE was asked again, a first answer REFUSED then a second HELD left
    the second hold in place (the answer was taken for a duplicate) until it expired two hours later."""
    rec = flow.OrderRecord(order_id="jd:1")
    flow.on_placed(rec, order_of(("A", 1)), 5, ORDER_RULES)
    flow.on_tick(rec, 5 + ORDER_RULES.reserve_retry_ms, ORDER_RULES)  # asked again
    refused = {"line_no": 1, "action": "RESERVE", "outcome": "REFUSED", "reason": "insufficient_stock"}
    flow.on_hold_decided(rec, refused, 6 + ORDER_RULES.reserve_retry_ms, ORDER_RULES)
    assert rec.state == "rejected"
    held = {"line_no": 1, "action": "RESERVE", "outcome": "HELD", "reason": ""}
    fx = flow.on_hold_decided(rec, held, 7 + ORDER_RULES.reserve_retry_ms, ORDER_RULES)
    assert [(c["action"], c["line_no"], c["reason"]) for c in fx.hold_commands] == [("RELEASE", 1, "order_rejected")]


def test_a_payment_for_an_order_let_go_is_refused_and_says_the_customer_is_owed_it_back() -> None:
    """Changed on purpose: a payment for an order that had timed out (its units released, maybe sold again) was
    only dead-lettered; the marketplace had taken the money, and nobody was told it must go back."""
    rec = flow.OrderRecord(order_id="jd:1")
    flow.on_placed(rec, order_of(("A", 1)), 0, ORDER_RULES)
    flow.on_hold_decided(rec, {"line_no": 1, "action": "RESERVE", "outcome": "HELD", "reason": ""}, 0, ORDER_RULES)
    flow.on_tick(rec, ORDER_RULES.payment_timeout_ms, ORDER_RULES)
    assert rec.state == "payment_timeout"
    fx = flow.on_payment(rec, {"event_time_ms": 9, "amount_fen": rec.amount_fen}, ORDER_RULES.payment_timeout_ms + 1,
                         ORDER_RULES)  # fmt: skip
    assert fx.refusal is not None and fx.refusal.reason == "order_not_payable"
    assert [(a.kind, a.severity) for a in fx.alerts] == [("paid_order_not_fulfilled", "RED")]
    assert (rec.state, rec.paid, fx.hold_commands) == ("payment_timeout", False, [])
    again = flow.on_payment(rec, {"event_time_ms": 9}, ORDER_RULES.payment_timeout_ms + 2, ORDER_RULES)
    assert again.refusal is not None and again.alerts == []  # the same payment again


def test_the_fifteen_minutes_to_a_warehouse_run_from_when_the_customer_paid() -> None:
    """Changed on purpose: they ran from when stockflow heard of the payment, so a callback ten minutes late
    delayed the red alert by ten minutes (DOMAIN: a paid order not pushed within 15 minutes is red). A channel
    clock ahead of ours does not lengthen them."""
    minute, t0 = 60_000, 1_800_000_000_000
    for paid_by_channel, heard, red_at in ((t0, t0 + 10 * minute, t0 + 15 * minute),
                                           (t0 + 12 * minute, t0 + 10 * minute, t0 + 25 * minute)):  # fmt: skip
        rec = flow.OrderRecord(order_id="jd:1")
        flow.on_placed(rec, order_of(("A", 1)), 0, ORDER_RULES)
        flow.on_hold_decided(rec, {"line_no": 1, "action": "RESERVE", "outcome": "HELD", "reason": ""}, 1, ORDER_RULES)
        flow.on_payment(rec, dict(ev.payment_confirmed("jd", "1"), event_time_ms=paid_by_channel), heard, ORDER_RULES)
        assert rec.state == "paid" and rec.next_deadline_ms(ORDER_RULES) == red_at
        assert flow.sla_alerts(rec, red_at - 1, ORDER_RULES) == []
        assert [a.severity for a in flow.sla_alerts(rec, red_at, ORDER_RULES)] == ["RED"]


def test_a_repeated_shipped_after_cancel_notice_of_one_warehouse_keeps_its_alert_id() -> None:
    """The id names the warehouse (each part of a split order shipped after its cancel is reported), and a repeat of
    the same warehouse's notice - replayed against the state before it - raises the same id: one alert."""
    ids = []
    for _ in range(2):
        rec = flow.OrderRecord(order_id="jd:r1", channel="jd", state="cancelled", lines={"1": {"sku": "S", "qty": 1}},
                               allocated={"1": "WH-A"})  # fmt: skip
        ids += [a.event_id for a in flow.on_shipment(rec, {"warehouse_id": "WH-A"}, "ShipmentDispatched", 0,
                                                     ORDER_RULES).alerts]  # fmt: skip
        assert flow.on_shipment(rec, {"warehouse_id": "WH-A"}, "ShipmentDispatched", 1, ORDER_RULES).alerts == []
    assert ids == ["shipped_after_cancel:jd:r1:WH-A"] * 2


# ---- a VIP override's set-aside, offered to the order -----------------------------------------------


def offer(sku: str = "A", qty: int = 2, override_id: str = "OV-1") -> dict:
    return {"line_no": SET_ASIDE_LINE, "sku": sku, "qty": qty, "action": "RESERVE", "outcome": "OFFERED",
            "reason": f"vip_override:{override_id}"}  # fmt: skip


def held(line_no: int) -> dict:
    return {"line_no": line_no, "action": "RESERVE", "outcome": "HELD", "reason": ""}


def set_aside_commands(fx: flow.Effects) -> list[tuple[str, str, int, str, int]]:
    return [(c["action"], c["sku"], c["qty"], c["reason"], c["bucket"]) for c in fx.hold_commands
            if c["line_no"] == SET_ASIDE_LINE]  # fmt: skip


def test_a_set_aside_offered_before_its_order_is_placed_is_claimed_and_its_skus_lines_stay_home() -> None:
    rec = flow.OrderRecord(order_id="jd:1")
    fx = flow.on_hold_decided(rec, offer("A", 2), 10, ORDER_RULES)
    assert set_aside_commands(fx) == [("RESERVE", "A", 2, "vip_override:OV-1", -1)]
    kept = 10 + 2 * ORDER_RULES.hold_ttl_ms  # the pool stamps the set-aside's expiry later, when it takes the claim
    assert (rec.state, fx.transitions, rec.set_asides) == ("", [], {"A": kept})
    assert rec.next_deadline_ms(ORDER_RULES) == kept  # kept while the set-aside may be
    placed = flow.on_placed(rec, order_of(("A", 1), ("B", 1)), 20, ORDER_RULES).hold_commands
    flow.route_reserves(rec, placed, lambda sku: 4)  # both hot, and the order not marked VIP
    assert [c["sku"] for c in placed] == ["A", "B"]
    assert placed[0]["bucket"] == -1 and placed[1]["bucket"] >= 0  # A's set-aside is its home's


@pytest.mark.parametrize(
    ("record", "why"),
    [
        *((flow.OrderRecord(order_id="jd:1", state=s), "vip_order_ended")
          for s in ("rejected", "cancelled", "payment_timeout", "shipped", "delivered")),
        *((flow.OrderRecord(order_id="jd:1", state=s), "vip_order_already_placed")
          for s in ("placed", "reserved", "paid", "routed")),
        (flow.OrderRecord(order_id="jd:1", purged_at_ms=5), "vip_order_ended"),  # a paid order's slim record
        (flow.OrderRecord(order_id="jd:1", parked=[{"event_type": "OrderCancelled", "event_id": "c"}]),
         "vip_order_ended"),  # called off before it came
    ],
)
def test_a_set_aside_offered_to_an_order_whose_lines_can_no_longer_take_it_is_refused_with_why(
    record: flow.OrderRecord, why: str
) -> None:
    """The order's lines take a set-aside with their RESERVE, sent once when the order is placed: an order placed
    already (or over) refuses the offer, naming the override, and the pool refuses the override with ``why``."""
    before = record.to_dict()
    fx = flow.on_hold_decided(record, offer("A", 2), 10, ORDER_RULES)
    assert set_aside_commands(fx) == [("RELEASE", "A", 2, f"{why}:vip_override:OV-1", -1)]
    assert (fx.transitions, fx.alerts, fx.reservation) == ([], [], None)
    assert record.to_dict() == before  # not resurrected, not moved, nothing claimed


@pytest.mark.parametrize("outcome", ["HELD", "REFUSED"])
def test_what_the_lines_left_of_a_set_aside_is_let_go_once_they_have_all_asked(outcome: str) -> None:
    """Changed on purpose: what no line took stayed set aside until its expiry (the hold TTL, 2 hours by default),
    for a reserved order that no longer needed it or a rejected one that never would."""
    rec = flow.OrderRecord(order_id="jd:1")
    flow.on_hold_decided(rec, offer("A", 3), 0, ORDER_RULES)
    flow.on_hold_decided(rec, offer("B", 1, "OV-2"), 0, ORDER_RULES)
    flow.on_placed(rec, order_of(("A", 1), ("C", 1)), 1, ORDER_RULES)
    assert rec.set_asides  # placed: the RESERVEs just sent take what they can
    flow.on_hold_decided(rec, {**held(1), "reason": "vip_override:OV-1"}, 2, ORDER_RULES)
    fx = flow.on_hold_decided(rec, {**held(2), "outcome": outcome}, 3, ORDER_RULES)
    state = "reserved" if outcome == "HELD" else "rejected"
    assert rec.state == state and rec.set_asides == {}
    assert set_aside_commands(fx) == [("RELEASE", "A", 0, f"order_{state}", -1), ("RELEASE", "B", 0, f"order_{state}",
                                                                                -1)]  # fmt: skip
    assert set_aside_commands(flow.on_cancel(rec, {"reason": ""}, 4, ORDER_RULES)) == []  # once


def test_a_set_aside_let_go_never_moves_the_order() -> None:
    """The set-aside's line is no line of the order: the pool letting it go (as asked, or at its expiry) is not the
    order's stock taken back, which cancels a reserved order."""
    rec = flow.OrderRecord(order_id="jd:1")
    flow.on_placed(rec, order_of(("A", 1)), 0, ORDER_RULES)
    flow.on_hold_decided(rec, held(1), 1, ORDER_RULES)
    for outcome, reason in (("RELEASED", "vip_order_already_placed"), ("RELEASED", "order_reserved"),
                            ("EXPIRED", "hold_expired")):  # fmt: skip
        answer = {"line_no": SET_ASIDE_LINE, "sku": "A", "qty": 1, "action": "RELEASE", "outcome": outcome,
                  "reason": reason}  # fmt: skip
        fx = flow.on_hold_decided(rec, answer, 2, ORDER_RULES)
        assert (fx.transitions, fx.hold_commands, rec.state) == ([], [], "reserved")


def test_a_claim_whose_order_never_came_is_forgotten_well_after_its_set_aside_expired() -> None:
    """Changed on purpose: forgotten a hold TTL after the offer, a claim the pool took late (it stamps the
    set-aside's expiry then) was gone while its units were still set aside, and what the order's lines left of them
    stayed locked; remembered twice as long, a RELEASE of a set-aside expired already lets go of nothing."""
    rec = flow.OrderRecord(order_id="jd:1")
    flow.on_hold_decided(rec, offer("A", 1), 0, ORDER_RULES)
    flow.on_tick(rec, ORDER_RULES.hold_ttl_ms, ORDER_RULES)
    assert rec.set_asides == {"A": 2 * ORDER_RULES.hold_ttl_ms}
    flow.on_tick(rec, 2 * ORDER_RULES.hold_ttl_ms, ORDER_RULES)
    assert rec.set_asides == {} and rec.next_deadline_ms(ORDER_RULES) == 0


def test_a_claimed_set_aside_is_let_go_when_a_cancel_is_parked_for_its_order() -> None:
    """The order is cancelled as soon as it is placed: no line of it will take the set-aside, kept until its expiry
    it was stock no one could sell. Any other event parked keeps the claim."""
    rec = flow.OrderRecord(order_id="jd:1")
    flow.on_hold_decided(rec, offer("A", 2), 0, ORDER_RULES)
    flow.on_hold_decided(rec, offer("B", 1, "OV-2"), 0, ORDER_RULES)
    paid = flow.park(rec, "PaymentConfirmed", ev.payment_confirmed("jd", "1"), {}, 1)
    assert set_aside_commands(paid) == [] and set(rec.set_asides) == {"A", "B"}
    fx = flow.park(rec, "OrderCancelled", ev.order_cancelled("jd", "1"), {}, 2)
    assert set_aside_commands(fx) == [("RELEASE", "A", 0, "order_cancelled", -1),
                                      ("RELEASE", "B", 0, "order_cancelled", -1)]  # fmt: skip
    assert rec.set_asides == {} and rec.next_deadline_ms(ORDER_RULES) > 0  # the parked events stay
    assert set_aside_commands(flow.park(rec, "OrderCancelled", ev.order_cancelled("jd", "1"), {}, 3)) == []  # once


def test_a_claimed_set_aside_is_let_go_when_its_order_is_refused() -> None:
    """An order refused (invalid) sends no RESERVE: what it claimed would stay set aside until its expiry."""
    rec = flow.OrderRecord(order_id="jd:1")
    flow.on_hold_decided(rec, offer("A", 2), 0, ORDER_RULES)
    fx = flow.on_placed(rec, order_of(("A", 1), channel_order_id=""), 1, ORDER_RULES)
    assert fx.refusal is not None and rec.state == ""
    assert set_aside_commands(fx) == [("RELEASE", "A", 0, "order_refused", -1)] and rec.set_asides == {}
