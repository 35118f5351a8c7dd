"""Order commands: an order's state now (``stockflow order``) and the focus pool (``stockflow orders focus``).

``order`` asks the worker that owns the order; ``orders focus`` asks ClickHouse through the ``focus_pool``
dashboard (``agents.analytics.queries.run``: the running sink with embedded ClickHouse, else ClickHouse
directly), as ``stockflow dash`` does.
"""

from __future__ import annotations

import csv
import json
import sys
from typing import Any

import typer
from rich.table import Table

from streams.cli import console, fail, worker_view
from streams.settings import Settings

FOCUS_DASHBOARD = "focus_pool"
# The table's columns; csv and json carry every column of the dashboard.
FOCUS_COLUMNS = ("paid_at", "order_id", "current_state", "score", "promptness", "address", "complexity", "returns",
                 "coupon", "why")  # fmt: skip

orders_app = typer.Typer(no_args_is_help=True, help="Orders as a set: the focus pool.")


def order(order_id: str = typer.Argument(..., help="<channel>:<channel_order_id>")) -> None:
    """An order's state now, from the worker that owns it."""
    worker_view(f"/orders/{order_id}")


@orders_app.command("focus")
def focus(
    channel: str = typer.Option(None, help="One channel; leave out for all."),
    since: str = typer.Option("-7d", "--from", help="Paid from: now, -24h, 2026-11-11T00:00 or epoch ms."),
    until: str = typer.Option(None, "--to", help="Paid before (same forms); default: now."),
    output: str = typer.Option("table", "--format", help="table, csv or json."),
) -> None:
    """The focus pool: paid, unfinished orders whose health score is under the threshold (60 unless
    STOCKFLOW_HEALTH_RULES_FILE says otherwise), newest first, with each factor's points and why."""
    from agents.analytics import queries

    if output not in ("table", "csv", "json"):
        fail(f"--format must be table, csv or json, not {output!r}")
    settings = Settings()
    given = {k: v for k, v in {"channel": channel, "from_ms": since, "to_ms": until}.items() if v is not None}
    try:
        dashboard, rows = queries.run(settings, FOCUS_DASHBOARD, given)
    except queries.DashboardError as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - ClickHouse (or the sink holding it) unreachable or refusing
        fail(f"could not query ClickHouse at {settings.clickhouse_url_shown}: {exc}")
    if output == "json":
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
    elif output == "csv":
        _write_csv(rows)
    else:
        console.print(_table(dashboard.title, rows))


def _write_csv(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def _table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(*FOCUS_COLUMNS, title=title, caption=f"{len(rows)} orders in the focus pool")
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in FOCUS_COLUMNS))
    return table
