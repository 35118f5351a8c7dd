"""Pure rules of issue 4, no broker: geo placement, routing scores, channel mapping, lifecycle and SLA."""

from __future__ import annotations

import pytest

from agents.intake.mapping import Catalogue, IntakeError, load_channels
from agents.orders.processor import rules as flow
from agents.routing import geo
from agents.routing import scoring as routing
from agents.routing.scoring import Line, OnTimeRate, Site

HANGZHOU = geo.locate("浙江省", "杭州市")

# The hand-computed example (also run through the pipeline in test_lifecycle.py). Customer in
# Hangzhou; great-circle distances from the city centroids: Shanghai 164.9 km, Nanjing 236.9 km,
# Guangzhou 1048.1 km (the farthest, so distance factor = 1 - d / 1048.1). Two units ordered.
#   WH-SH  distance 1-164.9/1048.1 = 0.8427  sufficiency (2-2)/2 = 0     on_time 0.70  cost 1-6.5/6.5 = 0
#          score 0.4*0.8427 + 0.3*0 + 0.2*0.70 + 0.1*0 = 0.4771
#   WH-NJ  distance 1-236.9/1048.1 = 0.7740  sufficiency 38/40 = 0.95  on_time 0.96  cost 1-5.0/6.5 = 0.2308
#          score 0.3096 + 0.2850 + 0.1920 + 0.0231 = 0.8097
#   WH-GZ  distance 0                        sufficiency 198/200 = 0.99 on_time 0.99  cost 1-4.0/6.5 = 0.3846
#          score 0 + 0.2970 + 0.1980 + 0.03846 = 0.53346
# Shanghai is nearest but nearly out of stock and often late: Nanjing wins.
EXAMPLE_SITES = {
    "WH-SH": Site("WH-SH", geo.locate("上海", "上海"), 6.5),  # type: ignore[arg-type]
    "WH-NJ": Site("WH-NJ", geo.locate("江苏", "南京"), 5.0),  # type: ignore[arg-type]
    "WH-GZ": Site("WH-GZ", geo.locate("广东", "广州"), 4.0),  # type: ignore[arg-type]
}
EXAMPLE_FREE = {("WH-SH", "SKU-R"): 2, ("WH-NJ", "SKU-R"): 40, ("WH-GZ", "SKU-R"): 200}
EXAMPLE_ON_TIME = {"WH-SH": 0.70, "WH-NJ": 0.96, "WH-GZ": 0.99}
EXAMPLE_SCORES = {"WH-SH": 0.477, "WH-NJ": 0.810, "WH-GZ": 0.533}


def test_addresses_are_placed_at_city_then_province_with_or_without_suffixes() -> None:
    assert HANGZHOU is not None and HANGZHOU.precision == "city"
    assert geo.locate("浙江", "杭州") == HANGZHOU
    assert geo.locate("浙江省", "丽水市").precision == "province"  # type: ignore[union-attr]
    assert geo.locate("广西壮族自治区", "南宁市").precision == "city"  # type: ignore[union-attr]
    assert geo.locate("火星", "奥林匹斯") is None
    assert geo.distance_km(HANGZHOU, geo.locate("上海", "上海")) == pytest.approx(164.9, abs=0.5)  # type: ignore[arg-type]


def test_hand_computed_example_nearest_warehouse_loses_on_stock_and_on_time_rate() -> None:
    decision = routing.route(EXAMPLE_SITES, HANGZHOU, [Line(1, "SKU-R", 2)], EXAMPLE_FREE, EXAMPLE_ON_TIME,
                             routing.DEFAULT_WEIGHTS)  # type: ignore[arg-type]  # fmt: skip
    assert decision is not None and decision.assignments == {"WH-NJ": [1]} and not decision.split
    scores = {c["warehouse_id"]: round(c["score"], 3) for c in decision.candidates}
    assert scores == EXAMPLE_SCORES
    sh = next(c for c in decision.candidates if c["warehouse_id"] == "WH-SH")
    assert (round(sh["distance"], 3), sh["sufficiency"], sh["on_time"], sh["cost"]) == (0.843, 0.0, 0.7, 0.0)


def test_split_uses_the_fewest_warehouses_and_never_splits_a_line() -> None:
    free = {("WH-SH", "A"): 5, ("WH-GZ", "B"): 5, ("WH-NJ", "A"): 1, ("WH-NJ", "B"): 1}
    lines = [Line(1, "A", 2), Line(2, "B", 3)]
    decision = routing.route(EXAMPLE_SITES, HANGZHOU, lines, free, EXAMPLE_ON_TIME, routing.DEFAULT_WEIGHTS)  # type: ignore[arg-type]
    assert decision is not None and decision.split
    assert decision.assignments == {"WH-SH": [1], "WH-GZ": [2]}
    # Nothing anywhere can take line 2's three units: no decision.
    assert routing.route(EXAMPLE_SITES, HANGZHOU, [Line(1, "B", 9)], free, EXAMPLE_ON_TIME,
                         routing.DEFAULT_WEIGHTS) is None  # type: ignore[arg-type]  # fmt: skip


def test_on_time_rate_starts_at_its_prior_and_follows_shipments() -> None:
    rate = OnTimeRate(prior=0.9, prior_weight=10, window=4)
    assert rate.rate() == pytest.approx(0.9)
    for _ in range(10):
        rate.add(False)
    assert rate.rate() == pytest.approx(9 / 14)  # the window keeps the last 4 shipments


