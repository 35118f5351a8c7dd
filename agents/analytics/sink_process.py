"""``stockflow sink``: every business topic into ClickHouse, in a process of its own.

Reads: every topic in ``streams.contract.topics.SUNK_TOPICS``, as consumer group ``<app id>.sink``,
read_committed (the engine writes its outputs in transactions: an aborted batch never reaches a
dashboard). Writes: ClickHouse (``agents.analytics.sink``) and, with a plain producer, the
``deadletters`` topic for what cannot be stored - unreadable bytes (the sink reads every topic, so
it is the one place that refuses them) and events ClickHouse cannot hold (``unstorable``). Owns:
the ClickHouse connection (with the embedded backend, the chdb folder), over which it also serves
the dashboards; in Kafka only its group's offsets.

A plain poll loop: messages gather until ``STOCKFLOW_SINK_BATCH_ROWS`` or
``STOCKFLOW_SINK_FLUSH_INTERVAL_S``; the batch is inserted, its dead letters are acknowledged by
the broker, and only then are its offsets committed. A crash anywhere replays the batch, which
ClickHouse keeps once per event id. While ClickHouse or the broker is away the batch waits, retried
without bound; a row ClickHouse refuses is dead-lettered and the stream goes on. It runs apart from
the worker, so neither an outage nor a slow insert touches the order pipeline.

HTTP on ``STOCKFLOW_SINK_PORT``: ``/healthz``, ``/readyz``, ``/sink/status``,
``/sink/query/events-by-type`` and ``/dash/{name}`` (``agents.analytics.sink_views``).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from agents.analytics.sink import (
    STAGE,
    BatchWriter,
    Received,
    Refused,
    SharedClickHouse,
    SinkStatus,
    SinkStopping,
    broker_time_ms,
    clickhouse_retriable,
)
from agents.analytics.sink_views import SinkViews
from streams.contract.codec import Codec, codec_for
from streams.contract.records import DeadLetter
from streams.contract.topics import DEADLETTERS, SUNK_TOPICS, PartitionCountMismatch, ensure_topics
from streams.engine.clock import Clock
from streams.engine.deadletter import dead_letter
from streams.engine.producer import EventProducer
from streams.engine.retry import Backoff, Retry
from streams.gcpolicy import pace_for_batches
from streams.kafkaconf import confluent_config
from streams.priority import lower_priority
from streams.settings import Settings
from streams.stores.clickhouse import ClickHouseFolderBusy

log = logging.getLogger(__name__)
LOG_LEVELS = {"crit": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO,
              "debug": logging.DEBUG}  # fmt: skip
MAX_POLL_INTERVAL_MS = 86_400_000  # librdkafka's ceiling: a long ClickHouse outage must not evict the sink
FETCH_MIN_BYTES = 1 << 20  # a fetch waits for this much (or half a flush interval) before the broker answers
CHECK_EVERY_S = 1.0  # lag and readiness
PROBE_IDLE_S = 5.0  # how long without an insert before ClickHouse is asked whether it is still there
# Errors that mean the broker is away or moving things, worth waiting out.
_KAFKA_AWAY = frozenset({
    KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError._MSG_TIMED_OUT,
    KafkaError._WAIT_COORD, KafkaError.REQUEST_TIMED_OUT, KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.NETWORK_EXCEPTION,
})  # fmt: skip
# The group moved on without this member: its offsets cannot be committed any more, and its
# partitions are read again by their next owner. Retrying would keep it from rejoining.
_GROUP_MOVED_ON = frozenset({
    KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.FENCED_INSTANCE_ID, KafkaError._ASSIGNMENT_LOST,
})  # fmt: skip


def kafka_away(exc: BaseException) -> bool:
    """Worth retrying against the broker: it is away or busy; not a refusal, and not a lost group membership."""
    if isinstance(exc, KafkaException):
        error = exc.args[0] if exc.args else None
        if not isinstance(error, KafkaError):
            return True  # EventProducer.flush: deliveries not acknowledged in time, or failed
        if error.code() in _GROUP_MOVED_ON or error.fatal():
            return False
        return error.retriable() or error.code() in _KAFKA_AWAY
    return isinstance(exc, (OSError, TimeoutError))


def dead_letters_for(refused: Sequence[Refused], deadletter_topic: str, now_ms: int) -> list[DeadLetter]:
    """The dead letters of ``refused``, the same records each time a message is refused again."""
    letters = []
    for item in refused:
        msg = item.message
        if msg.topic == deadletter_topic:
            # Never dead-letter a dead letter: a loop would follow; it stays in Kafka as it is.
            log.warning("the dead letter at %s[%d]@%d is left out of ClickHouse (%s): %s", msg.topic, msg.partition,
                        msg.offset, item.reason, item.detail)  # fmt: skip
            continue
        # Timed by the refused message, not by the refusal: a crash before the commit refuses it again,
        # maybe in the next month, and a dead letter in another month's partition would be a second
        # row for good. Kafka has stamped every record since 0.10; now_ms is for one without a stamp.
        letters.append(dead_letter(msg, STAGE, item.reason, item.detail, broker_time_ms(msg) or now_ms))
    return letters


class ClickHouseSink:
    """The sink's loop. ``run`` blocks until ``stop`` is set (SIGTERM) and returns after a clean stop."""

    def __init__(self, settings: Settings, codec: Codec | None = None, clock: Clock | None = None,
                 from_beginning: bool = False) -> None:  # fmt: skip
        self.settings = settings
        # Read every partition again from its first record, the first time this process is given it: after
        # ClickHouse lost rows (a power cut before its pages reached the disk, a new server). Rows it still
        # has are counted once: every table keeps one row per event id.
        self.from_beginning = from_beginning
        self._rewound: set[tuple[str, int]] = set()
        self.codec = codec or codec_for(settings)
        self.clock = clock or Clock()
        self.stop = threading.Event()
        self.status = SinkStatus()
        self.clickhouse = SharedClickHouse(settings)
        self.writer = BatchWriter(self.codec, self.clickhouse, self.status, stopping=self.stop.is_set)
        self.topics = [settings.topic(t.name) for t in SUNK_TOPICS]
        self.deadletter_topic = settings.topic(DEADLETTERS.name)
        self.group_id = f"{settings.app_id}.sink"
        self.pending: list[Received] = []
        self.committed: dict[tuple[str, int], int] = {}  # next offset to read, per partition held
        self._backoff = Backoff(first_s=0.2, max_s=10.0)
        self.consumer = self._consumer()
        self.producer = EventProducer(settings, self.codec)
        self._last_kafka_error = ""
        self._next_check = 0.0
        self._last_write = time.monotonic()

    # ---- set-up -------------------------------------------------------------------------------------
    def _consumer(self) -> Consumer:
        return Consumer({
            **confluent_config(self.settings),
            "group.id": self.group_id,
            "client.id": f"stockflow-sink@{self.settings.web_host}:{self.settings.sink_port}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
            # The sink writes once a flush interval: a fetch answered as soon as one record is there
            # cost the broker a request per round trip (hundreds a second under load) for nothing.
            "fetch.min.bytes": FETCH_MIN_BYTES,
            "fetch.wait.max.ms": max(int(self.settings.sink_flush_interval_s * 500), 1),
            "session.timeout.ms": int(self.settings.session_timeout_s * 1000),
            "heartbeat.interval.ms": max(int(self.settings.session_timeout_s * 100), 500),
            "error_cb": self._on_kafka_error,
            "log.connection.close": False,
        })  # fmt: skip

    def _on_kafka_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.status.broker_ok = False
        # A broker outage reports the same error many times a second: say it once per change.
        text = f"{error.name()}: {error.str()}"
        if text != self._last_kafka_error:
            self._last_kafka_error = text
            log.warning("kafka: %s", text)

    def _kafka_failed(self, exc: BaseException) -> None:
        self.status.retries += 1
        self.status.last_error = f"{type(exc).__name__}: {exc}"[:500]
        self.status.broker_ok = False
        if self.stop.is_set():
            raise SinkStopping(f"stopped while the broker was failing: {self.status.last_error}") from exc

    def _retry_kafka(self, what: str) -> Retry:
        return Retry(what, kafka_away, backoff=self._backoff, log=log)

    def _start(self) -> None:
        # Outages at start are waited out like any other: the sink may start before the broker or ClickHouse.
        self._retry_kafka("creating the contract topics").call(lambda: ensure_topics(self.settings),
                                                               self._kafka_failed)  # fmt: skip
        opening = Retry("opening ClickHouse", clickhouse_retriable, backoff=self._backoff, log=log)
        opening.call(self._open_clickhouse, self._clickhouse_failed)
        self.consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)  # fmt: skip
        self._retry_kafka("reaching the broker").call(self._probe_broker, self._kafka_failed)

    def _open_clickhouse(self) -> None:
        self.clickhouse.get()
        self.status.clickhouse_ok = True

    def _clickhouse_failed(self, exc: BaseException) -> None:
        self.status.retries += 1
        self.status.last_error = f"{type(exc).__name__}: {exc}"[:500]
        self.status.clickhouse_ok = False
        self.clickhouse.drop()
        if self.stop.is_set():
            raise SinkStopping(f"stopped while ClickHouse was failing: {self.status.last_error}") from exc

    def _probe_broker(self) -> None:
        self.consumer.list_topics(self.topics[0], timeout=5)
        self.status.broker_ok = True

    # ---- the loop -----------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._start()
            pace_for_batches()
            self._loop()
            if self.pending:
                self._flush()  # a clean stop writes what it holds; if ClickHouse is away it is replayed
        except SinkStopping as exc:
            log.warning("%s; the batch in hand is read again at the next start", exc)
        finally:
            self.consumer.close()
            try:
                self.producer.flush(10)
            except KafkaException as exc:  # their batch was not committed: they are sent again
                log.warning("dead letters not acknowledged at stop: %s", exc)
            self.clickhouse.drop()

    def _loop(self) -> None:
        batch_rows = self.settings.sink_batch_rows
        interval_s = self.settings.sink_flush_interval_s
        first_at = 0.0
        while not self.stop.is_set():
            wait_s = 0.1 if not self.pending else max(0.0, min(0.1, first_at + interval_s - time.monotonic()))
            for msg in self.consumer.consume(max(1, batch_rows - len(self.pending)), timeout=wait_s):
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        self._on_kafka_error(error)
                    continue
                if not self.pending:
                    first_at = time.monotonic()
                self.pending.append(Received(msg.topic() or "", msg.partition() or 0, msg.offset() or 0,
                                             msg.key(), msg.value(), msg.timestamp()[1]))  # fmt: skip
                self.status.broker_ok = True
            if self.pending and (len(self.pending) >= batch_rows or time.monotonic() - first_at >= interval_s):
                self._flush()
            self._check()

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        now_ms = self.clock.now_ms()
        refused = self.writer.write(batch, now_ms)
        self._last_write = time.monotonic()
        self._send_dead_letters(refused, now_ms)
        self._commit()

    def _send_dead_letters(self, refused: list[Refused], now_ms: int) -> None:
        letters = dead_letters_for(refused, self.deadletter_topic, now_ms)
        if not letters:
            return

        def send() -> None:
            # Sent again whole after a failure: the dead letters' ids are their source positions, so
            # ClickHouse keeps one row per refused message however often it is sent.
            for letter in letters:
                self.producer.send(DEADLETTERS.name, letter["source_topic"], "DeadLetter", letter)
            self.producer.flush(30)

        self._retry_kafka("sending the sink's dead letters").call(send, self._kafka_failed)
        self.status.dead_letters += len(letters)

    def _commit(self) -> None:
        """Commit how far this sink has read; call only with nothing pending: all of it is then stored.

        The consumer's position, not the last message's offset + 1: a transaction's commit marker takes
        an offset too, and a group committed short of it would show a lag of one per partition forever.
        """
        try:
            positions = self.consumer.position(self.consumer.assignment())
        except KafkaException as exc:
            log.warning("positions not read (%s); the offsets are committed with the next batch", exc)
            return
        offsets = [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in positions
                   if tp.offset >= 0 and tp.offset != self.committed.get((tp.topic, tp.partition))]  # fmt: skip
        if not offsets:
            return
        try:
            answer = self._retry_kafka("committing the sink's offsets").call(
                lambda: self.consumer.commit(offsets=offsets, asynchronous=False), self._kafka_failed
            )
        except KafkaException as exc:
            # The rows are in ClickHouse; whoever holds these partitions now inserts them again,
            # and ClickHouse keeps one row per event.
            log.warning("offsets of a written batch not committed (%s); it will be read again", exc)
            return
        self.status.broker_ok = True
        for tp in answer or []:
            if tp.error is None:
                self.committed[(tp.topic, tp.partition)] = tp.offset
            else:
                log.warning("offset %s[%d]@%d not committed (%s); it will be read again", tp.topic, tp.partition,
                            tp.offset, tp.error)  # fmt: skip

    # ---- rebalances ---------------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.status.broker_ok = True
        if self.from_beginning:
            self._rewind(consumer, partitions)
        try:
            for tp in consumer.committed(partitions, timeout=10):
                if tp.offset >= 0 and not self.from_beginning:  # a rewound partition starts at its first record
                    self.committed[(tp.topic, tp.partition)] = tp.offset
        except KafkaException as exc:
            log.info("committed offsets not read for the lag figure: %s", exc)

    def _rewind(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        fresh = [tp for tp in partitions if (tp.topic, tp.partition) not in self._rewound]
        if not fresh:
            return
        for tp in fresh:
            tp.offset = OFFSET_BEGINNING
            self._rewound.add((tp.topic, tp.partition))
        consumer.assign(partitions)  # the others from their committed offsets
        log.warning("reading %d partitions again from their first record (--from-beginning)", len(fresh))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # What was gathered from these partitions and not yet written is read again by their next
        # owner, from the last committed offset; writing it now could wait on ClickHouse for hours
        # while the whole group waits for this member.
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self.pending = [m for m in self.pending if (m.topic, m.partition) not in gone]
        for key in gone:
            self.committed.pop(key, None)

    # ---- lag and readiness --------------------------------------------------------------------------
    def _check(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + CHECK_EVERY_S
        if not self.status.broker_ok:
            try:
                self.consumer.list_topics(self.topics[0], timeout=1)
                self.status.broker_ok = True
            except KafkaException:
                pass
        if self.status.broker_ok:
            if not self.pending:
                self._commit()  # commit markers read after the last batch: nothing is left behind
            self.status.lag = self._lag()
        if now - self._last_write >= PROBE_IDLE_S:
            self._last_write = now
            self._probe_clickhouse()

    def _lag(self) -> int:
        """Messages on this sink's partitions not yet in ClickHouse (from the watermarks last fetched)."""
        total = 0
        try:
            assignment = self.consumer.assignment()
            for tp in assignment:
                low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:
                    continue
                total += max(0, high - max(self.committed.get((tp.topic, tp.partition), low), low))
        except KafkaException:
            return -1
        return total

    def _probe_clickhouse(self) -> None:
        try:
            self.clickhouse.query("SELECT 1 AS ok")
            self.status.clickhouse_ok = True
        except Exception as exc:  # noqa: BLE001 - only readiness depends on it; inserts retry on their own
            self.status.clickhouse_ok = False
            self.status.last_error = f"{type(exc).__name__}: {exc}"[:500]
            self.clickhouse.drop()


def run(settings: Settings, from_beginning: bool = False) -> int:
    """``stockflow sink``: serve until SIGTERM or SIGINT; the exit code (0: stopped, 1: failed)."""
    logging.basicConfig(level=LOG_LEVELS[settings.log_level],
                        format="[%(asctime)s] [%(process)d] %(levelname)s %(name)s: %(message)s")  # fmt: skip
    # On a box it shares with the workers, decisions come first: the dashboards may trail by
    # seconds at a peak and catch up after it, an order may not wait for a dashboard.
    lower_priority(settings.sink_niceness)
    sink = ClickHouseSink(settings, from_beginning=from_beginning)

    def stop(signum: int, frame: FrameType | None) -> None:
        sink.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    views = SinkViews(settings, sink.status, sink.clickhouse)
    try:
        views.start()
    except OSError as exc:
        log.error("cannot serve the sink's views on %s:%d (STOCKFLOW_SINK_PORT): %s", settings.web_host,
                  settings.sink_port, exc)  # fmt: skip
        return 1
    try:
        sink.run()
    except (ClickHouseFolderBusy, PartitionCountMismatch) as exc:  # set-up matters, said in one line
        log.error("%s", exc)
        return 1
    except Exception:
        log.exception("the ClickHouse sink stopped on an error that is neither an outage nor a row: "
                      "fix it and start it again; its offsets are at the last batch ClickHouse took")  # fmt: skip
        return 1
    finally:
        views.stop()
    return 0
