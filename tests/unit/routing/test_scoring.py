"""Pure routing rules, no broker: geo placement, warehouse scores, splitting, on-time rate, weights."""

from __future__ import annotations

import pytest

from agents.routing import geo
from agents.routing import scoring as routing
from agents.routing.scoring import Line, OnTimeRate, Site
from streams.settings import Settings

HANGZHOU = geo.locate("浙江省", "杭州市")
WEIGHTS = Settings().routing_weights  # the defaults: the hand-computed example below uses them

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
                             WEIGHTS)  # type: ignore[arg-type]  # fmt: skip
    assert decision is not None and decision.assignments == {"WH-NJ": [1]} and not decision.split
    scores = {c["warehouse_id"]: round(c["score"], 3) for c in decision.candidates}
    assert scores == EXAMPLE_SCORES
    sh = next(c for c in decision.candidates if c["warehouse_id"] == "WH-SH")
    assert (round(sh["distance"], 3), sh["sufficiency"], sh["on_time"], sh["cost"]) == (0.843, 0.0, 0.7, 0.0)


def test_split_uses_the_fewest_warehouses_and_never_splits_a_line() -> None:
    free = {("WH-SH", "A"): 5, ("WH-GZ", "B"): 5, ("WH-NJ", "A"): 1, ("WH-NJ", "B"): 1}
    lines = [Line(1, "A", 2), Line(2, "B", 3)]
    decision = routing.route(EXAMPLE_SITES, HANGZHOU, lines, free, EXAMPLE_ON_TIME, WEIGHTS)  # type: ignore[arg-type]
    assert decision is not None and decision.split
    assert decision.assignments == {"WH-SH": [1], "WH-GZ": [2]}
    # Nothing anywhere can take line 2's three units: no decision.
    assert routing.route(EXAMPLE_SITES, HANGZHOU, [Line(1, "B", 9)], free, EXAMPLE_ON_TIME,
                         WEIGHTS) is None  # type: ignore[arg-type]  # fmt: skip


def test_a_split_is_found_where_the_best_warehouse_first_would_miss_it() -> None:
    """Changed on purpose: each line went, largest first, to the best-scored warehouse with room, so 4 units
    at Nanjing and 3 at Guangzhou for lines of 3, 2 and 2 gave no plan (3 at Nanjing left 1 there and the
    two 2s no home): the order was called unroutable though Guangzhou 3 + Nanjing 2 and 2 ship it."""
    free = {("WH-NJ", "S"): 4, ("WH-GZ", "S"): 3}
    lines = [Line(1, "S", 3), Line(2, "S", 2), Line(3, "S", 2)]
    decision = routing.route(EXAMPLE_SITES, HANGZHOU, lines, free, EXAMPLE_ON_TIME, WEIGHTS)  # type: ignore[arg-type]
    assert decision is not None and decision.assignments == {"WH-GZ": [1], "WH-NJ": [2, 3]}


def test_on_time_rate_starts_at_its_prior_and_follows_shipments() -> None:
    rate = OnTimeRate(prior=0.9, prior_weight=10, window=4)
    assert rate.rate() == pytest.approx(0.9)
    for _ in range(10):
        rate.add(False)
    assert rate.rate() == pytest.approx(9 / 14)  # the window keeps the last 4 shipments


def test_on_time_rate_counts_the_window_it_keeps() -> None:
    rate = OnTimeRate(prior=0.5, prior_weight=2, window=5)
    shipments = [True, False, True, True, False, False, True, True, True, False, True]
    for n, on_time in enumerate(shipments, 1):
        rate.add(on_time)
        window = shipments[max(0, n - 5):n]
        assert rate.rate() == pytest.approx((0.5 * 2 + sum(window)) / (2 + len(window)))


def test_weights_must_name_every_factor_and_sum_to_one() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        routing.check_weights({"distance": 0.5, "sufficiency": 0.3, "on_time": 0.2, "cost": 0.1})
    with pytest.raises(ValueError, match="exactly"):
        routing.check_weights({"distance": 1.0})


def test_two_lines_of_one_sku_count_together_for_stock_sufficiency() -> None:
    """Changed on purpose: each line was scored alone, so two lines of 3 from a warehouse with 6 free scored
    it half full, where one line of 6 (the same units) scored it empty (DOMAIN: avoid emptying a warehouse)."""
    customer = geo.Place(0.0, 0.0, "city")
    sites = {"A": Site("A", geo.Place(0.0, 8.0, "city"), 5.0), "B": Site("B", geo.Place(0.0, 10.0, "city"), 5.0)}
    weights = {"distance": 0.4, "sufficiency": 0.3, "on_time": 0.2, "cost": 0.1}
    free = {("A", "X"): 6, ("B", "X"): 10}
    on_time = {"A": 0.95, "B": 0.95}
    split = routing.route(sites, customer, [Line(1, "X", 3), Line(2, "X", 3)], free, on_time, weights)
    whole = routing.route(sites, customer, [Line(1, "X", 6)], free, on_time, weights)
    sufficiency = {c["warehouse_id"]: c["sufficiency"] for c in split.candidates}
    assert sufficiency == {c["warehouse_id"]: c["sufficiency"] for c in whole.candidates}
    assert sufficiency["A"] == 0.0 and set(split.assignments) == set(whole.assignments) == {"B"}


def test_a_split_scores_each_warehouse_on_the_lines_it_would_ship() -> None:
    """Failed before: each warehouse of a split was scored on every line it could serve, so Guangzhou lost
    sufficiency for Z units it would keep (Beijing ships Z), and the farther Chengdu won."""
    sites = {wh: Site(wh, geo.locate(province, city), 5.0) for wh, province, city in  # type: ignore[arg-type]
             (("WH-GZ", "广东", "广州"), ("WH-BJ", "北京", "北京"), ("WH-CD", "四川", "成都"))}  # fmt: skip
    shanghai = geo.locate("上海", "上海")
    free = {("WH-GZ", "Y"): 3, ("WH-GZ", "Z"): 3, ("WH-BJ", "X"): 3, ("WH-BJ", "Z"): 5, ("WH-CD", "Y"): 5}
    lines = [Line(1, "Z", 2), Line(2, "Y", 1), Line(3, "X", 1)]
    decision = routing.route(sites, shanghai, lines, free, dict.fromkeys(sites, 0.95), WEIGHTS)  # type: ignore[arg-type]
    assert decision is not None and decision.assignments == {"WH-BJ": [1, 3], "WH-GZ": [2]}
    gz = next(c for c in decision.candidates if c["warehouse_id"] == "WH-GZ")
    assert gz["sufficiency"] == pytest.approx(2 / 3)  # one Y of three shipped; its Z units not counted
