"""Avro encoding of every stockflow event, in both wire formats Avro users meet on Kafka.

- **Single-object encoding** (Avro specification): the two marker bytes ``C3 01``, the 8-byte
  little-endian CRC-64-AVRO fingerprint of the writer schema's parsing canonical form, then the
  Avro binary body. Any Avro library in any language produces it from a schema file alone, and a
  reader finds the writer's schema by fingerprint, so schemas evolve without a registry service:
  every version ever published is kept in ``schemas/`` or ``schemas/history/``.
- **Schema Registry framing** (Confluent's wire format): byte ``00``, the 4-byte big-endian id a
  Confluent-compatible Schema Registry gave the writer schema, then the same body: what Confluent's
  serializers, Kafka Connect and ClickHouse's Kafka engine read and write. Subjects are the record's
  full name (RecordNameStrategy, see ``streams.contract.schema_registry``).

``decode`` reads both, told apart by the first byte. ``encode`` writes the format the codec was
built for (``STOCKFLOW_WIRE_FORMAT``; ``codec_for(settings)``). Schemas are parsed once, when the
codec is built (current schemas also compiled into writers, ``streams.contract.avro_writer``), and a
codec that writes registry framing registers its current schemas then: encoding and decoding a known
schema parse nothing and never wait on the network. A schema id the codec has not seen is looked up
in the registry once and remembered, the answer "unknown" too.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import SchemaParseException, fingerprint, to_parsing_canonical_form

from streams.contract.avro_writer import Unsupported, Writer, compile_writer
from streams.contract.reasons import Reason
from streams.contract.registry import EVENT_TYPES, EventType
from streams.contract.schema_registry import SchemaRegistry
from streams.errors import StockflowError

if TYPE_CHECKING:
    from streams.settings import Settings

WireFormat = Literal["single_object", "confluent"]

MARKER = b"\xc3\x01"
HEADER_LEN = 10
CONFLUENT_MAGIC = b"\x00"
CONFLUENT_HEADER_LEN = 5
# Schema ids a registry said it does not know, remembered so a stream of such messages costs one lookup;
# past this many the memory is cleared (a registry that learns an id later is then asked again).
UNKNOWN_IDS_KEPT = 10_000
LONG_VARINT_BITS = 70  # an Avro long takes at most 10 varint bytes of 7 bits


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


def confluent_header(schema_id: int) -> bytes:
    """The 5 bytes of the Schema Registry frame: magic byte 0, the schema id big-endian."""
    return CONFLUENT_MAGIC + struct.pack(">I", schema_id)


def _strip_logical_types(node: Any) -> Any:
    # Events carry times as epoch-millisecond ints end to end; the logicalType annotation is for
    # other languages' producers. It is not part of the canonical form, so fingerprints agree.
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


def _parse(raw: Any) -> Any:
    # The write hint lets fastavro skip per-record schema checks; fingerprints are computed from the
    # canonical form, which the hint does not change.
    return parse_schema(_strip_logical_types(raw), _write_hint=True)


def _load(path: Path) -> Any:
    return _parse(json.loads(path.read_text(encoding="utf-8")))


def _fastavro_write(parsed: Any, record: Any, header: bytes) -> bytes:
    buf = io.BytesIO()
    buf.write(header)
    schemaless_writer(buf, parsed, record)
    return buf.getvalue()


def _encoder(raw: Any, parsed: Any) -> Writer:
    """The schema's compiled writer (``streams.contract.avro_writer``; ``raw``: the schema file's JSON), or
    fastavro's with ``parsed`` for a schema it does not compile."""
    try:
        return compile_writer(raw)
    except Unsupported:
        return lambda record, header: _fastavro_write(parsed, record, header)