def test_weights_must_name_every_factor_and_sum_to_one() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        routing.check_weights({"distance": 0.5, "sufficiency": 0.3, "on_time": 0.2, "cost": 0.1})
    with pytest.raises(ValueError, match="exactly"):
        routing.check_weights({"distance": 1.0})


# ---- channel mapping -----------------------------------------------------------------------------

CHANNELS = load_channels(None, ("tmall", "jd", "douyin", "pdd", "kuaishou", "own"))
CATALOGUE = Catalogue(("SKU-*",))


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
    kind, rec = CHANNELS["tmall"].build("order", tmall_order(), CATALOGUE, now_ms=1)
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
        CHANNELS["tmall"].build("order", tmall_order(**changes), CATALOGUE, now_ms=1)
    assert (err.value.code, err.value.field) == (code, field)


def test_nested_paths_and_fen_channels() -> None:
    body = {"order_id": "D1", "pay_amount": 500, "sku_order_list": [{"out_sku_id": "SKU-2", "item_num": 1,
            "origin_amount": 500}], "post_addr": {"province": {"name": "广东"}, "city": {"name": "深圳"},
            "town": {"name": "南山区"}, "detail": "x"}}  # fmt: skip
    _, rec = CHANNELS["douyin"].build("order", body, CATALOGUE, now_ms=7)
    assert rec["amount_fen"] == 500 and rec["address"]["city"] == "深圳" and rec["event_time_ms"] == 7


# ---- lifecycle: routing, allocation, SLA ------------------------------------------------------------

RULES = flow.OrderRules(channels=("jd",), payment_timeout_ms=1_800_000, hold_ttl_ms=7_200_000,
                        parked_grace_ms=600_000, max_line_qty=100, sla_ms=900_000)  # fmt: skip


def paid_order() -> flow.OrderRecord:
    from loadtest import events as ev

    rec = flow.OrderRecord(order_id="jd:1")
    flow.on_placed(rec, ev.order_placed("jd", "1", [ev.line(1, "A", 1), ev.line(2, "B", 1)], event_time_ms=0), 0, RULES)
    for n, sku in ((1, "A"), (2, "B")):
        flow.on_hold_decided(rec, {"line_no": n, "action": "RESERVE", "outcome": "HELD", "reason": "", "sku": sku}, 0,
                             RULES)  # fmt: skip
    fx = flow.on_payment(rec, {"event_id": "p"}, 1_000, RULES)
    assert rec.state == "paid" and fx.route == ["1", "2"]
    return rec


def allocated(rec: flow.OrderRecord, line_no: int, outcome: str = "ALLOCATED", reason: str = "") -> flow.Effects:
    return flow.on_hold_decided(rec, {"line_no": line_no, "action": "ALLOCATE", "outcome": outcome,
                                      "reason": reason, "sku": ""}, 2_000, RULES)  # fmt: skip


def test_an_order_is_routed_when_the_pool_confirmed_every_allocation() -> None:
    rec = paid_order()
    decision = {"assignments": {"WH-SH": [1], "WH-GZ": [2]}, "candidates": [], "weights": {}}
    fx = flow.on_route_decided(rec, decision, 1_500, RULES)
    assert [c["action"] for c in fx.hold_commands] == ["ALLOCATE", "ALLOCATE"]
    assert fx.routing_decision is not None and fx.routing_decision["split"]
    assert not allocated(rec, 1).transitions
    fx = allocated(rec, 2)
    assert rec.state == "routed" and [d["warehouse_id"] for d in fx.dispatches] == ["WH-GZ", "WH-SH"]


def test_a_refused_allocation_routes_the_line_again() -> None:
    rec = paid_order()
    flow.on_route_decided(rec, {"assignments": {"WH-SH": [1, 2]}, "candidates": [], "weights": {}}, 1_500, RULES)
    allocated(rec, 1)
    fx = allocated(rec, 2, "REFUSED", "warehouse_short")
    assert rec.state == "paid" and fx.route == ["2"]


def test_sla_is_red_once_after_fifteen_minutes_and_cleared_once_when_the_warehouse_has_it() -> None:
    rec = paid_order()
    assert not flow.check_sla(rec, 1_000 + 899_999, RULES).alerts
    red = flow.check_sla(rec, 1_000 + 900_000, RULES).alerts
    assert [a["severity"] for a in red] == ["RED"] and not flow.check_sla(rec, 2_000_000, RULES).alerts
    flow.on_route_decided(rec, {"assignments": {"WH-SH": [1, 2]}, "candidates": [], "weights": {}}, 3e6, RULES)
    allocated(rec, 1), allocated(rec, 2)
    assert rec.state == "routed" and not flow.check_sla(rec, 3_000_000, RULES).alerts  # pushed, not acknowledged
    assert flow.on_wms_ack(rec, {"warehouse_id": "WH-XX"}, 3_100_000).refusal[0] == "unknown_warehouse"  # type: ignore[index]
    flow.on_wms_ack(rec, {"warehouse_id": "WH-SH"}, 3_100_000)
    cleared = flow.check_sla(rec, 3_100_000, RULES).alerts
    assert [a.get("cleared") for a in cleared] == [True] and not flow.check_sla(rec, 4e6, RULES).alerts  # type: ignore[arg-type]
