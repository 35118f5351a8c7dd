"""The engine's recovery paths, driven with stand-ins for the Kafka clients: which offsets a transaction
commits after a failure, what is replayed, what is dead-lettered. No broker: these are the control flow
around a commit that fails at a chosen moment, which a live broker cannot be made to do on cue (the crash
and outage tests on the real broker are in ``tests/integration``)."""
# ruff: noqa: SLF001 - these tests drive the engine's loop from inside, one poll at a time

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from loadtest import events as ev
from streams.contract.codec import codec_for
from streams.contract.topics import STOCK_ADJUSTMENTS, STOCK_LEVELS, STOCK_RETURNS
from streams.engine import loop
from streams.engine.clock import Clock
from streams.engine.loop import Engine, _Owned
from streams.engine.processor import Context, Processor
from streams.engine.state import PartitionStore, StoreSpec
from streams.engine.timers import Timers
from streams.settings import Settings

TOPIC = STOCK_ADJUSTMENTS.name


class Message:
    def __init__(self, offset: int, sku: str, value: bytes, topic: str = TOPIC) -> None:
        self._offset, self._sku, self._value, self._topic = offset, sku, value, topic

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._sku.encode()

    def value(self) -> bytes:
        return self._value

    def error(self) -> None:
        return None

    def headers(self) -> None:
        return None


@dataclass
class Broker:
    """What the stand-in producers committed, transaction by transaction, and which commits fail."""

    committed: list[dict[str, Any]] = field(default_factory=list)
    fail_commits: int = 0
    next_offset: int = 20  # where records the stand-in producer delivers land (one offset space: enough here)


class Producer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.txn: dict[str, Any] | None = None
        self.pending: list[tuple[Any, _Delivered]] = []

    def init_transactions(self, timeout: float) -> None:
        pass

    def begin_transaction(self) -> None:
        self.txn = {"records": [], "offsets": None}

    def produce(self, topic: str, value: Any, key: Any, partition: int, on_delivery: Any = None,
                headers: Any = None) -> None:  # fmt: skip
        assert self.txn is not None
        self.txn["records"].append((topic, key))
        if on_delivery is not None:
            self.broker.next_offset += 1
            self.pending.append((on_delivery, _Delivered(max(partition, 0), self.broker.next_offset - 1)))

    def send_offsets_to_transaction(self, offsets: list[TopicPartition], metadata: Any, timeout: float) -> None:
        assert self.txn is not None
        self.txn["offsets"] = {(tp.topic, tp.partition): tp.offset for tp in offsets}

    def flush(self, timeout: float = 0) -> int:
        for callback, delivered in self.pending:
            callback(None, delivered)
        self.pending.clear()
        return 0

    def commit_transaction(self, timeout: float) -> None:
        if self.broker.fail_commits:
            self.broker.fail_commits -= 1
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "commit failed (the test's)", retriable=False))
        assert self.txn is not None
        self.broker.committed.append(self.txn)
        self.txn = None

    def poll(self, timeout: float) -> int:
        return 0

    def purge(self) -> None:
        self.txn = None

    def abort_transaction(self, timeout: float) -> None:
        self.txn = None


@dataclass
class _Delivered:
    _partition: int
    _offset: int

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


