"""The connectors' Kafka side: reading an input at least once while calls finish out of order, and
writing results whose acknowledgement finishes the input record.

- ``InputLoop``: a read_committed consumer (manual commits) run on a thread of its own. Each record is
  ``begin``-ed with how many pieces of work it makes and ``finish``-ed piece by piece, from any thread,
  once the result of that piece is durable; the loop commits each partition up to its oldest unfinished
  record (``outbound.OffsetTracker``). A crash therefore repeats calls, never skips one: every call
  carries an idempotency key, so a repeat changes nothing at the marketplace. When too many records
  are unfinished the loop pauses its partitions (every channel's) until half are done: a memory guard
  set far above what the lanes hold (a stock lane whose channel is away parks its oldest figures past
  its own cap rather than hold the others back).
  On a revoke the revoked partitions' unfinished records are forgotten, their tickets stop counting
  (``OffsetTracker.holds``: the record read again, if the partition comes back, is a new ticket) and
  ``on_revoked`` tells the connector which partitions went, so it drops their queued work.
- ``ResultSink``: one idempotent producer for every result (``refund.issued``, the failed queues,
  ``alerts``, ``deadletters``); ``send(..., on_done)`` runs ``on_done`` when the broker has the record;
  ``park`` writes a call that failed for good to its channel's failed queue (the queue's one writer;
  ``failed_queue`` reads and replays it).
  It waits out a broker outage (no delivery timeout); a record the broker refuses for good stops the
  process (its input record stays uncommitted and is read again at the next start).
- ``ConnectorAlerts``: the ``connector_failing`` alert per channel and endpoint, shared by every lane.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from agents.channels.outbound import FailedCall, FailingWatch, OffsetTracker, Ticket, TopicPartitionKey
from streams.contract.codec import Codec, DecodeError
from streams.contract.reasons import Reason
from streams.contract.records import Alert
from streams.contract.registry import EventType
from streams.contract.schema_registry import SchemaRegistryUnavailable
from streams.contract.topics import ALERTS, CONNECTOR_FAILED, DEADLETTERS
from streams.engine.clock import wall_ms
from streams.engine.deadletter import dead_letter
from streams.engine.producer import EventProducer
from streams.kafkaconf import confluent_config
from streams.settings import Settings

log = logging.getLogger(__name__)
COMMIT_EVERY_S = 0.5
MAX_POLL_INTERVAL_MS = 86_400_000  # a lane may retry for long; the group must not evict the loop meanwhile
END_OFFSET_WAIT_S = 5.0
END_UNKNOWN = 2**63 - 1  # a partition's end offset the broker did not give at its assignment: past every record
REGISTRY_WAIT_S = 1.0  # a record whose schema the registry could not give is read again after this


@dataclass(frozen=True, slots=True)
class Received:
    """One input message (what ``dead_letter`` reads from it)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @property
    def source(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


class ResultSink:
    """Results to Kafka; ``on_done`` callbacks run on the sink's own poll thread once acknowledged."""

    def __init__(self, settings: Settings, codec: Codec, on_fatal: Callable[[str], None]) -> None:
        # No delivery timeout: a broker outage is waited out, the records queue in the client meanwhile.
        self.producer = EventProducer(settings, codec, **{"message.timeout.ms": 0})
        self.on_fatal = on_fatal
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="connectors-results", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.1)

    def send(self, topic: str, key: str, event: str, record: Any, on_done: Callable[[], None] | None = None) -> None:
        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self.on_fatal(f"the broker refused a record for {msg.topic()}: {err}")
                return
            if on_done is not None:
                on_done()

        self.producer.send_with_callback(topic, key, event, record, delivered)

    def park(self, failed: FailedCall, on_done: Callable[[], None] | None = None) -> None:
        """Write a call that failed for good to its channel's failed queue: the request body as it was before
        signing (never credentials), the answer and the reason; ``stockflow connectors replay`` sends it again."""
        topic = CONNECTOR_FAILED[failed.channel].name
        self.send(topic, failed.channel, "ConnectorCallFailed", failed.record(wall_ms()), on_done)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until everything sent is acknowledged (its callbacks have run); raise if the broker refused any."""
        self.producer.flush(timeout_s)

    def close(self, timeout_s: float = 15.0) -> None:
        """Deliver what is queued (its callbacks run), then stop serving."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        try:
            self.producer.flush(timeout_s)
        except KafkaException as exc:  # their inputs stay uncommitted: they are read and sent again
            log.warning("results not acknowledged at stop: %s", exc)


