"""A shadow report built by hand, for the shadow card's tests (unit and on the web page)."""

from __future__ import annotations

from typing import Any

from agents.shadow.candidate import Candidate
from agents.shadow.compare import Comparison, RefundEffect, RouteChoice, RoutingEffect
from agents.shadow.report import ShadowReport


def shadow_report() -> ShadowReport:
    """A routing candidate that moved 4 of 12 orders from Shanghai to Hangzhou."""

    def route(order: str, wh: str) -> RouteChoice:
        return RouteChoice(order, 1, 1, ((wh, (1,)),), False, (), {})

    routing: Comparison[RouteChoice, RoutingEffect] = Comparison(
        12, 4, 0, 1, RoutingEffect(12, 12, 310.5, 0.0, {"WH-SH": 12}), RoutingEffect(12, 12, 188.2, 0.0, {}),
        {"WH-SH -> WH-HZ": 4}, [(route("jd:R1", "WH-SH"), route("jd:R1", "WH-HZ"))],
    )  # fmt: skip
    refunds: Comparison[Any, RefundEffect] = Comparison(0, 0, 0, 0, RefundEffect(0, 0, 0, 0), RefundEffect(0, 0, 0, 0))
    candidate = Candidate("near", routing_weights={"distance": 0.9})
    return ShadowReport("near", candidate, {"running": True}, routing, refunds)