class Consumer:
    def __init__(self, end: int = 0) -> None:
        self.seeks: list[int] = []
        self.seeked: list[tuple[str, int]] = []
        self.end = end
        self.queried = 0
        self.assigned: list[tuple[str, int]] = []
        self.paused: set[tuple[str, int]] = set()
        self.group_offsets: dict[tuple[str, int], int] = {}

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float = 0, cached: bool = False) -> tuple[int, int]:
        self.queried += 1
        if self.end < 0:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "no answer (the test's)"))
        return 0, self.end

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, 0), TopicPartition(STOCK_RETURNS.name, 0)]

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append(tp.offset)
        self.seeked.append((tp.topic, tp.offset))

    def consumer_group_metadata(self) -> str:
        return "group"

    def committed(self, partitions: list[TopicPartition], timeout: float = 0) -> list[TopicPartition]:
        """The group's committed offsets: none unless a test gives some."""
        return [TopicPartition(tp.topic, tp.partition, self.group_offsets.get((tp.topic, tp.partition), -1001))
                for tp in partitions]  # fmt: skip

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = [(tp.topic, tp.partition) for tp in partitions]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused.update((tp.topic, tp.partition) for tp in partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused.difference_update((tp.topic, tp.partition) for tp in partitions)


@dataclass
class Stock(Processor):
    """Counts adjustments per SKU; a SKU named ``bad`` fails; a timer on ``due`` can be made to fail."""

    timer_fails: bool = False
    assigned: int = 0

    def handle(self, ctx: Context, event_type: str, record: dict[str, Any]) -> None:
        if record["sku"] == "bad":
            raise ValueError("a handler's bug")
        if record["sku"] == "enc":
            ctx.emit(STOCK_LEVELS, "enc", "StockLevel", {"sku": "enc"})  # type: ignore[typeddict-item]
            return
        if record["sku"] == "late":  # a timer's output its schema refuses
            ctx.schedule(b"late", 1)
            return
        if record["sku"] == "fwd":  # passes one on to another SKU of the same topic, as the pool's hops do
            ctx.emit(STOCK_ADJUSTMENTS, "X", "StockAdjusted", {**record, "sku": "X", "event_id": "fwd"})
        db = ctx.store("counts")
        key = record["sku"].encode()
        db.set(key, (db.get(key) or 0) + 1)

    def key_of(self, event_type: str, record: dict[str, Any]) -> str | None:
        return str(record["sku"])

    def on_assign(self, ctx: Context) -> None:
        self.assigned += 1

    def due_ms(self, key: bytes, value: Any) -> int:
        return 1 if key == b"T" else 0  # the timer the tests break

    def on_timer(self, ctx: Context, key: bytes) -> None:
        if key == b"quiet":  # a timer that finds nothing to do
            return
        if key == b"late":
            ctx.emit(STOCK_LEVELS, "late", "StockLevel", {"sku": "late"})  # type: ignore[typeddict-item]
            return
        if self.timer_fails:
            raise ValueError("a timer's bug")
        ctx.store("counts").set(key, -1)


def engine(tmp_path: Path, broker: Broker) -> tuple[Engine, Stock]:
    settings = Settings(partitions=1, home=tmp_path)
    proc = Stock(name="stock", inputs=(STOCK_ADJUSTMENTS, STOCK_RETURNS), stores=(StoreSpec("counts"),),
                 timer_store="counts")  # fmt: skip
    eng = Engine(settings, codec_for(settings), Clock(), [proc])
    eng.consumer = Consumer()  # type: ignore[assignment]
    eng.producer = Producer(broker)  # type: ignore[assignment]
    eng._make_producer = lambda: Producer(broker)  # type: ignore[method-assign]
    eng.owned[0] = _Owned({"counts": PartitionStore(tmp_path / "counts-0", eng._due_of("counts"))},
                          {"stock": Timers()})  # fmt: skip
    eng._open[("counts", 0)] = eng.owned[0].stores["counts"]
    return eng, proc


def messages(eng: Engine, *skus: str, first: int = 10) -> list[Message]:
    encode = eng.codec.encode
    return [Message(first + n, sku, encode("StockAdjusted", ev.stock_adjusted(sku, "WH-1", 1)))
            for n, sku in enumerate(skus)]  # fmt: skip


def committed_offsets(broker: Broker) -> list[int]:
    return [txn["offsets"][(TOPIC, 0)] for txn in broker.committed if txn["offsets"]]


def test_a_replay_one_message_at_a_time_stops_at_a_failed_commit_and_never_commits_past_it(tmp_path: Path) -> None:
    """Changed on purpose: in the one-message-at-a-time replay a failed commit rewound the consumer but
    the loop went on with the messages already fetched, so the next one committed its offset past the
    one whose commit failed: that message was lost to a crash, or applied after the ones behind it."""
    broker = Broker()
    eng, _ = engine(tmp_path, broker)
    eng._process(messages(eng, "A", "bad", "B"))  # a handler fails: the batch is replayed one at a time
    assert eng._careful and committed_offsets(broker) == []
    broker.fail_commits = 1
    eng._process(messages(eng, "A", "bad", "B"))
    assert committed_offsets(broker) == []  # A's commit failed: nothing after it went either
    eng._process(messages(eng, "A", "bad", "B"))
    assert committed_offsets(broker) == [11, 12, 13]  # A, then bad dead-lettered alone, then B
    assert [topic for topic, _ in broker.committed[1]["records"]] == ["deadletters"]
    assert not eng._careful


def test_a_rebalance_ends_the_one_message_at_a_time_replay_of_the_partitions_that_went(tmp_path: Path) -> None:
    """Changed on purpose: the replay mode stayed on for a partition that moved away before its replay
    reached the failed offset, and the worker then ran one message per transaction for good."""
    eng, _ = engine(tmp_path, Broker())
    eng._process(messages(eng, "A", "bad"))
    assert eng._careful
    eng._on_revoke(eng.consumer, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]
    assert not eng._careful


def test_a_failing_timer_is_skipped_and_never_blamed_on_the_message_read_with_it(tmp_path: Path) -> None:
    """Changed on purpose: a timer that raised in a batch of one message dead-lettered that message as
    processing_error (an innocent order lost) and dropped the batch's other timers."""
    broker = Broker()
    eng, proc = engine(tmp_path, broker)
    proc.timer_fails = True
    eng.owned[0].stores["counts"].apply({b"T": StoreSpec("counts").serde.dumps(5)}, 0)
    eng._rebuild_timers(0)  # T is due, and rebuilt from the store after every rewind
    eng._process(messages(eng, "A"))
    assert broker.committed == []  # read again, without the timer
    eng._process(messages(eng, "A"))
    assert committed_offsets(broker) == [11]
    assert all(topic != "deadletters" for topic, _ in broker.committed[0]["records"])
    assert (eng.read("counts", b"A"), eng.read("counts", b"T")) == (1, 5)


def test_a_transaction_of_timers_alone_still_carries_the_groups_metadata(tmp_path: Path) -> None:
    """Changed on purpose: a batch with no input offsets (timers, flushes) committed without
    send_offsets_to_transaction, so a worker paused past its session could still commit into
    partitions another worker had taken over: nothing fenced it."""
    broker = Broker()
    eng, _ = engine(tmp_path, broker)
    eng._process(messages(eng, "A"))
    eng.owned[0].timers["stock"].set(b"A", 1)
    eng._process([])
    assert [txn["offsets"] for txn in broker.committed] == [{(TOPIC, 0): 11}, {(TOPIC, 0): 11}]


def test_an_output_its_schema_refuses_dead_letters_its_message_instead_of_stopping_the_worker(tmp_path: Path) -> None:
    """Changed on purpose: an output that could not be encoded raised out of the commit, outside the
    batch's error handling: the engine thread died, and every restart (and every worker that took the
    partition over) died again on the same message."""
    broker = Broker()
    eng, _ = engine(tmp_path, broker)
    eng._process(messages(eng, "A", "enc"))
    assert broker.committed == [] and eng._careful
    eng._process(messages(eng, "A", "enc"))
    assert committed_offsets(broker) == [11, 12]
    assert [topic for topic, _ in broker.committed[1]["records"]] == ["deadletters"]


def test_a_batch_that_did_not_commit_leaves_processors_as_after_a_fresh_assignment(tmp_path: Path) -> None:
    """Changed on purpose: what a processor noted in memory during a batch that then failed to commit
    (which stock levels it had sent, say) stood, so a level lost with that batch was never sent again."""
    broker = Broker(fail_commits=1)
    eng, proc = engine(tmp_path, broker)
    eng._process(messages(eng, "A"))
    assert broker.committed == [] and proc.assigned == 1


def test_after_an_assignment_records_for_a_partition_with_a_backlog_wait_their_turn(tmp_path: Path) -> None:
    """Changed on purpose: a record for a partition this worker owns was applied in the batch that wrote it
    even while that partition still held unread records from its previous owner (or a sender's), so a hot
    SKU's syncs could be applied out of order after a rebalance and strand units in a bucket."""
    broker = Broker()
    eng, _ = engine(tmp_path, broker)
    eng.consumer = Consumer(end=20)  # type: ignore[assignment]
    eng._note_backlogs([0])
    eng._process(messages(eng, "fwd"))
    assert eng.read("counts", b"X") is None  # published (it lands at offset 20), applied when read
    assert [(t, k) for t, k in broker.committed[0]["records"] if t.endswith("adjustments")] == [(TOPIC, b"X")]
    eng._process(messages(eng, *["A"] * 9, first=11))  # the backlog read to where it ended at assignment
    assert (TOPIC, 0) in eng._reading_to  # not past the record it published since: none may overtake it
    eng._process(messages(eng, "X", first=20))  # that record, read back
    assert eng.read("counts", b"X") == 1 and (TOPIC, 0) not in eng._reading_to
    eng._process(messages(eng, "fwd", first=21))
    assert eng.read("counts", b"X") == 2  # applied in place again


def test_a_rewind_in_the_replay_reads_again_the_partitions_first_seen_after_it(tmp_path: Path) -> None:
    """A commit that fails in the one-message-at-a-time replay rewinds every partition of the poll, those
    first seen after the failing message too: their messages were fetched, and would otherwise be skipped."""
    broker = Broker()
    eng, _ = engine(tmp_path, broker)
    eng._process(messages(eng, "A", "bad"))  # replay mode
    value = eng.codec.encode("StockAdjusted", ev.stock_adjusted("R", "WH-1", 1))
    returns = [Message(7, "R", value, STOCK_RETURNS.name)]
    broker.fail_commits = 1
    eng._process(messages(eng, "A", "bad") + returns)
    assert (STOCK_RETURNS.name, 7) in eng.consumer.seeked  # type: ignore[attr-defined]


def test_a_timers_output_its_schema_refuses_is_never_blamed_on_the_message_beside_it(tmp_path: Path) -> None:
    """A batch that fails in its commit with a timer in it: its message is replayed alone (without timers)
    and goes through; the timers then go one per batch, and the one that fails alone is quarantined."""
    broker = Broker()
    eng, _ = engine(tmp_path, broker)
    eng._process(messages(eng, "late", "A"))  # its timer fires in the batch, which fails in its commit
    assert broker.committed == [] and eng._careful
    eng._process(messages(eng, "late", "A"))  # read again: each message alone, without timers
    assert eng.read("counts", b"A") == 1 and not eng._careful
    for _ in range(3):
        eng._process([])  # the timer alone: fails, quarantined; then nothing is due
    assert any(what[2] == b"late" for what in eng._quarantined)
    assert all(topic != "deadletters" for txn in broker.committed for topic, _ in txn["records"])


def test_end_offsets_not_read_at_an_assignment_gate_every_partition_after_one_query(tmp_path: Path) -> None:
    """An assignment whose end-offset query fails asks no more (each would wait its timeout inside the
    rebalance); every owned partition is gated until the next fetch tells where it ends."""
    from streams.engine.loop import END_UNKNOWN

    eng, _ = engine(tmp_path, Broker())
    eng.consumer = Consumer(end=-1)  # type: ignore[assignment]
    eng._note_backlogs([0])
    assert eng.consumer.queried == 1  # type: ignore[attr-defined]
    assert eng._reading_to == {(TOPIC, 0): END_UNKNOWN, (STOCK_RETURNS.name, 0): END_UNKNOWN}


def test_a_restore_that_fails_at_an_assignment_pauses_its_partitions_and_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changed on purpose: a restore that failed inside the rebalance callback (the broker out of reach
    mid-rebalance) raised out of the consumer and ended the worker, and a restarted worker met the same
    outage in its first assignment. The partitions now wait, paused and unowned, and are restored later."""
    eng, _ = engine(tmp_path, Broker())
    eng.owned.clear()
    eng.ready.set()
    outage = [True]

    def restore(wanted: dict[tuple[str, int], PartitionStore], settings: Settings) -> Any:
        if outage[0]:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "broker down (the test's)"))
        return wanted, 0

    monkeypatch.setattr(loop, "restore", restore)
    assigned = [TopicPartition(TOPIC, 0), TopicPartition(STOCK_RETURNS.name, 0)]
    eng._on_assign(eng.consumer, assigned)  # type: ignore[arg-type]

    consumer = eng.consumer
    assert isinstance(consumer, Consumer)
    assert consumer.assigned == [(TOPIC, 0), (STOCK_RETURNS.name, 0)]
    assert consumer.paused == {(TOPIC, 0), (STOCK_RETURNS.name, 0)}
    assert 0 not in eng.owned and not eng.ready.is_set()
    assert eng.read("counts", b"A") is None  # nobody's state is answered for meanwhile

    eng._take_over(sorted(eng._unrestored))  # the loop's next try, still in the outage
    assert consumer.paused and 0 not in eng.owned and eng._restore_wait == 4.0

    outage[0] = False
    eng._take_over(sorted(eng._unrestored))
    assert 0 in eng.owned and not consumer.paused and eng.ready.is_set() and not eng._unrestored


def test_a_restore_tried_again_opens_the_folders_its_failed_attempt_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Failed before: the stores a failed restore opened stayed open while anything held them (a log handler keeping
    its traceback), and the next try, opening the same RocksDB folders, raised out of the loop."""
    eng, _ = engine(tmp_path, Broker())
    eng.owned[0].stores["counts"].close()
    eng.owned.clear()
    eng._open.clear()
    outage, held = [True], []

    def restore(wanted: dict[tuple[str, int], PartitionStore], settings: Settings) -> Any:
        held.append(wanted)  # as a traceback kept by a log handler would
        if outage[0]:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "broker down (the test's)"))
        return wanted, 0

    monkeypatch.setattr(loop, "restore", restore)
    eng._on_assign(eng.consumer, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]
    assert eng._unrestored == {0}
    outage[0] = False
    eng._take_over(sorted(eng._unrestored))
    assert 0 in eng.owned and not eng._unrestored


