"""Orders per hour as one contiguous series, and its CSV form.

A series is a start (epoch ms, on an hour) and one count per hour from there, with no gaps: an hour
nobody ordered in is 0, not missing. Hours are absolute (UTC-based epoch hours); what a local hour,
day or weekday is comes from the shop's time zone wherever it matters (``drivers``, ``backtest``).

The CSV form (``stockflow forecast backtest --history``) is a header ``hour,orders`` and one row per hour,
``hour`` an ISO time (a time without an offset is in the given zone). Rows may come in any order; hours
between the first and the last that no row names count 0 orders.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import IO
from zoneinfo import ZoneInfo

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def hour_floor(ms: int) -> int:
    """The start of the hour ``ms`` falls in."""
    return ms - ms % HOUR_MS


@dataclass(frozen=True)
class HourlySeries:
    start_ms: int
    counts: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.start_ms % HOUR_MS:
            raise ValueError(f"a series starts on an hour, not at {self.start_ms}")

    @property
    def end_ms(self) -> int:
        """The end of the last hour (exclusive)."""
        return self.start_ms + len(self.counts) * HOUR_MS

    def hours_ms(self) -> list[int]:
        return [self.start_ms + i * HOUR_MS for i in range(len(self.counts))]

    def index(self, hour_ms: int) -> int:
        if hour_ms % HOUR_MS or not self.start_ms <= hour_ms <= self.end_ms:
            raise ValueError(f"{hour_ms} is not an hour boundary of the series")
        return (hour_ms - self.start_ms) // HOUR_MS

    def between(self, from_ms: int, to_ms: int) -> HourlySeries:
        """The hours in [from_ms, to_ms), which must lie within the series."""
        return HourlySeries(from_ms, self.counts[self.index(from_ms) : self.index(to_ms)])

    def total(self) -> float:
        return float(sum(self.counts))


def from_hours(counts: Mapping[int, float], start_ms: int, end_ms: int) -> HourlySeries:
    """The series over [start_ms, end_ms) from counts keyed by hour start; hours not named count 0."""
    start, end = hour_floor(start_ms), hour_floor(end_ms)
    return HourlySeries(start, tuple(float(counts.get(h, 0.0)) for h in range(start, end, HOUR_MS)))


def parse_time(text: str, zone: ZoneInfo) -> int:
    """Epoch ms of an ISO time; one without an offset is in ``zone``."""
    moment = dt.datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return int(moment.timestamp() * 1000)


def read_csv(lines: Iterable[str], zone: ZoneInfo) -> HourlySeries:
    """A series from ``hour,orders`` rows; an hour not on the hour, a negative count or no rows is an error."""
    counts: dict[int, float] = {}
    reader = csv.DictReader(lines)
    if not reader.fieldnames or not {"hour", "orders"} <= set(reader.fieldnames):
        raise ValueError("the history CSV needs the columns hour,orders")
    for line, row in enumerate(reader, start=2):
        try:
            at, orders = parse_time(row["hour"], zone), float(row["orders"])
        except (TypeError, ValueError):
            raise ValueError(f"line {line}: not an ISO hour and a number: {row}") from None
        if at % HOUR_MS or orders < 0:
            raise ValueError(f"line {line}: {row['hour']} is not on the hour or {orders} is negative")
        counts[at] = counts.get(at, 0.0) + orders
    if not counts:
        raise ValueError("the history CSV has no rows")
    return from_hours(counts, min(counts), max(counts) + HOUR_MS)


def write_csv(series: HourlySeries, zone: ZoneInfo, out: IO[str]) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["hour", "orders"])
    for hour_ms, count in zip(series.hours_ms(), series.counts, strict=True):
        local = dt.datetime.fromtimestamp(hour_ms / 1000, zone)
        writer.writerow([local.isoformat(), f"{count:g}"])
