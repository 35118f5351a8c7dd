"""A seeded synthetic order history, hour by hour, for the forecast backtest (``stockflow forecast backtest``).

The same seed gives the same history. What shapes it (``HistoryModel`` holds every figure):

- a daily curve of a Chinese online shop: quiet from 02:00 to 06:00, a lunch bump, the evening peak at
  21:00-22:00 (live streams, after work); on days off the morning starts later and the day is busier;
- weekly seasonality through days off (weekends, except weekend working days, 调休) and public holidays
  (the ``holidays`` package's China: National Day week is a holiday, quieter: people travel);
- growth of 0.15% a day, and a day-level shock that persists (AR(1), so a strong day tends to follow a
  strong day) - the part of the level no calendar knows;
- promotions from a calendar known ahead (``promotion_calendar``): live streams on Tuesday and Friday
  evenings of varying intensity, occasional brand days, the National Day sale, the Double-11 season (presale,
  first wave, warm-up, the day itself with its midnight rush, the encore); each run of a promotion delivers
  its own share of its planned uplift (log-normal around ``promotion_realisation``: plans are optimistic),
  so the calendar tells roughly, never exactly, what a promotion does;
- the day after a Double-11-sized promotion is quieter than usual (demand pulled forward), which the
  calendar does not say;
- hour-level noise beyond Poisson (log-normal) and Poisson counts.

With it comes ``expected``: each hour's expectation given everything knowable at that day's midnight (the
level, yesterday's shock, the calendar, the generator's own figures) - the best forecast any model could
make here, so its accuracy is the ceiling the noise allows.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np

from agents.forecast.drivers import Calendar, Drivers, Promotion
from agents.forecast.series import HOUR_MS, HourlySeries

# Share of a working day's orders in each local hour (00:00 first); normalised when used.
DAILY_CURVE = (2.2, 1.2, 0.7, 0.45, 0.4, 0.5, 1.0, 1.9, 3.0, 4.2, 5.0, 5.3,
               5.6, 5.3, 5.0, 4.9, 4.8, 4.7, 4.9, 5.6, 6.8, 7.6, 7.4, 5.2)  # fmt: skip
# How a day off reshapes it: a later, slower morning, a busier day.
DAY_OFF_SHIFT = (1.0, 1.05, 1.05, 1.0, 1.0, 0.9, 0.7, 0.65, 0.75, 0.95, 1.1, 1.15,
                 1.12, 1.1, 1.1, 1.08, 1.05, 1.0, 1.0, 1.0, 1.0, 1.02, 1.05, 1.1)  # fmt: skip
PEAK_INTENSITY = 4.0  # a promotion at least this strong pulls the next day's demand forward
END = dt.date(2026, 11, 18)  # the default history ends at this midnight: its last 14 days hold Double-11


@dataclass(frozen=True)
class HistoryModel:
    orders_per_day: float = 6000.0  # an ordinary working day at the start
    growth_per_day: float = 0.0015
    day_off_level: float = 1.12
    holiday_level: float = 0.88
    day_sigma: float = 0.05  # the day-level shock's innovation (log)
    day_persistence: float = 0.6  # its AR(1) coefficient
    hour_sigma: float = 0.05  # hour-level noise beyond Poisson (log)
    promotion_sigma: float = 0.12  # spread of a promotion run's delivered share of its planned uplift (log)
    promotion_realisation: float = 0.95  # what share of their planned uplift promotions deliver on average
    after_peak_level: float = 0.92  # the day after a Double-11-sized promotion


@dataclass(frozen=True)
class SyntheticHistory:
    series: HourlySeries
    calendar: Calendar
    expected: tuple[float, ...]  # the ceiling forecast, one value per hour of the series
    zone: str
    seed: int


def _at(day: dt.date, hour: int, zone: ZoneInfo) -> int:
    return int(dt.datetime.combine(day, dt.time(hour), zone).timestamp() * 1000)


def _yearly(year: int, zone: ZoneInfo) -> list[Promotion]:
    """The fixed shopping festivals of a year: (month, day, from hour, days later, to hour, intensity, name)."""
    festivals = [
        (6, 1, 20, 0, 24, 2.5, "618 presale opens"), (6, 18, 0, 0, 1, 8.0, "618 midnight"),
        (6, 18, 1, 0, 24, 2.5, "618"), (9, 9, 20, 0, 24, 2.0, "99 sale"),
        (10, 1, 0, 2, 24, 1.3, "National Day sale"), (10, 20, 20, 0, 24, 2.5, "Double 11 presale opens"),
        (10, 31, 20, 0, 24, 3.0, "Double 11 first wave"), (11, 1, 0, 2, 24, 1.6, "Double 11 first wave"),
        (11, 10, 20, 0, 24, 2.0, "Double 11 warm-up"), (11, 11, 0, 0, 1, 16.0, "Double 11 midnight"),
        (11, 11, 1, 0, 2, 8.0, "Double 11 midnight"), (11, 11, 2, 0, 20, 4.0, "Double 11"),
        (11, 11, 20, 0, 24, 6.0, "Double 11 night"), (11, 12, 0, 1, 24, 1.4, "Double 11 encore"),
        (12, 12, 0, 0, 24, 2.0, "Double 12"),
    ]  # fmt: skip
    out = []
    for month, day, start_h, days, end_h, intensity, name in festivals:
        first = dt.date(year, month, day)
        end = _at(first + dt.timedelta(days=days), 0, zone) + end_h * HOUR_MS
        out.append(Promotion(name, _at(first, start_h, zone), end, intensity))
    return out


def promotion_calendar(first: dt.date, last: dt.date, zone: ZoneInfo, rng: np.random.Generator) -> list[Promotion]:
    """Promotions touching [first, last]: the year's festivals, Tuesday and Friday live streams (20:00-23:00,
    intensity 1.3-2.2) and brand days (about one day in 16, intensity 1.2-1.7)."""
    found: list[Promotion] = []
    day = first
    while day <= last:
        if day.weekday() in (1, 4):
            found.append(Promotion("live stream", _at(day, 20, zone), _at(day, 23, zone),
                                   round(float(rng.uniform(1.3, 2.2)), 1)))  # fmt: skip
        if rng.random() < 1 / 16:
            found.append(Promotion("brand day", _at(day, 0, zone), _at(day + dt.timedelta(days=1), 0, zone),
                                   round(float(rng.uniform(1.2, 1.7)), 1)))  # fmt: skip
        day += dt.timedelta(days=1)
    lo, hi = _at(first, 0, zone), _at(last + dt.timedelta(days=1), 0, zone)
    for year in range(first.year, last.year + 1):
        found += [p for p in _yearly(year, zone) if p.end_ms > lo and p.start_ms < hi]
    return sorted(found, key=lambda p: (p.start_ms, p.name))


def generate(seed: int = 11, days: int = 60, end: dt.date = END, zone: str = "Asia/Shanghai",
             model: HistoryModel | None = None) -> SyntheticHistory:  # fmt: skip
    """``days`` days of hourly orders ending at ``end``'s midnight, with their promotion calendar."""
    m = model or HistoryModel()
    tz = ZoneInfo(zone)
    rng = np.random.default_rng(seed)
    first = end - dt.timedelta(days=days)
    calendar = Calendar(tuple(promotion_calendar(first, end, tz, rng)))
    drivers = Drivers(calendar, tz)
    keys = sorted({p.key for p in calendar.promotions})
    shares = m.promotion_realisation * np.exp(rng.normal(-(m.promotion_sigma**2) / 2, m.promotion_sigma, len(keys)))
    delivered = dict(zip(keys, (float(s) for s in shares), strict=True))
    working = np.asarray(DAILY_CURVE) / sum(DAILY_CURVE)
    off = working * np.asarray(DAY_OFF_SHIFT)
    off /= off.sum()
    counts: list[float] = []
    expected: list[float] = []
    shock = 0.0
    after_peak = False
    for d in range(days):
        day = first + dt.timedelta(days=d)
        start, stop = _at(day, 0, tz), _at(day + dt.timedelta(days=1), 0, tz)
        hours = drivers.over(range(start, stop, HOUR_MS))
        before, shock = shock, m.day_persistence * shock + float(rng.normal(0.0, m.day_sigma))
        level = m.orders_per_day * (1 + m.growth_per_day) ** d
        level *= (m.day_off_level if hours[12].day_off else 1.0) * (m.holiday_level if hours[12].holiday else 1.0)
        level *= m.after_peak_level if after_peak else 1.0
        foreseen = level * math.exp(m.day_persistence * before + m.day_sigma**2 / 2)
        curve = off if hours[12].day_off else working
        noise = np.exp(rng.normal(-(m.hour_sigma**2) / 2, m.hour_sigma, len(hours)))
        for hd, jitter in zip(hours, noise, strict=True):
            uplift = hd.intensity - 1.0
            mean = level * math.exp(shock) * curve[hd.hour_of_day] * (1 + uplift * delivered.get(hd.promotion, 1.0))
            counts.append(float(rng.poisson(mean * jitter)))
            expected.append(foreseen * curve[hd.hour_of_day] * (1 + uplift * m.promotion_realisation))
        after_peak = max(hd.intensity for hd in hours) >= PEAK_INTENSITY
    return SyntheticHistory(HourlySeries(_at(first, 0, tz), tuple(counts)), calendar, tuple(expected), zone, seed)
