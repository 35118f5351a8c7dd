"""Run a shadow: a second copy of the hot pipeline with the candidate rule swapped in.

The same engine (``streams.engine.loop.Engine``) with the same processors as a worker - the order
lifecycle, the stock pool and refunds - and the in-memory routing view, built from settings whose
``topic`` sends everything but the live inputs under the shadow's prefix (``agents.shadow.candidate``).

Reads: the live input topics (``order.events``, ``stock.adjustments``, ``ops.overrides``,
``refund.events``) from their beginning as consumer group ``<app id>.shadow.<name>.engine``; its own
internal topics; its own ``stock.levels`` and ``warehouse.performance`` for the routing view; the live
``ops.clock`` under ``STOCKFLOW_CLOCK_CONTROL``. ``refund.issued`` is written only by the live
connectors, so the shadow's (empty) one never says a refund was paid out: refund decisions are
compared, not payments.
Writes: only topics under ``shadow.<name>.``: its decisions, internal topics, changelogs, alerts and
dead letters. No connector, notifier, sink or audit reads them.
Owns: its engine state under ``<home>/state/<app id>.shadow.<name>/`` and ``<home>/shadow/<name>/status.json``
(ready, lag behind the live inputs, when it caught up, engine counters), rewritten every few seconds.

No Faust: the engine runs in a thread of this process as in ``loadtest.engine_bench``; the routing view
and the clock are followed by a plain consumer thread. A shadow costs as much CPU as the live
pipeline; ``stockflow shadow start`` lowers its priority so live decisions come first on a shared box.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from agents.inventory.hold_stock import HoldStock
from agents.orders.run_lifecycle import RunLifecycle
from agents.refunds.run_refunds import RunRefunds
from agents.routing.warehouse_view import WarehouseView
from agents.routing.warehouses import load_warehouses
from agents.shadow.candidate import (
    CONNECTOR_ONLY,
    LIVE_INPUTS,
    CandidateError,
    ShadowHome,
    ShadowSettings,
    shadow_settings,
)
from streams.contract.codec import Codec, DecodeError, codec_for
from streams.contract.topics import ALL_TOPICS, OPS_CLOCK, STOCK_LEVELS, WAREHOUSE_PERFORMANCE, ensure_topics
from streams.engine.changelog import changelog_topic, ensure_changelogs
from streams.engine.clock import Clock
from streams.engine.loop import Engine, engine_group
from streams.kafkaconf import confluent_config
from streams.priority import lower_priority
from streams.settings import Settings

log = logging.getLogger(__name__)
LOG_LEVELS = {"crit": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO,
              "debug": logging.DEBUG}  # fmt: skip
STATUS_EVERY_S = 2.0
FOLLOW_WAIT_S = 0.05
LAG_EVERY_S = 5.0
# The process exits with this when its engine stopped on an error or stalled (as a worker does).
FAILED_EXIT = 3


@dataclass
class ShadowPipeline:
    """The shadow's engine and what it routes with."""

    settings: ShadowSettings
    codec: Codec
    clock: Clock
    view: WarehouseView
    engine: Engine


def build(live: Settings, home: ShadowHome) -> ShadowPipeline:
    """The hot processors as ``agents.worker.create_app`` builds them, on the shadow's settings."""
    settings = shadow_settings(live, home.load(), home)
    codec, clock = codec_for(settings), Clock()
    view = WarehouseView.from_settings(settings)
    pool = HoldStock.from_settings(settings, frozenset(load_warehouses(settings.warehouses_file)))
    lifecycle = RunLifecycle.from_settings(settings, view)
    refunds = RunRefunds.from_settings(settings)
    engine = Engine(settings, codec, clock, [lifecycle, pool, refunds])
    return ShadowPipeline(settings, codec, clock, view, engine)


def missing_live_inputs(live: Settings) -> list[str]:
    """The live input topics the broker does not have (the shadow has nothing to read from them)."""
    existing = AdminClient(confluent_config(live)).list_topics(timeout=15).topics
    return sorted(live.topic(name) for name in LIVE_INPUTS if live.topic(name) not in existing)


