"""The pool's engine processor, run in-process through the engine's interface: no broker."""

from __future__ import annotations

from typing import Any

import orjson

from agents.inventory.hold_stock import STORE, HoldStock, hold_key, override_key, sku_key
from streams.contract.reasons import Reason
from streams.contract.topics import HOLD_COMMANDS, OPS_OVERRIDES, STOCK_ADJUSTMENTS
from streams.engine.local import LocalRunner
from streams.settings import Settings

WAREHOUSES = frozenset({"WH-SH", "WH-GZ"})


def runner(**overrides: Any) -> LocalRunner:
    settings = Settings(**{"safety_threshold": 0, **overrides})
    return LocalRunner([HoldStock.from_settings(settings, WAREHOUSES)])


def receipt(r: LocalRunner, sku: str, qty: int, wh: str = "WH-SH", doc: str = "") -> None:
    r.send([(sku, "StockAdjusted", {"event_id": doc or f"rcpt-{sku}-{qty}-{wh}", "event_time_ms": r.now_ms,
                                    "sku": sku, "warehouse_id": wh, "kind": "RECEIPT", "qty": qty,
                                    "reason": ""})], STOCK_ADJUSTMENTS.name)


def command(action: str, order_id: str, sku: str, *, qty: int = 1, line_no: int = 1, channel: str = "tmall",
            warehouse_id: str = "", presale: bool = False) -> tuple[str, str, dict[str, Any]]:
    return (sku, "HoldCommand", {
        "event_id": f"{order_id}#{line_no}:{action}", "event_time_ms": 0, "action": action, "order_id": order_id,
        "line_no": line_no, "sku": sku, "qty": qty, "channel": channel, "presale": presale, "expires_at_ms": 0,
        "reason": "", "source_time_ms": 0, "warehouse_id": warehouse_id,
    })


def claim(order_id: str, sku: str, override_id: str) -> tuple[str, str, dict[str, Any]]:
    """What the lifecycle of a VIP order not placed yet answers the offer of an override's set-aside."""
    sku, kind, record = command("RESERVE", order_id, sku, line_no=0)
    return sku, kind, {**record, "reason": f"vip_override:{override_id}"}


def requested_and_approved(r: LocalRunner, sku: str, override_id: str, qty: int, vip_order_id: str) -> list[Any]:
    """An override requested by alice and approved by bob: what the approval wrote."""
    ov = {"event_id": "x", "event_time_ms": 0, "override_id": override_id, "sku": sku, "qty": qty,
          "vip_order_id": vip_order_id, "reason": "key account", "operator": "alice"}
    r.send([(sku, "VipOverride", {**ov, "action": "REQUEST"})], OPS_OVERRIDES.name)
    return r.send([(sku, "VipOverride", {**ov, "action": "APPROVE", "operator": "bob", "event_id": "y"})],
                  OPS_OVERRIDES.name)  # fmt: skip


def answers(outputs: list[Any]) -> list[tuple[str, str]]:
    return [(o.record["order_id"], o.record["outcome"]) for o in outputs if o.event_type == "HoldDecided"]


def test_a_hot_sku_holds_exactly_its_stock_and_its_record_stays_small() -> None:
    r = runner()
    receipt(r, "SKU-HOT", 100)
    for batch in range(100):
        r.send([command("RESERVE", f"tmall:{batch}-{i}", "SKU-HOT") for i in range(1000)], HOLD_COMMANDS.name)
    decided = answers(r.outputs)
    assert len(decided) == 100_000
    assert sum(1 for _, outcome in decided if outcome == "HELD") == 100
    totals = r.read(STORE, sku_key("SKU-HOT"), "SKU-HOT")
    assert totals["locked"] == 100 and totals["open_lines"] == 100
    # Refused attempts store nothing: the totals record stays a few hundred bytes.
    assert len(orjson.dumps(totals)) < 600
    stored = sum(1 for (name, _), store in r.stores.items() for _ in store.items())
    assert stored <= 100 + 2


