"""The refund reports of ``stockflow refunds exceptions`` and ``stockflow refunds reconcile``: a month in the
shop's time zone turned into the time range the refund dashboards take, and their rows written as CSV or as
an Excel workbook.

Reads: the refund rules' time zone (``agents/refunds/config/refund_rules.toml`` or
``STOCKFLOW_REFUND_RULES_FILE``). Writes: only the file or stream it is given. The rows come from the
dashboards ``refund_exceptions``, ``refund_reconciliation`` and ``refund_mismatches``
(``agents/analytics/dashboards/``), asked by the command through ``agents.analytics.queries.run``.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from streams.settings import Settings

# The columns of each dashboard, in its order: a file has its header even when the month has no rows,
# and a dashboard that gains a column fails the writers here instead of slipping into files unnoticed.
EXCEPTION_COLUMNS = ("refund_id", "channel", "order_id", "exception", "stage", "entered_at", "left_at",
                     "hours_spent", "limit_hours", "current_state", "amount_yuan")  # fmt: skip
RECONCILIATION_COLUMNS = ("channel", "instructed", "issued", "settled", "instructed_yuan", "issued_yuan",
                          "settled_yuan", "not_issued", "issue_failed", "unsettled", "unsettled_overdue",
                          "amount_mismatch", "settled_unknown")  # fmt: skip
MISMATCH_COLUMNS = ("refund_id", "channel", "order_id", "mismatch", "instructed_yuan", "issued_yuan",
                    "settled_yuan", "instructed_at", "issued_at", "settled_at", "current_state", "detail")  # fmt: skip
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
FIRST_YEAR = 2000  # the sink keeps no event before 2000-01-01


def shop_zone(settings: Settings) -> str:
    """The shop's time zone: the refund rules' (where the 7-day window, and a month, ends)."""
    from agents.refunds.run_refunds import refund_rules

    return refund_rules(settings).default.timezone


@dataclass(frozen=True)
class Month:
    name: str  # YYYY-MM
    zone: str
    start_ms: int  # the 1st, 00:00 in the zone
    end_ms: int  # the next month's 1st, 00:00 in the zone

    def as_of_ms(self, now_ms: int) -> int:
        """The moment the report describes: the month's end, or now while the month runs."""
        return min(self.end_ms, now_ms)


def _start_of(year: int, month: int, zone: ZoneInfo) -> int:
    return int(dt.datetime(year, month, 1, tzinfo=zone).timestamp() * 1000)


def month_range(text: str, zone: str) -> Month:
    """``YYYY-MM`` as the month's first and last instant in ``zone`` (epoch ms, end exclusive)."""
    found = _MONTH.match(text.strip())
    if not found or int(found.group(1)) < FIRST_YEAR:
        raise ValueError(f"not a month: {text!r} (use YYYY-MM, e.g. 2026-11)")
    year, month = int(found.group(1)), int(found.group(2))
    tz = ZoneInfo(zone)
    next_year, next_month0 = divmod(year * 12 + month, 12)  # the next month, counted from 0
    return Month(f"{year:04d}-{month:02d}", zone, _start_of(year, month, tz), _start_of(next_year, next_month0 + 1, tz))


def current_month(now_ms: int, zone: str) -> str:
    return dt.datetime.fromtimestamp(now_ms / 1000, ZoneInfo(zone)).strftime("%Y-%m")


def report_params(month: Month, now_ms: int, channel: str = "") -> dict[str, str]:
    """The dashboard parameters of a monthly report: the month as the range, times shown in its zone."""
    if month.start_ms > now_ms:
        raise ValueError(f"{month.name} has not begun in {month.zone}")
    params = {"from_ms": str(month.start_ms), "to_ms": str(month.end_ms), "now_ms": str(now_ms), "tz": month.zone}
    if channel:
        params["channel"] = channel
    return params


def describe_as_of(month: Month, now_ms: int) -> str:
    moment = dt.datetime.fromtimestamp(month.as_of_ms(now_ms) / 1000, ZoneInfo(month.zone))
    return f"as of {moment:%Y-%m-%d %H:%M} {month.zone}"


# ---- files ------------------------------------------------------------------------------------------
def write_csv(out: IO[str], columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


@dataclass(frozen=True)
class Sheet:
    title: str
    columns: Sequence[str]
    rows: Sequence[Mapping[str, Any]]


_SHEET_FORBIDDEN = re.compile(r"[\[\]:*?/\\]")


def write_xlsx(path: Path, sheets: Sequence[Sheet]) -> None:
    """One worksheet per sheet: a bold, frozen, filterable header, then the rows with numbers kept numbers."""
    from openpyxl import Workbook
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    book = Workbook()
    book.remove(book.active)
    for sheet in sheets:
        unknown = [c for row in sheet.rows for c in row if c not in sheet.columns]
        if unknown:
            raise ValueError(f"{sheet.title}: columns {sorted(set(unknown))} are not in {list(sheet.columns)}")
        ws = book.create_sheet(_SHEET_FORBIDDEN.sub(" ", sheet.title)[:31])
        ws.append(list(sheet.columns))
        for cell in ws[1]:
            cell.font = Font(bold=True)
        for row in sheet.rows:
            ws.append([row.get(c) for c in sheet.columns])
        ws.freeze_panes = "A2"
        ws.auto_filter.ref = ws.dimensions
        for i, column in enumerate(sheet.columns, start=1):
            widest = max([len(column), *(len(str(row.get(column, ""))) for row in sheet.rows)])
            ws.column_dimensions[get_column_letter(i)].width = min(widest + 2, 60)
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)
