"""A record the sink stores again (read again after a crash, before its offsets were committed) is still
one row, however far the wall clock moved in between, the month turning above all: every table is a
ReplacingMergeTree partitioned by the month of ``event_time``, and ClickHouse collapses copies of a row
only inside one partition when it merges, so what decides the partition must come from the record alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.analytics.sink import BatchWriter, Received, Refused, SharedClickHouse, SinkStatus
from agents.analytics.sink_process import dead_letters_for
from streams.contract.codec import default_codec
from streams.contract.reasons import Reason
from streams.settings import Settings

CODEC = default_codec()
OWN_TIME_MS = 1_794_326_400_000  # 2026-11-11: an event time the event carries itself
DEADLETTERS = "deadletters"
# Each table's ReplacingMergeTree key (its ORDER BY in schemas/ddl).
KEYS = {"events": "(topic, event_id)", "dead_letters": "(source_topic, event_id)", "alerts": "event_id",
        "hold_decisions": "event_id"}  # fmt: skip


@pytest.fixture
def ch(tmp_path: Path) -> Iterator[SharedClickHouse]:
    shared = SharedClickHouse(Settings(clickhouse_url=f"chdb://{tmp_path}", clickhouse_database="t"))
    yield shared
    shared.drop()  # embedded ClickHouse holds one folder per process: the next test opens its own


def _month_turn_ms(ch: SharedClickHouse) -> int:
    """Midnight starting December 2026 in the time zone the session's toYYYYMM uses."""
    return int(ch.query("SELECT toUnixTimestamp(toDateTime('2026-12-01 00:00:00')) AS s")[0]["s"]) * 1000


def _hold(n: int, at_ms: int) -> dict[str, Any]:
    return {"event_id": f"hold-{n}", "event_time_ms": at_ms, "order_id": f"o-{n}", "line_no": 1, "sku": "SKU-1",
            "qty": 1, "action": "RESERVE", "outcome": "HELD", "reason": "", "source_time_ms": 0,
            "bucket": -1}  # fmt: skip


def _alert(n: int, at_ms: int) -> dict[str, Any]:
    return {"event_id": f"alert-{n}", "event_time_ms": at_ms, "kind": "drill", "severity": "INFO",
            "subject": f"SKU-{n}", "message": "m", "cleared": False, "details": {}}  # fmt: skip


def _assert_one_row_per_key(ch: SharedClickHouse, tables: tuple[str, ...]) -> None:
    for table in tables:
        # FINAL that collapses copies inside each partition only (a common speed-up of FINAL), then
        # the table itself once merged: what background merges leave for good.
        counted = ch.query(f"SELECT count() AS n, uniqExact({KEYS[table]}) AS keys FROM {table} FINAL "
                           "SETTINGS do_not_merge_across_partitions_select_final = 1")[0]  # fmt: skip
        assert counted["n"] == counted["keys"], f"{table}: {counted}"
        ch.get().execute(f"OPTIMIZE TABLE {table} FINAL")
        merged = ch.query(f"SELECT count() AS n, uniqExact({KEYS[table]}) AS keys FROM {table}")[0]
        assert merged["n"] == merged["keys"], f"{table} merged: {merged}"


@pytest.mark.parametrize("native", [True, False], ids=["avro fast path", "python path"])
def test_a_record_stored_again_after_the_month_turned_is_still_one_row(ch: SharedClickHouse, native: bool) -> None:
    turn_ms = _month_turn_ms(ch)
    # Events with a time of their own, and events with none (0), which the sink used to stamp with the
    # time of the insert.
    messages = [Received("stock.hold-results", 0, n, b"o", CODEC.encode("HoldDecided", _hold(n, at)))
                for n, at in enumerate((OWN_TIME_MS, 0))]  # fmt: skip
    messages += [Received("alerts", 0, n, b"s", CODEC.encode("Alert", _alert(n, at)))
                 for n, at in enumerate((OWN_TIME_MS, 0))]  # fmt: skip
    for now_ms in (turn_ms - 1000, turn_ms + 1000):  # stored at 23:59:59, a crash, stored again at 00:00:01
        assert BatchWriter(CODEC, ch, SinkStatus(), native=native).write(messages, now_ms) == []
    _assert_one_row_per_key(ch, ("events", "hold_decisions", "alerts"))


