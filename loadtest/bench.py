"""`stockflow bench`: a load run against real workers, its baseline, and the figures to compare.

One run: fresh topics, N workers (each a `stockflow worker`), the ClickHouse sink (`stockflow sink`),
`stockflow intake`, the marketplace simulator and `stockflow connectors run` pushing channel stock and
refund instructions to it (``loadtest.market``), the schedule of a profile sent open-loop, drained
(the connectors too), measured (``loadtest.run``);
then, on the same broker, the plain consume->produce loop moving the same number of messages
(``loadtest.baseline``), and the hold agent alone draining a backlog of hold commands (stateful
events/s of one worker with RocksDB and changelog). Everything started is stopped; the local
broker is started only if none runs.
"""

from __future__ import annotations

import os
import platform
import secrets
import subprocess
import sys
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from agents.channels.platforms import Credentials
from agents.intake.secrets import write_secrets
from loadtest import events as ev
from loadtest.baseline import plain_loop_events_per_s
from loadtest.generator import build_schedule, describe
from loadtest.market import BENCH_QPS, Marketplaces
from loadtest.run import LoadRun, measure
from loadtest.stack import isolated
from streams.contract.codec import default_codec
from streams.contract.topics import HOLD_COMMANDS, STOCK_ADJUSTMENTS, ensure_topics
from streams.devstack.sinkproc import SinkProcess
from streams.devstack.workerproc import WorkerProcess
from streams.engine.producer import EventProducer
from streams.engine.topicreader import read_all
from streams.settings import Settings

# --marketplaces: each simulated platform's per-app calls/s (0: its documented limit; None: no marketplaces).
MARKETPLACES: dict[str, float | None] = {"high-limits": BENCH_QPS, "platform-limits": 0.0, "off": None}
# Timeouts short enough to happen within a run.
RUN_TIMEOUTS = {"payment_timeout_s": 15.0, "parked_grace_s": 5.0, "hold_ttl_s": 600.0,
                "route_retry_s": 5.0}  # fmt: skip


def start_intake(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.as_env(), "STOCKFLOW_INTAKE_PORT": str(port)}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "agents.cli", "intake"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == HTTPStatus.OK:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"intake did not start; see {log}")


def run_folder(settings: Settings, tag: str) -> tuple[Settings, Path]:
    """The run's log folder, and its settings with a callback secret for the own shop (unless one is
    configured): the load's callbacks are signed and verified as in production."""
    logs = settings.home_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if settings.intake_secrets_file is None:
        own = Credentials(f"load-{tag}", secrets.token_hex(16))
        path = write_secrets(logs / f"bench-{tag}-secrets.toml", {"own": own})
        settings = settings.model_copy(update={"intake_secrets_file": path})
    return settings, logs


def hold_agent_events_per_s(settings: Settings, commands: int, log_dir: Path) -> float:
    """One worker draining ``commands`` RESERVE commands over 1,000 SKUs: table + changelog per batch."""
    tag, s = isolated(settings, "bench-hold")
    ensure_topics(s)
    producer = EventProducer(s)
    skus = [f"HOLD-{i:04d}" for i in range(1000)]
    for sku in skus:
        producer.send(STOCK_ADJUSTMENTS.name, sku, "StockAdjusted", ev.stock_adjusted(sku, "WH-SH", 1_000_000))
    for i in range(commands):
        sku = skus[i % len(skus)]
        producer.send(HOLD_COMMANDS.name, sku, "HoldCommand", {
            "event_id": f"reserve:o{i}#1", "event_time_ms": ev.now_ms(), "action": "RESERVE", "order_id": f"o{i}",
            "line_no": 1, "sku": sku, "qty": 1, "channel": "tmall", "presale": False, "expires_at_ms": 0,
            "reason": "", "source_time_ms": 0, "warehouse_id": ""})  # fmt: skip
    producer.flush(120)
    worker = WorkerProcess(s, log_dir / f"bench-hold-{tag}.log").start()
    try:
        worker.wait_ready()
        codec = default_codec()
        deadline = time.monotonic() + 300
        times: list[int] = []
        while time.monotonic() < deadline:
            records = read_all(s.bootstrap, s.topic("stock.hold-results"), 10)
            if len(records) >= commands:
                times = [codec.decode(r.value)[1]["event_time_ms"] for r in records]
                break
            time.sleep(2)
        if not times:
            raise RuntimeError("the hold agent did not answer every command within 300 s")
        return commands / max((max(times) - min(times)) / 1000, 1e-3)
    finally:
        worker.stop()


def machine() -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True)
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "commit": commit.stdout.strip()}  # fmt: skip


