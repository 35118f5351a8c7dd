"""Compiled Avro writers: fastavro's bytes exactly, on every schema stockflow has ever published."""

from __future__ import annotations

import io
import json
import random
import string
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

from streams.contract.avro_writer import Unsupported, compile_writer, write_long
from streams.contract.codec import Codec, _encoder, default_codec
from streams.contract.registry import EVENT_TYPES

SCHEMA_FILES = sorted({p for et in EVENT_TYPES for p in (et.schema_path, *et.history_paths())})
RECORDS_PER_SCHEMA = 60
COMPLEX = ("record", "enum", "array", "map")


def fastavro_bytes(schema: Any, record: Any) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(schema), record)
    return buf.getvalue()


class RandomRecords:
    """Records that fit a schema, with the edges of each type: empty and long strings and
    collections, 64-bit extremes, non-ASCII text, fields left out where the schema has a default."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.named: dict[str, Any] = {}

    def value(self, schema: Any) -> Any:  # noqa: C901, PLR0912
        rng = self.rng
        if isinstance(schema, list):
            return self.value(rng.choice(schema))
        if isinstance(schema, str) and schema in self.named:
            return self.value(self.named[schema])
        kind = schema["type"] if isinstance(schema, dict) else schema
        if isinstance(schema, dict) and kind in ("record", "enum"):
            self.named[schema["name"]] = schema
        if isinstance(kind, (dict, list)) or (isinstance(schema, dict) and kind not in COMPLEX):
            return self.value(kind)
        if kind == "null":
            return None
        if kind == "boolean":
            return rng.random() < 0.5
        if kind in ("int", "long"):
            top = 31 if kind == "int" else 63
            return rng.choice([0, 1, -1, 63, 64, -65, 8191, 8192, -8193, 2**top - 1, -(2**top),
                               rng.randint(-(2**top), 2**top - 1), 1_795_738_145_838])  # fmt: skip
        if kind == "double":
            return rng.choice([0.0, -1.5, 1e300, rng.uniform(-1e6, 1e6), 3])
        if kind == "string":
            length = rng.choice([0, 1, 5, 40, 200, 9000])
            return "".join(rng.choice(string.ascii_letters + "仓库é ") for _ in range(length))
        if kind == "bytes":
            return rng.randbytes(rng.choice([0, 3, 300]))
        if kind == "enum":
            return rng.choice(schema["symbols"])
        if kind == "array":
            return [self.value(schema["items"]) for _ in range(rng.choice([0, 1, 3]))]
        if kind == "map":
            return {f"k{i}": self.value(schema["values"]) for i in range(rng.choice([0, 1, 4]))}
        record = {}
        for field in schema["fields"]:
            if "default" in field and rng.random() < 0.2:
                continue  # left out: the default is written
            record[field["name"]] = self.value(field["type"])
        return record


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_schema_compiles_and_writes_what_fastavro_writes(path: Path) -> None:
    schema = json.loads(path.read_text(encoding="utf-8"))
    write = compile_writer(schema)
    records = RandomRecords(random.Random(path.name))
    for _ in range(RECORDS_PER_SCHEMA):
        record = records.value(schema)
        assert write(record, b"HDR") == b"HDR" + fastavro_bytes(schema, record)


@pytest.mark.parametrize("n", [0, 1, -1, 63, -64, 64, 8191, 8192, -8193, 2**31, -(2**31), 2**63 - 1, -(2**63),
                               1_795_738_145_838, -1_795_738_145_838])  # fmt: skip
def test_longs_are_zigzag_varints(n: int) -> None:
    assert write_long(n) == fastavro_bytes("long", n)


@pytest.mark.parametrize("n", [2**63, -(2**63) - 1])
def test_a_long_past_64_bits_is_refused(n: int) -> None:
    with pytest.raises(OverflowError):
        write_long(n)


ADJUSTMENT = {"event_id": "x", "event_time_ms": 1, "sku": "S", "warehouse_id": "W", "qty": 1, "kind": "RECEIPT"}


@pytest.mark.parametrize(
    ("record", "why"),
    [
        ({"event_id": "x"}, "a field with no default is missing"),
        ({**ADJUSTMENT, "event_time_ms": "soon"}, "a string where a long goes"),
        ({**ADJUSTMENT, "event_time_ms": 2**64}, "a long past 64 bits"),
        ({**ADJUSTMENT, "kind": "NOT_A_KIND"}, "a symbol the enum does not have"),
        ({**ADJUSTMENT, "event_id": None}, "None where a string goes"),
        ("not a record", "not a mapping"),
    ],
)
def test_a_record_that_does_not_fit_is_refused_by_the_codec(record: Any, why: str) -> None:
    codec = Codec()
    assert codec.decode(codec.encode("StockAdjusted", ADJUSTMENT))[1] == {**ADJUSTMENT, "reason": ""}
    with pytest.raises(ValueError, match="record does not fit the schema"):
        codec.encode("StockAdjusted", record)


def test_a_missing_field_with_a_default_is_written_as_the_default() -> None:
    schema = {"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "string"}, {"name": "b", "type": "long", "default": 7},
        {"name": "c", "type": {"type": "map", "values": "long"}, "default": {}},
        {"name": "d", "type": ["null", "bytes"], "default": None}]}  # fmt: skip
    assert compile_writer(schema)({"a": "x"}, b"") == fastavro_bytes(schema, {"a": "x", "b": 7, "c": {}, "d": None})


@pytest.mark.parametrize("schema", [
    "float",
    {"type": "fixed", "name": "F", "size": 4},
    ["string", "long"],
    {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]},
])  # fmt: skip
def test_what_it_does_not_compile_is_said(schema: Any) -> None:
    with pytest.raises(Unsupported):
        compile_writer(schema)


def test_the_codec_keeps_fastavro_for_a_schema_it_cannot_compile() -> None:
    schema = {"type": "record", "name": "Reading", "fields": [{"name": "value", "type": "float"}]}
    write = _encoder(schema, parse_schema(schema))
    assert write({"value": 1.5}, b"H") == b"H" + fastavro_bytes(schema, {"value": 1.5})


ODD_VALUES = [
    ("long", 1.5), ("long", 1.0), ("long", True), ("long", "1"), ("long", None), ("long", 2**63),
    ("int", 2.0), ("int", 2**40), ("string", b"abc"), ("string", 1), ("string", None),
    ("double", 1), ("double", "1.5"), ("double", None), ("boolean", 0), ("boolean", "x"), ("boolean", None),
    ("bytes", "abc"), ("bytes", bytearray(b"x")), ("bytes", None),
    ({"type": "enum", "name": "E", "symbols": ["A", "B"]}, "X"),
    ({"type": "enum", "name": "E", "symbols": ["A", "B"]}, None),
    ({"type": "array", "items": "long"}, (1, 2)), ({"type": "array", "items": "long"}, None),
    ({"type": "array", "items": "long"}, "ab"), ({"type": "map", "values": "long"}, None),
    ({"type": "map", "values": "long"}, [("a", 1)]),
]  # fmt: skip


@pytest.mark.parametrize(("field_type", "value"), ODD_VALUES)
def test_a_value_of_another_type_is_taken_or_refused_as_fastavro_does(field_type: Any, value: Any) -> None:
    """What producers hand in by mistake: a whole float in a long is its integer, None in a list is refused.
    One difference on purpose: a fractional float in a long (19.99 fen) is refused, fastavro truncates it."""
    schema = {"type": "record", "name": "R", "fields": [{"name": "f", "type": field_type}]}
    try:
        expected: Any = fastavro_bytes(schema, {"f": value})
    except Exception:  # noqa: BLE001 - any refusal: the codec reports every one as ValueError
        expected = "refused"
    if field_type in ("int", "long") and isinstance(value, float) and not value.is_integer():
        expected = "refused"
    try:
        written: Any = compile_writer(schema)({"f": value}, b"")
    except Exception:  # noqa: BLE001
        written = "refused"
    assert written == expected


def test_a_fractional_amount_is_refused_not_truncated() -> None:
    """Changed on purpose: a payment of 19.99 fen handed to the SDK was written as 19, as fastavro does."""
    codec = default_codec()
    paid = {"event_id": "paid:jd:1", "event_time_ms": 1_794_326_400_000, "channel": "jd", "channel_order_id": "1",
            "payment_id": "P", "amount_fen": 19.99, "balance": False}  # fmt: skip
    with pytest.raises(ValueError, match="whole"):
        codec.encode("PaymentConfirmed", paid)
    assert codec.decode(codec.encode("PaymentConfirmed", {**paid, "amount_fen": 1999.0}))[1]["amount_fen"] == 1999
