"""The engine: consume a batch, apply it through the processors, commit it as one Kafka transaction.

Modelled on Kafka Streams' exactly-once (v2) and quix-streams' checkpoints, on confluent-kafka:

- one consumer (read_committed, the ``range`` assignor so partition ``p`` of every input lands on
  the same worker) and one transactional producer per worker;
- a batch is every event that arrives within ``STOCKFLOW_BATCH_WINDOW_MS`` of the loop asking for it
  (fewer only when ``STOCKFLOW_BATCH_MAX_EVENTS`` come sooner): the window is waited out even when
  events are already there, which spaces transactions out (taking what is there at once was measured:
  more transactions, a worse tail); due timers and periodic flushes run in it too;
- its outputs, its dead letters, one changelog record per changed key, and the input offsets
  (``send_offsets_to_transaction`` with the group metadata, so a worker that lost its partitions
  is fenced) commit atomically; only then are the changes written to the local RocksDB folders;
- an error in a handler aborts the batch; its messages are then applied one per transaction, so a
  message that fails again is dead-lettered alone (``processing_error``) and the rest go through;
  a transient error (the broker) never dead-letters anything: the batch is simply tried again.

``STOCKFLOW_PROCESSING_GUARANTEE=at_least_once`` keeps the same order without transactions
(outputs and changelog flushed, then offsets committed, then RocksDB written): a crash then replays
the batch and its outputs may repeat, which every consumer tolerates by event id.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streams.contract.codec import Codec, DecodeError
from streams.contract.keys import partition_for
from streams.contract.reasons import Reason
from streams.contract.records import DeadLetter
from streams.contract.schema_registry import SchemaRegistryUnavailable
from streams.contract.topics import ALL_TOPICS, DEADLETTERS, LARGEST_DEAD_LETTER, PRODUCER_MAX_MESSAGE_BYTES, TopicSpec
from streams.engine.changelog import changelog_topic, ensure_changelogs, restore
from streams.engine.clock import Clock
from streams.engine.deadletter import dead_letter
from streams.engine.processor import Context, Output, Processor, check_wiring, no_timers
from streams.engine.state import DueOf, PartitionStore, ReadOnlyStore, StoreSpec, StoreTransaction
from streams.engine.timers import Timers
from streams.gcpolicy import BETWEEN_BATCHES, collect_between_batches, pace_for_batches
from streams.kafkaconf import confluent_config
from streams.metrics import SIZE_BUCKETS, histogram
from streams.settings import Settings

log = logging.getLogger(__name__)
NEWEST_PER_BATCH = frozenset(t.name for t in ALL_TOPICS if t.newest_per_batch)
CLIENT_PREFIX = "stockflow-engine@"
# The header of a record the engine already applied in the batch that wrote it.
APPLIED_HEADER = "stockflow-applied"
APPLIED = [(APPLIED_HEADER, b"1")]
# While the brokers are out of reach, how often the engine asks whether they answer again.
PROBE_EVERY_S = 2.0
# A worker that owns partitions and has read nothing for this long asks whether the group's
# committed offsets can be read at all (see ``_check_group_offsets``).
OFFSETS_CHECK_AFTER_S = 10.0
END_UNKNOWN = 1 << 62  # an input partition's end not read at assignment: learnt from the next fetch
# How long a timer or flush that raised is skipped before it is tried again (a bug that depends on the
# state it reads may pass once that changes; one that does not costs a rewind this often).
QUARANTINE_S = 60.0
# A transaction left open this long (its worker dead or paused) is aborted by the broker, at its next sweep
# for such transactions (``transaction.abort.timed.out.transaction.cleanup.interval.ms``, 10 s by default).
TRANSACTION_TIMEOUT_S = 10.0
TRANSACTION_SWEEP_S = 10.0
# Timers held in memory: those due within the horizon; the rest wait in the stores' indexes and are
# loaded a step at a time as the clock moves on (the horizon is far above any step or batch).
TIMER_HORIZON_MS = 3_600_000
TIMER_STEP_MS = 60_000
# A restore that failed at an assignment (the broker out of reach mid-rebalance) is tried again after
# this many seconds, doubling up to the second figure: the worker stays up, not ready, and catches up.
RESTORE_RETRY_S = (1.0, 30.0)


@dataclass
class EngineStats:
    events: int = 0
    batches: int = 0
    commits: int = 0
    aborts: int = 0
    outputs: int = 0
    changelog_records: int = 0
    refusals: int = 0
    undecodable: int = 0
    timers_fired: int = 0
    local_events: int = 0  # records applied in the batch that wrote them (no Kafka round trip)
    local_skipped: int = 0  # the same records read back from their topic, and skipped
    applied_unpublished: int = 0  # records applied in their batch whose topic does not keep them
    superseded: int = 0  # records not published: a newer one of the batch has their key (``newest_per_batch``)
    restored_records: int = 0
    poll_s: float = 0.0
    apply_s: float = 0.0
    commit_s: float = 0.0
    cpu_s: float = 0.0  # the engine thread's own CPU time in batches (apply + commit)
    # Rebalances, for the bench's pause window: epoch ms of the last revocation (this worker stopped
    # deciding) and of the last assignment once its state was restored (deciding again).
    assignments: int = 0
    revoked_at_ms: int = 0
    assigned_at_ms: int = 0

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


@dataclass
class _Owned:
    """What this worker holds of one partition number: a store per store name, timers per processor."""

    stores: dict[str, PartitionStore]
    timers: dict[str, Timers] = field(default_factory=dict)
    flushed_ms: dict[str, int] = field(default_factory=dict)


class StateWriteFailed(BaseException):
    """A batch committed to Kafka, and writing it to the local stores then failed (a disk full, say). The
    worker stops so it restarts and catches the stores up from their changelogs: taken for the batch's
    failure, its messages would be dead-lettered though their effects are already committed. Not an
    ``Exception``, so no handler of a batch's failures catches it on its way out of the loop."""


class _HousekeepingFailed(Exception):
    """A timer or a periodic flush raised: no message of the batch is to blame. ``what``: the processor,
    the partition and the timer's key (empty for a flush), quarantined until the worker restarts."""

    def __init__(self, what: tuple[str, int, bytes]) -> None:
        super().__init__(what)
        self.what = what


class _MessageRef:
    """A confluent-kafka message seen through the attributes ``dead_letter`` reads."""

    def __init__(self, msg: Any) -> None:
        self.topic, self.partition, self.offset = msg.topic(), msg.partition(), msg.offset()
        self.key, self.value = msg.key(), msg.value()


class _LocalMessage:
    """A record applied in the batch that wrote it, as a processor sees its message (no offset yet).
    Its bytes are encoded only if asked for (a refusal dead-letters them)."""

    def __init__(self, topic: str, partition: int, key: bytes | None, encode: Callable[[], bytes]) -> None:
        self._topic, self._partition, self._key, self._encode = topic, partition, key, encode

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return -1

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._encode()

    def error(self) -> None:
        return None


def engine_group(settings: Settings) -> str:
    """The consumer group of every worker's engine (its committed offsets are the pipeline's position)."""
    return f"{settings.app_id}.engine"


def newest_per_batch(outputs: list[Output]) -> list[Output]:
    """``outputs`` without the records a later one of the batch supersedes on a ``newest_per_batch``
    topic. A key's records all come from one context, in the order it emitted them."""
    newest: dict[tuple[str, bytes | None], int] = {}
    for i, out in enumerate(outputs):
        if out.topic in NEWEST_PER_BATCH:
            newest[(out.topic, out.key)] = i
    if not newest:
        return outputs
    return [out for i, out in enumerate(outputs)
            if out.topic not in NEWEST_PER_BATCH or newest[(out.topic, out.key)] == i]  # fmt: skip


