"""Processors run in-process, without a broker: the same interface the engine drives, for unit tests
of a whole flow (an order, its holds, the answers) and for replaying events through a candidate rule.

``send`` hands events to the processors reading their topic; every output whose topic another
processor reads is delivered to it in turn, round by round, until nothing is left in flight (each
round is one batch per processor and partition, committed as the engine would). ``advance``
moves the clock and fires due timers and periodic flushes. Outputs, refusals and state are kept
for the test to look at.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from streams.contract.keys import partition_for
from streams.engine.processor import Context, Output, Processor, Refusal, check_wiring, no_timers
from streams.engine.state import MemoryStore, ReadOnlyStore, StoreTransaction
from streams.engine.timers import Timers

Event = tuple[str, str, str, dict[str, Any]]  # topic, key, event type, record


@dataclass
class _Sent:
    """A message as a processor sees it (the accessors of a confluent-kafka ``Message``)."""

    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return None


@dataclass
class LocalRunner:
    processors: list[Processor]
    partitions: int = 8
    now_ms: int = 1_700_000_000_000
    stores: dict[tuple[str, int], MemoryStore] = field(default_factory=dict)
    timers: dict[tuple[str, int], Timers] = field(default_factory=dict)
    outputs: list[Output] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    _offset: int = 0

    def __post_init__(self) -> None:
        check_wiring(self.processors)
        self._reads = {spec.name: proc for proc in self.processors for spec in proc.inputs}

    def _context(self, proc: Processor, partition: int, txns: dict[tuple[str, int], StoreTransaction[Any]]) -> Context:
        stores = {}
        for spec in proc.stores:
            store = self.stores.setdefault((spec.name, partition), MemoryStore())
            txn = txns.get((spec.name, partition))
            if txn is None:
                txn = txns[(spec.name, partition)] = StoreTransaction(store, spec.serde)
            stores[spec.name] = txn
        reads = {}
        for spec in proc.reads:
            store = self.stores.setdefault((spec.name, partition), MemoryStore())
            txn = txns.get((spec.name, partition))
            if txn is None:
                txn = txns[(spec.name, partition)] = StoreTransaction(store, spec.serde)
            reads[spec.name] = ReadOnlyStore(txn)
        timers = self.timers.setdefault((proc.name, partition), Timers())
        return Context(partition, self.now_ms, stores, timers.set if proc.timer_store else no_timers, reads)

    def _commit(self, contexts: list[Context], txns: dict[tuple[str, int], StoreTransaction[Any]]) -> list[Event]:
        produced: list[Event] = []
        for ctx in contexts:
            self.outputs.extend(ctx.outputs)
            self.refusals.extend(r for _, r in ctx.refusals)
            produced += [(o.topic, (o.key or b"").decode(), o.event_type, o.record) for o in ctx.outputs]
        for (name, partition), txn in txns.items():
            self.stores[(name, partition)].apply(txn.changes(), -1)
        return produced

    def _round(self, events: list[Event]) -> list[Event]:
        txns: dict[tuple[str, int], StoreTransaction[Any]] = {}
        contexts: dict[tuple[str, int], Context] = {}
        for topic, key, event_type, record in events:
            proc = self._reads.get(topic)
            if proc is None:
                continue  # an output no processor reads
            partition = partition_for(key.encode(), self.partitions)
            ctx = contexts.get((proc.name, partition))
            if ctx is None:
                ctx = contexts[(proc.name, partition)] = self._context(proc, partition, txns)
            self._offset += 1
            ctx.message = _Sent(topic, partition, self._offset, key.encode())
            proc.handle(ctx, event_type, record)
        return self._commit(list(contexts.values()), txns)

    def _drain(self, pending: list[Event]) -> None:
        queue: deque[list[Event]] = deque([pending])
        while queue:
            produced = self._round(queue.popleft())
            if any(e[0] in self._reads for e in produced):
                queue.append(produced)

    def send(self, events: list[tuple[str, str, dict[str, Any]]], topic: str = "") -> list[Output]:
        """Deliver ``events`` (key, event type, record) on ``topic`` (default: the first processor's
        first input) and everything they cause; return the outputs produced."""
        before = len(self.outputs)
        name = topic or self.processors[0].inputs[0].name
        self._drain([(name, key, event_type, record) for key, event_type, record in events])
        return self.outputs[before:]

    def advance(self, ms: int) -> list[Output]:
        """Move the clock on by ``ms``, fire due timers and periodic flushes, as the engine would."""
        self.now_ms += ms
        before = len(self.outputs)
        txns: dict[tuple[str, int], StoreTransaction[Any]] = {}
        contexts = []
        for proc in self.processors:
            for partition in range(self.partitions):
                ctx = self._context(proc, partition, txns)
                for key in self.timers[(proc.name, partition)].pop_due(self.now_ms):
                    proc.on_timer(ctx, key)
                if proc.flush_interval_ms > 0:
                    proc.flush(ctx)
                contexts.append(ctx)
        produced = self._commit(contexts, txns)
        if any(e[0] in self._reads for e in produced):
            self._drain(produced)
        return self.outputs[before:]

    def read(self, store: str, key: bytes, partition_key: str | None = None) -> Any | None:
        partition = partition_for((partition_key or key.decode()).encode(), self.partitions)
        raw = self.stores.get((store, partition), MemoryStore()).get(key)
        spec = next(s for p in self.processors for s in p.stores if s.name == store)
        return spec.serde.loads(raw) if raw is not None else None
