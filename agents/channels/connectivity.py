"""The weekly connectivity report's pure logic: the ISO week, incidents, availability, and the report as
Markdown, HTML and a short webhook summary. No I/O, no clock (every function takes the times).

It is built from rows the caller read from ClickHouse's ``connector_calls``
(``agents.channels.report_connectivity``): per endpoint the week's totals, the failed calls by
reason, and the calls per minute (``Minute``), which is what incidents are found in:

- a minute in which an endpoint's calls failed (for good) and none got done is *down*; a run of down
  minutes, minutes without calls not breaking it, is an incident. It starts at the first failed call
  and ends at the first call done after it (open when none came before the end of the week, or now);
- a minute with done and failed calls ends a run at its first done call; when its last call failed, a
  run starts at that call (the failures before it in that minute came between successes);
- a run with fewer than ``min_failures`` failed calls is noise (a lone refused request), not an
  incident.

Availability is the share of the observed part of the week (up to now for the current week) an
endpoint was not in an incident; the success rate is ``outbound.success_rate`` of its calls, as the
status view and the health board count it. Minute buckets keep a week of calls (hundreds of millions at
Double-11 rates) to at most 10,080 rows per endpoint; the price is that a run beginning in a minute
that also had successes is counted from that minute's last failed call, at most a minute late.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from agents.alerting.digest import truncate_utf8
from agents.channels.outbound import success_rate

MINUTE_MS = 60_000
DEFAULT_MIN_FAILURES = 3
_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")


class WeekError(ValueError):
    """A week that is not ``YYYY-Www`` or does not exist."""


@dataclass(frozen=True)
class Week:
    label: str  # 2026-W47
    start_ms: int  # Monday 00:00 in the shop's zone
    end_ms: int  # the next Monday 00:00
    first_day: date
    last_day: date


def parse_week(text: str, zone: str) -> Week:
    """``2026-W47`` as the ISO week's Monday 00:00 to the next Monday 00:00 in ``zone``."""
    match = _WEEK.match(text.strip())
    if not match:
        raise WeekError(f"not an ISO week: {text!r} (write it like 2026-W47)")
    year, number = int(match.group(1)), int(match.group(2))
    try:
        monday = date.fromisocalendar(year, number, 1)
    except ValueError:
        raise WeekError(f"{year} has no week {number}") from None
    tz = ZoneInfo(zone)
    start = datetime.combine(monday, datetime.min.time(), tzinfo=tz)
    end = datetime.combine(monday + timedelta(days=7), datetime.min.time(), tzinfo=tz)
    return Week(f"{year}-W{number:02d}", int(start.timestamp() * 1000), int(end.timestamp() * 1000), monday,
                monday + timedelta(days=6))  # fmt: skip


def week_of(now_ms: int, zone: str) -> str:
    """The label of the ISO week ``now_ms`` falls in, in ``zone``."""
    year, number, _ = datetime.fromtimestamp(now_ms / 1000, ZoneInfo(zone)).isocalendar()
    return f"{year}-W{number:02d}"


# ---- rows in ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Minute:
    """One endpoint's calls that ended in one minute (0 for a time means none of that kind)."""

    channel: str
    endpoint: str
    minute_ms: int
    done: int
    failed: int
    first_ok_ms: int = 0
    last_ok_ms: int = 0
    first_fail_ms: int = 0
    last_fail_ms: int = 0
    error: str = ""  # the minute's last failed call's last error

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Minute:
        def ms(name: str) -> int:
            return int(row[name] or 0)

        return cls(str(row["channel"]), str(row["endpoint"]), ms("minute_ms"), int(row["done"]), int(row["failed"]),
                   ms("first_ok_ms"), ms("last_ok_ms"), ms("first_fail_ms"), ms("last_fail_ms"),
                   str(row.get("error") or ""))  # fmt: skip


@dataclass(frozen=True)
class EndpointTotals:
    """One endpoint's week: its calls as they ended, live and replayed."""

    channel: str
    endpoint: str
    calls: int
    failed: int
    attempts: int
    replayed: int = 0
    replayed_failed: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> EndpointTotals:
        def ms(value: Any) -> float | None:
            # An endpoint that never answered has no latency: chdb says null, a server nan.
            return None if value is None or math.isnan(float(value)) else round(float(value), 1)

        return cls(str(row["channel"]), str(row["endpoint"]), int(row["calls"]), int(row["failed"]),
                   int(row["attempts"]), int(row["replayed"]), int(row["replayed_failed"]), ms(row.get("p50_ms")),
                   ms(row.get("p99_ms")))  # fmt: skip

    @property
    def done(self) -> int:
        return self.calls - self.failed


@dataclass(frozen=True)
class FailedVolume:
    channel: str
    endpoint: str
    reason: str
    calls: int

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> FailedVolume:
        return cls(str(row["channel"]), str(row["endpoint"]), str(row["reason"]), int(row["calls"]))


# ---- incidents -------------------------------------------------------------------------------------