def registered_text(path: Path) -> str:
    """A schema file as it is registered: the file's JSON, logical types and docs included, for other
    languages' readers; compact, so every process registers the very same text."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    return json.dumps(raw, separators=(",", ":"), ensure_ascii=False)


class Codec:
    """Encodes in ``wire_format``; decodes both. ``registry`` resolves Schema Registry ids (needed to write them)."""

    def __init__(
        self,
        event_types: tuple[EventType, ...] = EVENT_TYPES,
        wire_format: WireFormat = "single_object",
        registry: SchemaRegistry | None = None,
    ) -> None:
        if wire_format == "confluent" and registry is None:
            raise ValueError("the confluent wire format needs a schema registry for its schema ids")
        self.wire_format = wire_format
        self._registry = registry
        # Full and short event name -> (current schema, the header encode writes, event type).
        self._current: dict[str, tuple[Any, bytes, EventType]] = {}
        # Single-object header (marker and fingerprint) -> writer: decoding a known schema is one lookup.
        self._writers: dict[bytes, _Writer] = {}
        # Schema id bytes -> writer, learnt from the registry (registered here, or looked up once).
        self._by_id: dict[bytes, _Writer] = {}
        self._unknown_ids: set[bytes] = set()
        # Full and short event name -> the compiled writer of its current schema, and the header it writes.
        self._encoders: dict[str, tuple[Writer, bytes]] = {}
        for et in event_types:
            raw = json.loads(et.schema_path.read_text(encoding="utf-8"))
            schema = _parse(raw)
            header = MARKER + schema_fingerprint(schema)
            current = _Writer(et, schema, current=True)
            self._writers[header] = current
            if registry is not None and wire_format == "confluent":
                header = confluent_header(registry.register(et.subject, registered_text(et.schema_path)))
                self._by_id[header[1:]] = current
            self._current[et.name] = (schema, header, et)
            self._current[et.short_name] = self._current[et.name]
            self._encoders[et.name] = self._encoders[et.short_name] = (_encoder(raw, schema), header)
            for old in et.history_paths():
                old_schema = _load(old)
                self._writers.setdefault(MARKER + schema_fingerprint(old_schema), _Writer(et, old_schema, False))

    def event_type(self, name: str) -> EventType:
        return self._current[name][2]

    def current_type_of(self, data: bytes) -> EventType | None:
        """The event type of a single-object message written with its current schema, from the header
        alone (no decoding); None for anything else."""
        writer = self._writers.get(data[:HEADER_LEN])
        return writer.event_type if writer is not None and writer.current else None

    def header(self, name: str) -> bytes:
        """The header ``encode`` writes for event ``name``: single-object, or the Schema Registry frame."""
        return self._current[name][1]

    def encode(self, name: str, record: Any) -> bytes:
        """Encode ``record`` with the current schema of event ``name`` (full or short name)."""
        write, header = self._encoders[name]
        try:
            return write(record, header)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError, struct.error) as exc:
            raise ValueError(f"{name}: record does not fit the schema: {exc!r}") from exc

    def encode_with(self, schema_path: Path, record: Any) -> bytes:
        """Encode with an explicit (possibly older) schema file, as an outside producer would (single-object)."""
        schema = _load(schema_path)
        return _fastavro_write(schema, record, MARKER + schema_fingerprint(schema))

    def decode(self, data: bytes | None) -> tuple[EventType, dict[str, Any]]:
        """Read one message in either format; raise DecodeError with a precise reason if it cannot be read.

        Raises ``SchemaRegistryUnavailable`` (not a DecodeError: the message is not at fault) when a new
        schema id must be looked up and the registry does not answer."""
        if not data:
            raise DecodeError(Reason.EMPTY_MESSAGE, "message has no value")
        writer = self._writers.get(data[:HEADER_LEN])
        if writer is not None:
            start = HEADER_LEN
        elif data[0] == 0:
            writer = self._registry_writer(data)
            start = CONFLUENT_HEADER_LEN
        else:
            raise _header_error(data)
        body = io.BytesIO(data)
        body.seek(start)
        reader_schema = None if writer.current else self._current[writer.event_type.name][0]
        try:
            record = schemaless_reader(body, writer.schema, reader_schema)
        except (EOFError, struct.error, IndexError) as exc:
            raise DecodeError(Reason.TRUNCATED, f"{writer.event_type.short_name}: {exc!r}") from exc
        except (ValueError, TypeError, UnicodeDecodeError, KeyError, SchemaResolutionError) as exc:
            raise DecodeError(Reason.MALFORMED_BODY, f"{writer.event_type.short_name}: {exc!r}") from exc
        if body.tell() != len(data):
            raise DecodeError(
                Reason.TRAILING_BYTES,
                f"{writer.event_type.short_name}: {len(data) - body.tell()} bytes after the record",
            )
        if not isinstance(record, dict):
            raise DecodeError(Reason.MALFORMED_BODY, "record is not an object")
        return writer.event_type, record

    # ---- Schema Registry frames whose id is not known yet ------------------------------------------
    def _registry_writer(self, data: bytes) -> _Writer:
        if len(data) < CONFLUENT_HEADER_LEN:
            raise DecodeError(Reason.BAD_HEADER, f"shorter than the Schema Registry header ({data.hex()})")
        id_bytes = data[1:CONFLUENT_HEADER_LEN]
        writer = self._by_id.get(id_bytes)
        if writer is None:
            writer = self._look_up(id_bytes)
            self._by_id[id_bytes] = writer
        return writer

    def _look_up(self, id_bytes: bytes) -> _Writer:
        schema_id = int.from_bytes(id_bytes, "big")
        if self._registry is None:
            raise DecodeError(
                Reason.UNKNOWN_SCHEMA_ID,
                f"schema id {schema_id}: no schema registry is configured (STOCKFLOW_SCHEMA_REGISTRY_URL)",
            )
        if id_bytes in self._unknown_ids:
            raise DecodeError(Reason.UNKNOWN_SCHEMA_ID, f"the schema registry knows no schema id {schema_id}")
        text = self._registry.schema_text(schema_id)
        if text is None:
            if len(self._unknown_ids) >= UNKNOWN_IDS_KEPT:
                self._unknown_ids.clear()
            self._unknown_ids.add(id_bytes)
            raise DecodeError(Reason.UNKNOWN_SCHEMA_ID, f"the schema registry knows no schema id {schema_id}")
        try:
            schema = _parse(json.loads(text))
        except (ValueError, TypeError, KeyError, SchemaParseException) as exc:
            raise DecodeError(Reason.UNKNOWN_SCHEMA_ID, f"schema id {schema_id} is no Avro schema: {exc!r}") from exc
        known = self._writers.get(MARKER + schema_fingerprint(schema))
        if known is not None:
            return known
        name = schema.get("name") if isinstance(schema, dict) and schema.get("type") == "record" else None
        entry = self._current.get(name) if isinstance(name, str) else None
        if entry is None:
            raise DecodeError(Reason.UNKNOWN_SCHEMA_ID, f"schema id {schema_id} is {name or 'not a record'}, "
                                                        "no stockflow event")  # fmt: skip
        # A version of a stockflow event this release does not ship (another producer's newer one, say): the
        # registry vouched for it, and Avro schema resolution reads it into the current version.
        return _Writer(entry[2], schema, current=False)


def _header_error(data: bytes) -> DecodeError:
    if data[:2] == MARKER and len(data) >= HEADER_LEN:
        return DecodeError(Reason.UNKNOWN_FINGERPRINT, f"no known schema has fingerprint {data[2:HEADER_LEN].hex()}")
    return DecodeError(
        Reason.BAD_HEADER,
        f"neither single-object encoding nor a Schema Registry frame (starts {data[:4].hex() or 'empty'})",
    )


def event_id_of(data: bytes | None) -> str:
    """The event id a stockflow message carries, read without knowing its schema; "" when ``data`` is no
    stockflow frame or too short to hold one.

    Every stockflow event's first field is its ``event_id`` string (a contract rule
    ``tests/unit/contract`` holds every schema to), so the id is the Avro string right after either
    header: a zig-zag varint length, then that many UTF-8 bytes. What reads a dead letter's original bytes
    (the sink) learns the id this way even for a message whose schema it cannot resolve."""
    if not data:
        return ""
    if data[:2] == MARKER:
        pos = HEADER_LEN
    elif data[:1] == CONFLUENT_MAGIC:
        pos = CONFLUENT_HEADER_LEN
    else:
        return ""
    zigzag = shift = 0
    while pos < len(data) and shift < LONG_VARINT_BITS:
        byte = data[pos]
        pos += 1
        zigzag |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    else:
        return ""
    length = (zigzag >> 1) ^ -(zigzag & 1)
    if length < 0 or pos + length > len(data):
        return ""
    try:
        return data[pos:pos + length].decode("utf-8")
    except UnicodeDecodeError:
        return ""


def codec_for(settings: Settings) -> Codec:
    """The process-wide codec for ``settings``: it writes ``STOCKFLOW_WIRE_FORMAT`` and resolves Schema
    Registry ids at ``STOCKFLOW_SCHEMA_REGISTRY_URL``. Built (and, writing confluent, registered) once."""
    return _shared_codec(settings.wire_format, settings.schema_registry_url)


def default_codec() -> Codec:
    """The process-wide codec of the default settings: single-object encoding, no registry."""
    return _shared_codec("single_object", "")


@lru_cache(maxsize=4)
def _shared_codec(wire_format: WireFormat, registry_url: str) -> Codec:
    registry = SchemaRegistry(registry_url) if registry_url else None
    return Codec(wire_format=wire_format, registry=registry)
