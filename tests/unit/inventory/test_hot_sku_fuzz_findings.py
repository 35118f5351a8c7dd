"""Hot-SKU unit losses a randomized fuzz of interleaved partitions found: each case plays the same traffic on a cold
SKU and on a split one, and the split one must end with the cold one's on-hand per warehouse (and its answers)."""

from __future__ import annotations

from typing import Any

import orjson

from agents.inventory.hold_stock import STORE, HoldStock, sku_key
from streams.contract.keys import bucket_for, bucket_key
from streams.contract.topics import HOLD_COMMANDS, OPS_OVERRIDES, STOCK_ADJUSTMENTS
from streams.engine.local import LocalRunner
from streams.settings import Settings

from .test_hot_sku_shelf import SKU, WAREHOUSES, P, adjust, runner


def hot(r: LocalRunner, buckets: int, doc: str) -> None:
    r.send([(SKU, "HotSku", {"event_id": doc, "event_time_ms": r.now_ms, "sku": SKU, "buckets": buckets, "state": "",
                             "operator": "ops", "reason": "live"})], OPS_OVERRIDES.name)  # fmt: skip


def cmd(action: str, order_id: str, qty: int, bucket: int, wh: str = "") -> dict[str, Any]:
    return {"event_id": f"{action.lower()}:{order_id}#1", "event_time_ms": 0, "action": action, "order_id": order_id,
            "line_no": 1, "sku": SKU, "qty": qty, "channel": "jd", "presale": False, "expires_at_ms": 0, "reason": "",
            "source_time_ms": 0, "warehouse_id": wh, "bucket": bucket, "tries": 0}  # fmt: skip


def send(r: LocalRunner, record: dict[str, Any]) -> list[dict[str, Any]]:
    out = r.send([(bucket_key(SKU, record["bucket"], P), "HoldCommand", record)], HOLD_COMMANDS.name)
    return [o.record for o in out if o.event_type == "HoldDecided" and o.record["order_id"] == record["order_id"]]


def on_hand(r: LocalRunner) -> dict[str, int]:
    """The SKU's on-hand per warehouse over its home and every bucket."""
    per: dict[str, int] = {}
    for store in r.stores.values():
        for key, raw in store.items():
            if key.startswith(b"s\x00" + SKU.encode()):
                for wh, q in orjson.loads(raw)["on_hand"].items():
                    per[wh] = per.get(wh, 0) + q
    return {wh: q for wh, q in per.items() if q}


def settle(r: LocalRunner) -> None:
    for _ in range(5):
        r.advance(1_000)


def shelves_split(buckets: int) -> tuple[LocalRunner, list[dict[str, Any]]]:
    """10 units at Shanghai and 1 at Guangzhou, split in ``buckets`` (0: cold); with each bucket's record."""
    r = runner(hot_sku_low_water=1)
    adjust(r, "RECEIPT", 10, "WH-SH", "rcpt-sh")
    adjust(r, "RECEIPT", 1, "WH-GZ", "rcpt-gz")
    if buckets:
        hot(r, buckets, "hot-1")
        settle(r)
    records = [r.read(STORE, sku_key(bucket_key(SKU, k, P)), bucket_key(SKU, k, P)) for k in range(buckets)]
    return r, records


# ---- 1. a SHIP's pass-home marker gives way to a late duplicate RESERVE: the line is held again and shipped twice ----