def ensure_shadow_topics(settings: ShadowSettings, stores: list[str], timeout_s: float = 60.0) -> list[str]:
    """Create the shadow's own topics - every contract topic but the live inputs and the connectors'
    failed queues, and its stores' changelogs - and wait until the broker serves them all; the live
    inputs are left alone, they are the live pipeline's."""
    specs = tuple(s for s in ALL_TOPICS if s.name not in LIVE_INPUTS and s.name not in CONNECTOR_ONLY)
    created = ensure_topics(settings, specs)
    ensure_changelogs(settings, stores)
    # A topic is created before every broker serves its partitions; a shadow starts fast enough to
    # restore from a changelog whose partitions its consumer does not know yet ("unknown partition").
    wanted = {settings.topic(s.name): s.partitions(settings) for s in specs}
    wanted |= {changelog_topic(settings, store): settings.partitions for store in stores}
    admin = AdminClient(confluent_config(settings))
    deadline = time.monotonic() + timeout_s
    while True:
        served = admin.list_topics(timeout=15).topics
        missing = sorted(name for name, count in wanted.items()
                         if name not in served or len(served[name].partitions) != count
                         or any(p.leader < 0 for p in served[name].partitions.values()))  # fmt: skip
        if not missing:
            return created
        if time.monotonic() > deadline:
            raise TimeoutError(f"the broker does not serve the shadow's topics {missing} after {timeout_s:.0f}s")
        time.sleep(0.2)


class Follower:
    """Keeps the routing view (the shadow's own ``stock.levels`` and ``warehouse.performance``, as the
    worker's ``agents.routing.warehouse_view`` does from the live ones) and, under clock control, the
    pipeline clock (the live ``ops.clock``, as ``streams.engine.clock_control`` does). Every partition,
    from the beginning, outside any consumer group."""

    def __init__(self, pipe: ShadowPipeline) -> None:
        self.pipe = pipe
        settings = pipe.settings
        self.specs = [STOCK_LEVELS, WAREHOUSE_PERFORMANCE] + ([OPS_CLOCK] if settings.clock_control else [])

    def run(self, stop: threading.Event) -> None:
        settings, view, clock = self.pipe.settings, self.pipe.view, self.pipe.clock
        consumer = Consumer({
            **confluent_config(settings), "group.id": f"{settings.app_id}.view",
            "enable.auto.commit": False, "isolation.level": "read_committed", "auto.offset.reset": "earliest",
            "client.id": f"{settings.app_id}-warehouse-view",
        })  # fmt: skip
        consumer.assign([
            TopicPartition(settings.topic(spec.name), p, OFFSET_BEGINNING)
            for spec in self.specs
            for p in range(spec.partitions(settings))
        ])  # fmt: skip
        try:
            while not stop.is_set():
                # A short wait: consume() returns after it, not at the first record, and routing
                # should see a new level as soon as the worker's view would.
                for msg in consumer.consume(5000, FOLLOW_WAIT_S):
                    if msg.error() is not None:
                        continue  # the client reconnects by itself; the view waits
                    value = msg.value()
                    try:
                        kind, record = self.pipe.codec.decode(value if isinstance(value, bytes) else b"")
                    except DecodeError:
                        continue  # the shadow has no sink: unreadable bytes here are the shadow's own
                    name = kind.short_name
                    if name == "StockLevel":
                        view.apply_level(record)
                    elif name == "ShipmentOutcome":
                        view.apply_outcome(record)
                    elif name == "ClockAdvanced":
                        clock.advance_to(int(record["offset_ms"]))
                view.ready = True
        finally:
            consumer.close()


class Lag:
    """How far the shadow's engine is behind its inputs: high watermarks minus the group's committed
    offsets. Its own consumer, which never joins the group: it only asks."""

    def __init__(self, pipe: ShadowPipeline) -> None:
        settings = pipe.settings
        self.consumer = Consumer({**confluent_config(settings), "group.id": pipe.engine.group_id,
                                  "enable.auto.commit": False})  # fmt: skip
        self.partitions = [
            TopicPartition(topic, p) for topic in sorted(pipe.engine.by_topic) for p in range(settings.partitions)
        ]

    def events(self) -> int | None:
        try:
            committed = self.consumer.committed(self.partitions, timeout=10)
            behind = 0
            for tp in committed:
                low, high = self.consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
                behind += max(0, high - (tp.offset if tp.offset >= 0 else low))
            return behind
        except KafkaException as exc:
            log.warning("cannot read the shadow's lag: %s", exc)
            return None

    def close(self) -> None:
        self.consumer.close()


