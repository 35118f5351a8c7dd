"""The hot-SKU bucket rules (``agents.inventory.buckets``) one function at a time: plain records in, the
messages to send out; no engine, no broker. The processor's end-to-end behaviour is in test_hot_buckets.py."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from agents.inventory import buckets as b
from agents.inventory import rules
from agents.inventory.hold_stock import STORE, HoldStock, adjustment_key, pool_rules, sku_key
from agents.inventory.rules import Buckets, LineHold, SkuStock
from streams.contract.keys import bucket_key, partition_for
from streams.contract.topics import STOCK_BUCKETS
from streams.engine.local import LocalRunner
from streams.settings import Settings
from tests.unit.inventory.test_hold_stock import WAREHOUSES, receipt

SKU = "SKU-R"
POOL = pool_rules(Settings(safety_threshold=0, threshold_hysteresis=0))


def home(on_hand: dict[str, int], count: int = 4, **stock: Any) -> SkuStock:
    """A hot home record with ``count`` buckets that have reported nothing yet."""
    return SkuStock(SKU, known=True, on_hand=dict(on_hand), hot=Buckets(count=count, state=b.HOT), **stock)


def report(hot: Buckets, bucket: int, available: int, seq: int = 1, **fig: Any) -> None:
    hot.reports[str(bucket)] = {"seq": seq, "available": available, **fig}


def figures(on_hand: dict[str, int], open_lines: int = 0, seq: int = 1, acked: int = 0, **rest: Any) -> dict[str, Any]:
    return {"seq": seq, "acked": acked, "on_hand": on_hand, "available": sum(on_hand.values()), "locked": 0,
            "sold": 0, "presale_reserved": 0, "allocated": {}, "open_lines": open_lines, "newest_change_ms": 0,
            "newest_source_ms": 0, **rest}  # fmt: skip


def sent(syncs: list[b.Sync], kind: str) -> dict[int, b.Sync]:
    return {s.to_bucket: s for s in syncs if s.kind == kind}


# ---- cutting units up -------------------------------------------------------------------------------------
def test_apportion_cuts_exact_amounts_in_proportion_to_each_warehouse() -> None:
    parts = b.apportion({"WH-SH": 60, "WH-GZ": 40}, [25, 25, 25, 25])
    assert [b.total(p) for p in parts] == [25, 25, 25, 25]
    assert all(p == {"WH-SH": 15, "WH-GZ": 10} for p in parts)


def test_apportion_hands_remainders_out_without_making_or_losing_a_unit() -> None:
    units = {"WH-SH": 7, "WH-GZ": 3, "WH-BJ": 1}
    parts = b.apportion(units, [4, 4, 3])
    assert [b.total(p) for p in parts] == [4, 4, 3]
    assert {wh: sum(p.get(wh, 0) for p in parts) for wh in units} == units  # every unit in exactly one part
    assert all(q > 0 for p in parts for q in p.values())
    assert all("WH-SH" in p for p in parts)  # the big warehouse backs every part


def test_apportion_gives_no_more_than_there_is() -> None:
    parts = b.apportion({"WH-SH": 5}, [4, 4, 0])
    assert parts == [{"WH-SH": 4}, {"WH-SH": 1}, {}]
    assert b.apportion({"WH-SH": 0, "WH-GZ": -2}, [3]) == [{}]


def test_water_fill_raises_the_lowest_buckets_first() -> None:
    assert b.water_fill(10, [0, 8, 2, 5]) == [6, 0, 4, 0]  # 0 and 2 rise to 6 each; 8 and 5 get nothing
    assert b.water_fill(100, [0, 0, 0, 0]) == [25, 25, 25, 25]


def test_water_fill_spreads_a_remainder_one_unit_each_to_the_lowest() -> None:
    assert b.water_fill(7, [1, 0, 1, 3]) == [2, 3, 2, 0]  # all level at 3
    # All at 3 takes 7; the 2 left go one each to the buckets that were lowest: 4, 4, 3, 3.
    assert b.water_fill(9, [1, 0, 1, 3]) == [3, 4, 2, 0]
    assert b.water_fill(2, [0, 0, 0]) == [1, 1, 0]  # ties: the lower bucket number first


def test_water_fill_treats_an_overdrawn_bucket_as_empty() -> None:
    assert b.water_fill(4, [-3, 0]) == [2, 2]


def test_movable_keeps_units_behind_every_open_line() -> None:
    stock = SkuStock(SKU, on_hand={"WH-SH": 10, "WH-GZ": 4}, locked=6, allocated={"WH-GZ": 3})
    # 3 lines are tied to WH-GZ by its own units; the other 3 are backed by the fullest warehouse.
    assert b.movable(stock) == {"WH-SH": 7, "WH-GZ": 1}
    assert b.movable(SkuStock(SKU, on_hand={"WH-SH": 2}, locked=2)) == {}
    assert b.movable(SkuStock(SKU, on_hand={"WH-SH": -1, "WH-GZ": 3})) == {"WH-GZ": 3}


# ---- passing a line on ------------------------------------------------------------------------------------
def test_next_hop_tries_every_bucket_once_in_order_then_gives_up() -> None:
    path, bucket, tries = [2], 2, 0
    while (nxt := b.next_hop(bucket, tries, 4)) is not None:
        path.append(nxt)
        bucket, tries = nxt, tries + 1
    assert path == [2, 3, 0, 1]
    assert b.next_hop(0, 0, 1) is None  # one bucket: nowhere else to go


def test_bucket_for_is_stable_and_spreads_orders() -> None:
    picks = [b.bucket_for(f"jd:{i}", 4) for i in range(400)]
    assert picks == [b.bucket_for(f"jd:{i}", 4) for i in range(400)]
    assert all(60 < picks.count(k) < 140 for k in range(4))
    assert b.bucket_key(SKU, b.HOME, 8) == SKU and b.bucket_key(SKU, 0, 8).startswith("SKU-R#0")
    assert b.home_sku("SKU-R#3", 3) == SKU and b.home_sku("A#B", b.HOME) == "A#B"


# ---- the home hands units out -----------------------------------------------------------------------------
def test_mark_splits_the_free_units_evenly_and_configures_every_bucket() -> None:
    stock = SkuStock(SKU, known=True, on_hand={"WH-SH": 102}, locked=2)
    out = b.mark(stock, 4, low_water=5)
    assert sorted(sent(out, b.CONFIG)) == [0, 1, 2, 3]
    transfers = sent(out, b.TRANSFER)
    assert [b.total(transfers[k].units) for k in range(4)] == [25, 25, 25, 25]
    assert stock.on_hand == {"WH-SH": 2} and stock.hot is not None and stock.hot.state == b.HOT


def test_mark_with_fewer_than_two_buckets_is_an_unmark() -> None:
    stock = home({"WH-SH": 0})
    out = b.mark(stock, 1, low_water=5)
    assert stock.hot is not None and stock.hot.state == b.MERGING and sorted(sent(out, b.CONFIG)) == [0, 1, 2, 3]
    assert b.taking_reservations(stock) == 0


def test_distribute_fills_the_poorest_buckets_first() -> None:
    stock = home({"WH-SH": 12})
    for k, level in enumerate([10, 0, 4, 9]):
        report(stock.hot, k, level)  # type: ignore[arg-type]
    out = sent(b.distribute(stock, low_water=2), b.TRANSFER)
    assert {k: b.total(s.units) for k, s in out.items()} == {1: 8, 2: 4}  # both rise to 8
    assert stock.on_hand == {"WH-SH": 0}


def test_distribute_counts_units_still_on_their_way_to_a_bucket() -> None:
    stock = home({"WH-SH": 4}, count=2)
    b.sent_to_bucket(stock, 7, b.Sync(b.TRANSFER, 0, {"WH-SH": 6}))  # not yet reported by bucket 0
    report(stock.hot, 1, 2)  # type: ignore[arg-type]
    out = sent(b.distribute(stock, low_water=0), b.TRANSFER)
    assert {k: b.total(s.units) for k, s in out.items()} == {1: 4}
    assert b.reported_available(stock.hot) == [6, 2]  # type: ignore[arg-type]


def test_distribute_gathers_a_few_units_into_the_richest_bucket() -> None:
    stock = home({"WH-SH": 3})
    for k, level in enumerate([1, 4, 0, 2]):
        report(stock.hot, k, level)  # type: ignore[arg-type]
    out = sent(b.distribute(stock, low_water=5), b.TRANSFER)  # 10 units, at most 4 x 5: one place
    assert {k: b.total(s.units) for k, s in out.items()} == {1: 3}


def test_distribute_waits_while_a_count_is_settled_or_the_sku_is_not_hot() -> None:
    settling = home({"WH-SH": 10})
    settling.hot.settles.append({"ref": "c1"})  # type: ignore[union-attr]
    assert b.distribute(settling, low_water=1) == []
    merging = home({"WH-SH": 10})
    merging.hot.state = b.MERGING  # type: ignore[union-attr]
    assert b.distribute(merging, low_water=1) == [] and merging.on_hand == {"WH-SH": 10}


@pytest.mark.parametrize(("levels", "low_water", "gather"), [
    ([5, 5, 5, 5], 5, True),  # exactly K x low-water: gathered
    ([6, 5, 5, 5], 5, False),
    ([0, 0, 0, 20], 5, True),
    ([3], 5, False),  # one bucket is already one place
    ([0, 0], 0, True),
])  # fmt: skip
def test_gathering_threshold_is_k_times_low_water(levels: list[int], low_water: int, gather: bool) -> None:
    assert b.gathering(levels, low_water) is gather


# ---- rebalancing ------------------------------------------------------------------------------------------
def test_rebalance_asks_the_richer_buckets_for_their_surplus_over_the_mean() -> None:
    stock = home({})
    for k, level in enumerate([40, 2, 30, 8]):
        report(stock.hot, k, level)  # type: ignore[arg-type]
    out = sent(b.rebalance(stock, now_ms=10_000, low_water=5, interval_ms=200), b.REBALANCE)
    assert {k: s.qty for k, s in out.items()} == {0: 20, 2: 10}  # mean 20
    assert stock.hot.rebalanced_ms == 10_000  # type: ignore[union-attr]


def test_rebalance_runs_at_most_once_per_interval() -> None:
    stock = home({})
    for k, level in enumerate([40, 0, 40, 40]):
        report(stock.hot, k, level)  # type: ignore[arg-type]
    assert b.rebalance(stock, 10_000, low_water=5, interval_ms=200)
    assert b.rebalance(stock, 10_199, low_water=5, interval_ms=200) == []
    assert b.rebalance(stock, 10_200, low_water=5, interval_ms=200)


def test_rebalance_leaves_balanced_or_well_stocked_buckets_alone() -> None:
    stock = home({})
    for k, level in enumerate([9, 6, 7, 8]):
        report(stock.hot, k, level)  # type: ignore[arg-type]
    assert b.rebalance(stock, 10_000, low_water=5, interval_ms=200) == []
    assert stock.hot.rebalanced_ms == 0  # type: ignore[union-attr]  # not asked: the next report may ask at once


def test_rebalance_when_gathering_asks_every_other_bucket_for_everything() -> None:
    stock = home({})
    for k, level in enumerate([3, 1, 0, 4]):
        report(stock.hot, k, level)  # type: ignore[arg-type]
    out = sent(b.rebalance(stock, 10_000, low_water=5, interval_ms=200), b.REBALANCE)
    assert {k: s.qty for k, s in out.items()} == {0: 3, 1: 1}  # bucket 3 (the richest) keeps its own


def test_on_rebalance_sends_home_only_free_units() -> None:
    bucket = SkuStock(f"{SKU}#1", on_hand={"WH-SH": 8, "WH-GZ": 2}, locked=3, hot=Buckets(bucket=1))
    (out,) = b.on_rebalance(bucket, 100)
    assert out.kind == b.TRANSFER and out.to_bucket == b.HOME and b.total(out.units) == 7
    assert b.total(bucket.on_hand) == 3 and b.on_rebalance(bucket, 100) == []


# ---- figures, transfers in flight, and one level for the SKU ---------------------------------------------
def test_on_report_keeps_the_newest_figures_and_forgets_acknowledged_transfers() -> None:
    stock = home({})
    b.sent_to_bucket(stock, 3, b.Sync(b.TRANSFER, 0, {"WH-SH": 5}))
    b.sent_to_bucket(stock, 9, b.Sync(b.TRANSFER, 0, {"WH-SH": 2}))
    b.on_report(stock, 0, figures({"WH-SH": 5}, seq=4, acked=3), low_water=0)
    assert stock.hot.in_flight == [[9, 0, {"WH-SH": 2}]]  # type: ignore[union-attr]
    b.on_report(stock, 0, figures({"WH-SH": 99}, seq=2, acked=3), low_water=0)  # older: overtaken
    assert stock.hot.reports["0"]["on_hand"] == {"WH-SH": 5}  # type: ignore[union-attr]
    assert b.on_report(stock, 7, figures({}), low_water=0) == []  # no such bucket


def test_an_empty_report_older_than_a_transfer_to_the_bucket_does_not_merge_it() -> None:
    """Changed on purpose: while merging, a bucket's empty report counted it merged even when the home had
    sent it units since (the report predates them): the SKU went cold with those units still on their way,
    and its level and a count in that window left them out."""
    stock = home({}, count=1)
    stock.hot.state = b.MERGING  # type: ignore[union-attr]
    b.sent_to_bucket(stock, 9, b.Sync(b.TRANSFER, 0, {"WH-SH": 2}))
    b.on_report(stock, 0, figures({}, seq=5, acked=8), low_water=0)
    assert stock.hot is not None and stock.hot.merged == [] and stock.hot.in_flight == [[9, 0, {"WH-SH": 2}]]
    b.on_report(stock, 0, figures({}, seq=7, acked=9), low_water=0)  # it had the units, and sent them home
    assert stock.hot is None or stock.hot.state == b.COLD


def test_aggregate_adds_buckets_and_units_in_transit_to_the_home() -> None:
    stock = home({"WH-SH": 1}, count=2, locked=1, open_lines=1)
    b.on_report(stock, 0, figures({"WH-SH": 10}, locked=4, sold=1, open_lines=4), low_water=0)
    b.sent_to_bucket(stock, 5, b.Sync(b.TRANSFER, 1, {"WH-GZ": 3}))
    agg = b.aggregate(stock)
    assert agg.on_hand == {"WH-SH": 11, "WH-GZ": 3}
    assert (agg.locked, agg.sold, agg.open_lines, agg.available()) == (5, 1, 5, 9)
    assert stock.on_hand == {"WH-SH": 1}  # the home's own record is untouched
    cold = SkuStock(SKU, on_hand={"WH-SH": 1})
    assert b.aggregate(cold) is cold


# ---- sold out: a line no bucket can fill is refused where it lands -----------------------------------------
def dry(stock: SkuStock, *levels: int) -> None:
    for k, level in enumerate(levels):
        report(stock.hot, k, level)  # type: ignore[arg-type]


def test_the_sku_is_sold_out_only_when_no_unit_is_free_anywhere() -> None:
    stock = home({"WH-SH": 0})
    dry(stock, 0, 0, 0, 0)
    assert b.sku_sold_out(stock)
    dry(stock, 0, 0, 1, 0)
    assert not b.sku_sold_out(stock)  # one bucket still has a unit
    dry(stock, 0, 0, 0, 0)
    b.sent_to_bucket(stock, 4, b.Sync(b.TRANSFER, 3, {"WH-SH": 1}))
    assert not b.sku_sold_out(stock)  # a unit on its way to bucket 3
    stock.hot.in_flight = []  # type: ignore[union-attr]
    assert not b.sku_sold_out(home({"WH-SH": 2}))  # the home's own (a count being settled holds them back)
    held = home({"WH-SH": 2}, locked=2)
    dry(held, 0, 0, 0, 0)
    assert b.sku_sold_out(held)  # the home's units all held by its own lines
    stock.hot.state = b.MERGING  # type: ignore[union-attr]
    assert not b.sku_sold_out(stock)  # merging: the home decides lines again


def test_the_home_tells_every_bucket_when_the_sku_sells_out_and_when_units_come_back() -> None:
    stock = home({"WH-SH": 0})
    dry(stock, 0, 0, 0, 1)
    assert b.sold_out_news(stock) == []
    dry(stock, 0, 0, 0, 0)
    out = b.sold_out_news(stock)
    assert sorted(sent(out, b.CONFIG)) == [0, 1, 2, 3] and stock.hot.sold_out  # type: ignore[union-attr]
    assert b.told_state(stock.hot, out[0]) == b.SOLD_OUT  # type: ignore[arg-type]
    assert b.sold_out_news(stock) == []  # told once, not on every event
    # A receipt: the transfers say "hot", and every bucket hears it in the same transaction.
    b.give(stock, {"WH-SH": 8})
    transfers = b.distribute(stock, low_water=0)
    assert all(b.told_state(stock.hot, t) == b.HOT for t in transfers)  # type: ignore[arg-type]
    for t in transfers:
        b.sent_to_bucket(stock, 9, t)
    out = b.sold_out_news(stock)
    assert sorted(sent(out, b.CONFIG)) == [0, 1, 2, 3] and not stock.hot.sold_out  # type: ignore[union-attr]
    assert b.told_state(stock.hot, out[0]) == b.HOT  # type: ignore[arg-type]


def test_a_release_in_one_bucket_lifts_sold_out_for_all() -> None:
    stock = home({"WH-SH": 0}, count=2)
    dry(stock, 0, 0)
    b.sold_out_news(stock)
    bucket = SkuStock(f"{SKU}#1", on_hand={"WH-SH": 3}, locked=3, open_lines=3, hot=Buckets(bucket=1))
    b.configure(bucket, 1, 2, b.SOLD_OUT, paused=False, seq=5)
    assert b.takes_reservations(bucket) and b.refuses_unfilled(bucket) and b.found_units(bucket) == []
    bucket.locked, bucket.open_lines = 2, 2  # an unpaid line expired: a unit is free in this bucket
    (news,) = b.found_units(bucket)
    assert (news.kind, news.to_bucket) == (b.REPORT, b.HOME)
    assert not b.refuses_unfilled(bucket) and b.found_units(bucket) == []  # told once; it passes lines on again
    b.on_report(stock, 1, figures({"WH-SH": 3}, seq=2) | {"available": 1}, low_water=0)
    out = b.sold_out_news(stock)
    assert sorted(sent(out, b.CONFIG)) == [0, 1] and b.told_state(stock.hot, out[0]) == b.HOT  # type: ignore[arg-type]
    other = SkuStock(f"{SKU}#0", hot=Buckets(bucket=0))
    b.configure(other, 0, 2, b.SOLD_OUT, paused=False, seq=5)
    b.configure(other, 0, 2, b.told_state(stock.hot, out[0]), paused=False, seq=6)  # type: ignore[arg-type]
    assert not b.refuses_unfilled(other)  # bucket 0 passes its lines on to bucket 1 again


def test_a_bucket_refuses_at_once_only_while_told_sold_out_and_hot() -> None:
    bucket = SkuStock(f"{SKU}#2", hot=Buckets(bucket=2))
    b.configure(bucket, 2, 4, b.HOT, paused=False, seq=1)
    assert not b.refuses_unfilled(bucket)
    b.configure(bucket, 2, 4, b.SOLD_OUT, paused=False, seq=2)
    assert b.refuses_unfilled(bucket) and bucket.hot.state == b.HOT  # type: ignore[union-attr]
    b.configure(bucket, 2, 4, b.MERGING, paused=False, seq=3)
    assert not b.refuses_unfilled(bucket) and not b.takes_reservations(bucket)
    assert not b.refuses_unfilled(home({}))  # the home passes a line to its bucket as before


def test_a_bucket_reports_at_once_when_its_last_free_unit_goes() -> None:
    bucket = SkuStock(f"{SKU}#0", on_hand={"WH-SH": 2}, locked=2, hot=Buckets(bucket=0, count=4, state=b.HOT))
    assert [s.kind for s in b.ran_dry(bucket, had_free=1)] == [b.REPORT]
    assert b.ran_dry(bucket, had_free=0) == []  # dry before: nothing new to tell
    bucket.locked = 1
    assert b.ran_dry(bucket, had_free=2) == []  # a unit left
    bucket.hot.state = b.MERGING  # type: ignore[union-attr]
    bucket.locked = 2
    assert b.ran_dry(bucket, had_free=1) == []  # merging: it reports as it empties anyway


# ---- counts settled with the buckets --------------------------------------------------------------------
def test_a_count_is_settled_across_buckets_as_of_each_probe() -> None:
    stock = home({"WH-SH": 2}, count=2)
    assert b.needs_settle(stock, "COUNT", 30) and b.needs_settle(stock, "CORRECTION", -1)
    assert not b.needs_settle(stock, "CORRECTION", 5) and not b.needs_settle(stock, "RECEIPT", 5)
    probes = b.start_settle(stock, "COUNT", "WH-SH", 30, "count-1", 0)
    assert sorted(sent(probes, b.PROBE)) == [0, 1]
    bucket0 = SkuStock(f"{SKU}#0", on_hand={"WH-SH": 14}, locked=4, hot=Buckets(bucket=0))
    out0 = b.on_probe(bucket0, "WH-SH", "count-1", now_ms=0)
    # Its figures go before its answer (found in review: a count that left it short was settled on figures older
    # than its lines, and the units the home had to keep back for them were handed out).
    assert [(s.kind, b.total(s.units)) for s in out0] == [(b.TRANSFER, 10), (b.REPORT, 0), (b.COUNTED, 4)]
    b.credit(stock, 0, out0[0].units)
    assert b.on_counted(stock, 0, "count-1", out0[2].qty, low_water=0) == []  # bucket 1 still to answer
    out = b.on_counted(stock, 1, "count-1", 12, low_water=0)
    # On the shelf then: home 2 + bucket 0's 14 + bucket 1's 12 = 28; the count says 30.
    assert stock.hot.settles == []  # type: ignore[union-attr]
    # The home's 2 + the 10 sent home + the 2 found: handed out to the buckets again.
    assert b.total(stock.on_hand) + sum(b.total(s.units) for s in sent(out, b.TRANSFER).values()) == 14
    assert b.on_counted(stock, 1, "count-1", 12, low_water=0) == []  # a duplicate answer changes nothing


def test_a_count_sees_units_a_bucket_sent_home_before_its_probe_arrived() -> None:
    stock = home({"WH-SH": 0}, count=2)
    b.start_settle(stock, "COUNT", "WH-SH", 20, "count-2", 0)
    # Bucket 0 had sent 6 home (a rebalance) before it saw the probe: they were its units when probed.
    b.credit(stock, 0, {"WH-SH": 6})
    b.on_counted(stock, 0, "count-2", 0, low_water=0)
    # Bucket 1 answers first, then sends 3 home after its answer: those are already in its count.
    out = b.on_counted(stock, 1, "count-2", 14, low_water=0)
    # 0 + 6 + 0 + 14 = 20 counted: the count agrees, and the 6 go out to the buckets again.
    assert stock.hot.settles == []  # type: ignore[union-attr]
    assert b.total(stock.on_hand) == 0 and sum(b.total(s.units) for s in sent(out, b.TRANSFER).values()) == 6


def test_a_count_sees_units_the_home_sent_that_a_bucket_had_not_yet_applied() -> None:
    stock = home({"WH-SH": 10}, count=2)
    out = b.distribute(stock, low_water=0)  # 5 to each bucket, in flight
    assert stock.on_hand == {"WH-SH": 0} and len(sent(out, b.TRANSFER)) == 2
    b.start_settle(stock, "COUNT", "WH-SH", 7, "count-3", 0)
    # Each channel is in order: the transfer reaches the bucket before the probe, so each answers 5.
    b.on_counted(stock, 0, "count-3", 5, low_water=0)
    b.on_counted(stock, 1, "count-3", 5, low_water=0)
    assert stock.on_hand == {"WH-SH": -3}  # 10 counted, 7 on the shelf: the 3 lost come off the SKU


def test_a_negative_correction_is_applied_once_every_bucket_answered() -> None:
    stock = home({"WH-SH": 5}, count=2)
    b.start_settle(stock, "CORRECTION", "WH-SH", -4, "corr-1", 0)
    b.on_counted(stock, 0, "corr-1", 1, low_water=0)
    assert stock.on_hand == {"WH-SH": 5}
    out = b.on_counted(stock, 1, "corr-1", 0, low_water=0)
    assert stock.hot.settles == []  # type: ignore[union-attr]
    assert b.total(stock.on_hand) == 0 and sum(b.total(s.units) for s in sent(out, b.TRANSFER).values()) == 1


def _count_with_untied(home_units: dict[str, int], untied: int, found: int,
                       tied: bool = True) -> tuple[SkuStock, list[b.Sync]]:  # fmt: skip
    """WH-SH counted at ``found``: bucket 0 keeps 4 units tied to a line, bucket 1 ``untied`` behind lines not yet
    tied to a warehouse (its other units elsewhere)."""
    stock = home(home_units, count=2)
    b.start_settle(stock, "COUNT", "WH-SH", found, "count-u", 0)
    b.on_counted(stock, 0, "count-u", 4, low_water=0, left={"WH-SH": 4}, tied={"WH-SH": 4})
    out = b.on_counted(stock, 1, "count-u", untied, low_water=0, left={"WH-SH": untied},
                       tied={"WH-SH": 0} if tied else {})  # fmt: skip
    return stock, out


def test_a_count_short_of_a_warehouse_takes_the_units_a_bucket_keeps_behind_untied_lines() -> None:
    # 7 kept at WH-SH, 4 found: the 3 behind bucket 1's untied lines are the ones missing; the home gives
    # WH-GZ units in their place, so bucket 1's lines stay backed and it ties none of them to WH-SH.
    stock, out = _count_with_untied({"WH-SH": 0, "WH-GZ": 5}, untied=3, found=4)
    moved = [s for s in out if s.kind == b.TRANSFER]
    assert (moved[0].to_bucket, moved[0].units) == (1, {"WH-SH": -3, "WH-GZ": 3})
    assert stock.on_hand["WH-SH"] == 0  # the loss is off the home: nothing owed there any more
    assert b.total(stock.on_hand) + sum(b.total(s.units) for s in moved) == 2  # 5 + 0 - 3 lost: the rest handed out


def test_a_count_gives_a_bucket_units_in_place_of_its_lost_ones_once_the_buckets_have_reported() -> None:
    """Found in review: with the buckets' figures in (as they always are), the home counted the debt it was moving
    to bucket 1 as its own still, kept its WH-GZ units back for it and handed them out to both buckets after:
    bucket 1 was left short while the units kept for it were sold elsewhere."""
    stock = home({"WH-SH": 0, "WH-GZ": 3}, count=2)
    hot = stock.hot
    assert hot is not None
    fig = {"acked": 0, "sold": 0, "presale_reserved": 0, "open_lines": 1, "lent": 0}
    report(hot, 0, available=0, on_hand={"WH-SH": 4}, locked=4, allocated={"WH-SH": 4}, **fig)
    report(hot, 1, available=0, on_hand={"WH-SH": 3}, locked=3, allocated={}, **fig)
    b.start_settle(stock, "COUNT", "WH-SH", 4, "count-r", 0)
    b.on_counted(stock, 0, "count-r", 4, low_water=0, left={"WH-SH": 4}, tied={"WH-SH": 4})
    out = b.on_counted(stock, 1, "count-r", 3, low_water=0, left={"WH-SH": 3}, tied={"WH-SH": 0})
    assert [(s.kind, s.to_bucket, s.units) for s in out] == [(b.TRANSFER, 1, {"WH-SH": -3, "WH-GZ": 3})]
    for seq, sync in enumerate(out, 100):
        b.sent_to_bucket(stock, seq, sync)
    assert b.owed(stock) == 0 and hot.short == []


def test_a_short_bucket_is_kept_for_until_it_reports_it_is_not() -> None:
    stock, out = _count_with_untied({"WH-SH": 0}, untied=3, found=4)  # nothing at the home to give in place
    hot = stock.hot
    assert hot is not None and hot.short == [1]
    report(hot, 1, available=0, on_hand={"WH-SH": 3}, locked=3)  # its figures before the count took them
    b.sent_to_bucket(stock, 100, out[0])
    assert b.owed(stock) == 3
    b.on_report(stock, 1, figures({"WH-SH": 0}, open_lines=1, seq=2, acked=100, locked=3), low_water=0)
    assert b.owed(stock) == 3 and hot.short == [1]  # it applied the transfer: still 3 short
    b.on_report(stock, 1, figures({"WH-SH": 0}, seq=3, acked=100), low_water=0)  # its line let go
    assert b.owed(stock) == 0 and hot.short == []


def test_a_merge_finished_while_a_count_settles_leaves_the_next_splits_buckets_alone() -> None:
    """Bucket numbers are reused by the next split: a count begun before the merge takes nothing off them."""
    stock = home({"WH-SH": 0}, count=2)
    hot = stock.hot
    assert hot is not None
    b.start_settle(stock, "COUNT", "WH-SH", 4, "count-m", 0)
    b.on_counted(stock, 1, "count-m", 3, low_water=0, left={"WH-SH": 3}, tied={"WH-SH": 0})
    b.unmark(stock)
    for k in (0, 1):
        b.on_report(stock, k, figures({"WH-SH": 0}, seq=5), low_water=0)
    assert hot.state == b.COLD
    b.mark(stock, 2, low_water=0)
    out = b.on_counted(stock, 0, "count-m", 4, low_water=0, left={"WH-SH": 4}, tied={"WH-SH": 4})
    assert all("WH-SH" not in s.units or s.units["WH-SH"] >= 0 for s in out if s.kind == b.TRANSFER)


def test_a_bucket_ties_no_line_to_a_counted_warehouse_with_units_behind_untied_lines_until_it_is_settled() -> None:
    """Found in review: between its answer and the home's settling, a bucket tied an untied line to the warehouse
    with units the count had not found (or gave them away in an exchange), and the warehouse was overbooked."""
    bucket = SkuStock(f"{SKU}#1", known=True, on_hand={"WH-SH": 3, "WH-GZ": 1}, locked=3,
                      hot=Buckets(bucket=1, count=2, state=b.HOT))  # fmt: skip
    line = LineHold("jd:4", 1, 3, "jd", False, rules.HELD, "", 10**12, 0)
    out = b.on_probe(bucket, "WH-SH", "count-w", now_ms=1_000)
    assert out[-1].kind == b.COUNTED and out[-1].allocated == {"WH-SH": 0}
    refused = rules.allocate(bucket, line, "jd:4", 1, 3, "WH-SH", 2_000)
    assert refused.answer is not None and refused.answer.reason == rules.Reason.WAREHOUSE_COUNTING
    assert not b.spares(bucket, "WH-SH", requester=0)  # nor given to another record's exchange for WH-SH
    assert b.offer(bucket, "WH-GZ", 3) == {}  # nor offered for another warehouse's units
    assert b.offer(bucket, "WH-BJ", 3) == {"WH-GZ": 1}
    b.on_settled(bucket, "count-w")  # not the home's word (no prefix): still waiting
    assert rules.awaits_count(bucket, "WH-SH", 2_000)
    b.on_settled(bucket, b.SETTLED + "count-w")
    held = rules.allocate(bucket, line, "jd:4", 1, 3, "WH-SH", 3_000)
    assert held.answer is not None and held.answer.outcome == "ALLOCATED"


def test_the_home_ties_none_of_its_own_lines_to_a_warehouse_it_is_settling_a_count_of() -> None:
    stock = home({"WH-SH": 5}, count=2, locked=3)
    line = LineHold("jd:9", 1, 3, "jd", False, rules.HELD, "", 10**12, 0)
    b.start_settle(stock, "COUNT", "WH-SH", 1, "count-h", 0)
    refused = rules.allocate(stock, line, "jd:9", 1, 3, "WH-SH", 1_000)
    assert refused.answer is not None and refused.answer.reason == rules.Reason.WAREHOUSE_COUNTING
    b.on_counted(stock, 0, "count-h", 0, low_water=0)
    b.on_counted(stock, 1, "count-h", 0, low_water=0)
    assert stock.on_hand["WH-SH"] == 1  # the count found 1: the line no longer fits there
    refused = rules.allocate(stock, line, "jd:9", 1, 3, "WH-SH", 2_000)
    assert refused.answer is not None and refused.answer.reason == rules.Reason.WAREHOUSE_SHORT


def test_an_exchange_back_while_a_count_awaits_its_settling_leaves_the_line_answered() -> None:
    """Found in review: the allocation refused on the exchange's return left the line wanting the warehouse, so its
    next routing there took the exchange as still out and was never answered (a paid order stuck)."""
    bucket = SkuStock(f"{SKU}#1", known=True, on_hand={"WH-SH": 4}, locked=4,
                      hot=Buckets(bucket=1, count=2, state=b.HOT, lent={"WH-SH": 4}))  # fmt: skip
    bucket.hot.probed["WH-SH"] = ["count-w", 10**9]  # type: ignore[union-attr]
    line = LineHold("jd:4", 1, 4, "jd", False, rules.SOLD, "", 10**12, 0, wants="WH-SH", asks=1)
    step, again = b.swap_arrived(bucket, line, "WH-SH", {"WH-SH": 4}, 1_000)
    assert step.answer is not None and again == []
    assert (step.answer.outcome, step.answer.reason) == ("REFUSED", rules.Reason.WAREHOUSE_COUNTING)
    assert step.holds[1] is not None and step.holds[1].wants == ""


def test_a_bucket_waits_out_another_buckets_minute_long_lag_before_tying_lines_to_a_counted_warehouse() -> None:
    """Found in review: the home settles on the slowest bucket's answer. With a 60 s wait, bucket 1 stopped waiting
    while bucket 0's partition was 90 s behind, tied its line to WH-SH, and the home's transfer then took those 3
    units from under it: WH-SH's WMS was sent a line for units the count had not found."""
    bucket = SkuStock(f"{SKU}#1", known=True, on_hand={"WH-SH": 3}, locked=3,
                      hot=Buckets(bucket=1, count=2, state=b.HOT))  # fmt: skip
    line = LineHold("jd:4", 1, 3, "jd", False, rules.SOLD, "", 10**12, 0)
    counted = b.on_probe(bucket, "WH-SH", "count-w", now_ms=0)[-1]
    stock = home({"WH-SH": 0}, count=2)
    b.start_settle(stock, "COUNT", "WH-SH", 0, "count-w", 0)
    b.on_counted(stock, 1, "count-w", counted.qty, 0, left=counted.units, tied=counted.allocated)
    b.forget_stale_probes(bucket, 90_000)
    refused = rules.allocate(bucket, line, "jd:4", 1, 3, "WH-SH", 90_000)
    assert refused.answer is not None and refused.answer.reason == rules.Reason.WAREHOUSE_COUNTING
    syncs = b.on_counted(stock, 0, "count-w", 0, 0, left={"WH-SH": 0}, tied={"WH-SH": 0})  # the lagging answer
    transfer = next(s for s in syncs if s.kind == b.TRANSFER)
    b.on_settled(bucket, transfer.ref)
    b.give(bucket, transfer.units)
    assert bucket.on_hand == {"WH-SH": 0} and bucket.allocated == {}  # short (the home keeps units back), no overbook
    refused = rules.allocate(bucket, line, "jd:4", 1, 3, "WH-SH", 91_000)
    assert refused.answer is not None and refused.answer.reason == rules.Reason.WAREHOUSE_SHORT