def test_duplicate_commands_take_stock_once_and_release_frees_it() -> None:
    r = runner()
    receipt(r, "SKU-A", 2)
    r.send([command("RESERVE", "jd:1", "SKU-A"), command("RESERVE", "jd:1", "SKU-A")])
    assert answers(r.outputs) == [("jd:1", "HELD"), ("jd:1", "HELD")]
    assert r.read(STORE, sku_key("SKU-A"), "SKU-A")["locked"] == 1
    r.send([command("RELEASE", "jd:1", "SKU-A"), command("RESERVE", "jd:1", "SKU-A")])
    assert r.read(STORE, sku_key("SKU-A"), "SKU-A")["locked"] == 0
    assert answers(r.outputs)[-1] == ("jd:1", "RELEASED")  # the late duplicate finds the tombstone


def test_unpaid_holds_expire_on_the_timer_and_tombstones_are_purged() -> None:
    r = runner(hold_ttl_s=60, payment_timeout_s=30, line_tombstone_ttl_s=30)
    receipt(r, "SKU-E", 5)
    r.send([command("RESERVE", "pdd:1", "SKU-E", qty=3)])
    r.advance(59_000)
    assert r.read(STORE, sku_key("SKU-E"), "SKU-E")["locked"] == 3
    out = r.advance(2_000)
    assert answers(out) == [("pdd:1", "EXPIRED")]
    assert r.read(STORE, sku_key("SKU-E"), "SKU-E")["locked"] == 0
    assert r.read(STORE, hold_key("SKU-E", "pdd:1", 1), "SKU-E")["status"] == "expired"
    r.advance(31_000)
    assert r.read(STORE, hold_key("SKU-E", "pdd:1", 1), "SKU-E") is None


def test_a_shipment_after_cancel_still_takes_the_units_off_the_shelf() -> None:
    r = runner()
    receipt(r, "SKU-S", 5)
    r.send([command("RESERVE", "own:9", "SKU-S", qty=2), command("COMMIT", "own:9", "SKU-S", qty=2)])
    r.send([command("RELEASE", "own:9", "SKU-S", qty=2)])
    r.send([command("SHIP", "own:9", "SKU-S", qty=2, warehouse_id="WH-SH")])
    totals = r.read(STORE, sku_key("SKU-S"), "SKU-S")
    assert totals["on_hand"] == {"WH-SH": 3}
    assert totals["locked"] == 0


def test_an_adjustment_document_sent_twice_counts_once() -> None:
    r = runner()
    receipt(r, "SKU-D", 7, doc="GRN-1")
    receipt(r, "SKU-D", 7, doc="GRN-1")
    assert r.read(STORE, sku_key("SKU-D"), "SKU-D")["on_hand"] == {"WH-SH": 7}


def test_bad_adjustments_are_refused_with_a_reason() -> None:
    r = runner()
    receipt(r, "SKU-B", 3, wh="WH-NOWHERE")
    assert [ref.reason for ref in r.refusals] == ["unknown_warehouse"]


def test_a_sku_named_like_a_bucket_is_refused_and_changes_no_record() -> None:
    """Changed on purpose: a receipt for 'SKU-B#1' was booked on the record that is SKU-B's bucket 1 once SKU-B is
    hot: units of one SKU sold as another's."""
    r = runner()
    receipt(r, "SKU-B#1", 3)
    assert [ref.reason for ref in r.refusals] == ["invalid_sku"]
    assert r.read(STORE, sku_key("SKU-B#1"), "SKU-B#1") is None


