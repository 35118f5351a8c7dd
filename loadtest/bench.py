"""`stockflow bench`: a load run against real workers, its baseline, and the figures to compare.

One run: fresh topics, N workers (each a `stockflow worker`), the ClickHouse sink (`stockflow sink`),
`stockflow intake`, the marketplace simulator and `stockflow connectors run` pushing channel stock and
refund instructions to it (``loadtest.market``), the schedule of a profile sent open-loop, drained
(the connectors too), measured (``loadtest.run``), with every process's CPU and each worker's decisions
sampled through the run (``loadtest.scaling``), a worker started or stopped part-way when asked (the
rebalance pause), and what the run's CPU per order predicts on more cores (``loadtest.capacity``);
then, on the same broker, the plain consume->produce loop moving the same number of messages
(``loadtest.baseline``), and the hold agent alone draining a backlog of hold commands (stateful
events/s of one worker with RocksDB and changelog). Everything started is stopped; the local
broker is started only if none runs.
"""

from __future__ import annotations

import os
import platform
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from agents.channels.platforms import Credentials
from agents.intake.secrets import write_secrets
from loadtest import events as ev
from loadtest import scaling
from loadtest.baseline import plain_loop_runs
from loadtest.capacity import predict
from loadtest.generator import Schedule, build_schedule, describe, hot_sku_name
from loadtest.market import BENCH_QPS, Marketplaces
from loadtest.run import LoadRun, measure
from loadtest.stack import isolated
from streams.contract.codec import default_codec
from streams.contract.keys import order_key
from streams.contract.topics import HOLD_COMMANDS, STOCK_ADJUSTMENTS, ensure_topics
from streams.devstack import procs
from streams.devstack.localclickhouse import LocalClickHouseServer
from streams.devstack.localkafka import LocalKafka
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
            records = read_all(s, s.topic("stock.hold-results"), 10)
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


def engine_figures(stats: list[dict[str, float]], orders: int) -> dict[str, Any]:
    """What the workers' engines did per order (``stats``: each worker's last ``/engine/status`` stats, a
    stopped one's from before it stopped): batches, changelog writes, records applied in the batch that
    wrote them (no consumer round trip), and their CPU per order."""
    totals: dict[str, float] = {}
    for worker in stats:
        for key, value in worker.items():
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


def engine_cycle_figures(samples: Mapping[str, list[scaling.Sample]], kinds: Mapping[str, str], from_ms: int,
                         to_ms: int) -> dict[str, Any]:  # fmt: skip
    """How the engines cycled over [from_ms, to_ms] (the bench takes the second half of the sends, as the
    lag slope does): commits a second, events a commit, a commit's mean wall time, and the share of each
    engine's wall time spent polling, applying and committing. Lifetime averages hide this: stocking up
    and draining run many small commits, while under load a commit may carry thousands of events."""
    names = [name for name, kind in kinds.items() if kind == "worker"]
    seconds = (to_ms - from_ms) / 1000

    def total(key: str) -> float | None:
        deltas = [scaling.delta(samples.get(name, []), f"engine.{key}", from_ms, to_ms) for name in names]
        known = [d for d in deltas if d is not None]
        return sum(known) if known else None

    commits, events, local = total("commits"), total("events"), total("local_events")
    if not names or seconds <= 0 or commits is None or events is None:
        return {"engine_commits_per_s": None, "engine_events_per_commit": None, "engine_commit_ms": None,
                "engine_time_split": None}  # fmt: skip
    wall_s = seconds * len(names)
    split = {part: round((total(f"{part}_s") or 0.0) / wall_s, 3) for part in ("poll", "apply", "commit")}
    return {
        "engine_commits_per_s": round(commits / seconds, 1),
        "engine_events_per_commit": round((events + (local or 0)) / max(commits, 1), 1),
        "engine_commit_ms": round(1000 * (total("commit_s") or 0.0) / max(commits, 1), 1),
        "engine_time_split": split,
    }


