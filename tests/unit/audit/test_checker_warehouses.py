"""The independent checker on one warehouse's units given to two orders (``warehouse_overbooked``), over topics held
in memory: the pool ties a paid line to a warehouse only while that warehouse's on-hand, less what is tied there
already, covers it, so more tied there than it can have held when one more line was is two orders on the same
units. The topics give no total order between a warehouse's counts, shipments and restocks and the lines tied to
it: every legal order of them passes."""

from __future__ import annotations

import pytest

from agents.audit import checker
from agents.audit.checker import ALLOCATED_BEYOND_ON_HAND, DISPATCHED_UNALLOCATED
from streams.contract.topics import HOLD_RESULTS, REFUND_EVENTS, STOCK_RETURNS, WAREHOUSE_DISPATCH
from streams.settings import Settings
from tests.unit.audit.test_checker_replay import WH, WH2, Topics


def _tie(topics: Topics, order_id: str, sku: str, qty: int, at_ms: int, wh: str = WH, *, bucket: int = -1,
         presale: bool = False) -> None:  # fmt: skip
    """An order line held, paid and tied to ``wh`` in the pool's batch at ``at_ms`` (held just before)."""
    topics.placed(order_id, sku, qty, presale=presale)
    topics.answer(order_id, sku, qty, "RESERVE", "HELD", at_ms - 10, bucket=bucket)
    topics.answer(order_id, sku, qty, "ALLOCATE", "ALLOCATED", at_ms, reason=wh, bucket=bucket)


def _overbooked(topics: Topics, settings: Settings | None = None) -> list[str]:
    report = checker.audit(settings or Settings())
    assert set(report.other_failures) <= {"warehouse_overbooked"}
    return report.warehouse_overbooked


def test_two_orders_given_the_same_units_at_one_warehouse_are_found(topics: Topics) -> None:
    """New check: 3 units at WH-SH and 5 at WH-GZ, and 2 + 2 tied to WH-SH. The SKU's holds (4 of 8) are no
    oversell, so nothing saw that WH-SH's WMS was sent one unit twice."""
    topics.adjust("A", "RECEIPT", 3, "rcpt-1", applied_ms=1_000)
    topics.adjust("A", "RECEIPT", 5, "rcpt-2", applied_ms=1_000, wh=WH2)
    _tie(topics, "jd:1", "A", 2, 2_000)
    _tie(topics, "jd:2", "A", 2, 3_000)
    report = checker.audit(Settings())
    assert report.summary()["oversold_units"] == 0
    assert report.warehouse_overbooked == [
        f"{ALLOCATED_BEYOND_ON_HAND} sku=A warehouse={WH} at_ms=3000 allocated=4 on_hand_at_most=3 lines=jd:2#1"]
    assert not report.ok and report.other_failures == {"warehouse_overbooked": 1}


def test_the_same_units_tied_at_two_warehouses_are_no_double_booking(topics: Topics) -> None:
    topics.adjust("A", "RECEIPT", 3, "rcpt-1", applied_ms=1_000)
    topics.adjust("A", "RECEIPT", 5, "rcpt-2", applied_ms=1_000, wh=WH2)
    _tie(topics, "jd:1", "A", 2, 2_000)
    _tie(topics, "jd:2", "A", 2, 3_000, wh=WH2)
    _tie(topics, "jd:3", "A", 1, 3_500)  # WH-SH's last unit
    assert _overbooked(topics) == []


def test_a_line_tied_to_a_warehouse_that_never_had_the_sku_is_found(topics: Topics) -> None:
    topics.adjust("A", "RECEIPT", 3, "rcpt-1", applied_ms=1_000)
    _tie(topics, "jd:1", "A", 1, 2_000, wh=WH2)
    assert _overbooked(topics) == [
        f"{ALLOCATED_BEYOND_ON_HAND} sku=A warehouse={WH2} at_ms=2000 allocated=1 on_hand_at_most=0 lines=jd:1#1"]


@pytest.mark.parametrize("count_ms", [1_500, 2_000, None])
def test_a_count_the_pool_applied_before_the_line_or_in_its_batch_covers_it(topics: Topics,
                                                                           count_ms: int | None) -> None:  # fmt: skip
    """The count raised WH-SH from 2 to 5 before the pool tied 4 there, or in the same batch (either order is the
    pool's), or at a moment its changelog no longer records (before every timed change: the most it allows). On
    the adjustments topic it comes after the answers all the same: no topic's order is the pool's."""
    topics.adjust("A", "RECEIPT", 2, "rcpt-1", applied_ms=1_000)
    _tie(topics, "jd:1", "A", 4, 2_000)
    topics.adjust("A", "COUNT", 5, "count-1", applied_ms=count_ms, event_time_ms=1_200)
    assert _overbooked(topics) == []


