"""Avro single-object encoding of every stockflow event.

Wire format (Avro specification, "Single object encoding"): the two marker bytes ``C3 01``, the
8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's parsing canonical form, then
the Avro binary body. Any Avro library in any language can produce it from a schema file alone,
and a reader finds the writer's schema by fingerprint, so schemas evolve without a registry
service: every version ever published is kept in ``schemas/`` or ``schemas/history/``.

Schemas are parsed once, when the codec is built; encode and decode do no parsing.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from streams.contract.reasons import Reason
from streams.contract.registry import EVENT_TYPES, EventType
from streams.errors import StockflowError

MARKER = b"\xc3\x01"
HEADER_LEN = 10


class DecodeError(StockflowError, ValueError):
    """A message that cannot be read; ``reason`` says why, in the contract's vocabulary."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class _Writer:
    event_type: EventType
    schema: Any  # parsed writer schema
    current: bool  # written with the current version: no resolution needed


def schema_fingerprint(parsed_schema: Any) -> bytes:
    """The 8 bytes of the single-object header, as the Avro specification defines them."""
    canonical = to_parsing_canonical_form(parsed_schema)
    # fastavro renders the 64-bit fingerprint as hex of its little-endian bytes.
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def _strip_logical_types(node: Any) -> Any:
    # Events carry times as epoch-millisecond ints end to end; the logicalType annotation is for
    # other languages' producers. It is not part of the canonical form, so fingerprints agree.
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


def _load(path: Path) -> Any:
    raw = json.loads(path.read_text(encoding="utf-8"))
    # The write hint lets fastavro skip per-record schema checks; fingerprints are computed from the
    # canonical form, which the hint does not change.
    return parse_schema(_strip_logical_types(raw), _write_hint=True)


class Codec:
    def __init__(self, event_types: tuple[EventType, ...] = EVENT_TYPES) -> None:
        self._current: dict[str, tuple[Any, bytes, EventType]] = {}
        self._writers: dict[bytes, _Writer] = {}
        for et in event_types:
            schema = _load(et.schema_path)
            fp = schema_fingerprint(schema)
            self._current[et.name] = (schema, MARKER + fp, et)
            self._current[et.short_name] = self._current[et.name]
            self._writers[fp] = _Writer(et, schema, current=True)
            for old in et.history_paths():
                old_schema = _load(old)
                self._writers.setdefault(schema_fingerprint(old_schema), _Writer(et, old_schema, False))

    def event_type(self, name: str) -> EventType:
        return self._current[name][2]

    def header(self, name: str) -> bytes:
        return self._current[name][1]

    def encode(self, name: str, record: Any) -> bytes:
        """Encode ``record`` with the current schema of event ``name`` (full or short name)."""
        schema, header, _ = self._current[name]
        buf = io.BytesIO()
        buf.write(header)
        try:
            schemaless_writer(buf, schema, record)
        except (TypeError, ValueError, KeyError, AttributeError, struct.error) as exc:
            raise ValueError(f"{name}: record does not fit the schema: {exc!r}") from exc
        return buf.getvalue()

    def encode_with(self, schema_path: Path, record: Any) -> bytes:
        """Encode with an explicit (possibly older) schema file, as an outside producer would."""
        schema = _load(schema_path)
        buf = io.BytesIO()
        buf.write(MARKER + schema_fingerprint(schema))
        schemaless_writer(buf, schema, record)
        return buf.getvalue()

    def decode(self, data: bytes | None) -> tuple[EventType, dict[str, Any]]:
        """Read one message; raise DecodeError with a precise reason if it cannot be read."""
        if not data:
            raise DecodeError(Reason.EMPTY_MESSAGE, "message has no value")
        if len(data) < HEADER_LEN or data[:2] != MARKER:
            raise DecodeError(
                Reason.BAD_HEADER,
                f"not Avro single-object encoding (starts {data[:4].hex() or 'empty'})",
            )
        writer = self._writers.get(data[2:HEADER_LEN])
        if writer is None:
            raise DecodeError(
                Reason.UNKNOWN_FINGERPRINT,
                f"no known schema has fingerprint {data[2:HEADER_LEN].hex()}",
            )
        body = io.BytesIO(data)
        body.seek(HEADER_LEN)
        reader_schema = None if writer.current else self._current[writer.event_type.name][0]
        try:
            record = schemaless_reader(body, writer.schema, reader_schema)
        except (EOFError, struct.error, IndexError) as exc:
            raise DecodeError(Reason.TRUNCATED, f"{writer.event_type.short_name}: {exc!r}") from exc
        except (ValueError, TypeError, UnicodeDecodeError, KeyError) as exc:
            raise DecodeError(Reason.MALFORMED_BODY, f"{writer.event_type.short_name}: {exc!r}") from exc
        if body.tell() != len(data):
            raise DecodeError(
                Reason.TRAILING_BYTES,
                f"{writer.event_type.short_name}: {len(data) - body.tell()} bytes after the record",
            )
        if not isinstance(record, dict):
            raise DecodeError(Reason.MALFORMED_BODY, "record is not an object")
        return writer.event_type, record


@lru_cache(maxsize=1)
def default_codec() -> Codec:
    """The process-wide codec: schemas are parsed once per process."""
    return Codec()
