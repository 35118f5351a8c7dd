"""The channel stock connector: pushes each channel's sellable units to that channel's many-SKU stock API.

Reads: ``stock.levels`` (``StockLevel``, key SKU, compacted) as consumer group ``<app id>.connectors.stock``,
read_committed. Writes: ``connector.failed.<channel>`` for a figure the platform refused for good,
``alerts`` (``connector_failing``), ``deadletters`` for a level it cannot read. Owns: its group's offsets
and, in memory, the last figure each channel accepted per SKU and the figures waiting to be sent again.

A level's ``sellable[channel]`` goes to that channel's lane (one per channel of ``STOCKFLOW_CHANNELS``),
which holds the newest figure per SKU until ``STOCKFLOW_CONNECTOR_PUSH_WINDOW_MS`` after its first unsent
change (a burst of levels is one figure), skips a figure the channel already shows, and sends the due
figures through the platform's many-SKU stock call (``stock_batch``), up to its ``StockBatch.max_items``
a call, under the channel's rate limit in calls a second (``calls.ChannelCaller``): one call of 20 to 100
figures costs the platform's per-app limit what one figure did. A lane makes one call at a time and
starts another at once only for a full batch (or for figures a slow call has kept waiting
``HOLD_MS``; ``outbound.PushQueue.take_batch``), so calls stay few and grow fuller as the load grows;
never two for one SKU, at most ``calls_in_flight`` at once (a thread each). A stock level is
published at most every ``STOCKFLOW_REFRESH_INTERVAL_MS`` after a change, so a change reaches the
channel within a second unless the channel's rate limit is the bottleneck.

Per figure of a call: applied, or stale (a newer version is there), is done. A figure whose whole call
failed for now - no usable answer within ``STOCKFLOW_CONNECTOR_RETRY_BUDGET_S`` (5xx, 429, timeouts),
or a refused key - stays in the lane and goes again after a backoff (``outbound.retry_delay_ms``, up to
``RETRY_MAX_MS``; at once when another call of the channel goes through), as often as it takes, unless
a newer figure of its SKU comes, which takes its place: a channel always ends at the pool's latest
figure once the platform answers or the key is set, with no replay. Its record stays unfinished, and
so uncommitted, until then (a record whose figure a later record's replaced is finished at once: that
later record, unfinished, is read again after a crash), so a crash meanwhile reads it again. A figure
the platform refused on its own, for now (a per-item 429 or 5xx), in a call whose other figures it
answered keeps its own backoff (a success of the channel does not wake it: the channel is not what
fails) and, refused so ``outbound.RETRY_ALONE_MAX_FAILURES`` times or for ``RETRY_ALONE_MAX_MS``, is
parked as ``connector_retries_exhausted``: otherwise, with no newer figure of its SKU, its record would
hold its partition's commit point for good. A figure refused for good - a request the platform refuses,
or one its answer has no result for - is parked at once. A parked figure goes to
``connector.failed.<channel>`` as a ``stock`` request of its own (its one-SKU body, idempotency key
``SKU@version``), with the platform's answer, for a person and ``stockflow connectors replay``; its
record finishes once the broker has it, or, while a lost call of its SKU may still land, once it no longer
can (so a process started again meanwhile reads the figure again and knows the SKU is in doubt). After a
figure was parked, the SKU's next figure is sent even when the channel already shows it: it carries a newer
version than the parked one, so a replay can never set the parked figure over it. The endpoint's
``connector_failing`` alert is decided once per call: raised if any figure of it failed, cleared only by a
call whose every figure went through.

A channel away for long holds one record open per SKU changed meanwhile. Past ``MAX_WAITING_PER_CHANNEL``
SKUs waiting while its last call failed as a whole, its lane parks its oldest waiting figures the same
way, as ``connector_retries_exhausted`` (their records finish; a ``connector_failing`` alert says so,
once until the endpoint's next success), so the records open never reach the reading pause
(``MAX_IN_FLIGHT``, a memory guard far above) and the other channels keep getting their figures.

The version. Every push carries the level's ``newest_change_ms`` as its version and ``SKU@version`` as
its idempotency key. It is the event time of the newest change the level includes, kept per SKU as a
running maximum in the pool's own state, so it never goes backwards - not when the SKU's partition
moves to a worker whose clock is behind, not across restarts - and it names the state, not the moment
of publishing: a level republished after a restart carries the same version (the level's event id
is built from it too). ``event_time_ms`` (when the level was published) has neither property. The
simulator applies a push only if its version is newer than the one it holds and answers "stale"
otherwise, so a replayed or reordered push never sets an older figure; stale counts as done.

The platforms' own stock APIs carry no version: whatever lands last stands (the simulator plays that with
``honors_versions`` off). The lane never has two calls of one SKU going, a revoke waits for the calls under way,
and a replay skips a figure older than its SKU's newest level; what is left is a call whose answer was lost (a
timeout, a 5xx: the platform's gateway may still hold it) landing after the SKU's next figure. So a figure
applied within ``STOCKFLOW_CONNECTOR_IN_DOUBT_MS`` of such a call goes once more after that time
(``outbound.PushQueue.settle``), its record open until then; a newer figure of the SKU goes at once meanwhile.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import threading
import time
from typing import Any

from agents.channels import platforms as pf
from agents.channels.calls import CallResult, Stopping, rate_per_s
from agents.channels.connector import Connector, run_lane
from agents.channels.kafka_io import Received
from agents.channels.outbound import FailedCall, Push, PushQueue, Ticket, TopicPartitionKey
from streams.contract.reasons import Reason
from streams.contract.records import StockLevel
from streams.contract.registry import EventType
from streams.contract.topics import CONNECTOR_FAILED, STOCK_LEVELS

log = logging.getLogger(__name__)
STAGE = "agents.channels.push_stock"
ENDPOINT: pf.Endpoint = "stock"
# A channel away holds one record open per SKU changed meanwhile; past this many SKUs waiting, its lane parks the
# oldest (``StockLane.offer``), so one channel's outage never pauses reading for the others.
MAX_WAITING_PER_CHANNEL = 100_000
# Levels read and not yet pushed everywhere before reading pauses for every channel: only a memory guard, far above
# what the lanes hold with every channel away (each at most its cap), reached only by a backlog no lane parks (a
# channel answering, however slowly: its figures go in their turn).
MAX_IN_FLIGHT = 1_200_000
CALL_TIME_S = 0.1  # a marketplace call's usual time with room to spare, for sizing a lane's calls in flight
MAX_CALLS_IN_FLIGHT = 16  # per channel: more threads only contend for the interpreter
HOLD_MS = 150  # how long due figures wait for a lane's call in flight before a thin batch goes anyway
IDLE_WAIT_S = 0.2  # a lane thread's longest sleep (a stop is noticed within it)


def level_version(level: StockLevel) -> int:
    """The version a level's pushes carry (see the module docstring); platforms want it >= 1."""
    return max(1, int(level["newest_change_ms"]))


def monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


def calls_in_flight(calls_per_s: float) -> int:
    """How many calls a channel's lane may have going at once: enough to use the channel's rate limit
    (``calls_per_s``) when a call takes ``CALL_TIME_S``, at most ``MAX_CALLS_IN_FLIGHT``. Only one SKU's
    pushes must stay in order, and a SKU never has two calls in flight."""
    return max(1, min(MAX_CALLS_IN_FLIGHT, math.ceil(calls_per_s * CALL_TIME_S)))


class StockLane:
    """One channel's stock pushes: coalesced per SKU, up to ``max_items`` figures a call, one call per SKU at a
    time, at most ``calls`` calls at once (a second one only for a full batch, see the module docstring)."""

    def __init__(self, channel: str, connector: StockConnector, window_ms: int, calls: int = 1,
                 max_items: int | None = None, doubt_ms: int = 0) -> None:  # fmt: skip
        self.channel = channel
        self.connector = connector
        self.max_items = max_items or pf.platform(channel).stock_batch.max_items
        self.pushes = PushQueue(window_ms, doubt_ms)
        self.cond = threading.Condition()
        self.flying = 0  # calls under way
        self.max_waiting = MAX_WAITING_PER_CHANNEL  # SKUs' figures held while the channel is away, at most
        self.away = ""  # the answer of the channel's last call when it failed as a whole (away, a refused key)
        self.threads = [threading.Thread(target=self.run, name=f"stock-{channel}-{i}", daemon=True)
                        for i in range(calls)]  # fmt: skip

    def offer(self, sku: str, quantity: int, version: int, ticket: Ticket, source: str) -> bool:
        """Queue a figure; False when nothing needs sending for it. While the channel is away, past
        ``max_waiting`` SKUs waiting the oldest figures are parked (``park_backlog``)."""
        with self.cond:
            before = len(self.pushes)
            queued = self.pushes.offer(sku, quantity, version, ticket, source, monotonic_ms())
            superseded = self.pushes.take_superseded()
            overflow = self.pushes.overflow(self.max_waiting) if self.away else []
            away = self.away
            # A figure replacing a waiting one, or queued behind a batch's worth, changes no thread's wake time.
            if queued and len(self.pushes) > before and self.pushes.wakes(self.max_items):
                self.cond.notify()
        self.finish_tickets(superseded)
        if overflow:
            self.park_backlog(overflow, away)
        return queued

    def park_backlog(self, pushes: list[Push], answer: str) -> None:
        """The channel is away and its lane holds more than ``max_waiting`` SKUs: ``pushes`` (the oldest, out of the
        queue) go to its failed queue as ``connector_retries_exhausted``, their records finishing once the broker
        has them. Otherwise each would hold a record open until the channel came back, and enough of them pause
        reading for every channel (``MAX_IN_FLIGHT``): the healthy ones would keep showing stock since sold."""
        c = self.connector
        for push in pushes:
            body = pf.stock_body(self.channel, push.sku, push.quantity, push.version)
            parked = FailedCall(self.channel, ENDPOINT, push.idempotency_key, pf.canonical_json(body),
                                f"parked unsent: {self.channel} away with over {self.max_waiting} SKUs' figures "
                                f"waiting, the oldest parked; its last call: {answer}",
                                Reason.CONNECTOR_RETRIES_EXHAUSTED, push.failures, push.source)  # fmt: skip
            c.sink.park(parked, functools.partial(self.parked, push))
        log.warning("%s away with over %d SKUs' figures waiting: %d of the oldest parked, %s first", self.channel,
                    self.max_waiting, len(pushes), pushes[0].idempotency_key)  # fmt: skip
        c.alerts.parked_backlog(self.channel, ENDPOINT, len(pushes), self.max_waiting)

    def pending(self) -> int:
        """Figures waiting to be sent, those waiting out a backoff included."""
        with self.cond:
            return len(self.pushes) + self.pushes.retrying()

    def retrying(self) -> int:
        with self.cond:
            return self.pushes.retrying()

    def kept(self) -> int:
        """SKUs whose parked figure's record is kept open while a lost call of theirs may still land."""
        with self.cond:
            return self.pushes.kept()

    def forget_partitions(self, partitions: set[TopicPartitionKey]) -> set[str]:
        """Drop what waits for ``partitions``; the SKUs whose call for them is under way."""
        with self.cond:
            under_way = self.pushes.under_way(partitions)
            self.pushes.forget_partitions(partitions)
            # Another connector may push newer figures for those SKUs before they come back.
            self.pushes.forget_shown()
            return under_way

    def wait_landed(self, skus: set[str], deadline: float) -> set[str]:
        """Wait until the calls under way for ``skus`` have their answers, or ``deadline`` (monotonic s) passes;
        the SKUs still under way."""
        with self.cond:
            while (left := skus & self.pushes.under_way()) and not self.connector.stop.is_set():
                wait_s = deadline - time.monotonic()
                if wait_s <= 0:
                    break
                self.cond.wait(min(wait_s, IDLE_WAIT_S))
            return left

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def run(self) -> None:
        run_lane(self._serve, self.connector.on_error)

    def _serve(self) -> None:
        stop = self.connector.stop
        while not stop.is_set():
            self.close_kept(monotonic_ms())  # within IDLE_WAIT_S of their time
            with self.cond:
                now = monotonic_ms()
                min_items = 1 if self.flying == 0 else self.max_items
                batch = self.pushes.take_batch(now, self.max_items, min_items, HOLD_MS)
                if batch.send:
                    self.flying += 1
                elif not batch.shown:
                    ready = self.pushes.ready_at_ms(min_items, HOLD_MS)
                    wait_s = IDLE_WAIT_S if ready is None else (ready - now) / 1000
                    self.cond.wait(min(IDLE_WAIT_S, max(0.001, wait_s)))
                    continue
            for push in batch.shown:  # a call in flight landed these figures meanwhile
                self.finish(push)
            if batch.send:
                self.send(batch.send)

    def finish(self, push: Push) -> None:
        """``push`` needs nothing more: its records are done."""
        self.finish_tickets(push.tickets)

    def parked(self, push: Push) -> None:
        """The broker has ``push`` in the failed queue: its records are done, unless a lost call of its SKU may
        still land (``PushQueue.keep_open``: they close when it no longer can)."""
        with self.cond:
            kept = self.pushes.keep_open(push, monotonic_ms())
            superseded = self.pushes.take_superseded()
        self.finish_tickets(superseded)
        if not kept:
            self.finish(push)

    def close_kept(self, now_ms: int) -> None:
        """Finish the records of parked figures whose SKU's lost calls can no longer land."""
        with self.cond:
            closed = self.pushes.take_closed(now_ms)
        self.finish_tickets(closed)

    def finish_tickets(self, tickets: list[Ticket]) -> None:
        for ticket in tickets:
            self.connector.loop.finish(ticket)

    def send(self, pushes: list[Push]) -> None:
        """Send ``pushes`` (taken from the queue, the call counted in ``flying``) as one many-SKU call and settle
        each by its result."""
        c = self.connector
        updates = [pf.StockUpdate(p.sku, p.quantity, p.version) for p in pushes]
        try:
            result = c.caller.call(self.channel, pf.STOCK_BATCH, pf.stock_batch_body(self.channel, updates),
                                   what=f"of {len(pushes)} SKU(s)")  # fmt: skip
        except Stopping:
            with self.cond:
                for push in pushes:
                    self.pushes.release(push)
                self.flying -= 1
            return  # their records stay unfinished and are read again at the next start
        if result.outcome.kind is pf.OutcomeKind.FATAL and len(pushes) > 1:
            # The platform refuses a call whole for one figure it cannot take (a SKU delisted there): each goes
            # again alone, as the replay does, so only that one is parked and the others reach the channel now.
            with self.cond:
                self.flying += len(pushes) - 1  # each call alone ends as one call in flight
                if result.lost:  # an attempt before the refusal may land: the figures' calls alone do not know it
                    now = monotonic_ms()
                    for push in pushes:
                        self.pushes.note_lost(push, now)
            for push in pushes:
                self.send([push])
            return
        self._settle(pushes, updates, result)

    def _settle(self, pushes: list[Push], updates: list[pf.StockUpdate], result: CallResult) -> None:
        """Settle each of ``pushes`` by what its call answered, the call no longer in flight."""
        c = self.connector
        outcomes = pf.item_outcomes(result.outcome, updates)
        failed: list[tuple[Push, pf.Outcome]] = []
        retried: list[tuple[Push, pf.Outcome]] = []
        done: list[Push] = []
        lost = result.lost  # an attempt without an answer may still land
        with self.cond:
            now = monotonic_ms()
            self.away = "" if result.done else (result.answer[:300] or "no answer")
            if result.done:
                self.pushes.resume_retries(now)  # the channel answers: what waits out a backoff may go now
            for push, outcome in zip(pushes, outcomes, strict=True):
                if outcome.done:
                    if self.pushes.settle(push, outcome.kind is pf.OutcomeKind.OK, now, lost):
                        done.append(push)  # else it goes once more after a lost call's time to land
                elif outcome.kind is pf.OutcomeKind.FATAL:
                    self.pushes.release(push, now, lost)
                    failed.append((push, outcome))
                elif self.pushes.retry(push, now, alone=result.done, lost=lost):  # alone: the call went through
                    retried.append((push, outcome))
                else:
                    failed.append((push, outcome))  # refused alone past its bound: parked, retries exhausted
            superseded = self.pushes.take_superseded()
            self.flying -= 1
            # Newer figures of these SKUs may be waiting for this call, and a revoke for its answer (all: the
            # revoke's wait must not take a lane thread's wake-up).
            self.cond.notify_all()
        stats = c.caller.endpoint_stats(self.channel, ENDPOINT)
        applied = sum(1 for o in outcomes if o.kind is pf.OutcomeKind.OK)
        stats.items_applied += applied
        stats.items_stale += len(outcomes) - applied - len(failed) - len(retried)
        stats.items_failed += len(failed)
        stats.items_retried += len(retried)
        for push in done:
            self.finish(push)
        self.finish_tickets(superseded)
        # The endpoint's alert is decided once per call: cleared only by a call whose every figure went through
        # (one the platform refused alone keeps it raised, rather than a clear and a raise per call).
        reasons = [*self._park(result, failed), *self._retrying(result, retried)]
        if reasons:
            c.alerts.failed(self.channel, ENDPOINT, reasons[0], result.answer, parked=bool(failed))
        elif result.done:
            c.alerts.succeeded(self.channel, ENDPOINT)

    def _retrying(self, result: CallResult, retried: list[tuple[Push, pf.Outcome]]) -> list[Reason]:
        """Log the figures that failed for now and go again after a backoff; the reason (none without any)."""
        if not retried:
            return []
        first, outcome = retried[0]
        item = CallResult(outcome, result.answer, result.attempts, result.lost)
        log.warning("%s stock push of %d SKU(s) failed for now (%s), %s first; sent again after a backoff: %s",
                    self.channel, len(retried), item.reason, first.idempotency_key, result.answer[:200])  # fmt: skip
        return [item.reason]

    def _park(self, result: CallResult, failed: list[tuple[Push, pf.Outcome]]) -> list[Reason]:
        """Each figure refused for good (or refused alone past its bound: ``connector_retries_exhausted``) to the
        failed queue, as a one-SKU request of its own; its records finish once the broker has it (the queue
        keeps it until it is replayed: committing the record is safe), or later while its SKU is in doubt
        (``parked``). The reason (none without any)."""
        if not failed:
            return []
        c = self.connector
        reasons = []
        for push, outcome in failed:
            answer = result.answer if not result.done else f"{outcome.message} (answer: {result.answer})"
            item = CallResult(outcome, answer, result.attempts)
            parked = item.failed_call(self.channel, ENDPOINT, push.idempotency_key,
                                      pf.stock_body(self.channel, push.sku, push.quantity, push.version),
                                      push.source)  # fmt: skip
            if outcome.kind is not pf.OutcomeKind.FATAL:  # refused alone, for now, too often: given up on
                parked = dataclasses.replace(
                    parked, reason=Reason.CONNECTOR_RETRIES_EXHAUSTED,
                    answer=f"refused alone {push.alone_failures} time(s) over "
                           f"{(monotonic_ms() - (push.alone_since_ms or 0)) // 1000} s, the rest of its calls "
                           f"taken; the last: {answer}")  # fmt: skip
            reasons.append(Reason(parked.reason))
            c.sink.park(parked, functools.partial(self.parked, push))
        first, _ = failed[0]
        log.warning("%s stock push of %d SKU(s) failed (%s), %s first: %s", self.channel, len(failed), reasons[0],
                    first.idempotency_key, result.answer[:200])  # fmt: skip
        return reasons


