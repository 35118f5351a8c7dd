"""The refund reports without ClickHouse: months in the shop's time zone, and the CSV and Excel files."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from openpyxl import load_workbook

from agents.refunds import reports
from streams.settings import Settings

SHOP = "Asia/Shanghai"


def utc_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def test_a_month_runs_from_midnight_on_the_first_in_the_shops_zone() -> None:
    november = reports.month_range("2026-11", SHOP)
    assert (november.start_ms, november.end_ms) == (utc_ms("2026-10-31T16:00"), utc_ms("2026-11-30T16:00"))
    december = reports.month_range(" 2025-12 ", SHOP)
    assert (december.name, december.end_ms) == ("2025-12", utc_ms("2025-12-31T16:00"))
    berlin = reports.month_range("2026-03", "Europe/Berlin")  # summer time starts on the 29th: the end is +02:00
    assert (berlin.start_ms, berlin.end_ms) == (utc_ms("2026-02-28T23:00"), utc_ms("2026-03-31T22:00"))
    # 00:30 on 1 December in Shanghai is still 30 November in UTC: the shop's month has turned.
    assert reports.current_month(utc_ms("2026-11-30T16:30"), SHOP) == "2026-12"
    assert reports.current_month(utc_ms("2026-11-30T15:59"), SHOP) == "2026-11"


@pytest.mark.parametrize("text", ["2026-13", "2026-00", "2026-1", "26-11", "2026/11", "1999-12", "november", ""])
def test_anything_but_a_month_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a month"):
        reports.month_range(text, SHOP)


def test_report_parameters_cover_the_month_and_stop_at_now_while_it_runs() -> None:
    november = reports.month_range("2026-11", SHOP)
    now = utc_ms("2026-11-26T03:00")
    assert reports.report_params(november, now) == {"from_ms": str(november.start_ms), "to_ms": str(november.end_ms),
                                                    "now_ms": str(now), "tz": SHOP}  # fmt: skip
    assert reports.report_params(november, now, "jd")["channel"] == "jd"
    assert november.as_of_ms(now) == now and november.as_of_ms(now + 10**11) == november.end_ms
    assert reports.describe_as_of(november, now) == "as of 2026-11-26 11:00 Asia/Shanghai"
    with pytest.raises(ValueError, match="2026-12 has not begun"):
        reports.report_params(reports.month_range("2026-12", SHOP), now)


def test_the_shops_zone_is_the_refund_rules_zone(tmp_path: Path) -> None:
    assert reports.shop_zone(Settings()) == SHOP
    rules = tmp_path / "rules.toml"
    rules.write_text('[default]\ntimezone = "Europe/Berlin"\n', encoding="utf-8")
    assert reports.shop_zone(Settings(refund_rules_file=rules)) == "Europe/Berlin"


ROWS = [
    {"refund_id": "jd:R2", "channel": "jd", "order_id": "jd:O2", "exception": "qc_late", "stage": "return_received",
     "entered_at": "2025-11-11 16:00:00", "left_at": "2025-11-12 22:00:00", "hours_spent": 30.0,
     "limit_hours": 24.0, "current_state": "refunding", "amount_yuan": 150.0},
    {"refund_id": "tmall:R3", "channel": "tmall", "order_id": "tmall:O3", "exception": "respond_hanging",
     "stage": "reviewing", "entered_at": "2025-11-10 12:00:00", "left_at": "", "hours_spent": 492.0,
     "limit_hours": 2.0, "current_state": "reviewing", "amount_yuan": 120.0},
]  # fmt: skip


def test_csv_has_the_dashboards_columns_even_with_no_rows_and_refuses_a_column_it_does_not_know() -> None:
    out = io.StringIO()
    reports.write_csv(out, reports.EXCEPTION_COLUMNS, ROWS)
    lines = out.getvalue().splitlines()
    assert lines[0] == ",".join(reports.EXCEPTION_COLUMNS) and len(lines) == 3
    assert lines[2].startswith("tmall:R3,tmall,tmall:O3,respond_hanging,reviewing,2025-11-10 12:00:00,,492.0,")
    empty = io.StringIO()
    reports.write_csv(empty, reports.MISMATCH_COLUMNS, [])
    assert empty.getvalue() == ",".join(reports.MISMATCH_COLUMNS) + "\n"
    with pytest.raises(ValueError, match="surprise"):
        reports.write_csv(io.StringIO(), reports.EXCEPTION_COLUMNS, [{**ROWS[0], "surprise": 1}])


def test_a_workbook_has_one_sheet_per_table_with_a_bold_frozen_header_and_numbers_as_numbers(tmp_path: Path) -> None:
    path = tmp_path / "out" / "report.xlsx"
    reports.write_xlsx(path, [
        reports.Sheet("exceptions 2025-11", reports.EXCEPTION_COLUMNS, ROWS),
        reports.Sheet("per channel: 2025/11 [all channels, every refund]", reports.RECONCILIATION_COLUMNS, []),
    ])  # fmt: skip
    book = load_workbook(path)
    assert book.sheetnames == ["exceptions 2025-11", "per channel  2025 11  all chann"]
    sheet = book["exceptions 2025-11"]
    values = [list(row) for row in sheet.iter_rows(values_only=True)]
    assert values[0] == list(reports.EXCEPTION_COLUMNS)
    assert values[2][:3] == ["tmall:R3", "tmall", "tmall:O3"] and values[2][7] == 492.0
    assert values[2][6] is None  # an empty left_at is an empty cell
    assert sheet["A1"].font.bold and sheet.freeze_panes == "A2" and sheet.auto_filter.ref == "A1:K3"
    empty = book["per channel  2025 11  all chann"]
    assert [list(row) for row in empty.iter_rows(values_only=True)] == [list(reports.RECONCILIATION_COLUMNS)]
    with pytest.raises(ValueError, match="surprise"):
        reports.write_xlsx(tmp_path / "bad.xlsx", [reports.Sheet("x", reports.EXCEPTION_COLUMNS, [{"surprise": 1}])])
