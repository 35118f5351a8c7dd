"""A level's version moves on with every figure sent; a VIP order's line takes its set-aside whatever its size;
an override a hot SKU's home cannot cover says why."""

from __future__ import annotations

from typing import Any

from agents.inventory.hold_stock import STORE, sku_key
from streams.contract.reasons import Reason
from streams.contract.topics import HOLD_COMMANDS, OPS_OVERRIDES
from streams.engine.local import LocalRunner
from tests.unit.inventory.test_hold_stock import claim, command, receipt, runner


def decided(outputs: list[Any]) -> list[tuple[str, str, str]]:
    return [(o.record["order_id"], o.record["outcome"], o.record["reason"]) for o in outputs
            if o.event_type == "HoldDecided"]  # fmt: skip


def levels(outputs: list[Any], sku: str) -> list[dict[str, Any]]:
    return [o.record for o in outputs if o.event_type == "StockLevel" and o.record["sku"] == sku]


def override(r: LocalRunner, sku: str, override_id: str, qty: int, vip_order: str) -> list[Any]:
    ov = {"event_id": f"{override_id}-req", "event_time_ms": 0, "override_id": override_id, "sku": sku, "qty": qty,
          "vip_order_id": vip_order, "reason": "key account", "operator": "alice"}  # fmt: skip
    r.send([(sku, "VipOverride", {**ov, "action": "REQUEST"})], OPS_OVERRIDES.name)
    approval = {**ov, "action": "APPROVE", "operator": "bob", "event_id": f"{override_id}-ok"}
    out = r.send([(sku, "VipOverride", approval)], OPS_OVERRIDES.name)
    if ("OFFERED", "") not in audited(out):
        return out
    return out + r.send([claim(vip_order, sku, override_id)], HOLD_COMMANDS.name)


def audited(outputs: list[Any]) -> list[tuple[str, str]]:
    return [(o.record["outcome"], o.record["detail"]) for o in outputs if o.event_type == "OverrideAudited"]


def test_a_change_in_the_millisecond_its_level_went_out_is_sent_under_a_newer_version() -> None:
    # Two batches may read one clock millisecond. The first sends the level; the second frees the unit. Sent
    # under the first's version, channels (which take a figure only if its version is newer) would drop it.
    r = runner()
    receipt(r, "SKU-V1", 1)
    r.advance(1_000)
    r.advance(1_000)
    r.send([command("RESERVE", "jd:1", "SKU-V1")], HOLD_COMMANDS.name)
    (first,) = levels(r.advance(0), "SKU-V1")
    assert first["available"] == 0
    r.send([command("RELEASE", "jd:1", "SKU-V1")], HOLD_COMMANDS.name)
    (second,) = levels(r.advance(200), "SKU-V1")
    assert second["available"] == 1 and second["newest_change_ms"] > first["newest_change_ms"]
    assert second["event_id"] != first["event_id"]
    assert r.read(STORE, sku_key("SKU-V1"), "SKU-V1")["newest_change_ms"] == second["newest_change_ms"]


def test_a_vip_line_larger_than_its_set_aside_takes_it_and_the_rest_from_free_stock() -> None:
    r = runner()
    receipt(r, "SKU-VIP", 10)
    r.send([command("RESERVE", "jd:other", "SKU-VIP", qty=6)], HOLD_COMMANDS.name)
    assert audited(override(r, "SKU-VIP", "OV-1", 2, "tmall:vip")) == [("OFFERED", ""), ("APPLIED", "")]
    out = r.send([command("RESERVE", "tmall:vip", "SKU-VIP", qty=3)], HOLD_COMMANDS.name)
    assert decided(out) == [("tmall:vip", "HELD", "vip_override:OV-1")]
    totals = r.read(STORE, sku_key("SKU-VIP"), "SKU-VIP")
    assert totals["locked"] == 9 and totals["set_asides"] == 0  # 6 + 3: nothing locked for no order line
    out = r.send([command("RESERVE", "jd:late", "SKU-VIP", qty=1)], HOLD_COMMANDS.name)
    assert decided(out) == [("jd:late", "HELD", "")]


def test_a_vip_line_beyond_its_set_aside_and_free_stock_is_refused_and_the_set_aside_stays() -> None:
    r = runner()
    receipt(r, "SKU-VIP3", 4)
    r.send([command("RESERVE", "jd:other", "SKU-VIP3", qty=2)], HOLD_COMMANDS.name)
    override(r, "SKU-VIP3", "OV-3", 1, "tmall:vip")  # 1 free left
    out = r.send([command("RESERVE", "tmall:vip", "SKU-VIP3", qty=3)], HOLD_COMMANDS.name)
    assert decided(out) == [("tmall:vip", "REFUSED", Reason.INSUFFICIENT_STOCK)]
    out = r.send([command("RESERVE", "tmall:vip", "SKU-VIP3", qty=2, line_no=2)], HOLD_COMMANDS.name)
    assert decided(out) == [("tmall:vip", "HELD", "vip_override:OV-3")]
    assert r.read(STORE, sku_key("SKU-VIP3"), "SKU-VIP3")["locked"] == 4


def test_an_override_a_hot_skus_home_cannot_cover_says_the_sku_is_hot() -> None:
    r = runner()
    receipt(r, "SKU-HOT", 100)
    hot = {"event_id": "hot-1", "event_time_ms": r.now_ms, "sku": "SKU-HOT", "buckets": 4, "state": "",
           "operator": "ops", "reason": "live stream"}  # fmt: skip
    r.send([("SKU-HOT", "HotSku", hot)], OPS_OVERRIDES.name)
    for _ in range(5):
        r.advance(200)  # the units go out to the buckets
    assert audited(override(r, "SKU-HOT", "OV-H", 2, "tmall:vip")) == [("REFUSED", Reason.OVERRIDE_ON_HOT_SKU)]
