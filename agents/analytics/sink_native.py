"""The embedded sink's fast path: the busiest events go to ClickHouse as the Avro bytes they are, and
ClickHouse decodes them and builds their rows.

Decoding an event in Python and building its rows cost the sink about 30 µs of CPU per event (a
profile of ``BatchWriter.write``); ClickHouse's Avro reader does the same work in about 3. On a box
the sink shares with the broker and the workers, that is CPU the order path gets back.

How: the messages of one topic and event type, all written with the current schema, become one Avro
object container file whose records are an envelope - the message's index in the group, partition,
offset and key, then the event's body as it arrived (single-object header cut off; no re-encoding).
ClickHouse reads it with ``file(..., 'Avro')`` in the statements below: one for ``events`` (the raw
log; its JSON payload is ClickHouse's ``toJSONString`` of the body, the same JSON the Python path
writes) and one per typed table, written here in SQL as ``agents.analytics.facts`` writes them in
Python. ``tests/unit/analytics/test_sink_native.py`` checks that both paths leave the very same rows.

Only what this module names takes the fast path, and only on the embedded backend (the Debian
ClickHouse server predates Avro input). Everything else, and any group ClickHouse refuses (an
unreadable body, a value a column cannot hold), goes through the Python path of
``agents.analytics.sink``, which finds the refused events one by one and says why. Event times
outside the window the sink accepts are found here first, by a query, and handed back refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from agents.analytics.facts import HEALTH_FACTORS, STAGES
from streams.contract.codec import HEADER_LEN, Codec
from streams.contract.registry import EventType

_EVENT_TIME = "toDateTime(intDiv(body.event_time_ms, 1000)), body.event_time_ms"  # event_time, event_time_ms
_TIME = f"body.event_id, {_EVENT_TIME}"
_TIME_COLUMNS = "event_id, event_time, event_time_ms"
_SYNC = os.urandom(16)  # the container's block marker: any 16 bytes, the same in its header and after its block

# Event type -> the typed rows it becomes, as (table, its columns, SELECT list over the envelope).
# An event type listed with no tables goes to ``events`` only. Mirrors agents.analytics.facts.
NATIVE: dict[str, tuple[tuple[str, str, str], ...]] = {
    "OrderStateChanged": ((
        "order_states",
        f"{_TIME_COLUMNS}, order_id, channel, state, previous_state, reason, warehouse_id, "
        + ", ".join(f"{s}_ms" for s in STAGES),
        f"{_TIME}, body.order_id, body.channel, body.state, body.previous_state, body.reason, body.warehouse_id, "
        + ", ".join(f"body.stage_times['{s}']" for s in STAGES),
    ),),
    "ReservationDecided": ((
        "reservations",
        f"{_TIME_COLUMNS}, order_id, channel, outcome, reasons, line_count, placed_at_ms",
        f"{_TIME}, body.order_id, body.channel, toString(body.outcome), "
        "arrayStringConcat(arraySort(arrayDistinct(arrayFilter(r -> r != '', arrayMap(ln -> ln.reason, body.lines)))), "
        "','), length(body.lines), body.placed_at_ms",
    ),),
    "HoldDecided": ((
        "hold_decisions",
        f"{_TIME_COLUMNS}, order_id, sku, action, outcome, reason, qty",
        f"{_TIME}, body.order_id, body.sku, toString(body.action), toString(body.outcome), body.reason, body.qty",
    ),),
    "StockLevel": ((
        "stock_levels",
        f"{_TIME_COLUMNS}, sku, on_hand, locked, sold, presale_reserved, available, paused",
        f"{_TIME}, body.sku, body.on_hand, body.locked, body.sold, body.presale_reserved, body.available, "
        "toUInt8(body.paused)",
    ),),
    "RoutingDecision": ((
        "routing_assignments",
        "event_id, event_time, event_time_ms, decision_id, order_id, channel, warehouse_id, split, line_count, "
        "distance_km, distance, sufficiency, on_time, cost, score",
        # A warehouse's scores: its last candidate entry (the Python path keeps the last one too).
        f"concat(body.event_id, ':', a.warehouse_id), {_EVENT_TIME}, body.event_id, body.order_id, body.channel, "
        "a.warehouse_id, toUInt8(body.split), "
        "length(a.line_nos), "
        + ", ".join(f"arrayLast(c -> c.warehouse_id = a.warehouse_id, body.candidates).{f}"
                    for f in ("distance_km", "distance", "sufficiency", "on_time", "cost", "score"))
        + " FROM {input} ARRAY JOIN body.assignments AS a",
    ),),
    "OrderHealthScored": ((
        "order_health",
        f"{_TIME_COLUMNS}, order_id, channel, customer_id, score, focus, focus_below, "
        + ", ".join(f"{f}_points" for f in HEALTH_FACTORS) + ", notes, paid_after_ms, return_count",
        f"{_TIME}, body.order_id, body.channel, body.customer_id, body.score, toUInt8(body.focus), body.focus_below, "
        + ", ".join(f"body.breakdown['{f}']" for f in HEALTH_FACTORS)
        + ", arrayStringConcat(body.notes, '; '), body.paid_after_ms, body.returns",
    ),),
    # Inputs and commands the dashboards read from the raw log alone.
    "OrderPlaced": (),
    "PaymentConfirmed": (),
    "WarehouseDispatched": (),
    "HoldCommand": (),
}


@dataclass
class Group:
    """Messages of one topic and event type, in the order they came, ready to be one Avro file."""

    topic: str
    event_type: EventType
    indexes: list[int] = field(default_factory=list)  # positions in the batch
    datums: list[bytes] = field(default_factory=list)


def native_type(codec: Codec, value: bytes | None) -> EventType | None:
    """The event type when the message may take the fast path: single-object framing, current schema,
    an event this module writes in SQL."""
    if not value:
        return None
    event_type = codec.current_type_of(value)
    return event_type if event_type is not None and event_type.short_name in NATIVE else None


def envelope_datum(n: int, partition: int, offset: int, key: bytes | None, value: bytes) -> bytes:
    """The envelope record's Avro bytes: index, partition, offset, key, the body as it arrived, and a
    16-byte mark. The bodies are not framed: a body with bytes missing or left over would shift every
    field after it, and the mark, read in the wrong place, says so (``probe``)."""
    k = key or b""
    return _long(n) + _long(partition) + _long(offset) + _long(len(k)) + k + value[HEADER_LEN:] + _SYNC


def fast_path_key(key: bytes | None) -> bool:
    """A key the fast path stores as the Python path would (ClickHouse's toValidUTF8 and Python's
    decoding with replacement differ on invalid bytes, so only ASCII keys take it)."""
    return key is None or key.isascii()


def container(event_type: EventType, datums: Sequence[bytes]) -> bytes:
    """One Avro object container file holding ``datums`` (one block, no compression)."""
    data = b"".join(datums)
    return b"".join((_header(event_type.schema_path), _long(len(datums)), _long(len(data)), data, _SYNC))


def probe(window_ms: tuple[int, int]) -> str:
    """The query that decides whether a group may be inserted as ClickHouse read it: one row with
    how many records it read, how many have their mark where it belongs, text that is not UTF-8 (the
    Python path refuses it as malformed), event times of 0 (the Python path stores those at their
    broker timestamp, which the envelope leaves out), and the (index, time) of each event time
    outside ``window_ms``."""
    mark = _SYNC.hex()
    return (f"SELECT count() AS records, countIf(mark != unhex('{mark}')) AS misframed, uniqExact(n) AS indexes, "
            "max(n) AS last_index, countIf(NOT isValidUTF8(toJSONString(body))) AS not_utf8, "
            "countIf(body.event_time_ms = 0) AS zero_times, "
            f"groupArrayIf((n, body.event_time_ms), NOT ({_in_window(window_ms)})) AS out_of_window "
            "FROM {input}")  # fmt: skip


def readable(found: dict[str, Any], records: int) -> bool:
    """Whether ClickHouse read the group as it was written (``probe``'s answer), record for record."""
    return (found["records"] == found["indexes"] == records and found["last_index"] == records - 1
            and found["misframed"] == 0 and found["not_utf8"] == 0 and found["zero_times"] == 0)  # fmt: skip


def _in_window(window_ms: tuple[int, int]) -> str:
    return f"body.event_time_ms >= {int(window_ms[0])} AND body.event_time_ms < {int(window_ms[1])}"


def statements(event_type: EventType, now_s: int, window_ms: tuple[int, int]) -> list[str]:
    """The inserts for one group, once ``probe`` found it readable: ``events``, then each typed table,
    events outside ``window_ms`` left out. ``{input}`` stands for the group's file; the topic is bound
    as ``{topic:String}``."""
    name = event_type.short_name
    in_window = _in_window(window_ms)
    sql = [
        "INSERT INTO events (topic, event_type, event_id, key, partition, offset, event_time, event_time_ms, "
        f"ingested_at, payload) SELECT {{topic:String}}, '{name}', body.event_id, toValidUTF8(key), partition, "
        f"offset, {_EVENT_TIME}, toDateTime({int(now_s)}), "
        f"toJSONString(body) FROM {{input}} WHERE {in_window}",
    ]
    for table, columns, select in NATIVE[name]:
        source = "" if "FROM {input}" in select else " FROM {input}"
        sql.append(f"INSERT INTO {table} ({columns}) SELECT {select}{source} WHERE {in_window}")
    return sql


def _long(n: int) -> bytes:
    """Avro's zig-zag varint."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _plain(schema: Any) -> Any:
    """The schema without logical types and docs: timestamps stay the longs the Python path stores."""
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if k not in ("logicalType", "doc", "default")}
    if isinstance(schema, list):
        return [_plain(s) for s in schema]
    return schema


@cache
def envelope_schema(schema_path: Path) -> bytes:
    body = _plain(json.loads(schema_path.read_text(encoding="utf-8")))
    envelope = {"type": "record", "name": "SinkEnvelope", "namespace": "stockflow.sink", "fields": [
        {"name": "n", "type": "long"}, {"name": "partition", "type": "long"}, {"name": "offset", "type": "long"},
        {"name": "key", "type": "bytes"}, {"name": "body", "type": body},
        {"name": "mark", "type": {"type": "fixed", "name": "Mark", "size": len(_SYNC)}}]}  # fmt: skip
    return json.dumps(envelope, separators=(",", ":")).encode()


@cache
def _header(schema_path: Path) -> bytes:
    """The container's header for one event type: magic, metadata (the envelope schema), sync marker."""
    entries = {b"avro.schema": envelope_schema(schema_path), b"avro.codec": b"null"}
    meta = b"".join(_long(len(k)) + k + _long(len(v)) + v for k, v in entries.items())
    return b"Obj\x01" + _long(len(entries)) + meta + _long(0) + _SYNC
