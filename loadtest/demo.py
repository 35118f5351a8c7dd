"""``stockflow demo``: one command from a cold start to a Double-11 minute, measured and explained.

Starts Kafka if none runs, a worker, the ClickHouse sink (``stockflow sink``, which owns the embedded
ClickHouse folder) and the HTTP intake, waits until the worker holds its partitions and has applied
the loaded stock, sends a short ``double11`` load (orders from six channels, payments,
cancellations, presale, stock receipts and about 1% bad input), waits for the pipeline to drain,
and prints what a new user wants to see: orders flowing, the independent checker's verdict (green
only when every invariant holds), where time goes (the flow-time and outcome dashboards), and a
chart of rate and latency. Everything it started is stopped.

Files: every temporary folder of the run (the embedded ClickHouse among them) goes under one
scratch folder in the system temp directory, removed at the end whatever happened. The run's
ClickHouse is kept under ``<home>/demo/clickhouse`` (replacing the previous demo's) so the
suggested ``stockflow web`` command shows it; the chart goes to ``<home>/bench/``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agents.analytics import queries as dashboards
from loadtest import bench
from loadtest.stack import local_stack
from streams import extras
from streams.devstack.localkafka import MissingTool
from streams.devstack.procs import free_ports
from streams.ports import port_problem
from streams.settings import Settings

# What must hold after a run, with the words the verdict uses: (figure, what a non-zero count means).
INVARIANTS = (
    ("oversold_units", "units oversold"),
    ("lost_orders", "orders lost (never decided nor ended)"),
    ("double_holds", "double holds"),
    ("skus_drifted", "SKUs whose pool drifted from what the topics say"),
    ("refunds_paid_twice", "refunds paid twice"),
    ("refunds_lost", "refunds lost"),
    ("refunds_agreed_twice", "refunds agreed twice by a marketplace"),
    ("audit_other_failures", "other failures of the checker (stockflow check names them)"),
    ("audit_unjudged", "keys the checker could not judge (their history is gone from the run's own topics)"),
)
PORT_SETTINGS = (("web_port", "STOCKFLOW_WEB_PORT"), ("sink_port", "STOCKFLOW_SINK_PORT"),
                 ("intake_port", "STOCKFLOW_INTAKE_PORT"))  # fmt: skip
WEB_PAGE_PORT = 8050  # `stockflow web`'s default


@dataclass(frozen=True)
class Verdict:
    ok: bool
    failures: tuple[str, ...]  # one phrase per broken invariant, with its count

    def text(self) -> str:
        """Rich markup: green only when nothing failed."""
        if self.ok:
            return "[green]no oversell, no lost order, no double hold, no drift[/green]"
        return "[red]invariant broken: " + "; ".join(self.failures) + "[/red]"


def verdict(figures: Mapping[str, Any]) -> Verdict:
    """The run's verdict from its figures: every invariant at 0, the pipeline drained, every bad input
    refused. A figure the run did not measure (no marketplaces: no ``refunds_agreed_twice``) is not judged."""
    failures = [f"{figures[key]:,} {words}" for key, words in INVARIANTS if figures.get(key, 0)]
    if figures.get("drained") is False:
        failures.append("the pipeline did not drain in time (undecided orders count as lost)")
    missed = figures.get("bad_inputs_sent", 0) - figures.get("bad_inputs_refused", 0)
    if missed > 0:
        failures.append(f"{missed:,} bad inputs not refused")
    return Verdict(not failures, tuple(failures))


def cancelled_before_decision(states: Iterable[Mapping[str, Any]], decided: Collection[str]) -> int:
    """Orders the buyer cancelled while the pool had not answered yet (``placed -> cancelled``): they get
    no reservation decision, so they are sent but not decided, and are not lost."""
    return len({s["order_id"] for s in states if s["state"] == "cancelled" and s["previous_state"] == "placed"}
               - set(decided))  # fmt: skip


def summary_rows(figures: Mapping[str, Any], cancelled_early: int) -> list[tuple[str, str]]:
    """The demo's table: (label, value) with what each figure is, rates as peak and average."""
    sent, decided = figures["orders_sent"], figures["orders_decided"]
    per_second = figures.get("series", {}).get("sent", {})
    peak = max(per_second.values(), default=0)
    rows = [
        ("orders sent", f"{sent:,}"),
        ("orders decided (reserved or rejected)", f"{decided:,}"),
        ("orders cancelled before a decision", f"{cancelled_early:,} (the buyer cancelled first: nothing to decide)"),
        ("orders undecided otherwise", f"{max(sent - decided - cancelled_early, 0):,}"),
        ("send rate, busiest second", f"{peak:,} orders/s"),
        (f"send rate, average over {figures['duration_s']:g} s", f"{figures['offered_orders_per_s']:,} orders/s"),
        ("decided rate, average", f"{figures['achieved_orders_per_s']:,} orders/s"),
        ("decision latency p50 / p99", f"{figures['p50_decision_ms']:,} / {figures['p99_decision_ms']:,} ms"),
        ("stock refresh p50 / p99", f"{figures['p50_stock_refresh_ms']:,} / {figures['p99_stock_refresh_ms']:,} ms"),
        ("events written, average", f"{figures['events_per_s']:,} /s ({figures['events_per_order']} per order)"),
        ("most messages waiting (lag)", f"{figures['max_lag']:,}"),
        ("drained after the last send", f"{figures['drain_s']:,} s"),
    ]
    rows += [(key, f"{figures[key]:,}") for key, _ in INVARIANTS if key in figures]
    rows.append(("bad inputs refused", f"{figures['bad_inputs_refused']:,} of {figures['bad_inputs_sent']:,}"))
    return rows