def test_a_batch_of_timers_alone_never_moves_a_stores_changelog_offset_back(tmp_path: Path) -> None:
    """Failed before: such a batch wrote the offset of the worker's last commit, though a restore since had caught
    the store up further; its next restore read those records again."""
    eng, _ = engine(tmp_path, Broker())
    eng._process(messages(eng, "A"))
    store = eng.owned[0].stores["counts"]
    caught_up = store.changelog_offset + 50
    store.apply({}, caught_up)  # a restore since took it further
    store.apply({}, -1, dues={b"quiet": 1})
    eng._rebuild_timers(0)
    eng._process([])  # the timer fires and changes nothing: the local index alone moves
    assert store.changelog_offset == caught_up


def test_partitions_revoked_while_waiting_for_their_restore_are_not_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eng, _ = engine(tmp_path, Broker())
    eng.owned.clear()

    def restore(wanted: dict[tuple[str, int], PartitionStore], settings: Settings) -> Any:
        raise TimeoutError("the test's")

    monkeypatch.setattr(loop, "restore", restore)
    eng._on_assign(eng.consumer, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]
    assert eng._unrestored == {0}
    eng._on_revoke(eng.consumer, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]
    assert not eng._unrestored


def test_a_committed_batch_its_stores_cannot_take_stops_the_worker_and_dead_letters_nothing(tmp_path: Path) -> None:
    """Changed on purpose: a failure writing a committed batch to the local stores (a disk full) was taken
    for the batch's failure: its messages were replayed one at a time and dead-lettered as
    processing_error, though their outputs and offsets had committed."""
    broker = Broker()
    eng, _ = engine(tmp_path, broker)
    store = eng.owned[0].stores["counts"]

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    store.apply = disk_full  # type: ignore[method-assign]
    with pytest.raises(loop.StateWriteFailed):
        eng._process(messages(eng, "A", "B"))
    assert committed_offsets(broker) == [12]  # committed once, as the batch it was
    assert not eng._careful and all(topic != "deadletters" for txn in broker.committed for topic, _ in txn["records"])


