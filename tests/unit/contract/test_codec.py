"""The wire format: Avro single-object encoding, schema evolution, precise decode errors."""

from __future__ import annotations

import io
import json

import pytest
from fastavro import parse_schema, schemaless_writer

from loadtest import events as ev
from streams.contract.codec import (
    HEADER_LEN,
    MARKER,
    Codec,
    DecodeError,
    confluent_header,
    event_id_of,
    schema_fingerprint,
)
from streams.contract.registry import EVENT_TYPES, SCHEMA_DIR


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


def test_fingerprint_matches_the_avro_specification() -> None:
    # The spec's CRC-64-AVRO of the schema "null" is 0x63dd24e7cc258f8a, sent little-endian.
    assert schema_fingerprint(parse_schema("null")) == bytes.fromhex("8a8f25cce724dd63")


def test_every_registered_schema_parses_and_round_trips(codec: Codec) -> None:
    record = ev.order_placed("jd", "1001", [ev.line(1, "SKU-1", 2), ev.line(2, "SKU-2", 1)])
    data = codec.encode("OrderPlaced", record)
    assert data[:2] == MARKER
    event_type, back = codec.decode(data)
    assert event_type.short_name == "OrderPlaced"
    assert back == record
    assert len({codec.header(e.name) for e in EVENT_TYPES}) == len(EVENT_TYPES)


def test_outside_producer_with_only_the_schema_file_is_readable(codec: Codec) -> None:
    """What a Java/Go producer does: header from the schema file, body with any Avro library."""
    raw = json.loads((SCHEMA_DIR / "stock_adjusted.avsc").read_text())
    schema = parse_schema(raw)
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + schema_fingerprint(schema))
    schemaless_writer(
        buf,
        schema,
        {
            "event_id": "a1",
            "event_time_ms": 5,
            "sku": "S",
            "warehouse_id": "WH-SH",
            "kind": "COUNT",
            "qty": 3,
            "reason": "",
        },
    )
    _, record = codec.decode(buf.getvalue())
    assert record["kind"] == "COUNT" and record["event_time_ms"] == 5


def test_old_schema_version_is_read_into_the_current_one(codec: Codec) -> None:
    old = {
        "event_id": "e1", "event_time_ms": 1, "channel": "pdd", "channel_order_id": "9",
        "customer_id": "c", "lines": [{"line_no": 1, "sku": "S", "qty": 1, "unit_price_fen": 100}],
        "address": {"province": "广东", "city": "广州", "district": "天河区", "detail": "x"},
        "amount_fen": 100,
    }  # fmt: skip
    data = codec.encode_with(SCHEMA_DIR / "history" / "order_placed.v1.avsc", old)
    event_type, record = codec.decode(data)
    assert event_type.short_name == "OrderPlaced"
    assert record["presale"] is False and record["coupon_type"] == "" and record["vip"] is False
    assert record["lines"][0]["custom"] is False and record["lines"][0]["bundle"] is False


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty_message"),
        (b'{"json": true}', "bad_header"),
        (b"\xc3\x01\x00\x01\x02\x03\x04\x05\x06\x07rest", "unknown_fingerprint"),
    ],
)
def test_unreadable_bytes_get_a_precise_reason(codec: Codec, data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode(data)
    assert info.value.reason == reason


def test_truncated_and_trailing_bytes_are_refused(codec: Codec) -> None:
    good = codec.encode("StockAdjusted", ev.stock_adjusted("S", "WH-SH", 4))
    with pytest.raises(DecodeError) as info:
        codec.decode(good[:-3])
    assert info.value.reason == "truncated"
    with pytest.raises(DecodeError) as info:
        codec.decode(good + b"\x00\x00")
    assert info.value.reason == "trailing_bytes"


def test_encoding_a_record_that_does_not_fit_fails_loudly(codec: Codec) -> None:
    with pytest.raises(ValueError):
        codec.encode("StockAdjusted", {"event_id": "x"})


def test_the_event_id_is_read_from_either_frame_without_the_schema(codec: Codec) -> None:
    record = ev.refund_settled("jd", "1", "r1", 9_800)
    single = codec.encode("RefundSettled", record)
    framed = confluent_header(7) + single[HEADER_LEN:]
    assert event_id_of(single) == event_id_of(framed) == record["event_id"]
    long_id = {**record, "event_id": "é" * 300}  # a length past one varint byte, and not ASCII
    assert event_id_of(codec.encode("RefundSettled", long_id)) == "é" * 300


NO_ID = MARKER + b"\x00" * 8  # a single-object header (any fingerprint will do)


@pytest.mark.parametrize(
    "data",
    [
        None,
        b"",
        b'{"event_id": "x"}',
        NO_ID,
        NO_ID + b"\x14ab",
        b"\x00\x00\x00\x00\x07\x01",
        NO_ID + b"\x04\xff\xfe",
        NO_ID + b"\xff" * 12,
    ],
)
def test_what_holds_no_event_id_gives_an_empty_one(data: bytes | None) -> None:
    # JSON (an HTTP body refused at intake), a header alone, a length past the end, a negative length, bytes
    # that are no UTF-8, a varint that never ends.
    assert event_id_of(data) == ""
