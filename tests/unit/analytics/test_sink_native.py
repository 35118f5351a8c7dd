"""The embedded sink's Avro fast path leaves the very rows the Python path leaves, refuses the same
events for the same reasons, and hands a group ClickHouse cannot read to the Python path."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastavro import parse_schema
from fastavro.utils import generate_many

from agents.analytics import facts, sink_native
from agents.analytics.sink import BatchWriter, Received, SharedClickHouse, SinkStatus
from streams.contract.codec import default_codec
from streams.contract.reasons import Reason
from streams.settings import Settings

CODEC = default_codec()
NOW_MS = 1_795_000_000_000
TABLES = ("events", *sorted({table for entries in sink_native.NATIVE.values() for table, _, _ in entries}))


def _records(name: str, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """Random records that fit the event's current schema (fastavro draws every field), with event
    times inside the window but for every tenth, which is in microseconds."""
    schema = parse_schema(json.loads(CODEC.event_type(name).schema_path.read_text(encoding="utf-8")))
    records = list(generate_many(schema, n))
    for i, r in enumerate(records):
        r["event_id"] = f"{name}-{i}"
        r["event_time_ms"] = NOW_MS - rng.randrange(10**9) if i % 10 else NOW_MS * 1000
    return records


def _batch(rng: random.Random) -> list[Received]:
    messages = []
    for name in sink_native.NATIVE:
        topic = f"topic.{name}"
        for r in _records(name, 40, rng):
            messages.append(Received(topic, len(messages) % 4, len(messages), f"key-{len(messages)}".encode(),
                                     CODEC.encode(name, r)))  # fmt: skip
    # One Alert (no fast path) and one unreadable body of a fast-path type ride along.
    alert = _records("Alert", 1, rng)[0]
    alert["event_time_ms"] = NOW_MS
    messages.append(Received("alerts", 0, 10_000, b"a", CODEC.encode("Alert", alert)))
    broken = CODEC.encode("OrderStateChanged", _records("OrderStateChanged", 2, rng)[1])
    messages.append(Received("order.states", 1, 10_001, b"b", broken[:-3]))
    rng.shuffle(messages)
    return messages


Tables = dict[str, list[dict[str, Any]]]


def _write(folder: Path, messages: list[Received], native: bool) -> tuple[Tables, set, SinkStatus]:
    settings = Settings(clickhouse_url=f"chdb://{folder}", clickhouse_database="t")
    shared = SharedClickHouse(settings)  # opening applies the DDL
    status = SinkStatus()
    refused = BatchWriter(CODEC, shared, status, native=native).write(messages, NOW_MS)
    tables = {}
    for table in TABLES:
        rows = shared.query(f"SELECT * FROM {table} FINAL")
        for row in rows:
            if "payload" in row:
                row["payload"] = orjson.loads(row["payload"])
        tables[table] = sorted(rows, key=lambda r: orjson.dumps(r, option=orjson.OPT_SORT_KEYS))
    shared.drop()
    return tables, {(r.message.offset, r.reason, r.detail) for r in refused}, status


@pytest.mark.parametrize("seed", [1, 2])
def test_both_paths_leave_the_same_rows_and_refuse_the_same_events(tmp_path: Path, seed: int) -> None:
    messages = _batch(random.Random(seed))
    native, native_refused, native_status = _write(tmp_path / "native", messages, native=True)
    python, python_refused, python_status = _write(tmp_path / "python", messages, native=False)
    for table in TABLES:
        assert native[table] == python[table], table
    assert native_refused == python_refused
    assert any(reason is Reason.UNSTORABLE for _, reason, _ in native_refused)  # the microsecond times
    assert any(reason is not Reason.UNSTORABLE for _, reason, _ in native_refused)  # the broken body
    assert native_status.rows == python_status.rows and native_status.by_type == python_status.by_type
    assert len(native["events"]) == len(messages) - len(native_refused)


def test_every_fast_path_table_is_a_typed_table_of_facts() -> None:
    typed = {table for table, _ in facts.FACTS.values()}
    for name, entries in sink_native.NATIVE.items():
        assert {table for table, _, _ in entries} <= typed, name
        assert [table for table, _, _ in entries] == ([facts.FACTS[name][0]] if name in facts.FACTS else [])


def test_a_group_clickhouse_cannot_read_takes_the_python_path(tmp_path: Path) -> None:
    rng = random.Random(3)
    good = _records("HoldDecided", 3, rng)[1:]
    messages = [Received("stock.hold-results", 0, i, b"k", CODEC.encode("HoldDecided", r)) for i, r in enumerate(good)]
    # A body cut short: ClickHouse refuses the whole file; the Python path refuses that one message.
    messages.append(Received("stock.hold-results", 0, 9, b"k", CODEC.encode("HoldDecided", good[0])[:-2]))
    tables, refused, _ = _write(tmp_path, messages, native=True)
    assert len(tables["hold_decisions"]) == 2
    assert [(offset, reason) for offset, reason, _ in refused] == [(9, Reason.TRUNCATED)]


def test_fast_path_events_are_never_decoded_in_python(tmp_path: Path) -> None:
    rng = random.Random(4)
    records = _records("OrderStateChanged", 20, rng)
    messages = [
        Received("order.states", 0, i, b"k", CODEC.encode("OrderStateChanged", r)) for i, r in enumerate(records)
    ]
    settings = Settings(clickhouse_url=f"chdb://{tmp_path}", clickhouse_database="t")
    shared = SharedClickHouse(settings)  # opening applies the DDL
    decoded: list[bytes] = []
    codec = default_codec()
    original = codec.decode
    codec.decode = lambda data: decoded.append(data) or original(data)  # type: ignore[method-assign]
    BatchWriter(codec, shared, SinkStatus()).write(messages, int(time.time() * 1000))
    assert decoded == []


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda v: v + b"\x00", id="a byte left over"),
        pytest.param(lambda v: v[:-1], id="a byte missing"),
        pytest.param(lambda v: v.replace(b"why", b"\xff\xfe\xfd"), id="text that is not UTF-8"),
    ],
)
@pytest.mark.parametrize("where", [0, 2, 4])
def test_a_spoilt_body_anywhere_in_a_group_leaves_the_same_rows_as_the_python_path(
    tmp_path: Path, spoil: Any, where: int
) -> None:
    rng = random.Random(5)
    records = _records("HoldDecided", 6, rng)[1:]
    for r in records:
        r["reason"] = "why"
    values = [CODEC.encode("HoldDecided", r) for r in records]
    values[where] = spoil(values[where])
    messages = [Received("stock.hold-results", 0, i, b"k-%d" % i, v) for i, v in enumerate(values)]
    native, native_refused, _ = _write(tmp_path / "native", messages, native=True)
    python, python_refused, _ = _write(tmp_path / "python", messages, native=False)
    assert native == python and native_refused == python_refused
    assert [offset for offset, _, _ in native_refused] == [where]


def test_event_times_of_zero_and_keys_that_are_not_ascii_are_stored_as_the_python_path_stores_them(
    tmp_path: Path,
) -> None:
    rng = random.Random(6)
    records = _records("HoldDecided", 4, rng)[1:]
    records[0]["event_time_ms"] = 0
    keys = [b"a", "订单".encode() + b"\xff", b"c"]
    messages = [Received("stock.hold-results", 0, i, keys[i], CODEC.encode("HoldDecided", r))
                for i, r in enumerate(records)]  # fmt: skip
    native, native_refused, _ = _write(tmp_path / "native", messages, native=True)
    python, python_refused, _ = _write(tmp_path / "python", messages, native=False)
    assert native == python and native_refused == python_refused == set()
    assert len(native["events"]) == 3
