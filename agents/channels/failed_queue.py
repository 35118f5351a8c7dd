"""A channel's failed-call queue, ``connector.failed.<channel>``: what is in it, and replaying it.

Written by the connectors (``kafka_io.ResultSink.park``, its one writer): every outbound call that
failed for good, in the order the connector met them, with the request body as it was before signing
(never a key), the marketplace's answer and a reason (``connector_credentials``, ``connector_refused``,
``connector_in_doubt``: it may have been applied, ``connector_retries_exhausted``).

``replay(settings, channel)`` (``stockflow connectors replay CHANNEL``) sends the queue's records again,
in order, through the same call path as the live connectors (``calls.ChannelCaller``, the channel's
current key, the same bodies and so the same idempotency keys: the platform's refund id, ``SKU@version``).
Its position is saved after each record's result is durable (a replayed refund's ``RefundIssued``,
``replayed=true``, is acknowledged by the broker before the position moves), in two places: the
consumer group ``<app id>.connectors.replay.<channel>``'s committed offset, and a record keyed by the
channel on the compacted topic ``connector.replay-positions`` (``POSITIONS``; a small JSON value, not an
event: like the engine's changelogs it is internal state, outside the topic contract). The broker deletes
an idle group's committed offsets after ``offsets.retention.minutes`` (7 days by default); a compacted
topic keeps each channel's newest record for good. The position lives on the broker, beside the queue,
so a replay run from another host (an operator's laptop, a ``docker compose run --rm`` container with a
fresh home) finds it as surely as the queue itself; a file under the home would not be there. The replay
starts at the newer of the two. With neither saved it never starts quietly at 0 over a queue that was
replayed before (records a replay wrote back, or ``RefundIssued`` records of a replay): it stops, says
so and where a replay had got, and takes ``--from-offset N`` (``Replay(from_offset=N)``) to go on.

Before it sends anything the replay reads ``refund.issued`` (every ``RefundIssued`` of the channel still
there) and calls no refund stockflow already recorded as paid: counted ``already_applied``, the position
moves on. So a replay can never pay such a refund twice, whatever the marketplace's idempotency window;
only a refund whose ``RefundIssued`` the topic's retention already deleted rests on that window alone.

Stock pushes in a row go again as the platform's many-SKU call (``stock_batch``): up to its
``StockBatch.max_items`` consecutive records, none naming a SKU another one in the call names (so each
figure still gets its own answer), committed together once every figure's result is durable; a call the
platform refuses whole is sent again one figure at a time, so only the figure it refuses stays failing.
A replay killed at any point (``kill -9``) and run again sends the record it was on once more (a refund
it had got agreed is on ``refund.issued`` by then, and skipped); the marketplace answers "already
agreed" for a refund it agreed, so no refund is made twice, and none is left out. It replays the records
that were in the queue when it started; what fails meanwhile waits for the next run.

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
there is none and the queue no longer starts at 0 (and shows no earlier replay), the replay says how many
records it never saw
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
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import httpx
from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from agents.alerting.alerts import alert
from agents.channels import platforms as pf
from agents.channels.calls import REPLAY_BESIDE_CONNECTORS, CallResult, ChannelCaller
from agents.channels.credentials import CredentialStore
from agents.channels.issue_refunds import RefundCall, write_result
from agents.channels.kafka_io import ResultSink
from agents.channels.push_stock import level_version
from streams.contract.codec import Codec, DecodeError, codec_for
from streams.contract.reasons import Reason
from streams.contract.records import Alert, ConnectorCallFailed, StockLevel
from streams.contract.topics import (
    ALERTS,
    CONNECTOR_CALLS,
    CONNECTOR_FAILED,
    REFUND_ISSUED,
    STOCK_LEVELS,
    TopicSpec,
    ensure_topics,
)
from streams.engine.clock import wall_ms
from streams.engine.producer import EventProducer
from streams.engine.topicreader import read_all, scan, watermark
from streams.errors import StockflowError
from streams.kafkaconf import confluent_config
from streams.settings import Settings

log = logging.getLogger(__name__)
IDLE_POLLS = 30  # empty polls of a second in a row before the replay stops waiting for a record it expects
GROUP_POLL_S = 0.05  # how long a replay holding stock records waits for the next before sending what it has
GAP_ALERT = "failed_queue_gap"
READ_TIMEOUT_S = 60.0  # how long reading refund.issued or the positions may go without progress
LEVELS_FRESH_S = 5.0  # how old the newest stock levels may be when a replayed figure is checked against them

# Where each channel's replay got to (see the module docstring). Not in the topic contract (no event, nobody
# else reads it): the replay creates it, as the engine creates its changelogs.
POSITIONS = TopicSpec(
    "connector.replay-positions",
    key="channel",
    events=(),
    writer="agents.channels.failed_queue (stockflow connectors replay)",
    direction="internal",
    compacted=True,
    single_partition=True,
    doc="Per channel, the next offset of its failed queue to replay (JSON); compacted: kept for good.",
)


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


def saved_position(committed: int, stored: int | None) -> int | None:
    """The replay's saved position: the newer of its group's committed offset (``OFFSET_INVALID`` for none: never
    committed, or expired) and the one on ``POSITIONS`` (None for none); None when neither is saved."""
    found = [p for p in (committed, stored) if p is not None and p != OFFSET_INVALID and p >= 0]
    return max(found) if found else None


def position_value(channel: str, queue: str, next_offset: int, now_ms: int) -> bytes:
    """A ``POSITIONS`` record's value: the next offset of ``queue`` (the failed queue's topic) to replay."""
    return json.dumps({"channel": channel, "queue": queue, "next_offset": next_offset, "at_ms": now_ms}).encode()


def read_position(value: bytes | None, queue: str) -> int | None:
    """The next offset a ``POSITIONS`` value saves for ``queue``; None if it is not one (or for another queue)."""
    try:
        data = json.loads(value or b"")
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("queue") != queue:
        return None
    offset = data.get("next_offset")
    return offset if isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0 else None


class PositionStore(Protocol):
    """Where a replay keeps its position so that it does not expire."""

    def load(self, channel: str) -> int | None: ...

    def save(self, channel: str, next_offset: int) -> None: ...


class TopicPositions:
    """Replay positions on ``POSITIONS``: saved through the replay's producer (durable with its next results,
    which it flushes before it moves on), loaded by reading the topic to its end (the newest record per channel
    wins, so a replay told ``--from-offset`` lower than before starts there next time too)."""

    def __init__(self, settings: Settings, producer: EventProducer | None = None,
                 timeout_s: float = READ_TIMEOUT_S) -> None:  # fmt: skip
        self.settings = settings
        self.producer = producer
        self.timeout_s = timeout_s

    def load(self, channel: str) -> int | None:
        queue, key, found = self.settings.topic(queue_spec(channel).name), channel.encode(), None
        try:
            records = read_all(self.settings, self.settings.topic(POSITIONS.name), self.timeout_s)
        except (KafkaException, TimeoutError) as exc:
            raise ReplayError(f"the replay positions ({POSITIONS.name}) could not be read: {exc}") from exc
        for record in records:
            if record.key == key:
                found = read_position(record.value, queue)
        return found

    def save(self, channel: str, next_offset: int) -> None:
        if self.producer is None:
            raise ReplayError("replay positions loaded without a producer cannot be saved")
        queue = self.settings.topic(queue_spec(channel).name)
        self.producer.send_raw(POSITIONS.name, channel, position_value(channel, queue, next_offset, wall_ms()))


@dataclass(frozen=True)
class IssuedRefunds:
    """What ``refund.issued`` says of a channel's refunds: the refund ids recorded as paid, and how many of those
    records a replay wrote (a sign the failed queue was replayed before)."""

    paid: frozenset[str] = frozenset()
    replayed: int = 0


def issued_refunds(records: Iterable[tuple[bytes | None, bytes | None]], channel: str, codec: Codec) -> IssuedRefunds:
    """``channel``'s ``IssuedRefunds`` from ``refund.issued``'s (key, value) records (keyed by order id
    '<channel>:...': the other channels' records are not decoded); unreadable records are left out."""
    prefix = f"{channel}:".encode()
    paid: set[str] = set()
    replayed = 0
    for key, value in records:
        if key is None or value is None or not key.startswith(prefix):
            continue
        try:
            event_type, data = codec.decode(value)
        except DecodeError:
            continue
        if event_type.short_name != "RefundIssued" or data.get("channel") != channel:
            continue
        paid.add(str(data["refund_id"]))
        replayed += 1 if data.get("replayed") else 0
    return IssuedRefunds(frozenset(paid), replayed)


def read_issued_refunds(settings: Settings, codec: Codec, channel: str,
                        timeout_s: float = READ_TIMEOUT_S) -> IssuedRefunds:  # fmt: skip
    """``channel``'s ``IssuedRefunds`` as ``refund.issued`` holds them now (read to its end, record by record)."""
    return issued_refunds(_scan(settings, settings.topic(REFUND_ISSUED.name), timeout_s), channel, codec)


def newest_versions(records: Iterable[tuple[bytes | None, bytes | None]], codec: Codec) -> dict[str, int]:
    """Per SKU, the version (``push_stock.level_version``) of its newest level in ``stock.levels``' (key, value)
    records; unreadable records are left out."""
    newest: dict[str, int] = {}
    for key, value in records:
        if key is None or value is None:
            continue
        try:
            event_type, level = codec.decode(value)
        except DecodeError:
            continue
        if event_type.short_name == "StockLevel":
            sku = str(level["sku"])
            newest[sku] = max(newest.get(sku, 0), level_version(cast(StockLevel, level)))
    return newest


def read_newest_versions(settings: Settings, codec: Codec, timeout_s: float = READ_TIMEOUT_S) -> dict[str, int]:
    """``newest_versions`` of ``stock.levels`` as it stands now (read to its end, record by record)."""
    return newest_versions(_scan(settings, settings.topic(STOCK_LEVELS.name), timeout_s), codec)


def _scan(settings: Settings, topic: str, timeout_s: float) -> Iterator[tuple[bytes | None, bytes | None]]:
    """Every committed (key, value) now in ``topic``, from its start to its current end, without holding them all;
    ReplayError when it cannot be read or stops making progress for ``timeout_s``."""
    try:
        for record in scan(settings, topic, timeout_s):
            yield record.key, record.value
    except (KafkaException, TimeoutError) as exc:
        raise ReplayError(f"{topic} could not be read to its end ({exc}); run the replay again") from exc


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
             else "the replay has no saved position (never run) and the queue shows no earlier replay")  # fmt: skip
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