def test_a_count_the_pool_applied_after_the_line_does_not_cover_it(topics: Topics) -> None:
    topics.adjust("A", "RECEIPT", 2, "rcpt-1", applied_ms=1_000)
    _tie(topics, "jd:1", "A", 4, 2_000)
    topics.adjust("A", "COUNT", 5, "count-1", applied_ms=2_500, event_time_ms=2_400)
    assert [f.split()[0] for f in _overbooked(topics)] == [ALLOCATED_BEYOND_ON_HAND]


def test_a_count_that_finds_fewer_units_than_are_tied_is_no_double_booking_until_a_line_is_tied_there(
        topics: Topics) -> None:  # fmt: skip
    """Units lost from the shelf under lines tied to it are the warehouse's shortfall (the pool alerts it), not two
    orders on one unit; a line tied there while it is short is."""
    topics.adjust("A", "RECEIPT", 5, "rcpt-1", applied_ms=1_000)
    topics.adjust("A", "RECEIPT", 5, "rcpt-2", applied_ms=1_000, wh=WH2)
    _tie(topics, "jd:1", "A", 4, 2_000)
    topics.adjust("A", "COUNT", 2, "count-1", applied_ms=3_000)
    _tie(topics, "jd:2", "A", 1, 3_500, wh=WH2)  # another warehouse: not short
    assert _overbooked(topics) == []
    _tie(topics, "jd:3", "A", 1, 4_000)
    assert _overbooked(topics) == [
        f"{ALLOCATED_BEYOND_ON_HAND} sku=A warehouse={WH} at_ms=4000 allocated=5 on_hand_at_most=2 lines=jd:3#1"]


@pytest.mark.parametrize(("released_ms", "found"), [(2_500, False), (3_000, False), (3_500, True)])
def test_a_cancel_frees_the_units_from_the_batch_that_released_them(topics: Topics, released_ms: int,
                                                                    found: bool) -> None:  # fmt: skip
    """jd:1's 2 units at WH-SH released (its order cancelled) before jd:2 is tied to them, or in the same batch
    (the release may have come first); released after, both orders had them."""
    topics.adjust("A", "RECEIPT", 2, "rcpt-1", applied_ms=1_000)
    _tie(topics, "jd:1", "A", 2, 2_000)
    topics.answer("jd:1", "A", 2, "RELEASE", "RELEASED", released_ms, reason="order_cancelled")
    _tie(topics, "jd:2", "A", 2, 3_000)
    assert bool(_overbooked(topics)) is found


def test_a_shipment_takes_its_units_off_the_warehouse_and_its_line_off_what_is_tied(topics: Topics) -> None:
    topics.adjust("A", "RECEIPT", 3, "rcpt-1", applied_ms=1_000)
    _tie(topics, "jd:1", "A", 2, 2_000)
    topics.answer("jd:1", "A", 2, "SHIP", "SHIPPED", 3_000)
    _tie(topics, "jd:2", "A", 1, 4_000)  # the last unit left
    assert _overbooked(topics) == []
    _tie(topics, "jd:3", "A", 1, 5_000)
    assert _overbooked(topics) == [
        f"{ALLOCATED_BEYOND_ON_HAND} sku=A warehouse={WH} at_ms=5000 allocated=2 on_hand_at_most=1 lines=jd:3#1"]


def test_a_shipment_in_the_batch_that_tied_a_line_may_have_come_after_it(topics: Topics) -> None:
    """Shipped in the same batch as jd:2 was tied: the pool may have tied jd:2 while the shipped units stood."""
    topics.adjust("A", "RECEIPT", 3, "rcpt-1", applied_ms=1_000)
    _tie(topics, "jd:1", "A", 2, 2_000)
    topics.answer("jd:1", "A", 2, "SHIP", "SHIPPED", 3_000)
    _tie(topics, "jd:2", "A", 1, 3_000)
    assert _overbooked(topics) == []


