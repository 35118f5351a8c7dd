"""What every keyed, table-owning agent does around its rules: routing checks, ticks, batches."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import orjson

from streams.contract.codec import Codec, DecodeError
from streams.contract.keys import partition_for
from streams.contract.reasons import Reason
from streams.contract.topics import TopicSpec
from streams.engine import tables
from streams.engine.deadletter import send_dead_letter
from streams.engine.outbox import Outbox
from streams.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


def routed_correctly(outbox: Outbox, msg: Any, key: str, partitions: int, stage: str, now_ms: int) -> bool:
    """False (and a dead letter) unless the message is keyed by ``key`` on the partition owning it."""
    if not msg.key or msg.key != key.encode():
        send_dead_letter(outbox, msg, stage, Reason.KEY_MISMATCH, f"key {msg.key!r} but record is for {key!r}", now_ms)
        return False
    owner = partition_for(msg.key, partitions)
    if owner != msg.partition:
        send_dead_letter(
            outbox, msg, stage, Reason.MISROUTED_PARTITION,
            f"key {key!r} belongs on partition {owner}, not {msg.partition}: produce with the murmur2 partitioner",
            now_ms,
        )  # fmt: skip
        return False
    return True


def apply_each(events: list[Any], apply: Callable[[Any], None], outbox: Outbox, stage: str, now_ms: int) -> None:
    """Apply every event of a batch; one that raises is dead-lettered and the stream goes on."""
    for event in events:
        try:
            apply(event)
        except Exception as exc:
            msg = event.message
            log.exception("%s: event at %s:%s:%s failed", stage, msg.topic, msg.partition, msg.offset)
            send_dead_letter(outbox, msg, stage, Reason.PROCESSING_ERROR, repr(exc), now_ms)


async def send_ticks(topic: Any, codec: Codec, now_ms: int, partitions: int) -> None:
    """Wake every partition of ``topic``: time-based rules then run in the task owning the state."""
    value = codec.encode("ClockAdvanced", {"event_id": f"tick:{now_ms}", "event_time_ms": now_ms, "offset_ms": 0})
    for partition in range(partitions):
        await topic.send(key=None, value=value, partition=partition)


class ParsedCache(Generic[T]):
    """Parsed table values, reused while the table still holds the very bytes they came from.

    Parsing a hot SKU's record (every hold of the SKU) on every batch cost more than the rules.
    An entry is used only if the stored bytes are equal to the bytes it was parsed from or written
    as, so a value changed elsewhere (another worker before a rebalance, a restore from the
    changelog) is always parsed afresh.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self._entries: dict[bytes, tuple[bytes, T]] = {}
        self._limit = limit

    def get(self, key: bytes, raw: bytes) -> T | None:
        hit = self._entries.get(key)
        return hit[1] if hit is not None and hit[0] == raw else None

    def clear(self) -> None:
        """Forget everything: after a batch failed, working copies may hold unwritten changes."""
        self._entries.clear()

    def put(self, key: bytes, raw: bytes, value: T) -> None:
        if len(self._entries) >= self._limit and key not in self._entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = (raw, value)


class WorkingSet(Generic[T]):
    """The keys one batch touched: each read from the table once, written back once."""

    def __init__(self, table: Any, parse: Callable[[dict[str, Any]], T], new: Callable[[str], T],
                 cache: ParsedCache[T] | None = None) -> None:  # fmt: skip
        self._table, self._parse, self._new = table, parse, new
        self._cache: ParsedCache[T] = cache if cache is not None else ParsedCache()
        self.entries: dict[str, tuple[Any, T]] = {}  # key -> (event to write under, working copy)

    def load(self, event: Any, key: str) -> T:
        if key in self.entries:
            value = self.entries[key][1]
        else:
            raw = tables.read_raw(self._table, event, key.encode())
            cached = self._cache.get(key.encode(), raw) if raw else None
            value = cached if cached is not None else self._parse(orjson.loads(raw)) if raw else self._new(key)
        self.entries[key] = (event, value)
        return value

    def write(self, key: str) -> None:
        """Persist one working copy (a dataclass) under the event that last touched it."""
        event, value = self.entries[key]
        raw = tables.write_raw(self._table, event, key.encode(), orjson.dumps(value))
        self._cache.put(key.encode(), raw, value)


async def run_batches(stream: Any, settings: Settings, cache: ParsedCache[Any],
                      process: Callable[[list[Any]], Awaitable[None]]) -> None:  # fmt: skip
    """Feed a stream to ``process`` in batches (``STOCKFLOW_BATCH_WINDOW_MS`` / ``_MAX_EVENTS``).

    Faust acknowledges a batch's events after ``process`` returns; if it raises, the parsed cache
    is dropped, since working copies may hold changes that were never written.
    """
    async for taken in stream.take_events(settings.batch_max_events, within=settings.batch_window_ms / 1000):
        try:
            await process(taken)
        except BaseException:
            cache.clear()
            raise


def raw_topic(app: Any, settings: Settings, *specs: TopicSpec) -> Any:
    """A Faust topic over the contract topics ``specs``, carrying bytes the codec reads."""
    return app.topic(*(settings.topic(s.name) for s in specs), key_serializer="raw", value_serializer="raw")


def decode_for(
    outbox: Outbox, codec: Codec, msg: Any, spec: TopicSpec, stage: str, now_ms: int
) -> tuple[str, dict[str, Any]] | None:
    """The (event type, record) of a message, if it is one of the events its topic carries."""
    try:
        event_type, record = codec.decode(msg.value)
    except DecodeError:
        return None  # the sink reads every topic and dead-letters unreadable bytes once
    kind = event_type.short_name
    if kind not in spec.events:
        send_dead_letter(outbox, msg, stage, Reason.UNEXPECTED_EVENT_TYPE, f"{kind} on {spec.name}", now_ms)
        return None
    return kind, record
