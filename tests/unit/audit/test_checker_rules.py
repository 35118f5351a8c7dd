"""The independent checker's judgements on what it read from the topics, no broker."""

from __future__ import annotations

from agents.audit.checker import Report, _check_order_states


def test_a_split_order_partly_shipped_still_holds_what_it_should() -> None:
    """Changed on purpose: a split order stays paid or routed until its last warehouse ships, and its lines already
    shipped were taken for lines with no hold: the check failed a correct run."""
    last = {"jd:1#1": {"outcome": "SHIPPED"}, "jd:1#2": {"outcome": "COMMITTED"},
            "jd:2#1": {"outcome": "SHIPPED"}, "jd:2#2": {"outcome": "RELEASED"}}  # fmt: skip
    report = Report()
    _check_order_states(last, {"jd:1": "routed", "jd:2": "routed"}, {}, 60_000, 0, report)
    assert report.paid_without_hold == ["jd:2"]
    paid = Report()
    _check_order_states({"jd:3#1": {"outcome": "SHIPPED"}, "jd:3#2": {"outcome": "EXPIRED"}}, {"jd:3": "paid"}, {},
                        60_000, 0, paid)  # fmt: skip
    assert paid.paid_without_hold == ["jd:3"]