def transactional_id(settings: Settings, slot: int) -> str:
    """The engine's transactional id: host and slot make it unique among live workers and the same for
    the process that replaces one after a crash, whose first transaction fences the dead one's."""
    return f"{settings.app_id}.engine.{socket.gethostname()}.{slot}"


def group_instance_id(settings: Settings, role: str) -> str:
    """A worker's static name in its ``role``'s group (``engine``, ``shell``): its host and web address,
    unique among live workers and the same for the process that replaces one with the same settings.
    A worker started with another address is another member (the shell's assignor carries the address)."""
    return f"{settings.app_id}.{role}.{socket.gethostname()}:{settings.web_port}"


def claim_slot(directory: Path, limit: int = 64) -> tuple[int, IO[bytes]]:
    """The lowest worker slot no live process on this host holds (an flock, released by death).

    The slot names the worker's state folders and its transactional id: a worker restarted after
    ``kill -9`` takes the same slot, so its first transaction fences the dead one's at once instead
    of waiting for the transaction timeout, and two workers on one host never share RocksDB folders.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for slot in range(limit):
        handle = open(directory / f"slot-{slot}.lock", "ab")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return slot, handle
    raise RuntimeError(f"all {limit} worker slots under {directory} are taken")


class _Batch:
    """Contexts of one batch, per (processor, partition), with their store transactions."""

    def __init__(self, engine: Engine, now_ms: int) -> None:
        self.engine = engine
        self.now_ms = now_ms
        self.contexts: dict[tuple[str, int], Context] = {}
        self.scanned: dict[int, int] = {}  # id(context) -> outputs already looked at for local delivery
        self.offsets: dict[tuple[str, int], int] = {}
        self.fired: list[tuple[str, int, bytes]] = []  # timers (processor, partition, key) and flushes (key b"")
        self.read_past: list[tuple[str, int]] = []  # gated partitions this batch read to their backlog's end
        self.gated: dict[tuple[str, int], int] = {}  # gated partitions it published to: their newest offset + 1
        self.stores: dict[tuple[str, int], StoreTransaction[Any]] = {}
        # What the processors scheduled, per (timer store, partition): the store's timer index takes it
        # at the commit, with no value parsed again.
        self.scheduled: dict[tuple[str, int], dict[bytes, int]] = {}
        self.testing = False  # a batch of no message that runs one suspect housekeeping item alone
        self.flushed: list[tuple[_Owned, str]] = []  # (partition, processor) flushes: noted as done once committed
        self.suspect: tuple[str, int, bytes] | None = None  # the one it ran

    def context(self, proc: Processor, partition: int) -> Context:
        ctx = self.contexts.get((proc.name, partition))
        if ctx is None:
            owned = self.engine.owned[partition]
            stores = {}
            for spec in proc.stores:
                stores[spec.name] = self._txn(spec, owned, partition)
            reads = {spec.name: ReadOnlyStore(self._txn(spec, owned, partition)) for spec in proc.reads}
            timers = owned.timers.get(proc.name)
            schedule = no_timers
            if timers is not None:
                noted = self.scheduled.setdefault((proc.timer_store, partition), {})

                def schedule(key: bytes, due_ms: int, timers: Timers = timers, noted: dict[bytes, int] = noted) -> None:
                    timers.set(key, due_ms)
                    noted[key] = due_ms

            ctx = Context(partition, self.now_ms, stores, schedule, reads)
            self.contexts[(proc.name, partition)] = ctx
        return ctx

    def _txn(self, spec: StoreSpec[Any], owned: _Owned, partition: int) -> StoreTransaction[Any]:
        """The batch's one transaction on a store partition, shared by its owner and its readers."""
        txn = self.stores.get((spec.name, partition))
        if txn is None:
            txn = self.stores[(spec.name, partition)] = StoreTransaction(owned.stores[spec.name], spec.serde)
        return txn