class RunProcesses:
    """What one run starts: the workers, the sink, the marketplaces (simulator and connectors) unless
    ``channel_qps`` is None, and the intake; ``stop`` stops whatever of it started."""

    def __init__(self, s: Settings, logs: Path, tag: str, workers: int, channel_qps: float | None) -> None:
        self.settings, self.logs, self.tag = s, logs, tag
        self.workers = [self._worker(i) for i in range(workers)]
        self.sink = SinkProcess(s, logs / f"bench-{tag}-sink.log")  # one for every worker: chdb owns one folder
        self.market = None if channel_qps is None else Marketplaces(s, logs, tag, channel_qps)
        self.intake: subprocess.Popen[bytes] | None = None

    def _worker(self, i: int) -> WorkerProcess:
        # Its own views port; its engine claims the lowest free state slot under the run's app id itself.
        s = self.settings
        return WorkerProcess(s.model_copy(update={"web_port": s.web_port + i}), self.logs / f"bench-{self.tag}-{i}.log")

    def add_worker(self) -> WorkerProcess:
        """One more worker in the group, started now (the group rebalances once it joins)."""
        worker = self._worker(len(self.workers)).start()
        self.workers.append(worker)
        return worker

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
    changes: Changes | None = None, hot_sku: str = "", hot_share: float = 0.0,
) -> tuple[dict[str, Any], Settings]:  # fmt: skip
    """The run's figures, and the settings it ran with (its topics, its ClickHouse). ``channel_qps``: each
    simulated marketplace's per-app limit (0: the platforms' own; None: no marketplaces, no connectors).
    ``changes``: a worker to start and/or stop part-way; ``hot_share`` of the orders for ``hot_sku`` alone."""
    changes = changes or Changes()
    tag, s = isolated(settings, "bench", **RUN_TIMEOUTS)
    ports = workers + (1 if changes.join_at_s is not None else 0)
    if s.web_port <= s.sink_port < s.web_port + ports:  # the workers take web_port, web_port + 1, ...
        s = s.model_copy(update={"sink_port": s.web_port + ports})
    s, logs = run_folder(s, tag)
    ensure_topics(s)
    hot_sku = (hot_sku or hot_sku_name(seed)) if hot_share > 0 else ""
    schedule = build_schedule(profile, rate, duration_s, seed, hot_sku=hot_sku, hot_share=hot_share)
    console.print(f"schedule: {describe(schedule)}")
    processes = RunProcesses(s, logs, tag, workers, channel_qps)
    try:
        market = ", the marketplace simulator and the connectors" if processes.market else ""
        with console.status(f"starting {workers} worker(s), the sink, the intake{market}..."):
            processes.start()
        figures = _drive(LoadRun(s, schedule, f"http://127.0.0.1:{s.intake_port}", console), processes, console,
                         changes, hot_sku)  # fmt: skip
    finally:
        processes.stop()
    size = 220  # bytes: an encoded order event with two lines, the run's typical message
    with console.status("baseline: plain consume -> produce loop on the same broker..."):
        baseline_runs = plain_loop_runs(s, min(figures["events"], 400_000), size)
        baseline = statistics.median(baseline_runs)
    hold = 0.0
    if hold_commands:
        with console.status(f"hold agent alone: {hold_commands:,} commands..."):
            hold = hold_agent_events_per_s(s, hold_commands, logs)
    figures.update({
        "profile": profile, "rate": rate, "duration_s": duration_s, "seed": seed, "workers": workers,
        "join_at_s": changes.join_at_s, "leave_at_s": changes.leave_at_s, "hot_sku": hot_sku, "hot_share": hot_share,
        "baseline_events_per_s": round(baseline, 1), "baseline_runs_events_per_s": baseline_runs,
        "baseline_ratio": round(figures["events_per_s"] / baseline, 4) if baseline else 0.0,
        "hold_agent_events_per_s": round(hold, 1), "machine": machine(),
    })  # fmt: skip
    return figures, s


@dataclass(frozen=True)
class Changes:
    """Workers joining or leaving under load: seconds into the send window (None: not at all)."""

    join_at_s: float | None = None
    leave_at_s: float | None = None


