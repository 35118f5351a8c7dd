"""Pure channel mapping, no broker: a channel's bodies onto events through the models generated from
its mapping; refusals with code and field path; what a repeat is."""

from __future__ import annotations

import re

import pytest

from agents.intake.mapping import Catalogue, IntakeError, OrderLimits, load_channels, wms_map
from streams.settings import Settings

CHANNELS = load_channels(None, ("tmall", "jd", "douyin", "pdd", "kuaishou", "own"))
CATALOGUE = Catalogue(("SKU-*",))
LIMITS = OrderLimits.from_settings(Settings())
NOW = 1794326460000  # 2026-11-11 00:01:00 in China


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
    mapped = CHANNELS["tmall"].build("order", tmall_order(), CATALOGUE, LIMITS, now_ms=NOW)
    rec = mapped.record
    assert (mapped.event_type, mapped.topic, mapped.key) == ("OrderPlaced", "order.events", "tmall:T1001")
    assert rec["event_id"] == "placed:tmall:T1001"
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
        CHANNELS["tmall"].build("order", tmall_order(**changes), CATALOGUE, LIMITS, now_ms=NOW)
    assert (err.value.reason, err.value.field) == (code, field)


def test_nested_paths_and_fen_channels() -> None:
    body = {"order_id": "D1", "pay_amount": 500, "sku_order_list": [{"out_sku_id": "SKU-2", "item_num": 1,
            "origin_amount": 500}], "post_addr": {"province": {"name": "广东"}, "city": {"name": "深圳"},
            "town": {"name": "南山区"}, "detail": "x"}}  # fmt: skip
    rec = CHANNELS["douyin"].build("order", body, CATALOGUE, LIMITS, now_ms=NOW).record
    assert rec["amount_fen"] == 500 and rec["address"]["city"] == "深圳" and rec["event_time_ms"] == NOW


def test_order_limits_are_the_settings() -> None:
    limits = OrderLimits.from_settings(Settings(max_order_lines=2, max_line_qty=5))
    assert (limits.max_lines, limits.max_line_qty) == (2, 5)
    two_lines = [{"outer_sku_id": "SKU-1", "num": 5}, {"outer_sku_id": "SKU-2", "num": 1}]
    rec = CHANNELS["tmall"].build("order", tmall_order(orders=two_lines), CATALOGUE, limits, now_ms=NOW).record
    assert [ln["qty"] for ln in rec["lines"]] == [5, 1]
    refusals = [
        (tmall_order(orders=[{"outer_sku_id": "SKU-1", "num": 6}]), "invalid_qty", "orders.0.num"),
        (tmall_order(orders=[*two_lines, {"outer_sku_id": "SKU-3", "num": 1}]), "invalid_lines", "orders"),
    ]
    for body, code, field in refusals:
        with pytest.raises(IntakeError) as err:
            CHANNELS["tmall"].build("order", body, CATALOGUE, limits, now_ms=NOW)
        assert (err.value.reason, err.value.field) == (code, field)


# ---- the generated models: hostile values, lenient-but-decided types ----------------------------


def own_order(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "order_id": "O-1", "amount_fen": 1000, "placed_at_ms": NOW - 5000, "sent_at_ms": NOW - 1000,
        "lines": [{"line_no": 1, "sku": "SKU-1", "qty": 1, "unit_price_fen": 1000}],
        "address": {"province": "广东省", "city": "深圳市", "district": "南山区"},
    }  # fmt: skip
    body.update(changes)
    return body


def build_own(kind: str, body: object, limits: OrderLimits = LIMITS) -> dict:
    return CHANNELS["own"].build(kind, body, CATALOGUE, limits, now_ms=NOW).record


