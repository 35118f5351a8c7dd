"""What is known ahead about any hour: the promotion calendar, holidays and working days, other hourly drivers.

Reads: the promotion calendar (``agents/forecast/config/promotions.toml`` or ``STOCKFLOW_PROMOTIONS_FILE``,
TOML or CSV) and an optional CSV of hourly driver values (``STOCKFLOW_FORECAST_DRIVERS_FILE``). Holidays
and working days come from the ``holidays`` package (China's by default, with its weekend working days,
调休), so a Saturday that is a working day counts as one and a holiday Tuesday as a day off.

A promotion's ``intensity`` is its planned effect: the orders of an hour it covers as a multiple of what
that hour would bring without it (1: none, 2: twice, 16: a Double-11 midnight). Where promotions overlap
the strongest one counts; one that covers part of an hour counts for that part. Calendar times without an
offset are in the shop's time zone.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

import holidays

from agents.forecast.series import HOUR_MS, parse_time
from streams.resources import packaged

SAMPLE_CALENDAR = packaged("agents.forecast", "config", "promotions.toml")
DEFAULT_COUNTRY = "CN"


@dataclass(frozen=True)
class Promotion:
    name: str
    start_ms: int
    end_ms: int
    intensity: float

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a promotion needs a name")
        if self.end_ms <= self.start_ms:
            raise ValueError(f"promotion {self.name!r} ends before it starts")
        if not (math.isfinite(self.intensity) and self.intensity > 0):
            raise ValueError(f"promotion {self.name!r}: intensity must be a number above 0, not {self.intensity}")

    @property
    def key(self) -> str:
        """Tells apart two runs of a promotion with the same name."""
        return f"{self.name}@{self.start_ms}"


@dataclass(frozen=True)
class Calendar:
    promotions: tuple[Promotion, ...]
    country: str = DEFAULT_COUNTRY  # the holidays package's code whose holidays and working days apply


def _moment(value: Any, zone: ZoneInfo, what: str) -> int:
    if isinstance(value, dt.datetime):
        return int((value if value.tzinfo else value.replace(tzinfo=zone)).timestamp() * 1000)
    if isinstance(value, dt.date):
        return int(dt.datetime.combine(value, dt.time(), zone).timestamp() * 1000)
    if isinstance(value, str):
        try:
            return parse_time(value, zone)
        except ValueError:
            pass
    raise ValueError(f"{what}: not a time: {value!r}")


def _promotion(entry: dict[str, Any], zone: ZoneInfo, where: str) -> Promotion:
    missing = {"name", "start", "end", "intensity"} - set(entry)
    if missing:
        raise ValueError(f"{where}: missing {', '.join(sorted(missing))}")
    try:
        intensity = float(entry["intensity"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: intensity must be a number, not {entry['intensity']!r}") from None
    start, end = _moment(entry["start"], zone, where), _moment(entry["end"], zone, where)
    return Promotion(str(entry["name"]).strip(), start, end, intensity)


def load_calendar(path: Path | None, zone: ZoneInfo) -> Calendar:
    """The calendar in ``path`` (``.csv``: columns name,start,end,intensity; else TOML ``[[promotion]]``
    tables and an optional top-level ``holidays`` country code); None: the sample stockflow ships."""
    path = path or SAMPLE_CALENDAR
    try:
        if path.suffix.lower() == ".csv":
            with open(path, encoding="utf-8", newline="") as fh:
                rows = list(csv.DictReader(fh))
            return Calendar(tuple(_promotion(row, zone, f"{path}:{n + 2}") for n, row in enumerate(rows)))
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        entries = data.get("promotion", [])
        promotions = tuple(_promotion(e, zone, f"{path}: promotion {n + 1}") for n, e in enumerate(entries))
        country = str(data.get("holidays", DEFAULT_COUNTRY))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"promotion calendar {path}: {exc}") from None
    if country not in holidays.list_supported_countries():
        raise ValueError(f"{path}: holidays = {country!r} is not a country code the holidays package knows")
    return Calendar(promotions, country)


def write_calendar_csv(promotions: Iterable[Promotion], zone: ZoneInfo, out: IO[str]) -> None:
    def local(ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, zone).isoformat()

    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["name", "start", "end", "intensity"])
    for p in promotions:
        writer.writerow([p.name, local(p.start_ms), local(p.end_ms), f"{p.intensity:g}"])


@dataclass(frozen=True)
class External:
    """Hourly values of drivers outside the calendar (weather, a competitor's event), one column each."""

    names: tuple[str, ...] = ()
    values: dict[int, tuple[float, ...]] = field(default_factory=dict)

    def at(self, hour_ms: int) -> tuple[float, ...]:
        # An hour the file does not name has none of the event: 0, so give values relative to normal
        # (rain in mm, degrees above the season's mean, 1 while a competitor's sale runs).
        return self.values.get(hour_ms, (0.0,) * len(self.names))


def read_external(lines: Iterable[str], zone: ZoneInfo) -> External:
    """Drivers from a CSV with a column ``hour`` (ISO, on the hour) and one numeric column per driver."""
    reader = csv.DictReader(lines)
    names = tuple(n for n in (reader.fieldnames or ()) if n != "hour")
    if not reader.fieldnames or "hour" not in reader.fieldnames or not names:
        raise ValueError("the drivers CSV needs a column hour and at least one driver column")
    values: dict[int, tuple[float, ...]] = {}
    for line, row in enumerate(reader, start=2):
        try:
            at = parse_time(row["hour"], zone)
            values[at] = tuple(float(row[n] or 0.0) for n in names)
        except (TypeError, ValueError):
            raise ValueError(f"drivers CSV line {line}: not an ISO hour and numbers: {row}") from None
        if at % HOUR_MS or not all(math.isfinite(v) for v in values[at]):
            raise ValueError(f"drivers CSV line {line}: {row['hour']} is not on the hour, or a value is not finite")
    return External(names, values)


def load_external(path: Path | None, zone: ZoneInfo) -> External:
    if path is None:
        return External()
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return read_external(fh, zone)
    except OSError as exc:
        raise ValueError(f"drivers file {path}: {exc}") from None


@dataclass(frozen=True, slots=True)
class HourDrivers:
    hour_ms: int
    hour_of_day: int  # local
    day_off: bool  # a weekend that is not a working day, or a public holiday
    holiday: bool  # a public holiday (or a day off in lieu of one)
    intensity: float  # the planned effect of the strongest promotion on this hour, 1.0: none
    promotion: str  # that promotion's key, "" for none
    extra: tuple[float, ...] = ()


class Drivers:
    """The drivers of any hour: a calendar, a time zone, and optionally external columns."""

    def __init__(self, calendar: Calendar, zone: ZoneInfo, external: External | None = None) -> None:
        self.zone = zone
        self.promotions = tuple(sorted(calendar.promotions, key=lambda p: p.start_ms))
        self.external = external or External()
        self._holidays = holidays.country_holidays(calendar.country)

    @property
    def extra_names(self) -> tuple[str, ...]:
        return self.external.names

    def names(self) -> dict[str, str]:
        """Promotion keys to names."""
        return {p.key: p.name for p in self.promotions}

    def local(self, hour_ms: int) -> dt.datetime:
        return dt.datetime.fromtimestamp(hour_ms / 1000, self.zone)

    def at(self, hour_ms: int) -> HourDrivers:
        local = self.local(hour_ms)
        day = local.date()
        intensity, key = 1.0, ""
        for p in self.promotions:
            if p.start_ms >= hour_ms + HOUR_MS:
                break
            covered = min(p.end_ms, hour_ms + HOUR_MS) - max(p.start_ms, hour_ms)
            if covered <= 0:
                continue
            effect = 1.0 + (p.intensity - 1.0) * covered / HOUR_MS
            if abs(effect - 1.0) > abs(intensity - 1.0):
                intensity, key = effect, p.key
        return HourDrivers(hour_ms, local.hour, not self._holidays.is_working_day(day), day in self._holidays,
                           intensity, key, self.external.at(hour_ms))  # fmt: skip

    def over(self, hours_ms: Sequence[int]) -> list[HourDrivers]:
        return [self.at(h) for h in hours_ms]