def test_after_a_suspect_timer_is_quarantined_timers_and_flushes_run_as_before(tmp_path: Path) -> None:
    """Changed on purpose: after one batch failed in its commit with a timer or flush in it, every later batch ran
    at most one timer and no flush, for the life of the process: due timers piled up without bound (payment
    timeouts, hold expiries) and stock levels stopped."""
    flushes: list[int] = []
    eng, proc = engine(tmp_path, Broker())
    proc.flush = lambda ctx: flushes.append(ctx.now_ms)  # type: ignore[method-assign]
    proc.flush_interval_ms = 1
    eng._process(messages(eng, "late", "A"))  # its timer's output is refused at the commit
    eng._process(messages(eng, "late", "A"))  # the messages again, one at a time
    for _ in range(3):
        eng._process([])  # the suspects alone: the timer fails and is quarantined; the flush passes
    assert any(what[2] == b"late" for what in eng._quarantined) and not eng._suspects
    flushes.clear()
    timers = eng.owned[0].timers["stock"]
    for i in range(20):
        for j in range(3):
            timers.set(f"K{i}-{j}".encode(), 1)
        fired = eng.stats.timers_fired
        eng.clock.offset_ms += 10  # a flush is due again
        eng._process([])
        assert eng.stats.timers_fired - fired == 3
    assert len(flushes) == 20 and set(timers._due) == {b"late"}  # the quarantined one waits out its minute


