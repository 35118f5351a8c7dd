"""Per-process figures of a `stockflow bench` run: orders/s and CPU per order for each worker, the broker,
the sink and the rest of the box, and the decision-latency cost of a worker joining or leaving under load.

``Sampler`` (a thread) reads, once a second, every tracked process's CPU time (psutil: user + system,
what ``top`` shows) and, from each worker, the reservation results it published (``/metrics``) and its
engine's rebalance stamps (``/engine/status``: ``assignments``, ``revoked_at_ms``, ``assigned_at_ms``);
from the sink, the rows it inserted (``/sink/status``). It writes nothing. Everything after the samples
is pure: ``process_figures`` (the window's deltas, linearly interpolated at its edges),
``rebalance_windows`` (from the stamps and the bench's join and leave times) and ``latency_split``
(decision p99 of the orders in flight during a rebalance against the others).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

# The topic whose records a worker publishes once per order decided (unprefixed, as /metrics labels it).
DECISIONS_TOPIC = "reservation.results"
STAMPS = ("assignments", "revoked_at_ms", "assigned_at_ms")


@dataclass
class Tracked:
    """A process the sampler reads: ``kind`` is worker, broker, sink, clickhouse or other."""

    name: str
    kind: str
    pid: int
    probe: Callable[[], dict[str, float]] | None = None  # extra counters, read with the CPU time


@dataclass(frozen=True)
class Sample:
    at_ms: int
    values: dict[str, float]  # cpu_s, and the probe's counters when it answered


def decisions_from_metrics(text: str) -> float:
    """Reservation results a worker published, from its Prometheus text (0 before the first)."""
    for family in text_string_to_metric_families(text):
        if family.name.endswith("engine_records_out"):
            return sum(s.value for s in family.samples if s.labels.get("topic") == DECISIONS_TOPIC
                       and s.name.endswith("_total"))  # fmt: skip
    return 0.0


def worker_probe(base_url: str) -> Callable[[], dict[str, float]]:
    """A worker's decisions and rebalance stamps, and its engine stats (for the run's engine figures)."""
    # One client per probe: a new one per request builds an SSL context from the CA bundle each time,
    # which took a sixth of the load generator's CPU at 1,500 orders/s.
    client = httpx.Client(base_url=base_url, timeout=2)

    def probe() -> dict[str, float]:
        metrics = client.get("/metrics").text
        stats = client.get("/engine/status").json().get("stats") or {}
        return {**{f"engine.{k}": float(v) for k, v in stats.items()}, "decisions": decisions_from_metrics(metrics)}

    return probe


def sink_probe(base_url: str) -> Callable[[], dict[str, float]]:
    client = httpx.Client(base_url=base_url, timeout=2)

    def probe() -> dict[str, float]:
        return {"rows": float(client.get("/sink/status").json().get("rows", 0))}

    return probe


class Sampler(threading.Thread):
    """Samples every tracked process every ``interval_s`` until ``stop``; ``track`` adds one at any time
    and ``sample(name)`` takes one at once (before a worker is stopped, say)."""

    def __init__(self, interval_s: float = 1.0) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.interval_s = interval_s
        self.tracked: dict[str, Tracked] = {}
        self.samples: dict[str, list[Sample]] = {}
        self._kinds: dict[str, str] = {}  # kept after ``untrack``: a stopped worker's samples stay a worker's
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def track(self, proc: Tracked) -> None:
        with self._lock:
            self.tracked[proc.name] = proc
            self._kinds[proc.name] = proc.kind
            self.samples.setdefault(proc.name, [])
        self.sample(proc.name)

    def untrack(self, name: str) -> None:
        with self._lock:
            self.tracked.pop(name, None)

    def sample(self, name: str) -> None:
        proc = self.tracked.get(name)
        if proc is None:
            return
        values: dict[str, float] = {}
        at_ms = int(time.time() * 1000)
        with contextlib.suppress(psutil.Error):
            cpu = psutil.Process(proc.pid).cpu_times()
            values["cpu_s"] = cpu.user + cpu.system
        if proc.probe is not None:
            # A worker still starting, or mid-rebalance, may not answer: a gap, never a failed run.
            with contextlib.suppress(httpx.HTTPError, ValueError):
                values.update(proc.probe())
        if values:
            with self._lock:
                self.samples[name].append(Sample(at_ms, values))

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            for name in list(self.tracked):
                self.sample(name)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        for name in list(self.tracked):
            self.sample(name)

    def kinds(self) -> dict[str, str]:
        return dict(self._kinds)

    def last(self, name: str, key: str = "cpu_s") -> dict[str, float]:
        """The newest sample of ``name`` that has ``key`` (its final counters once it has stopped)."""
        for s in reversed(self.samples.get(name) or []):
            if key in s.values:
                return s.values
        return {}


# ---- pure: figures from samples ---------------------------------------------------------------------


def value_at(samples: list[Sample], key: str, at_ms: int) -> float | None:
    """``key`` at ``at_ms``: linear between the samples around it, the nearest one outside them."""
    points = [(s.at_ms, s.values[key]) for s in samples if key in s.values]
    if not points:
        return None
    if at_ms <= points[0][0]:
        return points[0][1]
    for (t0, v0), (t1, v1) in itertools.pairwise(points):
        if t0 <= at_ms <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (at_ms - t0) / (t1 - t0)
    return points[-1][1]


def delta(samples: list[Sample], key: str, start_ms: int, end_ms: int) -> float | None:
    a, b = value_at(samples, key, start_ms), value_at(samples, key, end_ms)
    return None if a is None or b is None else max(0.0, b - a)


def _active_s(samples: list[Sample], start_ms: int, end_ms: int) -> float:
    """Seconds of the window the process was sampled in (a worker joining late or leaving early)."""
    if not samples:
        return 0.0
    return max(0.0, (min(end_ms, samples[-1].at_ms) - max(start_ms, samples[0].at_ms)) / 1000)


def process_figures(samples: Mapping[str, list[Sample]], kinds: Mapping[str, str], start_ms: int, end_ms: int,
                    orders: int, decided_by_ms: int = 0) -> dict[str, Any]:  # fmt: skip
    """CPU over the window per process and per order decided in it; for workers, their own decisions, orders/s
    while they ran (up to ``decided_by_ms``, default the window's end) and CPU per order they decided; CPU µs
    per order per kind (``worker`` is every worker)."""
    per_process: dict[str, dict[str, Any]] = {}
    by_kind: dict[str, float] = {}
    window_s = max((end_ms - start_ms) / 1000, 1e-3)
    for name, series in samples.items():
        cpu = delta(series, "cpu_s", start_ms, end_ms)
        entry: dict[str, Any] = {"kind": kinds.get(name, "other"), "cpu_s": None, "cpu_share_of_a_core": None,
                                 "cpu_us_per_order": None}  # fmt: skip
        if cpu is not None:
            entry.update({"cpu_s": round(cpu, 2), "cpu_share_of_a_core": round(cpu / window_s, 3),
                          "cpu_us_per_order": round(1e6 * cpu / max(orders, 1))})  # fmt: skip
        if entry["kind"] == "worker":
            decided = delta(series, "decisions", start_ms, end_ms) or 0.0
            active = _active_s(series, start_ms, min(end_ms, decided_by_ms or end_ms))
            entry.update({"orders_decided": int(decided), "active_s": round(active, 1),
                          "orders_per_s": round(decided / active, 1) if active else 0.0,
                          "cpu_us_per_own_order": round(1e6 * cpu / decided) if cpu and decided else None})  # fmt: skip
        rows = delta(series, "rows", start_ms, end_ms)
        if rows is not None:
            entry["rows_per_order"] = round(rows / max(orders, 1), 2)
        per_process[name] = entry
        if cpu is not None:
            by_kind[entry["kind"]] = by_kind.get(entry["kind"], 0.0) + 1e6 * cpu / max(orders, 1)
    return {"processes": per_process, "cpu_us_per_order": {k: round(v) for k, v in sorted(by_kind.items())}}


@dataclass(frozen=True)
class Window:
    """A rebalance: from the first worker that stopped deciding (a revocation, or the leaving worker's
    SIGTERM) to the last assignment restored after it; ``end_ms`` 0 when none was seen."""

    cause: str  # "join" or "leave"
    action_ms: int  # when the bench started the worker or sent SIGTERM
    start_ms: int
    end_ms: int

    @property
    def length_ms(self) -> int:
        return self.end_ms - self.start_ms if self.end_ms else 0


def stamps(samples: Mapping[str, list[Sample]], kinds: Mapping[str, str]) -> tuple[list[int], list[int]]:
    """Every distinct revocation and restored-assignment time the workers reported (epoch ms, sorted)."""
    revoked, assigned = set(), set()
    for name, series in samples.items():
        if kinds.get(name) != "worker":
            continue
        for s in series:
            if s.values.get("engine.revoked_at_ms"):
                revoked.add(int(s.values["engine.revoked_at_ms"]))
            if s.values.get("engine.assigned_at_ms"):
                assigned.add(int(s.values["engine.assigned_at_ms"]))
    return sorted(revoked), sorted(assigned)


def rebalance_windows(actions: Iterable[tuple[str, int]], revoked: list[int], assigned: list[int]) -> list[Window]:
    """One window per join or leave (``actions``: (cause, epoch ms)), each ending before the next begins.
    A join pauses nobody until the group rebalances, so its window starts at the first revocation after
    it; a leave starts at the SIGTERM (the leaving worker stops deciding then)."""
    ordered = sorted(actions, key=lambda a: a[1])
    windows = []
    for n, (cause, at_ms) in enumerate(ordered):
        until = ordered[n + 1][1] if n + 1 < len(ordered) else 2**62
        if cause == "leave":
            start = at_ms
        else:
            after = [t for t in revoked if at_ms <= t < until] or [t for t in assigned if at_ms <= t < until]
            if not after:
                windows.append(Window(cause, at_ms, at_ms, 0))
                continue
            start = min(after)
        ends = [t for t in assigned if start <= t < until]
        windows.append(Window(cause, at_ms, start, max(ends) if ends else 0))
    return windows


def _p(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def latency_split(sent: Mapping[str, int], decided: Mapping[str, int], windows: list[Window]) -> dict[str, Any]:
    """Decision latency of the orders in flight during a rebalance window (sent before it ended, decided
    after it began) against every other order."""
    spans = [(w.start_ms, w.end_ms) for w in windows if w.end_ms]
    inside: list[float] = []
    outside: list[float] = []
    for order, sent_ms in sent.items():
        decided_ms = decided.get(order)
        if decided_ms is None:
            continue
        hit = any(sent_ms <= end and decided_ms >= start for start, end in spans)
        (inside if hit else outside).append(decided_ms - sent_ms)
    return {"orders_in_rebalance": len(inside), "p50_decision_ms_in_rebalance": round(_p(inside, 0.5), 1),
            "p99_decision_ms_in_rebalance": round(_p(inside, 0.99), 1), "max_decision_ms_in_rebalance":
            round(max(inside, default=0.0), 1), "orders_outside_rebalance": len(outside),
            "p99_decision_ms_outside_rebalance": round(_p(outside, 0.99), 1)}  # fmt: skip


def hot_sku_figures(hot_orders: set[str], sent: Mapping[str, int], decided: Mapping[str, int],
                    window_s: float) -> dict[str, Any]:  # fmt: skip
    """The hot SKU's decisions/s (over the send window, or until its last decision if later) and its
    decision p99 against the other orders'."""
    hot = [decided[o] - sent[o] for o in hot_orders if o in decided and o in sent]
    rest = [decided[o] - sent[o] for o in sent if o in decided and o not in hot_orders]
    first = min((sent[o] for o in hot_orders if o in sent), default=0)
    last = max((decided[o] for o in hot_orders if o in decided), default=0)
    span_s = max(window_s, (last - first) / 1000 if last else 0.0, 1e-3)
    return {"hot_sku_orders": len(hot_orders), "hot_sku_decided": len(hot),
            "hot_sku_decisions_per_s": round(len(hot) / span_s, 1), "p99_decision_ms_hot_sku": round(_p(hot, 0.99), 1),
            "p99_decision_ms_other_orders": round(_p(rest, 0.99), 1)}  # fmt: skip


def windows_json(windows: list[Window], started_ms: int) -> list[dict[str, Any]]:
    return [{**asdict(w), "length_ms": w.length_ms, "starts_s_into_run": round((w.start_ms - started_ms) / 1000, 1)}
            for w in windows]  # fmt: skip
