"""The forecast from live data, with ClickHouse replaced by a hand-made series: where the history starts,
what a forecast carries, and the web page's card rows."""

from __future__ import annotations

import datetime as dt

import pytest

from agents.forecast import predict
from agents.forecast.drivers import Promotion
from agents.forecast.series import DAY_MS, HOUR_MS, HourlySeries, from_hours
from streams.settings import Settings
from tests.unit.forecast.helpers import CURVE, ZONE, at, clean_counts, drivers, hours

MONDAY = dt.date(2026, 11, 16)


def test_the_history_starts_at_the_midnight_before_the_first_order() -> None:
    d = drivers()
    series = from_hours({at(MONDAY + dt.timedelta(days=2), 9): 3.0}, at(MONDAY), at(MONDAY + dt.timedelta(days=4)))
    trimmed = predict.since_first_order(series, d)
    assert (trimmed.start_ms, trimmed.end_ms) == (at(MONDAY + dt.timedelta(days=2)), series.end_ms)
    empty = from_hours({}, at(MONDAY), at(MONDAY, 5))
    assert predict.since_first_order(empty, d) == empty
    with pytest.raises(predict.NoHistory):
        predict.forecast_from(empty, d, 24)


def test_a_forecast_names_its_promotions_and_says_what_it_learned_from() -> None:
    sale = Promotion("evening sale", at(MONDAY + dt.timedelta(days=7), 20), at(MONDAY + dt.timedelta(days=7), 22), 2.0)
    d = drivers(sale)
    week = hours(d, MONDAY, 7)
    history = HourlySeries(at(MONDAY), tuple(clean_counts(week)))
    result = predict.forecast_from(history, d, 24, channel="jd")
    assert [h.orders for h in result.hours] == pytest.approx(
        [c * (2 if h in (20, 21) else 1) for h, c in enumerate(CURVE)]
    )
    assert (result.peak.hour, result.hours[20].promotion, result.hours[19].promotion) == (
        "2026-11-23T21:00:00+08:00", "evening sale", "")  # fmt: skip
    figures = result.as_dict()
    assert (figures["from"], figures["channel"], figures["zone"]) == (
        "2026-11-23T00:00:00+08:00",
        "jd",
        "Asia/Shanghai",
    )
    assert figures["total"] == pytest.approx(sum(CURVE) + CURVE[20] + CURVE[21], abs=0.1)
    assert figures["model"]["history_hours"] == 168 and figures["model"]["learned_from"] == "2026-11-16T00:00:00+08:00"
    assert set(figures["hours"][0]) == {"hour_ms", "hour", "orders", "intensity", "promotion", "day_off", "holiday"}


def test_the_web_card_shows_yesterday_beside_its_forecast_then_tomorrow(monkeypatch: pytest.MonkeyPatch) -> None:
    d = drivers()
    now = at(MONDAY + dt.timedelta(days=9))  # Wednesday 25th, midnight
    every = hours(d, MONDAY, 9)
    counts = dict(zip([h.hour_ms for h in every], clean_counts(every), strict=True))
    asked: list[tuple[int, int]] = []

    def orders_per_hour(settings: Settings, from_ms: int, to_ms: int, zone: object, channel: str = "") -> HourlySeries:
        asked.append((from_ms, to_ms))
        return from_hours(counts, from_ms, to_ms)

    monkeypatch.setattr(predict, "orders_per_hour", orders_per_hour)
    monkeypatch.setattr(predict, "load_drivers", lambda settings, zone: d)
    rows = predict.chart_rows(Settings(), at_ms=now + 17 * 60_000)
    assert asked == [(now - DAY_MS - 7 * DAY_MS, now)]
    assert len(rows) == 48 and rows[0]["hour"] == "2026-11-24 00:00" and rows[-1]["hour"] == "2026-11-25 23:00"
    assert [r["actual"] for r in rows[:24]] == CURVE and all(r["actual"] is None for r in rows[24:])
    assert [r["forecast"] for r in rows] == pytest.approx(CURVE + CURVE, abs=0.05)
    assert predict.chart_card()["chart"]["y"] == ["actual", "forecast"] and ZONE.key == "Asia/Shanghai"


def test_the_web_card_shows_the_actuals_when_there_is_nothing_to_forecast_from(monkeypatch: pytest.MonkeyPatch) -> None:
    d = drivers()
    now = at(MONDAY + dt.timedelta(days=9))
    monkeypatch.setattr(predict, "orders_per_hour", lambda s, f, t, z, c="": from_hours({now - HOUR_MS: 2.0}, f, t))
    monkeypatch.setattr(predict, "load_drivers", lambda settings, zone: d)
    rows = predict.chart_rows(Settings(), at_ms=now)
    assert rows[23] == {"hour": "2026-11-24 23:00", "actual": 2.0, "forecast": None}
    assert all(r["forecast"] is None for r in rows[:24]) and all(r["forecast"] is not None for r in rows[24:])