def test_a_vip_set_aside_remainder_expires_without_cancelling_the_vip_order() -> None:
    r = runner(hold_ttl_s=60, payment_timeout_s=30)
    receipt(r, "SKU-V", 3)
    r.send([command("RESERVE", "tmall:a", "SKU-V", qty=3)])
    ov = {"event_id": "x", "event_time_ms": 0, "override_id": "OV-1", "sku": "SKU-V", "qty": 2,
          "vip_order_id": "tmall:vip", "reason": "key account", "operator": "alice"}
    r.send([("SKU-V", "VipOverride", {**ov, "action": "REQUEST"})], OPS_OVERRIDES.name)
    out = r.send([("SKU-V", "VipOverride", {**ov, "action": "APPROVE", "operator": "bob", "event_id": "y"})],
                 OPS_OVERRIDES.name)
    assert answers(out) == [("tmall:vip", "OFFERED")]  # nothing moves before the VIP order answers
    out = r.send([claim("tmall:vip", "SKU-V", "OV-1")])
    assert answers(out) == []  # nothing free: pledged; tmall:a keeps its hold until the VIP order's line comes
    assert r.read(STORE, hold_key("SKU-V", "tmall:a", 1), "SKU-V")["status"] == "held"
    out = r.send([command("RESERVE", "tmall:vip", "SKU-V", qty=1)])
    assert answers(out) == [("tmall:a", "RELEASED"), ("tmall:vip", "HELD")]
    assert [o.record["reason"] for o in out if o.event_type == "HoldDecided"] == ["vip_override:OV-1"] * 2
    # The override's outcome names the hold its VIP order's line took, and which line took it.
    audited = [o.record for o in out if o.event_type == "OverrideAudited"]
    assert [(a["outcome"], a["released_holds"], a["detail"]) for a in audited] == [
        ("APPLIED", ["tmall:a#1"], "pledged:0 taken_by:tmall:vip#1")]  # fmt: skip
    assert r.read(STORE, override_key("SKU-V", "OV-1"), "SKU-V")["released"] == [["tmall:a", 1, 3]]
    # A replayed approval, or claim, tells the order that lost its hold again.
    for replayed, topic in ((("SKU-V", "VipOverride", {**ov, "action": "APPROVE", "operator": "bob", "event_id": "y"}),
                             OPS_OVERRIDES.name), (claim("tmall:vip", "SKU-V", "OV-1"), HOLD_COMMANDS.name)):
        again = r.send([replayed], topic)
        assert ("tmall:a", "RELEASED") in answers(again)
        assert r.read(STORE, sku_key("SKU-V"), "SKU-V")["locked"] == 2  # nothing released or set aside twice
    expired = r.advance(61_000)
    assert [a for a in answers(expired) if a[0] == "tmall:vip"] == [("tmall:vip", "EXPIRED")]  # line 1 only
    assert r.read(STORE, sku_key("SKU-V"), "SKU-V")["locked"] == 0


def test_an_override_claimed_for_a_mistyped_order_lets_no_hold_go() -> None:
    """Fixed: the claim of an order id no order ever had (the lifecycle claims for an order it has not seen)
    released tmall:a's unpaid hold, and the set-aside expired unused."""
    r = runner(hold_ttl_s=60, payment_timeout_s=30)
    receipt(r, "SKU-T", 3)
    r.send([command("RESERVE", "tmall:a", "SKU-T", qty=2)])
    requested_and_approved(r, "SKU-T", "OV-T", 3, "tmall:vip-typo")
    out = r.send([claim("tmall:vip-typo", "SKU-T", "OV-T")])
    assert answers(out) == []
    assert [o.record["released_holds"] for o in out if o.event_type == "OverrideAudited"] == [[]]
    assert r.read(STORE, hold_key("SKU-T", "tmall:a", 1), "SKU-T")["status"] == "held"
    totals = r.read(STORE, sku_key("SKU-T"), "SKU-T")
    assert (totals["locked"], totals["pledged"], totals["set_asides"]) == (3, 2, 1)


