"""The forecast's measured accuracy: a rolling-origin backtest over an hourly history. Pure.

For each of the last ``test_days`` whole days of the history (days in the shop's time zone), the model is
fitted on the ``window_days`` before that day's midnight - exactly what ``stockflow forecast`` would have
had at that moment - and forecasts the day's hours. The same hours are forecast by the seasonal-naive
baseline (the same hour a week before). Accuracy is 1 - WAPE over the forecast hours, overall, on the days a
promotion touched and on the others; with a reference forecast (a synthetic history's own expectation, the
best any forecaster could do there) its accuracy is reported too, as the ceiling the noise allows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from agents.forecast.drivers import Drivers, HourDrivers
from agents.forecast.model import HOURS_A_WEEK, accuracy, fit, seasonal_naive
from agents.forecast.series import HOUR_MS, HourlySeries

BAR = 0.89  # the accuracy the seed's vendor reported: the figure to beat


@dataclass(frozen=True)
class DayResult:
    date: str
    weekday: str
    orders: float
    forecast: float
    baseline: float
    accuracy: float
    baseline_accuracy: float
    ceiling_accuracy: float | None
    peak_hour: int  # local hour with the most orders
    forecast_peak_hour: int
    peak_intensity: float  # the strongest promotion effect planned for the day, 1.0: none
    promotions: tuple[str, ...]
    day_off: bool
    holiday: bool
    realisation: float  # the share of planned uplift the model expected promotions to deliver


@dataclass(frozen=True)
class Scores:
    days: int
    accuracy: float | None
    baseline_accuracy: float | None
    ceiling_accuracy: float | None


@dataclass(frozen=True)
class BacktestResult:
    window_days: int
    test_days: int
    history_hours: int
    overall: Scores
    promotion_days: Scores
    other_days: Scores
    days: tuple[DayResult, ...]

    @property
    def passed(self) -> bool:
        acc, base = self.overall.accuracy, self.overall.baseline_accuracy
        return acc is not None and base is not None and acc >= BAR and acc > base

    def as_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.overall.accuracy,
            "baseline_accuracy": self.overall.baseline_accuracy,
            "ceiling_accuracy": self.overall.ceiling_accuracy,
            "bar": BAR,
            "passed": self.passed,
            "promotion_days": asdict(self.promotion_days),
            "other_days": asdict(self.other_days),
            "window_days": self.window_days,
            "test_days": self.test_days,
            "history_hours": self.history_hours,
            "days": [asdict(d) for d in self.days],
        }


def _midnight(day: dt.date, drivers: Drivers) -> int:
    return int(dt.datetime.combine(day, dt.time(), drivers.zone).timestamp() * 1000)


def day_starts(series: HourlySeries, drivers: Drivers, test_days: int) -> list[tuple[int, int]]:
    """[start, end) in ms of the last ``test_days`` whole local days of the series."""
    # The day the series ends in is never whole: it ends at that day's midnight, or part-way through it.
    last = drivers.local(series.end_ms).date()
    days = [last - dt.timedelta(days=k) for k in range(test_days, 0, -1)]
    return [(_midnight(d, drivers), _midnight(d + dt.timedelta(days=1), drivers)) for d in days]


# One day's hours: actual, forecast, baseline, reference (None without one).
Day = tuple[list[float], list[float], list[float], list[float] | None]


def _scores(days: Sequence[Day]) -> Scores:
    if not days:
        return Scores(0, None, None, None)
    actual = [v for d in days for v in d[0]]
    ceiling = None
    if all(d[3] is not None for d in days):
        ceiling = round(accuracy(actual, [v for d in days for v in d[3] or ()]), 4)
    return Scores(len(days), round(accuracy(actual, [v for d in days for v in d[1]]), 4),
                  round(accuracy(actual, [v for d in days for v in d[2]]), 4), ceiling)  # fmt: skip


def _peak(values: Sequence[float], hours: Sequence[HourDrivers]) -> int:
    return hours[max(range(len(values)), key=lambda i: values[i])].hour_of_day


def rolling_origin(series: HourlySeries, drivers: Drivers, *, test_days: int = 14, window_days: int = 7,
                   reference: Sequence[float] | None = None) -> BacktestResult:  # fmt: skip
    """Forecast each of the last ``test_days`` days from the ``window_days`` before it; score both forecasts."""
    if test_days < 1 or window_days < 1:
        raise ValueError("test_days and window_days must be at least 1")
    if reference is not None and len(reference) != len(series.counts):
        raise ValueError("the reference forecast must have one value per hour of the series")
    windows = day_starts(series, drivers, test_days)
    needed = max(window_days * 24, HOURS_A_WEEK) * HOUR_MS
    if windows[0][0] - needed < series.start_ms:
        have = (windows[0][0] - series.start_ms) // HOUR_MS
        raise ValueError(f"the history holds {have} hours before the first day forecast; "
                         f"{needed // HOUR_MS} are needed (the window, and a week for the baseline)")  # fmt: skip
    every = drivers.over(series.hours_ms())
    names = drivers.names()
    starts = {p.key: p.start_ms for p in drivers.promotions}
    results: list[DayResult] = []
    promo: list[Day] = []
    other: list[Day] = []
    overall: list[Day] = []
    for start, end in windows:
        i, j = series.index(start), series.index(end)
        w = series.index(start - window_days * 24 * HOUR_MS)
        model = fit(series.counts[w:i], every[w:i])
        hours = every[i:j]
        actual = list(series.counts[i:j])
        forecast = model.predict(hours)
        baseline = seasonal_naive(series.counts[i - HOURS_A_WEEK : i], j - i)
        ref = list(reference[i:j]) if reference is not None else None
        keys = sorted({hd.promotion for hd in hours if hd.promotion}, key=lambda k: starts.get(k, 0))
        local = drivers.local(start)
        results.append(DayResult(
            date=local.date().isoformat(), weekday=local.strftime("%a"), orders=round(sum(actual), 1),
            forecast=round(sum(forecast), 1), baseline=round(sum(baseline), 1),
            accuracy=round(accuracy(actual, forecast), 4), baseline_accuracy=round(accuracy(actual, baseline), 4),
            ceiling_accuracy=round(accuracy(actual, ref), 4) if ref is not None else None,
            peak_hour=_peak(actual, hours), forecast_peak_hour=_peak(forecast, hours),
            peak_intensity=round(max(hd.intensity for hd in hours), 2),
            promotions=tuple(dict.fromkeys(names.get(k, k) for k in keys)),
            day_off=hours[len(hours) // 2].day_off, holiday=hours[len(hours) // 2].holiday,
            realisation=round(model.realisation, 3),
        ))  # fmt: skip
        entry: Day = (actual, forecast, baseline, ref)
        overall.append(entry)
        (promo if keys else other).append(entry)
    return BacktestResult(window_days, test_days, len(series.counts), _scores(overall), _scores(promo),
                          _scores(other), tuple(results))  # fmt: skip