def test_a_bucket_that_never_hears_a_count_settled_goes_on_after_the_wait() -> None:
    # An older home (a rolling deploy) never says: the bucket stops waiting after PROBE_HOLD_MS.
    bucket = SkuStock(f"{SKU}#1", known=True, on_hand={"WH-SH": 3}, locked=3,
                      hot=Buckets(bucket=1, count=2, state=b.HOT))  # fmt: skip
    b.on_probe(bucket, "WH-SH", "count-w", now_ms=1_000)
    assert rules.awaits_count(bucket, "WH-SH", 1_000 + b.PROBE_HOLD_MS - 1)
    assert not rules.awaits_count(bucket, "WH-SH", 1_000 + b.PROBE_HOLD_MS)
    b.forget_stale_probes(bucket, 1_000 + b.PROBE_HOLD_MS)
    assert bucket.hot is not None and bucket.hot.probed == {}


def test_a_bucket_with_every_unit_there_tied_does_not_wait() -> None:
    bucket = SkuStock(f"{SKU}#0", known=True, on_hand={"WH-SH": 4}, locked=4, allocated={"WH-SH": 4},
                      hot=Buckets(bucket=0, count=2, state=b.HOT))  # fmt: skip
    b.on_probe(bucket, "WH-SH", "count-w", now_ms=1_000)
    assert bucket.hot is not None and bucket.hot.probed == {}


