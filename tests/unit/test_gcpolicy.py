"""The engine's garbage-collection pace: young collections between batches, never inside one."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from streams import gcpolicy


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_a_batch_worth_of_live_records_triggers_no_collection(restored_gc: None) -> None:
    gcpolicy.pace_for_batches(gcpolicy.BETWEEN_BATCHES)
    before = gc.get_stats()[0]["collections"]
    batch = [{"order": n} for n in range(300_000)]  # a large batch's records, alive until it ends
    assert gc.get_stats()[0]["collections"] == before
    del batch


def test_what_a_batch_leaves_is_collected_after_it(restored_gc: None) -> None:
    gcpolicy.pace_for_batches(gcpolicy.BETWEEN_BATCHES)
    survivors = [{"kept": n} for n in range(gcpolicy.YOUNG_AFTER_BATCH + 1)]
    cycle: dict[str, object] = {}
    cycle["self"] = cycle  # garbage that only a collection frees
    del cycle
    before = gc.get_stats()[0]["collections"]
    gcpolicy.collect_between_batches()
    assert gc.get_stats()[0]["collections"] == before + 1
    assert gc.get_count()[0] < gcpolicy.YOUNG_AFTER_BATCH
    del survivors


def test_a_small_remainder_waits_for_a_later_batch(restored_gc: None) -> None:
    gcpolicy.pace_for_batches(gcpolicy.BETWEEN_BATCHES)
    before = [s["collections"] for s in gc.get_stats()]
    gcpolicy.collect_between_batches()
    assert [s["collections"] for s in gc.get_stats()] == before
