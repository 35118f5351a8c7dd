"""What a business area supplies to the engine, and what the engine hands it per event.

A processor names its input topics (all co-partitioned: keyed alike, same partition count), the
stores it owns, one handler per event type, and optionally timers and a periodic flush. It never
sees Kafka, transactions or RocksDB: the ``Context`` gives it the partition's stores, a way to emit
records, to refuse the current message with a reason, and to set timers. The engine decides when a
batch ends and commits everything the batch did in one Kafka transaction.

The same processor runs without a broker in unit tests (``streams.engine.local.LocalRunner``) and on
the broker in the worker (``streams.engine.loop.Engine``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from streams.contract.reasons import Reason
from streams.contract.topics import DEADLETTERS, TopicSpec
from streams.engine.deadletter import KeptMessage, dead_letter
from streams.engine.state import ReadOnlyStore, StoreSpec, StoreTransaction


class SourceMessage(Protocol):
    """The message being handled, as far as a processor may look at it (confluent-kafka ``Message``)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | str | None: ...
    def value(self) -> bytes | str | None: ...


@dataclass
class Output:
    """A record to publish: contract topic (unprefixed), key, event type and the record itself."""

    topic: str
    key: bytes | None
    event_type: str
    record: Any
    partition: int | None = None
    # Set by the engine when it applied this record in the same batch (the reading processor's
    # partition is its own): it is published with a header saying so, and skipped when read back.
    local: bool = False
    value: bytes | None = None
    publish: bool = True  # False: applied in its batch and not kept on its topic (``publish_applied``)


@dataclass
class Refusal:
    """The current message refused: it goes to ``deadletters`` with its bytes. What its handler did before
    refusing (stores set, records emitted, timers) commits with the batch all the same, so a handler refuses
    before it changes anything, unless what it changed is meant to stand (a state published beside the refusal)."""

    reason: Reason
    detail: str


class Context:
    """What a handler gets: its partition's stores, the pipeline time, emit/refuse/schedule."""

    def __init__(self, partition: int, now_ms: int, stores: dict[str, StoreTransaction[Any]],
                 schedule: Callable[[bytes, int], None],
                 reads: dict[str, ReadOnlyStore[Any]] | None = None) -> None:  # fmt: skip
        self.partition = partition
        self.now_ms = now_ms
        self.message: SourceMessage | None = None
        self._stores = stores
        self._reads = reads or {}
        self._schedule = schedule
        self.outputs: list[Output] = []
        self.refusals: list[tuple[SourceMessage, Refusal]] = []
        # What a handler keeps for the rest of the batch on this partition (one clock reading): gone at its end.
        self.memo: dict[str, Any] = {}

    def store(self, name: str) -> StoreTransaction[Any]:
        return self._stores[name]

    def read_store(self, name: str) -> ReadOnlyStore[Any]:
        """A store the processor declared in ``reads`` (another processor owns and writes it)."""
        return self._reads[name]

    def emit(self, topic: TopicSpec | str, key: str | bytes | None, event_type: str, record: Any,
             partition: int | None = None) -> None:  # fmt: skip
        name = topic if isinstance(topic, str) else topic.name
        raw_key = key.encode() if isinstance(key, str) else key
        self.outputs.append(Output(name, raw_key, event_type, record, partition))

    def refuse(self, reason: Reason, detail: str) -> None:
        """Dead-letter the message being handled (the engine adds its original bytes and position)."""
        if self.message is None:
            raise RuntimeError("refuse() outside a message handler")
        self.refusals.append((self.message, Refusal(reason, detail)))

    def keep_message(self) -> dict[str, Any]:
        """The message being handled, as a store holds it: for ``refuse_kept`` in a later batch."""
        if self.message is None:
            raise RuntimeError("keep_message() outside a message handler")
        return KeptMessage.keep(self.message)

    def refuse_kept(self, kept: dict[str, Any], stage: str, reason: Reason, detail: str) -> None:
        """Dead-letter a message kept in state since an earlier batch (``keep_message``) with its original
        bytes and position, as if it had been refused on arrival."""
        record = dead_letter(KeptMessage.load(kept), stage, reason, detail, self.now_ms)
        self.emit(DEADLETTERS, record["source_topic"], "DeadLetter", record)

    def schedule(self, key: bytes, due_ms: int) -> None:
        """Call the processor's ``on_timer`` for ``key`` at ``due_ms`` (0: no timer). One timer per key:
        a new call replaces the previous one. ``due_ms`` must say the same of the value the batch leaves:
        the store's timer index keeps what it says, the index is what a restart reads, and only the
        timers due within the hour are held in memory."""
        self._schedule(key, due_ms)