def test_a_late_duplicate_reserve_of_a_refused_line_shipped_holds_nothing_and_a_repeated_ship_takes_nothing() -> None:
    """An order of 12 refused (10 on hand; hot: 5 in each bucket, refused by both); the WMS ships it all the same
    (SHIP to the bucket that answered, which holds nothing: it passes the SHIP home and leaves a FORWARDED marker
    'to:-1:..'; the home takes the 12 units off its shelf). After a receipt of 40, the order's RESERVE and SHIP are
    each read a second time (at-least-once). A cold SKU answers the late RESERVE from the shipped tombstone (nothing
    held) and the second SHIP changes nothing: 10 - 12 + 40 = 38. The hot SKU: the late RESERVE follows the first
    bucket's marker to the second, whose marker (the SHIP's) reads as 'a RESERVE I passed home and the home passed
    back' (hold_stock._passed_back), so the marker gives way and the line is HELD there; the second SHIP then ships
    that hold: 12 units off twice, 26 left."""
    order = "jd:x1"
    results = {}
    for buckets in (0, 2):
        r = runner()
        adjust(r, "RECEIPT", 10, "WH-SH", "rcpt-1")
        if buckets:
            hot(r, buckets, "hot-1")
            settle(r)
        first = bucket_for(order, buckets) if buckets else -1
        reserve = cmd("RESERVE", order, 12, first)
        refused = send(r, reserve)
        assert [a["outcome"] for a in refused] == ["REFUSED"]
        ship = cmd("SHIP", order, 12, refused[0]["bucket"], "WH-SH")
        assert [a["outcome"] for a in send(r, ship)] == ["SHIPPED"]
        settle(r)
        adjust(r, "RECEIPT", 40, "WH-SH", "rcpt-2")
        settle(r)
        late = send(r, dict(reserve))  # the same RESERVE read again
        send(r, dict(ship))  # the same SHIP read again
        settle(r)
        results[buckets] = (on_hand(r), [a["outcome"] for a in late])
    assert results[0] == ({"WH-SH": 38}, ["SHIPPED"])
    assert results[2] == results[0], f"hot SKU: {results[2]}"


# ---- 2. a cancelled line shipped after its bucket merged and the SKU was split again: taken off an empty record ----


def test_a_shipment_of_a_cancelled_line_after_the_buckets_merged_and_split_again_leaves_no_phantom_units() -> None:
    """The existing fix (test_hot_buckets: a shipment of a cancelled line after the buckets merged is taken from the
    home's shelf) passes such a SHIP home only while the bucket's record, made anew, is cold. Split again before
    the SHIP arrives, the record made anew is a hot bucket (its CONFIG came first) and takes the SHIP itself, off
    an empty on-hand map: _deduct_shipped finds no 'WH-GZ' there and books the unit under 'unassigned'. The unit
    the cancel gave back went home with the merge and is still counted at Guangzhou: 10 on hand, 1 shipped, the SKU
    says 10 (on_hand_total ignores the -1 under 'unassigned'), one phantom unit to sell."""
    settings = Settings(safety_threshold=0, threshold_hysteresis=0, partitions=P, hot_sku_low_water=1)
    r = LocalRunner([HoldStock.from_settings(settings, WAREHOUSES)], partitions=P)
    adjust(r, "RECEIPT", 6, "WH-SH", "rcpt-sh")
    adjust(r, "RECEIPT", 4, "WH-GZ", "rcpt-gz")
    hot(r, 2, "hot-1")
    order_id = next(o for o in (f"jd:v{i}" for i in range(100)) if bucket_for(o, 2) == 1)
    assert [a["outcome"] for a in send(r, cmd("RESERVE", order_id, 1, 1))] == ["HELD"]
    assert [a["outcome"] for a in send(r, cmd("COMMIT", order_id, 1, 1, "WH-GZ"))] == ["ALLOCATED"]
    send(r, cmd("RELEASE", order_id, 1, 1))  # the buyer cancels
    hot(r, 0, "hot-2")  # the live stream ends: ops merge the buckets
    r.advance(1_000)
    # ... and the next one starts before the WMS's late notice comes. The split's CONFIG reaches bucket 1 first, its
    # units a moment later (another record's batch in between: the SHIP, on another topic).
    split = {"event_id": "hot-3", "event_time_ms": r.now_ms, "sku": SKU, "buckets": 2, "state": "",
             "operator": "ops", "reason": "live"}  # fmt: skip
    produced = r._round([(OPS_OVERRIDES.name, SKU, "HotSku", split)])  # noqa: SLF001
    to_b1 = [e for e in produced if e[2] == "BucketSync" and e[3]["to_bucket"] == 1]
    assert [e[3]["kind"] for e in to_b1][:1] == ["CONFIG"]
    r._drain(to_b1[:1])  # noqa: SLF001
    assert [a["outcome"] for a in send(r, cmd("SHIP", order_id, 1, 1, "WH-GZ"))] == ["SHIPPED"]  # shipped anyway
    r._drain([e for e in produced if e not in to_b1[:1]])  # noqa: SLF001
    settle(r)
    per = on_hand(r)
    assert per == {"WH-SH": 6, "WH-GZ": 3}, per