def test_the_home_tells_every_bucket_that_kept_units_behind_untied_lines_that_the_count_is_settled() -> None:
    _, out = _count_with_untied({"WH-SH": 0, "WH-GZ": 5}, untied=3, found=7)  # every unit found: none taken
    assert [(s.kind, s.to_bucket, s.ref) for s in out if s.ref] == [(b.CONFIG, 1, b.SETTLED + "count-u")]
    _, out = _count_with_untied({"WH-SH": 0, "WH-GZ": 5}, untied=3, found=4)
    assert [(s.kind, s.to_bucket, s.ref) for s in out if s.ref] == [(b.TRANSFER, 1, b.SETTLED + "count-u")]


def test_a_count_loss_beyond_the_untied_units_stays_the_homes_to_make_good() -> None:
    # 7 kept, 2 found: 3 untied units go from bucket 1, and 2 of the units tied to bucket 0's line are missing
    # too: the warehouse's own shortfall, which the home owes as before (``owed``), never a bucket's lines.
    stock, out = _count_with_untied({"WH-SH": 0}, untied=3, found=2)
    assert sent(out, b.TRANSFER)[1].units == {"WH-SH": -3}
    assert stock.on_hand["WH-SH"] == -2 and 0 not in sent(out, b.TRANSFER)