class MembershipChanges(threading.Thread):
    """Starts one more worker at ``join_at_s`` and SIGTERMs the newest ready one at ``leave_at_s`` (seconds
    after the run's first send), recording when (``actions``: cause, epoch ms, worker name). A started
    worker joins the group once it has started up (seconds here), so its rebalance begins later."""

    def __init__(self, changes: Changes, processes: RunProcesses, sampler: scaling.Sampler, run: LoadRun) -> None:
        super().__init__(name="bench-membership", daemon=True)
        self.changes, self.processes, self.sampler, self.run_ = changes, processes, sampler, run
        self.actions: list[tuple[str, int, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        wanted = (("join", self.changes.join_at_s), ("leave", self.changes.leave_at_s))
        planned = sorted((at, cause) for cause, at in wanted if at is not None)
        while not self.run_.sent.started_epoch_ms and not self.halt.wait(0.05):
            pass
        for at_s, cause in planned:
            if self.halt.wait(max(0.0, self.run_.sent.started_epoch_ms / 1000 + at_s - time.time())):
                return
            if cause == "join":
                worker = self.processes.add_worker()
                name = f"worker-{len(self.processes.workers) - 1}"
                self.actions.append(("join", int(time.time() * 1000), name))
                self.sampler.track(_worker_tracked(name, worker))
                continue
            running = [(i, w) for i, w in enumerate(self.processes.workers) if w.alive()]
            # The newest worker that holds partitions: stopping one still starting measures no pause.
            ready = [(i, w) for i, w in running if _ready(w)]
            if len(running) < 2 or not ready:  # noqa: PLR2004 - one must stay to decide
                continue
            i, worker = ready[-1]
            name = f"worker-{i}"
            self.sampler.sample(name)  # its counters up to the moment it is told to stop
            self.sampler.untrack(name)
            self.actions.append(("leave", int(time.time() * 1000), name))
            worker.stop()


def _ready(worker: WorkerProcess) -> bool:
    try:
        return httpx.get(worker.base_url + "/readyz", timeout=2).status_code == HTTPStatus.OK
    except httpx.HTTPError:
        return False


def _worker_tracked(name: str, worker: WorkerProcess) -> scaling.Tracked:
    assert worker.proc is not None
    return scaling.Tracked(name, "worker", worker.proc.pid, scaling.worker_probe(worker.base_url))


def _tracked(processes: RunProcesses) -> list[scaling.Tracked]:
    """Every process of the run whose CPU can be read here: the broker only when it is the local one."""
    s = processes.settings
    tracked = [_worker_tracked(f"worker-{i}", w) for i, w in enumerate(processes.workers)]
    if processes.sink.proc is not None:
        tracked.append(scaling.Tracked("sink", "sink", processes.sink.proc.pid,
                                       scaling.sink_probe(processes.sink.base_url)))  # fmt: skip
    broker = LocalKafka(s).running_pid() if s.bootstrap == f"127.0.0.1:{s.kafka_port}" else None
    if broker is not None:
        tracked.append(scaling.Tracked("broker", "broker", broker))
    server = s.clickhouse_url.startswith("clickhouse")
    if server and (clickhouse := procs.read_pid(LocalClickHouseServer(s).pid_file)) is not None:
        tracked.append(scaling.Tracked("clickhouse", "clickhouse", clickhouse))
    others = {"generator": os.getpid(), "intake": processes.intake.pid if processes.intake else None}
    if processes.market is not None:
        connectors = processes.market.connectors.proc
        others |= {"connectors": connectors.pid if connectors else None,
                   "simulator": processes.market.simulator.running_pid()}  # fmt: skip
    tracked += [scaling.Tracked(name, "other", pid) for name, pid in others.items() if pid is not None]
    return tracked


def scaling_figures(sampler: scaling.Sampler, membership: MembershipChanges, run: LoadRun, drained_s: float, *,
                    figures_so_far: dict[str, Any], hot_sku: str, workers: int) -> dict[str, Any]:  # fmt: skip
    """Per process and per worker over the measured window (first send to drained), the rebalance windows
    and the decision latency inside them, the hot SKU's figures, and the model's prediction."""
    start_ms, end_ms = run.sent.started_epoch_ms, int(drained_s * 1000)
    decided: dict[str, int] = figures_so_far["series"]["decided_ms"]
    events_per_order = figures_so_far["events_per_order"]
    orders = len(decided)
    kinds = sampler.kinds()
    # Orders/s until the last decision (as achieved_orders_per_s); CPU until drained (timeouts firing
    # after the last decision are orders' work too).
    decided_by_ms = max(max(decided.values(), default=0), start_ms + int(run.schedule.duration_s * 1000))
    figures = scaling.process_figures(sampler.samples, kinds, start_ms, end_ms, orders, decided_by_ms)
    send_ms = int(run.schedule.duration_s * 1000)
    cycles = engine_cycle_figures(sampler.samples, kinds, start_ms + send_ms // 2, start_ms + send_ms)
    cpu = figures["cpu_us_per_order"]
    model = predict(cpu, os.cpu_count() or 1, workers)
    out: dict[str, Any] = {
        "per_process": figures["processes"], "cpu_us_per_order_by_kind": cpu, "model": model.to_json(),
        "broker_measured": "broker" in kinds, **cycles,
        # The [measured] keys of loadtest/capacity.toml, from this run (the hot-SKU ceiling comes from a
        # run whose hot SKU saturates its partition: see docs/capacity.md).
        "capacity_constants": {
            "worker_cpu_us_per_order": cpu.get("worker"), "broker_cpu_us_per_order": cpu.get("broker"),
            "sink_cpu_us_per_order": cpu.get("sink"), "records_per_order": events_per_order,
            "sink_rows_per_order": figures["processes"].get("sink", {}).get("rows_per_order"),
        },
    }  # fmt: skip
    if membership.actions:
        revoked, assigned = scaling.stamps(sampler.samples, kinds)
        windows = scaling.rebalance_windows([(c, t) for c, t, _ in membership.actions], revoked, assigned)
        out["membership"] = [{"cause": c, "at_s": round((t - start_ms) / 1000, 1), "worker": w}
                             for c, t, w in membership.actions]  # fmt: skip
        out["rebalances"] = scaling.windows_json(windows, start_ms)
        out.update(scaling.latency_split(run.sent.orders, decided, windows))
    if hot_sku:
        out.update(scaling.hot_sku_figures(hot_orders(run.schedule, hot_sku), run.sent.orders, decided,
                                           run.schedule.duration_s))  # fmt: skip
    return out


def hot_orders(schedule: Schedule, sku: str) -> set[str]:
    """The order ids of the schedule's orders for ``sku`` alone."""
    return {order_key(e.channel, e.order) for e in schedule.events if e.kind == "order" and e.lines == ((sku, 1),)}


def _drive(run: LoadRun, processes: RunProcesses, console: Console, changes: Changes | None = None,
           hot_sku: str = "") -> dict[str, Any]:  # fmt: skip
    """Stock loaded (and pushed to the channels), the schedule sent (workers joining or leaving on the
    way), drained, measured."""
    market, duration_s = processes.market, run.schedule.duration_s
    with console.status("loading stock..."):
        run.load_stock()
        _wait_for_stock(processes.workers[0], run.schedule.skus[0], processes.logs)
    if market is not None:
        with console.status("the connectors pushing the loaded stock to every channel..."):
            if not market.wait_caught_up(180):
                console.print("[yellow]the connectors were still pushing the loaded stock after 180 s[/yellow]")
        market.mark_start()  # the run measures its own changes, not the catalogue's first upload
    sampler = scaling.Sampler()
    for tracked in _tracked(processes):
        sampler.track(tracked)
    sampler.start()
    membership = MembershipChanges(changes or Changes(), processes, sampler, run)
    membership.start()
    try:
        run.send()
        with console.status("draining..."):
            drained = run.drain(max(120.0, duration_s * 3))
    finally:
        membership.halt.set()
        membership.join(60)
        sampler.stop()
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
        workers = [name for name, kind in sampler.kinds().items() if kind == "worker"]
        stats = [{k.removeprefix("engine."): v for k, v in sampler.last(name, "decisions").items()
                  if k.startswith("engine.")} for name in workers]  # fmt: skip
        figures.update(engine_figures(stats, figures["orders_sent"]))
        figures.update(scaling_figures(sampler, membership, run, drained, figures_so_far=figures, hot_sku=hot_sku,
                                       workers=len(processes.workers)))  # fmt: skip
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
    _wait_stock_applied(worker.settings, deadline, logs)


def _wait_stock_applied(settings: Settings, deadline: float, logs: Path) -> None:
    """Until the engine's group has committed every loaded stock adjustment: one SKU's stock showing
    says the worker consumes, not that the whole catalogue is in (orders for a SKU still waiting
    would be refused for want of stock, and the run would measure the warm-up)."""
    from confluent_kafka import Consumer

    from loadtest.stack import group_lag
    from streams.engine.loop import engine_group
    from streams.kafkaconf import confluent_config

    consumer = Consumer({**confluent_config(settings), "group.id": engine_group(settings), "enable.auto.commit": False})
    try:
        while (lag := group_lag(settings, consumer, (STOCK_ADJUSTMENTS,))) > 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker still had {lag:,} stock adjustments to apply after 120 s; see {logs}")
            time.sleep(0.5)
    finally:
        consumer.close()


def write_chart(figures: dict[str, Any], path: Path) -> Path:
    """Rate, lag and p99 decision latency over the run, as a self-contained HTML page."""
    from streams import extras

    extras.ensure(extras.CHARTS)  # without the `charts` extra: one line naming it, not an ImportError
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
    chart.update_layout(height=900, title=f"stockflow bench: {figures['profile']}, peak {figures['rate']} orders/s")
    chart.update_xaxes(title_text="seconds since the start", row=3, col=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    chart.write_html(str(path), include_plotlyjs=True)
    return path


REQUIRED_KEYS = (
    "offered_orders_per_s", "achieved_orders_per_s", "events_per_s", "baseline_events_per_s", "baseline_ratio",
    "p50_decision_ms", "p99_decision_ms", "p999_decision_ms", "p50_stock_refresh_ms", "p99_stock_refresh_ms",
    "p999_stock_refresh_ms", "oversold_units", "lost_orders", "double_holds", "bad_inputs_sent", "bad_inputs_refused",
)  # fmt: skip
# What every run's table shows: the required figures, then the pipeline's own.
PIPELINE_KEYS = (
    *REQUIRED_KEYS, "baseline_runs_events_per_s", "hold_agent_events_per_s", "orders_sent", "orders_decided",
    "events_per_order", "drained",
    "drain_s", "max_lag", "lag_slope_per_s", "p50_decision_ms_last_10s", "skus_drifted", "intake_errors",
    "sender_behind_ms", "decision_ms_split", "changelog_records_per_order", "engine_events_per_batch",
    "engine_commits_per_s",
    "engine_events_per_commit", "engine_commit_ms", "engine_time_split", "engine_local_share",
    "engine_cpu_us_per_order", "refunds_sent", "refunds_decided", "p50_refund_decision_ms", "p99_refund_decision_ms",
    "refunds_paid_twice", "refunds_lost", "audit_other_failures", "audit_unjudged",
)  # fmt: skip
# With the marketplaces (the default): what reached them.
CHANNEL_KEYS = (
    "channel_pushes", "channel_push_calls", "channel_figures_per_call", "channel_push_calls_per_s_by_channel",
    "channel_changes", "p50_channel_push_ms", "p99_channel_push_ms", "max_channel_push_ms",
    "p99_order_to_channel_ms", "channel_changes_not_shown", "channel_pushes_stale", "channel_pushes_retried",
    "channel_pushes_failed", "marketplace_refusals", "refunds_instructed", "refunds_agreed", "refunds_agreed_twice",
    "refunds_not_agreed",
)  # fmt: skip


# With --join-at / --leave-at, and with --hot-share: the rebalance and hot-SKU figures.
CHANGE_KEYS = (
    "orders_in_rebalance", "p50_decision_ms_in_rebalance", "p99_decision_ms_in_rebalance",
    "max_decision_ms_in_rebalance", "orders_outside_rebalance", "p99_decision_ms_outside_rebalance",
    "hot_sku_orders", "hot_sku_decided", "hot_sku_decisions_per_s", "p99_decision_ms_hot_sku",
    "p99_decision_ms_other_orders",
)  # fmt: skip


def process_table(figures: dict[str, Any]) -> Table:
    """Per process over the measured window, the rebalance windows, and the model's prediction."""
    model = figures.get("model") or {}
    caption = (f"model on {model.get('cores')} cores: {model.get('predicted_orders_per_s', 0):,.0f} orders/s, "
               f"{model.get('binds')} binds; limits {model.get('limits')}")  # fmt: skip
    for w in figures.get("rebalances", []):
        caption += f"\n{w['cause']}: rebalance {w['length_ms']:,} ms from {w['starts_s_into_run']} s"
    table = Table("process", "kind", "orders/s", "orders decided", "CPU s", "CPU µs / order",
                  "CPU µs / own order", "share of a core", title="per process", caption=caption)  # fmt: skip
    for name, p in (figures.get("per_process") or {}).items():
        cells = (p.get("orders_per_s"), p.get("orders_decided"), p.get("cpu_s"), p.get("cpu_us_per_order"),
                 p.get("cpu_us_per_own_order"), p.get("cpu_share_of_a_core"))  # fmt: skip
        table.add_row(name, p["kind"], *("-" if v is None else f"{v:,}" for v in cells))
    return table


def summary_table(figures: dict[str, Any]) -> Table:
    table = Table("figure", "value", title=f"stockflow bench: {figures['profile']}, {figures['workers']} worker(s)")
    for key in (*PIPELINE_KEYS, *(k for k in (*CHANNEL_KEYS, *CHANGE_KEYS) if k in figures)):
        table.add_row(key, _cell(figures[key]))
    return table


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    return f"{value:,}" if isinstance(value, (int, float)) else str(value)