# ---- 3. a count settled while the buckets merge: a bucket that shipped its last line and went has no journal ----


def deliver(r: LocalRunner, events: list[Any], hold: Any = lambda e: False) -> list[Any]:
    """Deliver ``events`` and everything they cause, round by round, keeping back (and returning) what ``hold``
    picks: messages on another partition, late."""
    held, queue = [], [events]
    while queue:
        produced = r._round(queue.pop(0))  # noqa: SLF001
        held += [e for e in produced if hold(e)]
        if keep := [e for e in produced if not hold(e) and e[0] in r._reads]:  # noqa: SLF001
            queue.append(keep)
    return held


def test_a_count_taken_before_a_merging_buckets_last_shipment_keeps_that_shipment_off() -> None:
    """10 at Shanghai, split in two buckets of 5; bucket b holds a paid line of all its 5, the other bucket an unpaid
    line of 1. The WMS counts 10 (T). Ops merge the buckets (the other bucket sends its 4 free units home and waits
    for its line); b's line ships (after T): b is empty, reports it and its record goes - with its shelf
    journal. The count reaches the home before that report (other partitions), so count_refusal has no reason to
    refuse it (moves_from not moved yet); the home probes b, whose record is made anew: no journal, it answers 'held
    0 at T' instead of 5. The home settles 10 - (5 + 0) = +5 on top: 10 on hand where a cold SKU (count as of T, the
    shipment after it kept off) has 5. Five phantom units."""
    results = {}
    for buckets in (0, 2):
        r = runner(hot_sku_low_water=1)
        adjust(r, "RECEIPT", 10, "WH-SH", "rcpt-1")
        order = "jd:c1"
        b = -1
        if buckets:
            hot(r, 2, "hot-1")
            settle(r)
            b = bucket_for(order, 2)
        assert [a["outcome"] for a in send(r, cmd("RESERVE", order, 5, b))] == ["HELD"]
        assert [a["outcome"] for a in send(r, cmd("COMMIT", order, 5, b, "WH-SH"))] == ["ALLOCATED"]
        other = next(o for o in (f"jd:d{i}" for i in range(100)) if not buckets or bucket_for(o, 2) != b)
        b2 = bucket_for(other, 2) if buckets else -1  # the other bucket keeps a line open: it does not end yet
        assert [a["outcome"] for a in send(r, cmd("RESERVE", other, 1, b2))] == ["HELD"]
        r.advance(1_000)
        taken = r.now_ms  # the count is taken: 10 on the shelf
        r.advance(1_000)
        if buckets:
            hot(r, 0, "hot-2")  # merge: the other bucket sends its 5 home; b keeps its line
        ship = cmd("SHIP", order, 5, b, "WH-SH")
        late = deliver(r, [(HOLD_COMMANDS.name, bucket_key(SKU, b, P), "HoldCommand", ship)],
                       hold=lambda e, b=b: e[2] == "BucketSync" and e[3]["from_bucket"] == b >= 0)  # b's word home lags
        count = {"event_id": "count-1", "event_time_ms": taken, "sku": SKU, "warehouse_id": "WH-SH", "kind": "COUNT",
                 "qty": 10, "reason": ""}  # fmt: skip
        deliver(r, [(STOCK_ADJUSTMENTS.name, SKU, "StockAdjusted", count)])
        assert not r.refusals, r.refusals  # the count is applied (no bucket reported its end yet)
        deliver(r, late)
        settle(r)
        results[buckets] = on_hand(r)
    assert results[0] == {"WH-SH": 5}
    assert results[2] == results[0], f"hot SKU: {results[2]}"


# ---- 4. the home's next life of buckets, begun at the same clock reading, reuses the transfer ids of the last ----


