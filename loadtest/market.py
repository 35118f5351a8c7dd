"""The marketplaces' side of a load run: the simulator, the outbound connectors, and what the simulator accepted.

``Marketplaces(settings, logs, tag, qps)`` starts, for one run and stopped with it:

- the marketplace simulator (``stockflow sim serve``) as a background process on a free 127.0.0.1 port,
  with apps generated for the run (``<logs>/bench-<tag>-sim/apps.json``, owner-only), its pid and log in
  that folder, the default answer latency (``STOCKFLOW_SIM_LATENCY_MS`` + up to ``STOCKFLOW_SIM_JITTER_MS``)
  and, per app, ``qps`` calls a second (0: each platform's documented limit);
- the run's credentials for every channel in a credentials file of the run
  (``<logs>/bench-<tag>-credentials.json``), never the operator's;
- one ``stockflow connectors run`` pointed at the simulator (``STOCKFLOW_MARKETPLACE_URL``), allowed
  ``CONNECTOR_SHARE`` of the simulator's limit;
- a watcher thread copying the simulator's recorded calls (``/_sim/calls``) every ``POLL_S``, so a run
  of any length is measured whatever the simulator keeps (a gap in its record numbers is counted). The
  connectors push stock as many-SKU calls, which the simulator records as one ``stock`` record per
  figure carrying the call's number (``batch``): the figures are what the latency is measured on, the
  numbers say how many calls carried them.

``channel_push_latencies`` (pure) pairs the levels the pool published on ``stock.levels`` with the stock
updates each channel accepted: a level whose figure for a channel differs from the level before it
is a change that channel must show; the channel has caught up with it when the simulator accepts an
update for the SKU carrying that level's version or a newer one (pushes are coalesced, so a newer
figure covers an older), or when it shows the pool's figure again.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer

from agents.channels.credentials import CredentialStore
from agents.channels.platforms import PLATFORMS, parse_stock
from agents.channels.sim_client import SimulatorClient
from agents.channels.simulator import LocalSimulator, SimulatorError, generate_apps, simulator_keys
from loadtest.stack import group_lag
from streams.contract.codec import Codec
from streams.contract.topics import CONNECTOR_FAILED, REFUND_INSTRUCTIONS, STOCK_LEVELS, TopicSpec
from streams.devstack.connectorproc import ConnectorsProcess
from streams.devstack.procs import free_ports
from streams.engine.clock import wall_ms
from streams.engine.topicreader import read_all
from streams.kafkaconf import confluent_config
from streams.settings import Settings

BENCH_QPS = 1000.0  # per app and channel: above what the load needs, so the figure is the pipeline's
BURST_S = 0.2  # an idle app may make this many seconds' worth of calls at once
CONNECTOR_SHARE = 0.9  # of the simulator's limit, as the connectors keep under a platform's
POLL_S = 2.0
CAUGHT_UP_QUIET_S = 2.0  # connectors' groups at the end of their topics this long: nothing left to send


@dataclass(frozen=True)
class LevelSeen:
    """A stock level as the pool published it, what the channel-push measurement needs of it."""

    sku: str
    version: int  # newest_change_ms: when the pool applied the newest change it includes
    source_ms: int  # newest_source_ms: the intended send time of the newest order it holds stock for
    sellable: dict[str, int]


@dataclass(frozen=True)
class StockAccepted:
    """A stock update the simulator applied: from ``at_ms`` ``channel`` shows ``quantity`` of ``sku``, as of
    level ``version``."""

    channel: str
    sku: str
    quantity: int
    version: int
    at_ms: int


@dataclass
class PushLatencies:
    from_change_ms: list[float] = field(default_factory=list)  # the pool's change -> the channel shows it
    from_order_ms: list[float] = field(default_factory=list)  # the order's intended send -> the channel shows it
    by_channel: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    missing: int = 0  # changes the channel never caught up with


def stock_accepted(row: dict[str, Any]) -> StockAccepted | None:
    """A simulator call record (``/_sim/calls``) as a ``StockAccepted``; None unless an applied stock update."""
    if row.get("endpoint") != "stock" or row.get("result") != "applied":
        return None
    channel = str(row["channel"])
    update = parse_stock(channel, row["body"])
    return StockAccepted(channel, update.sku, update.quantity, update.version, int(row["accepted_at_ms"]))


def channel_push_latencies(levels: Iterable[LevelSeen], accepted: Iterable[StockAccepted], channels: Sequence[str],
                           since_ms: int) -> PushLatencies:  # fmt: skip
    """Per change of a channel's figure at or after ``since_ms``: how long until that channel caught up with it.

    A level whose figure for a channel (``max(0, sellable[channel])``, what the connector sends) differs
    from the SKU's level before it is a change; the first level of a SKU is one (the channel showed
    nothing). The channel has caught up with a change at version ``v`` when it accepts an update carrying
    ``v`` or a newer version (pushes are coalesced: a newer figure covers an older one), or when what it
    shows equals the pool's figure again (a figure that went back to what the channel shows needs no call:
    the connector skips it). ``levels`` in any order; a level published twice (a restart) counts once.
    ``from_order_ms`` counts only levels that hold stock for an order newer than the level before
    (``source_ms`` grew), from that order's intended send time.
    """
    by_sku: dict[str, dict[int, LevelSeen]] = defaultdict(dict)
    for level in levels:
        by_sku[level.sku].setdefault(level.version, level)
    shown: dict[tuple[str, str], list[StockAccepted]] = defaultdict(list)
    for a in accepted:
        shown[(a.channel, a.sku)].append(a)
    out = PushLatencies()
    for sku, by_version in by_sku.items():
        ordered = [by_version[v] for v in sorted(by_version)]
        for channel in channels:
            _sweep(channel, ordered, sorted(shown.get((channel, sku), []), key=lambda a: a.at_ms), since_ms, out)
    return out


def _sweep(channel: str, levels: list[LevelSeen], accepted: list[StockAccepted], since_ms: int,
           out: PushLatencies) -> None:  # fmt: skip
    """One SKU on one channel: the pool's figure and the channel's, in time order (see ``channel_push_latencies``)."""
    # (time, 0 = the channel accepted an update / 1 = the pool changed, the item): at one instant the channel's
    # answer is applied first, so a change it already shows is caught up at once.
    events: list[tuple[int, int, StockAccepted | LevelSeen]] = [(a.at_ms, 0, a) for a in accepted]
    events += [(level.version, 1, level) for level in levels]
    events.sort(key=lambda e: (e[0], e[1]))
    pool: int | None = None
    showing: int | None = None
    # Changes the channel has not caught up with, oldest first: (version, the new order's send time or None).
    waiting: list[tuple[int, int | None]] = []

    def caught_up(at_ms: int, upto_version: int) -> None:
        while waiting and waiting[0][0] <= upto_version:
            version, source_ms = waiting.pop(0)
            out.from_change_ms.append(float(at_ms - version))
            out.by_channel[channel].append(float(at_ms - version))
            if source_ms is not None:
                out.from_order_ms.append(float(at_ms - source_ms))

    previous: LevelSeen | None = None
    for at_ms, _, item in events:
        if isinstance(item, StockAccepted):
            showing = item.quantity
            caught_up(at_ms, item.version)
        else:
            figure = max(0, item.sellable.get(channel, 0))
            if figure != pool and item.version >= since_ms:
                new_order = previous is None or item.source_ms > previous.source_ms
                waiting.append((item.version, item.source_ms if new_order and item.source_ms >= since_ms else None))
            pool, previous = figure, item
        if waiting and showing == pool:
            caught_up(at_ms, waiting[-1][0])
    out.missing += len(waiting)


def refund_agreements(
    sent: Iterable[str], instructed: Iterable[str], agreed: Iterable[dict[str, Any]]
) -> dict[str, int]:
    """Refund figures from the simulator's refund records (``/_sim/refunds``): of the refunds the load sent
    (stockflow's ids, ``<channel>:<channel refund id>``), how many stockflow instructed, how many the
    marketplace agreed, agreed more than once (one refund id, or one order, agreed twice), instructed but
    not agreed, and the repeats the marketplace answered "already agreed"."""
    wanted = set(sent)
    instructed_ids = wanted & set(instructed)
    per_refund: Counter[str] = Counter()
    per_order: Counter[tuple[str, str]] = Counter()
    order_of: dict[str, tuple[str, str]] = {}
    repeats = 0
    for record in agreed:
        refund_id = f"{record['channel']}:{record['refund_id']}"
        order = (str(record["channel"]), str(record.get("channel_order_id") or record["refund_id"]))
        per_order[order] += int(record.get("agreed", 1))  # every refund id: a second one for an order is a double
        if refund_id not in wanted:
            continue
        per_refund[refund_id] += int(record.get("agreed", 1))
        repeats += int(record.get("duplicate_attempts", 0))
        order_of[refund_id] = order
    twice = {r for r, n in per_refund.items() if n > 1} | {r for r, o in order_of.items() if per_order[o] > 1}
    return {
        "refunds_instructed": len(instructed_ids),
        "refunds_agreed": len(per_refund),
        "refunds_agreed_twice": len(twice),
        "refunds_not_agreed": len(instructed_ids - set(per_refund)),
        "refund_agree_repeats": repeats,
    }


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]), 1)


@dataclass(frozen=True)
class StockCalls:
    """The stock calls a channel's connector made in a run, and the figures they carried."""

    calls: int
    figures: int
    span_s: float  # from the run's start to the last call

    @property
    def per_s(self) -> float:
        return round(self.calls / self.span_s, 1) if self.span_s > 0 else 0.0


def stock_calls(rows: Iterable[tuple[str, int, int]], since_ms: int) -> dict[str, StockCalls]:
    """Per channel, from ``(channel, accepted_at_ms, batch)`` per stock figure the simulator recorded: the calls
    at or after ``since_ms`` (a many-SKU call's figures share its ``batch`` number; 0 is a call of its own)."""
    calls: Counter[str] = Counter()
    figures: Counter[str] = Counter()
    last: dict[str, int] = {}
    seen: set[int] = set()
    for channel, at_ms, batch in rows:
        if at_ms < since_ms:
            continue
        figures[channel] += 1
        last[channel] = max(last.get(channel, at_ms), at_ms)
        if batch == 0 or batch not in seen:
            seen.add(batch)
            calls[channel] += 1
    return {c: StockCalls(calls[c], figures[c], (last[c] - since_ms) / 1000) for c in sorted(figures)}


class CallWatch(threading.Thread):
    """Copies the simulator's recorded calls as they happen; keeps the applied stock updates and, per stock
    figure, its channel, time and call."""

    def __init__(self, client: SimulatorClient) -> None:
        super().__init__(name="simulator-calls", daemon=True)
        self.client = client
        self.stock: list[StockAccepted] = []
        self.stock_rows: list[tuple[str, int, int]] = []  # (channel, accepted_at_ms, batch) per stock figure
        self.calls: Counter[str] = Counter()  # "<endpoint>:<result>"
        self.missed = 0  # calls the simulator dropped before they were read (a gap in its numbers)
        self.last_seq = 0
        self.errors = 0
        self._since_ms = 0
        self._done = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._done.wait(POLL_S):
            self.poll()

    def poll(self) -> None:
        with self._lock:
            try:
                rows = self.client.calls(since_ms=self._since_ms)
            except (SimulatorError, ValueError):  # not reached, or an answer cut short
                self.errors += 1  # read again at the next turn: since_ms has not moved
                return
            for row in rows:
                seq = int(row["seq"])
                if seq <= self.last_seq:
                    continue
                self.missed += seq - self.last_seq - 1
                self.last_seq = seq
                self._since_ms = max(self._since_ms, int(row["accepted_at_ms"]))
                self.calls[f"{row['endpoint']}:{row['result']}"] += 1
                if row["endpoint"] == "stock":
                    self.stock_rows.append((str(row["channel"]), int(row["accepted_at_ms"]), int(row.get("batch", 0))))
                accepted = stock_accepted(row)
                if accepted is not None:
                    self.stock.append(accepted)

    def stop(self) -> None:
        self._done.set()
        self.join(30)
        self.poll()  # whatever came after the last turn


class Marketplaces:
    """The simulator, the credentials and the connectors of one run; ``start()``, then ``stop()`` (always)."""

    def __init__(self, settings: Settings, logs: Path, tag: str, qps: float = BENCH_QPS) -> None:
        self.qps = qps
        self.folder = logs / f"bench-{tag}-sim"
        self.folder.mkdir(parents=True, exist_ok=True)
        sim_port, connectors_port = free_ports(2)
        self.sim_port = sim_port
        self.channels = [c for c in settings.channels if c in CONNECTOR_FAILED]
        connector_qps = {c: round(self._limit(c) * CONNECTOR_SHARE, 1) for c in self.channels} if qps else {}
        self.settings = settings.model_copy(update={
            "marketplace_url": f"http://127.0.0.1:{sim_port}",
            "connector_credentials_file": logs / f"bench-{tag}-credentials.json",
            "connectors_port": connectors_port, "connector_qps": connector_qps,
        })  # fmt: skip
        # The simulator's pid, log and apps live in the run's folder, not the home's `sim up` one.
        self.simulator = LocalSimulator(settings.model_copy(update={"home": self.folder}))
        self.connectors = ConnectorsProcess(self.settings, logs / f"bench-{tag}-connectors.log")
        self.client = SimulatorClient(self.settings.marketplace_url)
        self.watch = CallWatch(self.client)
        self._lag_probes: list[tuple[Consumer, TopicSpec]] = []  # never subscribed: they only read committed offsets
        self._refusals_before: Counter[str] = Counter()
        self._stats_before: dict[str, Counter[str]] = {}

    def _limit(self, channel: str) -> float:
        return self.qps or PLATFORMS[channel].default_qps

    # ---- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> Marketplaces:
        """Start the simulator (and set its limits) and the connectors; returns once the simulator answers
        (``wait_ready`` waits for the connectors)."""
        apps = generate_apps()
        apps_file = self.folder / "apps.json"
        fd = os.open(apps_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({c: [a.model_dump(exclude_none=True) for a in specs] for c, specs in apps.items()}, fh)
        self.simulator.up(port=self.sim_port, apps_file=apps_file)
        if self.qps:
            for channel in self.channels:
                self.client.configure(channel, qps=self.qps, burst=max(1.0, self.qps * BURST_S))
        store = CredentialStore.from_settings(self.settings)
        for key in simulator_keys(apps, self.channels, date.today() + timedelta(days=365), wall_ms()):
            store.set_key(key)
        self.watch.start()
        self.connectors.start()
        return self

    def wait_ready(self) -> None:
        self.connectors.wait_ready()

    def stop(self) -> None:
        """Stop the connectors, the watcher and the simulator, each whatever happens to another; safe to call
        whatever was started."""
        with contextlib.ExitStack() as stack:  # runs every callback, last pushed first
            stack.callback(self.client.close)
            stack.callback(self.simulator.down)
            if self.watch.is_alive():
                stack.callback(self.watch.stop)
            stack.callback(self.connectors.stop)
            for probe, _ in self._lag_probes:
                stack.callback(probe.close)

    # ---- during the run ---------------------------------------------------------------------------------
    def lag(self) -> int:
        """Stock levels and refund instructions the connectors have not finished (committed) yet."""
        if not self._lag_probes:
            app = self.settings.app_id
            for group, topic in ((f"{app}.connectors.stock", STOCK_LEVELS),
                                 (f"{app}.connectors.refunds", REFUND_INSTRUCTIONS)):  # fmt: skip
                probe = Consumer({**confluent_config(self.settings), "group.id": group,
                                  "enable.auto.commit": False})  # fmt: skip
                self._lag_probes.append((probe, topic))
        return sum(group_lag(self.settings, probe, (topic,)) for probe, topic in self._lag_probes)

    def wait_caught_up(self, timeout_s: float) -> bool:
        """Until the connectors have sent everything the pipeline published (True), or ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            if self.connectors.proc is not None and not self.connectors.alive():
                raise RuntimeError(f"the connectors exited; see {self.connectors.log_file}:\n"
                                   f"{self.connectors.log_tail()}")  # fmt: skip
            if self.lag() == 0:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= CAUGHT_UP_QUIET_S:
                    return True
            else:
                quiet_since = None
            time.sleep(0.5)
        return False

    def mark_start(self) -> None:
        """The run starts now: refusals and connector figures are counted from here."""
        self._refusals_before = self._refusals()
        self._stats_before = self._stock_stats()

    def _refusals(self) -> Counter[str]:
        counters: Counter[str] = Counter()
        for figures in self.client.status()["channels"].values():
            for name, n in figures["counters"].items():
                if name.startswith("refused:"):
                    counters[name.removeprefix("refused:")] += n
        return counters

    def _stock_stats(self) -> dict[str, Counter[str]]:
        status = self.connectors.get("/connectors/status", timeout_s=30)
        return {channel: Counter({k: v for k, v in c["endpoints"]["stock"].items() if isinstance(v, int)})
                for channel, c in status.get("channels", {}).items()}  # fmt: skip

    # ---- figures ---------------------------------------------------------------------------------------
    def figures(self, levels: Sequence[LevelSeen], sent_refunds: Iterable[str], started_ms: int,
                codec: Codec) -> dict[str, Any]:  # fmt: skip
        """The run's channel figures (call after ``wait_caught_up``)."""
        self.watch.stop()
        pushes = channel_push_latencies(levels, self.watch.stock, self.channels, started_ms)
        refusals = self._refusals() - self._refusals_before
        stats = self._stock_stats()
        connector = Counter[str]()
        for channel, now in stats.items():
            connector.update(now - self._stats_before.get(channel, Counter()))
        topic = self.settings.topic(REFUND_INSTRUCTIONS.name)
        instructed = {codec.decode(r.value)[1]["refund_id"] for r in read_all(self.settings, topic, 30)}
        calls = stock_calls(self.watch.stock_rows, started_ms)
        total_calls = sum(c.calls for c in calls.values())
        figures_per_call = sum(c.figures for c in calls.values()) / total_calls if total_calls else 0.0
        return {
            "channel_pushes": sum(1 for a in self.watch.stock if a.at_ms >= started_ms),
            "channel_push_calls": total_calls,
            "channel_figures_per_call": round(figures_per_call, 1),
            "channel_push_calls_per_s_by_channel": {c: v.per_s for c, v in calls.items()},
            "channel_changes": len(pushes.from_change_ms) + pushes.missing,
            "p50_channel_push_ms": _percentile(pushes.from_change_ms, 0.5),
            "p99_channel_push_ms": _percentile(pushes.from_change_ms, 0.99),
            "max_channel_push_ms": _percentile(pushes.from_change_ms, 1.0),
            "p99_order_to_channel_ms": _percentile(pushes.from_order_ms, 0.99),
            "p99_channel_push_by_channel_ms": {c: _percentile(v, 0.99) for c, v in sorted(pushes.by_channel.items())},
            "channel_changes_not_shown": pushes.missing,
            # Per figure: the connectors push through many-SKU calls, whose figures are counted one by one.
            "channel_pushes_stale": connector["items_stale"] + connector["stale"],
            "channel_pushes_retried": connector["retried"],
            "channel_pushes_failed": connector["items_failed"],
            "marketplace_refusals": sum(refusals.values()),
            "marketplace_refusals_by_kind": dict(refusals),
            "marketplace_qps": self.qps or "platform defaults",
            "sim_calls_missed": self.watch.missed,
            **refund_agreements(sent_refunds, instructed, self.client.refunds()),
        }
