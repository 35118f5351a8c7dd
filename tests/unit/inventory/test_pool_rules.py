"""Pure pool rules, no broker: availability, holds, thresholds, adjustments, VIP overrides."""

from __future__ import annotations

import pytest

from agents.inventory import rules as P

RULES = P.PoolRules(
    main_channel="tmall",
    channels=("tmall", "jd"),
    safety_threshold=0,
    hysteresis=0,
    hold_ttl_ms=7_200_000,
    tombstone_ttl_ms=86_400_000,
    max_line_qty=1000,
)


def stocked(qty: int, wh: str = "WH-SH") -> P.SkuPool:
    pool = P.SkuPool(sku="S")
    P.adjust(pool, "a1", "RECEIPT", wh, qty, 0)
    return pool


def test_available_is_on_hand_minus_locked_minus_presale_and_never_negative() -> None:
    pool = stocked(10)
    P.adjust(pool, "a2", "PRESALE_CAP", "", 4, 0)
    assert P.reserve(pool, RULES, "o1", 1, 3, "jd", False, 1).outcome == "HELD"
    assert P.reserve(pool, RULES, "o2", 1, 2, "jd", True, 1).outcome == "HELD"
    assert (pool.on_hand_total(), pool.locked(), pool.presale_reserved(), pool.available()) == (10, 3, 2, 5)
    P.adjust(pool, "a3", "COUNT", "WH-SH", 1, 2)  # shrinkage found: on-hand below what is locked
    assert pool.available() == 0 and pool.breaches()


def test_a_negative_warehouse_does_not_cancel_another() -> None:
    pool = stocked(5, "WH-SH")
    P.adjust(pool, "a2", "CORRECTION", "WH-GZ", -3, 0)
    assert pool.on_hand_total() == 5 and "negative on-hand" in " ".join(pool.breaches())


def test_same_line_twice_takes_stock_once_and_replay_after_release_takes_nothing() -> None:
    pool = stocked(5)
    assert P.reserve(pool, RULES, "o1", 1, 4, "jd", False, 1).outcome == "HELD"
    assert P.reserve(pool, RULES, "o1", 1, 4, "jd", False, 2).outcome == "HELD"
    assert pool.locked() == 4
    assert P.apply_line_command(pool, RULES, "RELEASE", "o1", 1, 4, 3).outcome == "RELEASED"
    assert P.reserve(pool, RULES, "o1", 1, 4, "jd", False, 4).outcome == "RELEASED"
    assert pool.locked() == 0 and pool.available() == 5


def test_release_before_reserve_leaves_a_tombstone() -> None:
    pool = stocked(5)
    P.apply_line_command(pool, RULES, "RELEASE", "o1", 1, 2, 1)
    assert P.reserve(pool, RULES, "o1", 1, 2, "jd", False, 2).outcome == "RELEASED"
    assert pool.locked() == 0


def test_refusal_reasons() -> None:
    pool = stocked(2)
    assert P.reserve(pool, RULES, "o1", 1, 3, "jd", False, 1).reason == "insufficient_stock"
    assert P.reserve(P.SkuPool(sku="X"), RULES, "o2", 1, 1, "jd", False, 1).reason == "unknown_sku"
    assert P.reserve(pool, RULES, "o3", 1, 0, "jd", False, 1).reason == "invalid_qty"
    assert P.reserve(pool, RULES, "o4", 1, 1, "jd", True, 1).reason == "insufficient_presale_stock"
    pool.paused = True
    assert P.reserve(pool, RULES, "o5", 1, 1, "jd", False, 1).reason == "channel_paused"
    assert P.reserve(pool, RULES, "o6", 1, 1, "tmall", False, 1).outcome == "HELD"


@pytest.mark.parametrize(
    ("paused", "available", "expected"),
    [(False, 10, False), (False, 9, True), (True, 14, True), (True, 15, True), (True, 16, False)],
)
def test_threshold_hysteresis(paused: bool, available: int, expected: bool) -> None:
    assert P.next_paused(paused, available, threshold=10, hysteresis=5) is expected


def test_commit_ship_expire() -> None:
    pool = stocked(10)
    P.reserve(pool, RULES, "o1", 1, 2, "jd", False, 0)
    P.reserve(pool, RULES, "o2", 1, 3, "jd", False, 0)
    assert P.apply_line_command(pool, RULES, "COMMIT", "o1", 1, 2, 1).outcome == "COMMITTED"
    answers = P.expire_due(pool, RULES, RULES.hold_ttl_ms + 1)
    assert [(a.order_id, a.outcome) for a in answers] == [("o2", "EXPIRED")]  # paid holds do not expire
    assert P.apply_line_command(pool, RULES, "SHIP", "o1", 1, 2, 2, warehouse_id="WH-SH").outcome == "SHIPPED"
    assert pool.on_hand == {"WH-SH": 8} and pool.locked() == 0
    assert P.apply_line_command(pool, RULES, "SHIP", "o1", 1, 2, 3).outcome == "SHIPPED"
    assert pool.on_hand == {"WH-SH": 8}  # shipping twice deducts once


def test_adjustments_idempotent_and_validated() -> None:
    pool = stocked(5)
    assert P.adjust(pool, "a1", "RECEIPT", "WH-SH", 5, 1) is False
    assert pool.on_hand_total() == 5
    whs = frozenset({"WH-SH"})
    assert P.check_adjustment("RECEIPT", 3, "WH-X", whs) == "unknown_warehouse"
    assert P.check_adjustment("RECEIPT", -3, "WH-SH", whs) == "invalid_qty"
    assert P.check_adjustment("COUNT", 0, "WH-SH", whs) is None
    assert P.check_adjustment("CORRECTION", 0, "WH-SH", whs) == "invalid_qty"


def test_vip_override_rules() -> None:
    pool = stocked(3)
    P.reserve(pool, RULES, "o1", 1, 3, "jd", False, 0)
    assert P.request_override(pool, "v1", 2, "vip:1", "alice", "", 1).detail == "reason_required"
    assert P.request_override(pool, "v2", 2, "vip:1", "alice", "launch", 1).outcome == "REQUESTED"
    assert P.approve_override(pool, RULES, "v2", "alice", 2).detail == "approver_must_differ_from_requester"
    assert pool.locked() == 3
    result = P.approve_override(pool, RULES, "v2", "bob", 3)
    assert result.outcome == "APPLIED" and [a.order_id for a in result.released] == ["o1"]
    assert P.approve_override(pool, RULES, "v2", "bob", 4).outcome == "DUPLICATE"
    assert P.reserve(pool, RULES, "vip:1", 1, 2, "own", False, 5).outcome == "HELD"
    assert pool.locked() == 2 and pool.available() == 1