def refusal_of(channel: str, kind: str, body: object) -> tuple[str, str]:
    with pytest.raises(IntakeError) as err:
        CHANNELS[channel].build(kind, body, CATALOGUE, LIMITS, now_ms=NOW)
    assert 400 <= err.value.status < 500 and err.value.detail
    return err.value.reason, err.value.field


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"sent_at_ms": "yesterday"}, "invalid_field_type", "sent_at_ms"),
        ({"amount_fen": "NaN"}, "invalid_amount", "amount_fen"),
        ({"amount_fen": "Infinity"}, "invalid_amount", "amount_fen"),
        ({"amount_fen": True}, "invalid_amount", "amount_fen"),
        ({"amount_fen": "12.5"}, "invalid_amount", "amount_fen"),  # a fen channel: whole fen
        ({"lines": [{"sku": "SKU-1", "qty": "²"}]}, "invalid_field_type", "lines.0.qty"),
        ({"lines": [{"sku": "SKU-1", "qty": "٣"}]}, "invalid_field_type", "lines.0.qty"),
        ({"lines": [{"sku": "SKU-1", "qty": True}]}, "invalid_field_type", "lines.0.qty"),
        ({"lines": [{"sku": "SKU-1", "qty": 2.0}]}, "invalid_field_type", "lines.0.qty"),
        ({"lines": [{"sku": "SKU-1", "qty": "+2"}]}, "invalid_field_type", "lines.0.qty"),
        ({"lines": [{"sku": "SKU-1", "qty": "9" * 400}]}, "invalid_field_type", "lines.0.qty"),
        ({"lines": [{"sku": "SKU-1", "qty": 10**30}]}, "invalid_qty", "lines.0.qty"),
        ({"lines": [{"sku": "SKU-" + "x" * 61, "qty": 1}]}, "invalid_sku", "lines.0.sku"),
        ({"lines": [{"sku": "SKU- 1", "qty": 1}]}, "invalid_sku", "lines.0.sku"),
        ({"lines": [{"sku": "SKU-\u00001", "qty": 1}]}, "invalid_sku", "lines.0.sku"),
        ({"lines": [{"sku": "SKU-1#2", "qty": 1}]}, "invalid_sku", "lines.0.sku"),
        ({"lines": [{"sku": ["SKU-1"], "qty": 1}]}, "invalid_field_type", "lines.0.sku"),
        ({"lines": [{"line_no": 0, "sku": "SKU-1", "qty": 1}]}, "invalid_lines", "lines.0.line_no"),
        ({"lines": [{"line_no": 100_000, "sku": "SKU-1", "qty": 1}]}, "invalid_lines", "lines.0.line_no"),
        ({"lines": [{"line_no": 2, "sku": "SKU-1", "qty": 1}, {"line_no": "2", "sku": "SKU-2", "qty": 1}]},
         "invalid_lines", "lines.1.line_no"),
        ({"lines": ["SKU-1"]}, "invalid_field_type", "lines.0"),
        ({"lines": {"sku": "SKU-1"}}, "invalid_field_type", "lines"),
        ({"lines": None}, "missing_field", "lines"),
        ({"address": None}, "missing_field", "address"),
        ({"address": "广东省深圳市"}, "invalid_field_type", "address"),
        ({"address": {"province": "广东省", "city": "深圳市"}}, "missing_field", "address.district"),
        ({"order_id": "x" * 129}, "field_too_long", "order_id"),
        ({"order_id": {"id": 1}}, "invalid_field_type", "order_id"),
        ({"presale": "maybe"}, "invalid_field_type", "presale"),
        ({"placed_at_ms": NOW - 31 * 86_400_000}, "time_out_of_range", "placed_at_ms"),
        ({"placed_at_ms": NOW + 3_600_000}, "time_out_of_range", "placed_at_ms"),
        ({"placed_at_ms": -1}, "time_out_of_range", "placed_at_ms"),
        ({"placed_at_ms": "9999-12-31 23:59:59"}, "time_out_of_range", "placed_at_ms"),
        ({"placed_at_ms": 1e300}, "invalid_field_type", "placed_at_ms"),
        ({"sent_at_ms": NOW + 3_600_000}, "time_out_of_range", "sent_at_ms"),
    ],
)  # fmt: skip
def test_hostile_values_are_refused_with_their_field_path(changes: dict, code: str, field: str) -> None:
    assert refusal_of("own", "order", own_order(**changes)) == (code, field)


