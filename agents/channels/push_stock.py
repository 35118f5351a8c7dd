"""The channel stock connector: pushes each channel's sellable units to that channel's stock-update API.

Reads: ``stock.levels`` (``StockLevel``, key SKU, compacted) as consumer group ``<app id>.connectors.stock``,
read_committed. Writes: ``connector.failed.<channel>`` for a push that failed for good, ``alerts``
(``connector_failing``), ``deadletters`` for a level it cannot read. Owns: its group's offsets and, in
memory, the last figure each channel accepted per SKU.

A level's ``sellable[channel]`` goes to that channel's lane (one per channel of ``STOCKFLOW_CHANNELS``),
which pushes the newest figure per SKU ``STOCKFLOW_CONNECTOR_PUSH_WINDOW_MS`` after its first unsent
change (a burst of levels is one call), skips a figure the channel already shows, and keeps under the
channel's rate limit (``calls.ChannelCaller``). A lane has as many calls in flight as its rate limit
needs (``calls_in_flight``, a thread each), never two for one SKU. A stock level is published
at most every ``STOCKFLOW_REFRESH_INTERVAL_MS`` after a change, so a change reaches the channel within
a second unless the channel's rate limit is the bottleneck.

The version. Every push carries the level's ``newest_change_ms`` as its version and ``SKU@version`` as
its idempotency key. It is the event time of the newest change the level includes, kept per SKU as a
running maximum in the pool's own state, so it never goes backwards - not when the SKU's partition
moves to a worker whose clock is behind, not across restarts - and it names the state, not the moment
of publishing: a level republished after a restart carries the same version (the level's event id
is built from it too). ``event_time_ms`` (when the level was published) has neither property. The
platform applies a push only if its version is newer than the one it holds and answers "stale"
otherwise, so a replayed or reordered push never sets an older figure; stale counts as done.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from agents.channels import platforms as pf
from agents.channels.calls import ChannelCaller, Stopping, rate_per_s
from agents.channels.kafka_io import ConnectorAlerts, InputLoop, Received, ResultSink
from agents.channels.outbound import Push, PushQueue, Ticket
from streams.contract.codec import Codec
from streams.contract.reasons import Reason
from streams.contract.records import StockLevel
from streams.contract.registry import EventType
from streams.contract.topics import CONNECTOR_FAILED, STOCK_LEVELS
from streams.settings import Settings

log = logging.getLogger(__name__)
STAGE = "agents.channels.push_stock"
ENDPOINT: pf.Endpoint = "stock"
MAX_IN_FLIGHT = 200_000  # levels read and not yet pushed everywhere; the queues coalesce, so memory is per SKU
CALL_TIME_S = 0.1  # a marketplace call's usual time with room to spare, for sizing a lane's calls in flight
MAX_CALLS_IN_FLIGHT = 16  # per channel: more threads only contend for the interpreter


def level_version(level: StockLevel) -> int:
    """The version a level's pushes carry (see the module docstring); platforms want it >= 1."""
    return max(1, int(level["newest_change_ms"]))


def monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


def calls_in_flight(calls_per_s: float) -> int:
    """How many calls a channel's lane keeps going at once: enough to use the channel's rate limit
    (``calls_per_s``) when a call takes ``CALL_TIME_S`` (one at a time, 40 ms calls would cap a lane at 25 a
    second whatever the platform allows), at most ``MAX_CALLS_IN_FLIGHT``. Only one SKU's pushes must stay in
    order, and a SKU never has two calls in flight."""
    return max(1, min(MAX_CALLS_IN_FLIGHT, math.ceil(calls_per_s * CALL_TIME_S)))


