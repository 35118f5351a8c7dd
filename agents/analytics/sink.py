"""What the ClickHouse sink does with one batch: the rows each event becomes, inserted; what ClickHouse
cannot hold, handed back to be dead-lettered, never retried.

Writes: ClickHouse table ``events`` (the raw log) and the typed tables of ``agents.analytics.facts``
the dashboards read (``order_states``, ``reservations``, ``hold_decisions``, ``stock_levels``,
``alerts``, ``routing_assignments``, ``dead_letters``; for refunds ``refund_states``,
``refund_returns``, ``refund_issues``, ``refund_settlements``, ``connector_failures``). Rows are
keyed by (topic, event id) in ReplacingMergeTree tables, so a batch inserted twice (replayed after
a crash, or split again while looking for a bad row) is counted once.

Three kinds of failure, three answers:

- an outage (connection refused, timeouts, ClickHouse busy or restarting), and any ClickHouse error
  not known to be about the rows or the statement (out of memory, a read-only disk, a table dropped
  under it): the insert is retried without bound, on a fresh connection, and the batch waits (its
  offsets with it), the error on ``/status`` and in the log;
- a row ClickHouse refuses for what is in it (type, overflow, parse): the batch is split in halves
  until the refused events stand alone; each is handed back as ``Reason.UNSTORABLE`` and the rest
  is inserted. Event times outside 2000-01-01..2100-01-01 are refused before any insert: the
  server cannot hold them in a ``DateTime`` and embedded chdb would silently clamp them to 2106;
- a statement the schema does not match, or a bug in the sink, is raised: dead-lettering every row
  over a wrong schema would empty the dashboards behind a healthy-looking sink.

The process around this (the consumer, the dead-letter producer, offsets, HTTP) is
``agents.analytics.sink_process``.
"""

from __future__ import annotations

import logging
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import orjson

from agents.analytics import facts, sink_native
from streams.contract.codec import Codec, DecodeError
from streams.contract.reasons import Reason
from streams.contract.schema_registry import SchemaRegistryUnavailable
from streams.engine.retry import Backoff, Retry
from streams.settings import Settings
from streams.stores.clickhouse import ClickHouse, EmbeddedClickHouse, open_clickhouse

log = logging.getLogger(__name__)
STAGE = "agents.analytics.sink"
# The event times ClickHouse is given: a DateTime holds 1970..2106, and anything outside this window
# is a producer writing seconds, microseconds or nanoseconds instead of milliseconds.
EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
LATEST_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
WINDOW = "2000-01-01..2100-01-01"


@dataclass
class SinkStatus:
    """What ``/sink/status`` shows; written by the sink loop only."""

    rows: int = 0
    batches: int = 0
    unreadable: int = 0
    unstorable: int = 0
    dead_letters: int = 0
    retries: int = 0
    last_error: str = ""
    first_insert_ms: int = 0
    last_insert_ms: int = 0
    lag: int = -1
    by_type: dict[str, int] = field(default_factory=dict)
    broker_ok: bool = False
    clickhouse_ok: bool = False
    last_insert_ok: bool | None = None  # None: nothing inserted yet

    @property
    def ready(self) -> bool:
        return self.broker_ok and self.clickhouse_ok and self.last_insert_ok is not False

    def snapshot(self) -> dict[str, Any]:
        # dict() of a dict is one C call, so a reader thread never sees by_type change under it.
        return {**self.__dict__, "by_type": dict(self.by_type), "ready": self.ready}


