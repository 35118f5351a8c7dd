"""Both wire formats, pinned by a recorded vector, and the Schema Registry wiring.

The vector - one fixed record, its Avro body written out by hand from the Avro specification, its
schema's parsing canonical form, the CRC-64-AVRO computed here from the specification's algorithm -
is independent of the codec: the codec must produce exactly these bytes in each format and read
each format back, the other's too. The registry-backed tests go through confluent-kafka's real
``SchemaRegistryClient`` against ``registry_stub`` (a protocol stub on 127.0.0.1, not a registry).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer
from fastavro.schema import to_parsing_canonical_form
from pydantic import ValidationError

from loadtest import events as ev
from streams.contract.codec import Codec, DecodeError, codec_for, default_codec, registered_text
from streams.contract.registry import BY_SHORT_NAME, EVENT_TYPES, SCHEMA_DIR
from streams.contract.schema_registry import SchemaRegistry, SchemaRegistryRefused, SchemaRegistryUnavailable
from streams.settings import Settings
from tests.conftest import free_port
from tests.unit.contract.registry_stub import StubState, registry_stub

RECORD = {
    "event_id": "a1",
    "event_time_ms": 300,
    "sku": "S",
    "warehouse_id": "WH-SH",
    "kind": "CORRECTION",
    "qty": -2,
    "reason": "",
}
# The Avro binary body of RECORD, field by field (strings: zig-zag length then UTF-8; ints and longs:
# zig-zag varints; enums: the symbol's index as an int).
BODY = bytes.fromhex(
    "04" "6131"  # event_id "a1"
    "d804"  # event_time_ms 300 -> zig-zag 600 -> varint d8 04
    "02" "53"  # sku "S"
    "0a" "57482d5348"  # warehouse_id "WH-SH"
    "04"  # kind CORRECTION, symbol 2
    "03"  # qty -2 -> zig-zag 3
    "00"  # reason ""
)  # fmt: skip
# The parsing canonical form of schemas/stock_adjusted.avsc (Avro specification: full names, only
# name/type/fields/symbols/..., in that order, no docs, defaults or logical types, no whitespace).
CANONICAL = (
    '{"name":"stockflow.StockAdjusted","type":"record","fields":['
    '{"name":"event_id","type":"string"},{"name":"event_time_ms","type":"long"},'
    '{"name":"sku","type":"string"},{"name":"warehouse_id","type":"string"},'
    '{"name":"kind","type":{"name":"stockflow.AdjustmentKind","type":"enum",'
    '"symbols":["RECEIPT","COUNT","CORRECTION","PRESALE_CAP"]}},'
    '{"name":"qty","type":"int"},{"name":"reason","type":"string"}]}'
)
STOCK_ADJUSTED = BY_SHORT_NAME["StockAdjusted"]


def crc64_avro(data: bytes) -> int:
    """The Avro specification's 64-bit Rabin fingerprint ("Schema Fingerprints"), written out here."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


SINGLE_OBJECT = b"\xc3\x01" + struct.pack("<Q", crc64_avro(CANONICAL.encode())) + BODY


def confluent_bytes(schema_id: int, body: bytes = BODY) -> bytes:
    return b"\x00" + struct.pack(">I", schema_id) + body


@pytest.fixture
def stub() -> Iterator[tuple[str, StubState]]:
    with registry_stub() as running:
        yield running


def _body(schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(schema), record)
    return buf.getvalue()


# ---- the recorded vector ----------------------------------------------------------------------------
def test_the_fingerprint_function_is_the_specifications() -> None:
    assert crc64_avro(b'"null"') == 0x63DD24E7CC258F8A  # the specification's own example


def test_the_vector_is_what_avro_writes() -> None:
    raw = json.loads(STOCK_ADJUSTED.schema_path.read_text(encoding="utf-8"))
    assert to_parsing_canonical_form(parse_schema(raw)) == CANONICAL
    assert _body(raw, RECORD) == BODY


