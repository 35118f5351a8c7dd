"""ClickHouse behind one small interface, embedded (chdb) or server (native protocol).

Both backends run the same SQL: DDL from ``schemas/ddl/NNN_*.sql`` (applied in order, recorded in
``schema_migrations``) and queries whose parameters are written ``{name:Type}``. Parameters are
always bound, never formatted into SQL by us: chdb binds them natively; for the server the
placeholders become clickhouse-driver's ``%(name)s``, which the driver escapes by type (the 18.x
servers Debian ships predate server-side parameters). Inserts pass rows as columns of data.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import orjson

from streams import extras
from streams.errors import StockflowError
from streams.resources import packaged
from streams.settings import Settings

DDL_DIR = packaged("schemas", "ddl")
_PLACEHOLDER = re.compile(r"\{(\w+):[^}]+\}")
_AVRO_INPUT = "avro_input"  # the temporary table run_on_avro's statements read
_SPOOL_PREFIX = "stockflow-sink-"  # run_on_avro's files: the prefix, the writing process's pid, a random part
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ClickHouse(Protocol):
    backend: str

    def execute(self, sql: str) -> None: ...

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...

    def insert(self, table: str, columns: dict[str, list[Any]]) -> int: ...

    def close(self) -> None: ...


def _check_ident(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"not a valid identifier: {name!r}")
    return name


class ClickHouseFolderBusy(StockflowError, RuntimeError):
    """Another process has the embedded ClickHouse folder open: a configuration matter, never waited out."""


def folder_owner(path: Path) -> str | None:
    """Which other process has the embedded ClickHouse folder ``path`` open (its server's status file, locked while
    it runs: "PID: N"), or None when none does (this process may: chdb shares one server per process). chdb itself
    fails then with an empty "Error initializing EmbeddedServer"."""
    status = path / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:  # none yet, or not ours to read: chdb says what it finds
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        first = os.pread(fd, 200, 0).decode(errors="replace").splitlines()
        owner = first[0].strip() if first else "another process"
        return None if owner == f"PID: {os.getpid()}" else owner
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class EmbeddedClickHouse:
    """chdb in this process, data under a local folder. One session at a time per folder."""

    backend = "embedded"

    def __init__(self, path: Path, database: str) -> None:
        extras.ensure(extras.CHDB)
        from chdb import session

        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        owner = folder_owner(path)
        if owner is not None:
            raise ClickHouseFolderBusy(
                f"the embedded ClickHouse folder {path} is open in another process ({owner}): one process at a "
                "time owns it (a sink, or dash / web with no sink running); stop that one, or give this one "
                "another folder (STOCKFLOW_CLICKHOUSE_URL=chdb://...)")  # fmt: skip
        self._lock = threading.Lock()  # a chdb session is not safe for concurrent queries
        self._session = session.Session(str(path))
        db = _check_ident(database)
        self._session.query(f"CREATE DATABASE IF NOT EXISTS {db}")
        self._session.query(f"USE {db}")
        self._session.query("SET output_format_json_quote_64bit_integers = 0")
        for name, value in SESSION_SETTINGS.items():
            self._session.query(f"SET {name} = {value}")
        shm = Path("/dev/shm")
        self._spool = str(shm if shm.is_dir() and os.access(shm, os.W_OK) else path)
        if "'" in self._spool:
            raise ValueError(f"a ClickHouse folder with a quote in its path: {path}")
        self._clear_spool()

    def execute(self, sql: str) -> None:
        with self._lock:
            self._session.query(sql)

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            result = self._session.query(sql, "JSONEachRow", params=params or {})
        data = result.bytes()
        return [orjson.loads(line) for line in data.splitlines() if line]

    def insert(self, table: str, columns: dict[str, list[Any]]) -> int:
        import pyarrow as pa

        if not columns:
            return 0
        names = ", ".join(_check_ident(c) for c in columns)
        batch = pa.table(columns)  # noqa: F841 - read by chdb's Python() table function below
        with self._lock:
            self._session.query(f"INSERT INTO {_check_ident(table)} ({names}) SELECT {names} FROM Python(batch)")
        return len(next(iter(columns.values())))

    def run_on_avro(self, data: bytes, probe: str, statements: Sequence[str], params: dict[str, Any],
                    proceed: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]] | None:  # fmt: skip
        """Over ``data``, an Avro object container file each query reads as ``{input}``: run ``probe``,
        and ``statements`` only if ``proceed`` says yes to its rows; the probe's rows, or None when the
        statements did not run. The file is read once, into a temporary in-memory table the queries
        share (a third less CPU than each reading the file), on one thread: the sink is a background
        process and should not fan out over the cores the workers need."""
        fd, name = tempfile.mkstemp(prefix=f"{_SPOOL_PREFIX}{os.getpid()}-", suffix=".avro", dir=self._spool)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            with self._lock:
                try:
                    self._session.query(f"CREATE TEMPORARY TABLE {_AVRO_INPUT} ENGINE = Memory AS SELECT * FROM "
                                        f"file('{name}', 'Avro') SETTINGS max_threads = 1")  # fmt: skip
                    answer = self._session.query(self._on_input(probe), "JSONEachRow", params=params)
                    found = [orjson.loads(line) for line in answer.bytes().splitlines() if line]
                    if not proceed(found):
                        return None
                    for sql in statements:
                        self._session.query(self._on_input(sql), params=params)
                    return found
                finally:
                    self._session.query(f"DROP TEMPORARY TABLE IF EXISTS {_AVRO_INPUT}")
        finally:
            os.unlink(name)

    @staticmethod
    def _on_input(sql: str) -> str:
        return f"{sql.replace('{input}', _AVRO_INPUT)} SETTINGS max_threads = 1"

    def _clear_spool(self) -> None:
        """Files a sink killed mid-insert left behind (its pid is in their name and it is gone)."""
        for stale in Path(self._spool).glob(f"{_SPOOL_PREFIX}*.avro"):
            pid = stale.name[len(_SPOOL_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                stale.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            self._session.close()


# Every table is partitioned by month, and ClickHouse refuses an insert spanning over 100 partitions
# (TOO_MANY_PARTS) by default: a backfill or a replay of old topics whose events span over eight years
# would be refused whole, every time, and the sink would wait on it for good. The event-time window the
# sink accepts (2000-2100) is 1,200 months, all of which one insert may now hold.
# Set on every session. ReplacingMergeTree keeps one copy of an event within a month's partition, and the sink puts
# every copy of an event in that event's own month: FINAL then need not merge across partitions, and not merging
# lets a query's time range skip the months outside it (merging, every dashboard read the table's whole history,
# and on embedded ClickHouse held the sink's inserts meanwhile).
SESSION_SETTINGS = {"max_partitions_per_insert_block": 0, "do_not_merge_across_partitions_select_final": 1}


class ServerClickHouse:
    """A ClickHouse server over the native protocol (clickhouse-driver)."""

    backend = "server"

    def __init__(self, host: str, port: int, database: str, user: str, password: str) -> None:
        extras.ensure(extras.CLICKHOUSE_SERVER)
        from clickhouse_driver import Client

        db = _check_ident(database)
        Client(host, port=port, user=user, password=password).execute(f"CREATE DATABASE IF NOT EXISTS {db}")
        self._client = Client(host, port=port, database=db, user=user, password=password)
        # A server older than the partition limit (Debian's 18.16) refuses the setting's name, and needs none.
        known = {row[0] for row in self._client.execute("SELECT name FROM system.settings")}
        self._client.settings.update({k: v for k, v in SESSION_SETTINGS.items() if k in known})
        self._lock = threading.Lock()

    def execute(self, sql: str) -> None:
        with self._lock:
            self._client.execute(sql)

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        driver_sql = _PLACEHOLDER.sub(r"%(\1)s", sql.replace("%", "%%")) if params else sql
        with self._lock:
            rows, cols = self._client.execute(driver_sql, params or None, with_column_types=True)
        names = [c[0] for c in cols]
        return [dict(zip(names, row, strict=True)) for row in rows]

    def insert(self, table: str, columns: dict[str, list[Any]]) -> int:
        if not columns:
            return 0
        names = ", ".join(_check_ident(c) for c in columns)
        with self._lock:
            self._client.execute(
                f"INSERT INTO {_check_ident(table)} ({names}) VALUES",
                list(columns.values()),
                columnar=True,
            )
        return len(next(iter(columns.values())))

    def close(self) -> None:
        with self._lock:
            self._client.disconnect()


def backend_extra(settings: Settings) -> extras.Extra | None:
    """The extra the configured backend needs (None for a URL that names neither; opening says why)."""
    scheme = urlparse(settings.clickhouse_url).scheme
    return {"chdb": extras.CHDB, "clickhouse": extras.CLICKHOUSE_SERVER}.get(scheme)


def backend_missing(settings: Settings) -> str | None:
    """One line naming the extra to install when the configured backend's package is missing, else None."""
    extra = backend_extra(settings)
    return extras.missing(extra) if extra is not None else None