def test_a_split_begun_again_at_the_clock_reading_of_the_last_loses_no_transfer() -> None:
    """A split, merged and split again within one clock reading of the home's partition (or on a worker whose clock
    is behind the one that ran the last split: a partition moved). A bucket made anew numbers its messages past its
    last life's (LIFE_ENDED); the home, whose record drops its split once cold (home.hot = None), numbers its new
    life's from the clock again: SKU:<now*1000+1>.. - the ids of the last life's messages, which each bucket
    remembers applying for days (the transfer ids, under 'a'). The new life's TRANSFER to bucket 0 is dropped as
    'credited before': its units are gone. 10 on hand; the SKU says 10 - (bucket 0's share)."""
    r = runner(hot_sku_low_water=1)
    adjust(r, "RECEIPT", 10, "WH-SH", "rcpt-1")
    hot(r, 2, "hot-1")  # TRANSFERs SKU-A:<n+3>, <n+4> to buckets 0 and 1
    hot(r, 0, "hot-2")  # merge: every unit goes home, the buckets end, the home's record drops its split
    assert on_hand(r) == {"WH-SH": 10}
    hot(r, 2, "hot-3")  # the same clock reading: the same ids again
    settle(r)
    assert on_hand(r) == {"WH-SH": 10}, on_hand(r)


# ---- 5. a line shipped from a warehouse its bucket holds none of: taken off another warehouse ----


def test_a_line_shipped_from_a_warehouse_its_bucket_has_none_of_is_taken_off_that_warehouse() -> None:
    """10 at Shanghai, 1 at Guangzhou; split in two buckets, only one of which gets the Guangzhou unit. A line of 2 held
    in the other bucket is shipped from Guangzhou (routing refused it, ops pushed the order to Guangzhou by hand; the
    lifecycle sends SHIP with the warehouse that shipped). A cold SKU takes the 2 off Guangzhou: {SH 10, GZ -1}. The
    bucket's on-hand map has no 'WH-GZ' key, so rules._deduct_shipped takes the 2 'from the fullest': Shanghai. The
    SKU says {SH 8, GZ 1}: one phantom unit at Guangzhou (and two missing at Shanghai)."""
    results = {}
    for buckets in (0, 2):
        r, records = shelves_split(buckets)
        b = -1
        order = "jd:g0"
        if buckets:
            b = next(k for k, rec in enumerate(records) if not rec["on_hand"].get("WH-GZ"))
            order = next(o for o in (f"jd:g{i}" for i in range(100)) if bucket_for(o, 2) == b)
        assert [a["outcome"] for a in send(r, cmd("RESERVE", order, 2, b))] == ["HELD"]
        assert [a["outcome"] for a in send(r, cmd("SHIP", order, 2, b, "WH-GZ"))] == ["SHIPPED"]
        settle(r)
        results[buckets] = on_hand(r)
    assert results[0] == {"WH-SH": 10, "WH-GZ": -1}
    assert results[2] == results[0], f"hot SKU: {results[2]}"


# ---- 6. (liveness, no units) a RELEASE of a line refused after it was passed back goes round MAX_HOPS times ----


def test_a_release_of_a_line_refused_after_it_was_passed_back_is_answered_not_sent_round() -> None:
    """A RESERVE reaches its bucket before the bucket's CONFIG (two topics): the bucket passes it home (marker
    'to:-1'), the home passes it back (marker 'to:b'), the bucket - configured by now - decides it: refused (a
    refusal stores nothing, the marker stays). The order's RELEASE then follows b's marker home, the home's back to
    b, ... 2 x 65 hops, each a message (and each repeated by any at-least-once replay on the way), to end refused
    'passed_on_too_often'. A cold SKU answers RELEASED at once."""
    r = runner(hot_sku_low_water=1)
    adjust(r, "RECEIPT", 2, "WH-SH", "rcpt-1")
    order = "jd:r1"
    b = bucket_for(order, 2)
    to_b = lambda e: e[0] == "stock.buckets" and e[3].get("bucket", e[3].get("to_bucket")) == b  # noqa: E731
    split = {"event_id": "hot-1", "event_time_ms": r.now_ms, "sku": SKU, "buckets": 2, "state": "",
             "operator": "ops", "reason": "live"}  # fmt: skip
    late = deliver(r, [(OPS_OVERRIDES.name, SKU, "HotSku", split)], hold=to_b)  # b's CONFIG lags
    late += deliver(r, [(HOLD_COMMANDS.name, bucket_key(SKU, b, P), "HoldCommand", cmd("RESERVE", order, 5, b))],
                    hold=to_b)  # passed home, and back: behind the CONFIG on b's partition
    before = len(r.outputs)
    deliver(r, late)
    refused = [o.record for o in r.outputs[before:] if o.event_type == "HoldDecided"]
    assert [(a["outcome"], a["bucket"]) for a in refused] == [("REFUSED", b)]
    before = len(r.outputs)
    released = send(r, cmd("RELEASE", order, 5, b))
    hops = sum(1 for o in r.outputs[before:] if o.event_type == "HoldCommand")
    assert [a["outcome"] for a in released] == ["RELEASED"], (released, hops)
    assert hops <= 4, hops