@dataclass(frozen=True, slots=True)
class Received:
    """One message as the sink got it from Kafka (what ``dead_letter`` reads from a message)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0  # the broker's timestamp (CreateTime or LogAppendTime); 0 or less: none


@dataclass(slots=True)
class Decoded:
    """A readable message and the rows it becomes: (table, row) pairs."""

    message: Received
    event_type: str
    rows: list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class Refused:
    """A message the sink will not store, and why (the dead letter's reason and detail)."""

    message: Received
    reason: Reason
    detail: str


class ErrorCodes(IntEnum):
    """The ClickHouse server's error codes the sink tells apart (its ``ErrorCodes.cpp``, the same
    numbers clickhouse-driver names), spelt here so an install without the server driver (embedded
    chdb raises them as "Code: N." in a RuntimeError) classifies them too."""

    CANNOT_PARSE_TEXT = 6
    INCORRECT_NUMBER_OF_COLUMNS = 7
    THERE_IS_NO_COLUMN = 8
    SIZES_OF_COLUMNS_DOESNT_MATCH = 9
    NO_SUCH_COLUMN_IN_TABLE = 16
    NUMBER_OF_COLUMNS_DOESNT_MATCH = 20
    CANNOT_PARSE_QUOTED_STRING = 26
    CANNOT_PARSE_INPUT_ASSERTION_FAILED = 27
    CANNOT_PARSE_DATE = 38
    CANNOT_PARSE_DATETIME = 41
    ILLEGAL_TYPE_OF_ARGUMENT = 43
    ILLEGAL_COLUMN = 44
    UNKNOWN_IDENTIFIER = 47
    TYPE_MISMATCH = 53
    SYNTAX_ERROR = 62
    ARGUMENT_OUT_OF_BOUND = 69
    CANNOT_CONVERT_TYPE = 70
    CANNOT_PARSE_NUMBER = 72
    INCORRECT_DATA = 117
    TOO_LARGE_STRING_SIZE = 131
    VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE = 321
    CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN = 349
    CANNOT_PARSE_UUID = 376


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
# Of those, the ones about the statement (columns, names, syntax), not a value in a row: every row
# gets the same answer, so splitting the batch would dead-letter all of it.
_STATEMENT_REFUSED = frozenset({
    ErrorCodes.INCORRECT_NUMBER_OF_COLUMNS, ErrorCodes.THERE_IS_NO_COLUMN, ErrorCodes.SIZES_OF_COLUMNS_DOESNT_MATCH,
    ErrorCodes.NO_SUCH_COLUMN_IN_TABLE, ErrorCodes.NUMBER_OF_COLUMNS_DOESNT_MATCH, ErrorCodes.UNKNOWN_IDENTIFIER,
    ErrorCodes.SYNTAX_ERROR, ErrorCodes.ILLEGAL_COLUMN,
})  # fmt: skip


def _driver_errors() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """(its base error, the errors it raises itself while serialising rows the column types cannot
    hold) when the server driver is installed; without it (an embedded-only install, the
    ``clickhouse-server`` extra left out) none of them can be raised: empty tuples match nothing."""
    try:
        from clickhouse_driver import errors as ch_errors
    except ImportError:
        return (), ()
    unsendable = (
        ch_errors.TypeMismatchError, ch_errors.TooLargeStringSize, ch_errors.UnknownTypeError,
        ch_errors.CannotParseUuidError, ch_errors.CannotParseDomainError, ch_errors.UnknownCompressionMethod,
    )  # fmt: skip
    return (ch_errors.Error,), unsendable


_DRIVER_ERROR, _ROWS_UNSENDABLE = _driver_errors()
_CODE = re.compile(r"^Code: (\d+)\.")


def _error_code(exc: BaseException) -> int | None:
    if isinstance(exc, _DRIVER_ERROR):  # the server's answer, or the native protocol failing
        code: int | None = getattr(exc, "code", None)
        return code
    found = _CODE.match(str(exc)) if isinstance(exc, RuntimeError) else None
    # Embedded chdb raises the engine's error as a RuntimeError "Code: N. DB::Exception: ...".
    return int(found.group(1)) if found else None


def clickhouse_retriable(exc: BaseException) -> bool:
    """True for ClickHouse away, busy or restarting; False for rows it refuses, overflows and bugs."""
    if isinstance(exc, _ROWS_UNSENDABLE):
        return False
    code = _error_code(exc)
    if code is not None or isinstance(exc, _DRIVER_ERROR):
        return code not in _ROWS_REFUSED
    # Sockets and timeouts are retriable; TypeError, OverflowError, struct.error, ValueError, a
    # RuntimeError without a ClickHouse code... are rows Python cannot convert, or a bug.
    return isinstance(exc, (OSError, EOFError, TimeoutError))


def refused_for_content(exc: BaseException) -> bool:
    """True when the rows are refused for a value in them, so some rows of the batch may still go in."""
    if isinstance(exc, _ROWS_UNSENDABLE):
        return True
    code = _error_code(exc)
    if code is not None:
        return code in _ROWS_REFUSED and code not in _STATEMENT_REFUSED
    # What clickhouse-driver and pyarrow raise for a value their column type cannot take (pyarrow's
    # ArrowInvalid and ArrowTypeError are ValueError and TypeError).
    return isinstance(exc, (TypeError, ValueError, OverflowError, struct.error))


class RowsRefused(Exception):
    """ClickHouse refused an insert for the content of its rows."""

    def __init__(self, table: str, cause: BaseException) -> None:
        super().__init__(f"ClickHouse refused rows for {table}: {type(cause).__name__}: {cause}"[:2000])


class SinkStopping(Exception):
    """The sink was asked to stop while it waited for ClickHouse or the broker: the batch stays uncommitted."""


def event_time_problem(ms: int) -> str | None:
    """Why an event time cannot go into ClickHouse, or None when it can."""
    if EARLIEST_MS <= ms < LATEST_MS:
        return None
    guesses = (("microseconds", ms // 1000), ("nanoseconds", ms // 1_000_000), ("seconds", ms * 1000))
    unit = next((name for name, as_ms in guesses if ms > 0 and EARLIEST_MS <= as_ms < LATEST_MS), "")
    hint = f": in {unit}, not milliseconds since the epoch" if unit else ""
    return f"event_time_ms {ms} is outside {WINDOW}{hint}"


def broker_time_ms(msg: Received) -> int:
    """The message's broker timestamp when ClickHouse can hold it as an event time, else 0."""
    return msg.timestamp_ms if event_time_problem(msg.timestamp_ms) is None else 0


def _payload_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError


def decode_batch(codec: Codec, messages: Iterable[Received], now_ms: int) -> tuple[list[Decoded], list[Refused]]:
    """Each message as the rows it becomes, or why it cannot be stored (unreadable bytes, a bad event time)."""
    decoded: list[Decoded] = []
    refused: list[Refused] = []
    now_s = now_ms // 1000
    for msg in messages:
        try:
            event_type, record = codec.decode(msg.value or b"")
        except DecodeError as exc:
            refused.append(Refused(msg, exc.reason, exc.detail))
            continue
        own_ms = int(record.get("event_time_ms") or 0)
        # Not the time of this insert for an event without a time of its own: event_time picks the
        # month partition, and ReplacingMergeTree collapses copies inside one partition only, so the
        # same message stored again after a restart in another month would stay two rows for good.
        event_ms = own_ms or broker_time_ms(msg)
        problem = event_time_problem(own_ms) if own_ms else None
        if problem is not None:
            refused.append(Refused(msg, Reason.UNSTORABLE, problem))
            continue
        name = event_type.short_name
        try:
            rows: list[tuple[str, dict[str, Any]]] = [("events", {
                "topic": msg.topic, "event_type": name, "event_id": str(record.get("event_id", "")),
                "key": msg.key.decode(errors="replace") if msg.key else "", "partition": msg.partition,
                "offset": msg.offset, "event_time": event_ms // 1000, "event_time_ms": event_ms,
                "ingested_at": now_s, "payload": orjson.dumps(record, default=_payload_default).decode(),
            })]  # fmt: skip
            rows.extend(facts.rows_of(name, record, event_ms, f"{msg.partition}.{msg.offset}"))
        except Exception as exc:  # noqa: BLE001 - one event's rows failing must not stop the others
            refused.append(Refused(msg, Reason.UNSTORABLE, f"its rows could not be built: {exc!r}"))
            continue
        decoded.append(Decoded(msg, name, rows))
    return decoded, refused


def columns_of(batch: Sequence[Decoded]) -> dict[str, dict[str, list[Any]]]:
    """The rows of ``batch`` as columns per table (table -> column -> values), ``events`` first."""
    by_table: dict[str, list[dict[str, Any]]] = {}
    for item in batch:
        for table, row in item.rows:
            rows = by_table.get(table)
            if rows is None:
                by_table[table] = [row]
            else:
                rows.append(row)
    # A comprehension per column: appending value by value was 13% of the sink's time in a profile.
    return {table: {name: [row[name] for row in rows] for name in rows[0]} for table, rows in by_table.items()}


def rows_for_batch(codec: Codec, messages: Iterable[Received], now_ms: int
                   ) -> tuple[dict[str, dict[str, list[Any]]], list[Refused]]:  # fmt: skip
    """Columns per table for the storable messages, and the refused ones."""
    decoded, refused = decode_batch(codec, messages, now_ms)
    return columns_of(decoded), refused


class SharedClickHouse:
    """The sink process's one ClickHouse connection, opened on first use and again after a failure.

    The insert loop and the HTTP views share it: an embedded ClickHouse is one chdb session per
    folder and process, so the dashboards must be read through the session that writes.
    """

    def __init__(self, settings: Settings, opener: Callable[[Settings], ClickHouse] = open_clickhouse) -> None:
        self.settings = settings
        self._opener = opener
        self._lock = threading.Lock()
        self._ch: ClickHouse | None = None

    def get(self) -> ClickHouse:
        with self._lock:
            if self._ch is None:
                self._ch = self._opener(self.settings)
            return self._ch

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return self.get().query(sql, params)

    def drop(self) -> None:
        """Forget a connection that failed; the next use opens a new one."""
        with self._lock:
            ch, self._ch = self._ch, None
        if ch is not None:
            try:
                ch.close()
            except Exception as exc:  # noqa: BLE001 - it is broken already; only the new one matters
                log.debug("closing a failed ClickHouse connection: %r", exc)


class BatchWriter:
    """Inserts batches; hands back what ClickHouse cannot hold instead of stopping on it."""

    def __init__(self, codec: Codec, clickhouse: SharedClickHouse, status: SinkStatus,
                 stopping: Callable[[], bool] = lambda: False, backoff: Backoff | None = None,
                 native: bool = True) -> None:  # fmt: skip
        self.codec = codec
        # Embedded ClickHouse reads the busiest events' Avro itself (agents.analytics.sink_native).
        self.native = native
        self.clickhouse = clickhouse
        self.status = status
        self.stopping = stopping
        self.backoff = backoff or Backoff(first_s=0.2, max_s=10.0)

    def write(self, messages: Sequence[Received], now_ms: int) -> list[Refused]:
        """Insert every storable message; return the refused ones (to be dead-lettered).

        Returns only once ClickHouse holds the rest: an outage is waited out. Raises ``SinkStopping``
        when asked to stop during that wait, and any error that is neither an outage nor a row.
        """
        groups, rest = self._native_groups(messages)
        refused: list[Refused] = []
        stored: dict[str, int] = {}
        for group in groups:
            out_of_window = self._store_native(group, messages, now_ms)
            if out_of_window is None:  # refused as a whole: the Python path finds which events and why
                rest.extend(messages[i] for i in group.indexes)
                continue
            refused.extend(out_of_window)
            if len(group.indexes) > len(out_of_window):
                name = group.event_type.short_name
                stored[name] = stored.get(name, 0) + len(group.indexes) - len(out_of_window)
        decoded, unreadable = self._decode(rest, now_ms)
        refused.extend(unreadable)
        self.status.unreadable += sum(1 for r in unreadable if r.reason is not Reason.UNSTORABLE)
        if (decoded or stored) and not self.status.first_insert_ms:
            self.status.first_insert_ms = int(time.time() * 1000)
        unstorable = self._store(decoded)
        if unstorable:
            refused_ids = {id(r.message) for r in unstorable}
            decoded = [d for d in decoded if id(d.message) not in refused_ids]
            refused.extend(unstorable)
        self.status.unstorable += sum(1 for r in refused if r.reason is Reason.UNSTORABLE)
        for refusal in refused:
            # Unreadable bytes are everyday bad input; an unstorable event is a producer to go and fix.
            msg = refusal.message
            if refusal.reason is Reason.UNSTORABLE:
                self.status.last_error = f"{msg.topic}[{msg.partition}]@{msg.offset}: {refusal.detail}"[:500]
                log.warning("%s[%d]@%d is unstorable: %s", msg.topic, msg.partition, msg.offset, refusal.detail)
            else:
                log.info("%s[%d]@%d is unreadable (%s): %s", msg.topic, msg.partition, msg.offset, refusal.reason,
                         refusal.detail)  # fmt: skip
        for item in decoded:
            stored[item.event_type] = stored.get(item.event_type, 0) + 1
        self.status.rows += sum(stored.values())
        self.status.batches += 1
        self.status.last_insert_ms = int(time.time() * 1000)
        self.status.last_insert_ok = True
        for name, n in stored.items():
            self.status.by_type[name] = self.status.by_type.get(name, 0) + n
        return refused

    def _native_groups(self, messages: Sequence[Received]) -> tuple[list[sink_native.Group], list[Received]]:
        """The messages that may take the embedded fast path, per (topic, event type); the rest."""
        # Decided from the settings, not a connection: opening one here would not be retried.
        if not self.native or not self.clickhouse.settings.clickhouse_url.startswith("chdb"):
            return [], list(messages)
        groups: dict[tuple[str, str], sink_native.Group] = {}
        rest: list[Received] = []
        for i, msg in enumerate(messages):
            value = msg.value
            event_type = sink_native.native_type(self.codec, value)
            if event_type is None or value is None or not sink_native.fast_path_key(msg.key):
                rest.append(msg)
                continue
            group = groups.get((msg.topic, event_type.name))
            if group is None:
                group = groups[(msg.topic, event_type.name)] = sink_native.Group(msg.topic, event_type)
            group.datums.append(sink_native.envelope_datum(len(group.indexes), msg.partition, msg.offset, msg.key,
                                                           value))  # fmt: skip
            group.indexes.append(i)
        return list(groups.values()), rest

    def _store_native(self, group: sink_native.Group, messages: Sequence[Received], now_ms: int
                      ) -> list[Refused] | None:  # fmt: skip
        """Insert one group through ClickHouse's Avro reader, once; its events outside the time window,
        refused; None when ClickHouse cannot take the group as it is (it then takes the Python path)."""
        window = (EARLIEST_MS, LATEST_MS)
        records = len(group.indexes)
        try:
            ch = self.clickhouse.get()
            if not isinstance(ch, EmbeddedClickHouse):
                return None
            found = ch.run_on_avro(
                sink_native.container(group.event_type, group.datums), sink_native.probe(window),
                sink_native.statements(group.event_type, now_ms // 1000, window), {"topic": group.topic},
                lambda rows: bool(rows) and sink_native.readable(rows[0], records),
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - one try: the Python path retries outages and sorts out rows
            # What fails here (a body the Avro reader cannot read, a value a column cannot hold, a
            # full disk, ClickHouse away) is for the Python path to tell apart and wait out.
            log.info("ClickHouse's Avro reader refused %d %s (%s); the Python path takes them",
                     records, group.event_type.short_name, str(exc)[:300])  # fmt: skip
            return None
        if found is None:
            log.info("%d %s did not read back as written (a body cut short or too long, text that is not "
                     "UTF-8, an event time of 0); the Python path takes them", records,
                     group.event_type.short_name)  # fmt: skip
            return None
        self.status.clickhouse_ok = True
        return [Refused(messages[group.indexes[n]], Reason.UNSTORABLE, event_time_problem(ms) or "")
                for n, ms in found[0]["out_of_window"]]  # fmt: skip

    def _decode(self, messages: Sequence[Received], now_ms: int) -> tuple[list[Decoded], list[Refused]]:
        """``decode_batch``, waiting out a Schema Registry that does not answer (an outage, like
        ClickHouse's: the batch waits, no message is blamed for it)."""

        def failed(exc: BaseException) -> None:
            self.status.last_error = f"schema registry: {exc}"[:500]
            if self.stopping():
                raise SinkStopping(f"stopped while the schema registry was failing: {exc}") from exc

        return Retry("decoding a batch (schema registry)", (SchemaRegistryUnavailable,), backoff=self.backoff,
                     log=log).call(lambda: decode_batch(self.codec, messages, now_ms), failed)  # fmt: skip

    def _store(self, batch: list[Decoded]) -> list[Refused]:
        """Insert ``batch``; on a refused row, split it until the refused events stand alone."""
        if not batch:
            return []
        try:
            for table, columns in columns_of(batch).items():
                self._insert(table, columns)
        except RowsRefused as exc:
            if len(batch) == 1:
                return [Refused(batch[0].message, Reason.UNSTORABLE, str(exc))]
            # Halves that were inserted before the refusal are inserted again: ReplacingMergeTree
            # keeps one row per event id. A refused event may keep rows its other tables accepted.
            middle = len(batch) // 2
            return self._store(batch[:middle]) + self._store(batch[middle:])
        return []

    def _insert(self, table: str, columns: dict[str, list[Any]]) -> None:
        def attempt() -> None:
            ch = self.clickhouse.get()
            try:
                ch.insert(table, columns)
            except Exception as exc:
                if not clickhouse_retriable(exc) and refused_for_content(exc):
                    raise RowsRefused(table, exc) from exc
                raise
            self.status.clickhouse_ok = True

        def failed(exc: BaseException) -> None:  # ClickHouse away or busy: reconnect, hold the batch
            self.status.retries += 1
            self.status.last_error = f"{type(exc).__name__}: {exc}"[:500]
            self.status.clickhouse_ok = False
            self.status.last_insert_ok = False
            self.clickhouse.drop()
            if self.stopping():
                raise SinkStopping(f"stopped while ClickHouse was failing: {self.status.last_error}") from exc

        # No bound: while ClickHouse is away, the batch and the sink's offsets wait for it.
        Retry(f"ClickHouse insert into {table}", clickhouse_retriable, backoff=self.backoff, log=log).call(
            attempt, failed
        )