def test_a_count_that_finds_every_unit_takes_nothing_from_the_buckets() -> None:
    stock, out = _count_with_untied({"WH-SH": 0, "WH-GZ": 5}, untied=3, found=7)
    assert stock.on_hand["WH-SH"] == 0
    assert all("WH-SH" not in s.units for s in sent(out, b.TRANSFER).values())


def test_an_answer_that_does_not_say_what_is_tied_keeps_the_old_settlement() -> None:
    # A bucket of an earlier release answers without ``allocated``: its untied units are not known, so the home
    # carries the loss below zero as it did (``owed``), and takes nothing off the bucket.
    stock, out = _count_with_untied({"WH-SH": 0}, untied=3, found=4, tied=False)
    assert stock.on_hand["WH-SH"] == -3 and sent(out, b.TRANSFER) == {}


def test_a_bucket_whose_lines_lost_their_units_has_the_rest_of_the_sku_kept_back_for_it() -> None:
    # Bucket 1 lost the 3 units behind its untied lines and was given 1 in their place: 2 short. Bucket 0 reports
    # 2 free: they are the SKU's only free units only on paper, so the home asks them home and keeps them.
    stock, out = _count_with_untied({"WH-SH": 0, "WH-GZ": 1}, untied=3, found=4)
    hot = stock.hot
    assert hot is not None
    report(hot, 0, available=2, on_hand={"WH-SH": 4, "WH-GZ": 2}, locked=4, allocated={"WH-SH": 4})
    report(hot, 1, available=0, on_hand={"WH-SH": 3}, locked=3)  # before the count took them
    for seq, sync in enumerate(sent(out, b.TRANSFER).values(), 100):
        b.sent_to_bucket(stock, seq, sync)
    assert b.bucket_short(hot, 1) == 2 and b.bucket_short(hot, 0) == 0
    assert b.owed(stock) == 2 and b.home_short(stock) == 2
    assert sent(b.rebalance(stock, 10_000, low_water=0, interval_ms=200), b.REBALANCE)[0].qty == 2