def choose_ports(settings: Settings, busy: Any = None) -> tuple[Settings, list[str]]:
    """The run's settings with a free port for each of the worker's views, the sink and the intake whose
    configured one is taken (a stack of yours running beside the demo), and a note per moved port.
    ``busy(port)`` says whether a port is taken (default: try to listen on it)."""

    def taken(port: int) -> bool:
        return bool(busy(port)) if busy is not None else port_problem(settings.web_host, port) is not None

    moved = [(field, env) for field, env in PORT_SETTINGS if taken(getattr(settings, field))]
    if not moved:
        return settings, []
    # The workers take web_port and up: keep the new ones apart from every port the run uses.
    spare = iter(p for p in free_ports(len(moved) + 4) if p not in {getattr(settings, f) for f, _ in PORT_SETTINGS})
    update = {field: next(spare) for field, _ in moved}
    notes = [f"{env}={getattr(settings, field)} is taken (a stockflow of yours?): the demo uses {update[field]}"
             for field, env in moved]  # fmt: skip
    return settings.model_copy(update=update), notes


def web_command(clickhouse_dir: Path, database: str, sink_port: int, sink_port_busy: bool,
                page_port: int, page_port_busy: bool, free: Iterator[int]) -> tuple[str, list[str]]:  # fmt: skip
    """The ``stockflow web`` command that shows this run's kept ClickHouse, and notes. With embedded
    ClickHouse the page asks whatever sink answers on ``STOCKFLOW_SINK_PORT`` first: when one listens
    there, it would show that sink's data, so the command names a port nobody listens on."""
    env = [f"STOCKFLOW_CLICKHOUSE_URL=chdb://{clickhouse_dir}", f"STOCKFLOW_CLICKHOUSE_DATABASE={database}"]
    notes = []
    if sink_port_busy:
        port = next(free)
        env.append(f"STOCKFLOW_SINK_PORT={port}")
        notes.append(
            f"something listens on the sink port {sink_port} (another stockflow sink?): the command points the "
            f"page at {port}, where none does, so it reads this run's folder, not that sink's data"
        )
    option = ""
    if page_port_busy:
        option = f" --port {next(free)}"
        notes.append(f"port {page_port} is taken: the page uses{option}")
    return " ".join([*env, "stockflow web"]) + option, notes


@contextlib.contextmanager
def scratch_temp_dir(prefix: str = "stockflow-demo-") -> Iterator[Path]:
    """Every temporary file and folder of the run, this process's and its children's, under one
    folder that is removed on the way out (after a failure or Ctrl-C too): a run's embedded
    ClickHouse alone is some 25 MB, and a demo run once a day would otherwise fill the temp dir.
    ``tempfile.tempdir`` and ``TMPDIR`` are process-wide: the demo is a command of its own."""
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    saved_dir, saved_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = str(scratch)
    os.environ["TMPDIR"] = str(scratch)
    try:
        yield scratch
    finally:
        tempfile.tempdir = saved_dir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(scratch, ignore_errors=True)


