"""The forecast from the live data: orders per hour ahead, from ClickHouse's recent orders and the known drivers.

Reads: orders placed per hour from the ``orders_per_hour`` dashboard (``agents/analytics/dashboards/``)
through ``agents.analytics.queries.run`` - the running sink when ClickHouse is embedded (it owns the chdb
folder), else ClickHouse directly; the promotion calendar and the drivers file (``agents.forecast.drivers``,
``STOCKFLOW_PROMOTIONS_FILE``, ``STOCKFLOW_FORECAST_DRIVERS_FILE``); the shop's time zone (the refund
rules', as the dashboards use it). Writes nothing; the model is fitted afresh each time (milliseconds).

The forecast is made as of an hour: the hour ``at`` falls in (its orders are still coming, so it is forecast,
not learned from), learned from the ``days`` whole days of hours before it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agents.forecast.drivers import Drivers, load_calendar, load_external
from agents.forecast.model import FittedModel, fit
from agents.forecast.series import DAY_MS, HOUR_MS, HourlySeries, from_hours, hour_floor
from streams.settings import Settings

MODEL_NAME = "Poisson GLM (statsmodels): hour of day, days off, holidays, drivers; promotions as planned"


class NoHistory(ValueError):
    """Not a single order in the window the forecast learns from."""


@dataclass(frozen=True)
class HourForecast:
    hour_ms: int
    hour: str  # local ISO time
    orders: float
    intensity: float
    promotion: str  # its name, "" for none
    day_off: bool
    holiday: bool


@dataclass(frozen=True)
class Forecast:
    made_for_ms: int  # the first hour forecast
    zone: str
    channel: str
    hours: tuple[HourForecast, ...]
    model: FittedModel
    history_from_ms: int

    @property
    def total(self) -> float:
        return sum(h.orders for h in self.hours)

    @property
    def peak(self) -> HourForecast:
        return max(self.hours, key=lambda h: h.orders)

    def as_dict(self) -> dict[str, Any]:
        def local(ms: int) -> str:
            return dt.datetime.fromtimestamp(ms / 1000, ZoneInfo(self.zone)).isoformat()

        return {
            "from": local(self.made_for_ms),
            "zone": self.zone,
            "channel": self.channel or "all",
            "total": round(self.total, 1),
            "peak": {"hour": self.peak.hour, "orders": round(self.peak.orders, 1)},
            "hours": [
                {**h.__dict__, "orders": round(h.orders, 1), "intensity": round(h.intensity, 3)} for h in self.hours
            ],
            "model": {
                "name": MODEL_NAME,
                "learned_from": local(self.history_from_ms),
                "history_hours": self.model.history_hours,
                "history_orders": self.model.history_orders,
                "promotions_seen": self.model.promotions_seen,
                "promotion_realisation": round(self.model.realisation, 3),
            },
        }


def shop_zone(settings: Settings) -> ZoneInfo:
    from agents.refunds.reports import shop_zone as zone_name

    return ZoneInfo(zone_name(settings))


def load_drivers(settings: Settings, zone: ZoneInfo) -> Drivers:
    return Drivers(
        load_calendar(settings.promotions_file, zone), zone, load_external(settings.forecast_drivers_file, zone)
    )


def orders_per_hour(settings: Settings, from_ms: int, to_ms: int, zone: ZoneInfo, channel: str = "") -> HourlySeries:
    """Orders placed in each hour of [from_ms, to_ms) (both on the hour), from ClickHouse."""
    from agents.analytics import queries

    given = {"from_ms": str(from_ms), "to_ms": str(to_ms), "channel": channel, "tz": zone.key}
    _, rows = queries.run(settings, "orders_per_hour", given)
    return from_hours({int(r["hour_ms"]): float(r["orders"]) for r in rows}, from_ms, to_ms)


def since_first_order(history: HourlySeries, drivers: Drivers) -> HourlySeries:
    """The history from the local midnight before its first order: the hours before it are before the shop
    (or stockflow) took orders, not hours nobody ordered in. Unchanged when there is no order at all."""
    first = next((i for i, c in enumerate(history.counts) if c > 0), None)
    if first is None:
        return history
    day = drivers.local(history.start_ms + first * HOUR_MS).date()
    midnight = int(dt.datetime.combine(day, dt.time(), drivers.zone).timestamp() * 1000)
    return history.between(max(midnight, history.start_ms), history.end_ms)


def forecast_from(history: HourlySeries, drivers: Drivers, hours: int, channel: str = "") -> Forecast:
    """Forecast the ``hours`` hours after the history ends, from all of it. Raises ``NoHistory``."""
    learned = since_first_order(history, drivers)
    if learned.total() <= 0:
        raise NoHistory("no orders in the history to learn from")
    model = fit(learned.counts, drivers.over(learned.hours_ms()))
    ahead = drivers.over([history.end_ms + i * HOUR_MS for i in range(hours)])
    names = drivers.names()
    out = tuple(
        HourForecast(hd.hour_ms, drivers.local(hd.hour_ms).isoformat(), value, hd.intensity,
                     names.get(hd.promotion, ""), hd.day_off, hd.holiday)
        for hd, value in zip(ahead, model.predict(ahead), strict=True)
    )  # fmt: skip
    return Forecast(history.end_ms, drivers.zone.key, channel, out, model, learned.start_ms)


def forecast(settings: Settings, *, hours: int = 24, days: int | None = None, at_ms: int | None = None,
             channel: str = "", drivers: Drivers | None = None) -> Forecast:  # fmt: skip
    """The next ``hours`` hours from the hour ``at_ms`` (default: now) falls in, learned from the ``days``
    (default ``STOCKFLOW_FORECAST_HISTORY_DAYS``) days before it."""
    zone = drivers.zone if drivers else shop_zone(settings)
    drivers = drivers or load_drivers(settings, zone)
    start = hour_floor(at_ms if at_ms is not None else int(dt.datetime.now(dt.UTC).timestamp() * 1000))
    window = (days or settings.forecast_history_days) * DAY_MS
    history = orders_per_hour(settings, start - window, start, zone, channel)
    try:
        return forecast_from(history, drivers, hours, channel)
    except NoHistory:
        raise NoHistory(f"no orders placed between {drivers.local(start - window):%Y-%m-%d %H:%M} and "
                        f"{drivers.local(start):%Y-%m-%d %H:%M} ({zone.key}) to learn from") from None  # fmt: skip


def chart_rows(settings: Settings, at_ms: int | None = None, hours: int = 24) -> list[dict[str, Any]]:
    """The web page's forecast card: the last ``hours`` hours' orders beside what the forecast made ``hours``
    hours ago said of them, then the forecast of the next ``hours`` hours."""
    zone = shop_zone(settings)
    drivers = load_drivers(settings, zone)
    now = hour_floor(at_ms if at_ms is not None else int(dt.datetime.now(dt.UTC).timestamp() * 1000))
    span = hours * HOUR_MS
    window = settings.forecast_history_days * DAY_MS
    history = orders_per_hour(settings, now - span - window, now, zone)
    said: dict[int, float] = {}
    ahead: tuple[HourForecast, ...] = ()
    # No order in a window: nothing to forecast from; the card still shows the actuals there are.
    with contextlib.suppress(NoHistory):
        said = {h.hour_ms: h.orders for h in forecast_from(history.between(history.start_ms, now - span), drivers,
                                                          hours).hours}  # fmt: skip
    with contextlib.suppress(NoHistory):
        ahead = forecast_from(history.between(now - window, now), drivers, hours).hours
    rows: list[dict[str, Any]] = []
    for hour_ms, count in zip(history.hours_ms()[-hours:], history.counts[-hours:], strict=True):
        value = said.get(hour_ms)
        rows.append({"hour": f"{drivers.local(hour_ms):%Y-%m-%d %H:%M}", "actual": count,
                     "forecast": None if value is None else round(value, 1)})  # fmt: skip
    for h in ahead:
        rows.append({"hour": f"{drivers.local(h.hour_ms):%Y-%m-%d %H:%M}", "actual": None,
                     "forecast": round(h.orders, 1)})  # fmt: skip
    return rows


def chart_card() -> dict[str, Any]:
    """How the web page lists the forecast card (the shape of a dashboard's ``describe()``)."""
    return {
        "name": "forecast",
        "title": "Orders per hour: forecast beside the actuals",
        "description": "The last 24 hours' orders and what the forecast made 24 hours ago said of them, then the "
        "next 24 hours (stockflow forecast: last week's orders, the promotion calendar, holidays).",
        "chart": {"kind": "line", "x": "hour", "y": ["actual", "forecast"], "series": ""},
        "params": [],
        "source": "/api/forecast",
    }


def calendar_path(settings: Settings) -> Path:
    from agents.forecast.drivers import SAMPLE_CALENDAR

    return settings.promotions_file or SAMPLE_CALENDAR
