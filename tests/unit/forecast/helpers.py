"""Hand-made hours and histories for the forecast tests: a zone, a calendar, a clean daily curve."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from agents.forecast.drivers import Calendar, Drivers, HourDrivers, Promotion
from agents.forecast.series import HOUR_MS

ZONE = ZoneInfo("Asia/Shanghai")
# A clean daily curve: quiet nights, an evening peak at 21:00.
CURVE = [4, 2, 1, 1, 1, 1, 2, 4, 8, 10, 12, 12, 14, 12, 11, 11, 11, 12, 14, 18, 24, 30, 26, 12]


def at(day: dt.date, hour: int = 0) -> int:
    return int(dt.datetime.combine(day, dt.time(hour), ZONE).timestamp() * 1000)


def drivers(*promotions: Promotion, country: str = "CN") -> Drivers:
    return Drivers(Calendar(tuple(promotions), country), ZONE)


def hours(d: Drivers, first: dt.date, days: int) -> list[HourDrivers]:
    return d.over(range(at(first), at(first + dt.timedelta(days=days)), HOUR_MS))


def clean_counts(hs: list[HourDrivers], day_off_factor: float = 1.25, realisation: float = 1.0) -> list[float]:
    """Orders exactly as the model's own structure says: the curve, days off busier, promotions as given."""
    return [CURVE[h.hour_of_day] * (day_off_factor if h.day_off else 1.0) * (1 + (h.intensity - 1) * realisation)
            for h in hs]  # fmt: skip