def test_an_adjustment_document_sent_twice_in_one_batch_counts_once() -> None:
    r = runner()
    doc = {
        "event_id": "GRN-2",
        "event_time_ms": r.now_ms,
        "sku": "SKU-D2",
        "warehouse_id": "WH-SH",
        "kind": "RECEIPT",
        "qty": 4,
        "reason": "",
    }
    r.send([("SKU-D2", "StockAdjusted", doc), ("SKU-D2", "StockAdjusted", dict(doc))], STOCK_ADJUSTMENTS.name)
    totals = r.read(STORE, sku_key("SKU-D2"), "SKU-D2")
    assert totals is not None and totals["on_hand"] == {"WH-SH": 4}


def test_an_adjustment_id_is_remembered_for_its_ttl_then_forgotten() -> None:
    r = runner(tombstone_ttl_s=60)
    receipt(r, "SKU-T", 5, doc="GRN-3")
    r.advance(59_000)
    receipt(r, "SKU-T", 5, doc="GRN-3")
    totals = r.read(STORE, sku_key("SKU-T"), "SKU-T")
    assert totals is not None and totals["on_hand"] == {"WH-SH": 5}
    # Purged after its TTL: the SKU's state is bounded by the TTL, not by its history, and the same
    # document sent again after that counts again.
    r.advance(2_000)
    receipt(r, "SKU-T", 5, doc="GRN-3")
    totals = r.read(STORE, sku_key("SKU-T"), "SKU-T")
    assert totals is not None and totals["on_hand"] == {"WH-SH": 10}


def test_an_adjustment_dated_before_what_the_pool_remembers_is_refused_not_counted_again() -> None:
    """Changed on purpose: a receipt the WMS sent again after its id was forgotten (intake takes events up to
    30 days old, the pool remembered ids for 7) was counted a second time."""
    r = runner(tombstone_ttl_s=60)
    receipt(r, "SKU-T2", 5, doc="GRN-4")
    dated = r.now_ms
    r.advance(61_000)
    r.send([("SKU-T2", "StockAdjusted", {"event_id": "GRN-4", "event_time_ms": dated, "sku": "SKU-T2",
                                          "warehouse_id": "WH-SH", "kind": "RECEIPT", "qty": 5, "reason": ""})],
           STOCK_ADJUSTMENTS.name)  # fmt: skip
    assert [x.reason for x in r.refusals] == [Reason.ADJUSTMENT_TOO_OLD]
    assert r.read(STORE, sku_key("SKU-T2"), "SKU-T2")["on_hand"] == {"WH-SH": 5}


def test_an_override_is_kept_as_long_as_an_adjustments_id_and_then_goes() -> None:
    """Changed on purpose: override records were never purged, so they piled up for good; one is now kept
    for STOCKFLOW_TOMBSTONE_TTL_S after its last change (an approval seen again still answers), then goes."""
    r = runner(tombstone_ttl_s=3_600)
    receipt(r, "SKU-O", 3)
    r.send([command("RESERVE", "tmall:a", "SKU-O", qty=3)])
    ov = {"event_id": "x", "event_time_ms": 0, "override_id": "OV-9", "sku": "SKU-O", "qty": 1,
          "vip_order_id": "tmall:vip", "reason": "key account", "operator": "alice"}  # fmt: skip
    r.send([("SKU-O", "VipOverride", {**ov, "action": "REQUEST"})], OPS_OVERRIDES.name)
    r.send([("SKU-O", "VipOverride", {**ov, "action": "APPROVE", "operator": "bob", "event_id": "y"})],
           OPS_OVERRIDES.name)  # fmt: skip
    assert r.read(STORE, override_key("SKU-O", "OV-9"), "SKU-O") is not None
    r.advance(3_000_000)
    assert r.read(STORE, override_key("SKU-O", "OV-9"), "SKU-O") is not None
    r.advance(700_000)
    assert r.read(STORE, override_key("SKU-O", "OV-9"), "SKU-O") is None