@dataclass
class Processor(ABC):
    """A stateful stream step owned by one business area."""

    name: str
    inputs: tuple[TopicSpec, ...]
    stores: tuple[StoreSpec[Any], ...] = ()
    # Stores another processor of the same engine owns, read (never written) here: their keys must
    # be co-partitioned with this processor's inputs, so partition p of both lives on one worker.
    reads: tuple[StoreSpec[Any], ...] = ()
    timer_store: str = ""  # the store whose keys timers are set on (indexed via ``due_ms``)
    flush_interval_ms: int = 0  # > 0: ``flush`` runs per owned partition at most this often
    counters: dict[str, int] = field(default_factory=dict)

    @abstractmethod
    def handle(self, ctx: Context, event_type: str, record: dict[str, Any]) -> None:
        """Apply one decoded event to the state in ``ctx``; emit what follows."""

    def key_of(self, event_type: str, record: dict[str, Any]) -> str | None:
        """The key the record belongs under; the engine refuses a message keyed or partitioned otherwise
        (``key_mismatch``, ``misrouted_partition``). None: no such check for this event."""
        return None

    def may_have_timer(self, key: bytes) -> bool:
        """False for keys of ``timer_store`` that never carry a timer (they stay out of the timer index, and
        their values are not parsed when it is built)."""
        return True

    def due_ms(self, key: bytes, value: Any) -> int:
        """When ``key`` (a key of ``timer_store`` holding ``value``) next needs ``on_timer``; 0: never. Read
        for every key a batch changes, so it must be cheap."""
        return 0

    def on_timer(self, ctx: Context, key: bytes) -> None:  # noqa: B027 - optional hook
        """A timer set with ``ctx.schedule`` (or rebuilt from ``due_ms``) is due."""

    def flush(self, ctx: Context) -> None:  # noqa: B027 - optional hook
        """Periodic work for one owned partition (e.g. publishing coalesced stock levels)."""

    def on_assign(self, ctx: Context) -> None:  # noqa: B027 - optional hook
        """A partition was just assigned and its stores restored."""

    def on_revoke(self, partition: int) -> None:  # noqa: B027 - optional hook
        """A partition is leaving this worker: forget anything kept in memory for it."""

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


def check_wiring(processors: list[Processor]) -> None:
    """Refuse processors that cannot run side by side: one engine routes each input topic to one processor,
    gives each store one writer and indexes each timer store for one processor, so a second claim would
    silently win over the first (its events, writes or timers lost to the other)."""
    problems: list[str] = []
    for what, claims in (
        ("processor name", [(proc.name, proc.name) for proc in processors]),
        ("input topic", [(spec.name, proc.name) for proc in processors for spec in proc.inputs]),
        ("store", [(spec.name, proc.name) for proc in processors for spec in proc.stores]),
    ):
        by: dict[str, list[str]] = {}
        for claimed, proc_name in claims:
            by.setdefault(claimed, []).append(proc_name)
        problems += [f"{what} {name!r} claimed by {sorted(names)}" for name, names in by.items() if len(names) > 1]
    for proc in processors:
        if proc.timer_store and proc.timer_store not in {spec.name for spec in proc.stores}:
            problems.append(f"processor {proc.name!r} sets timers on {proc.timer_store!r}, a store it does not own")
    if problems:
        raise ValueError("processors that cannot run in one engine: " + "; ".join(problems))
    owned = {spec.name for proc in processors for spec in proc.stores}
    unowned = {spec.name for proc in processors for spec in proc.reads} - owned
    if unowned:
        raise ValueError(f"stores read but owned by no processor of this engine: {sorted(unowned)}")


def no_timers(key: bytes, due_ms: int) -> None:
    """``Context.schedule`` of a processor that declares no ``timer_store``."""
    raise RuntimeError("this processor declares no timer_store")