class Engine:
    """Runs processors on the broker. ``run`` blocks until ``stop`` is set (in its own thread)."""

    def __init__(self, settings: Settings, codec: Codec, clock: Clock, processors: list[Processor],
                 group_id: str | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.codec = codec
        self.clock = clock
        check_wiring(processors)
        self.processors = processors
        self.group_id = group_id or engine_group(settings)
        self.exactly_once = settings.processing_guarantee == "exactly_once"
        self.by_topic: dict[str, tuple[Processor, TopicSpec]] = {
            settings.topic(spec.name): (proc, spec) for proc in processors for spec in proc.inputs
        }
        self.readers: dict[str, tuple[Processor, TopicSpec]] = {
            spec.name: (proc, spec) for proc in processors for spec in proc.inputs
        }
        self.store_specs = {spec.name: spec for proc in processors for spec in proc.stores}
        # The processor whose timers each timer store's index keeps.
        self.timed_by = {proc.timer_store: proc for proc in processors if proc.timer_store}
        self.owned: dict[int, _Owned] = {}
        self._open: dict[tuple[str, int], PartitionStore] = {}
        self.stats = EngineStats()
        # For /metrics (streams.engine.metrics reads them on scrape): per topic and reason, and the
        # per-batch distributions; each is touched once per record or batch, never a metric call per event.
        self.records_in: Counter[str] = Counter()
        self.records_out: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.commit_seconds = histogram("engine_commit_seconds", "Time to commit one batch (its transaction)")
        self.batch_events = histogram("engine_batch_events", "Input records per committed batch", buckets=SIZE_BUCKETS)
        self.ready = threading.Event()
        self._careful: dict[tuple[str, int], int] = {}
        self._rewinds = 0  # rewinds so far: a one-message-at-a-time replay stops at one and reads again
        self._in_transaction = False
        # Timers (processor, partition, key) and flushes (key b"") that raised: skipped until a restart, so
        # one broken key can neither stall the partition nor be blamed on the messages read with it.
        self._quarantined: dict[tuple[str, int, bytes], float] = {}  # -> monotonic time it is tried again
        # Timers and flushes that ran in a batch whose commit failed: each runs alone in a batch of its own
        # (no message, nothing else), so one failing again is quarantined and never judged with a message,
        # while everything else goes on as usual. Cleared as each passes or fails alone, or is no longer due.
        self._suspects: set[tuple[str, int, bytes]] = set()
        self._said_unfenced = False  # logged once: a brand-new group's timers go unfenced until it commits
        # Input partitions (topic, partition) -> where they ended at the last assignment. Until the consumer
        # has read past that, records for them are published, never applied in the batch that wrote them:
        # what a previous owner sent there (a hot SKU's syncs, in order) must be applied first.
        self._reading_to: dict[tuple[str, int], int] = {}
        # Partitions assigned whose state could not be restored: paused, not owned, tried again from the
        # loop at ``_restore_at``. An exception out of the rebalance callback would end the process, and a
        # restarted worker would meet the same outage in its first assignment.
        self._unrestored: set[int] = set()
        self._restore_at = 0.0
        self._restore_wait = RESTORE_RETRY_S[0]
        self._last_error = ""
        self._slot_handle: IO[bytes] | None = None
        self.slot = -1
        self._changelog_offsets: dict[tuple[str, int], int] = {}
        self._delivery_error: KafkaError | None = None
        # Per owned input partition, where the next batch starts: the first offset read since the
        # assignment, then each committed batch's end. A failed batch is read again from here.
        self._committed: dict[tuple[str, int], int] = {}
        self._positions_sampled = 0.0
        # Records behind the high watermark per input partition, sampled by the engine thread once a
        # second for /metrics: a scrape calling into the consumer from its own thread blocked on the
        # client's group queue for the length of a rebalance.
        self.lag: dict[tuple[str, int], int] = {}
        self.unread: list[str] = []
        # For /readyz and the stall watchdog: when the loop last went round, and whether the brokers
        # are out of reach (set by the client's error callback, cleared by a successful round trip).
        self.heartbeat = time.monotonic()
        self.broker_down = False
        self._probed = 0.0
        self._last_input = 0.0  # monotonic: the last batch with input, or the last assignment
        self._offsets_checked = 0.0

    # ---- set-up ---------------------------------------------------------------------------------------
    def _state_dir(self) -> Path:
        return self.settings.home_dir / "state" / self.settings.app_id

    def _kafka_common(self) -> dict[str, Any]:
        # The client id carries this worker's HTTP address: a worker asked for a key it does not own
        # finds the owner's address in the group's membership (``owner_address``).
        # librdkafka's own log lines go through Python logging (not straight to stderr), so the
        # worker's repeat filter folds an outage's connect failures into one line a minute.
        return {**confluent_config(self.settings), "error_cb": self._on_kafka_error,
                "log.connection.close": False, "client.id": self.client_id,
                "logger": logging.getLogger("librdkafka")}  # fmt: skip

    @property
    def client_id(self) -> str:
        return f"{CLIENT_PREFIX}{self.settings.web_host}:{self.settings.web_port}"

    def _make_consumer(self) -> Consumer:
        return Consumer({
            **self._kafka_common(),
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "range",
            **self._static_member(),
            "session.timeout.ms": int(self.settings.session_timeout_s * 1000),
            "heartbeat.interval.ms": max(int(self.settings.session_timeout_s * 100), 500),
            # A fetch answered as soon as one record is there is a broker request per round trip, all
            # the time: let the broker gather a few milliseconds' worth (a fetch still returns at once
            # when a batch's worth is there). Every millisecond of it is latency on the decision path:
            # 20 ms here and a 10 ms window gave decision p50 / p99 78-83 / 168-200 ms at 750 orders/s,
            # 5 ms and a 3 ms window 51-52 / 125-160, for a fifth more broker CPU (BENCHMARKS.md).
            "fetch.wait.max.ms": self.settings.fetch_wait_ms,
            "fetch.min.bytes": 1 << 20,
            "max.poll.interval.ms": 300_000,
        })  # fmt: skip

    def _static_member(self) -> dict[str, str]:
        # A worker restarted after a crash rejoins under its old name and gets its partitions back at
        # once; without it the group waits out the dead member's session before anyone is assigned.
        return {"group.instance.id": group_instance_id(self.settings, "engine")} \
            if self.settings.static_membership else {}  # fmt: skip

    def _make_producer(self) -> Producer:
        config: dict[str, Any] = {
            **self._kafka_common(),
            "acks": "all",
            "enable.idempotence": True,
            # Every batch ends in a flush (its commit), which sends at once whatever lingers: a long
            # linger costs no latency, and a long batch sends fewer, larger requests (the broker's
            # cost is per request and partition more than per record).
            "linger.ms": 100,
            "compression.type": "lz4",
            "batch.size": 1_000_000,
            "partitioner": "murmur2_random",  # Kafka's Java default: keys land where their state lives
            "queue.buffering.max.messages": 1_000_000,
            # A dead letter carries the refused message whole: it must leave even for the largest one.
            "message.max.bytes": PRODUCER_MAX_MESSAGE_BYTES,
        }
        if self.exactly_once:
            config["transactional.id"] = transactional_id(self.settings, self.slot)
            config["transaction.timeout.ms"] = int(TRANSACTION_TIMEOUT_S * 1000)
        return Producer(config)

    def _subscribe(self) -> None:
        self.consumer.subscribe(list(self.by_topic), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)  # fmt: skip

    def _on_kafka_error(self, error: KafkaError) -> None:
        # A broker outage reports the same error many times a second: say it once per change.
        text = f"{error.name()}: {error.str()}"
        if text != self._last_error:
            self._last_error = text
            log.warning("kafka: %s", text)
        if error.fatal():
            log.error("kafka: fatal error %s; the worker must restart", text)
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.broker_down = True

    # ---- the loop -------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        self.slot, self._slot_handle = claim_slot(self._state_dir())
        ensure_changelogs(self.settings, list(self.store_specs))
        self.producer = self._make_producer()
        if self.exactly_once:
            self.producer.init_transactions(60)
        self.consumer = self._make_consumer()
        self._subscribe()
        window_s = self.settings.batch_window_ms / 1000.0
        pace_for_batches(BETWEEN_BATCHES)
        try:
            while not stop.is_set():
                self.heartbeat = time.monotonic()
                if self.broker_down:
                    self._probe_broker()
                if self._unrestored and time.monotonic() >= self._restore_at:
                    self._take_over(sorted(self._unrestored))
                polled = time.perf_counter()
                messages = self.consumer.consume(self.settings.batch_max_events, timeout=window_s)
                self.stats.poll_s += time.perf_counter() - polled
                self._process(messages)
                collect_between_batches()
                self._sample_positions(idle=not messages)
                if messages:
                    self._last_input = time.monotonic()
                else:
                    self._check_group_offsets()
        finally:
            self.consumer.close()
            self.producer.flush(10)
            for store in self._open.values():
                store.close()
            self._open.clear()
            self.owned.clear()

    def _process(self, messages: list[Message]) -> None:
        """One poll's messages: one batch, or one message per transaction while a failed batch is replayed."""
        if self._suspects:
            self._note_starts(messages)  # a rewind by the suspect's batch reads them again
            rewinds = self._rewinds
            self._run_batch([], alone=False, testing=True)
            if self._rewinds != rewinds:
                return
        if not self._careful:
            self._run_batch(messages, alone=False)
            return
        self._note_starts(messages)
        rewinds = self._rewinds
        for msg in messages:
            self._run_batch([msg], alone=True)
            if self._rewinds != rewinds:
                return  # rewound (a commit failed): the rest is read again, never committed past this one
            self._careful_passed(msg)
        if not messages:
            self._run_batch([], alone=False)

    def _note_starts(self, messages: list[Message]) -> None:
        """Where each partition of ``messages`` starts, for the rewinds: a partition first seen after the
        message that failed would otherwise not be read again, and its messages of this poll be lost."""
        for msg in messages:
            if msg.error() is None:
                self._committed.setdefault((msg.topic() or "", msg.partition() or 0), msg.offset() or 0)

    def _probe_broker(self) -> None:
        """While the brokers are out of reach, ask for metadata every few seconds: an answer means back."""
        now = time.monotonic()
        if now - self._probed < PROBE_EVERY_S:
            return
        self._probed = now
        try:
            self.consumer.list_topics(timeout=2)
        except KafkaException:
            return
        self.broker_down = False
        self._last_error = ""
        log.warning("kafka: the brokers answer again")

    def _sample_positions(self, idle: bool) -> None:
        """Once a second: note each input partition's lag and, when nothing flows, commit positions.

        A batch commits "last message + 1"; the commit marker that follows it takes an offset too, so
        a quiet group would report a lag of one per partition forever (and a restart would fetch the
        marker again). Once a second of quiet, the consumer's position is committed instead.
        """
        now = time.monotonic()
        if now - self._positions_sampled < 1.0:
            return
        self._positions_sampled = now
        assignment = self.consumer.assignment()
        positions = self.consumer.position(assignment) if assignment else []
        lag: dict[tuple[str, int], int] = {}
        unread: list[str] = []  # partitions this worker has read nothing from since it got them
        for tp in positions:
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if high is not None and high >= 0 and tp.offset >= 0:  # else nothing fetched yet: no honest figure
                lag[(tp.topic, tp.partition)] = max(high - tp.offset, 0)
            else:
                unread.append(f"{tp.topic}[{tp.partition}]")
        self.lag, self.unread = lag, unread
        for tp in positions:  # a partition whose backlog ends in a transaction marker is read past it here
            end = self._reading_to.get((tp.topic, tp.partition))
            if end == END_UNKNOWN:
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                end = self._reading_to[(tp.topic, tp.partition)] = high if high is not None and high >= 0 else end
            if end is not None and tp.offset >= end:
                del self._reading_to[(tp.topic, tp.partition)]
        if not idle or not positions:
            return
        batch = _Batch(self, self.clock.now_ms())
        for tp in positions:
            if tp.offset >= 0 and tp.offset > self._committed.get((tp.topic, tp.partition), -1):
                batch.offsets[(tp.topic, tp.partition)] = tp.offset
        if batch.offsets:
            self._commit(batch)

    def _check_group_offsets(self) -> None:
        """Unblock a group whose committed offsets cannot be read because a transaction of this worker's
        left offsets pending on the group and was never ended.

        A read_committed consumer starts its partitions only once every committed offset is stable;
        after a broker restart mid-transaction, offsets an aborted transaction sent can stay pending
        with no open transaction left to end them (about one broker-restart run in ten, when the
        batch fails inside the outage), and the worker then owns its partitions and reads nothing,
        for ever. An aborted transaction of this worker's producer id that carries offsets for the
        group ends them: the group coordinator settles pending offsets per producer id, so the
        aborted ones are dropped and the committed offsets stay what they were.
        """
        now = time.monotonic()
        quiet_s = now - max(self._last_input, self._offsets_checked)
        if not self.exactly_once or not self.owned or self.broker_down or quiet_s < OFFSETS_CHECK_AFTER_S:
            return
        self._offsets_checked = now
        assignment = self.consumer.assignment()
        if not assignment:
            return
        try:
            committed = self.consumer.committed(assignment, timeout=5)
            unstable = [tp for tp in committed
                        if tp.error is not None and tp.error.code() == KafkaError.UNSTABLE_OFFSET_COMMIT]  # fmt: skip
        except KafkaException as exc:
            if exc.args[0].code() not in (KafkaError._TIMED_OUT, KafkaError.UNSTABLE_OFFSET_COMMIT):
                return
            unstable = assignment
        if not unstable:
            return
        log.warning("the group's committed offsets are pending on a transaction that was never ended (%d "
                    "partitions, e.g. %s[%s]); ending it with an aborted transaction", len(unstable),
                    unstable[0].topic, unstable[0].partition)  # fmt: skip
        try:
            self.producer.begin_transaction()
            self.producer.send_offsets_to_transaction([TopicPartition(unstable[0].topic, unstable[0].partition, 0)],
                                                      self.consumer.consumer_group_metadata(), 30)  # fmt: skip
            self.producer.abort_transaction(30)
        except KafkaException as exc:
            self._new_producer(exc.args[0].str())

    def _careful_passed(self, msg: Message) -> None:
        key = (msg.topic() or "", msg.partition() or 0)
        if key in self._careful and (msg.offset() or 0) >= self._careful[key]:
            del self._careful[key]

    def _run_batch(self, messages: list[Message], alone: bool, testing: bool = False) -> None:
        batch = _Batch(self, self.clock.now_ms())
        batch.testing = testing
        rewinds = self._rewinds
        started = time.perf_counter()
        cpu = time.thread_time()
        try:
            for msg in messages:
                self._apply(batch, msg)
            if not alone:  # a message replayed alone is judged alone
                self._fire_timers(batch)
                self._flush(batch)
            self.stats.apply_s += time.perf_counter() - started
            if messages:
                self.batch_events.observe(len(messages))
            # Inside the try: what fails here for good (an output its schema refuses) is the batch's
            # failure like a handler's, never a crash the worker would repeat on every restart.
            self._commit(batch)
        except SchemaRegistryUnavailable as exc:
            # Like the broker: an outage of the registry is waited out, never blamed on a message.
            log.warning("schema registry unavailable (%s); the batch is read again in a second", exc)
            self._drop_transaction(str(exc))
            self._note_starts(messages)
            self._rewind_to_committed()
            time.sleep(1.0)
            return
        except _HousekeepingFailed as exc:
            self._drop_transaction(repr(exc.__cause__))
            self._quarantine(exc.what, exc.__cause__)
            self._suspects.discard(exc.what)
            self._note_starts(messages)
            self._rewind_to_committed()
            return
        except Exception as exc:  # noqa: BLE001 - whatever a handler raises fails its batch, never the worker
            self._drop_transaction(repr(exc))
            self._batch_failed(batch, messages, alone, exc)
            return
        self.stats.cpu_s += time.thread_time() - cpu
        if self._rewinds != rewinds:
            return  # the broker aborted the commit: nothing of the batch happened
        for owned, name in batch.flushed:  # a flush that did not commit is still due
            owned.flushed_ms[name] = batch.now_ms
        if testing:
            # Passed alone; or none was due (rescheduled, or no longer wanted): if one is bad, it fails again
            # in a batch of its own kind and is suspected again.
            if batch.suspect is None:
                self._suspects.clear()
            else:
                self._suspects.discard(batch.suspect)

    def _batch_failed(self, batch: _Batch, messages: list[Message], alone: bool, exc: Exception) -> None:
        """A batch that did not commit: find what failed it, by trying its parts alone."""
        if batch.fired:
            # Failed in its commit with timers or flushes in it: any of them, or a message, may be to blame.
            if not messages and len(batch.fired) == 1:
                self._quarantine(batch.fired[0], exc)
                self._suspects.discard(batch.fired[0])
                self._rewind_to_committed()
                return
            self._suspects.update(batch.fired)
            if messages:
                log.warning("batch of %d aborted by %r; its timers and flushes each alone, its messages one at a time",
                            len(messages), exc)  # fmt: skip
                self._rewind(messages)
            else:
                self._rewind_to_committed()
            return
        if not alone and len(messages) > 1:
            log.warning("batch of %d aborted by %r; applying its messages one at a time", len(messages), exc)
            self._rewind(messages)
            return
        if not messages:
            log.exception("a timer or flush failed; its keys are rebuilt from state and tried again")
            self._reset_timers()
            return
        log.exception("message at %s[%s]@%s failed alone: dead-lettered", messages[0].topic(),
                      messages[0].partition(), messages[0].offset())  # fmt: skip
        self._dead_letter_alone(messages[0], batch.now_ms, repr(exc))
        if any(batch.scheduled.values()):
            # Its handler moved timers in memory before it failed; its state change did not stand.
            self._reset_timers()

    def _quarantine(self, what: tuple[str, int, bytes], cause: BaseException | None) -> None:
        proc, partition, key = what
        name = f"timer {key!r}" if key else "periodic flush"
        log.error("%s of %s on partition %d failed: skipped for %.0f s; the batch is read again without it", name,
                  proc, partition, QUARANTINE_S, exc_info=cause)  # fmt: skip
        self._quarantined[what] = time.monotonic() + QUARANTINE_S

    def _quarantined_now(self, what: tuple[str, int, bytes]) -> bool:
        until = self._quarantined.get(what)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self._quarantined[what]
        return False

    def _dead_letter_alone(self, msg: Message, now_ms: int, why: str) -> None:
        """Dead-letter one message that fails alone, with its bytes; cut to what a dead letter can carry only
        if they are larger (a topic allowing more than the broker's default), so it never stops the stream."""
        batch = _Batch(self, now_ms)
        self._record_offset(batch, msg)
        ref = _MessageRef(msg)
        try:
            self._commit(batch, [dead_letter(ref, "streams.engine", Reason.PROCESSING_ERROR, why, now_ms)])
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE or not isinstance(ref.value, bytes):
                raise
            self._drop_transaction(exc.args[0].str())
            size = len(ref.value)
            ref.value = ref.value[: LARGEST_DEAD_LETTER // 2]
            self._commit(batch, [dead_letter(ref, "streams.engine", Reason.PROCESSING_ERROR,
                                             f"{why} (its {size} bytes cut to {len(ref.value)})", now_ms)])  # fmt: skip

    def _drop_transaction(self, why: str) -> None:
        """A batch failed while its transaction was open: what it produced must never commit."""
        if self._in_transaction:
            self._in_transaction = False
            self._new_producer(why)

    def _record_offset(self, batch: _Batch, msg: Message) -> None:
        key, offset = (msg.topic() or "", msg.partition() or 0), msg.offset() or 0
        self._committed.setdefault(key, offset)  # a batch is committed before the next is read
        batch.offsets[key] = offset + 1
        if key in self._reading_to and offset + 1 >= self._reading_to[key]:
            batch.read_past.append(key)  # lifted once this batch commits (a rewind reads it again)

    def _apply(self, batch: _Batch, msg: Message) -> None:
        error = msg.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                self._on_kafka_error(error)
            return
        topic, partition = msg.topic() or "", msg.partition() or 0
        self._record_offset(batch, msg)
        if partition not in self.owned:
            return
        headers = cast(list[tuple[str, bytes]] | None, msg.headers())
        if headers and headers[0][0] == APPLIED_HEADER:
            self.stats.local_skipped += 1  # applied in the batch that wrote it, atomically with it
            return
        self.stats.events += 1
        self.records_in[topic] += 1
        proc, spec = self.by_topic[topic]
        ctx = batch.context(proc, partition)
        ctx.message = msg
        value = msg.value()
        try:
            event_type, record = self.codec.decode(value if isinstance(value, bytes) else b"")
        except DecodeError:
            self.stats.undecodable += 1  # the sink reads every topic and dead-letters unreadable bytes
            return
        kind = event_type.short_name
        if kind not in spec.events:
            ctx.refuse(Reason.UNEXPECTED_EVENT_TYPE, f"{kind} on {spec.name}")
            return
        key = proc.key_of(kind, record)
        if key is not None and not self._routed(ctx, msg, key, partition):
            return
        proc.handle(ctx, kind, record)
        self._apply_locally(batch, ctx)

    def _apply_locally(self, batch: _Batch, ctx: Context) -> None:
        """Apply, in this batch, what a processor just emitted for a partition this engine owns.

        An order's RESERVE for a SKU this worker holds, the pool's answer, the decision: one batch,
        one transaction, instead of a transaction and a consumer round trip per hop. The records are
        still published (with ``APPLIED_HEADER``) for everyone else, and skipped when read back: the
        state they changed committed together with them, so every later reader, this worker after a
        restart or another after a rebalance, finds it already applied. Exactly-once only.
        """
        if not self.exactly_once:
            # Without a transaction the stores' changelog records of one batch can land in part
            # before a crash; state spread over two stores by one input could then disagree.
            return
        todo = [ctx]
        while todo:
            source = todo.pop()
            start = batch.scanned.get(id(source), 0)
            batch.scanned[id(source)] = len(source.outputs)
            for out in source.outputs[start:]:
                reader = self.readers.get(out.topic)
                if reader is None or out.key is None:
                    continue
                partition = partition_for(out.key, self.settings.partitions)
                if partition not in self.owned:
                    continue
                if self._reading_to and (self.settings.topic(out.topic), partition) in self._reading_to:
                    out.partition = partition  # published; the gate stays until it is read back
                    continue
                proc, spec = reader
                if out.event_type not in spec.events:
                    continue  # published as is; its reader refuses it when it reads it
                out.partition, out.local = partition, True
                # Some records exist only to carry a change to their reader (hold commands): applied
                # here, their effect commits in the reader's changelog and their answer is published,
                # so the record itself need not be.
                out.publish = spec.publish_applied
                target = batch.context(proc, partition)
                target.message = _LocalMessage(self.settings.topic(out.topic), partition, out.key,
                                               self._encoder(out))  # fmt: skip
                self.stats.local_events += 1
                proc.handle(target, out.event_type, out.record)
                todo.append(target)

    def _encoder(self, out: Output) -> Callable[[], bytes]:
        def encode() -> bytes:
            if out.value is None:
                out.value = self.codec.encode(out.event_type, out.record)
            return out.value

        return encode

    def _routed(self, ctx: Context, msg: Message, key: str, partition: int) -> bool:
        raw = msg.key()
        if not raw or (raw if isinstance(raw, bytes) else raw.encode()) != key.encode():
            ctx.refuse(Reason.KEY_MISMATCH, f"key {raw!r} but record is for {key!r}")
            return False
        owner = partition_for(key.encode(), self.settings.partitions)
        if owner != partition:
            ctx.refuse(Reason.MISROUTED_PARTITION, f"key {key!r} belongs on partition {owner}, not {partition}: "
                                              "produce with the murmur2 partitioner")  # fmt: skip
            return False
        return True

    def _fire_timers(self, batch: _Batch) -> None:
        for partition, owned in list(self.owned.items()):
            for proc in self.processors:
                timers = owned.timers.get(proc.name)
                if timers is None:
                    continue
                self._timers_ahead(owned, proc, timers, batch.now_ms,
                                   batch.scheduled.get((proc.timer_store, partition), {}))  # fmt: skip
                if not len(timers):
                    continue
                due = timers.pop_due(batch.now_ms)
                if not due:
                    continue
                ctx = batch.context(proc, partition)
                for key in due:
                    if not self._may_run(batch, (proc.name, partition, key)):
                        timers.set(key, batch.now_ms)  # a later batch
                        continue
                    if self._quarantined and self._quarantined_now((proc.name, partition, key)):
                        timers.set(key, batch.now_ms + int(QUARANTINE_S * 1000))
                        continue
                    ctx.message = None
                    self.stats.timers_fired += 1
                    batch.fired.append((proc.name, partition, key))
                    # A timer that fired is gone, from the index too, unless on_timer sets it again.
                    batch.scheduled.setdefault((proc.timer_store, partition), {})[key] = 0
                    try:
                        proc.on_timer(ctx, key)
                        self._apply_locally(batch, ctx)
                    except Exception as exc:
                        raise _HousekeepingFailed((proc.name, partition, key)) from exc

    def _may_run(self, batch: _Batch, what: tuple[str, int, bytes]) -> bool:
        """Whether a timer or flush runs in this batch: a suspect only alone in a batch testing one, and
        nothing else there; everything else anywhere else."""
        if not self._suspects:
            return True
        if not batch.testing:
            return what not in self._suspects
        if batch.suspect is not None or what not in self._suspects:
            return False
        batch.suspect = what
        return True

    def _flush(self, batch: _Batch) -> None:
        now = batch.now_ms
        for partition, owned in list(self.owned.items()):
            for proc in self.processors:
                if proc.flush_interval_ms <= 0 or now - owned.flushed_ms.get(proc.name, 0) < proc.flush_interval_ms:
                    continue
                if not self._may_run(batch, (proc.name, partition, b"")):
                    continue  # still due: a later batch
                if self._quarantined and self._quarantined_now((proc.name, partition, b"")):
                    owned.flushed_ms[proc.name] = now
                    continue
                batch.flushed.append((owned, proc.name))
                batch.fired.append((proc.name, partition, b""))
                ctx = batch.context(proc, partition)
                ctx.message = None
                try:
                    proc.flush(ctx)
                    self._apply_locally(batch, ctx)
                except Exception as exc:
                    raise _HousekeepingFailed((proc.name, partition, b"")) from exc

    # ---- commit ---------------------------------------------------------------------------------------
    def _produce(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
                 on_delivery: Any = None, headers: Any = None) -> None:  # fmt: skip
        # Positional arguments: this runs for every output and changelog record of every batch.
        # Partition -1 lets the producer's murmur2 partitioner choose.
        while True:
            try:
                where = -1 if partition is None else partition
                if headers is None:
                    self.producer.produce(topic, value, key, where, on_delivery)
                else:
                    self.producer.produce(topic, value, key, where, on_delivery, headers=headers)
                return
            except BufferError:
                self.producer.poll(0.05)  # the local queue is full: let deliveries drain it

    def _outputs(self, batch: _Batch) -> list[Output]:
        emitted = [out for ctx in batch.contexts.values() for out in ctx.outputs]
        outputs = newest_per_batch(emitted)
        self.stats.superseded += len(emitted) - len(outputs)
        return outputs

    def _produce_outputs(self, batch: _Batch, outputs: list[Output], check: Any) -> dict[str, int]:
        """Produce the batch's outputs that are published; return how many records each topic got."""
        published: dict[str, int] = {}
        for out in outputs:
            if not out.publish:
                self.stats.applied_unpublished += 1
                continue
            published[out.topic] = published.get(out.topic, 0) + 1
            value = out.value if out.value is not None else self.codec.encode(out.event_type, out.record)
            topic = self.settings.topic(out.topic)
            gated = bool(self._reading_to) and out.partition is not None and not out.local \
                and (topic, out.partition) in self._reading_to  # fmt: skip
            self._produce(topic, out.key, value, out.partition, self._gate_tracker(batch, topic) if gated else check,
                          APPLIED if out.local else None)  # fmt: skip
        return published

    def _gate_tracker(self, batch: _Batch, topic: str) -> Callable[[KafkaError | None, Message], None]:
        """Note where a record published to a gated partition lands: the gate stays until it is read back."""
        def delivered(error: KafkaError | None, msg: Message) -> None:
            if error is not None:
                self._on_output(error, msg)
                return
            key = (topic, msg.partition() or 0)
            batch.gated[key] = max(batch.gated.get(key, 0), (msg.offset() or 0) + 1)

        return delivered

    def _commit(self, batch: _Batch, dead: list[DeadLetter] | None = None) -> None:
        changes = {key: txn.changes() for key, txn in batch.stores.items() if txn}
        outputs = self._outputs(batch)
        refusals = [(msg, r) for ctx in batch.contexts.values() for msg, r in ctx.refusals]
        dead = list(dead or [])
        self._changelog_offsets.clear()  # of the last commit: a store's offset never moves back to it
        if not (changes or outputs or refusals or dead or batch.offsets):
            self._write_stores(batch, {})  # timers fired or set, nothing else: only the local index moves
            return
        started = time.perf_counter()
        self._delivery_error = None
        offsets = [TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()]
        try:
            if self.exactly_once:
                # Asked before the transaction opens: the question may wait on the group coordinator.
                fence = offsets or self._positions_to_fence()
                self.producer.begin_transaction()
                self._in_transaction = True
            # Under a transaction a failed delivery fails the commit, so outputs need no callback each;
            # without one, every delivery is checked before the offsets are committed.
            check = None if self.exactly_once else self._on_output
            published = self._produce_outputs(batch, outputs, check)
            for msg, refusal in refusals:
                dead.append(dead_letter(_MessageRef(msg), "streams.engine", refusal.reason, refusal.detail,
                                        batch.now_ms))  # fmt: skip
            for record in dead:
                value = self.codec.encode("DeadLetter", record)
                source = record["source_topic"].encode()
                self._produce(self.settings.topic(DEADLETTERS.name), source, value, None, check)
            if not self.exactly_once:
                # Without a transaction nothing ties outputs and state together: the outputs must be
                # acknowledged before the state that records them is. A crash in between then replays
                # the batch against the old state and publishes its outputs again (duplicates, which
                # every reader tolerates), never a state whose outputs were lost.
                self._flush_checked()
            self._produce_changes(changes, check)
            if self.exactly_once:
                self._finish_transaction(fence)
            else:
                self._flush_checked()
                if offsets:
                    self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                raise  # this batch's own records, every time it is tried: its failure, not the broker's
            self._in_transaction = False
            self._abort(exc)
            return
        self.producer.poll(0)
        try:
            self._committed_batch(batch, changes)
        except Exception as exc:
            raise StateWriteFailed(f"a committed batch could not be written to the local stores: {exc!r}") from exc
        self.stats.batches += 1
        self.stats.commits += 1
        self.stats.outputs += sum(published.values()) + len(dead)
        self.stats.refusals += len(dead)
        self.stats.changelog_records += sum(len(kv) for kv in changes.values())
        self.stats.commit_s += time.perf_counter() - started
        self._count_commit(published, dead, started)

    def _produce_changes(self, changes: dict[tuple[str, int], dict[bytes, bytes | None]], check: Any) -> None:
        for (store, partition), kv in changes.items():
            topic = changelog_topic(self.settings, store)
            last = len(kv) - 1
            # Offsets in one partition follow the produce order: the last record's is the batch's.
            for n, (key, raw) in enumerate(kv.items()):
                self._produce(topic, key, raw, partition, self._tracker(store, partition) if n == last else check)

    def _write_stores(self, batch: _Batch, changes: dict[tuple[str, int], dict[bytes, bytes | None]]) -> None:
        """A committed batch's changes, and the timers it set or fired, into the local folders."""
        for where in changes.keys() | {w for w, dues in batch.scheduled.items() if dues}:
            owned_store = self._open.get(where)
            if owned_store is not None:
                offset = self._changelog_offsets.get(where, -1)
                owned_store.apply(changes.get(where, {}), offset, dues=batch.scheduled.get(where, {}))

    def _committed_batch(self, batch: _Batch, changes: dict[tuple[str, int], dict[bytes, bytes | None]]) -> None:
        """The batch committed: its changes go to the local folders, its positions and gates move on.

        A gated partition stays gated past what this batch published to it, and opens once the batch read
        it to its end."""
        self._write_stores(batch, changes)
        self._committed.update(batch.offsets)
        self.broker_down = False
        for key, end in batch.gated.items():
            self._reading_to[key] = max(self._reading_to.get(key, 0), end)
        for key in batch.read_past:
            if key in self._reading_to and batch.offsets.get(key, 0) >= self._reading_to[key]:
                del self._reading_to[key]

    def _count_commit(self, published: dict[str, int], dead: list[DeadLetter], started: float) -> None:
        self.commit_seconds.observe(time.perf_counter() - started)
        self.records_out.update(published)
        self.refused.update(str(record["reason"]) for record in dead)

    def open_stores(self) -> list[tuple[tuple[str, int], PartitionStore]]:
        """The partition stores held now, by (store, partition) (a copy: a rebalance may change them)."""
        return list(self._open.items())

    def _flush_checked(self) -> None:
        """Wait until everything produced is acknowledged; raise if any of it failed."""
        remaining = self.producer.flush(60)
        if self._delivery_error is not None:
            raise KafkaException(self._delivery_error)
        if remaining:
            raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT, f"{remaining} records not acknowledged"))

    def _positions_to_fence(self) -> list[TopicPartition]:
        """The input positions as they stand, for a transaction that read nothing; right after an assignment,
        before anything is read, the group's own committed offsets (asked while none is known)."""
        if not self._committed:
            assignment = self.consumer.assignment()
            for tp in self.consumer.committed(assignment, timeout=10) if assignment else []:
                if tp.error is None and tp.offset >= 0:
                    self._committed[(tp.topic, tp.partition)] = tp.offset
            if not self._committed and self.owned and not self._said_unfenced:
                self._said_unfenced = True
                log.warning("a transaction of timers alone goes unfenced: the group has no committed offset for "
                            "the partitions this worker owns")  # fmt: skip
        return [TopicPartition(t, p, o) for (t, p), o in self._committed.items()]

    def _finish_transaction(self, fence: list[TopicPartition]) -> None:
        """Send the batch's input offsets (or the positions that fence it) into its transaction and commit it.

        The offsets go while the records may still linger here: flushing first was tried, and after a broker
        outage it left send_offsets_to_transaction waiting past its timeout (librdkafka #5456) in one run of
        three. A worker that stalls between the two is covered where its partitions land instead: the new
        owner waits for the group's offsets to be stable before it restores (``_wait_for_open_transactions``).
        """
        # Always with the group's metadata, even for a batch of timers and flushes alone: that is what fences a
        # worker that lost its partitions while paused (their positions as they stand, a no-op for the group's
        # offsets).
        if fence:
            self.producer.send_offsets_to_transaction(fence, self.consumer.consumer_group_metadata(), 30)
        # Flushed first so every delivery report (the changelog offsets) is served in this thread.
        self.producer.flush(60)
        if self._delivery_error is not None:
            raise KafkaException(self._delivery_error)
        self._commit_transaction()
        self._in_transaction = False

    def _commit_transaction(self) -> None:
        for attempt in range(5):
            try:
                self.producer.commit_transaction(60)
                return
            except KafkaException as exc:
                if not exc.args[0].retriable() or attempt == 4:  # noqa: PLR2004 - the last of the range(5) above
                    raise
                log.warning("commit retried: %s", exc.args[0].str())

    def _abort(self, exc: KafkaException) -> None:
        error: KafkaError = exc.args[0]
        self.stats.aborts += 1
        log.warning("batch not committed (%s); it is read again", error.str())
        if self.exactly_once:
            # A fresh producer rather than abort_transaction(): after an outage librdkafka's own
            # recovery (an epoch bump) can leave send_offsets_to_transaction() waiting for ever
            # (librdkafka #5456). Initialising a new one with the same transactional id aborts
            # what the old one left open, on the broker, in one step.
            self._new_producer(error.str())
        self._rewind_to_committed()

    def _new_producer(self, why: str) -> None:
        """Replace a transactional producer that hit a fatal error (after a broker outage, an invalid
        transaction state). The new one takes the same transactional id: initialising it aborts
        whatever the old one left open, and the batch is read again from the committed offsets."""
        log.warning("transaction failed (%s): starting a new transactional producer", why)
        old, self.producer = self.producer, self._make_producer()
        with contextlib.suppress(KafkaException, RuntimeError):
            old.purge()  # its unsent records belong to the aborted transaction
            old.flush(0)
        while True:
            self.heartbeat = time.monotonic()
            try:
                self.producer.init_transactions(30)
                return
            except KafkaException as exc:
                if exc.args[0].fatal() and not exc.args[0].retriable():
                    raise
                log.warning("cannot start the new transactional producer yet (%s); trying again", exc.args[0].str())
                time.sleep(1.0)

    def _on_output(self, error: KafkaError | None, msg: Message) -> None:
        if error is not None and self._delivery_error is None:
            self._delivery_error = error

    def _tracker(self, store: str, partition: int) -> Any:
        def delivered(error: KafkaError | None, msg: Message) -> None:
            if error is not None:
                if self._delivery_error is None:
                    self._delivery_error = error
                return
            offset = msg.offset() or 0
            if offset > self._changelog_offsets.get((store, partition), -1):
                self._changelog_offsets[(store, partition)] = offset

        return delivered

    # ---- recovery -------------------------------------------------------------------------------------
    def _rewind(self, messages: list[Message]) -> None:
        """Read a failed batch again from its first message per partition, one message per commit."""
        first: dict[tuple[str, int], int] = {}
        for msg in messages:
            if msg.error() is not None:
                continue
            key = (msg.topic() or "", msg.partition() or 0)
            first.setdefault(key, msg.offset() or 0)
            self._careful[key] = max(self._careful.get(key, 0), msg.offset() or 0)
        for (topic, partition), offset in first.items():
            self.consumer.seek(TopicPartition(topic, partition, offset))
        self._rewinds += 1
        self._reset_timers()

    def _rewind_to_committed(self) -> None:
        """Read again from where the uncommitted batch started, per partition this worker read from.

        The positions are this worker's own (every batch commits before the next is read), so the
        rewind needs no broker: asking the group coordinator for them during an outage could block the
        engine thread for as long as the coordinator stays away.
        """
        owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        for (topic, partition), offset in self._committed.items():
            if (topic, partition) in owned:
                self.consumer.seek(TopicPartition(topic, partition, offset))
        self._rewinds += 1
        self._reset_timers()

    def _reset_timers(self) -> None:
        """After a batch that did not commit: timers rebuilt from committed state, and each processor's memory
        of its partitions (say, which stock levels it sent) as after a fresh assignment, so nothing the lost
        batch did in memory stands."""
        now_ms = self.clock.now_ms()
        for partition in list(self.owned):
            self.heartbeat = time.monotonic()  # a large store's scans are work, not a stall
            self._rebuild_timers(partition)
            for proc in self.processors:
                proc.on_revoke(partition)
            self._assign_processors(partition, now_ms)

    def _assign_processors(self, partition: int, now_ms: int) -> None:
        stores = self.owned[partition].stores
        for proc in self.processors:
            # Read-only: what on_assign reads is committed state; it marks, it does not emit.
            txns = {spec.name: StoreTransaction(stores[spec.name], spec.serde) for spec in proc.stores}
            timers = self.owned[partition].timers.get(proc.name)
            proc.on_assign(Context(partition, now_ms, txns, timers.set if timers else no_timers))

    def _due_of(self, store: str) -> DueOf | None:
        """How a timer store's index reads a key's due time from its stored value (a restore, a first build)."""
        proc = self.timed_by.get(store)
        if proc is None:
            return None
        loads = self.store_specs[store].serde.loads

        def due_of(key: bytes, raw: bytes) -> int | None:
            # Parsed only where a timer can be: a large store restores and indexes faster.
            return proc.due_ms(key, loads(raw)) if proc.may_have_timer(key) else None

        return due_of

    def _rebuild_timers(self, partition: int) -> None:
        """The timers due within the horizon, from the timer stores' indexes (built first where missing)."""
        owned = self.owned[partition]
        until = self.clock.now_ms() + TIMER_HORIZON_MS
        for proc in self.processors:
            if not proc.timer_store:
                continue
            store = owned.stores[proc.timer_store]
            if parsed := store.ensure_due_index():
                log.info("%s[%d]: timer index built from %d stored keys", proc.timer_store, partition, parsed)
            timers = Timers()
            timers.load(store.due_between(0, until), until)
            owned.timers[proc.name] = timers

    def _timers_ahead(self, owned: _Owned, proc: Processor, timers: Timers, now_ms: int,
                      pending: dict[bytes, int]) -> None:  # fmt: skip
        """Load the timers coming within the horizon, a step at a time (a range read of the index).

        ``pending``: what the batch in hand set, which reaches the index only when it commits: the range
        just read misses it (a timer due beyond the old window would be lost), or holds the time it replaces."""
        if timers.until_ms is None or now_ms + TIMER_HORIZON_MS <= timers.until_ms:
            return
        until = now_ms + TIMER_HORIZON_MS + TIMER_STEP_MS
        timers.load(owned.stores[proc.timer_store].due_between(timers.until_ms, until), until)
        for key, due_ms in pending.items():
            timers.set(key, due_ms)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = sorted({tp.partition for tp in partitions} - set(self.owned))
        if not numbers:
            self.stats.assignments, self.stats.assigned_at_ms = self.stats.assignments + 1, int(time.time() * 1000)
            if not self._unrestored:
                self.ready.set()
            return
        consumer.assign(partitions)  # here, not after the callback: partitions not restored are paused in it
        self._take_over(numbers)

    def _take_over(self, numbers: list[int]) -> None:
        """Restore the state of newly assigned partitions and start owning them; if the restore fails, they
        stay paused and unowned until the loop tries again (``RESTORE_RETRY_S``)."""
        started = time.perf_counter()
        wanted: dict[tuple[str, int], PartitionStore] = {}
        opened: list[PartitionStore] = []
        for partition in numbers:
            for name in self.store_specs:
                store = self._open.get((name, partition))
                if store is None:
                    store = PartitionStore(self._state_dir() / f"slot-{self.slot}" / name / str(partition),
                                           self._due_of(name))  # fmt: skip
                    opened.append(store)
                wanted[(changelog_topic(self.settings, name), partition)] = store
        self._wait_for_open_transactions(numbers)
        try:
            restored, applied = restore(wanted, self.settings)
        except (KafkaException, RuntimeError, TimeoutError, OSError) as exc:
            # Closed now, not whenever they are collected: the retry opens the same folders, and RocksDB refuses
            # a folder this process still holds (a traceback kept by a log handler is enough to hold it).
            for store in opened:
                with contextlib.suppress(Exception):
                    store.close()
            self._restore_later(numbers, exc)
            return
        self.stats.restored_records += applied
        now_ms = self.clock.now_ms()
        for partition in numbers:
            stores = {name: restored[(changelog_topic(self.settings, name), partition)] for name in self.store_specs}
            for name, store in stores.items():
                self._open[(name, partition)] = store
            self.owned[partition] = _Owned(stores)
            self._rebuild_timers(partition)
            self._assign_processors(partition, now_ms)
        self._note_backlogs(numbers)
        if self._unrestored:
            self._unrestored.difference_update(numbers)
            self.consumer.resume(self._input_partitions(numbers))
            log.warning("partitions %s restored after a failed attempt; reading them again", numbers)
        self._restore_wait = RESTORE_RETRY_S[0]
        self._last_input = time.monotonic()
        log.info("assigned partitions %s: %d changelog records restored in %.2fs", numbers, applied,
                 time.perf_counter() - started)  # fmt: skip
        self.stats.assignments, self.stats.assigned_at_ms = self.stats.assignments + 1, int(time.time() * 1000)
        if not self._unrestored:
            self.ready.set()

    def _wait_for_open_transactions(self, numbers: list[int]) -> None:
        """Before a restore: let a previous owner's transaction on these partitions end.

        A worker paused past its session may have had the group take its offsets into a transaction whose
        records it had not sent yet; thawed before the transaction timed out, it sends them and commits. The
        group's offsets stay pending until that transaction ends, and a read_committed consumer asking for them
        waits, so the restore that follows reads what it committed. Bounded by the transaction timeout and the
        broker's sweep for timed-out transactions: past both it has aborted it (offsets pending with no
        transaction left are ended by ``_check_group_offsets`` once the partitions are owned)."""
        # Every partition of the inputs: a batch read from one may have written the changelog of another (a
        # record applied where it landed), which another worker may be taking over now.
        partitions = self._input_partitions(list(range(self.settings.partitions)))
        if not self.exactly_once or not partitions:
            return
        try:
            self.consumer.committed(partitions, timeout=TRANSACTION_TIMEOUT_S + TRANSACTION_SWEEP_S + 2)
        except KafkaException as exc:
            log.warning("offsets of partitions %s not read before their restore (%s)", numbers, exc.args[0].str())

    def _restore_later(self, numbers: list[int], exc: BaseException) -> None:
        if not self._unrestored:
            log.warning("restoring partitions %s failed (%s); they are paused and tried again every %.0f-%.0fs",
                        numbers, exc, *RESTORE_RETRY_S)  # fmt: skip
        self.consumer.pause(self._input_partitions(numbers))
        self._unrestored.update(numbers)
        self._restore_at = time.monotonic() + self._restore_wait
        self._restore_wait = min(self._restore_wait * 2, RESTORE_RETRY_S[1])
        self.ready.clear()

    def _input_partitions(self, numbers: list[int]) -> list[TopicPartition]:
        return [TopicPartition(topic, p) for topic in self.by_topic for p in numbers]

    def _note_backlogs(self, numbers: list[int]) -> None:
        """After an assignment, where each newly owned input partition ends now: records a previous owner
        of a partition (this one's or a sender's) published there come before anything applied in place."""
        reachable = True  # one failed query and the rest are not asked: an assignment must not wait minutes
        for topic in self.by_topic:
            for partition in numbers:
                high = END_UNKNOWN
                if reachable:
                    self.heartbeat = time.monotonic()
                    try:
                        _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
                    except KafkaException as exc:
                        reachable = False
                        log.warning("end offsets not read (%s); records for the partitions assigned go through "
                                    "Kafka until each is read to where it ends", exc.args[0].str())  # fmt: skip
                if high > self._committed.get((topic, partition), 0):
                    self._reading_to[(topic, partition)] = high

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Every batch is committed before the next poll, so nothing is in flight here. The RocksDB
        # folders stay open: if a partition comes back, only what others changed is restored.
        self.stats.revoked_at_ms = int(time.time() * 1000)
        for tp in partitions:  # another worker moves them on: coming back, they start from the group's offsets
            self._committed.pop((tp.topic, tp.partition), None)
            self._careful.pop((tp.topic, tp.partition), None)  # replayed one at a time by their next owner
            self._reading_to.pop((tp.topic, tp.partition), None)
        self._unrestored.difference_update(tp.partition for tp in partitions)
        for partition in sorted({tp.partition for tp in partitions}):
            owned = self.owned.pop(partition, None)
            if owned is not None:
                for store in owned.stores.values():
                    store.forget_recent()
                for proc in self.processors:
                    proc.on_revoke(partition)

    # ---- reads for HTTP views -------------------------------------------------------------------------
    def read(self, store: str, key: bytes, partition_key: str | None = None) -> Any | None:
        """A committed value of ``store`` on this worker (None: not here or not owned). ``partition_key``:
        the key the partition is chosen by, when the store key only starts with it."""
        partition = partition_for(partition_key.encode() if partition_key else key, self.settings.partitions)
        if partition not in self.owned:
            return None
        raw = self.owned[partition].stores[store].get(key)
        return self.store_specs[store].serde.loads(raw) if raw is not None else None

    def owns(self, partition_key: str) -> bool:
        return partition_for(partition_key.encode(), self.settings.partitions) in self.owned

    def owner_address(self, partition_key: str, timeout_s: float = 10.0) -> str | None:
        """``host:port`` of the worker whose engine owns ``partition_key`` now (None: nobody yet)."""
        from confluent_kafka.admin import AdminClient

        partition = partition_for(partition_key.encode(), self.settings.partitions)
        admin = AdminClient(confluent_config(self.settings))
        future = admin.describe_consumer_groups([self.group_id], request_timeout=timeout_s)[self.group_id]
        for member in future.result(timeout=timeout_s).members:
            assigned = member.assignment.topic_partitions if member.assignment else []
            if any(tp.partition == partition for tp in assigned) and member.client_id.startswith(CLIENT_PREFIX):
                return str(member.client_id.removeprefix(CLIENT_PREFIX))
        return None
