"""The sink's batch writing without a broker: a refused row is found and handed back alone, an outage is
waited out, a wrong statement is not mistaken for bad rows."""

from __future__ import annotations

import fcntl
import struct
from pathlib import Path
from typing import Any

import pytest
from clickhouse_driver import errors as ch_errors
from clickhouse_driver.errors import ErrorCodes
from confluent_kafka import KafkaError, KafkaException

from agents.analytics.sink import (
    BatchWriter,
    Received,
    SharedClickHouse,
    SinkStatus,
    SinkStopping,
    clickhouse_retriable,
    event_time_problem,
    refused_for_content,
)
from agents.analytics.sink_process import kafka_away
from streams.contract.codec import default_codec
from streams.contract.reasons import Reason
from streams.engine.retry import Backoff
from streams.settings import Settings
from streams.stores.clickhouse import ClickHouseFolderBusy, EmbeddedClickHouse, folder_owner

NOW_MS = 1_794_326_400_000  # 2026-11-11
CODEC = default_codec()


def alert(n: int, at_ms: int = NOW_MS) -> Received:
    record = {"event_id": f"alert-{n}", "event_time_ms": at_ms, "kind": "drill", "severity": "INFO",
              "subject": f"SKU-{n}", "message": "m", "cleared": False, "details": {}}  # fmt: skip
    return Received("alerts", n % 4, n, f"SKU-{n}".encode(), CODEC.encode("Alert", record))


class FakeClickHouse:
    """Keeps inserted rows; refuses any insert holding a poisoned event id, or fails as told."""

    backend = "fake"

    def __init__(self, poisoned: set[str], failures: list[BaseException]) -> None:
        self.poisoned = poisoned
        self.failures = failures
        self.rows: dict[str, set[str]] = {}
        self.closed = False

    def insert(self, table: str, columns: dict[str, list[Any]]) -> int:
        if self.failures:
            raise self.failures.pop(0)
        if self.poisoned & set(columns["event_id"]):
            raise ch_errors.TypeMismatchError("Column kind: 'I' format requires 0 <= number <= 4294967295")
        self.rows.setdefault(table, set()).update(columns["event_id"])
        return len(columns["event_id"])

    def execute(self, sql: str) -> None: ...

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return []

    def close(self) -> None:
        self.closed = True


def writer(fake: FakeClickHouse, stopping: bool = False) -> tuple[BatchWriter, SinkStatus, list[int]]:
    opened: list[int] = []

    def opener(settings: Settings) -> FakeClickHouse:
        opened.append(1)
        return fake

    status = SinkStatus()
    shared = SharedClickHouse(Settings(), opener=opener)  # type: ignore[arg-type]
    return BatchWriter(CODEC, shared, status, stopping=lambda: stopping, backoff=Backoff(0.001, 0.001)), status, opened


