"""The schema files as a set: one Avro names context holds them all, and renamed types stay readable.

Java's Avro parser (and with it code generators and Schema Registry clients that parse several
schemas together) keeps one table of named types: the same name defined twice with different
contents is refused. fastavro's ``parse_schema`` shares the table across calls through
``named_schemas`` but, unlike Java, lets a later definition replace an earlier one silently, so the
check below parses every file into one shared ``named_schemas`` and refuses such a redefinition.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema

from streams.contract.codec import Codec, schema_fingerprint
from streams.contract.registry import EVENT_TYPES, SCHEMA_DIR

HISTORY = SCHEMA_DIR / "history"


class RedefinedName(ValueError):
    pass


def parse_together(paths: list[Path]) -> dict[str, Any]:
    """Parse ``paths`` into one names context, refusing a name defined again differently (as Java does)."""
    named: dict[str, Any] = {}
    for path in paths:
        raw = json.loads(path.read_text(encoding="utf-8"))
        own: dict[str, Any] = {}
        parse_schema(raw, named_schemas=own)  # the named types this file defines, as it defines them
        for name, definition in own.items():
            if name in named and named[name] != definition:
                raise RedefinedName(f"{path.name} redefines {name}: {definition} is not {named[name]}")
        parse_schema(raw, named_schemas=named)
    return named


def test_every_current_schema_parses_in_one_names_context() -> None:
    named = parse_together(sorted(SCHEMA_DIR.glob("*.avsc")))
    assert {et.name for et in EVENT_TYPES} <= set(named)
    assert named["stockflow.HoldOutcome"]["symbols"][-2:] == ["ALLOCATED", "OFFERED"]  # HoldDecided's
    assert not {"ALLOCATED", "OFFERED"} & set(named["stockflow.LineOutcome"]["symbols"])  # ReservationDecided's lines'


def test_the_check_refuses_what_version_1_did() -> None:
    """Before the rename, HoldDecided's and ReservationDecided's enums were both stockflow.HoldOutcome."""
    with pytest.raises(RedefinedName, match=r"stockflow\.HoldOutcome"):
        parse_together([SCHEMA_DIR / "hold_decided.avsc", HISTORY / "reservation_decided.v1.avsc"])


def test_version_1_of_reservation_decided_is_the_published_one() -> None:
    # The fingerprint of schemas/reservation_decided.avsc before the rename, as producers wrote it.
    assert schema_fingerprint(parse_schema(json.loads((HISTORY / "reservation_decided.v1.avsc").read_text()))) == (
        bytes.fromhex("2895b406feae01e9")
    )


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


def test_old_reservation_bytes_read_into_the_renamed_enum(codec: Codec) -> None:
    record = {
        "event_id": "jd:1:reservation", "event_time_ms": 1, "order_id": "jd:1", "channel": "jd",
        "outcome": "REJECTED", "placed_at_ms": 1, "sent_at_ms": 2,
        "lines": [{"line_no": 1, "sku": "S", "qty": 2, "outcome": "REFUSED", "reason": "insufficient_stock"},
                  {"line_no": 2, "sku": "T", "qty": 1, "outcome": "RELEASED", "reason": ""}],
    }  # fmt: skip
    old = codec.encode_with(HISTORY / "reservation_decided.v1.avsc", record)
    assert old[2:10] == bytes.fromhex("2895b406feae01e9")
    event_type, back = codec.decode(old)
    assert event_type.short_name == "ReservationDecided" and back == record
    assert codec.decode(codec.encode("ReservationDecided", record))[1] == record
    assert codec.header("ReservationDecided") != old[:10]  # the new version has a fingerprint of its own


def test_old_and_current_hold_decisions_read(codec: Codec) -> None:
    record = {
        "event_id": "jd:1#1:RESERVE:HELD", "event_time_ms": 1, "order_id": "jd:1", "line_no": 1, "sku": "S",
        "qty": 2, "action": "RESERVE", "outcome": "HELD", "reason": "", "source_time_ms": 0,
    }  # fmt: skip
    for data in (codec.encode_with(HISTORY / "hold_decided.v1.avsc", record), codec.encode("HoldDecided", record)):
        event_type, back = codec.decode(data)
        # Read into the current version: a decision from before hot-SKU buckets came from the SKU's home.
        assert event_type.short_name == "HoldDecided" and back == {**record, "bucket": -1}


@pytest.mark.parametrize("path", sorted([*SCHEMA_DIR.glob("*.avsc"), *HISTORY.glob("*.avsc")]), ids=lambda p: p.name)
def test_every_event_starts_with_its_event_id(path: Path) -> None:
    """What reads a message without its schema (the sink, for a dead letter's original) finds the id there."""
    first = json.loads(path.read_text(encoding="utf-8"))["fields"][0]
    assert (first["name"], first["type"]) == ("event_id", "string")