def keep_clickhouse(used: Settings, scratch: Path, home: Path) -> Path | None:
    """Move the run's embedded ClickHouse out of the scratch folder to ``<home>/demo/clickhouse``
    (the previous demo's is replaced); None when the run used a ClickHouse server."""
    url = urlparse(used.clickhouse_url)
    if url.scheme != "chdb" or not url.path:
        return None
    source = Path(url.path)
    if not source.resolve().is_relative_to(scratch.resolve()) or not source.is_dir():
        return None
    kept = home.resolve() / "demo" / "clickhouse"
    shutil.rmtree(kept, ignore_errors=True)
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(source, kept)
    return kept


def _dashboard(settings: Settings, name: str, console: Console) -> None:
    dash, rows = dashboards.run(settings, name, {})
    if not rows:
        console.print(f"{dash.title}: no rows")
        return
    table = Table(*rows[0], title=dash.title)
    for row in rows[:12]:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


def _cancelled_early(used: Settings, figures: Mapping[str, Any]) -> int:
    from streams.contract.codec import default_codec
    from streams.engine.topicreader import read_all

    codec = default_codec()
    states = (codec.decode(r.value)[1] for r in read_all(used, used.topic("order.states"), 30))
    return cancelled_before_decision(states, figures.get("series", {}).get("decided_ms", {}))


def _print_summary(figures: dict[str, Any], cancelled_early: int, console: Console) -> None:
    table = Table("figure", "value", title=f"stockflow demo: {figures['profile']}, peak {figures['rate']:g} orders/s")
    for label, value in summary_rows(figures, cancelled_early):
        table.add_row(label, value)
    console.print(table)
    console.print(
        f"[dim]--rate {figures['rate']:g} is the Double-11 curve's 100%: quiet before midnight, the step to the "
        "peak, flash-sale bursts at twice it, then a decay; so the average is about half the rate.[/dim]",
        soft_wrap=True,
    )


def run_demo(settings: Settings, console: Console, rate: float, duration_s: float) -> int:
    configured = settings  # the ports a later `stockflow web` in this shell will use
    settings, port_notes = choose_ports(settings)
    for note in port_notes:
        console.print(f"[yellow]{note}[/yellow]", soft_wrap=True)
    chart: Path | None = None
    kept: Path | None = None
    with scratch_temp_dir() as scratch:
        try:
            with local_stack(settings, console):
                figures, used = bench.run_bench(settings, "double11", rate, duration_s, seed=11, workers=1,
                                                console=console, hold_commands=0)  # fmt: skip
                cancelled_early = _cancelled_early(used, figures)
                _print_summary(figures, cancelled_early, console)
                for name in ("flow_time", "reservation_outcomes", "routing_share", "dead_letters"):
                    _dashboard(used, name, console)
                if problem := extras.missing(extras.CHARTS):
                    console.print(f"[yellow]no chart: {escape(problem)}[/yellow]", soft_wrap=True)
                else:
                    chart = bench.write_chart(figures, settings.home_dir / "bench" / f"demo-{int(time.time())}.html")
                # Before the stack closes: it removes every run's scratch ClickHouse on its way out.
                kept = keep_clickhouse(used, scratch, settings.home_dir)
        except (MissingTool, RuntimeError) as exc:
            console.print(f"[red]{exc}[/red]")
            return 2
    result = verdict(figures)
    refused = f"{figures['bad_inputs_refused']}/{figures['bad_inputs_sent']} bad inputs refused"
    console.print(f"{figures['orders_decided']:,} orders decided, {result.text()}; {refused}", soft_wrap=True)
    if chart is not None:
        console.print(f"chart of rate, lag and latency: {chart}")
    if kept is not None:
        free = iter(free_ports(2))
        command, notes = web_command(
            kept, used.clickhouse_database, configured.sink_port,
            port_problem(configured.web_host, configured.sink_port) is not None,
            WEB_PAGE_PORT, port_problem(configured.web_host, WEB_PAGE_PORT) is not None, free,
        )  # fmt: skip
        for note in notes:
            console.print(f"[yellow]{note}[/yellow]", soft_wrap=True)
        console.print(f"dashboards of this run: {command}", soft_wrap=True)
    else:
        server = f"STOCKFLOW_CLICKHOUSE_URL={used.clickhouse_url_shown}"
        server += f" STOCKFLOW_CLICKHOUSE_DATABASE={used.clickhouse_database}"
        console.print(f"dashboards of this run: {server} stockflow web", soft_wrap=True)
    return 0 if result.ok else 1
