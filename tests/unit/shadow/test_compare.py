"""Comparing a shadow's decisions with the live ones, pure: which differ, the examples, the business effect."""

from __future__ import annotations

from typing import Any

import pytest

from agents.routing import geo
from agents.routing import scoring as routing
from agents.routing.scoring import Line
from agents.shadow.compare import (
    compare_refunds,
    compare_routing,
    first_route_choices,
    refund_choices,
)
from streams.contract.records import RefundStateChanged, RoutingDecision
from tests.unit.routing.test_scoring import EXAMPLE_FREE, EXAMPLE_ON_TIME, EXAMPLE_SCORES, EXAMPLE_SITES, WEIGHTS

HANGZHOU = geo.locate("浙江省", "杭州市")
GUANGZHOU = geo.locate("广东", "广州")
# The candidate: distance dominates. In the hand-computed Hangzhou example (tests/unit/routing/test_scoring.py)
#   WH-SH  0.9 * 0.8427 + 0.1 * 0.70 = 0.8284   <- the nearest wins now
#   WH-NJ  0.9 * 0.7740 + 0.1 * 0.96 = 0.7926
#   WH-GZ  0.9 * 0      + 0.1 * 0.99 = 0.0990
# while the live weights pick WH-NJ (0.810 against WH-SH 0.477): that order's decision flips.
DISTANCE_FIRST = {"distance": 0.9, "sufficiency": 0.0, "on_time": 0.1, "cost": 0.0}


def decision(order_id: str, customer: Any, weights: dict[str, float], lines: list[Line] | None = None,
             free: dict[tuple[str, str], int] | None = None, attempt: int = 1,
             at_ms: int = 1_000) -> RoutingDecision:  # fmt: skip
    """The record ``agents.orders.rules.on_route_decided`` writes for what ``scoring.route`` decides."""
    lines = lines or [Line(1, "SKU-R", 2)]
    made = routing.route(EXAMPLE_SITES, customer, lines, free or EXAMPLE_FREE, EXAMPLE_ON_TIME, weights)
    assert made is not None
    return RoutingDecision(
        event_id=f"{order_id}:route:{attempt}", event_time_ms=at_ms, order_id=order_id, channel="jd",
        split=made.split,
        assignments=[{"warehouse_id": wh, "line_nos": nos} for wh, nos in sorted(made.assignments.items())],
        candidates=made.candidates,  # type: ignore[typeddict-item]
        weights=weights,
    )  # fmt: skip


def test_a_candidate_identical_to_the_live_rule_differs_nowhere() -> None:
    live = [decision(f"jd:{i}", HANGZHOU if i % 2 else GUANGZHOU, WEIGHTS, at_ms=i) for i in range(20)]
    shadow = [decision(f"jd:{i}", HANGZHOU if i % 2 else GUANGZHOU, dict(WEIGHTS), at_ms=i + 5) for i in range(20)]
    result = compare_routing(first_route_choices(live), first_route_choices(shadow))
    assert (result.compared, result.differing, result.share, result.examples) == (20, 0, 0.0, [])
    assert result.live_effect == result.shadow_effect


def test_distance_first_flips_exactly_the_hand_computed_order() -> None:
    live = [decision("jd:hz", HANGZHOU, WEIGHTS), decision("jd:gz", GUANGZHOU, WEIGHTS, at_ms=2_000)]
    shadow = [decision("jd:hz", HANGZHOU, DISTANCE_FIRST), decision("jd:gz", GUANGZHOU, DISTANCE_FIRST, at_ms=2_000)]
    result = compare_routing(first_route_choices(live), first_route_choices(shadow))
    assert (result.compared, result.differing, result.share) == (2, 1, 0.5)
    assert result.moves == {"WH-NJ -> WH-SH": 1}
    [(was, now)] = result.examples
    assert (was.order_id, was.warehouses, now.warehouses) == ("jd:hz", ("WH-NJ",), ("WH-SH",))
    assert {c["warehouse_id"]: round(c["score"], 3) for c in was.candidates} == EXAMPLE_SCORES
    assert {c["warehouse_id"]: round(c["score"], 3) for c in now.candidates} == {
        "WH-SH": 0.828, "WH-NJ": 0.793, "WH-GZ": 0.099,
    }  # fmt: skip
    # Business effect over both orders: Hangzhou ships from Shanghai (164.9 km) instead of Nanjing (236.9 km);
    # the Guangzhou customer is served from Guangzhou (0 km) either way.
    assert result.live_effect.avg_km == pytest.approx(round((236.9 + 0.0) / 2, 1), abs=0.2)
    assert result.shadow_effect.avg_km == pytest.approx(round((164.9 + 0.0) / 2, 1), abs=0.2)
    assert result.live_effect.parcels_by_warehouse == {"WH-GZ": 1, "WH-NJ": 1}
    assert result.shadow_effect.parcels_by_warehouse == {"WH-GZ": 1, "WH-SH": 1}
    as_json = result.to_dict()
    assert as_json["examples"][0]["live"]["assignments"] == {"WH-NJ": [1]}
    assert as_json["examples"][0]["shadow"]["km"] == [pytest.approx(164.9, abs=0.5)]


def test_only_what_both_decided_is_compared_and_the_first_attempt_is_the_decision() -> None:
    live = [decision("jd:a", HANGZHOU, WEIGHTS), decision("jd:b", HANGZHOU, WEIGHTS)]
    # The shadow routed jd:a twice (a warehouse refused its first plan): the first attempt is its choice,
    # even when read after the second; jd:c it decided alone, jd:b not yet.
    retry = decision("jd:a", GUANGZHOU, WEIGHTS, attempt=2, at_ms=3_000)
    shadow = [retry, decision("jd:a", HANGZHOU, DISTANCE_FIRST), decision("jd:c", HANGZHOU, WEIGHTS)]
    result = compare_routing(first_route_choices(live), first_route_choices(shadow))
    assert (result.compared, result.differing, result.only_live, result.only_shadow) == (1, 1, 1, 1)
    assert result.examples[0][1].attempt == 1