# ---- un-marking and merging -------------------------------------------------------------------------------
def test_unmark_then_every_bucket_reports_empty_and_the_sku_goes_cold() -> None:
    stock = home({"WH-SH": 0}, count=3)
    out = b.unmark(stock)
    assert sorted(sent(out, b.CONFIG)) == [0, 1, 2] and stock.hot.state == b.MERGING  # type: ignore[union-attr]
    assert b.unmark(stock) == []  # again: nothing new
    b.on_report(stock, 0, figures({"WH-SH": 0}, seq=5), low_water=0)
    b.on_report(stock, 0, figures({"WH-SH": 0}, seq=6), low_water=0)  # the same bucket twice counts once
    b.on_report(stock, 1, figures({"WH-SH": 2}, open_lines=2), low_water=0)  # still finishing two lines
    assert stock.hot is not None and stock.hot.merged == [0]
    b.on_report(stock, 1, figures({"WH-SH": 0}, seq=2), low_water=0)
    b.on_report(stock, 2, figures({}), low_water=0)
    assert stock.hot is None  # cold, and its record as small as a SKU never split


def test_a_new_k_while_hot_merges_first_and_splits_again() -> None:
    stock = home({"WH-SH": 0}, count=2)
    out = b.mark(stock, 3, low_water=0)
    assert stock.hot is not None and stock.hot.state == b.MERGING and stock.hot.next_count == 3
    assert sorted(sent(out, b.CONFIG)) == [0, 1]
    b.credit(stock, 0, {"WH-SH": 9})  # the buckets send their units home
    b.on_report(stock, 0, figures({}), low_water=0)
    out = b.on_report(stock, 1, figures({}), low_water=0)
    assert stock.hot.state == b.HOT and stock.hot.count == 3
    assert {k: b.total(s.units) for k, s in sent(out, b.TRANSFER).items()} == {0: 3, 1: 3, 2: 3}


def test_a_bucket_not_taking_lines_sends_free_units_and_shortfalls_home() -> None:
    bucket = SkuStock(f"{SKU}#0", on_hand={"WH-SH": 5, "WH-GZ": -1}, locked=2, open_lines=2, hot=Buckets(bucket=0))
    b.configure(bucket, 0, 4, b.MERGING, paused=False, seq=11)
    assert not b.takes_reservations(bucket) and bucket.hot is not None and bucket.hot.acked == 11
    (out,) = b.send_home(bucket)
    assert out.to_bucket == b.HOME and out.units == {"WH-SH": 3, "WH-GZ": -1}
    assert bucket.on_hand == {"WH-SH": 2, "WH-GZ": 0} and not b.empty(b.figures(bucket))
    assert b.send_home(bucket) == []
    b.configure(bucket, 0, 4, b.HOT, paused=False, seq=3)
    assert b.send_home(bucket) == [] and bucket.hot.acked == 11  # an old message never lowers what was acked


# ---- a paid line short of the warehouse routing chose -----------------------------------------------------
def split(shares: list[dict[str, int]]) -> tuple[SkuStock, list[SkuStock]]:
    """A hot home that handed out everything, and its buckets holding ``shares`` (as they reported them)."""
    stock = home({}, count=len(shares))
    buckets = []
    for k, units in enumerate(shares):
        buckets.append(SkuStock(f"{SKU}#{k}", known=True, on_hand=dict(units), hot=Buckets(bucket=k, count=len(shares),
                                                                                            state=b.HOT)))  # fmt: skip
        assert stock.hot is not None
        stock.hot.reports[str(k)] = figures(dict(units))
    return stock, buckets


def held(stock: SkuStock, order_id: str, qty: int) -> LineHold:
    step = rules.reserve(stock, POOL, None, None, order_id, 1, qty, "jd", False, 0)
    hold = step.holds[1]
    assert hold is not None
    return rules.line_command(stock, POOL, hold, "COMMIT", order_id, 1, qty, 0).holds[1] or hold


def test_a_held_line_short_of_the_routed_warehouse_is_refused_by_the_bucket_alone() -> None:
    """The defect, in the pool's own rules: a bucket judges an allocation by its share of the warehouse."""
    _, (bucket, _) = split([{"WH-SH": 15, "WH-GZ": 10}, {"WH-SH": 15, "WH-GZ": 10}])
    hold = held(bucket, "jd:big", 12)
    step = rules.allocate(bucket, hold, "jd:big", 1, 12, "WH-GZ", 0)
    assert step.answer is not None and (step.answer.outcome, step.answer.reason) == ("REFUSED", "warehouse_short")


def test_a_bucket_offers_its_other_warehouses_units_and_counts_them_lent() -> None:
    _, (bucket, _) = split([{"WH-SH": 15, "WH-GZ": 10}, {"WH-SH": 15, "WH-GZ": 10}])
    hold = held(bucket, "jd:big", 12)
    asked = b.want(bucket, hold, "WH-GZ")
    assert asked is not None
    waiting, (sync,) = asked
    assert waiting.wants == "WH-GZ" and waiting.warehouse_id == ""
    assert (sync.kind, sync.to_bucket, sync.units, sync.qty) == (b.TRANSFER, b.HOME, {"WH-SH": 2}, 2)
    assert sync.warehouse_id == "WH-GZ"
    assert b.swap_of(sync.ref) == (0, "jd:big", 1)
    assert bucket.on_hand == {"WH-SH": 13, "WH-GZ": 10} and bucket.lent() == 2 and bucket.healthy()
    assert b.want(bucket, waiting, "WH-GZ") == (waiting, [])  # the same command again asks nothing more


def test_the_exchange_goes_round_the_buckets_one_for_one_and_comes_back_with_the_units() -> None:
    stock, (b0, _, b2) = split([{"WH-SH": 10, "WH-GZ": 2}, {"WH-SH": 10}, {"WH-SH": 5, "WH-GZ": 3}])
    hold = held(b0, "jd:big", 6)
    asked = b.want(b0, hold, "WH-GZ")
    assert asked is not None
    waiting, (sync,) = asked
    b.credit(stock, 0, sync.units)
    onward, here = b.swap_at_home(stock, 0, sync.units, "WH-GZ", sync.ref)
    assert not here and [(s.to_bucket, s.units) for s in onward] == [(2, {"WH-SH": 4})]  # bucket 1 has none
    b.give(b2, onward[0].units)
    (back,) = b.swap_ask(b2, "WH-GZ", onward[0].units, onward[0].ref)
    assert (back.to_bucket, back.units, back.qty) == (b.HOME, {"WH-GZ": 3, "WH-SH": 1}, 1)
    assert b2.on_hand == {"WH-SH": 8, "WH-GZ": 0}  # as many units as before: its lines stay backed
    b.credit(stock, 2, back.units)
    onward, here = b.swap_at_home(stock, 2, back.units, "WH-GZ", back.ref)
    assert [(s.to_bucket, s.units, s.qty) for s in onward] == [(0, {"WH-GZ": 3, "WH-SH": 1}, 1)]  # none left
    assert all(q == 0 for q in stock.on_hand.values())  # the home keeps none of it
    b.give(b0, onward[0].units)
    step, again = b.swap_arrived(b0, waiting, "WH-GZ", onward[0].units, 5)
    assert again == [] and b0.lent() == 0  # a Shanghai unit came back: nobody had more Guangzhou units
    assert step.answer is not None and (step.answer.outcome, step.answer.reason) == ("REFUSED", "warehouse_short")
    assert b0.on_hand == {"WH-SH": 7, "WH-GZ": 5} and b0.healthy()  # 2 + 3 of Guangzhou: still one short


def test_an_exchange_outrun_by_other_lines_of_the_bucket_asks_again() -> None:
    _, (b0, _) = split([{"WH-SH": 10, "WH-GZ": 4}, {"WH-GZ": 9}])
    hold = held(b0, "jd:big", 6)
    asked = b.want(b0, hold, "WH-GZ")
    assert asked is not None
    waiting, _ = asked
    other = held(b0, "jd:small", 3)  # meanwhile another line takes three of the bucket's Guangzhou units
    taken = rules.allocate(b0, other, "jd:small", 1, 3, "WH-GZ", 1).answer
    assert taken is not None and taken.outcome == "ALLOCATED"
    b.give(b0, {"WH-GZ": 2})  # the exchange brings the two it asked for
    step, again = b.swap_arrived(b0, waiting, "WH-GZ", {"WH-GZ": 2}, 5)
    assert step.answer is None and [(s.to_bucket, s.units) for s in again] == [(b.HOME, {"WH-SH": 3})]
    assert step.holds[1] is not None and step.holds[1].wants == "WH-GZ" and b0.lent() == 3


def test_the_line_is_allocated_when_the_exchange_brings_enough() -> None:
    stock, (b0, b1) = split([{"WH-SH": 15, "WH-GZ": 10}, {"WH-SH": 15, "WH-GZ": 10}])
    hold = held(b0, "jd:big", 12)
    asked = b.want(b0, hold, "WH-GZ")
    assert asked is not None
    waiting, (sync,) = asked
    b.credit(stock, 0, sync.units)
    (onward,), _ = b.swap_at_home(stock, 0, sync.units, "WH-GZ", sync.ref)
    b.give(b1, onward.units)
    (back,) = b.swap_ask(b1, "WH-GZ", onward.units, onward.ref)
    b.credit(stock, 1, back.units)
    (home_back,), _ = b.swap_at_home(stock, 1, back.units, "WH-GZ", back.ref)
    assert (home_back.to_bucket, home_back.units) == (0, {"WH-GZ": 2})
    b.give(b0, home_back.units)
    step, _ = b.swap_arrived(b0, waiting, "WH-GZ", home_back.units, 5)
    assert step.answer is not None and (step.answer.outcome, step.answer.reason) == ("ALLOCATED", "WH-GZ")
    after = step.holds[1]
    assert after is not None and (after.warehouse_id, after.wants) == ("WH-GZ", "")
    assert b0.allocated == {"WH-GZ": 12} and b0.on_hand == {"WH-SH": 13, "WH-GZ": 12} and b0.lent() == 0
    assert b1.on_hand == {"WH-SH": 17, "WH-GZ": 8}
    assert b0.healthy() and b1.healthy()