def test_a_suspect_runs_alone_while_everything_else_goes_on(tmp_path: Path) -> None:
    """A timer suspected of failing a commit runs in a batch of its own, ahead of the messages polled with it;
    the other partitions' timers and the messages are not held back meanwhile."""
    broker = Broker()
    eng, proc = engine(tmp_path, broker)
    fired: list[bytes] = []
    proc.on_timer = lambda ctx, key: fired.append(key)  # type: ignore[method-assign]
    eng._suspects = {("stock", 0, b"S")}
    timers = eng.owned[0].timers["stock"]
    timers.set(b"S", 1)
    timers.set(b"O", 1)
    eng._process(messages(eng, "A"))
    assert fired == [b"S", b"O"] and not eng._suspects  # S alone first, then O with the message
    assert committed_offsets(broker) == [11]


def test_a_timer_set_in_the_batch_that_moves_the_window_is_not_lost(tmp_path: Path) -> None:
    """Changed on purpose: a timer set for just past the in-memory window by a handler, in the batch where the
    window moved on, was read neither from memory (it was past the old window) nor from the index (the batch had
    not committed it yet): with a payment timeout of an hour, such orders never timed out."""
    eng, proc = engine(tmp_path, Broker())
    fired: list[bytes] = []
    proc.on_timer = lambda ctx, key: fired.append(key)  # type: ignore[method-assign]
    original = proc.handle

    def handle(ctx: Context, event_type: str, record: dict[str, Any]) -> None:
        if record["sku"] == "order":
            ctx.store("counts").set(b"O1", 1)
            ctx.schedule(b"O1", ctx.now_ms + loop.TIMER_HORIZON_MS)  # just past the window until it moves
            return
        original(ctx, event_type, record)

    proc.handle = handle  # type: ignore[method-assign]
    proc.due_ms = lambda key, value: 0  # type: ignore[method-assign]
    eng._rebuild_timers(0)
    eng.clock.offset_ms += loop.TIMER_STEP_MS + 1_000  # the window steps on in the next batch
    eng._process(messages(eng, "order"))
    assert b"O1" in eng.owned[0].timers["stock"]._due
    eng.clock.offset_ms += loop.TIMER_HORIZON_MS + 1_000
    eng._process([])
    assert fired == [b"O1"]