def test_split_rate_and_km_count_every_parcel() -> None:
    free = {("WH-SH", "A"): 5, ("WH-GZ", "B"): 5}
    split = decision("jd:s", HANGZHOU, WEIGHTS, lines=[Line(1, "A", 2), Line(2, "B", 3)], free=free)
    whole = decision("jd:w", HANGZHOU, WEIGHTS)
    result = compare_routing(first_route_choices([split, whole]), first_route_choices([split, whole]))
    effect = result.live_effect
    assert (effect.orders, effect.parcels, effect.split_rate) == (2, 3, 0.5)
    assert effect.parcels_by_warehouse == {"WH-GZ": 1, "WH-NJ": 1, "WH-SH": 1}
    assert effect.avg_km == pytest.approx(round((164.9 + 1048.1 + 236.9) / 3, 1), abs=0.3)


def state(refund: str, previous: str, now: str, amount_fen: int, auto: bool = False, reason: str = "",
          at_ms: int = 1_000) -> RefundStateChanged:  # fmt: skip
    return RefundStateChanged(
        event_id=f"jd:{refund}:{now}", event_time_ms=at_ms, refund_id=f"jd:{refund}", order_id=f"jd:o-{refund}",
        channel="jd", kind="RETURN_AND_REFUND", state=now, previous_state=previous, reason=reason,
        amount_fen=amount_fen, auto_approved=auto, warehouse_id="", stage_times={}, customer_id="c-1",
    )  # fmt: skip


def requested_then(refund: str, amount_fen: int, approved: bool) -> list[RefundStateChanged]:
    if approved:
        decided = state(refund, "requested", "refunding", amount_fen, True, "no_reason_return")
    else:
        decided = state(refund, "requested", "reviewing", amount_fen, False, "amount_over_auto_limit")
    return [state(refund, "", "requested", amount_fen), decided]


def test_a_higher_auto_approval_limit_approves_exactly_the_refunds_between_the_limits() -> None:
    amounts = {"r300": 30_000, "r500": 50_000, "r900": 90_000, "r1000": 100_000, "r1200": 120_000}
    live = [r for name, fen in amounts.items() for r in requested_then(name, fen, fen < 50_000)]
    shadow = [r for name, fen in amounts.items() for r in requested_then(name, fen, fen < 100_000)]
    result = compare_refunds(refund_choices(live), refund_choices(shadow))
    assert (result.compared, result.differing) == (5, 2)
    assert sorted(was.refund_id for was, _ in result.examples) == ["jd:r500", "jd:r900"]
    assert result.moves == {"reviewing -> auto_approved": 2}
    assert (result.live_effect.auto_approved, result.live_effect.auto_approved_fen, result.live_effect.to_review) == (
        1, 30_000, 4)  # fmt: skip
    assert (result.shadow_effect.auto_approved, result.shadow_effect.auto_approved_fen) == (3, 170_000)
    was, now = result.examples[0]
    assert (was.reason, now.reason) == ("amount_over_auto_limit", "no_reason_return")


def test_refund_decisions_survive_compaction_and_undecided_requests_are_left_out() -> None:
    records = [
        state("kept", "refunding", "completed", 9_900, auto=True),  # compaction kept only the newest record
        state("waiting", "", "requested", 9_900),  # waits for its tracking number: nobody decided yet
        state("cancelled", "", "requested", 9_900), state("cancelled", "requested", "cancelled", 9_900),
    ]  # fmt: skip
    choices = refund_choices(records)
    assert sorted(choices) == ["jd:cancelled", "jd:kept"]
    assert (choices["jd:kept"].auto_approved, choices["jd:kept"].state, choices["jd:kept"].label) == (
        True, "", "auto_approved")  # fmt: skip
    # A compacted decision of unknown state still compares by auto-approval alone.
    reviewed = refund_choices([state("kept", "requested", "reviewing", 9_900)])
    assert compare_refunds(choices, reviewed).differing == 1
    assert compare_refunds(choices, refund_choices([state("kept", "requested", "refunding", 9_900, auto=True)])
                           ).differing == 0  # fmt: skip


def test_a_refund_the_replay_decided_before_its_order_is_not_judged() -> None:
    """Found trying the README: a routing-only candidate was blamed for a refund difference. Replaying, the shadow
    read the request before its order (two topics side by side) and sent it to review as order_unknown, where the
    live run had approved it on the order it knew."""
    live = requested_then("r1", 9_900, approved=True) + requested_then("r2", 9_900, approved=True)
    shadow = [state("r1", "", "requested", 9_900), state("r1", "requested", "reviewing", 9_900, reason="order_unknown"),
              *requested_then("r2", 9_900, approved=False)]  # fmt: skip
    result = compare_refunds(refund_choices(live), refund_choices(shadow))
    assert (result.compared, result.differing, result.unjudged) == (1, 1, 1)
    assert [was.refund_id for was, _ in result.examples] == ["jd:r2"]
    both_unknown = [state("r3", "", "requested", 9_900), state("r3", "requested", "reviewing", 9_900,
                                                              reason="order_unknown")]  # fmt: skip
    same = compare_refunds(refund_choices(both_unknown), refund_choices(both_unknown))
    assert (same.compared, same.unjudged) == (1, 0)  # the live run did not know it either: judged as ever