@dataclass
class Incident:
    channel: str
    endpoint: str
    start_ms: int
    end_ms: int | None  # None: still failing at the end of what the report saw
    failed_calls: int
    last_error: str = ""

    def duration_ms(self, until_ms: int) -> int:
        return max((self.end_ms if self.end_ms is not None else until_ms) - self.start_ms, 0)


def incidents(minutes: Iterable[Minute], min_failures: int = DEFAULT_MIN_FAILURES) -> list[Incident]:
    """The runs of failing calls in ``minutes`` (any order, any endpoints); see the module docstring."""
    by_endpoint: dict[tuple[str, str], list[Minute]] = {}
    for m in minutes:
        by_endpoint.setdefault((m.channel, m.endpoint), []).append(m)
    found: list[Incident] = []

    def close(run: Incident) -> None:
        if run.failed_calls >= min_failures:
            found.append(run)

    for (channel, endpoint), rows in sorted(by_endpoint.items()):
        run: Incident | None = None
        for m in sorted(rows, key=lambda m: m.minute_ms):
            if run is not None:
                if m.done == 0:
                    run.failed_calls += m.failed
                    run.last_error = m.error or run.last_error
                    continue
                run.end_ms = m.first_ok_ms
                close(run)
                run = None
            if m.failed and m.done == 0:
                run = Incident(channel, endpoint, m.first_fail_ms, None, m.failed, m.error)
            elif m.failed and m.last_fail_ms > m.last_ok_ms:
                # Only the minute's last failure is known to come after its last success.
                run = Incident(channel, endpoint, m.last_fail_ms, None, 1, m.error)
        if run is not None:
            close(run)
    return sorted(found, key=lambda i: (i.start_ms, i.channel, i.endpoint))


def downtime_ms(found: Iterable[Incident], start_ms: int, end_ms: int) -> int:
    """How much of ``[start_ms, end_ms)`` the incidents cover (they never overlap for one endpoint)."""
    total = 0
    for i in found:
        lo = max(i.start_ms, start_ms)
        hi = min(i.end_ms if i.end_ms is not None else end_ms, end_ms)
        total += max(hi - lo, 0)
    return total


# ---- the report ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointLine:
    channel: str
    endpoint: str
    calls: int
    success_rate: float | None
    failed: int
    retried: int
    p50_ms: float | None
    p99_ms: float | None
    availability: float
    incidents: int
    downtime_ms: int


@dataclass
class ConnectivityReport:
    week: Week
    observed_to_ms: int  # the end of the week, or now for the week in progress
    min_failures: int
    endpoints: list[EndpointLine]
    incidents: list[Incident]
    failed_volume: list[FailedVolume]
    replays: list[EndpointTotals] = field(default_factory=list)

    @property
    def failed_calls(self) -> int:
        return sum(e.failed for e in self.endpoints)

    @property
    def replayed_calls(self) -> int:
        return sum(r.replayed for r in self.replays)

    def to_dict(self) -> dict[str, Any]:
        return {
            "week": self.week.label, "from_ms": self.week.start_ms, "to_ms": self.week.end_ms,
            "observed_to_ms": self.observed_to_ms, "min_failures": self.min_failures,
            "endpoints": [e.__dict__ for e in self.endpoints],
            "incidents": [{**i.__dict__, "duration_ms": i.duration_ms(self.observed_to_ms)} for i in self.incidents],
            "failed_volume": [f.__dict__ for f in self.failed_volume],
            "replays": [{"channel": r.channel, "endpoint": r.endpoint, "replayed": r.replayed,
                         "done": r.replayed - r.replayed_failed, "still_failing": r.replayed_failed}
                        for r in self.replays],
        }  # fmt: skip


def build_report(
    week: Week,
    now_ms: int,
    totals: Iterable[EndpointTotals],
    minutes: Iterable[Minute],
    failed_volume: Iterable[FailedVolume],
    min_failures: int = DEFAULT_MIN_FAILURES,
) -> ConnectivityReport:
    """The week's report from its rows; ``now_ms`` cuts a week still in progress."""
    observed_to = min(week.end_ms, max(now_ms, week.start_ms))
    span = max(observed_to - week.start_ms, 1)
    found = [i for i in incidents(minutes, min_failures) if i.start_ms < observed_to]
    lines = []
    for t in sorted(totals, key=lambda t: (t.channel, t.endpoint)):
        own = [i for i in found if (i.channel, i.endpoint) == (t.channel, t.endpoint)]
        down = downtime_ms(own, week.start_ms, observed_to)
        lines.append(EndpointLine(t.channel, t.endpoint, t.calls, success_rate(t.done, t.failed), t.failed,
                                  t.attempts - t.calls, t.p50_ms, t.p99_ms, round(1 - down / span, 6), len(own),
                                  down))  # fmt: skip
    volume = sorted(failed_volume, key=lambda f: (-f.calls, f.channel, f.endpoint, f.reason))
    replays = [t for t in totals if t.replayed]
    return ConnectivityReport(week, observed_to, min_failures, lines, found, volume,
                              sorted(replays, key=lambda t: (t.channel, t.endpoint)))  # fmt: skip


