"""The warehouse view's memory of shipment outcomes: repeats dropped, and bounded."""

from __future__ import annotations

import pytest

from agents.routing import warehouse_view
from agents.routing.scoring import OnTimeRate
from agents.routing.warehouse_view import WarehouseView


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