def test_flags_and_numbers_read_as_the_intake_documents() -> None:
    rec = build_own("order", own_order(presale="false", vip="0", lines=[{"sku": "SKU-1", "qty": "2", "line_no": "1"}]))
    assert (rec["presale"], rec["vip"]) == (False, False)
    assert (rec["lines"][0]["qty"], rec["lines"][0]["line_no"]) == (2, 1)
    assert build_own("order", own_order(presale="true", vip=1))["presale"] is True
    assert build_own("order", own_order(presale=None))["presale"] is False  # null: absent
    assert build_own("order", own_order(customer_id=12345))["customer_id"] == "12345"  # ids as numbers


def test_times_in_every_accepted_form() -> None:
    expected = NOW - 60_000
    for given in (expected, expected // 1000, str(expected), "2026-11-11 00:00:00", "2026-11-10T16:00:00Z",
                  "2026-11-11T00:00:00+08:00"):  # fmt: skip
        assert build_own("order", own_order(placed_at_ms=given))["event_time_ms"] == expected, given


def test_lines_without_numbers_are_numbered_by_position() -> None:
    lines = [{"sku": "SKU-1", "qty": 1}, {"sku": "SKU-2", "qty": 3}]
    numbered = build_own("order", own_order(lines=lines))["lines"]
    assert [(ln["line_no"], ln["qty"]) for ln in numbered] == [(1, 1), (2, 3)]


def test_not_json_and_not_an_object() -> None:
    with pytest.raises(IntakeError) as err:
        CHANNELS["own"].build("order", b'{"order_id": "x", ', CATALOGUE, LIMITS, now_ms=NOW)
    assert (err.value.reason, err.value.status) == ("malformed_json", 400)
    assert refusal_of("own", "order", [own_order()]) == ("not_an_object", "")
    assert refusal_of("own", "order", "order") == ("not_an_object", "")


def test_a_null_parent_object_is_a_missing_field() -> None:
    body = {"orderId": "J1", "orderPayment": "10.00", "consigneeInfo": None,
            "itemInfoList": [{"outerSkuId": "SKU-1", "itemTotal": "1"}]}  # fmt: skip
    assert refusal_of("jd", "order", body) == ("missing_field", "consigneeInfo")
    body["consigneeInfo"] = {"province": "北京", "city": "北京", "county": "朝阳区"}
    rec = CHANNELS["jd"].build("order", body, CATALOGUE, LIMITS, now_ms=NOW).record
    assert rec["lines"][0]["qty"] == 1 and rec["amount_fen"] == 1000  # JD sends numbers as strings


def test_a_balance_payment_has_an_event_id_of_its_own() -> None:
    deposit = build_own("payment", {"order_id": "P-1", "payment_id": "d1", "amount_fen": 100})
    balance = build_own("payment", {"order_id": "P-1", "payment_id": "b1", "amount_fen": 900, "balance": "true"})
    assert deposit["event_id"] == "paid:own:P-1" and not deposit["balance"]
    assert balance["event_id"] == "paid:own:P-1:balance" and balance["balance"]


def test_the_digest_tells_a_repeat_from_a_change() -> None:
    def mapped(body: dict, now_ms: int = NOW) -> tuple[str, bytes]:
        m = CHANNELS["own"].build("order", body, CATALOGUE, LIMITS, now_ms=now_ms)
        return m.identity, m.digest

    first = mapped(own_order())
    assert mapped(own_order(sent_at_ms=NOW - 10)) == first  # re-sent later: the same notification
    changed = mapped(own_order(lines=[{"line_no": 1, "sku": "SKU-1", "qty": 2, "unit_price_fen": 1000}]))
    assert changed[0] == first[0] and changed[1] != first[1]
    assert mapped(own_order(placed_at_ms=NOW - 4000))[1] != first[1]  # the channel's own time is content
    untimed = own_order()
    del untimed["placed_at_ms"]
    assert mapped(untimed, NOW) == mapped(untimed, NOW + 5000)  # stamped on arrival: not content


def test_the_wms_names_the_channel_in_the_body() -> None:
    wms = wms_map(CHANNELS)
    body = {"channel": "own", "channel_order_id": "W-1", "warehouse_id": "WH-SH", "tracking_no": 12345}
    mapped = wms.build("shipment", body, CATALOGUE, LIMITS, now_ms=NOW)
    assert (mapped.key, mapped.record["tracking_no"]) == ("own:W-1", "12345")
    for channel, code in (("taobao-global", "unknown_channel"), (None, "missing_field"), (7, "unknown_channel")):
        with pytest.raises(IntakeError) as err:
            wms.build("shipment", {**body, "channel": channel}, CATALOGUE, LIMITS, now_ms=NOW)
        assert (err.value.reason, err.value.field) == (code, "channel")


