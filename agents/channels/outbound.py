"""The outbound connectors' pure rules: no I/O, no clock (every call takes the time), no threads.

- ``OffsetTracker``: which input records are still being worked on, and so how far each partition's
  offset may be committed while calls finish out of order (one channel's slow or failing calls never
  hold up another's, yet nothing unfinished is ever committed);
- ``PushQueue``: one channel's stock pushes waiting to go, coalesced per SKU (only the newest figure
  is sent; an unchanged figure is not sent again; an older version never replaces a newer one), taken
  in batches for the platform's many-SKU call;
- ``TokenBucket``: the client-side rate limit, kept a little under the platform's;
- ``FailingWatch``: the ``connector_failing`` alert, raised once when a channel's calls start failing
  for good and cleared when one succeeds again;
- ``EndpointStats``: calls ok / retried / failed, last error, latency percentiles, for the status view;
- ``success_rate``: the share of finished calls that got done, the one definition the status view,
  the health board (``dashboards/connector_health.sql``) and the connectivity report use;
- the records the connectors write: ``refund_issued``, ``FailedCall.record`` and ``CallOutcome.record``
  (one ``ConnectorCalled`` per call as it ended).
"""

from __future__ import annotations

import statistics
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.alerting.alerts import alert
from streams.contract.records import Alert, ConnectorCalled, ConnectorCallFailed, RefundIssued
from streams.contract.topics import CONNECTOR_FAILED

FAILING_ALERT = "connector_failing"
LATENCY_WINDOW = 2048  # calls per endpoint the latency percentiles look at
ANSWER_CHARS = 2000  # how much of an answer a failed-call record keeps


def stock_key(sku: str, version: int) -> str:
    """A stock push's idempotency key (the contract's ``SKU@version``)."""
    return f"{sku}@{version}"


def source_of(topic: str, partition: int, offset: int) -> str:
    """Where a call's request came from, as the failed-call record names it."""
    return f"{topic}/{partition}/{offset}"


# ---- offsets -------------------------------------------------------------------------------------


TopicPartitionKey = tuple[str, int]


@dataclass(frozen=True)
class Ticket:
    """One input record in flight: done when every part of its work is (its result acknowledged)."""

    topic: str
    partition: int
    offset: int

    @property
    def tp(self) -> TopicPartitionKey:
        return (self.topic, self.partition)


class OffsetTracker:
    """Input records whose work is not finished, per partition.

    A partition may be committed up to (not including) its oldest unfinished record; with none in
    flight, up to the consumer's position (which also steps over transaction markers). Records
    finish in any order; the committed offset only ever covers records that are all done.
    """

    def __init__(self) -> None:
        self._open: dict[TopicPartitionKey, dict[int, int]] = {}

    def begin(self, topic: str, partition: int, offset: int, parts: int = 1) -> Ticket:
        """Start a record with ``parts`` pieces of work (0: it is done already)."""
        ticket = Ticket(topic, partition, offset)
        if parts > 0:
            self._open.setdefault(ticket.tp, {})[offset] = parts
        return ticket

    def finish(self, ticket: Ticket, parts: int = 1) -> bool:
        """``parts`` pieces of ``ticket``'s work are done; True when the record is now done."""
        offsets = self._open.get(ticket.tp)
        if offsets is None or ticket.offset not in offsets:
            return False  # its partition was revoked meanwhile: the new owner reads it again
        left = offsets[ticket.offset] - parts
        if left > 0:
            offsets[ticket.offset] = left
            return False
        del offsets[ticket.offset]
        return True

    def in_flight(self) -> int:
        return sum(len(offsets) for offsets in self._open.values())

    def commit_points(self, positions: Mapping[TopicPartitionKey, int]) -> dict[TopicPartitionKey, int]:
        """The offset to commit per partition: its oldest unfinished record, else the consumer's position."""
        points = {}
        for tp, position in positions.items():
            offsets = self._open.get(tp)
            if offsets:
                points[tp] = min(offsets)
            elif position >= 0:
                points[tp] = position
        return points

    def forget(self, partitions: Iterable[TopicPartitionKey]) -> None:
        """Partitions this consumer no longer holds: their unfinished records are read again by the next owner."""
        for tp in partitions:
            self._open.pop(tp, None)


