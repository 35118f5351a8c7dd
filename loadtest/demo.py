"""``stockflow demo``: one command from a cold start to a Double-11 minute, measured and explained.

Starts Kafka if none runs, a worker, the ClickHouse sink (``stockflow sink``, which owns the embedded
ClickHouse folder) and the HTTP intake, sends a short ``double11`` load (orders from six channels,
payments, cancellations, presale, stock receipts and about 1% bad input), waits for the pipeline to
drain, and prints what a new user wants to see: orders flowing, zero oversell by the independent
checker, where time goes (the flow-time and outcome dashboards), and a chart of rate and latency.
Everything it started is stopped.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from agents.analytics import queries as dashboards
from loadtest import bench
from loadtest.stack import local_stack
from streams.devstack.localkafka import MissingTool
from streams.settings import Settings


def _dashboard(settings: Settings, name: str, console: Console) -> None:
    dash, rows = dashboards.run(settings, name, {})
    if not rows:
        console.print(f"{dash.title}: no rows")
        return
    table = Table(*rows[0], title=dash.title)
    for row in rows[:12]:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


def run_demo(settings: Settings, console: Console, rate: float, duration_s: float) -> int:
    try:
        with local_stack(settings, console):
            figures, used = bench.run_bench(settings, "double11", rate, duration_s, seed=11, workers=1,
                                            console=console, hold_commands=0)  # fmt: skip
            series = figures.pop("series")
            console.print(bench.summary_table(figures))
            for name in ("flow_time", "reservation_outcomes", "routing_share", "dead_letters"):
                _dashboard(used, name, console)
            chart = bench.write_chart({**figures, "series": series},
                                      settings.home_dir / "bench" / f"demo-{int(time.time())}.html")  # fmt: skip
    except (MissingTool, RuntimeError) as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    ok = figures["oversold_units"] == 0 and figures["lost_orders"] == 0 and figures["double_holds"] == 0
    verdict = "[green]no oversell, no lost order, no double hold[/green]" if ok else "[red]invariant broken[/red]"
    console.print(f"{figures['orders_decided']:,} orders decided, {verdict}; "
                  f"{figures['bad_inputs_refused']}/{figures['bad_inputs_sent']} bad inputs refused")  # fmt: skip
    console.print(f"chart of rate, lag and latency: {chart}")
    console.print(f"dashboards of this run: STOCKFLOW_CLICKHOUSE_URL={used.clickhouse_url_shown} "
                  f"STOCKFLOW_CLICKHOUSE_DATABASE={used.clickhouse_database} stockflow web")  # fmt: skip
    return 0 if ok else 1