def replay_rate_share(settings: Settings) -> float:
    """How much of the connectors' pace a replay takes: a tenth while the connectors answer (they call the
    same app, which the platform limits as one), all of it while they are stopped."""
    try:
        live = httpx.get(f"{settings.connectors_base_url}/connectors/status", timeout=2).is_success
    except httpx.HTTPError:
        live = False
    if live:
        log.info("the connectors are running: the replay paces itself to %.0f%% of their rate",
                 REPLAY_BESIDE_CONNECTORS * 100)  # fmt: skip
    return REPLAY_BESIDE_CONNECTORS if live else 1.0


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
    """(next offset the replay would send, end of the queue): the records waiting are their difference (the
    whole queue when no position is saved, or the saved one is past its end)."""
    consumer = _consumer(settings, channel)
    try:
        low, high, committed = _watermarks(consumer, settings.topic(queue_spec(channel).name), timeout_s)
    finally:
        consumer.close()
    try:
        stored = TopicPositions(settings, timeout_s=timeout_s).load(channel)
    except ReplayError as exc:
        log.warning("%s: %s; the group's committed offset alone is shown", channel, exc)
        stored = None
    saved = saved_position(committed, stored)
    bounds = replay_bounds(low, high, saved if saved is not None and saved <= high else OFFSET_INVALID)
    return bounds.start, bounds.end