def test_single_object_encoding_is_the_recorded_bytes() -> None:
    codec = Codec()
    assert codec.encode("StockAdjusted", RECORD) == SINGLE_OBJECT
    assert SINGLE_OBJECT.hex() == "c3012476b6e8ac858cef" "046131d80402530a57482d5348040300"  # fmt: skip
    event_type, record = codec.decode(SINGLE_OBJECT)
    assert (event_type, record) == (STOCK_ADJUSTED, RECORD)


def test_schema_registry_framing_is_the_recorded_bytes(stub: tuple[str, StubState]) -> None:
    url, state = stub
    codec = Codec(wire_format="confluent", registry=SchemaRegistry(url))
    schema_id = state.ids[(STOCK_ADJUSTED.name, registered_text(STOCK_ADJUSTED.schema_path))]
    expected = confluent_bytes(schema_id)
    assert codec.encode("StockAdjusted", RECORD) == expected
    assert codec.header("StockAdjusted") == expected[:5]
    assert codec.decode(expected) == (STOCK_ADJUSTED, RECORD)
    # What was registered is the schema file itself, docs and logical types kept for other languages.
    assert json.loads(state.schemas[schema_id]) == json.loads(STOCK_ADJUSTED.schema_path.read_text(encoding="utf-8"))


def test_each_format_reads_the_other(stub: tuple[str, StubState]) -> None:
    url, _ = stub
    single = Codec(registry=SchemaRegistry(url))  # writes single-object, reads registry frames too
    confluent = Codec(wire_format="confluent", registry=SchemaRegistry(url))
    placed = ev.order_placed("jd", "1001", [ev.line(1, "SKU-1", 2), ev.line(2, "SKU-2", 1)])
    for name, record in (("StockAdjusted", RECORD), ("OrderPlaced", placed)):
        framed, plain = confluent.encode(name, record), single.encode(name, record)
        assert framed[:1] == b"\x00" and plain[:2] == b"\xc3\x01"
        assert framed[5:] == plain[10:]  # one body, two headers
        for reader in (single, confluent, Codec(registry=SchemaRegistry(url))):
            assert reader.decode(framed)[1] == record
            assert reader.decode(plain)[1] == record


# ---- the registry: subjects, caching, ids it does not know ------------------------------------------
def test_subjects_are_record_full_names_and_registered_once(stub: tuple[str, StubState]) -> None:
    url, state = stub
    codec = Codec(wire_format="confluent", registry=SchemaRegistry(url))
    assert state.subjects() == {et.name for et in EVENT_TYPES}  # RecordNameStrategy, not <topic>-value
    assert len(state.requests) == len(EVENT_TYPES)
    reader = Codec(registry=SchemaRegistry(url))
    for n in range(300):
        reader.decode(codec.encode("StockAdjusted", {**RECORD, "event_id": f"a{n}"}))
    # No request per message: the writer knew its ids, the reader looked the one id up once.
    schema_id = int.from_bytes(codec.header("StockAdjusted")[1:], "big")
    assert state.requests[len(EVENT_TYPES) :] == [("GET", f"/schemas/ids/{schema_id}")]


def test_an_unknown_schema_id_is_refused_precisely_and_asked_about_once(stub: tuple[str, StubState]) -> None:
    url, state = stub
    with pytest.raises(DecodeError) as info:
        Codec().decode(confluent_bytes(7))
    assert info.value.reason == "unknown_schema_id" and "no schema registry" in info.value.detail
    codec = Codec(registry=SchemaRegistry(url))
    for _ in range(50):
        with pytest.raises(DecodeError) as info:
            codec.decode(confluent_bytes(4242))
        assert info.value.reason == "unknown_schema_id"
    assert state.requests == [("GET", "/schemas/ids/4242")]


