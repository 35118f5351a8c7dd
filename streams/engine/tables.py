"""Reading and writing Faust tables from batches of events.

Agents take events in batches and write each changed key once per batch (one changelog record
per key, not per event). Faust routes a table write to the partition of "the current event"; in a
batch there is none, so each read and write runs under the event that touched the key - always an
event of the partition that owns the key, because every input of a table is keyed and partitioned
like it (murmur2, see ``streams.contract.keys.partition_for``). Values are orjson documents.
"""

from __future__ import annotations

import weakref
from typing import Any

import orjson
from faust.streams import _current_event

# Keys an agent keeps for its own bookkeeping (input positions), never a business key.
RESERVED_PREFIX = b"\x00"


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


def local_items(table: Any) -> list[tuple[bytes, dict[str, Any]]]:
    """Every key this worker holds (its assigned partitions), for start-up scans."""
    return [(k, orjson.loads(v)) for k, v in table.items() if v and not k.startswith(RESERVED_PREFIX)]


def delete(table: Any, event: Any, key: bytes) -> None:
    token = _current_event.set(weakref.ref(event))
    try:
        if key in table:
            del table[key]
    finally:
        _current_event.reset(token)