# ---- stock pushes --------------------------------------------------------------------------------


@dataclass
class Push:
    """The newest figure waiting to be pushed for one SKU on one channel."""

    sku: str
    quantity: int
    version: int
    due_ms: int
    source: str
    tickets: list[Ticket] = field(default_factory=list)

    @property
    def idempotency_key(self) -> str:
        return stock_key(self.sku, self.version)


@dataclass
class Batch:
    """What ``PushQueue.take_batch`` hands out: pushes to send in one call, and pushes the channel already shows
    (a call in flight landed their figure meanwhile), settled without a call: their tickets are to be finished."""

    send: list[Push] = field(default_factory=list)
    shown: list[Push] = field(default_factory=list)


UNKNOWN_QUANTITY = -1  # what a channel shows when a figure after its last accepted one failed: no figure equals it


class PushQueue:
    """One channel's stock pushes: the newest figure per SKU, sent oldest change first, one call per SKU at a time.

    ``offer`` a SKU's figure from a ``stock.levels`` record. A push is due ``window_ms`` after the SKU's first
    unsent change, so a burst of changes collapses into one figure. ``take_batch`` hands out up to
    ``max_items`` due pushes whose SKU has no call in flight, for one many-SKU call - or none while fewer than
    ``min_items`` are due and the oldest has been due for less than ``hold_ms`` (a lane with a call in flight
    waits for a full batch rather than send a thin one, so the calls stay few while a figure waits about one
    call's time; Nagle's rule, with ``hold_ms`` bounding the wait when that call is slow). The pushes taken are
    in flight until ``settle``-d with what the platform answered, or ``release``-d when the call failed or was
    abandoned. A push due while the channel already shows its figure (a call in flight landed it meanwhile)
    needs no call: ``take_batch`` settles it and hands it back in ``Batch.shown``. Tickets of figures that need
    no call (unchanged, older, replaced by a newer one) are handed back for finishing with their push.
    Remembers the last figure each SKU's channel accepted: bounded by the SKUs of the catalogue.
    """

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self._pending: OrderedDict[str, Push] = OrderedDict()  # due times grow with insertion: oldest first
        self._in_flight: dict[str, Push] = {}  # sku -> the push whose call is under way
        self._accepted: dict[str, tuple[int, int]] = {}  # sku -> (quantity, version) the platform holds

    def __len__(self) -> int:
        return len(self._pending)

    def in_flight(self) -> int:
        return len(self._in_flight)

    def offer(self, sku: str, quantity: int, version: int, ticket: Ticket, source: str, now_ms: int) -> bool:
        """Queue a figure; False when there is nothing to send for it (the caller finishes ``ticket`` now)."""
        pending = self._pending.get(sku)
        accepted = self._accepted.get(sku)
        flying = self._in_flight.get(sku)
        carrier = next((p for p in (pending, flying) if p is not None and p.version >= version), None)
        if carrier is not None:
            # A level read again (a rebalance handed its partition back) while its figure, or a newer one, is
            # still to be sent: its record is done when that push is, never before (its offset must not be
            # committed while the push could still be lost).
            carrier.tickets.append(ticket)
            return True
        if accepted is not None and version <= accepted[1]:
            return False  # an older level read again (a restart, a rebalance): never send it over a newer one
        if pending is not None:
            # The newest figure wins; it keeps its place and due time, and finishes the older's records.
            pending.quantity, pending.version, pending.source = quantity, version, source
            pending.tickets.append(ticket)
            return True
        if flying is None and accepted is not None and accepted[0] == quantity:
            # The channel already shows this figure. While a call is in flight what it will show is not known
            # yet (the call may fail, or find a newer version there): queue it, and ``take_batch`` decides.
            return False
        self._pending[sku] = Push(sku, quantity, version, now_ms + self.window_ms, source, [ticket])
        return True

    def _takeable(self, now_ms: int, limit: int) -> list[Push]:
        """Up to ``limit`` due pushes whose SKU has no call in flight, oldest first (nothing is removed)."""
        found: list[Push] = []
        for push in self._pending.values():
            if push.due_ms > now_ms or len(found) >= limit:
                break
            if push.sku not in self._in_flight:
                found.append(push)
        return found

    def ready_at_ms(self, min_items: int = 1, hold_ms: int = 0) -> int | None:
        """When ``take_batch(..., min_items, hold_ms)`` will hand out pushes, as things stand (an offer or a settle
        changes that): the time to wake; None when nothing is waiting with no call in flight for its SKU."""
        seen, first = 0, None
        for push in self._pending.values():
            if push.sku not in self._in_flight:
                seen += 1
                first = push.due_ms if first is None else first
                if seen >= min_items:
                    return min(push.due_ms, first + hold_ms)
        return None if first is None else first + hold_ms

    def wakes(self, max_items: int) -> bool:
        """Whether the push just queued (the newest) can change ``ready_at_ms`` for up to ``max_items``: only when
        fewer than that many pushes without a call in flight are ahead of it (a lane's waiting threads need
        waking then, and only then)."""
        return len(self._pending) - 1 - len(self._in_flight) < max_items

    def take_batch(self, now_ms: int, max_items: int, min_items: int = 1, hold_ms: int = 0) -> Batch:
        """The oldest due pushes with no call in flight for their SKU, at most ``max_items`` to send, and none
        while fewer than ``min_items`` are and the oldest has been due for less than ``hold_ms`` (see the class
        docstring); the ones sent are in flight until settled or released."""
        batch = Batch()
        candidates = self._takeable(now_ms, max_items)
        for push in candidates:
            if self._shows(push):
                del self._pending[push.sku]
                self._accepted[push.sku] = (push.quantity, push.version)  # its level is handled: older ones are not
                batch.shown.append(push)
        sendable = [p for p in candidates if p.sku in self._pending]
        held = sendable and sendable[0].due_ms + hold_ms > now_ms
        if not sendable or (held and len(sendable) < min(min_items, max_items)):
            return batch
        for push in sendable:
            del self._pending[push.sku]
            self._in_flight[push.sku] = push
        batch.send = sendable
        return batch

    def _shows(self, push: Push) -> bool:
        accepted = self._accepted.get(push.sku)
        return accepted is not None and accepted[0] == push.quantity

    def settle(self, push: Push, accepted: bool) -> None:
        """The platform answered ``push``: ``accepted`` (now shows it), or stale (it holds a newer version)."""
        self._in_flight.pop(push.sku, None)
        if accepted:
            self._accepted[push.sku] = (push.quantity, push.version)
        else:
            # A newer version is there, set by an earlier run: its figure is unknown, so the next change is sent.
            self._accepted.pop(push.sku, None)

    def release(self, push: Push) -> None:
        """``push``'s call failed for good or was abandoned: the SKU may be sent again. The channel still shows
        what it did, but a failed figure waits in the failed queue for ``stockflow connectors replay``, which
        would set it over any newer one not sent because the channel "already showed" it: the SKU's next
        figure is sent whatever it is, so the replayed one then finds a newer version there."""
        self._in_flight.pop(push.sku, None)
        accepted = self._accepted.get(push.sku)
        if accepted is not None:
            self._accepted[push.sku] = (UNKNOWN_QUANTITY, accepted[1])

    def forget_shown(self) -> None:
        """Partitions went to another connector, which may push newer figures than the ones remembered here
        before they come back: every SKU's next figure is sent whatever it is (versions are kept: the platform
        holds at least those)."""
        for sku, (_, version) in self._accepted.items():
            self._accepted[sku] = (UNKNOWN_QUANTITY, version)

    def drain(self) -> list[Push]:
        """Everything waiting (at a stop: their records are left uncommitted and read again)."""
        pushes = list(self._pending.values())
        self._pending.clear()
        return pushes


