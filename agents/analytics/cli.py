"""Analytics commands: the ClickHouse sink (``sink``), an ops dashboard in the terminal (``dash``) and the
live page (``web``)."""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from streams import extras
from streams.cli import console, fail
from streams.extras import MissingExtra
from streams.ports import busy_port_message, port_problem
from streams.settings import Settings


def sink(
    from_beginning: bool = typer.Option(
        False, "--from-beginning",
        help="Read every topic again from its first record still kept (after ClickHouse lost rows: a power cut, "
        "a new server); rows it still has are counted once. Stop the other sinks of the group first.",
    ),
) -> None:
    """Run the ClickHouse sink: every business topic into ClickHouse, in a process of its own."""
    from streams.stores.clickhouse import backend_missing

    settings = Settings()
    # Before the consumer and the views start: a missing backend would otherwise surface as an
    # ImportError from the sink's start-up, after it joined its group.
    if problem := backend_missing(settings):
        fail(escape(problem))
    from agents.analytics.sink_process import run

    console.print(f"sink: {settings.bootstrap} -> {settings.clickhouse_url_shown}; "
                  f"status on {settings.sink_base_url}/sink/status", soft_wrap=True)  # fmt: skip
    code = run(settings, from_beginning=from_beginning)
    if code:
        raise typer.Exit(code)


# The options of ``dash`` per SQL parameter; the others (now, the time zone, the refund SOP limits) come from the
# settings.
DASH_FLAGS = {"from_ms": "--from", "to_ms": "--to", "channel": "--channel", "warehouse": "--warehouse", "sku": "--sku",
              "by": "--by", "threshold": "--threshold"}  # fmt: skip


def dash(
    name: str = typer.Argument("", help="Dashboard name; leave out to list them."),
    since: str = typer.Option(None, "--from", help="Start: now, -24h, 2026-11-11T00:00 or epoch ms."),
    until: str = typer.Option(None, "--to", help="End (same forms)."),
    channel: str = typer.Option(None, help="One channel."),
    warehouse: str = typer.Option(None, help="One warehouse id."),
    sku: str = typer.Option(None, help="One SKU."),
    by: str = typer.Option(None, help="flow_time: group by stage|channel|warehouse|hour."),
    threshold: int = typer.Option(None, help="low_stock: threshold."),
    output: str = typer.Option("table", "--format", help="table, csv or json."),
    grafana: str = typer.Option(None, "--export-grafana", help="Write every dashboard as one Grafana JSON model."),
) -> None:
    """Print an ops dashboard (one SQL file in dashboards/) as a table, CSV or JSON."""
    import csv
    import json

    from agents.analytics import queries as dashboards

    settings = Settings()
    if grafana:
        model = dashboards.grafana_dashboard(settings)
        with open(grafana, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(model, ensure_ascii=False, indent=2) + "\n")
        console.print(f"wrote {len(model['panels'])} panels to {grafana}")
        return
    if not name:
        table = Table("dashboard", "what it shows", "options")
        for dashboard in dashboards.load_all().values():
            flags = [flag for param, flag in DASH_FLAGS.items() if param in dashboard.params]
            table.add_row(dashboard.name, dashboard.title, " ".join(flags) or "-")
        console.print(table)
        return
    if output not in ("table", "csv", "json"):
        fail(f"--format must be table, csv or json, not {output!r}")
    options = {"from_ms": since, "to_ms": until, "channel": channel, "warehouse": warehouse, "sku": sku, "by": by,
               "threshold": threshold}  # fmt: skip
    given = {k: str(v) for k, v in options.items() if v is not None}
    try:
        dashboard, rows = dashboards.run(settings, name, given)
    except (dashboards.DashboardError, MissingExtra) as exc:
        fail(escape(str(exc)))
    except Exception as exc:  # noqa: BLE001 - ClickHouse unreachable or refusing
        fail(f"could not query ClickHouse at {settings.clickhouse_url_shown}: {exc}")
    # The columns from the SQL when there are no rows: a CSV keeps its header, a table its title.
    columns = list(rows[0]) if rows else list(dashboard.columns)
    if output == "json":
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    elif output == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    else:
        print_table(dashboard.title, dashboard.description, columns, rows)


def print_table(title: str, description: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """A dashboard as a table: every cell whole (folded in a terminal, never cut), or "no rows"."""
    from rich.console import Console
    from rich.text import Text

    # In a terminal a wide table folds its cells to the window; in a pipe or a file nothing limits the
    # width, so the table keeps its natural one instead of rich's 80-column default.
    out = console if console.is_terminal else Console(width=100_000, soft_wrap=True)
    if not rows:
        out.print(Text.assemble((title, "bold"), ": no rows"), soft_wrap=True)
    else:
        table = Table(title=title, caption=f"{len(rows)} rows")
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(Text(str(row[c])) for c in columns))  # Text: a `[x]` in a value is not markup
        out.print(table)
    if description:
        out.print(Text(description, style="dim"), soft_wrap=True)


def web(port: int = typer.Option(8050, help="Port of the dashboard page.")) -> None:
    """Serve the dashboards as a live HTML page with charts."""
    if problem := extras.missing(extras.CHARTS):
        fail(escape(problem))
    from agents.analytics.webpage import serve

    settings = Settings()
    if problem := port_problem(settings.web_host, port):
        fail(busy_port_message("web", settings.web_host, port, problem, "--port"))
    console.print(f"dashboards on http://{settings.web_host}:{port}/")
    serve(settings, port)