def test_a_message_dead_lettered_alone_leaves_the_timers_as_committed(tmp_path: Path) -> None:
    """Changed on purpose: a handler that moved a key's timer in memory and then failed was dead-lettered, but
    the timer stayed moved: the committed state still needed it, and it never fired until a restart."""
    broker = Broker()
    eng, proc = engine(tmp_path, broker)
    original = proc.handle

    def handle(ctx: Context, event_type: str, record: dict[str, Any]) -> None:
        if record["sku"] == "cancel-then-fail":
            ctx.schedule(b"T", 0)
            raise ValueError("a later step of the same handler fails")
        original(ctx, event_type, record)

    proc.handle = handle  # type: ignore[method-assign]
    eng.owned[0].stores["counts"].apply({b"T": StoreSpec("counts").serde.dumps(5)}, 0)  # due at 1 (due_ms)
    eng._rebuild_timers(0)
    eng.owned[0].timers["stock"].set(b"T", eng.clock.now_ms() + 3_600_000)  # not due yet
    eng._process(messages(eng, "cancel-then-fail"))
    assert [topic for topic, _ in broker.committed[0]["records"]] == ["deadletters"]
    assert b"T" in eng.owned[0].timers["stock"]._due


def test_timers_right_after_an_assignment_are_fenced_by_the_groups_offsets(tmp_path: Path) -> None:
    """Changed on purpose: a transaction of timers alone, before the worker had read anything since its
    assignment, committed with no group metadata: a worker that lost its partitions while paused could still
    write into them."""
    broker = Broker()
    eng, _ = engine(tmp_path, broker)
    eng.consumer.group_offsets = {(TOPIC, 0): 40}  # type: ignore[attr-defined]
    eng.owned[0].timers["stock"].set(b"H", 1)
    eng._process([])
    assert broker.committed[0]["offsets"] == {(TOPIC, 0): 40}


