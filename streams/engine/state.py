"""Per-partition state: a RocksDB store behind a compacted changelog, and the batch transaction over it.

One ``PartitionStore`` per (store, input partition), in its own RocksDB folder, so a worker opens
only what it owns and a partition moves between workers as a unit. The store keeps, beside the
values, the changelog offset it has applied up to; both are written in one RocksDB write batch, so
the folder is always a consistent prefix of the changelog.

A store whose keys carry timers also keeps, in the same folder and the same write batches, an index of
when each key is next due (``due_between``), derived from the values by the owning processor's
``due_ms`` and never published: the engine then holds in memory only the timers due soon, and a
restart reads the index instead of parsing every value (a month of retained orders would be millions).

The order that makes a crash harmless (the engine loop follows it): a batch's changes live only in
the ``StoreTransaction`` cache until the Kafka transaction that carries their changelog records,
the outputs and the input offsets has committed; only then are they written to RocksDB. A
``kill -9`` before that loses nothing durable (the input is read again); after it, the local folder
may lag the changelog, and restoring from the stored offset catches it up. The folder is therefore
never ahead of its changelog, which is the one thing that must never happen.
"""

from __future__ import annotations

import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import orjson
from rocksdict import Options, Rdict, WriteBatch

V = TypeVar("V")
# Engine bookkeeping lives under a prefix no business key can start with.
ENGINE_PREFIX = b"\x00"
META_PREFIX = b"\x00meta:"
# The timer index: key -> when it is next due, and (due, key) in due order; 8-byte big-endian times.
DUE_PREFIX = b"\x00due:"
AT_PREFIX = b"\x00at:"
DUE_INDEX = META_PREFIX + b"due_index"  # present once every key's timer is in the index
CHANGELOG_OFFSET = META_PREFIX + b"changelog_offset"
# Wall time (epoch ms) of the last write: how long ago the folder last matched its changelog. A folder
# left behind longer than the changelog keeps its deletes (``delete.retention.ms``) may hold keys
# whose tombstones compaction has since removed, and is rebuilt rather than caught up.
WRITTEN_MS = META_PREFIX + b"written_ms"
_DELETED = object()
# Bytes of values a partition store keeps in memory beside RocksDB, the most recently written: a
# SKU's totals and an order's record are read again a batch or two after they were written, and a
# RocksDB read was 8% of the engine thread at 750 orders/s (py-spy). Bytes, never parsed objects, so
# nothing a batch changes in place can reach them before the batch commits. An order's record is
# ~1.4 KB: this holds the last ~5,000 orders of a partition, 8 MiB per store and owned partition.
RECENT_BYTES = 8 << 20
INDEX_WRITE_EVERY = 10_000  # keys indexed per write while an index is built
# When a stored key is next due, from its raw value; None: a key that never carries a timer.
DueOf = Callable[[bytes, bytes], int | None]


@dataclass(frozen=True)
class Serde(Generic[V]):
    """How a store's values become bytes and back (orjson documents unless a processor says otherwise)."""

    dumps: Callable[[V], bytes]
    loads: Callable[[bytes], V]


JSON: Serde[Any] = Serde(orjson.dumps, orjson.loads)


