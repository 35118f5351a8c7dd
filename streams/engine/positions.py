"""Where each stateful agent is in each input partition, kept in its own table.

Faust commits consumer offsets from what its streams acknowledged. Around rebalances its fetcher
can give up on a delivery while still moving its read position, and its commit logic accepts a
one-offset gap at the head of the acknowledged list, so the committed offset can pass a message the
agent never saw: an order silently lost. stockflow does not depend on that bookkeeping for
correctness. Each agent keeps, in the same table (and changelog partition) as its state, the next
offset it has not applied for every input partition, written only after a batch's state and
outputs are durable. Then, for every batch:

- an event below that position was applied and published before (a replay after a crash or a
  rebalance): it is skipped;
- an event above it means the consumer skipped messages: they are fetched from the broker directly
  and applied first, in order, so nothing is lost whatever the consumer committed;
- offsets that do not exist (transaction markers, compaction) are accepted as gaps once the broker
  confirms there is nothing to read there;
- a partition the agent has never applied anything from starts at the beginning of its log, so
  a consumer that skips the very first message (Faust treats a committed offset of 0 as none)
  is caught too.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.events import Event
from faust.types.tuples import Message

from streams.engine import tables
from streams.engine.retry import Backoff, Retry, kafka_transient

log = logging.getLogger(__name__)


def position_key(topic: str, partition: int) -> bytes:
    return tables.RESERVED_PREFIX + f"position:{topic}:{partition}".encode()


@dataclass
class PositionStats:
    replays_skipped: int = 0
    gaps_repaired: int = 0
    messages_recovered: int = 0


@dataclass
class InputPositions:
    """Admits a batch's events in offset order per partition; remembers how far each one got."""

    app: Any
    table: Any
    bootstrap: str
    stage: str
    topics: tuple[str, ...]  # every input topic (full names), co-partitioned
    ticks_topic: str
    stats: PositionStats = field(default_factory=PositionStats)
    _probe: AIOKafkaConsumer | None = None
    _starts: dict[tuple[str, int], int] = field(default_factory=dict)

    async def admit(self, events: list[Any]) -> list[Any]:
        """The events to apply, in order: replays dropped, anything the consumer skipped added.

        A wake-up tick on the ticks topic also compares, for the other inputs of its partition,
        the position with what the consumer has committed: that finds skipped messages even when
        nothing newer arrives on their partition.
        """
        expected: dict[tuple[str, int], int] = {}
        admitted: list[Any] = []

        async def catch_up(event: Any, topic: str, partition: int, upto: int) -> None:
            tp = (topic, partition)
            if tp not in expected:
                stored = tables.read(self.table, event, position_key(*tp))
                # Never applied anything here: everything from the start of the log is due (the
                # consumer starts there too, unless it skipped - e.g. offset 0 of a new partition).
                expected[tp] = stored["next"] if stored else await self._log_start(topic, partition)
            nxt = expected[tp]
            if upto <= nxt:
                return
            missing = await self._fetch(topic, partition, nxt, upto)
            if missing:
                self.stats.gaps_repaired += 1
                self.stats.messages_recovered += len(missing)
                log.warning(
                    "%s: consumer skipped %s:%s offsets %s..%s; applied %d recovered message(s) first",
                    self.stage, topic, partition, nxt, upto - 1, len(missing),
                )  # fmt: skip
            admitted.extend(missing)
            expected[tp] = upto

        for event in events:
            msg = event.message
            if msg.topic == self.ticks_topic:
                for topic in self.topics:
                    committed = self._committed(topic, msg.partition)
                    if topic != self.ticks_topic and committed is not None:
                        await catch_up(event, topic, msg.partition, committed)
            await catch_up(event, msg.topic, msg.partition, msg.offset)
            nxt = expected[(msg.topic, msg.partition)]
            if msg.offset < nxt:
                self.stats.replays_skipped += 1
                continue
            admitted.append(event)
            expected[(msg.topic, msg.partition)] = msg.offset + 1
        return admitted

    def _committed(self, topic: str, partition: int) -> int | None:
        """What the consumer group has committed for a partition, as this worker last saw it."""
        consumer = self.app.consumer
        return consumer._committed_offset.get(consumer._new_topicpartition(topic, partition))

    def record(self, events: list[Any]) -> None:
        """After the batch is durable: the next offset to apply, per partition the batch touched."""
        last: dict[tuple[str, int], Any] = {}
        for event in events:
            msg = event.message
            tp = (msg.topic, msg.partition)
            if tp not in last or msg.offset > last[tp].message.offset:
                last[tp] = event
        for (topic, partition), event in last.items():
            tables.write(self.table, event, position_key(topic, partition), {"next": event.message.offset + 1})

    def _until_the_broker_answers(self, what: str) -> Retry:
        # No bound: while the broker is away the batch is held rather than the gap lost. Anything
        # but a transient Kafka error (a refusal, a bug) fails the batch at once.
        return Retry(f"{self.stage}: {what}", kafka_transient, backoff=Backoff(first_s=0.2, max_s=5.0),
                     log=log, level=logging.ERROR)  # fmt: skip

    async def _fetch(self, topic: str, partition: int, start: int, end: int) -> list[Any]:
        """The records in [start, end) of one partition, as events; retried until the broker answers."""
        retry = self._until_the_broker_answers(f"reading {topic}:{partition} from offset {start}")
        return await retry.acall(lambda: self._read_range(topic, partition, start, end), self._drop_probe)

    async def _log_start(self, topic: str, partition: int) -> int:
        """The first offset still in the log of one partition (cached: it only matters once)."""
        key = (topic, partition)
        if key not in self._starts:
            retry = self._until_the_broker_answers(f"finding the log start of {topic}:{partition}")
            self._starts[key] = await retry.acall(lambda: self._beginning_offset(topic, partition), self._drop_probe)
        return self._starts[key]

    async def _beginning_offset(self, topic: str, partition: int) -> int:
        probe = await self._ensure_probe()
        tp = TopicPartition(topic, partition)
        offset: int = (await probe.beginning_offsets([tp]))[tp]
        return offset

    async def _drop_probe(self, _: BaseException) -> None:
        """A failed probe may be half-connected: the next attempt starts a fresh one."""
        await self._close_probe()

    async def _ensure_probe(self) -> AIOKafkaConsumer:
        if self._probe is None:
            self._probe = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed",
                client_id=f"{self.stage}-gap-repair",
            )
            await self._probe.start()
        return self._probe

    async def _read_range(self, topic: str, partition: int, start: int, end: int) -> list[Any]:
        probe = await self._ensure_probe()
        tp = TopicPartition(topic, partition)
        probe.assign([tp])
        probe.seek(tp, start)
        out: list[Any] = []
        deadline = asyncio.get_running_loop().time() + 30.0
        while await probe.position(tp) < end:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{topic}:{partition} offsets {start}..{end - 1} not readable in 30 s")
            batch = await probe.getmany(tp, timeout_ms=1000, max_records=end - start)
            records = batch.get(tp, [])
            if not records:
                # Nothing readable before ``end``: the offsets were markers or compacted away.
                if await probe.position(tp) >= end or not await self._has_data_before(tp, end):
                    break
                continue
            out.extend(self._as_event(r) for r in records if r.offset < end)
            if records[-1].offset >= end - 1:
                break
        return out

    async def _has_data_before(self, tp: TopicPartition, end: int) -> bool:
        probe = await self._ensure_probe()
        last_stable = (await probe.end_offsets([tp]))[tp]
        return await probe.position(tp) < min(end, last_stable)

    def _as_event(self, record: Any) -> Any:
        tp = self.app.consumer._new_topicpartition(record.topic, record.partition)
        message = Message(
            record.topic, record.partition, record.offset, record.timestamp / 1000.0, record.timestamp_type,
            record.headers, record.key, record.value, record.checksum, tp=tp,
        )  # fmt: skip
        return Event(self.app, record.key, record.value, record.headers, message)

    async def _close_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            try:
                await probe.stop()
            except Exception:
                log.debug("closing the gap-repair consumer failed", exc_info=True)
