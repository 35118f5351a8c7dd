"""Which local folders a restore trusts, from the changelog's watermarks and the folder's own bookkeeping
(the watermarks come from a stand-in: the restore itself is exercised on the broker in ``tests/integration``)."""

from __future__ import annotations

import time
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from streams.engine.changelog import TRUSTED_FOR_MS, _restore_ranges
from streams.engine.state import WRITTEN_MS, PartitionStore

CHANGELOG = ("app.holds.changelog", 0)


class Watermarks:
    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        return 0, 100


def folder(tmp_path: Path, written_ms: int) -> PartitionStore:
    store = PartitionStore(tmp_path / "holds" / "0")
    store.apply({b"line": b"HELD"}, 49)
    store._db.put(WRITTEN_MS, str(written_ms).encode())  # noqa: SLF001 - a folder left behind that long
    return store


def test_a_folder_written_recently_is_caught_up_from_its_offset(tmp_path: Path) -> None:
    store = folder(tmp_path, int(time.time() * 1000) - 60_000)
    out = {CHANGELOG: store}
    ends, assignment = _restore_ranges(Watermarks(), {CHANGELOG: store}, out)  # type: ignore[arg-type]
    assert out[CHANGELOG] is store and [(tp.offset) for tp in assignment] == [50] and ends == {CHANGELOG: 100}


def test_a_folder_left_longer_than_the_changelog_keeps_deletes_is_rebuilt(tmp_path: Path) -> None:
    """Changed on purpose: a folder was trusted by its offset alone, so one left behind for a day
    (a worker down, or its partitions elsewhere) kept a hold whose release compaction had since removed
    with its tombstone: the hold came back, expired, and was taken off the totals a second time."""
    store = folder(tmp_path, int(time.time() * 1000) - TRUSTED_FOR_MS - 60_000)
    out = {CHANGELOG: store}
    _, assignment = _restore_ranges(Watermarks(), {CHANGELOG: store}, out)  # type: ignore[arg-type]
    assert out[CHANGELOG] is not store and out[CHANGELOG].get(b"line") is None
    assert [tp.offset for tp in assignment] == [OFFSET_BEGINNING]