def test_a_count_older_than_the_one_in_force_is_refused_with_its_reason() -> None:
    r = runner()
    receipt(r, "S1", 10)

    def count(doc: str, qty: int, taken_ms: int) -> None:
        record = {"event_id": doc, "event_time_ms": taken_ms, "sku": "S1", "warehouse_id": "WH-SH", "kind": "COUNT",
                  "qty": qty, "reason": ""}  # fmt: skip
        r.send([("S1", "StockAdjusted", record)], STOCK_ADJUSTMENTS.name)

    r.advance(60_000)
    count("count-2", 8, r.now_ms - 1_000)
    count("count-1", 9, r.now_ms - 30_000)  # taken earlier, arriving later: older news
    assert [x.reason for x in r.refusals] == ["count_superseded"]
    assert r.read(STORE, sku_key("S1"), "S1")["on_hand"] == {"WH-SH": 8}


def test_a_breach_mended_and_broken_again_in_one_batch_raises_three_alerts_of_three_ids() -> None:
    """Failed before: a raise and its clearing in one batch shared an id (kind, SKU, the batch's time), and the
    notifier and the dashboards keep one of each id: the chat showed RED and never its clearing, or "cleared" as
    its last word while the breach stood."""
    r = runner()
    receipt(r, "SKU-B", 2)

    def correction(n: int, qty: int) -> tuple[str, str, dict[str, Any]]:
        return ("SKU-B", "StockAdjusted", {"event_id": f"fix-{n}", "event_time_ms": r.now_ms, "sku": "SKU-B",
                                           "warehouse_id": "WH-SH", "kind": "CORRECTION", "qty": qty, "reason": ""})

    out = r.send([correction(1, -5), correction(2, 5), correction(3, -5)], STOCK_ADJUSTMENTS.name)
    breaches = [o.record for o in out if o.event_type == "Alert" and o.record["kind"] == "invariant_breach"]
    assert [a["cleared"] for a in breaches] == [False, True, False]
    assert len({a["event_id"] for a in breaches}) == 3


def _as_an_older_version_stored_it(r: LocalRunner, sku: str, allocated: dict[str, int]) -> None:
    """Rewrite the SKU's stored totals as a version that left routed presale lines out of ``allocated`` did."""
    proc = r.processors[0]
    serde = next(s.serde for s in proc.stores if s.name == STORE)
    data = r.read(STORE, sku_key(sku), sku)
    del data["presale_allocated"]
    data["allocated"] = allocated
    store = next(store for (name, _), store in r.stores.items() if name == STORE and store.get(sku_key(sku)))
    store.apply({sku_key(sku): serde.dumps(data)}, -1)


def test_a_record_stored_before_presale_lines_counted_in_allocated_counts_them_when_next_read() -> None:
    """A presale line allocated to WH-SH under a version that left it out of WH-SH's allocated units: the first
    event after the upgrade adds it (from the SKU's line records), so a regular line is refused WH-SH's units
    and the presale line's shipment later takes off only what it added."""
    r = runner()
    receipt(r, "SKU-UP", 5, "WH-SH")
    receipt(r, "SKU-UP", 5, "WH-GZ")
    r.send([("SKU-UP", "StockAdjusted", {"event_id": "cap-UP", "event_time_ms": r.now_ms, "sku": "SKU-UP",
                                         "warehouse_id": "", "kind": "PRESALE_CAP", "qty": 5, "reason": ""})],
           STOCK_ADJUSTMENTS.name)  # fmt: skip
    r.send([command("RESERVE", "tmall:pre", "SKU-UP", qty=5, presale=True),
            command("COMMIT", "tmall:pre", "SKU-UP", qty=5, presale=True, warehouse_id="WH-SH")])
    _as_an_older_version_stored_it(r, "SKU-UP", allocated={})
    r.send([command("RESERVE", "tmall:reg", "SKU-UP", qty=5),
            command("COMMIT", "tmall:reg", "SKU-UP", qty=5, warehouse_id="WH-SH")])
    assert [(o.record["order_id"], o.record["reason"]) for o in r.outputs[-1:]] == [("tmall:reg", "warehouse_short")]
    totals = r.read(STORE, sku_key("SKU-UP"), "SKU-UP")
    assert (totals["allocated"], totals["presale_allocated"]) == ({"WH-SH": 5}, True)
    r.send([command("SHIP", "tmall:pre", "SKU-UP", qty=5, presale=True, warehouse_id="WH-SH")])
    assert r.read(STORE, sku_key("SKU-UP"), "SKU-UP")["allocated"] == {}