def engine_figures(workers: list[WorkerProcess], orders: int) -> dict[str, Any]:
    """What the workers' engines did per order: batches, changelog writes, records applied in the
    batch that wrote them (no consumer round trip), and their CPU per order."""
    totals: dict[str, float] = {}
    for w in workers:
        for key, value in (w.get("/engine/status").get("stats") or {}).items():
            totals[key] = totals.get(key, 0) + value
    per = max(orders, 1)
    return {
        "changelog_records_per_order": round(totals.get("changelog_records", 0) / per, 2),
        "engine_batches": int(totals.get("batches", 0)),
        "engine_events_per_batch": round(
            (totals.get("events", 0) + totals.get("local_events", 0)) / max(totals.get("batches", 0), 1), 1),
        "engine_local_share": round(totals.get("local_events", 0)
                                    / max(totals.get("events", 0) + totals.get("local_events", 0), 1), 3),
        "engine_cpu_us_per_order": round(1e6 * totals.get("cpu_s", 0) / per),
    }  # fmt: skip


class RunProcesses:
    """What one run starts: the workers, the sink, the marketplaces (simulator and connectors) unless
    ``channel_qps`` is None, and the intake; ``stop`` stops whatever of it started."""

    def __init__(self, s: Settings, logs: Path, tag: str, workers: int, channel_qps: float | None) -> None:
        self.settings, self.logs, self.tag = s, logs, tag
        self.workers = [WorkerProcess(s.model_copy(update={"web_port": s.web_port + i}), logs / f"bench-{tag}-{i}.log")
                        for i in range(workers)]  # fmt: skip
        self.sink = SinkProcess(s, logs / f"bench-{tag}-sink.log")  # one for every worker: chdb owns one folder
        self.market = None if channel_qps is None else Marketplaces(s, logs, tag, channel_qps)
        self.intake: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for w in self.workers:
            w.start()
        self.sink.start()
        if self.market is not None:
            self.market.start()
        for w in self.workers:
            w.wait_ready()
        self.sink.wait_ready()
        if self.market is not None:
            self.market.wait_ready()
        s = self.settings
        self.intake = start_intake(s, s.intake_port, self.logs / f"bench-{self.tag}-intake.log")

    def stop(self) -> None:
        if self.intake is not None:
            self.intake.terminate()
            self.intake.wait(30)
        for w in self.workers:
            w.stop()
        self.sink.stop()
        if self.market is not None:
            self.market.stop()


def run_bench(  # noqa: PLR0913 - the bench command's options, passed on
    settings: Settings, profile: str, rate: float, duration_s: float, seed: int, workers: int, *,
    console: Console, hold_commands: int = 50_000, channel_qps: float | None = BENCH_QPS,
) -> tuple[dict[str, Any], Settings]:  # fmt: skip
    """The run's figures, and the settings it ran with (its topics, its ClickHouse). ``channel_qps``: each
    simulated marketplace's per-app limit (0: the platforms' own; None: no marketplaces, no connectors)."""
    tag, s = isolated(settings, "bench", **RUN_TIMEOUTS)
    if s.web_port <= s.sink_port < s.web_port + workers:  # the workers take web_port, web_port + 1, ...
        s = s.model_copy(update={"sink_port": s.web_port + workers})
    s, logs = run_folder(s, tag)
    ensure_topics(s)
    schedule = build_schedule(profile, rate, duration_s, seed)
    console.print(f"schedule: {describe(schedule)}")
    processes = RunProcesses(s, logs, tag, workers, channel_qps)
    try:
        market = ", the marketplace simulator and the connectors" if processes.market else ""
        with console.status(f"starting {workers} worker(s), the sink, the intake{market}..."):
            processes.start()
        figures = _drive(LoadRun(s, schedule, f"http://127.0.0.1:{s.intake_port}", console), processes, console)
    finally:
        processes.stop()
    size = 220  # bytes: an encoded order event with two lines, the run's typical message
    with console.status("baseline: plain consume -> produce loop on the same broker..."):
        baseline = plain_loop_events_per_s(s, min(figures["events"], 400_000), size)
    hold = 0.0
    if hold_commands:
        with console.status(f"hold agent alone: {hold_commands:,} commands..."):
            hold = hold_agent_events_per_s(s, hold_commands, logs)
    figures.update({
        "profile": profile, "rate": rate, "duration_s": duration_s, "seed": seed, "workers": workers,
        "baseline_events_per_s": round(baseline, 1),
        "baseline_ratio": round(figures["events_per_s"] / baseline, 4) if baseline else 0.0,
        "hold_agent_events_per_s": round(hold, 1), "machine": machine(),
    })  # fmt: skip
    return figures, s