# ---- rendering -------------------------------------------------------------------------------------


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def duration(ms: int) -> str:
    """``1 h 05 min``, ``12 min 30 s``, ``40 s``."""
    seconds = ms // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _when(ms: int | None, zone: ZoneInfo) -> str:
    return "ongoing" if ms is None else datetime.fromtimestamp(ms / 1000, zone).strftime("%a %m-%d %H:%M:%S")


def tables(report: ConnectivityReport, zone: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report as (title, header, rows) of text: what both the Markdown and the HTML show."""
    tz = ZoneInfo(zone)
    until = report.observed_to_ms
    endpoints = [[e.channel, e.endpoint, str(e.calls), _pct(e.success_rate), _pct(e.availability, 3), str(e.incidents),
                  duration(e.downtime_ms), str(e.failed), str(e.retried), _ms(e.p50_ms), _ms(e.p99_ms)]
                 for e in report.endpoints]  # fmt: skip
    found = [[i.channel, i.endpoint, _when(i.start_ms, tz), _when(i.end_ms, tz), duration(i.duration_ms(until)),
              str(i.failed_calls), i.last_error[:160]] for i in report.incidents]  # fmt: skip
    volume = [[f.channel, f.endpoint, f.reason, str(f.calls)] for f in report.failed_volume]
    replays = [[r.channel, r.endpoint, str(r.replayed), str(r.replayed - r.replayed_failed), str(r.replayed_failed)]
               for r in report.replays]  # fmt: skip
    return [
        ("Availability per endpoint", ["channel", "endpoint", "calls", "success rate", "availability", "incidents",
                                       "downtime", "failed", "retried", "p50 ms", "p99 ms"], endpoints),
        (f"Incidents (runs of at least {report.min_failures} failed calls)",
         ["channel", "endpoint", "start", "end", "lasted", "failed calls", "last error"], found),
        ("Failed calls by reason", ["channel", "endpoint", "reason", "calls"], volume),
        ("Replays (stockflow connectors replay)", ["channel", "endpoint", "replayed", "done", "still failing"],
         replays),
    ]  # fmt: skip


def _title(report: ConnectivityReport, zone: str) -> str:
    w = report.week
    return f"Connectivity report {w.label} ({w.first_day} to {w.last_day}, {zone})"


def _md_cell(text: str) -> str:
    # A marketplace's answer may hold anything: a pipe would split the cell, a newline the row.
    return re.sub(r"\s+", " ", text).replace("|", "\\|")


def render_markdown(report: ConnectivityReport, zone: str) -> str:
    out = [f"# {_title(report, zone)}", ""]
    if report.observed_to_ms < report.week.end_ms:
        out += [f"Week in progress: up to {_when(report.observed_to_ms, ZoneInfo(zone))}.", ""]
    for title, header, rows in tables(report, zone):
        out += [f"## {title}", ""]
        if not rows:
            out += ["none", ""]
            continue
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
        out.append("")
    return "\n".join(out)


def render_html(report: ConnectivityReport, zone: str) -> str:
    """A standalone page; every value is escaped (answers and errors are the marketplaces' text)."""
    e = html.escape
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(_title(report, zone))}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:24px;color:#1d2330}table{border-collapse:collapse;"
        "margin-bottom:20px;font-size:13px}th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #e3e6eb}"
        "h2{font-size:16px}</style></head><body>", f"<h1>{e(_title(report, zone))}</h1>",
    ]  # fmt: skip
    if report.observed_to_ms < report.week.end_ms:
        parts.append(f"<p>Week in progress: up to {e(_when(report.observed_to_ms, ZoneInfo(zone)))}.</p>")
    for title, header, rows in tables(report, zone):
        parts.append(f"<h2>{e(title)}</h2>")
        if not rows:
            parts.append("<p>none</p>")
            continue
        parts.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def summary(report: ConnectivityReport, zone: str, max_bytes: int, *, worst: int = 5) -> str:
    """The webhook's short version (WeCom markdown), within ``max_bytes`` of UTF-8: the totals, the least
    available endpoints and the longest incidents."""
    until = report.observed_to_ms
    down = sum(i.duration_ms(until) for i in report.incidents)
    lines = [
        f"**{_title(report, zone)}**",
        f"> calls {sum(e.calls for e in report.endpoints)}, failed {report.failed_calls}, "
        f"incidents {len(report.incidents)} ({duration(down)} down), replayed {report.replayed_calls}",
    ]
    by_availability: Sequence[EndpointLine] = sorted(report.endpoints, key=lambda e: (e.availability, e.channel))
    for line in by_availability[:worst]:
        lines.append(f"- {line.channel} {line.endpoint}: available {_pct(line.availability, 3)}, success "
                     f"{_pct(line.success_rate)}, {line.incidents} incident(s), {line.failed} failed")  # fmt: skip
    longest = sorted(report.incidents, key=lambda i: -i.duration_ms(until))[:worst]
    tz = ZoneInfo(zone)
    for i in longest:
        lines.append(f"- incident {i.channel} {i.endpoint} {_when(i.start_ms, tz)} for {duration(i.duration_ms(until))}"
                     f": {_md_cell(i.last_error)[:120]}")  # fmt: skip
    return truncate_utf8("\n".join(lines), max_bytes)