@dataclass
class Runner:
    """The shadow process: engine and follower threads, status file, watchdog."""

    live: Settings
    home: ShadowHome
    stop: threading.Event = field(default_factory=threading.Event)
    error: str = ""
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    caught_up_ms: int = 0
    lag: int | None = None

    def run(self) -> int:
        """Until ``stop`` is set: 0, or ``FAILED_EXIT`` when the engine failed or stalled."""
        pipe = build(self.live, self.home)
        missing = missing_live_inputs(self.live)
        if missing:
            raise CandidateError(f"the live input topics {missing} do not exist: is STOCKFLOW_TOPIC_PREFIX the live "
                                 "pipeline's? (`stockflow topics create` makes them)")  # fmt: skip
        ensure_shadow_topics(pipe.settings, list(pipe.engine.store_specs))
        threads = [self._thread("shadow-engine", pipe.engine.run), self._thread("shadow-view", Follower(pipe).run)]
        lag = Lag(pipe)
        failed = False
        try:
            for thread in threads:
                thread.start()
            lag_at = 0.0
            while not self.stop.wait(STATUS_EVERY_S):
                if pipe.engine.ready.is_set() and time.monotonic() - lag_at >= LAG_EVERY_S:
                    lag_at = time.monotonic()
                    self._note_lag(lag.events(), pipe.settings.batch_max_events)
                failed = self._failed(pipe, threads)
                self._write_status(pipe, running=not failed)
                if failed:
                    break
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(60)
            lag.close()
            self._write_status(pipe, running=False)
        return FAILED_EXIT if failed else 0

    def _thread(self, name: str, target: Any) -> threading.Thread:
        def run() -> None:
            try:
                target(self.stop)
            except BaseException as exc:
                log.exception("%s stopped on an error", name)
                self.error = f"{name}: {exc!r}"

        return threading.Thread(target=run, name=name, daemon=True)

    def _note_lag(self, lag: int | None, one_batch: int) -> None:
        self.lag = lag
        # Within a batch of the live inputs: decisions are made as the events come, not replayed.
        if lag is not None and lag < one_batch and not self.caught_up_ms:
            self.caught_up_ms = int(time.time() * 1000)

    def _failed(self, pipe: ShadowPipeline, threads: list[threading.Thread]) -> bool:
        if self.error or not all(t.is_alive() for t in threads):
            self.error = self.error or "a thread of the shadow ended"
            return True
        stalled = time.monotonic() - pipe.engine.heartbeat
        if stalled > pipe.settings.engine_stall_s:
            self.error = f"the engine has not come round for {stalled:.0f}s (stuck in a Kafka client call)"
            log.critical("%s; the shadow exits so it can be started again", self.error)
            return True
        return False

    def _write_status(self, pipe: ShadowPipeline, running: bool) -> None:
        stats = pipe.engine.stats
        self.home.write_status({
            "name": self.home.name, "pid": os.getpid(), "running": running, "started_ms": self.started_ms,
            "updated_ms": int(time.time() * 1000), "ready": pipe.engine.ready.is_set(), "lag": self.lag,
            "caught_up_ms": self.caught_up_ms or None, "group": engine_group(pipe.settings),
            "topic_prefix": pipe.settings.shadow_prefix, "error": self.error,
            "engine": {"events": stats.events, "local_events": stats.local_events, "batches": stats.batches,
                       "aborts": stats.aborts, "refusals": stats.refusals, "cpu_s": round(stats.cpu_s, 1)},
        })  # fmt: skip


def main(live: Settings, name: str, niceness: int = 0) -> int:
    """``stockflow shadow run NAME``: run until SIGTERM or SIGINT; the exit code."""
    logging.basicConfig(level=LOG_LEVELS[live.log_level],
                        format="[%(asctime)s] [%(process)d] %(levelname)s %(name)s: %(message)s")  # fmt: skip
    lower_priority(niceness)  # the live pipeline's decisions come first on a box both run on
    runner = Runner(live, ShadowHome(live, name))

    def stop(signum: int, frame: FrameType | None) -> None:
        runner.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return runner.run()
