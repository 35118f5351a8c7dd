"""Sinks every business topic into ClickHouse.

Reads: every topic in ``streams.contract.topics.SUNK_TOPICS``. Writes: ClickHouse table ``events`` (the raw
log) and the typed tables of ``agents.analytics.facts`` the dashboards read (``order_states``,
``reservations``, ``hold_decisions``, ``stock_levels``, ``alerts``, ``routing_assignments``,
``dead_letters``); the ``deadletters`` topic for messages nobody can read (bad header, unknown
fingerprint, truncated body) - the sink reads every topic, so it is the one place that refuses
unreadable bytes. Owns: the worker's ClickHouse connection, over which it also serves the
dashboards (``/dash/{name}``); nothing in Kafka: its progress is the consumer group's offsets.

Batches are flushed on size or time. The sink has its own consumer group
(``<app id>-sink``) and commits its offsets only after ClickHouse accepted the insert; while
ClickHouse is down the sink retries with backoff and holds its partitions. Rows ClickHouse refuses
(a type or overflow error) are not retried: the sink stops, loudly, and the worker goes on. Rows
are keyed by (topic, event id) in ReplacingMergeTree tables, so a batch replayed after a crash does
not double count.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer
from clickhouse_driver import errors as ch_errors
from clickhouse_driver.errors import ErrorCodes

from agents.analytics import facts
from agents.analytics import queries as dashboards
from streams.contract.codec import DecodeError
from streams.contract.topics import DEADLETTERS, SUNK_TOPICS
from streams.engine.deadletter import dead_letter
from streams.engine.outbox import Outbox
from streams.engine.retry import Backoff, Retry
from streams.engine.runtime import Runtime
from streams.stores.clickhouse import ClickHouse, open_clickhouse

log = logging.getLogger(__name__)


@dataclass
class SinkStatus:
    rows: int = 0
    batches: int = 0
    unreadable: int = 0
    retries: int = 0
    last_error: str = ""
    first_insert_ms: int = 0
    last_insert_ms: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


# ClickHouse error codes that refuse the rows themselves: sending them again gets the same answer.
_ROWS_REFUSED = frozenset({
    ErrorCodes.CANNOT_PARSE_TEXT, ErrorCodes.INCORRECT_NUMBER_OF_COLUMNS, ErrorCodes.THERE_IS_NO_COLUMN,
    ErrorCodes.SIZES_OF_COLUMNS_DOESNT_MATCH, ErrorCodes.NO_SUCH_COLUMN_IN_TABLE,
    ErrorCodes.NUMBER_OF_COLUMNS_DOESNT_MATCH, ErrorCodes.CANNOT_PARSE_QUOTED_STRING,
    ErrorCodes.CANNOT_PARSE_INPUT_ASSERTION_FAILED, ErrorCodes.CANNOT_PARSE_DATE, ErrorCodes.CANNOT_PARSE_DATETIME,
    ErrorCodes.ILLEGAL_TYPE_OF_ARGUMENT, ErrorCodes.ILLEGAL_COLUMN, ErrorCodes.UNKNOWN_IDENTIFIER,
    ErrorCodes.TYPE_MISMATCH, ErrorCodes.SYNTAX_ERROR, ErrorCodes.ARGUMENT_OUT_OF_BOUND, ErrorCodes.CANNOT_CONVERT_TYPE,
    ErrorCodes.CANNOT_PARSE_NUMBER, ErrorCodes.INCORRECT_DATA, ErrorCodes.TOO_LARGE_STRING_SIZE,
    ErrorCodes.VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE, ErrorCodes.CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN,
    ErrorCodes.CANNOT_PARSE_UUID,
})  # fmt: skip
# Raised by clickhouse-driver itself while serialising rows the column types cannot hold.
_ROWS_UNSENDABLE = (
    ch_errors.TypeMismatchError, ch_errors.TooLargeStringSize, ch_errors.UnknownTypeError,
    ch_errors.CannotParseUuidError, ch_errors.CannotParseDomainError, ch_errors.UnknownCompressionMethod,
)  # fmt: skip
_CODE = re.compile(r"^Code: (\d+)\.")


class InsertRefused(Exception):
    """ClickHouse will never take a batch as it is (or building it hit a bug): retrying cannot help."""


def clickhouse_retriable(exc: BaseException) -> bool:
    """True for ClickHouse away, busy or restarting; False for rows it refuses, overflows and bugs."""
    if isinstance(exc, _ROWS_UNSENDABLE):
        return False
    if isinstance(exc, ch_errors.Error):  # the server's answer, or the native protocol failing
        return exc.code not in _ROWS_REFUSED
    found = _CODE.match(str(exc)) if isinstance(exc, RuntimeError) else None
    if found:  # embedded chdb raises the engine's error as a RuntimeError "Code: N. DB::Exception: ..."
        return int(found.group(1)) not in _ROWS_REFUSED
    # Sockets and timeouts are retriable; TypeError, OverflowError, struct.error, ValueError, a
    # RuntimeError without a ClickHouse code... are rows Python cannot convert, or a bug.
    return isinstance(exc, (OSError, EOFError, TimeoutError))


def _payload_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError


def rows_for_batch(
    rt: Runtime, messages: list[Any], now_ms: int
) -> tuple[dict[str, dict[str, list[Any]]], list[tuple[Any, DecodeError]]]:
    """Turn raw messages into columns per table (``events`` plus the typed facts) and the unreadable."""
    events: dict[str, list[Any]] = {k: [] for k in _EVENT_COLUMNS}
    tables: dict[str, dict[str, list[Any]]] = {"events": events}
    unreadable = []
    now_s = now_ms // 1000
    for msg in messages:
        try:
            event_type, record = rt.codec.decode(msg.value)
        except DecodeError as exc:
            unreadable.append((msg, exc))
            continue
        event_ms = int(record.get("event_time_ms") or now_ms)
        events["topic"].append(msg.topic)
        events["event_type"].append(event_type.short_name)
        events["event_id"].append(str(record.get("event_id", "")))
        events["key"].append(msg.key.decode(errors="replace") if msg.key else "")
        events["partition"].append(msg.partition)
        events["offset"].append(msg.offset)
        events["event_time"].append(max(event_ms // 1000, 0))
        events["event_time_ms"].append(event_ms)
        events["ingested_at"].append(now_s)
        events["payload"].append(orjson.dumps(record, default=_payload_default).decode())
        facts.add_rows(tables, event_type.short_name, record)
    return tables, unreadable


_EVENT_COLUMNS = (
    "topic", "event_type", "event_id", "key", "partition", "offset",
    "event_time", "event_time_ms", "ingested_at", "payload",
)  # fmt: skip


def register(app: faust.App, rt: Runtime) -> None:
    settings = rt.settings
    status = SinkStatus()
    holder: dict[str, ClickHouse] = {}
    # One connection per worker, used by one call at a time: the embedded backend is one chdb
    # session, which is not safe to share between threads.
    lock = asyncio.Lock()
    topics = [settings.topic(t.name) for t in SUNK_TOPICS]
    deadletter_topic = settings.topic(DEADLETTERS.name)

    def clickhouse() -> ClickHouse:
        if "ch" not in holder:
            holder["ch"] = open_clickhouse(settings)
        return holder["ch"]

    async def insert_with_retry(table: str, columns: dict[str, list[Any]]) -> None:
        async def insert() -> None:
            async with lock:
                await asyncio.to_thread(clickhouse().insert, table, columns)

        def failed(exc: BaseException) -> None:  # ClickHouse away or busy: reconnect, hold the batch
            status.retries += 1
            status.last_error = f"{type(exc).__name__}: {exc}"[:500]
            holder.pop("ch", None)

        # No bound: while ClickHouse is down the batch (and the sink's offsets) wait for it.
        retry = Retry(f"ClickHouse insert into {table}", clickhouse_retriable, backoff=Backoff(first_s=0.2, max_s=10.0),
                      log=log)  # fmt: skip
        try:
            await retry.acall(insert, failed)
        except Exception as exc:
            status.last_error = f"{type(exc).__name__}: {exc}"[:500]
            raise InsertRefused(f"ClickHouse refused rows for {table}: {status.last_error}") from exc

    async def write_batch(outbox: Outbox, messages: list[Any]) -> None:
        now_ms = rt.clock.now_ms()
        tables, unreadable = rows_for_batch(rt, messages, now_ms)
        for msg, exc in unreadable:
            status.unreadable += 1
            if msg.topic == deadletter_topic:
                continue  # never dead-letter a dead letter
            record = dead_letter(msg, "agents.analytics.sink", exc.reason, exc.detail, now_ms)
            outbox.add(DEADLETTERS.name, msg.topic, "DeadLetter", record)
        if not status.first_insert_ms:
            status.first_insert_ms = int(time.time() * 1000)
        for table, columns in tables.items():
            if columns.get("event_id"):
                await insert_with_retry(table, columns)
        await outbox.publish(state_written=False)
        status.rows += len(tables["events"]["event_id"])
        status.batches += 1
        status.last_insert_ms = int(time.time() * 1000)
        for name in tables["events"]["event_type"]:
            status.by_type[name] = status.by_type.get(name, 0) + 1

    @app.task
    async def sink_to_clickhouse() -> None:
        # A consumer group of its own, not a Faust agent: the sink reads the same topics as the
        # business agents, and two streams of one app sharing a partition share its offset
        # commits. Here offsets are committed only after ClickHouse accepted the batch, and a
        # ClickHouse outage holds back the sink alone.
        consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=settings.bootstrap,
            group_id=f"{settings.app_id}-sink",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_interval_ms=24 * 3600 * 1000,  # a long ClickHouse outage must not evict it
            session_timeout_ms=int(settings.session_timeout_s * 1000),
        )
        await consumer.start()
        outbox = Outbox(app, rt.codec, settings)
        pending: list[Any] = []
        first_at = 0.0
        try:
            while True:
                fetched = await consumer.getmany(timeout_ms=100, max_records=settings.sink_batch_rows)
                for messages in fetched.values():
                    if messages and not pending:
                        first_at = time.monotonic()
                    pending.extend(messages)
                due = time.monotonic() - first_at >= settings.sink_flush_interval_s
                if pending and (len(pending) >= settings.sink_batch_rows or due):
                    await write_batch(outbox, pending)
                    await consumer.commit()  # everything fetched so far is now in ClickHouse
                    pending = []
        except InsertRefused:
            # Retrying rows ClickHouse refuses only hides the fault, and crashing would stop the
            # order pipeline over its analytics: the sink alone stops, its offsets at the last
            # batch ClickHouse took, to resume from there once the rows or the schema are fixed.
            log.exception("ClickHouse sink stopped; /sink/status has the error")
        finally:
            await consumer.stop()

    @app.page("/sink/status")
    async def sink_status(web: Any, request: Any) -> Any:
        return web.json(status.__dict__)

    @app.page("/sink/query/events-by-type")
    async def events_by_type(web: Any, request: Any) -> Any:
        async with lock:
            rows = await asyncio.to_thread(
                clickhouse().query,
                "SELECT event_type, count() AS n FROM (SELECT event_type FROM events FINAL) "
                "GROUP BY event_type ORDER BY event_type",
            )
        return web.json(rows)

    @app.page("/dash/{name}")
    async def dashboard_view(web: Any, request: Any, name: str) -> Any:
        """A dashboard's rows, from this worker's ClickHouse (the only way into an embedded one)."""
        try:
            dash = dashboards.find(name)
            params = dashboards.bind(dash, dict(request.query), settings)
        except dashboards.DashboardError as exc:
            return web.json({"error": str(exc)}, status=400)
        async with lock:
            rows = await asyncio.to_thread(clickhouse().query, dash.sql, params)
        return web.json({"dashboard": dash.describe(), "rows": dashboards.jsonable(rows)})
