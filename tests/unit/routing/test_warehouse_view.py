"""The warehouse view: shipment outcomes (repeats dropped, bounded) and its own plans (bounded in time)."""

from __future__ import annotations

import pytest

from agents.routing import warehouse_view
from agents.routing.scoring import Line, OnTimeRate
from agents.routing.warehouse_view import WarehouseView
from streams.settings import Settings


def outcome(n: int, on_time: bool = True) -> dict[str, object]:
    return {"event_id": f"ship-{n}", "warehouse_id": "WH-SH", "on_time": on_time}


def test_a_repeated_outcome_counts_once_and_old_ids_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warehouse_view, "SEEN_OUTCOMES_MAX", 3)
    view = WarehouseView(sites={}, weights={}, rates={"WH-SH": OnTimeRate(prior=1.0, prior_weight=0, window=100)})
    view.apply_outcome(outcome(1, on_time=False))
    view.apply_outcome(outcome(1, on_time=False))  # a redelivery
    assert view.rates["WH-SH"].rate() == 0.0
    for n in range(2, 10):
        view.apply_outcome(outcome(n))
    assert list(view.seen_outcomes) == ["ship-7", "ship-8", "ship-9"]
    assert view.rates["WH-SH"].outcomes.count(True) == 8


def test_a_plan_no_stock_level_confirms_stops_counting_after_its_time() -> None:
    # One warehouse with two units: the first order's plan takes both, so a second order right after
    # finds nothing free. If the levels that confirm plans stop coming (the follower stalled), the plan
    # must still go, or a hot SKU's plans pile up and every decision walks all of them.
    view = WarehouseView.from_settings(Settings())
    wh = sorted(view.sites)[0]
    view.sites = {wh: view.sites[wh]}
    view.apply_level({"sku": "SKU-1", "on_hand_by_warehouse": {wh: 2}, "newest_change_ms": 0})
    address = {"province": "上海", "city": "上海"}
    line = [Line(1, "SKU-1", 2)]
    assert view.decide(address, line, now_ms=1_000) is not None
    assert view.decide(address, line, now_ms=2_000) is None
    later = 1_000 + warehouse_view.PLANS_KEPT_MS + 1
    assert view.decide(address, line, now_ms=later) is not None
    assert [ms for ms, _, _ in view.planned["SKU-1"]] == [later]