def _watermarks(consumer: Consumer, topic: str, timeout_s: float) -> tuple[int, int, int]:
    """The queue's first and end offsets and the replay group's committed offset (``OFFSET_INVALID``: none)."""
    tp = TopicPartition(topic, 0)
    low, high = watermark(consumer, tp, timeout_s)
    return low, high, consumer.committed([tp], timeout=timeout_s)[0].offset


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

    def __init__(  # noqa: PLR0913 - which channel, then collaborators and where to start; keyword-only
        self,
        settings: Settings,
        channel: str,
        *,
        caller: ChannelCaller | None = None,
        codec: Codec | None = None,
        on_progress: Callable[[ReplaySummary], None] | None = None,
        stop: threading.Event | None = None,
        from_offset: int | None = None,
        positions: PositionStore | None = None,
        issued: Callable[[], IssuedRefunds] | None = None,
        levels: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        """``from_offset``: start there, whatever position is saved (an operator's answer to a replay that
        found none over a queue replayed before). ``positions`` and ``issued`` (what reads ``refund.issued``)
        default to the broker's."""
        self.settings = settings
        self.channel = channel
        self.spec = queue_spec(channel)
        self.topic = settings.topic(self.spec.name)
        self.codec = codec or codec_for(settings)
        self.stop = stop or threading.Event()
        self._own_caller = caller is None
        self.caller = caller or ChannelCaller(settings, CredentialStore.from_settings(settings),
                                              stopping=self.stop.is_set,
                                              rate_share=replay_rate_share(settings))  # fmt: skip
        self.on_progress = on_progress or (lambda _summary: None)
        self.summary = ReplaySummary(channel)
        self.max_items = pf.platform(channel).stock_batch.max_items
        self._group: list[_Parked] = []  # stock records in a row, read and not sent yet
        self._fatal: list[str] = []
        self.from_offset = from_offset
        self.positions = positions
        self._read_issued = issued or (lambda: read_issued_refunds(self.settings, self.codec, self.channel))
        # Per SKU, the version of its newest stock level: the platforms keep no version of their own, so a parked
        # figure sent after a newer one took its place would set the channel back to the older, higher figure. One
        # a newer level overtook is not sent: the connector sends that one. Read again before a call once
        # LEVELS_FRESH_S old: a replay paced beside the connectors runs for minutes, and the SKUs sell meanwhile.
        self._read_levels = levels or (lambda: read_newest_versions(self.settings, self.codec))
        self._levels: dict[str, int] | None = None
        self._levels_read_s = 0.0
        self.issued = IssuedRefunds()
        self._paid_now: set[str] = set()  # refunds this run got agreed

    def run(self) -> ReplaySummary:
        with _replay_lock(self.settings, self.channel):
            ensure_topics(self.settings, (self.spec, REFUND_ISSUED, STOCK_LEVELS, CONNECTOR_CALLS, ALERTS, POSITIONS))
            sink = ResultSink(self.settings, self.codec, on_fatal=self._fatal.append)
            if self._own_caller:  # a caller given is someone else's: they decide where its calls are recorded
                self.caller.replaying = True
                self.caller.on_call = lambda rec: sink.send(CONNECTOR_CALLS.name, rec["channel"], "ConnectorCalled",
                                                            rec)  # fmt: skip
            if self.positions is None:
                self.positions = TopicPositions(self.settings, sink.producer)
            consumer = _consumer(self.settings, self.channel)
            try:
                self.run_with(consumer, sink)
            finally:
                consumer.close()
                sink.close()
                if self._own_caller:
                    self.caller.close()
        return self.summary

    def run_with(self, consumer: Consumer, sink: ResultSink) -> ReplaySummary:
        """The replay over a consumer of the queue and a result sink already made (``run`` makes them, under the
        lock): ``refund.issued`` read first, then the queue from where the last replay got."""
        if self.positions is None:
            raise ReplayError("a replay needs somewhere to keep its position")
        self.issued = self._read_issued()
        self._run(consumer, sink)
        self._durable(sink)  # the last position saved is on the broker before the replay says it is done
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
        the alert durable before the position moves past them (after which nothing would show them). No start
        that can be trusted (see ``_position``): it stops before sending anything, (start, start)."""
        low, high, committed = _watermarks(consumer, self.topic, 15.0)
        s = self.summary
        s.first_offset = s.next_offset = low
        position = self._position(consumer, low, high, committed)
        if position is None:
            s.queued = high - low
            log.error("replay %s: %s", self.channel, s.stopped)
            self.on_progress(s)
            return low, low
        bounds = replay_bounds(low, high, position)
        s.queued, s.first_offset, s.next_offset = bounds.end - bounds.start, bounds.start, bounds.start
        if bounds.lost:
            record = gap_alert(self.channel, self.topic, bounds, wall_ms())
            s.lost, s.gap = bounds.lost, record["message"]
            log.error("replay %s: %s", self.channel, record["message"])
            sink.send(ALERTS.name, record["subject"], "Alert", record)
            self._durable(sink)
        self.on_progress(s)
        return bounds.start, bounds.end

    def _position(self, consumer: Consumer, low: int, high: int, committed: int) -> int | None:
        """Where to start: ``from_offset`` if given, else the saved position, else (never replayed) none saved,
        ``OFFSET_INVALID``. None, with ``summary.stopped`` saying why, when no start can be trusted: a saved
        one past the queue's end (the queue was created again), or none saved over a queue replayed before
        (starting at its first record would send every call again and bury this run's under them)."""
        assert self.positions is not None
        how = "given (--from-offset)" if self.from_offset is not None else "saved"
        position = self.from_offset if self.from_offset is not None else saved_position(
            committed, self.positions.load(self.channel))  # fmt: skip
        again = f"stockflow connectors replay {self.channel} --from-offset N"
        if position is not None:
            if position > high:
                self.summary.stopped = (f"the {how} position {position} is past the queue's end ({self.topic} "
                                        f"ends at {high}: deleted and created again?); say where to start: "
                                        f"{again}")  # fmt: skip
                return None
            return position
        if high <= low:
            return OFFSET_INVALID  # nothing to send: only a gap, if any, to report
        resumed = self._replayed_before(consumer, low, high)
        signs = []
        if resumed is not None:
            signs.append(f"records a replay wrote back, the newest from offset {resumed - 1}")
        if self.issued.replayed:
            signs.append(f"{self.issued.replayed} RefundIssued record(s) on refund.issued written by a replay")
        if not signs:
            return OFFSET_INVALID  # never replayed: from the queue's first record
        hint = (f"; a replay had got past offset {resumed - 1}, so --from-offset {resumed} sends nothing before "
                "where it was" if resumed is not None else "")  # fmt: skip
        self.summary.stopped = (
            f"the replay has no saved position (its group's offsets expired?) but {self.topic} was replayed before "
            f"({'; '.join(signs)}): starting at offset {low} would send every call in it again. Say where to start "
            f"({again}; refunds refund.issued records as paid are never called again){hint}"
        )
        return None

    def _replayed_before(self, consumer: Consumer, low: int, high: int) -> int | None:
        """The offset past the newest queue record a replay wrote back (refused again: its source is this queue),
        which that replay had got past; None when there is none."""
        prefix = f"{self.topic}/0/"
        consumer.assign([TopicPartition(self.topic, 0, low)])
        past, offset, idle = None, low, 0
        while offset < high:
            msg = consumer.poll(1.0)
            if msg is None:
                idle += 1
                if idle >= IDLE_POLLS:
                    raise ReplayError(f"no record came from {self.topic} at offset {offset} within {idle} s")
                continue
            idle = 0
            if not self._readable(msg):
                continue
            offset = (msg.offset() or 0) + 1
            with contextlib.suppress(DecodeError, KeyError, ValueError):
                _, data = self.codec.decode(msg.value())
                source = str(data["source"])
                if source.startswith(prefix):
                    past = max(past or 0, int(source.removeprefix(prefix)) + 1)
        return past

    def _readable(self, msg: Message) -> bool:
        error = msg.error()
        if error is not None and error.code() != KafkaError._PARTITION_EOF:
            log.warning("replay %s: kafka: %s", self.channel, error)
        return error is None

    def _take(self, consumer: Consumer, sink: ResultSink, offset: int, value: bytes | None, end: int) -> bool:
        """Replay the record at ``offset`` (a stock record joins the group of those before it); False to stop."""
        parked = self._read(offset, value)
        if parked is not None and self._overtaken(parked):
            if self._group and not self._flush(consumer, sink):
                return False
            self.summary.already_applied += 1
            self._done_through(consumer, offset)
            return True
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

    def _overtaken(self, parked: _Parked) -> bool:
        """Whether ``parked`` is a stock figure older than its SKU's newest level (as read at most LEVELS_FRESH_S
        ago)."""
        if parked.update is None:
            return False
        if self._levels is None or time.monotonic() - self._levels_read_s > LEVELS_FRESH_S:
            self._levels, self._levels_read_s = self._read_levels(), time.monotonic()
        return parked.update.version < self._levels.get(parked.update.sku, 0)

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
        # Overtaken since they were read (a sale the connector pushed while the replay paced itself): not sent.
        last = group[-1].offset
        for parked in [p for p in group if self._overtaken(p)]:
            group.remove(parked)
            self._count(pf.OutcomeKind.ALREADY_APPLIED, True, parked.record["idempotency_key"], "")
        if not group:
            self._done_through(consumer, last)
            return True
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
        if endpoint == "refund" and record["idempotency_key"] in (self.issued.paid | self._paid_now):
            # refund.issued records it paid (the live connector, or a replay killed before it saved its position):
            # calling again could pay it twice if the marketplace's idempotency window has passed.
            log.info("replay %s: refund %s is on refund.issued already; not called again", self.channel,
                     record["idempotency_key"])  # fmt: skip
            self._count(pf.OutcomeKind.ALREADY_APPLIED, True, record["idempotency_key"], "")
            return True
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
                if result.done:  # the same refund further on in the queue (parked twice) is not called again
                    self._paid_now.add(call.refund_id)
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
        """Save the position: on ``POSITIONS`` (durable with the next results, or at the end), then the group."""
        assert self.positions is not None
        self.positions.save(self.channel, next_offset)
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
