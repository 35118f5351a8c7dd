"""The independent checker's judgements on what it read from the topics, no broker."""

from __future__ import annotations

from typing import Any

from agents.audit.checker import DEPOSIT_PAID, Report, _check_order_states

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