# ---- 7. a count while an exchange's units are out at a bucket the home already took as merged ----


def test_a_count_while_an_exchanges_units_are_out_at_a_merged_bucket_counts_them_once() -> None:
    """10 at Shanghai, 1 at Guangzhou, split in two: bucket b gets the Guangzhou unit, the other keeps a line open.
    Ops merge the buckets; b sends its units home, reports empty and goes, its word home lagging (another partition).
    The home, deciding lines again, holds one and routing sends it to Guangzhou, which the home has none of: it
    offers a Shanghai unit in exchange to b (b's last figures still show the Guangzhou unit). b, made anew, has
    nothing to give: the Shanghai unit comes back, behind b's old messages. The home reads those - b empty: merged
    - and then a count of Shanghai (10, right), which probes only the other bucket: the unit out on the exchange is
    in no one's answer, the count says 10 all the same, and when the unit comes home it is put on top of it. A cold
    SKU (no exchanges) has 10 at Shanghai; the hot one had 11, one phantom unit (fuzz: count-remark-replay, seed
    160). A transfer to a bucket out on an exchange now keeps the home from taking it as merged until the bucket
    says it applied it, so the count probes it and the unit is counted, as any transfer's, once."""
    results = {}
    for buckets in (0, 2):
        r, records = shelves_split(buckets)
        b = -1
        if buckets:
            b = next(k for k, rec in enumerate(records) if rec["on_hand"].get("WH-GZ"))
            other = next(o for o in (f"jd:e{i}" for i in range(100)) if bucket_for(o, 2) != b)
            assert [a["outcome"] for a in send(r, cmd("RESERVE", other, 1, 1 - b))] == ["HELD"]  # it stays merging
        from_b = lambda e, b=b: e[2] == "BucketSync" and e[3]["from_bucket"] == b >= 0  # noqa: E731
        late = []
        if buckets:
            unhot = {"event_id": "hot-2", "event_time_ms": r.now_ms, "sku": SKU, "buckets": 0, "state": "",
                     "operator": "ops", "reason": "live"}  # fmt: skip
            late += deliver(r, [(OPS_OVERRIDES.name, SKU, "HotSku", unhot)], hold=from_b)  # b's word home lags
        order = "jd:e-home"
        for action, wh in (("RESERVE", ""), ("COMMIT", "WH-GZ")):  # the home decides it (merging), short of Guangzhou
            late += deliver(r, [(HOLD_COMMANDS.name, SKU, "HoldCommand", cmd(action, order, 1, -1, wh))], hold=from_b)
        back = next((i for i, e in enumerate(late) if e[3]["ref"].startswith("swap:")), len(late))
        assert not buckets or back < len(late)  # the exchange went to b and came back
        deliver(r, late[:back])  # b's old messages: empty, the home takes it as merged
        r.advance(1_000)
        taken = r.now_ms  # the count is taken: 10 on the Shanghai shelf
        r.advance(1_000)
        count = {"event_id": "count-1", "event_time_ms": taken, "sku": SKU, "warehouse_id": "WH-SH", "kind": "COUNT",
                 "qty": 10, "reason": ""}  # fmt: skip
        late = late[back:] + deliver(r, [(STOCK_ADJUSTMENTS.name, SKU, "StockAdjusted", count)], hold=from_b)
        assert not r.refusals, r.refusals
        deliver(r, late)  # the exchange's unit comes home (and b's answer to the count, if it was probed)
        settle(r)
        results[buckets] = on_hand(r)
    assert results[0] == {"WH-SH": 10, "WH-GZ": 1}
    assert results[2] == results[0], f"hot SKU: {results[2]}"
