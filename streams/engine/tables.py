"""Faust tables and topics for the low-rate agents that stay on Faust (the webhook notifier).

Faust routes a table write to the partition of "the current event"; an agent that takes events in
batches has none, so each read and write runs under the event that touched the key - always an
event of the partition that owns the key, because every input of a table is keyed and partitioned
like it (murmur2, see ``streams.contract.keys.partition_for``). Values are orjson documents.
"""

from __future__ import annotations

import weakref
from typing import Any

import orjson
from faust.streams import _current_event

from streams.contract.topics import TopicSpec
from streams.engine.changelog import ensure_compacted
from streams.settings import Settings


def read_raw(table: Any, event: Any, key: bytes) -> bytes | None:
    token = _current_event.set(weakref.ref(event))
    try:
        raw: bytes | None = table.get(key)
    finally:
        _current_event.reset(token)
    return raw


def read(table: Any, event: Any, key: bytes) -> dict[str, Any] | None:
    raw = read_raw(table, event, key)
    return orjson.loads(raw) if raw else None


def write_raw(table: Any, event: Any, key: bytes, raw: bytes) -> bytes:
    token = _current_event.set(weakref.ref(event))
    try:
        table[key] = raw
    finally:
        _current_event.reset(token)
    return raw


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