# ---- rate limit ----------------------------------------------------------------------------------


@dataclass
class TokenBucket:
    """``rate_per_s`` calls a second with bursts of at most ``capacity``; ``reserve`` says how long to wait.

    Reservations queue: each takes a token now, so a caller that must wait holds its place and the
    next one waits behind it.
    """

    rate_per_s: float
    capacity: float = 1.0
    _tokens: float = 0.0
    _at_s: float | None = None

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.capacity < 1:
            raise ValueError(f"a token bucket needs a positive rate and room for one call, not {self}")

    def reserve(self, now_s: float) -> float:
        """Take one call's token; the seconds to wait before making the call (0: at once)."""
        if self._at_s is None:
            self._tokens, self._at_s = self.capacity, now_s
        elapsed = max(0.0, now_s - self._at_s)
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate_per_s)
        self._at_s = max(self._at_s, now_s)
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate_per_s


# ---- alerts --------------------------------------------------------------------------------------


@dataclass
class FailingWatch:
    """Per channel: failing (a call failed for good since the last success) or not; an alert per change."""

    failing_since_ms: dict[str, int] = field(default_factory=dict)

    def failed(self, channel: str, endpoint: str, reason: str, answer: str, now_ms: int) -> Alert | None:
        if channel in self.failing_since_ms:
            return None
        self.failing_since_ms[channel] = now_ms
        topic = CONNECTOR_FAILED[channel].name if channel in CONNECTOR_FAILED else "the failed queue"
        return alert(
            FAILING_ALERT, "RED", channel,
            f"{channel}: {endpoint} calls failing ({reason}): {answer[:300]}. Failed calls are kept on {topic}; "
            f"fix the cause (a rotated key: stockflow connectors set-key {channel}), then "
            f"stockflow connectors replay {channel}",
            now_ms, details={"channel": channel, "endpoint": endpoint, "reason": reason, "answer": answer[:500]},
        )  # fmt: skip

    def succeeded(self, channel: str, endpoint: str, now_ms: int) -> Alert | None:
        since = self.failing_since_ms.pop(channel, None)
        if since is None:
            return None
        return alert(
            FAILING_ALERT, "RED", channel,
            f"{channel}: {endpoint} calls succeed again (failing since {since}); replay what failed meanwhile: "
            f"stockflow connectors replay {channel}",
            now_ms, cleared=True, details={"channel": channel, "endpoint": endpoint, "failing_since_ms": str(since)},
        )  # fmt: skip

    def is_failing(self, channel: str) -> bool:
        return channel in self.failing_since_ms