class StockConnector(Connector[StockLane]):
    """``stock.levels`` to the channels; ``start_lanes``, then ``loop.run`` (blocking)."""

    TOPIC = STOCK_LEVELS.name
    GROUP = "stock"
    STAGE = STAGE
    MAX_IN_FLIGHT = MAX_IN_FLIGHT
    READS_ENDS = True

    def partitions_assigned(self, ends: dict[TopicPartitionKey, int]) -> None:
        """Figures read again from below these ends may follow a call their earlier owner lost (``PushQueue``)."""
        for lane in self.lanes.values():
            with lane.cond:
                lane.pushes.replayed(ends, monotonic_ms())

    def make_lanes(self) -> dict[str, StockLane]:
        channels = [c for c in self.settings.channels if c in CONNECTOR_FAILED]
        window_ms, doubt_ms = self.settings.connector_push_window_ms, self.settings.connector_in_doubt_ms
        return {c: StockLane(c, self, window_ms, calls_in_flight(rate_per_s(self.settings, c)), doubt_ms=doubt_ms)
                for c in channels}  # fmt: skip

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

    def partitions_revoked(self, partitions: set[TopicPartitionKey]) -> None:
        """Their waiting figures are dropped, and the revoke waits for their calls under way to land: platforms
        keep no version, so a slow call landing after the new owner's first call for the SKU would set the
        channel back to the older figure. The group gives the partitions out again only once this returns.
        Every call ends on its own (no attempt starts past its retry budget, each has its timeout), usually
        within the budget and a timeout; one taking longer (a rate limit to wait for, an answer trickling in) is
        waited for all the same, and said so each such interval, since letting go sooner is what sets a channel
        back. Only the process stopping ends the wait."""
        under_way = {channel: lane.forget_partitions(partitions) for channel, lane in self.lanes.items()}
        interval_s = self.settings.connector_retry_budget_s + self.settings.connector_call_timeout_s
        for channel, skus in under_way.items():
            lane = self.lanes[channel]
            while skus and (skus := lane.wait_landed(skus, time.monotonic() + interval_s)):
                if self.stop.is_set():
                    break
                log.warning("%s: %d stock call(s) of revoked partitions still under way (%s first); the partitions "
                            "go to their next owner once they land", channel, len(skus), sorted(skus)[0])  # fmt: skip

    def pending(self) -> dict[str, int]:
        return {channel: lane.pending() for channel, lane in self.lanes.items()}

    def retrying(self) -> dict[str, int]:
        return {channel: lane.retrying() for channel, lane in self.lanes.items()}

    def kept(self) -> dict[str, int]:
        return {channel: lane.kept() for channel, lane in self.lanes.items()}
