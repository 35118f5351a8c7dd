"""The inspection on a schedule, inside the worker: ``stockflow inspect``'s checks every
``STOCKFLOW_INSPECT_INTERVAL_S`` seconds, alerting on breach and on recovery.

Reads: what ``agents.inspect.probe`` reads (the consumer groups' offsets, the dead letters, the sink's and
connectors' status views, the disk), with the thresholds of ``config/inspect.toml``. Writes: ``alerts``
(``inspection_breach``: RED when a check enters breach, cleared when it leaves; ``checks.breach_alerts``
decides), which the notifier posts to the ops chat. Owns: the open breaches, in memory.

One scan runs at a time, on the group's leader only (a Faust ``on_leader`` timer), so several workers
raise one alert between them. The probe blocks on the network, so a scan runs on a thread of its own,
never on the worker's event loop. The open breaches are the leader's memory: a new leader (a restart,
a rebalance) raises a breach still going on once more, so nobody misses it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from agents.inspect import checks, probe
from streams.contract.records import Alert
from streams.contract.topics import ALERTS
from streams.engine.clock import wall_ms
from streams.engine.producer import EventProducer
from streams.engine.runtime import Runtime
from streams.settings import Settings

log = logging.getLogger(__name__)


class Scanner:
    """The scans of one worker: measure, judge, publish what changed, then remember it."""

    def __init__(self, settings: Settings, producer: EventProducer, config: checks.InspectConfig) -> None:
        self.settings = settings
        self.producer = producer
        self.config = config
        self.open: checks.OpenBreaches = {}
        self.scans = 0

    def scan(self, now_ms: int) -> list[Alert]:
        """One scan (blocking): the alerts it published. The breaches are remembered only once their alerts
        are acknowledged, so a broker away now means the same alerts are raised at the next scan."""
        results = checks.evaluate(probe.measure(self.settings, self.config), self.config)
        results = [r for r in results if r.check not in checks.ALERTED_AT_SOURCE]
        still, alerts = checks.breach_alerts(self.open, results, now_ms)
        for record in alerts:
            self.producer.send(ALERTS.name, record["subject"], "Alert", record)
        if alerts:
            self.producer.flush(30.0)
        self.open = still
        self.scans += 1
        return alerts


def register(app: faust.App, rt: Runtime) -> None:
    interval = rt.settings.inspect_interval_s
    if interval <= 0:
        return
    config = checks.load_config()
    scanner = Scanner(rt.settings, EventProducer(rt.settings, rt.codec), config)
    busy = asyncio.Lock()

    @app.timer(interval, on_leader=True, name="scan_checks")
    async def scan_checks() -> None:
        if busy.locked():  # the previous scan is still waiting on a slow source: skip, never pile up
            return
        async with busy:
            try:
                alerts = await asyncio.to_thread(scanner.scan, wall_ms())
            except Exception:  # a scan that fails is tried at the next tick; the worker goes on
                log.exception("inspection scan failed; trying again in %g s", interval)
                return
        for record in alerts:
            log.warning("inspection: %s%s", record["message"], " (cleared)" if record["cleared"] else "")

    @app.page("/inspect/status")
    async def inspect_status(web: Any, request: Any) -> Any:
        return web.json({"interval_s": interval, "scans": scanner.scans,
                         "open_breaches": [{"check": c, "subject": s, "since_ms": t}
                                           for (c, s), t in sorted(scanner.open.items())]})  # fmt: skip