def test_a_warehouse_an_older_version_overbooked_with_a_presale_line_is_alerted_on_the_upgrade() -> None:
    """The old rule's damage, found: a presale line and a regular one both sent WH-SH's 5 units. Counted on the
    first event after the upgrade, the overbooking is an invariant breach, alerted (not taken as how it was)."""
    r = runner()
    receipt(r, "SKU-OB", 5, "WH-SH")
    r.send([("SKU-OB", "StockAdjusted", {"event_id": "cap-OB", "event_time_ms": r.now_ms, "sku": "SKU-OB",
                                         "warehouse_id": "", "kind": "PRESALE_CAP", "qty": 5, "reason": ""})],
           STOCK_ADJUSTMENTS.name)  # fmt: skip
    r.send([command("RESERVE", "tmall:pre", "SKU-OB", qty=5, presale=True),
            command("COMMIT", "tmall:pre", "SKU-OB", qty=5, presale=True, warehouse_id="WH-SH")])
    # As the old rule left it: a regular line allocated WH-SH's 5 too (its hold taken before the presale one).
    proc = r.processors[0]
    serde = next(s.serde for s in proc.stores if s.name == STORE)
    store = next(store for (name, _), store in r.stores.items() if name == STORE and store.get(sku_key("SKU-OB")))
    reg = {"order_id": "tmall:reg", "line_no": 1, "qty": 5, "channel": "tmall", "presale": False, "status": "sold",
           "reason": "", "expires_at_ms": 0, "updated_ms": 1, "warehouse_id": "WH-SH"}  # fmt: skip
    store.apply({hold_key("SKU-OB", "tmall:reg", 1): serde.dumps(reg)}, -1)
    _as_an_older_version_stored_it(r, "SKU-OB", allocated={"WH-SH": 5})  # the regular line's only
    raw = serde.loads(store.get(sku_key("SKU-OB")))
    store.apply({sku_key("SKU-OB"): serde.dumps({**raw, "locked": 5, "sold": 5, "open_lines": 2})}, -1)
    out = r.send([command("RESERVE", "tmall:next", "SKU-OB", qty=1)])
    breaches = [o.record for o in out if o.event_type == "Alert" and o.record["kind"] == "invariant_breach"]
    assert [(a["severity"], a["message"]) for a in breaches] == [("RED", "WH-SH: allocated 10 exceeds its on-hand 5")]


def test_a_hot_skus_home_keeps_what_an_override_pledged_for_the_vip_order() -> None:
    """Found in review: the pledge counted on jd:a's hold at the home of a SKU split in buckets; jd:a cancelled, the
    home handed its 10 units out to the buckets, and the VIP order's line (decided at the home, where its set-aside
    is) was refused insufficient_stock with 50 units in stock."""
    r = runner(hold_ttl_s=600, payment_timeout_s=300)
    receipt(r, "H", 10)
    r.send([command("RESERVE", "jd:a", "H", qty=10)])
    r.send([("H", "HotSku", {"event_id": "hot-1", "event_time_ms": r.now_ms, "sku": "H", "buckets": 4, "state": "",
                             "operator": "ops", "reason": "live"})], OPS_OVERRIDES.name)  # fmt: skip
    receipt(r, "H", 40, doc="r2")
    requested_and_approved(r, "H", "OV-H", 3, "own:vip")
    r.send([claim("own:vip", "H", "OV-H")])  # nothing free at the home: all 3 pledged
    r.send([command("RELEASE", "jd:a", "H", qty=10)])
    for _ in range(5):
        r.advance(200)
    out = r.send([command("RESERVE", "own:vip", "H", qty=3)])
    assert answers(out) == [("own:vip", "HELD")]