@pytest.mark.parametrize(("restocked_ms", "found"), [(4_000, False), (5_000, False), (6_000, True)])
def test_a_restock_puts_units_back_from_the_batch_that_applied_it(topics: Topics, restocked_ms: int,
                                                                  found: bool) -> None:  # fmt: skip
    """WH-SH's only unit shipped, came back resellable and went back on hand (``stock.returns``, its own topic):
    a line tied to it after the pool applied the restock, or in its batch, had it; before, it had none."""
    topics.adjust("A", "RECEIPT", 1, "rcpt-1", applied_ms=1_000)
    _tie(topics, "jd:1", "A", 1, 2_000)
    topics.answer("jd:1", "A", 1, "SHIP", "SHIPPED", 3_000)
    topics.event(REFUND_EVENTS.name, "RefundRequested", {
        "event_id": "req:jd:r1", "event_time_ms": 3_100, "channel": "jd", "channel_order_id": "1",
        "channel_refund_id": "r1", "kind": "RETURN_AND_REFUND", "amount_fen": 100, "reason": "no_reason_7d",
        "lines": [{"line_no": 1, "sku": "A", "qty": 1}], "tracking_no": "", "sent_at_ms": 0})  # fmt: skip
    topics.event(REFUND_EVENTS.name, "ReturnReceived", {
        "event_id": "return-qc:jd:r1", "event_time_ms": 3_200, "channel": "jd", "channel_order_id": "1",
        "channel_refund_id": "r1", "warehouse_id": WH, "qc_done": True, "resellable": True, "qc_note": ""})  # fmt: skip
    topics.adjust("A", "RECEIPT", 1, "return:jd:r1:1", applied_ms=restocked_ms, topic=STOCK_RETURNS.name)
    _tie(topics, "jd:2", "A", 1, 5_000)
    assert bool(_overbooked(topics)) is found


def test_a_routed_presale_line_takes_its_warehouses_units_like_any_other(topics: Topics) -> None:
    topics.adjust("P", "PRESALE_CAP", 10, "cap-1", applied_ms=1_000)
    topics.adjust("P", "RECEIPT", 2, "rcpt-1", applied_ms=1_000)
    _tie(topics, "tmall:1", "P", 2, 2_000, presale=True)
    _tie(topics, "jd:2", "P", 1, 3_000)
    assert [f.split()[0] for f in _overbooked(topics)] == [ALLOCATED_BEYOND_ON_HAND]


def test_a_hot_skus_count_is_not_taken_off_before_its_buckets_settle_it(topics: Topics) -> None:
    """A hot SKU's count that finds fewer units is applied once every bucket has answered it, at a moment no topic
    records: a bucket ties lines on its figures before it meanwhile. The same story on a cold SKU is found."""
    for sku, bucket in (("H", 0), ("C", -1)):
        topics.adjust(sku, "RECEIPT", 6, f"{sku}-rcpt-1", applied_ms=1_000)
        _tie(topics, f"jd:{sku}1", sku, 4, 2_000, bucket=bucket)
        topics.adjust(sku, "COUNT", 4, f"{sku}-count-1", applied_ms=3_000)
        _tie(topics, f"jd:{sku}2", sku, 2, 3_500, bucket=bucket)
    assert [f.split()[1] for f in _overbooked(topics)] == ["sku=C"]


def test_a_hot_sku_named_in_the_settings_is_judged_as_one(topics: Topics) -> None:
    topics.adjust("H", "RECEIPT", 6, "rcpt-1", applied_ms=1_000)
    _tie(topics, "jd:1", "H", 4, 2_000)
    topics.adjust("H", "CORRECTION", -3, "loss-1", applied_ms=3_000)
    _tie(topics, "jd:2", "H", 2, 3_500)
    assert _overbooked(topics, Settings(hot_skus={"H": 4})) == []
    assert len(_overbooked(topics)) == 1


def test_an_allocation_a_replay_repeats_is_dated_by_its_last_repeat(topics: Topics) -> None:
    """At least once, a replay repeats answers flushed before a crash whose state was lost: the line was tied when
    the replay tied it, after the receipt, not at its first answer."""
    topics.adjust("A", "RECEIPT", 2, "rcpt-1", applied_ms=2_500)
    _tie(topics, "jd:1", "A", 2, 2_000)
    topics.answer("jd:1", "A", 2, "ALLOCATE", "ALLOCATED", 2_600, reason=WH)
    assert _overbooked(topics, Settings(processing_guarantee="at_least_once")) == []
    assert len(_overbooked(topics, Settings(processing_guarantee="exactly_once"))) == 1


