"""Known gaps of a split (hot) SKU, each a story in which it sells a unit the same SKU unsplit would not. They fail
today, and failed before the stop that found them (they are not regressions); each is marked ``xfail(strict)``, so
the suite stays green while they do, and goes red the day one is fixed without its mark being lifted. Found in
review (2026-11-29); see the closing notes of issue 11 for what was tried."""

from __future__ import annotations

import pytest

from streams.contract.keys import bucket_for, bucket_key
from streams.contract.topics import STOCK_BUCKETS
from tests.unit.inventory.test_hot_against_cold import SKU, P, Shop, play, split_beyond_cold


def lagging(shop: Shop) -> Shop:
    """Hold back every BucketSync to the bucket keys in ``shop.r.held_keys`` (a partition whose consumer lags)."""
    r = shop.r
    r.held_keys, r.held = set(), []
    orig = r._round  # noqa: SLF001 - the runner's rounds, some messages held back

    def _round(events):
        go = []
        for e in events:
            (r.held if e[0] == STOCK_BUCKETS.name and e[1] in r.held_keys else go).append(e)
        return orig(go)

    r._round = _round  # noqa: SLF001
    return shop


def catch_up(shop: Shop) -> None:
    r = shop.r
    r.held_keys.clear()
    ev, r.held = r.held, []
    r._drain(ev)  # noqa: SLF001 - the partition catches up


def orders_of(bucket: int, buckets: int, n: int, prefix: str) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        order_id, i = f"jd:{prefix}{i}", i + 1
        if bucket_for(order_id, buckets) == bucket:
            out.append(order_id)
    return out


def count_while_a_bucket_lags(hot: bool) -> list[object]:
    shop = lagging(Shop(2 if hot else 0))
    shop.adjust("RECEIPT", 8, "WH-SH", "r1")
    shop.adjust("RECEIPT", 4, "WH-GZ", "r2")
    shop.split()
    shop.r.advance(3_000)
    for order_id in orders_of(0, 2, 1, "a") + orders_of(1, 2, 1, "b"):
        assert shop.line(order_id, "RESERVE", 3) == "HELD"
    shop.r.advance(3_000)
    if hot:
        shop.r.held_keys.add(bucket_key(SKU, 0, P))  # bucket 0's partition lags: it answers the count late
    shop.adjust("COUNT", 0, "WH-SH", "c1")  # 6 held on 4 WH-GZ units: a cold SKU sells nothing more
    sold = [shop.line(order_id, "RESERVE", 1) for order_id in orders_of(1, 2, 3, "z")]
    catch_up(shop)
    shop.r.advance(5_000)
    return [sold, shop.beyond()]


@pytest.mark.xfail(strict=True, reason="gap: while one bucket lags, the others sell what the SKU as a whole lacks")
def test_a_bucket_that_answered_a_count_sells_nothing_the_sku_lacks_while_another_bucket_lags() -> None:
    """bucket 1 answers the WH-SH count, then sells its free WH-GZ units while the
    count waits for bucket 0; the SKU as a whole already lacks them (cold: beyond 2, refuses all three)."""
    cold, split = count_while_a_bucket_lags(False), count_while_a_bucket_lags(True)
    assert cold == [["REFUSED"] * 3, 2]
    assert split[1] <= cold[1], split


def shipped_below_zero_after_a_count(hot: bool) -> tuple[list[str], int]:
    shop = Shop(4 if hot else 0)
    shop.adjust("RECEIPT", 16, "WH-SH", "r1")
    shop.adjust("RECEIPT", 6, "WH-GZ", "r2")
    shop.split()
    for order_id in ["jd:o0", "jd:o2", "jd:o3", "jd:o4"]:  # buckets 3, 3, 1, 2
        assert shop.line(order_id, "RESERVE", 3) == "HELD"
    shop.adjust("COUNT", 5, "WH-SH", "c1")  # 12 held on SH 5 + GZ 6: one short
    shop.adjust("RECEIPT", 2, "WH-GZ", "r3")  # one free
    shop.line("jd:o2", "SHIP", 3, "WH-SH")  # its bucket has 1 WH-SH: 2 go below zero, sent home as a shortfall
    sold = [shop.line(f"jd:n{i}", "RESERVE", 1) for i in range(2)]
    for _ in range(3):
        shop.r.advance(2_000)
    return sold, shop.beyond()


@pytest.mark.xfail(strict=True, reason="gap: an ask home sent to a bucket that cannot pay is dropped silently")
def test_a_shipment_below_zero_within_the_refresh_interval_after_a_count_sells_no_extra_unit() -> None:
    """No lag, no merge; found by a story shipping within a refresh interval of a
    count. Cold: 1 free unit, sells jd:n0 and refuses jd:n1. Split in 4: sells both (1 held beyond on-hand). Passes if
    3 s pass between the count and the receipt (a report lands first)."""
    assert shipped_below_zero_after_a_count(False) == (["HELD", "REFUSED"], 0)
    assert shipped_below_zero_after_a_count(True)[1] <= 0


def correction_while_a_bucket_lags(hot: bool) -> tuple[str, int]:
    shop = lagging(Shop(4 if hot else 0))
    shop.adjust("RECEIPT", 8, "WH-SH", "r1")
    shop.adjust("RECEIPT", 6, "WH-GZ", "r2")
    shop.split()
    for order_id in ["jd:o0", "jd:o1", "jd:o2"]:
        assert shop.line(order_id, "RESERVE", 3) == "HELD"
    shop.adjust("RECEIPT", 4, "WH-SH", "r3")
    for i in range(7):
        assert shop.line(f"jd:n{i}", "RESERVE", 1) == "HELD"  # 16 held on 18
    if hot:
        shop.r.held_keys.add(bucket_key(SKU, 2, P))  # bucket 2 lags: the richest, asked for the debt
    shop.adjust("CORRECTION", -2, "WH-SH", "corr")  # 16 held on 16: a cold SKU sells nothing more
    answer = shop.line("jd:n8", "RESERVE", 1)  # bucket 0, not lagging
    catch_up(shop)
    for _ in range(4):
        shop.r.advance(2_000)
    return answer, shop.beyond()


@pytest.mark.xfail(strict=True, reason="gap: while one bucket lags, the others sell what the SKU as a whole lacks")
def test_a_correction_that_leaves_the_sku_short_stops_every_bucket_not_only_the_one_asked() -> None:
    """Pre-existing (also at d0c60f6), no count: the home asks only the bucket with most units for the 2 it owes;
    while that ask waits on a lagging partition, bucket 0 sells a unit the SKU lacks (beyond 1 after catching up)."""
    assert correction_while_a_bucket_lags(False) == ("REFUSED", 0)
    assert correction_while_a_bucket_lags(True)[1] <= 0


@pytest.mark.xfail(strict=True, reason="gap: seed 2078 of the random story, not traced yet")
def test_seed_2078_of_the_random_story() -> None:
    assert split_beyond_cold(play, [2078]) == []