def open_clickhouse(settings: Settings, migrate: bool = True) -> ClickHouse:
    """Open the configured backend and bring its schema up to date."""
    url = urlparse(settings.clickhouse_url)
    ch: ClickHouse
    if url.scheme == "chdb":
        path = Path(url.path) if url.path not in ("", "/") else settings.home_dir / "chdb"
        ch = EmbeddedClickHouse(path, settings.clickhouse_database)
    elif url.scheme == "clickhouse":
        database = url.path.strip("/") or settings.clickhouse_database
        ch = ServerClickHouse(
            url.hostname or "127.0.0.1",
            url.port or 9000,
            database,
            unquote(url.username or "default"),
            unquote(url.password or ""),
        )
    else:
        raise ValueError(
            f"STOCKFLOW_CLICKHOUSE_URL must start with chdb:// or clickhouse://, not {settings.clickhouse_url_shown!r}"
        )
    if migrate:
        apply_migrations(ch)
    return ch


def migration_files(ddl_dir: Path = DDL_DIR) -> list[tuple[int, Path]]:
    files = []
    for path in sorted(ddl_dir.glob("*.sql")):
        number = path.name.split("_", 1)[0]
        if number.isdigit():
            files.append((int(number), path))
    return files


def apply_migrations(ch: ClickHouse, ddl_dir: Path = DDL_DIR) -> list[int]:
    """Apply the numbered DDL files not yet recorded; every statement is idempotent (a column added already is
    not added again)."""
    ch.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version UInt32, name String, applied_at DateTime) ENGINE = MergeTree() ORDER BY version"
    )
    done = {row["version"] for row in ch.query("SELECT DISTINCT version FROM schema_migrations")}
    applied = []
    for version, path in migration_files(ddl_dir):
        if version in done:
            continue
        for statement in _statements(path.read_text(encoding="utf-8")):
            if not _column_there(ch, statement):
                ch.execute(statement)
        ch.insert(
            "schema_migrations",
            {"version": [version], "name": [path.name], "applied_at": [int(time.time())]},
        )
        applied.append(version)
    return applied


_ADD_COLUMN = re.compile(r"ALTER TABLE (\w+) ADD COLUMN (\w+) ", re.IGNORECASE)


def _column_there(ch: ClickHouse, statement: str) -> bool:
    """Whether ``statement`` adds a column its table has already: a migration stopped after it ran is applied
    again whole, and the Debian server (18.16) knows no ``ADD COLUMN IF NOT EXISTS``."""
    added = _ADD_COLUMN.match(statement)
    return added is not None and bool(ch.query(
        "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {table:String} "
        "AND name = {column:String}", {"table": added[1], "column": added[2]}))  # fmt: skip


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