class ConnectorAlerts:
    """``connector_failing`` per channel and endpoint, raised on the first call that fails, cleared by a success
    of the same endpoint."""

    def __init__(self, sink: ResultSink) -> None:
        self.sink = sink
        self.watch = FailingWatch()
        self._lock = threading.Lock()

    def failed(self, channel: str, endpoint: str, reason: str, answer: str, *, parked: bool = True) -> None:
        with self._lock:
            record = self.watch.failed(channel, endpoint, reason, answer, wall_ms(), parked=parked)
        if record is not None:
            log.warning("%s: %s calls failing (%s); connector_failing raised", channel, endpoint, reason)
            self.send(record)

    def parked_backlog(self, channel: str, endpoint: str, parked: int, cap: int) -> None:
        """A lane parked ``parked`` of its oldest figures, its channel away with over ``cap`` waiting."""
        with self._lock:
            record = self.watch.parked_backlog(channel, endpoint, parked, cap, wall_ms())
        if record is not None:
            log.warning("%s: %s backlog over %d parked; connector_failing raised", channel, endpoint, cap)
            self.send(record)

    def succeeded(self, channel: str, endpoint: str) -> None:
        if not self.watch.is_failing(channel, endpoint):
            return  # the common case, without the lock
        with self._lock:
            record = self.watch.succeeded(channel, endpoint, wall_ms())
        if record is not None:
            log.warning("%s: %s calls succeed again; connector_failing cleared", channel, endpoint)
            self.send(record)

    def is_failing(self, channel: str, endpoint: str | None = None) -> bool:
        with self._lock:  # the status view reads from another thread while lanes change the watch
            return self.watch.is_failing(channel, endpoint)

    def send(self, record: Alert) -> None:
        self.sink.send(ALERTS.name, record["subject"], "Alert", record)