def _dispatch(topics: Topics, order_id: str, wh: str, action: str = "DISPATCH") -> None:
    channel, _, number = order_id.partition(":")
    topics.event(WAREHOUSE_DISPATCH.name, "WarehouseDispatched", {
        "event_id": f"{order_id}:dispatch:{wh}", "event_time_ms": 3_000, "order_id": order_id, "channel": channel,
        "channel_order_id": number, "warehouse_id": wh, "lines": [{"line_no": 1, "sku": "A", "qty": 1}],
        "address": {}, "promised_ship_by_ms": 0, "split": False, "action": action})  # fmt: skip


def test_a_line_pushed_to_a_warehouse_the_pool_did_not_tie_it_to_is_found(topics: Topics) -> None:
    """New check: the WMS ships what ``warehouse.dispatch`` sends it. jd:1's line, tied at WH-SH, pushed to WH-GZ
    takes WH-GZ units the pool still offers to the next order; jd:2's, tied nowhere, likewise."""
    topics.adjust("A", "RECEIPT", 5, "rcpt-1", applied_ms=1_000)
    topics.adjust("A", "RECEIPT", 5, "rcpt-2", applied_ms=1_000, wh=WH2)
    _tie(topics, "jd:1", "A", 1, 2_000)
    _dispatch(topics, "jd:1", WH2)
    _dispatch(topics, "jd:1", WH2)  # pushed again (a replay): one finding
    topics.placed("jd:2", "A", 1)
    topics.answer("jd:2", "A", 1, "RESERVE", "HELD", 2_000)
    _dispatch(topics, "jd:2", WH)
    assert _overbooked(topics) == [
        f"{DISPATCHED_UNALLOCATED} sku=A warehouse={WH2} line=jd:1#1 pool_allocated={WH}",
        f"{DISPATCHED_UNALLOCATED} sku=A warehouse={WH} line=jd:2#1 pool_allocated=none"]


def test_a_line_pushed_where_the_pool_tied_it_or_a_push_called_off_passes(topics: Topics) -> None:
    topics.adjust("A", "RECEIPT", 5, "rcpt-1", applied_ms=1_000)
    _tie(topics, "jd:1", "A", 1, 2_000)
    _dispatch(topics, "jd:1", WH)
    _dispatch(topics, "jd:1", WH, "CANCEL")
    topics.placed("jd:2", "A", 1)
    topics.answer("jd:2", "A", 1, "RESERVE", "HELD", 2_000)
    # The pool's answer that the line is tied to WH-SH already (its ALLOCATED answer lost, at least once).
    topics.answer("jd:2", "A", 1, "ALLOCATE", "IGNORED", 2_100, reason=f"allocated_to_{WH}")
    _dispatch(topics, "jd:2", WH)
    assert _overbooked(topics) == []


def test_a_push_whose_answers_the_retention_deleted_is_unjudged(topics: Topics) -> None:
    topics.adjust("A", "RECEIPT", 5, "rcpt-1", applied_ms=1_000)
    _dispatch(topics, "jd:1", WH)
    topics.placed("jd:0", "A", 1)
    topics.answer("jd:0", "A", 1, "RESERVE", "HELD", 500)
    topics.expire(HOLD_RESULTS.name, 1)
    report = checker.audit(Settings())
    assert report.warehouse_overbooked == [] and "line jd:1#1" in report.unjudged


def test_an_allocation_a_replay_repeats_after_a_short_count_is_no_double_booking(topics: Topics) -> None:
    """At least once, the pool answers a line's ALLOCATE asked again as it stands (ALLOCATED, the units still tied)
    without checking the shelf again: a count that found the warehouse short in between makes that answer no second
    booking. Dated by its repeat, it was judged as a line tied while the warehouse was short."""
    topics.adjust("A", "RECEIPT", 10, "rcpt-1", applied_ms=1_000)
    _tie(topics, "jd:1", "A", 5, 2_000)
    _tie(topics, "jd:2", "A", 5, 2_000)
    topics.adjust("A", "COUNT", 5, "count-1", applied_ms=3_000)
    topics.answer("jd:1", "A", 5, "ALLOCATE", "ALLOCATED", 4_000, reason=WH)
    for guarantee in ("at_least_once", "exactly_once"):
        assert _overbooked(topics, Settings(processing_guarantee=guarantee)) == []
