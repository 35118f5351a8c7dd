"""The rolling-origin backtest on hand-made histories: days in the shop's zone, each forecast from the window
before its midnight, scored against the seasonal-naive baseline."""

from __future__ import annotations

import datetime as dt

import pytest

from agents.forecast.backtest import BAR, day_starts, rolling_origin
from agents.forecast.drivers import Drivers, Promotion
from agents.forecast.series import HourlySeries
from tests.unit.forecast.helpers import at, clean_counts, drivers, hours

FIRST = dt.date(2026, 10, 12)  # 4 weeks from a Monday, after National Day: no holiday inside


def history(*promotions: Promotion, days: int = 28, realisation: float = 1.0) -> tuple[HourlySeries, Drivers]:
    d = drivers(*promotions)
    hs = hours(d, FIRST, days)
    return HourlySeries(at(FIRST), tuple(clean_counts(hs, realisation=realisation))), d


def test_the_days_forecast_are_the_last_whole_local_days() -> None:
    series, d = history()
    days = day_starts(series, d, 3)
    assert days == [(at(FIRST + dt.timedelta(days=n)), at(FIRST + dt.timedelta(days=n + 1))) for n in (25, 26, 27)]
    cut = series.between(series.start_ms, at(FIRST + dt.timedelta(days=27), 15))  # ends in the afternoon
    assert day_starts(cut, d, 1) == [days[1]]


def test_a_clean_history_is_forecast_exactly_and_a_promotion_beats_the_baseline() -> None:
    day = FIRST + dt.timedelta(days=26)
    sale = Promotion("brand day", at(day), at(day + dt.timedelta(days=1)), 2.0)
    series, d = history(sale)
    result = rolling_origin(series, d, test_days=7, window_days=7)
    assert result.overall.accuracy == pytest.approx(1.0, abs=1e-4)
    assert [x.accuracy for x in result.days] == pytest.approx([1.0] * 7, abs=1e-4)
    # The same hour last week was right on every ordinary day and half of the promoted one.
    assert result.other_days.baseline_accuracy == pytest.approx(1.0)
    assert (result.promotion_days.days, result.promotion_days.baseline_accuracy) == (1, pytest.approx(0.5))
    promoted = result.days[5]
    assert (promoted.date, promoted.weekday, promoted.promotions, promoted.peak_intensity) == (
        day.isoformat(), "Sat", ("brand day",), 2.0)  # fmt: skip
    assert promoted.day_off and not promoted.holiday and promoted.peak_hour == promoted.forecast_peak_hour == 21
    assert result.passed and BAR == 0.89
    figures = result.as_dict()
    assert figures["accuracy"] == result.overall.accuracy and len(figures["days"]) == 7
    assert figures["ceiling_accuracy"] is None


def test_a_reference_forecast_is_scored_as_the_ceiling() -> None:
    series, d = history()
    reference = [c * 1.1 for c in series.counts]  # 10% high everywhere
    result = rolling_origin(series, d, test_days=2, reference=reference)
    assert result.overall.ceiling_accuracy == pytest.approx(0.9) and result.days[0].ceiling_accuracy == 0.9
    with pytest.raises(ValueError, match="one value per hour"):
        rolling_origin(series, d, test_days=2, reference=reference[:-1])


def test_too_short_a_history_is_refused() -> None:
    series, d = history(days=14)
    with pytest.raises(ValueError, match="168 are needed"):
        rolling_origin(series, d, test_days=8)
    with pytest.raises(ValueError, match="at least 1"):
        rolling_origin(series, d, test_days=0)