def test_a_registered_schema_that_is_no_stockflow_event_is_refused(stub: tuple[str, StubState]) -> None:
    url, state = stub
    foreign = {"type": "record", "name": "Invoice", "namespace": "acme", "fields": [{"name": "n", "type": "int"}]}
    schema_id = state.add("acme.Invoice", json.dumps(foreign))
    with pytest.raises(DecodeError) as info:
        Codec(registry=SchemaRegistry(url)).decode(confluent_bytes(schema_id, _body(foreign, {"n": 1})))
    assert info.value.reason == "unknown_schema_id" and "acme.Invoice" in info.value.detail


def test_a_frame_shorter_than_its_header_is_a_bad_header() -> None:
    with pytest.raises(DecodeError) as info:
        Codec().decode(b"\x00\x00\x01")
    assert info.value.reason == "bad_header"


def test_an_old_version_registered_elsewhere_reads_into_the_current_one(stub: tuple[str, StubState]) -> None:
    url, state = stub
    old_path = SCHEMA_DIR / "history" / "reservation_decided.v1.avsc"
    old = json.loads(old_path.read_text(encoding="utf-8"))
    schema_id = state.add("stockflow.ReservationDecided", registered_text(old_path))
    record = {
        "event_id": "r1", "event_time_ms": 1, "order_id": "jd:1", "channel": "jd", "outcome": "REJECTED",
        "lines": [{"line_no": 1, "sku": "S", "qty": 1, "outcome": "REFUSED", "reason": "insufficient_stock"}],
        "placed_at_ms": 1, "sent_at_ms": 2,
    }  # fmt: skip
    event_type, back = Codec(registry=SchemaRegistry(url)).decode(confluent_bytes(schema_id, _body(old, record)))
    assert event_type.short_name == "ReservationDecided" and back == record


def test_a_newer_version_registered_elsewhere_reads_into_the_current_one(stub: tuple[str, StubState]) -> None:
    """A producer ahead of this release added a field with a default: the registry vouches for the schema,
    Avro schema resolution drops the field stockflow does not know yet."""
    url, state = stub
    newer = json.loads(STOCK_ADJUSTED.schema_path.read_text(encoding="utf-8"))
    newer["fields"].append({"name": "operator", "type": "string", "default": ""})
    schema_id = state.add(STOCK_ADJUSTED.subject, json.dumps(newer))
    data = confluent_bytes(schema_id, _body(newer, {**RECORD, "operator": "王芳"}))
    assert Codec(registry=SchemaRegistry(url)).decode(data) == (STOCK_ADJUSTED, RECORD)


# ---- the registry away or refusing ------------------------------------------------------------------
def test_an_unreachable_registry_is_not_the_messages_fault() -> None:
    """No answer is transient: not a DecodeError, so nothing is refused for it."""
    codec = Codec(registry=SchemaRegistry(f"http://127.0.0.1:{free_port()}", timeout_s=2, max_retries=0))
    with pytest.raises(SchemaRegistryUnavailable):
        codec.decode(confluent_bytes(5))
    assert codec.decode(SINGLE_OBJECT)[1] == RECORD  # single-object input never needs the registry


def test_a_registration_the_registry_refuses_stops_the_codec(stub: tuple[str, StubState]) -> None:
    url, state = stub
    state.refuse_subjects.add("stockflow.OrderPlaced")
    with pytest.raises(SchemaRegistryRefused, match="incompatible"):
        Codec(wire_format="confluent", registry=SchemaRegistry(url))


# ---- settings ---------------------------------------------------------------------------------------
def test_the_wire_format_is_a_setting(stub: tuple[str, StubState]) -> None:
    url, _ = stub
    assert codec_for(Settings(wire_format="single_object", schema_registry_url="")) is default_codec()
    codec = codec_for(Settings(wire_format="confluent", schema_registry_url=url))
    assert codec.wire_format == "confluent" and codec.encode("StockAdjusted", RECORD)[:1] == b"\x00"
    assert codec_for(Settings(wire_format="confluent", schema_registry_url=url)) is codec  # built once
    with pytest.raises(ValidationError, match="STOCKFLOW_SCHEMA_REGISTRY_URL"):
        Settings(wire_format="confluent", schema_registry_url="")
