"""A channel's failed-call queue, ``connector.failed.<channel>``: what is in it, and replaying it.

Written by the connectors (``kafka_io.ResultSink.park``, its one writer): every outbound call that
failed for good, in the order the connector met them, with the request body as it was before signing
(never a key), the marketplace's answer and a reason (``connector_credentials``, ``connector_refused``,
``connector_retries_exhausted``).

``replay(settings, channel)`` (``stockflow connectors replay CHANNEL``) sends the queue's records again,
in order, through the same call path as the live connectors (``calls.ChannelCaller``, the channel's
current key, the same bodies and so the same idempotency keys: the platform's refund id, ``SKU@version``).
Its position is the consumer group ``<app id>.connectors.replay.<channel>``, committed after each
record's result is durable: a replayed refund's ``RefundIssued`` (``replayed=true``) is acknowledged by
the broker before the offset moves. Stock pushes in a row go again as the platform's many-SKU call
(``stock_batch``): up to its ``StockBatch.max_items`` consecutive records, none naming a SKU another
one in the call names (so each figure still gets its own answer), committed together once every
figure's result is durable; a call the platform refuses whole is sent again one figure at a time, so
only the figure it refuses stays failing. A replay killed at any point (``kill -9``) and run again sends the
record it was on once more; the marketplace answers "already agreed" for a refund it agreed, so no
refund is made twice, and none is skipped. It replays the records that were in the queue when it
started; what fails meanwhile waits for the next run.

What a record's answer leads to:

- agreed / applied: counted ``sent``; already agreed, or a stock figure a newer one replaced
  (stale): ``already_applied``; both are done and the position moves on (for a many-SKU call, per
  figure);
- refused (the request itself, ``connector_refused``): written to the end of the queue again (counted
  ``still_failing``; the next run tries it once more) and the replay goes on;
- a credential failure, or no usable answer within the retry budget: the replay **stops** at that record
  (nothing more would pass: the key is still wrong, or the platform is away) and says so; the record
  stays the next one to replay. Run it again once the key is set or the platform answers.

Each replayed call is recorded on ``connector.calls`` like a live one, marked ``replayed`` (the weekly
connectivity report counts replays from it). Only one replay of a channel runs at a time (a lock file
under the home).

The queues are created to keep their records for good (``retention.ms=-1``), yet a record can still be
gone before it was replayed (a queue created with the broker's 7-day default before that, a retention
changed by hand, records deleted): when the saved position is older than the queue's first record, or
there is none and the queue no longer starts at 0, the replay says how many records it never saw
(``ReplaySummary.lost``, exit 1) and raises a RED ``failed_queue_gap`` alert naming the offsets, then
replays what is there. The sink kept the lost records, requests included, in ClickHouse (``events``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, TopicPartition

from agents.alerting.alerts import alert
from agents.channels import platforms as pf
from agents.channels.calls import CallResult, ChannelCaller
from agents.channels.credentials import CredentialStore
from agents.channels.issue_refunds import RefundCall, write_result
from agents.channels.kafka_io import ResultSink
from streams.contract.codec import Codec, DecodeError, codec_for
from streams.contract.reasons import Reason
from streams.contract.records import Alert, ConnectorCallFailed
from streams.contract.topics import (
    ALERTS,
    CONNECTOR_CALLS,
    CONNECTOR_FAILED,
    REFUND_ISSUED,
    TopicSpec,
    ensure_topics,
)
from streams.engine.clock import wall_ms
from streams.errors import StockflowError
from streams.kafkaconf import confluent_config
from streams.settings import Settings

log = logging.getLogger(__name__)
IDLE_POLLS = 30  # empty polls of a second in a row before the replay stops waiting for a record it expects
GROUP_POLL_S = 0.05  # how long a replay holding stock records waits for the next before sending what it has
GAP_ALERT = "failed_queue_gap"


@dataclass(frozen=True)
class _Parked:
    """A record of the failed queue as read: where it is, what it asks, and its figure for a stock push."""

    offset: int
    record: ConnectorCallFailed
    endpoint: pf.Endpoint
    body: dict[str, Any]
    update: pf.StockUpdate | None  # None: a refund, or a stock body that names no figure (sent as it is)
    source: str


class ReplayError(StockflowError, RuntimeError):
    """A replay that cannot start or cannot go on (another replay runs, the broker is away)."""


@dataclass
class ReplaySummary:
    """What one replay run did."""

    channel: str
    queued: int = 0  # records waiting when it started
    sent: int = 0  # agreed or applied now
    already_applied: int = 0  # agreed before (refunds) or overtaken by a newer figure (stock)
    still_failing: int = 0  # refused again: written to the end of the queue for the next run
    unreadable: int = 0  # records that cannot be read as a failed call: skipped, logged
    lost: int = 0  # records deleted from the queue before they were replayed (see the module docstring)
    stopped: str = ""  # why it stopped before the end ("" when it got through)
    gap: str = ""  # what was lost, in words ("" when nothing was)
    first_offset: int = 0
    next_offset: int = 0

    @property
    def replayed(self) -> int:
        return self.sent + self.already_applied + self.still_failing + self.unreadable

    @property
    def remaining(self) -> int:
        return self.queued - self.replayed

    @property
    def clean(self) -> bool:
        return not self.stopped and not self.still_failing and not self.unreadable and not self.lost

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "replayed": self.replayed, "remaining": self.remaining}


@dataclass(frozen=True)
class QueueBounds:
    """Where a replay starts and ends in a failed queue, and what the broker deleted before it got there."""

    start: int  # the next offset to replay
    end: int  # the queue's end when the replay started
    lost_from: int  # the first offset deleted unreplayed (the saved position, else 0); == start: none
    position_saved: bool  # False: no saved position (never replayed, or the group's offsets expired)

    @property
    def lost(self) -> int:
        return self.start - self.lost_from


def replay_bounds(low: int, high: int, committed: int) -> QueueBounds:
    """The bounds from the queue's first and end offsets and the replay group's saved position (``committed``,
    ``OFFSET_INVALID`` for none). Without a position the queue is replayed from its first record; if that is
    not offset 0, what came before it was deleted, and nothing says whether it had been replayed."""
    saved = committed != OFFSET_INVALID and committed >= 0
    position = committed if saved else 0
    start = max(position, low)
    return QueueBounds(start, max(start, high), min(position, start), saved)


def gap_alert(channel: str, topic: str, bounds: QueueBounds, now_ms: int) -> Alert:
    """The RED alert for records of ``channel``'s failed queue deleted before they were replayed. Its id names
    the gap, so a replay that meets the same gap again is the same alert."""
    where = (f"the replay's saved position is offset {bounds.lost_from}" if bounds.position_saved
             else "the replay has no saved position (never run, or its group's offsets expired)")  # fmt: skip
    message = (
        f"{channel}: {bounds.lost} record(s) of {topic} (offsets {bounds.lost_from} to {bounds.start - 1}) were "
        f"deleted before they were replayed: {where}, the queue now starts at offset {bounds.start}. Approved "
        f"refunds or stock figures among them were never sent; the sink kept each, request included, in ClickHouse "
        f"(table events, topic {topic}, offsets above) to send by hand"
    )
    if not bounds.position_saved:
        message += " (whether they had been replayed is not known)"
    return alert(GAP_ALERT, "RED", channel, message, now_ms, event_id=f"{GAP_ALERT}:{topic}:{bounds.lost_from}:"
                 f"{bounds.start}", details={"channel": channel, "topic": topic, "lost_from": str(bounds.lost_from),
                 "first_offset": str(bounds.start), "lost": str(bounds.lost),
                 "position_saved": "true" if bounds.position_saved else "false"})  # fmt: skip


def replay_group(settings: Settings, channel: str) -> str:
    return f"{settings.app_id}.connectors.replay.{channel}"


def queue_spec(channel: str) -> TopicSpec:
    try:
        return CONNECTOR_FAILED[channel]
    except KeyError:
        raise ReplayError(f"no failed queue for {channel!r}; channels: {', '.join(CONNECTOR_FAILED)}") from None


def _consumer(settings: Settings, channel: str) -> Consumer:
    return Consumer({
        **confluent_config(settings),
        "group.id": replay_group(settings, channel),
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "log_level": 3,
    })  # fmt: skip


def pending(settings: Settings, channel: str, timeout_s: float = 10.0) -> tuple[int, int]:
    """(next offset the replay would send, end of the queue): the records waiting are their difference."""
    consumer = _consumer(settings, channel)
    try:
        return _bounds(consumer, settings.topic(queue_spec(channel).name), timeout_s)
    finally:
        consumer.close()


def _bounds(consumer: Consumer, topic: str, timeout_s: float) -> tuple[int, int]:
    bounds = _queue_bounds(consumer, topic, timeout_s)
    return bounds.start, bounds.end


def _queue_bounds(consumer: Consumer, topic: str, timeout_s: float) -> QueueBounds:
    tp = TopicPartition(topic, 0)
    low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
    return replay_bounds(low, high, consumer.committed([tp], timeout=timeout_s)[0].offset)


def lock_path(settings: Settings, channel: str) -> Path:
    return settings.home_dir / "connectors" / f"replay-{channel}.lock"


@contextlib.contextmanager
def _replay_lock(settings: Settings, channel: str) -> Iterator[None]:
    path = lock_path(settings, channel)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ReplayError(f"a replay of {channel} is already running (lock {path})") from None
        yield  # a process killed with -9 drops the lock with its descriptor
    finally:
        os.close(fd)


class Replay:
    """One run over one channel's failed queue; ``run`` returns the summary."""

    def __init__(
        self,
        settings: Settings,
        channel: str,
        *,
        caller: ChannelCaller | None = None,
        codec: Codec | None = None,
        on_progress: Callable[[ReplaySummary], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.channel = channel
        self.spec = queue_spec(channel)
        self.topic = settings.topic(self.spec.name)
        self.codec = codec or codec_for(settings)
        self.stop = stop or threading.Event()
        self._own_caller = caller is None
        self.caller = caller or ChannelCaller(settings, CredentialStore.from_settings(settings),
                                              stopping=self.stop.is_set)  # fmt: skip
        self.on_progress = on_progress or (lambda _summary: None)
        self.summary = ReplaySummary(channel)
        self.max_items = pf.platform(channel).stock_batch.max_items
        self._group: list[_Parked] = []  # stock records in a row, read and not sent yet
        self._fatal: list[str] = []

    def run(self) -> ReplaySummary:
        with _replay_lock(self.settings, self.channel):
            ensure_topics(self.settings, (self.spec, REFUND_ISSUED, CONNECTOR_CALLS, ALERTS))
            sink = ResultSink(self.settings, self.codec, on_fatal=self._fatal.append)
            if self._own_caller:  # a caller given is someone else's: they decide where its calls are recorded
                self.caller.replaying = True
                self.caller.on_call = lambda rec: sink.send(CONNECTOR_CALLS.name, rec["channel"], "ConnectorCalled",
                                                            rec)  # fmt: skip
            consumer = _consumer(self.settings, self.channel)
            try:
                self._run(consumer, sink)
            finally:
                consumer.close()
                sink.close()
                if self._own_caller:
                    self.caller.close()
        return self.summary

    def _run(self, consumer: Consumer, sink: ResultSink) -> None:
        start, end = self._bounds(consumer, sink)
        s = self.summary
        if start >= end:
            return
        consumer.assign([TopicPartition(self.topic, 0, start)])
        idle = 0
        while s.next_offset < end and not self.stop.is_set():
            msg = consumer.poll(GROUP_POLL_S if self._group else 1.0)
            if msg is None:
                if self._group:  # nothing more at hand: send what there is
                    if not self._flush(consumer, sink):
                        return
                    continue
                idle += 1
                if idle >= IDLE_POLLS:
                    s.stopped = f"no record came from {self.topic} at offset {s.next_offset} within {idle} s"
                    return
                continue
            idle = 0
            if not self._readable(msg):
                continue
            offset = msg.offset() or 0
            if offset >= end:
                break
            if not self._take(consumer, sink, offset, msg.value(), end):
                return  # stopped: the record (or its group's first) stays the next one to replay
        if self._group and not self.stop.is_set() and not self._flush(consumer, sink):
            return
        if self.stop.is_set() and s.next_offset < end:
            s.stopped = "interrupted"

    def _bounds(self, consumer: Consumer, sink: ResultSink) -> tuple[int, int]:
        """Where this run starts and ends. Records deleted before any replay got to them are said and alerted,
        the alert durable before the position moves past them (after which nothing would show them)."""
        bounds = _queue_bounds(consumer, self.topic, 15.0)
        s = self.summary
        s.queued, s.first_offset, s.next_offset = bounds.end - bounds.start, bounds.start, bounds.start
        if bounds.lost:
            record = gap_alert(self.channel, self.topic, bounds, wall_ms())
            s.lost, s.gap = bounds.lost, record["message"]
            log.error("replay %s: %s", self.channel, record["message"])
            sink.send(ALERTS.name, record["subject"], "Alert", record)
            self._durable(sink)
        self.on_progress(s)
        return bounds.start, bounds.end

    def _readable(self, msg: Message) -> bool:
        error = msg.error()
        if error is not None and error.code() != KafkaError._PARTITION_EOF:
            log.warning("replay %s: kafka: %s", self.channel, error)
        return error is None

    def _take(self, consumer: Consumer, sink: ResultSink, offset: int, value: bytes | None, end: int) -> bool:
        """Replay the record at ``offset`` (a stock record joins the group of those before it); False to stop."""
        parked = self._read(offset, value)
        if self._group and (parked is None or not self._joins(parked)) and not self._flush(consumer, sink):
            return False
        if parked is not None and parked.update is not None:
            self._group.append(parked)
            if len(self._group) >= self.max_items or offset + 1 >= end:
                return self._flush(consumer, sink)
            return True
        if parked is None:
            self.summary.unreadable += 1  # counted once the records before it are through, like every record
        elif not self._replay_one(sink, parked):
            return False
        self._done_through(consumer, offset)
        return True

    def _flush(self, consumer: Consumer, sink: ResultSink) -> bool:
        group, self._group = self._group, []
        return self._send_group(consumer, sink, group)

    def _done_through(self, consumer: Consumer, offset: int) -> None:
        """Every record up to ``offset`` is replayed and its result durable: the position moves past it."""
        self._commit(consumer, offset + 1)
        self.summary.next_offset = offset + 1
        self.on_progress(self.summary)

    def _read(self, offset: int, value: bytes | None) -> _Parked | None:
        """The record at ``offset``; None (logged) if it is not a failed call."""
        try:
            event_type, data = self.codec.decode(value)
            if event_type.short_name != "ConnectorCallFailed":
                raise DecodeError(Reason.UNEXPECTED_EVENT_TYPE, f"{event_type.short_name} on {self.topic}")
            record: ConnectorCallFailed = data  # type: ignore[assignment]
            body = json.loads(record["request"])
            if not isinstance(body, dict):
                raise ValueError("the request is not a JSON object")
        except (DecodeError, ValueError) as exc:
            log.error("replay %s: record at offset %d is not a failed call (%s); skipped", self.channel, offset, exc)
            return None
        endpoint = record["endpoint"]
        if endpoint not in pf.ENDPOINTS:
            log.error("replay %s: record at offset %d names endpoint %r; skipped", self.channel, offset, endpoint)
            return None
        update = None
        if endpoint == "stock":
            with contextlib.suppress(pf.BodyError):
                update = pf.parse_stock(self.channel, body)
        return _Parked(offset, record, endpoint, body, update, f"{self.topic}/0/{offset}")

    def _joins(self, parked: _Parked) -> bool:
        """Whether a record may go in the same call as the group: a stock figure, room left, its SKU not in it."""
        if parked.update is None or len(self._group) >= self.max_items:
            return False
        return all(p.update is None or p.update.sku != parked.update.sku for p in self._group)

    def _send_group(self, consumer: Consumer, sink: ResultSink, group: list[_Parked]) -> bool:
        """Send consecutive stock records as one many-SKU call, park what failed again, make it durable and move
        the position past them; False to stop the replay at the group's first record."""
        s = self.summary
        updates = [p.update for p in group if p.update is not None]
        body = pf.stock_batch_body(self.channel, updates)
        result = self.caller.call(self.channel, pf.STOCK_BATCH, body, what=f"of {len(group)} SKU(s) (replay)")
        kind = result.outcome.kind
        if kind in (pf.OutcomeKind.CREDENTIAL, pf.OutcomeKind.RETRIABLE):
            s.stopped = self._stop_message(result, group[0].offset)
            return False
        if kind is pf.OutcomeKind.FATAL and len(group) > 1:
            # The platform refuses a call whole for one figure it cannot take: each alone, so only that one fails.
            return all(self._send_group(consumer, sink, [parked]) for parked in group)
        outcomes = pf.item_outcomes(result.outcome, updates)
        for parked, outcome in zip(group, outcomes, strict=True):
            if not outcome.done:
                again = CallResult(outcome, result.answer if not result.done else f"{outcome.message} "
                                   f"(answer: {result.answer})", result.attempts)  # fmt: skip
                sink.park(again.failed_call(self.channel, "stock", parked.record["idempotency_key"], parked.body,
                                            parked.source, parked.record["attempts"]))  # fmt: skip
        self._durable(sink)
        for parked, outcome in zip(group, outcomes, strict=True):
            self._count(outcome.kind, outcome.done, parked.record["idempotency_key"], result.answer)
        self._done_through(consumer, group[-1].offset)
        return True

    def _count(self, kind: pf.OutcomeKind, done: bool, key: str, answer: str) -> None:
        s = self.summary
        if kind is pf.OutcomeKind.OK:
            s.sent += 1
        elif done:
            s.already_applied += 1
        else:
            s.still_failing += 1
            log.warning("replay %s: %s refused again (%s); written to the end of the queue", self.channel, key,
                        answer[:200])  # fmt: skip

    def _replay_one(self, sink: ResultSink, parked: _Parked) -> bool:
        """Send one record again as it was (a refund; a stock body that names no figure) and make its result
        durable; False to stop the replay here."""
        s = self.summary
        record, body, offset, source, endpoint = (parked.record, parked.body, parked.offset, parked.source,
                                                  parked.endpoint)  # fmt: skip
        result = self.caller.call(self.channel, endpoint, body, what=f"{record['idempotency_key']} (replay)")
        if result.outcome.kind in (pf.OutcomeKind.CREDENTIAL, pf.OutcomeKind.RETRIABLE):
            s.stopped = self._stop_message(result, offset)
            return False
        if endpoint == "refund":
            order_id = _order_id(self.channel, body)
            if order_id is None and result.done:
                # Agreed at the marketplace, but nothing names its order: RefundIssued cannot be keyed.
                log.error("replay %s: refund %s agreed, but its request names no order; RefundIssued not written",
                          self.channel, record["idempotency_key"])  # fmt: skip
            else:
                call = RefundCall(self.channel, record["idempotency_key"], order_id or "", body, source)
                write_result(sink, call, result, None, earlier_attempts=record["attempts"], replayed=True)
        elif not result.done:
            sink.park(result.failed_call(self.channel, endpoint, record["idempotency_key"], body, source,
                                         record["attempts"]))  # fmt: skip
        self._durable(sink)
        self._count(result.outcome.kind, result.done, record["idempotency_key"], result.answer)
        return True

    def _durable(self, sink: ResultSink) -> None:
        try:
            sink.flush(60)
        except KafkaException as exc:
            raise ReplayError(f"the broker did not take the replay's result ({exc}); run the replay again") from exc
        if self._fatal:
            raise ReplayError(f"{self._fatal[0]}; run the replay again")

    def _commit(self, consumer: Consumer, next_offset: int) -> None:
        try:
            consumer.commit(offsets=[TopicPartition(self.topic, 0, next_offset)], asynchronous=False)
        except KafkaException as exc:
            # The result is durable; a rerun sends this record once more, which changes nothing.
            raise ReplayError(f"replay position not saved ({exc}); run the replay again") from exc

    def _stop_message(self, result: CallResult, offset: int) -> str:
        left = self.summary.queued - self.summary.replayed
        if result.outcome.kind is pf.OutcomeKind.CREDENTIAL:
            return (
                f"{self.channel} refused the key ({result.answer[:200]}) at offset {offset}; {left} record(s) "
                f"left. Set the new key (stockflow connectors set-key {self.channel}) and run the replay again"
            )
        return (
            f"{self.channel} gave no usable answer within {self.caller.budget_s:g} s at offset {offset} "
            f"({result.answer[:200]}); {left} record(s) left. Run the replay again when it answers"
        )


def _order_id(channel: str, body: dict[str, Any]) -> str | None:
    """The order id of a refund body (the contract's '<channel>:<channel_order_id>'); None if it names none."""
    try:
        channel_order_id = pf.parse_refund(channel, body).channel_order_id
    except pf.BodyError:
        return None
    return f"{channel}:{channel_order_id}" if channel_order_id else None


def replay(settings: Settings, channel: str, **kwargs: Any) -> ReplaySummary:
    """Replay ``channel``'s failed queue (see the module docstring)."""
    return Replay(settings, channel, **kwargs).run()
