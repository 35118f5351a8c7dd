"""The forecast model, WAPE and the seasonal-naive baseline: hand-computed cases, no ClickHouse."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from agents.forecast.drivers import Calendar, Drivers, External, Promotion
from agents.forecast.model import accuracy, fit, realisation, seasonal_naive, wape
from tests.unit.forecast.helpers import CURVE, ZONE, at, clean_counts, drivers, hours

# Mon 2026-11-16 .. Sun 2026-11-22: five working days and a weekend, no public holiday.
WEEK = dt.date(2026, 11, 16)
NEXT = WEEK + dt.timedelta(days=7)


def test_wape_sums_absolute_errors_over_the_actual_total() -> None:
    assert wape([10, 20, 30], [12, 20, 27]) == pytest.approx(5 / 60)
    assert accuracy([10, 20, 30], [12, 20, 27]) == pytest.approx(1 - 5 / 60)
    # Weighted by volume: the same 10-order miss costs a quiet hour nothing more than a busy one.
    assert wape([1, 100], [11, 100]) == wape([100, 1], [110, 1]) == pytest.approx(10 / 101)


def test_wape_of_an_empty_actual_is_zero_only_for_an_exact_forecast() -> None:
    assert wape([0, 0], [0, 0]) == 0.0
    assert wape([0, 0], [1, 0]) == math.inf
    with pytest.raises(ValueError, match="3 actual values for 2"):
        wape([1, 2, 3], [1, 2])


def test_seasonal_naive_repeats_the_same_hour_a_week_before() -> None:
    history = list(range(200))
    assert seasonal_naive(history, 3) == [32.0, 33.0, 34.0]  # 200 - 168 = 32: a week before the next hour
    assert seasonal_naive(history, 170)[168:] == [32.0, 33.0]
    with pytest.raises(ValueError, match="168 hours"):
        seasonal_naive(list(range(100)), 24)


def test_a_clean_week_is_forecast_exactly_weekend_included() -> None:
    d = drivers()
    history = hours(d, WEEK, 7)
    model = fit(clean_counts(history), history)
    monday, saturday = hours(d, NEXT, 1), hours(d, NEXT + dt.timedelta(days=5), 1)
    assert model.predict(monday) == pytest.approx(CURVE, rel=1e-6)
    assert model.predict(saturday) == pytest.approx([c * 1.25 for c in CURVE], rel=1e-6)
    assert model.promotions_seen == 0 and model.realisation == 1.0


def test_a_promotion_stronger_than_any_in_the_history_multiplies_the_hour() -> None:
    # The history's promotion delivered as planned; Double-11's 10x has never been seen and is still 10x.
    live = Promotion("live stream", at(WEEK + dt.timedelta(days=1), 20), at(WEEK + dt.timedelta(days=1), 23), 2.0)
    double11 = Promotion("Double 11", at(NEXT), at(NEXT + dt.timedelta(days=1)), 10.0)
    d = drivers(live, double11)
    history = hours(d, WEEK, 7)
    model = fit(clean_counts(history), history)
    assert model.promotions_seen == 1 and model.realisation == pytest.approx(1.0, abs=1e-6)
    assert model.predict(hours(d, NEXT, 1)) == pytest.approx([10 * c for c in CURVE], rel=1e-4)
    assert model.ordinary(hours(d, NEXT, 1)) == pytest.approx(CURVE, rel=1e-4)


def test_promotions_that_delivered_half_their_plan_scale_the_next_ones_towards_half() -> None:
    lives = [Promotion("live stream", at(WEEK + dt.timedelta(days=n), 20), at(WEEK + dt.timedelta(days=n), 23), 3.0)
             for n in (1, 4)]  # fmt: skip
    d = drivers(*lives)
    history = hours(d, WEEK, 7)
    model = fit(clean_counts(history, realisation=0.5), history)
    # Each delivered 2x instead of 3x: uplift 1 of a planned 2, twice; the prior adds one "as planned".
    assert model.realisation == pytest.approx((1 + 1 + 1) / (2 + 2 + 1), rel=1e-4)
    # The promotions' shortfall stays out of the ordinary curve.
    assert model.ordinary(hours(d, NEXT, 1)) == pytest.approx(CURVE, rel=1e-4)


def test_realisation_is_delivered_over_planned_uplift_with_a_prior_and_bounds() -> None:
    assert realisation([], []) == 1.0
    # planned 2 and 3 delivered 1.5 and 2: (0.5 + 1 + 1) / (1 + 2 + 1)
    assert realisation([2.0, 3.0], [math.log(1.5 / 2.0), math.log(2.0 / 3.0)]) == pytest.approx(2.5 / 4)
    assert realisation([0.5], [0.0]) == 1.0  # a promotion planned to lower orders says nothing about uplift
    assert realisation([2.0], [math.log(0.01)]) == 0.25  # bounded: one flop never switches promotions off
    assert realisation([2.0] * 5, [math.log(5.0)] * 5) == 2.0


def test_an_external_driver_is_learned_from_the_history() -> None:
    # A competitor's sale on two evenings took a third of the orders.
    rival = {at(WEEK + dt.timedelta(days=n), h): (1.0,) for n in (2, 5) for h in range(18, 24)}
    rival[at(NEXT, 20)] = (1.0,)
    d = Drivers(Calendar(()), ZONE, External(("competitor_sale",), rival))
    history = hours(d, WEEK, 7)
    counts = [c * (2 / 3 if h.extra == (1.0,) else 1.0) for c, h in zip(clean_counts(history), history, strict=True)]
    forecast = fit(counts, history).predict(hours(d, NEXT, 1))
    assert forecast[20] == pytest.approx(CURVE[20] * 2 / 3, rel=1e-4)
    assert forecast[21] == pytest.approx(CURVE[21], rel=1e-4)


def test_what_the_history_cannot_tell_is_forecast_as_ordinary() -> None:
    # No public holiday in the history: National Day (a holiday and a day off) is forecast as a day off.
    d = drivers()
    history = hours(d, dt.date(2026, 9, 21), 7)  # Mon 21 - Sun 27 September, with Mid-Autumn on Fri 25
    plain = hours(d, dt.date(2026, 9, 7), 7)  # an ordinary week: no holiday at all
    model = fit(clean_counts(plain), plain)
    assert model.predict(hours(d, dt.date(2026, 10, 1), 1)) == pytest.approx([c * 1.25 for c in CURVE], rel=1e-4)
    # With one in the history, its effect is learned (here: 20% fewer orders than a day off brings).
    counts = [c * (0.8 if h.holiday else 1.0) for c, h in zip(clean_counts(history), history, strict=True)]
    learned = fit(counts, history).predict(hours(d, dt.date(2026, 10, 1), 1))
    assert learned == pytest.approx([c * 1.25 * 0.8 for c in CURVE], rel=1e-4)


def test_less_than_a_day_of_history_forecasts_unseen_hours_at_the_seen_average() -> None:
    d = drivers()
    history = hours(d, WEEK, 1)[:12]  # 00:00-11:00 only
    forecast = fit(clean_counts(history), history).predict(hours(d, WEEK + dt.timedelta(days=1), 1))
    assert forecast[:12] == pytest.approx(CURVE[:12], rel=1e-4)
    assert forecast[12:] == pytest.approx([sum(CURVE[:12]) / 12] * 12, rel=1e-4)


def test_an_hour_nobody_ever_ordered_in_is_forecast_at_about_zero() -> None:
    d = drivers()
    history = hours(d, WEEK, 7)
    counts = [0.0 if h.hour_of_day == 4 else c for c, h in zip(clean_counts(history), history, strict=True)]
    forecast = fit(counts, history).predict(hours(d, NEXT, 1))
    assert forecast[4] < 1e-3 and forecast[21] == pytest.approx(30, rel=1e-4)


def test_a_history_without_orders_cannot_be_learned_from() -> None:
    d = drivers()
    history = hours(d, WEEK, 7)
    with pytest.raises(ValueError, match="no orders"):
        fit([0.0] * len(history), history)
    with pytest.raises(ValueError, match="counts for"):
        fit([1.0], history)
