"""Pure channel mapping, no broker: a channel's order body onto OrderPlaced, refusals with code and field."""

from __future__ import annotations

import pytest

from agents.intake.mapping import Catalogue, IntakeError, OrderLimits, load_channels
from streams.settings import Settings

CHANNELS = load_channels(None, ("tmall", "jd", "douyin", "pdd", "kuaishou", "own"))
CATALOGUE = Catalogue(("SKU-*",))
LIMITS = OrderLimits.from_settings(Settings())


def tmall_order(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "tid": "T1001", "created": "2026-11-11 00:00:01", "buyer_nick": "b", "payment": "199.80",
        "orders": [{"outer_sku_id": "SKU-1", "num": 2, "price": "99.90"}],
        "receiver_state": "浙江省", "receiver_city": "杭州市", "receiver_district": "西湖区",
        "receiver_address": "文三路 90 号",
    }  # fmt: skip
    body.update(changes)
    return body


def test_a_tmall_order_maps_onto_order_placed() -> None:
    kind, rec = CHANNELS["tmall"].build("order", tmall_order(), CATALOGUE, LIMITS, now_ms=1)
    assert kind == "OrderPlaced" and rec["event_id"] == "placed:tmall:T1001"
    assert rec["amount_fen"] == 19980 and rec["lines"][0]["unit_price_fen"] == 9990
    assert rec["lines"][0]["line_no"] == 1 and rec["address"]["province"] == "浙江省"
    assert rec["event_time_ms"] == 1794326401000  # 2026-11-10 16:00:01 UTC = 00:00:01 on the 11th in China


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"tid": None}, "missing_field", "tid"),
        ({"tid": "  "}, "empty_field", "tid"),
        ({"payment": "-1"}, "invalid_amount", "payment"),
        ({"payment": "1.234"}, "invalid_amount", "payment"),
        ({"orders": []}, "missing_field", "orders"),
        ({"orders": [{"outer_sku_id": "NOPE", "num": 1}]}, "unknown_sku", "orders.0.outer_sku_id"),
        ({"orders": [{"outer_sku_id": "SKU-1", "num": 0}]}, "invalid_qty", "orders.0.num"),
        ({"orders": [{"outer_sku_id": "SKU-1", "num": "two"}]}, "invalid_field_type", "orders.0.num"),
        ({"receiver_state": "火星"}, "address_unplaceable", "receiver_state"),
        ({"receiver_district": ""}, "empty_field", "receiver_district"),
    ],
)
def test_bad_orders_are_refused_with_a_precise_code_and_field(changes: dict, code: str, field: str) -> None:
    with pytest.raises(IntakeError) as err:
        CHANNELS["tmall"].build("order", tmall_order(**changes), CATALOGUE, LIMITS, now_ms=1)
    assert (err.value.reason, err.value.field) == (code, field)


def test_nested_paths_and_fen_channels() -> None:
    body = {"order_id": "D1", "pay_amount": 500, "sku_order_list": [{"out_sku_id": "SKU-2", "item_num": 1,
            "origin_amount": 500}], "post_addr": {"province": {"name": "广东"}, "city": {"name": "深圳"},
            "town": {"name": "南山区"}, "detail": "x"}}  # fmt: skip
    _, rec = CHANNELS["douyin"].build("order", body, CATALOGUE, LIMITS, now_ms=7)
    assert rec["amount_fen"] == 500 and rec["address"]["city"] == "深圳" and rec["event_time_ms"] == 7


def test_order_limits_are_the_settings() -> None:
    limits = OrderLimits.from_settings(Settings(max_order_lines=2, max_line_qty=5))
    assert (limits.max_lines, limits.max_line_qty) == (2, 5)
    two_lines = [{"outer_sku_id": "SKU-1", "num": 5}, {"outer_sku_id": "SKU-2", "num": 1}]
    _, rec = CHANNELS["tmall"].build("order", tmall_order(orders=two_lines), CATALOGUE, limits, now_ms=1)
    assert [ln["qty"] for ln in rec["lines"]] == [5, 1]
    refusals = [
        (tmall_order(orders=[{"outer_sku_id": "SKU-1", "num": 6}]), "invalid_qty", "orders.0.num"),
        (tmall_order(orders=[*two_lines, {"outer_sku_id": "SKU-3", "num": 1}]), "invalid_lines", "orders"),
    ]
    for body, code, field in refusals:
        with pytest.raises(IntakeError) as err:
            CHANNELS["tmall"].build("order", body, CATALOGUE, limits, now_ms=1)
        assert (err.value.reason, err.value.field) == (code, field)