# ---- status --------------------------------------------------------------------------------------


@dataclass
class EndpointStats:
    """One channel endpoint's calls, for the status view: ``ok`` ... ``failed`` count calls as they ended,
    ``calls`` every attempt sent; the ``items_*`` count the stock figures many-SKU calls carried, by their
    own result (applied, stale: a newer one is there, failed for good)."""

    ok: int = 0
    already_applied: int = 0
    stale: int = 0
    retried: int = 0
    failed: int = 0
    calls: int = 0
    items_applied: int = 0
    items_stale: int = 0
    items_failed: int = 0
    last_error: str = ""
    last_error_ms: int = 0
    last_ok_ms: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def snapshot(self) -> dict[str, Any]:
        latencies = list(self.latencies_ms)
        return {
            "ok": self.ok,
            "already_applied": self.already_applied,
            "stale": self.stale,
            "retried": self.retried,
            "failed": self.failed,
            "calls": self.calls,
            "items_applied": self.items_applied,
            "items_stale": self.items_stale,
            "items_failed": self.items_failed,
            "last_error": self.last_error,
            "last_error_ms": self.last_error_ms,
            "last_ok_ms": self.last_ok_ms,
            "latency_ms": percentiles(latencies),
            "success_rate": success_rate(self.ok + self.already_applied + self.stale, self.failed),
        }