def test_a_new_owner_waits_for_the_groups_offsets_before_it_restores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changed on purpose: a restore read the changelog at once, while a previous owner paused past its session
    could still commit a transaction whose offsets the group had taken (its records sent after the thaw): the new
    owner's state then lacked a batch whose outputs were out. It first asks for the group's offsets, which a
    read_committed consumer gets only once no transaction holds them pending."""
    eng, _ = engine(tmp_path, Broker())
    eng.owned.clear()
    calls: list[str] = []
    consumer = eng.consumer
    assert isinstance(consumer, Consumer)
    committed = consumer.committed
    monkeypatch.setattr(consumer, "committed", lambda tps, timeout=0: calls.append("offsets") or committed(tps))

    def restore(wanted: dict[tuple[str, int], PartitionStore], settings: Settings) -> Any:
        calls.append("restore")
        return wanted, 0

    monkeypatch.setattr(loop, "restore", restore)
    eng._on_assign(consumer, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]
    assert calls == ["offsets", "restore"] and 0 in eng.owned


def test_a_flush_that_fails_its_commit_is_tried_alone_at_once_and_quarantined(tmp_path: Path) -> None:
    """Changed on purpose (review): the failed batch noted the flush as done, so its own batch found it not due
    and let it go untried; one interval later it failed beside messages again, a rewind and a one-at-a-time
    replay every interval, and it was never quarantined."""
    eng, proc = engine(tmp_path, Broker())
    proc.flush = lambda ctx: ctx.emit(STOCK_LEVELS, "f", "StockLevel", {"sku": "f"})  # type: ignore[method-assign, typeddict-item]
    proc.flush_interval_ms = 60_000
    eng._process(messages(eng, "A"))  # the flush runs beside A; its output is refused at the commit
    assert eng._suspects == {("stock", 0, b"")}
    eng._process(messages(eng, "A"))  # the flush alone first: fails, quarantined; A is read again
    assert ("stock", 0, b"") in eng._quarantined and not eng._suspects
    eng._process(messages(eng, "A"))
    assert eng.read("counts", b"A") == 1


def test_a_suspects_batch_the_broker_aborted_proves_nothing(tmp_path: Path) -> None:
    """Changed on purpose (review): a suspect's own batch whose commit the broker aborted counted as passed."""
    broker = Broker()
    eng, _ = engine(tmp_path, broker)
    eng.owned[0].stores["counts"].apply({b"T": StoreSpec("counts").serde.dumps(5)}, 0)  # due at 1 (due_ms)
    eng._rebuild_timers(0)
    eng._suspects = {("stock", 0, b"T")}
    broker.fail_commits = 1
    eng._process([])
    assert eng._suspects == {("stock", 0, b"T")}
    eng._process([])
    assert not eng._suspects and broker.committed and eng.read("counts", b"T") == -1
