"""What every keyed, table-owning agent does around its rules: routing checks, ticks, batches."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from streams.codec import Codec
from streams.deadletter import send_dead_letter
from streams.outbox import Outbox
from streams.tables import partition_for

log = logging.getLogger(__name__)


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