def _drive(run: LoadRun, processes: RunProcesses, console: Console) -> dict[str, Any]:
    """Stock loaded (and pushed to the channels), the schedule sent, drained, measured."""
    market, duration_s = processes.market, run.schedule.duration_s
    with console.status("loading stock..."):
        run.load_stock()
        _wait_for_stock(processes.workers[0], run.schedule.skus[0], processes.logs)
    if market is not None:
        with console.status("the connectors pushing the loaded stock to every channel..."):
            if not market.wait_caught_up(180):
                console.print("[yellow]the connectors were still pushing the loaded stock after 180 s[/yellow]")
        market.mark_start()  # the run measures its own changes, not the catalogue's first upload
    run.send()
    with console.status("draining..."):
        drained = run.drain(max(120.0, duration_s * 3))
    if not run.drained:
        console.print("[red]the pipeline did not drain in time: undecided orders count as lost below[/red]")
    if market is not None:
        with console.status("waiting for the connectors to send what the pipeline published..."):
            caught_up = market.wait_caught_up(max(60.0, duration_s))
        if not caught_up:
            console.print("[red]the connectors did not catch up in time: changes not shown count below[/red]")
    with console.status("measuring (independent checker over every topic)..."):
        figures = measure(run, drained, market)
        figures["drained"] = run.drained
        figures.update(engine_figures(processes.workers, figures["orders_sent"]))
    return figures


def _wait_for_stock(worker: WorkerProcess, sku: str, logs: Path) -> None:
    """Until ``worker`` has applied stock for ``sku``: the stock loaded before the run is in its pool."""
    deadline = time.monotonic() + 120
    while worker.get(f"/stock/{sku}").get("on_hand", 0) <= 0:
        if time.monotonic() > deadline:
            # Sending now would measure a worker that is not consuming (a broker still
            # loading its group coordinator, say), not the pipeline.
            raise RuntimeError(f"the worker applied no stock within 120 s; see {logs}")
        time.sleep(0.5)


def write_chart(figures: dict[str, Any], path: Path) -> Path:
    """Rate, lag and p99 decision latency over the run, as a self-contained HTML page."""
    from plotly.subplots import make_subplots

    series = figures["series"]
    seconds = series["second"]
    titles = ("orders per second", "consumer lag (messages)", "p99 decision latency (ms)")
    chart = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06, subplot_titles=titles)
    chart.add_scatter(x=seconds, y=[series["sent"].get(s, 0) for s in seconds], name="sent", row=1, col=1)
    chart.add_scatter(x=seconds, y=[series["decided"].get(s, 0) for s in seconds], name="decided", row=1, col=1)
    chart.add_scatter(x=[t for t, _ in series["lag"]], y=[v for _, v in series["lag"]], name="lag", row=2, col=1)
    p99 = sorted(series["p99_ms"].items())
    chart.add_scatter(x=[s for s, _ in p99], y=[v for _, v in p99], name="p99 ms (by send second)", row=3, col=1)
    chart.update_layout(height=900, title=f"stockflow bench: {figures['profile']} at {figures['rate']} orders/s")
    chart.update_xaxes(title_text="seconds since the start", row=3, col=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    chart.write_html(str(path), include_plotlyjs=True)
    return path


REQUIRED_KEYS = (
    "offered_orders_per_s", "achieved_orders_per_s", "events_per_s", "baseline_events_per_s", "baseline_ratio",
    "p50_decision_ms", "p99_decision_ms", "p999_decision_ms", "p50_stock_refresh_ms", "p99_stock_refresh_ms",
    "p999_stock_refresh_ms", "oversold_units", "lost_orders", "double_holds", "bad_inputs_sent", "bad_inputs_refused",
)  # fmt: skip
# With the marketplaces (the default): what reached them.
CHANNEL_KEYS = (
    "channel_pushes", "channel_push_calls", "channel_figures_per_call", "channel_push_calls_per_s_by_channel",
    "channel_changes", "p50_channel_push_ms", "p99_channel_push_ms", "max_channel_push_ms",
    "p99_order_to_channel_ms", "channel_changes_not_shown", "channel_pushes_stale", "channel_pushes_retried",
    "channel_pushes_failed", "marketplace_refusals", "refunds_instructed", "refunds_agreed", "refunds_agreed_twice",
    "refunds_not_agreed",
)  # fmt: skip


def summary_table(figures: dict[str, Any]) -> Table:
    table = Table("figure", "value", title=f"stockflow bench: {figures['profile']}, {figures['workers']} worker(s)")
    for key in (*REQUIRED_KEYS, "hold_agent_events_per_s", "orders_sent", "orders_decided", "events_per_order",
                "drained", "drain_s", "max_lag", "skus_drifted", "intake_errors", "sender_behind_ms",
                "changelog_records_per_order", "engine_events_per_batch", "engine_local_share",
                "engine_cpu_us_per_order", "refunds_sent", "refunds_decided", "p50_refund_decision_ms",
                "p99_refund_decision_ms", "refunds_paid_twice", "refunds_lost",
                *(k for k in CHANNEL_KEYS if k in figures)):  # fmt: skip
        table.add_row(key, f"{figures[key]:,}" if isinstance(figures[key], (int, float)) else str(figures[key]))
    return table