def test_an_event_with_no_time_of_its_own_is_stored_at_its_broker_timestamp(ch: SharedClickHouse) -> None:
    stamped = Received("alerts", 0, 3, b"s", CODEC.encode("Alert", _alert(3, 0)), timestamp_ms=OWN_TIME_MS)
    # A broker timestamp ClickHouse cannot hold (a producer that set it in seconds) is no time either.
    in_seconds = Received("alerts", 0, 4, b"s", CODEC.encode("Alert", _alert(4, 0)), timestamp_ms=OWN_TIME_MS // 1000)
    for now_ms in (OWN_TIME_MS + 5000, OWN_TIME_MS + 40 * 86_400_000):
        assert BatchWriter(CODEC, ch, SinkStatus(), native=False).write([stamped, in_seconds], now_ms) == []
    rows = ch.query("SELECT event_id, event_time_ms, toUnixTimestamp(event_time) AS s FROM events FINAL "
                    "ORDER BY event_id")
    assert rows == [{"event_id": "alert-3", "event_time_ms": OWN_TIME_MS, "s": OWN_TIME_MS // 1000},
                    {"event_id": "alert-4", "event_time_ms": 0, "s": 0}]  # fmt: skip


def test_the_sinks_dead_letter_of_a_message_refused_again_after_the_month_turned_is_one_row(
    ch: SharedClickHouse,
) -> None:
    turn_ms = _month_turn_ms(ch)
    bad = Received("alerts", 2, 41, b"s", b"\x00not avro", timestamp_ms=turn_ms - 3000)
    refused = [Refused(bad, Reason.MALFORMED_BODY, "not Avro")]
    # Refused, its dead letter sent, a crash before the commit; after the restart refused and sent again.
    first, again = (dead_letters_for(refused, DEADLETTERS, now_ms) for now_ms in (turn_ms - 1000, turn_ms + 1000))
    assert first == again
    sent = ((first[0], turn_ms - 1000), (again[0], turn_ms + 1000))
    letters = [Received(DEADLETTERS, 0, offset, b"alerts", CODEC.encode("DeadLetter", letter), timestamp_ms=at_ms)
               for offset, (letter, at_ms) in enumerate(sent)]  # fmt: skip
    assert BatchWriter(CODEC, ch, SinkStatus()).write(letters, turn_ms + 2000) == []
    _assert_one_row_per_key(ch, ("events", "dead_letters"))


def test_a_refused_dead_letter_gets_no_dead_letter() -> None:
    looping = Received(DEADLETTERS, 0, 1, b"alerts", b"\x00", timestamp_ms=OWN_TIME_MS)
    assert dead_letters_for([Refused(looping, Reason.MALFORMED_BODY, "not Avro")], DEADLETTERS, OWN_TIME_MS) == []


@pytest.mark.parametrize("native", [True, False], ids=["avro fast path", "python path"])
def test_a_batch_spanning_more_than_a_hundred_months_is_stored(ch: SharedClickHouse, native: bool) -> None:
    """Changed on purpose: ClickHouse refuses an insert over 100 partitions by default, the sink took it
    for an outage and retried the batch for good (a backfill, a replay of old topics)."""
    start = _month_turn_ms(ch) - 20 * 365 * 86_400_000
    messages = [Received("alerts", 0, n, b"s", CODEC.encode("Alert", _alert(n, start + n * 31 * 86_400_000)))
                for n in range(130)]  # fmt: skip
    assert BatchWriter(CODEC, ch, SinkStatus(), native=native, stopping=lambda: True).write(messages, start) == []
    assert ch.query("SELECT count() AS n FROM alerts FINAL") == [{"n": 130}]
