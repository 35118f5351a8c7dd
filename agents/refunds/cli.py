"""Refund commands: one refund's state now (``stockflow refunds show``), the monthly exception list
(``stockflow refunds exceptions``) and the issued-vs-settled reconciliation (``stockflow refunds reconcile``).

``show`` asks the worker that owns the refund's order; the two reports ask ClickHouse through the refund
dashboards (``agents.analytics.queries.run``: the running sink with embedded ClickHouse, else ClickHouse
directly) and write a table, CSV or an Excel workbook (``agents.refunds.reports``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from agents.refunds import reports
from streams.cli import console, fail, worker_view
from streams.settings import Settings

refunds = typer.Typer(
    no_args_is_help=True, help="Refunds: one refund now, the monthly exception list, issued vs settled."
)

MONTH_HELP = "YYYY-MM, in the shop's time zone (the refund rules'); default: this month so far."


@refunds.command("show")
def show(
    order_id: str = typer.Argument(..., help="<channel>:<channel_order_id>"),
    channel_refund_id: str = typer.Argument(..., help="the channel's refund id"),
) -> None:
    """A refund's state, stage times, approval and return leg, from the worker that owns its order."""
    worker_view(f"/orders/{order_id}/refunds/{channel_refund_id}")


def _report_params(settings: Settings, month: str, channel: str, output_format: str,
                   formats: tuple[str, ...]) -> tuple[reports.Month, dict[str, str], int]:  # fmt: skip
    if output_format not in formats:
        fail(f"--format must be {', '.join(formats[:-1])} or {formats[-1]}, not {output_format!r}")
    now_ms = int(time.time() * 1000)
    try:
        zone = reports.shop_zone(settings)
        period = reports.month_range(month or reports.current_month(now_ms, zone), zone)
        params = reports.report_params(period, now_ms, channel)
    except ValueError as exc:
        fail(str(exc))
    return period, params, now_ms


def _rows(settings: Settings, dashboard: str, params: dict[str, str]) -> list[dict[str, Any]]:
    from agents.analytics import queries

    try:
        return queries.run(settings, dashboard, params)[1]
    except queries.DashboardError as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - ClickHouse (or the sink holding it) unreachable or refusing
        fail(f"could not query ClickHouse at {settings.clickhouse_url_shown}: {exc}")
    return []


def _table(title: str, columns: tuple[str, ...], rows: list[dict[str, Any]], caption: str) -> Table:
    table = Table(*columns, title=title, caption=caption)
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    return table


@refunds.command("exceptions")
def exceptions(
    month: str = typer.Option("", "--month", help=MONTH_HELP),
    channel: str = typer.Option("", help="One channel; empty: all."),
    output_format: str = typer.Option("table", "--format", help="table, csv or xlsx."),
    output: str = typer.Option(
        "", "--output", "-o", help="File to write (csv: default stdout; xlsx: refund-exceptions-YYYY-MM.xlsx)."
    ),
) -> None:
    """The monthly refund-exception list: every refund past an SOP limit in the month, one row per refund and
    limit (customer service answering, warehouse QC, the marketplace settling), including refunds still hanging
    at the month's end (or now) and refunds paid out but never settled. Limits: STOCKFLOW_REFUND_RESPOND_S,
    STOCKFLOW_REFUND_QC_S, STOCKFLOW_REFUND_SETTLE_S."""
    settings = Settings()
    period, params, now_ms = _report_params(settings, month, channel, output_format, ("table", "csv", "xlsx"))
    rows = _rows(settings, "refund_exceptions", params)
    title = f"Refund exceptions {period.name}" + (f" ({channel})" if channel else "")
    if output_format == "table":
        caption = f"{len(rows)} exceptions, {reports.describe_as_of(period, now_ms)}"
        console.print(_table(title, reports.EXCEPTION_COLUMNS, rows, caption))
    elif output_format == "csv":
        _write_csv(output, reports.EXCEPTION_COLUMNS, rows)
    else:
        path = Path(output or f"refund-exceptions-{period.name}.xlsx")
        sheet = reports.Sheet(f"exceptions {period.name}", reports.EXCEPTION_COLUMNS, rows)
        _saving(path, lambda: reports.write_xlsx(path, [sheet]))
        console.print(f"wrote {len(rows)} exceptions to {path}")


@refunds.command("reconcile")
def reconcile(
    month: str = typer.Option("", "--month", help=MONTH_HELP),
    channel: str = typer.Option("", help="One channel; empty: all."),
    output_format: str = typer.Option("table", "--format", help="table, json, csv (the mismatches) or xlsx (both)."),
    output: str = typer.Option(
        "", "--output", "-o", help="File to write (default stdout; xlsx: refund-reconciliation-YYYY-MM.xlsx)."
    ),
) -> None:
    """Refunds paid out in the month, issued vs settled per channel as they stood at the month's end (or now), and
    every mismatch: a call failed and waiting to be replayed, issued and not settled in time, settled without an
    issue or a payout, settled for another amount."""
    settings = Settings()
    formats = ("table", "json", "csv", "xlsx")
    period, params, now_ms = _report_params(settings, month, channel, output_format, formats)
    per_channel = _rows(settings, "refund_reconciliation", params)
    mismatches = _rows(settings, "refund_mismatches", params)
    if output_format == "table":
        as_of = reports.describe_as_of(period, now_ms)
        console.print(_table(f"Refunds issued vs settled {period.name}", reports.RECONCILIATION_COLUMNS, per_channel,
                             as_of))  # fmt: skip
        console.print(_table(f"Reconciliation mismatches {period.name}", reports.MISMATCH_COLUMNS, mismatches,
                             f"{len(mismatches)} mismatches"))  # fmt: skip
    elif output_format == "json":
        answer = {"month": period.name, "zone": period.zone, "channels": per_channel, "mismatches": mismatches}
        text = json.dumps(answer, ensure_ascii=False, indent=2) + "\n"
        if output:
            _saving(Path(output), lambda: Path(output).write_text(text, encoding="utf-8"))
        else:
            sys.stdout.write(text)
    elif output_format == "csv":
        _write_csv(output, reports.MISMATCH_COLUMNS, mismatches)
    else:
        path = Path(output or f"refund-reconciliation-{period.name}.xlsx")
        sheets = [reports.Sheet(f"per channel {period.name}", reports.RECONCILIATION_COLUMNS, per_channel),
                  reports.Sheet(f"mismatches {period.name}", reports.MISMATCH_COLUMNS, mismatches)]  # fmt: skip
        _saving(path, lambda: reports.write_xlsx(path, sheets))
        console.print(f"wrote {len(per_channel)} channels and {len(mismatches)} mismatches to {path}")


def _saving(path: Path, write: Callable[[], object]) -> None:
    try:
        write()
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")


def _write_csv(output: str, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    if not output:
        reports.write_csv(sys.stdout, columns, rows)
        return

    def write() -> None:
        with Path(output).open("w", encoding="utf-8", newline="") as fh:
            reports.write_csv(fh, columns, rows)

    _saving(Path(output), write)
    console.print(f"wrote {len(rows)} rows to {output}")