class StockLane:
    """One channel's stock pushes: coalesced per SKU, one call per SKU at a time, ``calls`` calls at once."""

    def __init__(self, channel: str, connector: StockConnector, window_ms: int, calls: int = 1) -> None:
        self.channel = channel
        self.connector = connector
        self.pushes = PushQueue(window_ms)
        self.cond = threading.Condition()
        self.threads = [threading.Thread(target=self.run, name=f"stock-{channel}-{i}", daemon=True)
                        for i in range(calls)]  # fmt: skip

    def offer(self, sku: str, quantity: int, version: int, ticket: Ticket, source: str) -> bool:
        """Queue a figure; False when nothing needs sending for it."""
        with self.cond:
            queued = self.pushes.offer(sku, quantity, version, ticket, source, monotonic_ms())
            if queued:
                self.cond.notify()
        return queued

    def pending(self) -> int:
        with self.cond:
            return len(self.pushes)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def run(self) -> None:
        try:
            self._serve()
        except Exception as exc:
            # A lane that died quietly would leave its channel unserved while the process looks healthy.
            name = threading.current_thread().name
            log.exception("%s failed", name)
            self.connector.on_error(f"{name}: {type(exc).__name__}: {exc}")

    def _serve(self) -> None:
        stop = self.connector.stop
        while not stop.is_set():
            with self.cond:
                now = monotonic_ms()
                push = self.pushes.take(now)
                if push is None:
                    due = self.pushes.next_due_ms()
                    self.cond.wait(0.2 if due is None else min(0.2, max(0.0, (due - now) / 1000)))
                    continue
                shown = self.pushes.shown(push)
                if shown:  # a call in flight landed this figure meanwhile
                    self.pushes.settle(push, accepted=True)
                    self.cond.notify()
            if shown:
                for ticket in push.tickets:
                    self.connector.loop.finish(ticket)
                continue
            self._send(push)

    def _send(self, push: Push) -> None:
        c = self.connector
        body = pf.stock_body(self.channel, push.sku, push.quantity, push.version)
        try:
            result = c.caller.call(self.channel, ENDPOINT, body, what=push.idempotency_key)
        except Stopping:
            with self.cond:
                self.pushes.release(push)
            return  # its records stay unfinished and are read again at the next start

        def finish() -> None:
            for ticket in push.tickets:
                c.loop.finish(ticket)

        if result.done:
            with self.cond:
                self.pushes.settle(push, accepted=result.outcome.kind is pf.OutcomeKind.OK)
                self.cond.notify()  # a newer figure of this SKU may be waiting for this call
            finish()
            c.alerts.succeeded(self.channel, ENDPOINT)
            return
        with self.cond:
            self.pushes.release(push)
            self.cond.notify()
        c.sink.park(result.failed_call(self.channel, ENDPOINT, push.idempotency_key, body, push.source), finish)
        log.warning("%s stock push %s failed (%s): %s", self.channel, push.idempotency_key, result.reason,
                    result.answer[:200])  # fmt: skip
        c.alerts.failed(self.channel, ENDPOINT, result.reason, result.answer)


class StockConnector:
    """``stock.levels`` to the channels; ``start_lanes``, then ``loop.run`` (blocking)."""

    def __init__(self, settings: Settings, codec: Codec, caller: ChannelCaller, sink: ResultSink,
                 alerts: ConnectorAlerts, stop: threading.Event, on_error: Callable[[str], None]) -> None:  # fmt: skip
        self.settings = settings
        self.caller = caller
        self.sink = sink
        self.alerts = alerts
        self.stop = stop
        self.on_error = on_error  # stops the process
        channels = [c for c in settings.channels if c in CONNECTOR_FAILED]
        self.lanes = {c: StockLane(c, self, settings.connector_push_window_ms, calls_in_flight(rate_per_s(settings, c)))
                      for c in channels}  # fmt: skip
        self.loop = InputLoop(settings, codec, sink, group_id=f"{settings.app_id}.connectors.stock",
                              topic=STOCK_LEVELS.name, stage=STAGE, handle=self.handle, stop=stop,
                              max_in_flight=MAX_IN_FLIGHT)  # fmt: skip

    def start_lanes(self) -> None:
        for lane in self.lanes.values():
            lane.start()

    def handle(self, msg: Received, event_type: EventType, record: dict[str, Any]) -> None:
        if event_type.short_name != "StockLevel":
            self.loop.refuse(msg, Reason.UNEXPECTED_EVENT_TYPE, f"{event_type.short_name} on {msg.topic}")
            return
        level: StockLevel = record  # type: ignore[assignment]
        version = level_version(level)
        targets = [(self.lanes[c], units) for c, units in level["sellable"].items() if c in self.lanes]
        ticket = self.loop.begin(msg, len(targets))
        for lane, units in targets:
            if not lane.offer(level["sku"], max(0, units), version, ticket, msg.source):
                self.loop.finish(ticket)

    def pending(self) -> dict[str, int]:
        return {channel: lane.pending() for channel, lane in self.lanes.items()}

    def join(self, timeout_s: float) -> None:
        for lane in self.lanes.values():
            lane.join(timeout_s)