class PartitionStore:
    """One store's RocksDB folder for one partition."""

    def __init__(self, path: Path, due_of: DueOf | None = None) -> None:
        self.path = path
        self.due_of = due_of
        path.parent.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self._db = Rdict(str(path), options=options)
        self._recent: OrderedDict[bytes, bytes | None] = OrderedDict()  # the newest writes last; None: deleted
        self._recent_bytes = 0
        if due_of is not None and self._db.get(DUE_INDEX) is None and next(self.items(), None) is None:
            self._db.put(DUE_INDEX, b"1")  # nothing stored: the index is complete as it is

    def approximate_keys(self) -> int:
        """RocksDB's estimate of the keys held (cheap: no scan), for the state-size metric."""
        return self._db.property_int_value("rocksdb.estimate-num-keys") or 0

    @property
    def changelog_offset(self) -> int:
        """The newest changelog offset applied here; -1 when nothing was."""
        raw = self._db.get(CHANGELOG_OFFSET)
        return int(raw) if raw is not None else -1

    @property
    def written_ms(self) -> int:
        """When the folder was last written (epoch ms); 0 when never, or before this was recorded."""
        raw = self._db.get(WRITTEN_MS)
        return int(raw) if raw is not None else 0

    def get(self, key: bytes) -> bytes | None:
        recent = self._recent.get(key, _DELETED)
        if recent is not _DELETED:
            return cast(bytes | None, recent)
        value: bytes | None = self._db.get(key)
        return value

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every business key and value (the engine's bookkeeping and timer index left out)."""
        for key, value in self._db.items():
            raw = cast(bytes, key)  # raw mode: keys are bytes
            if not raw.startswith(ENGINE_PREFIX):
                yield raw, value

    def due_between(self, after_ms: int, until_ms: int) -> Iterator[tuple[int, bytes]]:
        """(due, key) of every timer due after ``after_ms`` and by ``until_ms``, earliest first."""
        end = AT_PREFIX + (until_ms + 1).to_bytes(8, "big")
        for raw, _ in self._db.items(from_key=AT_PREFIX + (after_ms + 1).to_bytes(8, "big")):
            entry = cast(bytes, raw)
            if entry >= end:
                return
            yield int.from_bytes(entry[len(AT_PREFIX) : len(AT_PREFIX) + 8], "big"), entry[len(AT_PREFIX) + 8 :]

    def ensure_due_index(self) -> int:
        """Build the timer index if this folder does not have a whole one (written before it existed, or
        interrupted): every value parsed once. Returns the keys parsed (0: the index was there)."""
        if self.due_of is None or self._db.get(DUE_INDEX) is not None:
            return 0
        batch, parsed = WriteBatch(raw_mode=True), 0
        for prefix in (DUE_PREFIX, AT_PREFIX):
            for raw, _ in self.scan(prefix):
                batch.delete(raw)
        self._db.write(batch)
        batch = WriteBatch(raw_mode=True)
        for key, value in self.items():
            due = self.due_of(key, value)
            if due is None:
                continue
            parsed += 1
            if due > 0:
                at = due.to_bytes(8, "big")
                batch.put(DUE_PREFIX + key, at)
                batch.put(AT_PREFIX + at + key, b"")
            if parsed % INDEX_WRITE_EVERY == 0:
                self._db.write(batch)
                batch = WriteBatch(raw_mode=True)
        batch.put(DUE_INDEX, b"1")
        self._db.write(batch)
        return parsed

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Keys starting with ``prefix``, in key order."""
        for key, value in self._db.items(from_key=prefix):
            raw = cast(bytes, key)
            if not raw.startswith(prefix):
                return
            yield raw, value

    def apply(self, changes: dict[bytes, bytes | None], changelog_offset: int, remember: bool = True,
              dues: dict[bytes, int] | None = None) -> None:  # fmt: skip
        """Write a committed batch's changes and the changelog offset they reach, atomically;
        ``remember``: keep them in memory too (not for a restore, which writes everything once).
        ``dues``: what the batch scheduled (0: no timer); a key it did not schedule keeps its timer, a
        deleted one loses it. Without it (a restore), the index reads each due from the value."""
        batch = WriteBatch(raw_mode=True)
        for key, value in changes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if self.due_of is not None:
            self._index(batch, changes, dues)
        if changelog_offset >= 0:
            batch.put(CHANGELOG_OFFSET, str(changelog_offset).encode())
        batch.put(WRITTEN_MS, str(int(time.time() * 1000)).encode())
        self._db.write(batch)
        if remember:
            self._remember(changes)

    def _index(self, batch: WriteBatch, changes: dict[bytes, bytes | None], dues: dict[bytes, int] | None) -> None:
        """Keep the timer index with the values: a deleted key loses its timer; with ``dues`` (a batch),
        every key the batch scheduled gets what it scheduled; without (a restore), each changed key the
        due time its value says."""
        if dues is None:
            due_of = cast(DueOf, self.due_of)
            wanted = {key: due_of(key, value) if value is not None else 0 for key, value in changes.items()}
        else:
            wanted = {**dues, **{key: 0 for key, value in changes.items() if value is None}}
        for key, due in wanted.items():
            if due is None:
                continue  # a key that never carries a timer
            old = self._db.get(DUE_PREFIX + key)
            at = due.to_bytes(8, "big") if due > 0 else None
            if old == at:
                continue
            if old is not None:
                batch.delete(AT_PREFIX + old + key)
            if at is None:
                batch.delete(DUE_PREFIX + key)
            else:
                batch.put(DUE_PREFIX + key, at)
                batch.put(AT_PREFIX + at + key, b"")

    def _remember(self, changes: dict[bytes, bytes | None]) -> None:
        recent = self._recent
        size = self._recent_bytes
        for key, value in changes.items():
            old = recent.pop(key, _DELETED)
            if old is not _DELETED:
                size -= len(key) + len(cast(bytes | None, old) or b"")
            size += len(key) + len(value or b"")
            recent[key] = value
        while size > RECENT_BYTES and recent:
            key, value = recent.popitem(last=False)
            size -= len(key) + len(value or b"")
        self._recent_bytes = size

    def forget_recent(self) -> None:
        """Drop the values kept in memory (the partition went to another worker)."""
        self._recent.clear()
        self._recent_bytes = 0

    def close(self) -> None:
        self._db.close()

    def wipe(self) -> PartitionStore:
        """Drop the folder and start empty (its changelog is then restored from the beginning)."""
        self._db.close()
        Rdict.destroy(str(self.path))
        shutil.rmtree(self.path, ignore_errors=True)
        return PartitionStore(self.path, self.due_of)


class MemoryStore(PartitionStore):
    """A partition store in a dict: what ``streams.engine.local`` runs processors on in unit tests."""

    def __init__(self) -> None:
        self.path = Path("memory")
        self.due_of = None  # no timer index: the local runner keeps every timer in memory
        self._data: dict[bytes, bytes] = {}
        self._offset = -1

    @property
    def changelog_offset(self) -> int:
        return self._offset

    @property
    def written_ms(self) -> int:
        return int(time.time() * 1000)

    def approximate_keys(self) -> int:
        return len(self._data)

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        yield from list(self._data.items())

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        yield from sorted((k, v) for k, v in self._data.items() if k.startswith(prefix))

    def apply(self, changes: dict[bytes, bytes | None], changelog_offset: int, remember: bool = True,
              dues: dict[bytes, int] | None = None) -> None:  # fmt: skip
        for key, value in changes.items():
            if value is None:
                self._data.pop(key, None)
            else:
                self._data[key] = value
        self._offset = max(self._offset, changelog_offset)

    def due_between(self, after_ms: int, until_ms: int) -> Iterator[tuple[int, bytes]]:
        return iter(())

    def close(self) -> None:
        return None

    def wipe(self) -> PartitionStore:
        return MemoryStore()


class StoreTransaction(Generic[V]):
    """A batch's view of one partition store: reads see the batch's own writes; nothing is stored
    until ``committed`` runs after the Kafka transaction committed.

    Values are kept as Python objects for the whole batch, so a hot key touched by a thousand events
    in one batch is parsed once and serialised once: one changelog record per changed key per batch.
    """

    def __init__(self, store: PartitionStore, serde: Serde[V]) -> None:
        self._store = store
        self._serde = serde
        self._cache: dict[bytes, Any] = {}
        self._dirty: set[bytes] = set()

    def get(self, key: bytes) -> V | None:
        if key in self._cache:
            value = self._cache[key]
            return None if value is _DELETED else value
        raw = self._store.get(key)
        value = self._serde.loads(raw) if raw is not None else None
        self._cache[key] = value if value is not None else _DELETED
        return value

    def set(self, key: bytes, value: V) -> None:
        """Record ``value`` as the key's new state. The object may be changed in place until the
        batch ends: it is serialised once, when the batch's changelog records are produced."""
        self._cache[key] = value
        self._dirty.add(key)

    def delete(self, key: bytes) -> None:
        self._cache[key] = _DELETED
        self._dirty.add(key)

    def scan(self, prefix: bytes) -> list[tuple[bytes, V]]:
        """Keys starting with ``prefix`` as this batch sees them (its own writes and deletes included)."""
        seen: dict[bytes, Any] = {}
        for key, raw in self._store.scan(prefix):
            # Kept like a get's: a later get or scan in the batch hands out the same object, so a change
            # made in place through one is seen through the other.
            if key not in self._cache:
                self._cache[key] = self._serde.loads(raw)
            seen[key] = self._cache[key]
        for key in self._dirty:
            if key.startswith(prefix):
                seen[key] = self._cache[key]
        return sorted((k, v) for k, v in seen.items() if v is not _DELETED)

    def changes(self) -> dict[bytes, bytes | None]:
        """Every key this batch changed, serialised (None: deleted)."""
        out: dict[bytes, bytes | None] = {}
        for key in self._dirty:
            value = self._cache[key]
            out[key] = None if value is _DELETED else self._serde.dumps(value)
        return out

    def __bool__(self) -> bool:
        return bool(self._dirty)


def records_serde(from_dict: Callable[[dict[str, Any]], V]) -> Serde[V]:
    """A serde for stored dataclasses: JSON out (orjson writes dataclasses as they are), the dataclass
    back in through ``from_dict``, so a batch, the timers and the HTTP views all see the same type."""
    return Serde(orjson.dumps, lambda raw: from_dict(orjson.loads(raw)))


class ReadOnlyStore(Generic[V]):
    """Another processor's store as a reader sees it in a batch: the owner's writes of the same batch
    included, but no way to change it (a store has one writer, as a topic does)."""

    def __init__(self, txn: StoreTransaction[V]) -> None:
        self._txn = txn

    def get(self, key: bytes) -> V | None:
        return self._txn.get(key)

    def scan(self, prefix: bytes) -> list[tuple[bytes, V]]:
        return self._txn.scan(prefix)


@dataclass
class StoreSpec(Generic[V]):
    """A store a processor owns: its name (the changelog topic derives from it) and value serde."""

    name: str
    serde: Serde[V] = field(default_factory=lambda: JSON)