def test_event_times_outside_the_window_say_which_unit_they_look_like() -> None:
    assert event_time_problem(NOW_MS) is None
    assert "in microseconds" in (event_time_problem(NOW_MS * 1000) or "")
    assert "in nanoseconds" in (event_time_problem(NOW_MS * 1_000_000) or "")
    assert "in seconds" in (event_time_problem(NOW_MS // 1000) or "")
    assert event_time_problem(-5) == "event_time_ms -5 is outside 2000-01-01..2100-01-01"


def test_a_microsecond_event_time_is_refused_before_the_insert_and_the_rest_goes_in() -> None:
    fake = FakeClickHouse(set(), [])
    write, status, _ = writer(fake)
    batch = [alert(0), alert(1, NOW_MS * 1000), alert(2)]
    refused = write.write(batch, NOW_MS)
    assert [(r.message.offset, r.reason) for r in refused] == [(1, Reason.UNSTORABLE)]
    assert "microseconds" in refused[0].detail
    assert fake.rows == {"events": {"alert-0", "alert-2"}, "alerts": {"alert-0", "alert-2"}}
    assert (status.rows, status.unstorable, status.retries, status.last_insert_ok) == (2, 1, 0, True)


def test_rows_clickhouse_refuses_are_found_by_halving_and_handed_back_alone() -> None:
    fake = FakeClickHouse({"alert-3", "alert-17"}, [])
    write, status, _ = writer(fake)
    batch = [alert(n) for n in range(20)]
    refused = write.write(batch, NOW_MS)
    assert sorted(r.message.offset for r in refused) == [3, 17]
    assert {r.reason for r in refused} == {Reason.UNSTORABLE}
    assert "TypeMismatchError" in refused[0].detail and refused[0].message.value == batch[3].value
    wanted = {f"alert-{n}" for n in range(20)} - {"alert-3", "alert-17"}
    assert fake.rows["events"] == wanted and fake.rows["alerts"] == wanted
    assert (status.rows, status.unstorable, status.retries) == (18, 2, 0)


def test_an_outage_is_retried_on_a_new_connection_and_refuses_nothing() -> None:
    fake = FakeClickHouse(set(), [ch_errors.NetworkError("Connection refused"), ConnectionResetError()])
    write, status, opened = writer(fake)
    assert write.write([alert(n) for n in range(5)], NOW_MS) == []
    assert fake.rows["alerts"] == {f"alert-{n}" for n in range(5)}
    assert status.retries == 2 and len(opened) == 3 and status.clickhouse_ok


def test_a_statement_the_schema_does_not_match_is_raised_not_dead_lettered() -> None:
    error = ch_errors.ServerException("No such column kind in table alerts", ErrorCodes.NO_SUCH_COLUMN_IN_TABLE)
    write, status, _ = writer(FakeClickHouse(set(), [error]))
    with pytest.raises(ch_errors.ServerException):
        write.write([alert(0), alert(1)], NOW_MS)
    assert status.unstorable == 0


def test_a_stop_during_an_outage_leaves_the_batch_unwritten() -> None:
    write, _, _ = writer(FakeClickHouse(set(), [ch_errors.NetworkError("Connection refused")] * 3), stopping=True)
    with pytest.raises(SinkStopping):
        write.write([alert(0)], NOW_MS)


@pytest.mark.parametrize(
    ("exc", "content"),
    [
        (ch_errors.TypeMismatchError("UInt8 got 'x'"), True),
        (ch_errors.ServerException("out of range", ErrorCodes.VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE), True),
        (RuntimeError("Code: 27. DB::Exception: Cannot parse input. (CANNOT_PARSE_INPUT_ASSERTION_FAILED)"), True),
        (struct.error("argument out of range"), True),
        (OverflowError("int too big to convert"), True),
        (ch_errors.ServerException("no such column", ErrorCodes.NO_SUCH_COLUMN_IN_TABLE), False),
        (RuntimeError("Code: 62. DB::Exception: Syntax error. (SYNTAX_ERROR)"), False),
        (RuntimeError("Session is closed."), False),
        (KeyError("event_id"), False),
    ],
)
def test_which_refusals_are_about_the_rows(exc: BaseException, content: bool) -> None:
    assert refused_for_content(exc) is content


@pytest.mark.parametrize(
    ("error", "away"),
    [
        (KafkaError(KafkaError._TRANSPORT), True),
        (KafkaError(KafkaError._ALL_BROKERS_DOWN), True),
        (KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE), True),
        (KafkaError(KafkaError.REBALANCE_IN_PROGRESS), False),  # retrying would keep the member out of the group
        (KafkaError(KafkaError.UNKNOWN_MEMBER_ID), False),
        (KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), False),
        ("3 events not acknowledged within 30s", True),
    ],
)
def test_which_kafka_errors_the_sink_waits_out(error: KafkaError | str, away: bool) -> None:
    assert kafka_away(KafkaException(error)) is away


def test_an_embedded_clickhouse_folder_open_elsewhere_is_named_with_its_owner(tmp_path: Path) -> None:
    """Found trying the README: a second sink on the same chdb folder died with chdb's empty "Error initializing
    EmbeddedServer" and a 47-line traceback. The folder's server status file, locked while it runs, says who."""
    folder = tmp_path / "ch"
    folder.mkdir()
    assert folder_owner(folder) is None  # never opened
    with open(folder / "status", "w+", encoding="utf-8") as status:
        status.write("PID: 4242\nStarted at: 2026-11-11 00:00:00\n")
        status.flush()
        fcntl.flock(status, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running server holds it
        assert folder_owner(folder) == "PID: 4242"
        with pytest.raises(ClickHouseFolderBusy, match=r"is open in another process \(PID: 4242\)"):
            EmbeddedClickHouse(folder, "stockflow")
        assert not clickhouse_retriable(ClickHouseFolderBusy("busy"))  # a setup matter, never waited out
    assert folder_owner(folder) is None  # the owner gone, its file left behind
