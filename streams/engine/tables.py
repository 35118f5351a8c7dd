"""Faust tables and topics for the low-rate agents that stay on Faust (the webhook notifier).

Faust routes a table write to the partition of "the current event"; an agent that takes events in
batches has none, so each read and write runs under the event that touched the key - always an
event of the partition that owns the key, because every input of a table is keyed and partitioned
like it (murmur2, see ``streams.contract.keys.partition_for``). Values are orjson documents.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from faust.streams import _current_event
from faust.types import TP

from streams.contract.topics import TopicSpec
from streams.engine.changelog import ensure_compacted
from streams.settings import Settings


@dataclass(frozen=True)
class _Message:
    topic: str
    partition: int


class PartitionEvent:
    """Stands in for "the current event" where no event of the partition is at hand (a sender, a sweep):
    Faust files a table write under that event's partition."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = _Message(topic, partition)


@contextlib.contextmanager
def under(event: Any) -> Iterator[None]:
    """Table reads and writes inside run as if ``event`` were being processed."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def read_raw(table: Any, event: Any, key: bytes) -> bytes | None:
    with under(event):
        raw: bytes | None = table.get(key)
    return raw


def read(table: Any, event: Any, key: bytes) -> dict[str, Any] | None:
    raw = read_raw(table, event, key)
    return orjson.loads(raw) if raw else None


def write_raw(table: Any, event: Any, key: bytes, raw: bytes) -> bytes:
    with under(event):
        table[key] = raw
    return raw


def delete(table: Any, event: Any, key: bytes) -> None:
    with under(event):
        table.pop(key, None)


def owned_rows(table: Any, partition: int, after: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
    """Up to ``limit`` rows of one partition of a RocksDB-backed table, in key order after ``after``;
    none once this worker no longer actively owns the partition.

    Faust iterates a table's partitions as one; a sweep that deletes must know each row's partition to
    write the tombstone there, and Faust keeps that only as which partition's RocksDB folder holds the
    row, so this reads the store's folders (faust-streaming is pinned; the notifier's tests cover it).
    A chunk is read whole and no iterator is kept, so a caller may await between chunks without
    holding a folder Faust closes and reopens in a rebalance.
    """
    store = table.data
    if TP(table.changelog_topic_name, partition) not in table.app.assignor.assigned_actives():
        return []
    db = store._dbs.get(partition)  # noqa: SLF001 - see above
    if db is None:
        return []
    rows = []
    for key, value in db.items(from_key=after):
        if key in (after, store.offset_key):
            continue
        rows.append((key, value))
        if len(rows) >= limit:
            break
    return rows


def owned_partitions(table: Any) -> list[int]:
    """The partitions of ``table`` this worker actively owns now."""
    topic = table.changelog_topic_name
    return sorted(tp.partition for tp in table.app.assignor.assigned_actives() if tp.topic == topic)


def write(table: Any, event: Any, key: bytes, value: dict[str, Any]) -> None:
    write_raw(table, event, key, orjson.dumps(value))


def raw_topic(app: Any, settings: Settings, *specs: TopicSpec) -> Any:
    """A Faust topic over the contract topics ``specs``, carrying bytes the codec reads."""
    return app.topic(*(settings.topic(s.name) for s in specs), key_serializer="raw", value_serializer="raw")


def ensure_table_changelogs(app: Any, settings: Settings) -> None:
    """Create the Faust tables' changelog topics before the Faust shell starts.

    Faust declares them itself as it starts, but its consumer may fetch metadata before the new topics
    are served: the table then sees a changelog of 0 partitions and the first write of the agent that
    owns it fails with ``PartitionsMismatch``, which crashed the webhook notifier (no alert went out)
    until its metadata was refreshed minutes later. Made first, they are in the shell's first metadata.
    """
    topics = {table.changelog_topic.get_topic_name(): dict(table.extra_topic_configs or {})
              for table in app.tables.values()}  # fmt: skip
    if topics:  # a worker without a webhook has no tables
        ensure_compacted(settings, topics)