class InputLoop:
    """One input consumer; ``run`` on a thread until ``stop`` is set. See the module docstring."""

    def __init__(  # noqa: PLR0913 - where to read, where results go, what to do and when to stop; keyword-only
        self,
        settings: Settings,
        codec: Codec,
        sink: ResultSink,
        *,
        group_id: str,
        topic: str,
        stage: str,
        handle: Callable[[Received, EventType, dict[str, Any]], None],
        stop: threading.Event,
        max_in_flight: int,
        on_revoked: Callable[[set[TopicPartitionKey]], None] = lambda _partitions: None,
        on_assigned: Callable[[dict[TopicPartitionKey, int]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_revoked = on_revoked
        # Called with each assignment's partitions and their end offsets then (``END_UNKNOWN`` where the broker did
        # not say): the records below were maybe read by an earlier owner. None: not asked for (no broker call).
        self.on_assigned = on_assigned
        # Called after each change of ``assigned`` (on the loop's thread): the process shares the platforms'
        # rate limits among the group's members by the partitions each holds.
        self.on_assignment: Callable[[], None] = lambda: None
        self.partitions_total: int | None = None  # the input topic's, read before subscribing
        self.codec = codec
        self.sink = sink
        self.group_id = group_id
        self.topic = settings.topic(topic)
        self.stage = stage
        self.handle = handle
        self.stop = stop
        self.max_in_flight = max_in_flight
        self.tracker = OffsetTracker()
        self._lock = threading.Lock()
        self._committed: dict[tuple[str, int], int] = {}
        self._next_commit = 0.0
        self.paused = False
        self.received = 0
        self.undecodable = 0  # records skipped as unreadable (the sink dead-letters them)
        self.assigned: set[tuple[str, int]] = set()
        # The loop died part-way through what it had read: the consumer's position is past records never
        # handled, so nothing is committed on the way out and the next start reads them again.
        self.crashed = False
        self.registry_away = ""
        self.consumer = Consumer({
            **confluent_config(settings),
            "group.id": group_id,
            "client.id": f"stockflow-{stage}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
            "session.timeout.ms": int(settings.session_timeout_s * 1000),
            "heartbeat.interval.ms": max(int(settings.session_timeout_s * 100), 500),
            "log.connection.close": False,
            # A rebalance revokes only the partitions that move: a revoke waits for their calls under way to land
            # (push_stock), and with every partition revoked each time a member came or went, one channel away
            # held the whole group for a call's retry budget.
            "partition.assignment.strategy": "cooperative-sticky",
        })  # fmt: skip

    # ---- what lanes call -----------------------------------------------------------------------------
    def begin(self, msg: Received, parts: int) -> Ticket:
        with self._lock:
            return self.tracker.begin(msg.topic, msg.partition, msg.offset, parts)

    def finish(self, ticket: Ticket, parts: int = 1) -> None:
        with self._lock:
            self.tracker.finish(ticket, parts)

    def holds(self, ticket: Ticket) -> bool:
        """Whether ``ticket``'s partition is still this loop's since it was read (else its new owner reads it)."""
        with self._lock:
            return self.tracker.holds(ticket)

    def in_flight(self) -> int:
        with self._lock:
            return self.tracker.in_flight()

    # ---- the loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        """Read until ``stop`` is set; the consumer stays open for ``close`` (after the lanes' results are in)."""
        # Read here, on the loop's thread: a client call from inside a rebalance callback can abort the process
        # (confluent-kafka's CallState assertion).
        try:
            self.partitions_total = len(self.consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions)
        except (KafkaException, KeyError) as exc:
            log.warning("%s: partitions of %s not read (%s); taking %d", self.stage, self.topic, exc,
                        self.settings.partitions)  # fmt: skip
        self.consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)  # fmt: skip
        try:
            while not self.stop.is_set():
                if self._read() and not self.stop.wait(REGISTRY_WAIT_S):
                    continue
                self._flow_control()
                if time.monotonic() >= self._next_commit:
                    self.commit()
        except BaseException:
            self.crashed = True
            raise

    def _read(self) -> bool:
        """Hand over what one fetch brought; True: a partition was rewound to a record the registry could not
        decode for now, to be read again after a wait."""
        rewound: set[tuple[str, int]] = set()
        for msg in self.consumer.consume(500, timeout=0.1):
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("%s: kafka: %s", self.stage, error)
                continue
            received = Received(msg.topic() or "", msg.partition() or 0, msg.offset() or 0, msg.key(), msg.value())
            where = (received.topic, received.partition)
            if where in rewound:
                continue  # after the record read again: they come again behind it, in order
            try:
                self._receive(received)
            except SchemaRegistryUnavailable as exc:
                # Not the record's fault: never skipped, never dead-lettered; its partition waits for the registry.
                self.consumer.seek(TopicPartition(received.topic, received.partition, received.offset))
                rewound.add(where)
                if not self.registry_away:
                    log.warning("%s: %s; %s waits and reads it again", self.stage, exc, received.source)
                self.registry_away = str(exc)
                continue
            if self.registry_away:
                log.info("%s: the schema registry answers again", self.stage)
                self.registry_away = ""
        return bool(rewound)

    def close(self) -> None:
        """Commit what is finished and leave the group (call once ``run`` returned and the results are flushed);
        after a crash, only leave: what was read but not handled is read again at the next start."""
        try:
            if not self.crashed:
                self.commit()
        finally:
            self.consumer.close()

    def _receive(self, msg: Received) -> None:
        self.received += 1
        if msg.value is None:
            return  # a compaction tombstone: nothing to send
        try:
            event_type, record = self.codec.decode(msg.value)
        except DecodeError:
            # Skipped: the sink reads every topic and is the one place that dead-letters unreadable bytes;
            # a second dead letter here showed one bad record twice on the dead-letters dashboard.
            self.undecodable += 1
            return
        self.handle(msg, event_type, record)

    def refuse(self, msg: Received, reason: Reason, detail: str) -> None:
        """A readable record the connector cannot act on: dead-lettered, then it counts as done."""
        ticket = self.begin(msg, 1)
        log.warning("%s: %s dead-lettered (%s): %s", self.stage, msg.source, reason, detail)
        letter = dead_letter(msg, self.stage, reason, detail, wall_ms())
        self.sink.send(DEADLETTERS.name, letter["source_topic"], "DeadLetter", letter, lambda: self.finish(ticket))

    def _flow_control(self) -> None:
        in_flight = self.in_flight()
        if not self.paused and in_flight >= self.max_in_flight:
            self.paused = True
            log.warning("%s: %d records unfinished; reading paused until half are done", self.stage, in_flight)
        elif self.paused and in_flight <= self.max_in_flight // 2:
            self.paused = False
            self.consumer.resume(self.consumer.assignment())
        if self.paused:
            self.consumer.pause(self.consumer.assignment())  # again: a rebalance hands over unpaused partitions

    def commit(self, partitions: list[TopicPartition] | None = None) -> None:
        """Commit every partition (or ``partitions``) up to its oldest unfinished record."""
        self._next_commit = time.monotonic() + COMMIT_EVERY_S
        try:
            held = partitions if partitions is not None else self.consumer.assignment()
            if not held:
                return
            positions = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.position(held)}
        except KafkaException as exc:
            log.info("%s: positions not read (%s); committed at the next turn", self.stage, exc)
            return
        with self._lock:
            points = self.tracker.commit_points(positions)
        offsets = [TopicPartition(t, p, o) for (t, p), o in points.items() if self._committed.get((t, p)) != o]
        if not offsets:
            return
        try:
            answer = self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("%s: offsets not committed (%s); they are committed at the next turn", self.stage, exc)
            return
        for tp in answer or []:
            if tp.error is None:
                self._committed[(tp.topic, tp.partition)] = tp.offset

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.on_assigned is not None:
            deadline = time.monotonic() + END_OFFSET_WAIT_S  # for them all: the loop reads nothing meanwhile
            self.on_assigned({(tp.topic, tp.partition): self._end_offset(consumer, tp, deadline) for tp in partitions})
        # Held (and the process ready) once their ends are known: a record written before then counts as read again.
        self.assigned.update((tp.topic, tp.partition) for tp in partitions)
        log.info("%s: assigned %s", self.stage, [tp.partition for tp in partitions])
        self.on_assignment()

    def _end_offset(self, consumer: Consumer, tp: TopicPartition, deadline: float) -> int:
        """The partition's end offset now; ``END_UNKNOWN`` if the broker would not say by ``deadline`` (a
        partition just made, its leader not known yet, answers so at first)."""
        why: object = "no time left"
        while not self.stop.is_set() and (left_s := deadline - time.monotonic()) > 0:
            try:
                return int(consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), min(2.0, left_s))[1])
            except KafkaException as exc:
                why = exc
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        log.warning("%s: end of partition %d unknown (%s): every record read soon is taken as read before",
                    self.stage, tp.partition, why)  # fmt: skip
        return END_UNKNOWN

    @property
    def partitions(self) -> int:
        """How many partitions the input topic has (the settings' count until the broker said)."""
        return self.partitions_total or self.settings.partitions

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # What is finished is committed; what is not is read again by the partition's next owner, which
        # may be this loop again (a later rebalance gives it back): the tickets read so far stop counting, so
        # work queued for them can never finish the record read again, and the connector drops that work
        # (a call already under way may still land: the idempotency key makes that harmless).
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self.commit(partitions)
        with self._lock:
            self.tracker.forget(revoked)
        for tp in revoked:
            self._committed.pop(tp, None)
            self.assigned.discard(tp)
        if revoked:
            self.on_revoked(revoked)
            self.on_assignment()