def test_a_line_no_longer_waiting_leaves_the_units_where_they_came() -> None:
    _, (b0, _) = split([{"WH-SH": 15, "WH-GZ": 10}, {"WH-SH": 15, "WH-GZ": 10}])
    hold = held(b0, "jd:big", 12)
    asked = b.want(b0, hold, "WH-GZ")
    assert asked is not None
    released = rules.line_command(b0, POOL, asked[0], "RELEASE", "jd:big", 1, 12, 3).holds[1]
    b.give(b0, {"WH-GZ": 2})
    step, again = b.swap_arrived(b0, released, "WH-GZ", {"WH-GZ": 2}, 5)
    assert (step.answer, step.holds, again) == (None, {}, [])
    assert b0.on_hand == {"WH-SH": 13, "WH-GZ": 12} and b0.lent() == 0 and b0.locked == 0


def test_the_home_asks_its_buckets_for_its_own_line_and_gives_nothing_while_counting() -> None:
    stock, _ = split([{"WH-SH": 5}, {"WH-SH": 5, "WH-GZ": 5}])
    b.give(stock, {"WH-GZ": 4})
    hold = held(stock, "tmall:vip", 4)  # held at the home (a VIP line): backed by its Guangzhou units
    asked = b.want(stock, hold, "WH-SH")
    assert asked is not None
    _, (sync,) = asked
    assert (sync.to_bucket, sync.units) == (0, {"WH-GZ": 4}) and stock.lent() == 4 and stock.healthy()
    # A bucket's request while the home counts that warehouse: the home passes it on without giving its own.
    assert stock.hot is not None
    stock.hot.settles.append({"wh": "WH-SH", "ref": "c", "kind": "COUNT", "qty": 0, "base": 0, "waiting": [],
                              "got": {}, "pre": {}})  # fmt: skip
    b.give(stock, {"WH-SH": 3})
    ref = b.swap_ref(1, "jd:x", 1)
    b.credit(stock, 1, {"WH-GZ": 1})
    onward, here = b.swap_at_home(stock, 1, {"WH-GZ": 1}, "WH-SH", ref)
    assert not here and [(s.to_bucket, s.units) for s in onward] == [(0, {"WH-GZ": 1})]
    assert stock.on_hand.get("WH-SH") == 3


def test_nothing_to_offer_or_nobody_to_ask_leaves_the_refusal() -> None:
    _, (b0,) = split([{"WH-GZ": 5}])
    hold = held(b0, "jd:a", 2)
    b0.on_hand["WH-GZ"] = 0  # a count found none: the line's units are gone, nothing to offer
    assert b.want(b0, hold, "WH-SH") is None
    lone = home({"WH-GZ": 5}, count=2)
    assert b.want(lone, held(lone, "tmall:v", 3), "WH-SH") is None  # no bucket reported a Shanghai unit
    assert not b.exchanges(SkuStock(SKU, on_hand={"WH-GZ": 1})) and b.exchanges(b0) and b.exchanges(lone)


def test_a_record_keeps_the_units_of_a_warehouse_its_own_line_waits_for_from_later_askers() -> None:
    """Changed on purpose: two buckets whose lines both waited for Guangzhou gave each other their own Guangzhou
    unit for the other's Shanghai one, each got one back, asked again, and so on for ever. A record whose line
    waits for a warehouse now gives its units of it only to an exchange asked before its own (the home first,
    then by bucket number), so one of the two gets both units, and offers none of them for another line."""
    _, (b0, b1) = split([{"WH-SH": 2, "WH-GZ": 1}, {"WH-SH": 2, "WH-GZ": 1}])
    first, second = b.want(b0, held(b0, "jd:a", 2), "WH-GZ"), b.want(b1, held(b1, "jd:b", 2), "WH-GZ")
    assert first is not None and second is not None
    (ask0,), (ask1,) = first[1], second[1]
    b.give(b0, ask1.units)  # bucket 1's exchange reaches bucket 0, whose own line asked first
    (back,) = b.swap_ask(b0, "WH-GZ", ask1.units, ask1.ref)
    assert (back.units, back.qty) == ({"WH-SH": 1}, 1) and b0.on_hand == {"WH-SH": 1, "WH-GZ": 1}
    b.give(b1, ask0.units)  # bucket 0's exchange reaches bucket 1: bucket 0 asked first, so it gets the unit
    (back,) = b.swap_ask(b1, "WH-GZ", ask0.units, ask0.ref)
    assert (back.units, back.qty) == ({"WH-GZ": 1}, 0) and b1.on_hand == {"WH-SH": 2, "WH-GZ": 0}
    assert b0.healthy() and b1.healthy()
    assert b.offer(b0, "WH-SH", 1) == {}  # its Guangzhou unit stays for the line waiting for it


def test_an_exchange_asks_again_once_then_the_line_is_refused() -> None:
    """Changed on purpose: an exchange outrun by the record's other lines asked again without end."""
    _, (b0, _) = split([{"WH-SH": 10, "WH-GZ": 4}, {"WH-GZ": 20}])
    big, others = held(b0, "jd:big", 6), [held(b0, f"jd:small{n}", 3) for n in range(2)]
    asked = b.want(b0, big, "WH-GZ")
    assert asked is not None
    waiting = asked[0]
    for n, brought in enumerate(({"WH-GZ": 2}, {"WH-GZ": 3})):
        # Meanwhile another line takes three of the bucket's Guangzhou units.
        taken = rules.allocate(b0, others[n], f"jd:small{n}", 1, 3, "WH-GZ", 1).answer
        assert taken is not None and taken.outcome == "ALLOCATED"
        b.give(b0, brought)
        step, again = b.swap_arrived(b0, waiting, "WH-GZ", brought, 5)
        line = step.holds[1]
        assert line is not None
        waiting = line
        if n == 0:
            assert step.answer is None and [(s.to_bucket, s.units) for s in again] == [(b.HOME, {"WH-SH": 3})]
    assert again == [] and step.answer is not None
    assert (step.answer.outcome, step.answer.reason) == ("REFUSED", "warehouse_short")
    assert (waiting.wants, waiting.warehouse_id, b0.lent()) == ("", "", 0)
    assert b0.on_hand == {"WH-SH": 5, "WH-GZ": 9} and b0.healthy()
    # Routed again to the same warehouse, the line may exchange again.
    again_asked = b.want(b0, waiting, "WH-GZ")
    assert again_asked is not None and again_asked[1]


def test_units_lent_on_an_exchange_still_count_as_the_records_own() -> None:
    """Changed on purpose: the units a record offered were still in its locked but no longer in its on-hand, so it
    reported them as taken twice: a free unit looked gone, and the home could call the SKU sold out."""
    stock, (b0, b1) = split([{"WH-SH": 4}, {"WH-GZ": 3}])
    asked = b.want(b0, held(b0, "jd:big", 3), "WH-GZ")
    assert asked is not None
    (sync,) = asked[1]
    assert sync.units == {"WH-SH": 3} and b0.on_hand == {"WH-SH": 1}
    assert b0.available() == 1 and b.movable(b0) == {"WH-SH": 1}
    fig = b.figures(b0)
    assert (fig["available"], fig["lent"]) == (1, 3) and not b.empty({**fig, "open_lines": 0, "on_hand": {}})
    assert stock.hot is not None
    stock.hot.reports["0"] = {**fig, "seq": 5}
    held(b1, "jd:other", 3)
    stock.hot.reports["1"] = b.figures(b1)
    assert not b.sku_sold_out(stock) and b.aggregate(stock).available() == 1
    # Passed on to bucket 1, the units are not also counted as on their way there: bucket 0 counts them.
    b.credit(stock, 0, sync.units)
    onward, _ = b.swap_at_home(stock, 0, sync.units, "WH-GZ", sync.ref)
    b.sent_to_bucket(stock, 9, onward[0])
    assert b.reported_available(stock.hot) == [1, 0] and b.aggregate(stock).available() == 1


def test_the_home_offers_no_units_of_a_warehouse_being_counted() -> None:
    """Changed on purpose: the home offered units of a warehouse whose count it was settling; a bucket that had
    answered the count kept them, and the count's difference landed on the home, below zero."""
    stock, _ = split([{"WH-SH": 5}, {"WH-SH": 5, "WH-GZ": 5}])
    b.give(stock, {"WH-GZ": 4})
    hold = held(stock, "tmall:vip", 4)
    assert stock.hot is not None
    stock.hot.settles.append({"wh": "WH-GZ", "ref": "c", "kind": "COUNT", "qty": 0, "base": 4, "waiting": [0, 1],
                              "got": {"1": 5}, "pre": {}})  # fmt: skip
    assert b.offer(stock, "WH-SH", 4) == {} and b.want(stock, hold, "WH-SH") is None
    assert stock.on_hand == {"WH-GZ": 4} and stock.lent() == 0
    stock.hot.settles.clear()  # counted: the home may offer them again
    assert b.offer(stock, "WH-SH", 4) == {"WH-GZ": 4}