def success_rate(done: int, failed: int) -> float | None:
    """Of the calls that finished, the share done (ok, already applied or stale: the platform has the figure);
    a call retried and then done counts as done, one that failed for good as failed. None with none finished."""
    finished = done + failed
    return None if finished == 0 else round(done / finished, 4)


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50 and p99 of ``values`` (None with no values; the one value with one)."""
    if not values:
        return {"p50": None, "p99": None}
    if len(values) == 1:
        return {"p50": round(values[0], 1), "p99": round(values[0], 1)}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(cuts[49], 1), "p99": round(cuts[98], 1)}


# ---- records -------------------------------------------------------------------------------------


def refund_issued(
    refund_id: str, order_id: str, channel: str, amount_fen: int, platform_ref: str, attempts: int, now_ms: int,
    *, replayed: bool = False,
) -> RefundIssued:  # fmt: skip
    """The marketplace accepted (or had accepted) a refund. One event id per refund, however often it is
    sent: a repeat after a crash or a replay is the same event."""
    return RefundIssued(
        event_id=f"refund-issued:{refund_id}",
        event_time_ms=now_ms,
        refund_id=refund_id,
        order_id=order_id,
        channel=channel,
        amount_fen=amount_fen,
        platform_ref=platform_ref,
        attempts=attempts,
        replayed=replayed,
    )


@dataclass(frozen=True)
class FailedCall:
    """A call that failed for good, as its channel's failed queue keeps it."""

    channel: str
    endpoint: str
    idempotency_key: str
    request: str  # the body before signing, as JSON: never a key
    answer: str
    reason: str
    attempts: int
    source: str

    def record(self, now_ms: int) -> ConnectorCallFailed:
        """Its ``ConnectorCallFailed``. The id names the call and the record that asked for it, so the same
        record failing again after a restart is the same event."""
        return ConnectorCallFailed(
            event_id=f"call-failed:{self.channel}:{self.endpoint}:{self.idempotency_key}:{self.source}",
            event_time_ms=now_ms,
            channel=self.channel,
            endpoint=self.endpoint,
            idempotency_key=self.idempotency_key,
            request=self.request,
            answer=self.answer[:ANSWER_CHARS],
            reason=self.reason,
            attempts=self.attempts,
            source=self.source,
        )


ERROR_CHARS = 500  # of the last failed attempt's answer a call record keeps


@dataclass
class CallOutcome:
    """One call as it goes: filled in attempt by attempt, then ``record``-ed as its ``ConnectorCalled``."""

    channel: str
    endpoint: str  # what it is for: refund or stock
    started_ms: int
    replayed: bool = False
    latencies_ms: list[float] = field(default_factory=list)
    error: str = ""
    error_ms: int = 0
    key_fingerprint: str = ""
    key_expires_ms: int = 0

    def failed_attempt(self, answer: str, at_ms: int) -> None:
        self.error, self.error_ms = answer[:ERROR_CHARS], at_ms

    def record(self, outcome: str, reason: str, attempts: int, now_ms: int, call_id: str) -> ConnectorCalled:
        """The call's ``ConnectorCalled``; ``call_id`` is unique to the call (the caller's own id and its running
        count), so the record redelivered is one row and two calls are never one."""
        return ConnectorCalled(
            event_id=f"call:{self.channel}:{self.endpoint}:{call_id}",
            event_time_ms=now_ms,
            channel=self.channel,
            endpoint=self.endpoint,
            outcome=outcome,
            reason=reason if outcome == "failed" else "",
            attempts=attempts,
            latencies_ms=[round(v, 3) for v in self.latencies_ms],
            error=self.error,
            error_ms=self.error_ms,
            started_ms=self.started_ms,
            replayed=self.replayed,
            key_fingerprint=self.key_fingerprint,
            key_expires_ms=self.key_expires_ms,
        )
