"""What every keyed, table-owning agent does around its rules: routing checks, ticks, batches."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from streams import tables
from streams.codec import Codec, DecodeError
from streams.deadletter import send_dead_letter
from streams.outbox import Outbox
from streams.settings import Settings
from streams.tables import partition_for
from streams.topics import TopicSpec

log = logging.getLogger(__name__)
T = TypeVar("T")


def routed_correctly(outbox: Outbox, msg: Any, key: str, partitions: int, stage: str, now_ms: int) -> bool:
    """False (and a dead letter) unless the message is keyed by ``key`` on the partition owning it."""
    if not msg.key or msg.key != key.encode():
        send_dead_letter(outbox, msg, stage, "key_mismatch", f"key {msg.key!r} but record is for {key!r}", now_ms)
        return False
    owner = partition_for(msg.key, partitions)
    if owner != msg.partition:
        send_dead_letter(
            outbox, msg, stage, "misrouted_partition",
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
            send_dead_letter(outbox, msg, stage, "processing_error", repr(exc), now_ms)


async def send_ticks(topic: Any, codec: Codec, now_ms: int, partitions: int) -> None:
    """Wake every partition of ``topic``: time-based rules then run in the task owning the state."""
    value = codec.encode("ClockAdvanced", {"event_id": f"tick:{now_ms}", "event_time_ms": now_ms, "offset_ms": 0})
    for partition in range(partitions):
        await topic.send(key=None, value=value, partition=partition)


class WorkingSet(Generic[T]):
    """The keys one batch touched: each read from the table once, written back once."""

    def __init__(self, table: Any, parse: Callable[[dict[str, Any]], T], new: Callable[[str], T]) -> None:
        self._table, self._parse, self._new = table, parse, new
        self.entries: dict[str, tuple[Any, T]] = {}  # key -> (event to write under, working copy)

    def load(self, event: Any, key: str) -> T:
        if key in self.entries:
            value = self.entries[key][1]
        else:
            data = tables.read(self._table, event, key.encode())
            value = self._parse(data) if data else self._new(key)
        self.entries[key] = (event, value)
        return value


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
        send_dead_letter(outbox, msg, stage, "unexpected_event_type", f"{kind} on {spec.name}", now_ms)
        return None
    return kind, record