# ---- exchanges crossing each other, delivered in any order ------------------------------------------------
@dataclass
class Exchanges:
    """A hot SKU's records and the messages between them, each channel between two records in order; the hot-SKU
    rules called as the processor calls them."""

    records: dict[int, SkuStock]
    holds: dict[str, LineHold] = field(default_factory=dict)
    answers: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    channels: dict[tuple[int, int], list[Any]] = field(default_factory=dict)
    sent: Iterator[int] = field(default_factory=itertools.count)
    delivered: int = 0

    def send(self, frm: int, syncs: list[b.Sync]) -> None:
        for s in syncs:
            self.channels.setdefault((frm, s.to_bucket), []).append((next(self.sent), s))
        if frm >= 0 and syncs:  # a bucket that sends units tells its figures with them
            self.channels.setdefault((frm, b.HOME), []).append((next(self.sent), b.figures(self.records[frm])))

    def answered(self, order: str, step: rules.Step) -> None:
        self.holds.update({line.order_id: line for line in step.holds.values() if line is not None})
        if step.answer is not None:
            self.answers.setdefault(order, []).append((step.answer.outcome, step.answer.reason))

    def route(self, order: str, at: int, wh: str) -> None:
        stock, hold = self.records[at], self.holds[order]
        step = rules.allocate(stock, hold, order, 1, hold.qty, wh, 0)
        asked = b.want(stock, hold, wh) if step.answer and step.answer.reason == "warehouse_short" else None
        if asked is None:
            self.answered(order, step)
        else:
            self.holds[order] = asked[0]
            self.send(at, asked[1])

    def deliver(self, frm: int, here: int, msg: b.Sync | dict[str, Any]) -> None:
        home = self.records[b.HOME]
        self.delivered += 1
        if isinstance(msg, dict):
            b.on_report(home, frm, msg, 0)
            return
        swap = b.swap_of(msg.ref)
        assert swap is not None
        if here == b.HOME:
            b.credit(home, frm, msg.units)
            onward, ended = b.swap_at_home(home, frm, msg.units, msg.warehouse_id, msg.ref)
            self.send(b.HOME, onward)
        else:
            b.give(self.records[here], msg.units)
            ended = swap[0] == here
            if not ended:
                self.send(here, b.swap_ask(self.records[here], msg.warehouse_id, msg.units, msg.ref))
        if ended:
            step, again = b.swap_arrived(self.records[here], self.holds[swap[1]], msg.warehouse_id, msg.units, 1)
            self.answered(swap[1], step)
            self.send(here, again)

    def units(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for rec in self.records.values():
            for wh, q in rec.on_hand.items():
                out[wh] = out.get(wh, 0) + q
        return {wh: q for wh, q in out.items() if q}


def exchange_until_quiet(shares: list[dict[str, int]], at_home: dict[str, int],
                         lines: list[tuple[int, int, str]], seed: int) -> Exchanges:  # fmt: skip
    """Hold ``lines`` (record, qty, warehouse routing chose; -1: the home), route them all at once, then deliver
    every message: the channels in the order they were sent to (an even seed: as one worker would), or in a random
    order (an odd one: as several would). Stops after 2,000 messages."""
    rng = random.Random(seed)
    home, bks = split(shares)
    b.give(home, at_home)
    run = Exchanges({b.HOME: home, **dict(enumerate(bks))})
    for n, (at, qty, _) in enumerate(lines):
        run.holds[f"jd:{n}"] = held(run.records[at], f"jd:{n}", qty)
    for n, (at, _, wh) in enumerate(lines):
        run.route(f"jd:{n}", at, wh)
    while any(run.channels.values()) and run.delivered < 2_000:
        busy = sorted(k for k, q in run.channels.items() if q)
        frm, here = min(busy, key=lambda k: run.channels[k][0][0]) if seed % 2 == 0 else rng.choice(busy)
        run.deliver(frm, here, run.channels[(frm, here)].pop(0)[1])
    return run


@pytest.mark.parametrize("seed", range(4))
def test_two_buckets_waiting_for_the_same_warehouse_stop_exchanging(seed: int) -> None:
    """Changed on purpose: each bucket gave the other its own Guangzhou unit, got one back, asked again, for ever
    (as one worker delivers the messages), and neither order was answered."""
    run = exchange_until_quiet([{"WH-SH": 2, "WH-GZ": 1}] * 2, {}, [(0, 2, "WH-GZ"), (1, 2, "WH-GZ")], seed)
    assert run.delivered < 2_000, "the exchanges never end"
    assert run.answers == {"jd:0": [("ALLOCATED", "WH-GZ")], "jd:1": [("REFUSED", "warehouse_short")]}
    assert run.units() == {"WH-SH": 4, "WH-GZ": 2}


@pytest.mark.parametrize("seed", range(100))
def test_crossing_exchanges_end_with_one_answer_per_line_and_no_unit_made_or_lost(seed: int) -> None:
    rng = random.Random(seed)
    count = rng.randint(2, 4)
    shares = [{wh: rng.randint(0, 3) for wh in ("WH-SH", "WH-GZ")} for _ in range(count)]
    at_home = {wh: rng.randint(0, 2) for wh in ("WH-SH", "WH-GZ")}
    wanted = rng.choice(("WH-SH", "WH-GZ"))  # mostly one warehouse: the lines then compete for it
    lines = []
    for at in range(-1, count):
        have = sum(shares[at].values()) if at >= 0 else sum(at_home.values())
        for _ in range(rng.randint(1, 3)):
            if have > 0:
                qty = rng.randint(1, have)
                have -= qty
                lines.append((at, qty, wanted if rng.random() < 0.8 else rng.choice(("WH-SH", "WH-GZ"))))
    before = {wh: q for wh in ("WH-SH", "WH-GZ") if (q := sum(s[wh] for s in shares) + at_home[wh])}
    run = exchange_until_quiet(shares, at_home, lines, seed)
    assert run.delivered < 2_000, "the exchanges never end"
    assert run.units() == before
    assert sorted(run.answers) == sorted(run.holds) and all(len(a) == 1 for a in run.answers.values()), run.answers
    for rec in run.records.values():
        assert rec.lent() == 0 and rec.healthy(), (rec.sku, rec.breaches())
    for order, hold in run.holds.items():
        outcome, reason = run.answers[order][0]
        assert (hold.wants, hold.asks, hold.warehouse_id) == ("", 0, reason if outcome == "ALLOCATED" else "")


# ---- a transfer is credited once --------------------------------------------------------------------------
def test_a_transfer_delivered_twice_is_credited_once() -> None:
    settings = Settings(safety_threshold=0, threshold_hysteresis=0)
    r = LocalRunner([HoldStock.from_settings(settings, WAREHOUSES)], partitions=12)
    receipt(r, SKU, 1)  # the home exists
    transfer = {
        "event_id": f"{SKU}#2:7", "event_time_ms": 0, "sku": SKU, "kind": b.TRANSFER, "from_bucket": 2,
        "to_bucket": b.HOME, "units": {"WH-SH": 4}, "qty": 0, "warehouse_id": "", "ref": "", "buckets": 0,
        "state": "", "paused": False, "locked": 0, "sold": 0, "presale_reserved": 0, "open_lines": 0,
        "allocated": {}, "newest_change_ms": 0, "newest_source_ms": 0, "seq": 7, "acked": 0,
    }  # fmt: skip
    for _ in range(2):  # a batch replayed: the same record again
        r.send([(bucket_key(SKU, b.HOME, 12), "BucketSync", transfer)], STOCK_BUCKETS.name)
    assert r.read(STORE, sku_key(SKU), SKU)["on_hand"] == {"WH-SH": 5}
    assert r.read(STORE, adjustment_key(SKU, f"transfer:{SKU}#2:7"), SKU) is not None


def test_buckets_land_on_partitions_of_their_own() -> None:
    """K buckets on K partitions none shares with the SKU's home while there is room, whatever the SKU."""
    for n in range(200):
        sku = f"SKU-{n}"
        home = partition_for(sku.encode(), 8)
        placed = [partition_for(bucket_key(sku, k, 8).encode(), 8) for k in range(7)]
        assert len(set(placed)) == 7 and home not in placed, sku
        eight = [partition_for(bucket_key(sku, k, 8).encode(), 8) for k in range(8)]
        assert sorted(eight) == list(range(8))  # the eighth takes the home's partition
        assert bucket_key(sku, 9, 8) == f"{sku}#9"  # more buckets than partitions: they share
        assert bucket_key(sku, 2, 8) == bucket_key(sku, 2, 8)  # the same in every process


def bucket_with_lack(on_hand: dict[str, int], locked: int, for_lack: int) -> SkuStock:
    return SkuStock(SKU, known=True, on_hand=dict(on_hand), locked=locked,
                    hot=Buckets(bucket=0, count=2, state=b.HOT, for_lack=for_lack))  # fmt: skip


def test_units_sent_for_a_lack_are_not_sold_and_go_home_as_the_lines_end() -> None:
    given = bucket_with_lack({"WH-SH": 3}, locked=6, for_lack=0)
    b.received(given, {"WH-GZ": 3}, b.LACK)
    assert (given.hot and given.hot.for_lack, given.available(), b.return_lack(given)) == (3, 0, [])
    given.locked = 3  # a line of 3 ended: the SKU is still short, so its units are not this bucket's to sell
    assert given.available() == 0
    sent = b.return_lack(given)
    assert [(s.kind, s.to_bucket, b.total(s.units)) for s in sent] == [(b.TRANSFER, b.HOME, 3)]
    assert (given.hot and given.hot.for_lack, given.available(), b.total(given.on_hand)) == (0, 0, 3)


def test_a_lack_shipped_with_its_lines_is_forgotten() -> None:
    shipped = bucket_with_lack({"WH-SH": 0}, locked=0, for_lack=3)
    assert b.return_lack(shipped) == []
    assert shipped.hot is not None and shipped.hot.for_lack == 0
    b.received(shipped, {"WH-SH": 2}, "")  # a regular transfer later is the bucket's to sell
    assert shipped.available() == 2


def test_a_line_let_go_while_a_bucket_waits_for_a_count_frees_no_unit_to_sell() -> None:
    """Found in review: bucket 0 answered a count of WH-SH keeping 6 units there behind two untied lines; the count
    found 3, but the home waited for bucket 1's lagging answer. One line was let go, and bucket 0 sold its 3 WH-SH
    units to new orders: the home then took them off it, and the SKU held 6 units on 3 where a cold SKU refuses."""
    bucket = SkuStock(f"{SKU}#0", known=True, on_hand={"WH-SH": 6, "WH-GZ": 1}, locked=6,
                      hot=Buckets(bucket=0, count=2, state=b.HOT))  # fmt: skip
    lines = [LineHold(f"jd:{n}", 1, 3, "jd", False, rules.HELD, "", 10**12, 0) for n in (0, 1)]
    b.on_probe(bucket, "WH-SH", "count-r", now_ms=0)
    assert bucket.available() == 1  # its WH-GZ unit
    rules.account(bucket, lines[0], replace(lines[0], status=rules.RELEASED))
    b.hold_probes_down(bucket)
    assert (bucket.unheld(), bucket.available()) == (4, 1)
    rules.account(bucket, None, LineHold("jd:2", 1, 1, "jd", False, rules.HELD, "", 10**12, 0))  # sold
    b.hold_probes_down(bucket)
    assert bucket.available() == 0
    b.on_settled(bucket, b.SETTLED + "count-r")
    assert bucket.available() == 3  # the home took what the count did not find first, in the same transfer


def test_an_exchange_a_count_kept_units_from_refuses_the_line_as_counting_not_short() -> None:
    """Found in review: a count of WH-SH was being settled (its slowest bucket lagged); a bucket's paid line routed
    there asked the others for WH-SH units, the home and the bucket that answered the count kept theirs back, and
    the line was refused warehouse_short on every try: its order waited route_retry_s (30 s) with nothing short."""
    donor = SkuStock(f"{SKU}#2", known=True, on_hand={"WH-SH": 4}, locked=2,
                     hot=Buckets(bucket=2, count=3, state=b.HOT))  # fmt: skip
    donor.hot.probed["WH-SH"] = ["count-x", 10**9]  # type: ignore[union-attr]
    ref = b.swap_ref(1, "jd:4", 1)
    back = b.swap_ask(donor, "WH-SH", {"WH-GZ": 3}, ref)[0]
    assert back.ref.startswith(b.SWAP_COUNTED + ":") and b.swap_of(back.ref) == (1, "jd:4", 1)
    asker = SkuStock(f"{SKU}#1", known=True, on_hand={"WH-GZ": 0}, locked=3,
                     hot=Buckets(bucket=1, count=3, state=b.HOT, lent={"WH-SH": 3}))  # fmt: skip
    line = LineHold("jd:4", 1, 3, "jd", False, rules.SOLD, "", 10**12, 0, wants="WH-SH", asks=1)
    b.give(asker, back.units)
    step, _ = b.swap_arrived(asker, line, "WH-SH", back.units, 1_000, back.ref)
    assert step.answer is not None and step.answer.reason == rules.Reason.WAREHOUSE_COUNTING
    home_ = home({"WH-SH": 2, "WH-GZ": 0}, count=3)
    b.start_settle(home_, "COUNT", "WH-SH", 6, "count-x", 0)
    onward, _ = b.swap_at_home(home_, 1, {"WH-GZ": 3}, "WH-SH", ref)
    assert onward and onward[0].ref.startswith(b.SWAP_COUNTED + ":")


def test_a_debt_that_grows_within_the_interval_is_asked_for_by_what_it_grew() -> None:
    """Found in review: every change of what the home owes asked the buckets for the whole debt again, while the
    last ask's answers were still on their way (5 units asked for a debt of 3). Every bucket is asked (each keeps
    the debt back from what it sells), for what the debt grew by."""
    hot = Buckets(count=2, state=b.HOT, reports={"0": figures({"WH-SH": 5}), "1": figures({})})
    stock = home({"WH-SH": -2}, count=2)
    stock.hot = hot
    asked = b.rebalance(stock, 1_000, 2, 5_000)
    assert [(s.to_bucket, s.qty, s.ref) for s in asked] == [(0, 2, b.DEBT), (1, 2, b.DEBT)]
    stock.on_hand["WH-SH"] = -3  # another shipment off the empty home shelf, the answer not in yet
    assert [(s.to_bucket, s.qty) for s in b.rebalance(stock, 2_000, 2, 5_000)] == [(0, 1), (1, 1)]
    assert b.rebalance(stock, 3_000, 2, 5_000) == []


def test_a_bucket_whose_lines_hold_all_it_has_sends_nothing_home_for_a_debt() -> None:
    """Its lines are tied to WH-SH, which it lacks: its WH-GZ units look free by warehouse, but the SKU counts them
    behind those lines. Sent home for a debt, the home handed them back for the lack and asked again: round and
    round (a livelock the random story found while every bucket came to be asked for a debt)."""
    bucket = SkuStock(f"{SKU}#1", known=True, on_hand={"WH-GZ": 2, "WH-SH": 0}, locked=3, allocated={"WH-SH": 3},
                      hot=Buckets(bucket=1, count=2, state=b.HOT))  # fmt: skip
    assert b.on_rebalance(bucket, 1, b.DEBT) == []
    assert bucket.on_hand == {"WH-GZ": 2, "WH-SH": 0} and bucket.hot is not None and bucket.hot.owes_home == 1


def test_a_debt_asked_again_adds_to_what_a_bucket_owes() -> None:
    """A bucket with no free unit keeps owing the first ask when the second comes: it owes both."""
    bucket = SkuStock(f"{SKU}#1", known=True, on_hand={"WH-SH": 3}, locked=3,
                      hot=Buckets(bucket=1, count=2, state=b.HOT))  # fmt: skip
    assert b.on_rebalance(bucket, 2, b.DEBT) == []
    assert b.on_rebalance(bucket, 1, b.DEBT) == []
    assert bucket.hot is not None and bucket.hot.owes_home == 3


def test_units_sent_to_a_bucket_waiting_for_a_count_are_its_to_sell() -> None:
    """Found in review: the cap on what a bucket waiting for a count sells only went down, so WH-GZ units its home
    sent meanwhile sat unsold for up to PROBE_HOLD_MS."""
    bucket = SkuStock(f"{SKU}#0", known=True, on_hand={"WH-SH": 3}, locked=3,
                      hot=Buckets(bucket=0, count=2, state=b.HOT))  # fmt: skip
    b.on_probe(bucket, "WH-SH", "count-c", now_ms=0)
    assert bucket.available() == 0
    b.received(bucket, {"WH-GZ": 4}, "")
    b.hold_probes_down(bucket)
    assert bucket.available() == 4


def test_units_kept_for_a_lack_are_free_once_the_sku_owes_nothing() -> None:
    """Found in review: the units a bucket keeps for lines a count left short stayed kept after those lines shipped
    (a bucket cannot tell which of its units left with them), and it sold 1 of 4 free units. Once its home owes
    nothing, it says so, and they are free."""
    stock = home({"WH-SH": 0, "WH-GZ": 3}, count=2)
    assert stock.hot is not None
    report(stock.hot, 0, 0, on_hand={"WH-SH": 3}, locked=6, presale_reserved=0, lent=0)  # 3 short
    stock.hot.short = [0]
    sent = b.distribute(stock, 1)
    assert [(s.to_bucket, s.ref) for s in sent] == [(0, b.LACK)] and stock.hot.lacked == [0]
    report(stock.hot, 0, 0, seq=2, acked=9, on_hand={"WH-SH": 3, "WH-GZ": 3}, locked=6, presale_reserved=0, lent=0,
           allocated={}, open_lines=2)  # fmt: skip
    lifted = b.on_report(stock, 0, stock.hot.reports["0"], 1)
    assert [(s.kind, s.to_bucket, s.ref) for s in lifted] == [(b.CONFIG, 0, b.LACK_LIFTED)] and stock.hot.lacked == []
    bucket = bucket_with_lack({"WH-SH": 3, "WH-GZ": 3}, locked=6, for_lack=3)
    b.lift(bucket, b.LACK_LIFTED)
    assert bucket.hot is not None and bucket.hot.for_lack == 0


def test_a_debt_no_bucket_can_pay_now_is_kept_back_until_paid_and_then_lifted() -> None:
    stock = home({"WH-SH": -1}, count=2)
    assert stock.hot is not None
    stock.hot.reports = {str(k): {**figures({"WH-SH": 3}), "available": 0, "locked": 3} for k in (0, 1)}
    asks = b.rebalance(stock, 1_000, 1, 200)
    assert [(s.to_bucket, s.qty, s.ref) for s in asks] == [(0, 1, b.DEBT), (1, 1, b.DEBT)]
    bucket = SkuStock(f"{SKU}#1", known=True, on_hand={"WH-SH": 3}, locked=3,
                      hot=Buckets(bucket=1, count=2, state=b.HOT))  # fmt: skip
    assert b.on_rebalance(bucket, 1, b.DEBT) == [] and bucket.hot is not None and bucket.hot.owes_home == 1
    bucket.locked = 0  # its line let go: one of its 3 units is the home's
    assert bucket.available() == 2
    paid = b.pay_debt(bucket)
    assert [(s.kind, s.to_bucket, b.total(s.units)) for s in paid] == [(b.TRANSFER, b.HOME, 1)]
    assert (bucket.hot.owes_home, bucket.available()) == (0, 2)
    b.give(stock, {"WH-SH": 1})  # the payment at the home
    assert [(s.to_bucket, s.ref) for s in b.lifts(stock)] == [(0, b.DEBT_LIFTED), (1, b.DEBT_LIFTED)]
    other = SkuStock(f"{SKU}#0", known=True, on_hand={"WH-SH": 3}, locked=3,
                     hot=Buckets(bucket=0, count=2, state=b.HOT, owes_home=1))  # fmt: skip
    b.lift(other, b.DEBT_LIFTED)
    assert other.hot is not None and other.hot.owes_home == 0


# ---- what a count being settled may take ------------------------------------------------------------------
def test_a_count_is_probed_with_the_most_it_can_take_from_the_sku_as_a_whole() -> None:
    """A correction of -2 takes exactly 2; a count, every unit (a bucket's shipments after it was taken go back into
    it, and the home does not know them). Every bucket keeps that back, and the home does not lift it while the count
    is being settled."""
    stock = home({"WH-SH": 1}, count=2)
    assert stock.hot is not None
    probes = sent(b.start_settle(stock, "COUNT", "WH-SH", 6, "c1", 0), b.PROBE)
    assert {k: s.qty for k, s in probes.items()} == {0: b.WHOLE, 1: b.WHOLE}
    assert stock.hot.indebted == [0, 1]
    assert b.lifts(stock) == []  # settling: what the count takes is not known yet
    other = home({"WH-SH": 1}, count=2)
    assert {s.qty for s in b.start_settle(other, "CORRECTION", "WH-SH", -2, "k1", 0)} == {2}


def test_a_bucket_answering_a_count_keeps_back_what_it_may_take() -> None:
    """It sends the warehouse's free units home as before, and of its other free units as many as the count may take,
    owing the rest: nothing it sells meanwhile can be a unit the count did not find."""
    bucket = SkuStock(f"{SKU}#1", known=True, on_hand={"WH-SH": 2, "WH-GZ": 3}, locked=2,
                      hot=Buckets(bucket=1, count=2, state=b.HOT))  # fmt: skip
    out = b.on_probe(bucket, "WH-SH", "c1", 1_000, keep=4)
    assert [s.units for s in out if s.kind == b.TRANSFER] == [{"WH-SH": 2}, {"WH-GZ": 1}]
    assert bucket.available() == 0 and bucket.hot is not None and bucket.hot.owes_home == 1