@pytest.mark.parametrize(
    ("toml", "complaint"),
    [
        ('[own.order]\norder_id = "id"\n', "needs paths for"),
        ('[own.cancel]\nchannel_order_id = "id"\nreasn = "r"\n', "does not read: ['reasn']"),
        ('[own.cancel]\nchannel_order_id = "a.b"\nreason = "a"\n', "is also another field's path"),
        ('[own.cancel]\nchannel_order_id = "a"\nreason = "a.b"\n', "runs through another field"),
        ('[own.cancel]\nchannel_order_id = "items.0.id"\n', "object keys separated by dots"),
        ('[own]\namount_unit = "jiao"\n', "amount_unit"),
        ('[own.cancel]\namount_unit = "li"\nchannel_order_id = "id"\n', "own.cancel.amount_unit"),
        (
            '[own.refund]\nchannel_order_id = "o"\nchannel_refund_id = "r"\nreturn_goods = "g"\namount = "a"\n'
            'lines = "l"\nline_qty = "q"\n',
            "needs paths for ['line_no']",
        ),
        ('[own]\ndisplay_nam = "x"\n', "unknown settings"),
        ("[taobao]\n", "not in STOCKFLOW_CHANNELS"),
    ],
)
def test_a_mapping_that_cannot_work_is_a_start_up_error(tmp_path, toml: str, complaint: str) -> None:
    path = tmp_path / "channels.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(complaint)):
        load_channels(path, ("own",))


# ---- refunds ---------------------------------------------------------------------------------------


def own_refund(**changes: object) -> dict[str, object]:
    return {"order_id": "O-1", "refund_id": "RF-1", "return_goods": True, "amount_fen": 990,
            "requested_at_ms": NOW - 1000, **changes}  # fmt: skip


def test_a_refund_request_goes_to_refund_events_keyed_by_order() -> None:
    mapped = CHANNELS["own"].build("refund", own_refund(lines=[{"line_no": 2, "qty": "1"}]), CATALOGUE, LIMITS, NOW)
    assert (mapped.topic, mapped.key, mapped.event_type) == ("refund.events", "own:O-1", "RefundRequested")
    rec = mapped.record
    assert (rec["event_id"], rec["kind"], rec["amount_fen"]) == ("refund:own:RF-1", "RETURN_AND_REFUND", 990)
    assert rec["lines"] == [{"line_no": 2, "sku": "", "qty": 1}]
    assert build_own("refund", own_refund(return_goods="false"))["kind"] == "REFUND_ONLY"
    assert build_own("refund", own_refund())["lines"] == []  # no lines: the whole order


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"amount_fen": 0}, "invalid_amount", "amount_fen"),
        ({"return_goods": None}, "missing_field", "return_goods"),
        ({"refund_id": ""}, "empty_field", "refund_id"),
        ({"lines": [{"qty": 1}]}, "missing_field", "lines.0.line_no"),
        ({"lines": [{"line_no": 1, "qty": 1}, {"line_no": 1, "qty": 2}]}, "invalid_lines", "lines.1.line_no"),
    ],
)
def test_bad_refund_requests(changes: dict, code: str, field: str) -> None:
    assert refusal_of("own", "refund", own_refund(**changes)) == (code, field)


def test_a_kind_may_count_money_in_its_own_unit() -> None:
    body = {"order_sn": "P1", "after_sales_id": "A1", "need_return": 0, "refund_amount": 1234}
    assert CHANNELS["pdd"].build("refund", body, CATALOGUE, LIMITS, NOW).record["amount_fen"] == 1234  # fen
    order = {"order_sn": "P1", "pay_amount": "12.34", "item_list": [{"outer_id": "SKU-1", "goods_count": 1}],
             "province": "四川省", "city": "成都市", "town": "武侯区"}  # fmt: skip
    assert CHANNELS["pdd"].build("order", order, CATALOGUE, LIMITS, NOW).record["amount_fen"] == 1234  # yuan
