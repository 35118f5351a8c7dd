"""The order health score's pure rules: scores worked out by hand for a few orders, each factor at its
boundaries, the address conventions, and the configuration checks. Default rules
(``agents/orders/config/health.toml``): promptness 20 (all within 5 min, none from 30 min), address 30
(down to the building number, DOMAIN.md: road number 15, building 15, unit and room 0), complexity 20
(bundle -8, custom -10, -2 per line over 3), returns 30 (-10 each), flash-sale coupon +10, focus under 60."""

from __future__ import annotations

import timeit
from pathlib import Path

import pytest

from agents.orders import health
from agents.orders.health import HealthFacts, HealthRules, address_parts, load_health_rules, score
from streams.settings import Settings

MIN = 60_000
T0 = 1_794_326_400_000
FULL_ADDRESS = "中关村大街 27 号院 5 号楼 2 单元 1203 室"


@pytest.fixture(scope="module")
def rules() -> HealthRules:
    return health.health_rules(Settings())


def facts(paid_after_ms: int = 2 * MIN, *, presale: bool = False, detail: str = FULL_ADDRESS, lines: int = 1,
          bundle: bool = False, custom: bool = False, coupon: str = "", returns: int = 0) -> HealthFacts:  # fmt: skip
    return HealthFacts(placed_at_ms=T0, paid_at_ms=T0 + paid_after_ms, presale=presale, address_detail=detail,
                       lines=lines, bundle=bundle, custom=custom, coupon_type=coupon, returns=returns)  # fmt: skip


# ---- whole orders, by hand ----------------------------------------------------------------------
def test_a_model_order_scores_100(rules: HealthRules) -> None:
    h = score(facts(), rules)
    assert h.breakdown == {"promptness": 20, "address": 30, "complexity": 20, "returns": 30, "coupon": 0}
    assert (h.score, h.focus, h.notes, h.paid_after_ms) == (100.0, False, (), 2 * MIN)


def test_slow_payment_an_address_to_the_building_a_bundle_and_a_return_stay_out_of_the_pool(
    rules: HealthRules,
) -> None:
    """Changed on purpose: the address counted down to the room (a unit and room were 8 of its 30 points), where
    DOMAIN.md counts it complete down to the building number."""
    # Paid after 20 min: 20 * (1800 - 1200) / 1500 = 8; address down to the building number (no unit): 15 + 15 =
    # 30; a bundle and 5 lines: 20 - 8 - 2 * 2 = 8; one return: 30 - 10 = 20. 8 + 30 + 8 + 20 = 66.
    h = score(facts(20 * MIN, detail="文三路 90 号 3 幢 501", lines=5, bundle=True, returns=1), rules)
    assert h.breakdown == {"promptness": 8, "address": 30, "complexity": 8, "returns": 20, "coupon": 0}
    assert (h.score, h.focus) == (66.0, False)
    assert h.notes == ("paid after 20 min", "bundle", "5 lines", "1 return in 180 days")


def test_a_second_return_puts_the_same_order_in_the_focus_pool_and_a_flash_sale_coupon_takes_it_out(
    rules: HealthRules,
) -> None:
    order = facts(20 * MIN, detail="文三路 90 号 3 幢 501", lines=5, bundle=True, returns=2)
    two_returns = score(order, rules)
    assert (two_returns.breakdown["returns"], two_returns.score, two_returns.focus) == (10, 56.0, True)
    with_coupon = score(order._replace(coupon_type="flash_sale"), rules)
    assert (with_coupon.breakdown["coupon"], with_coupon.score, with_coupon.focus) == (10, 66.0, False)
    assert with_coupon.notes[-1] == "coupon flash_sale +10"


def test_a_custom_bundle_of_six_lines_for_a_serial_returner_is_deep_in_the_pool(rules: HealthRules) -> None:
    # Presale (the balance days later): 20; road number only: 15; 20 - 8 - 10 - 3 * 2 < 0: 0; four returns: 0;
    # a 秒杀 coupon: +10. 20 + 15 + 0 + 0 + 10 = 45.
    h = score(facts(3 * 24 * 60 * MIN, presale=True, detail="体育西路 1 号", lines=6, bundle=True, custom=True,
                    coupon=" 秒杀 ", returns=4), rules)  # fmt: skip
    assert h.breakdown == {"promptness": 20, "address": 15, "complexity": 0, "returns": 0, "coupon": 10}
    assert (h.score, h.focus) == (45.0, True)


def test_the_score_stays_within_0_and_100(rules: HealthRules) -> None:
    assert score(facts(coupon="FlashSale"), rules).score == 100.0  # 100 + 10, kept at 100
    penalised = rules.model_copy(update={"coupon": {"reseller": -10.0}})
    worst = score(
        facts(40 * MIN, detail="", lines=4, custom=True, bundle=True, returns=3, coupon="reseller"), penalised
    )
    assert worst.breakdown == {"promptness": 0, "address": 0, "complexity": 0, "returns": 0, "coupon": -10}
    assert (worst.score, worst.focus) == (0.0, True)
    assert worst.notes[:2] == ("paid after 40 min", "address without road number, building")


def test_focus_means_strictly_under_the_threshold(rules: HealthRules) -> None:
    # No address (0), one return (20), complexity 20: 40 plus the promptness points.
    at_60 = score(facts(5 * MIN, detail="", returns=1), rules)
    assert (at_60.score, at_60.focus) == (60.0, False)
    # Paid after 307.5 s: 20 * 1492.5 / 1500 = 19.9 -> 59.9.
    just_under = score(facts(307_500, detail="", returns=1), rules)
    assert (just_under.breakdown["promptness"], just_under.score, just_under.focus) == (19.9, 59.9, True)


# ---- each factor at its boundaries ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("paid_after_ms", "points"),
    [
        (-MIN, 20),  # the payment's time before the order's (the channel's clocks): as fast as can be
        (0, 20),
        (300_000, 20),  # 5 min: every point
        (300_100, 20),  # 20 * 1499.9 / 1500 = 19.9987 -> 20.0
        (1_050_000, 10),  # half way
        (1_799_000, 0),  # 20 * 1 / 1500 = 0.013 -> 0.0
        (1_800_000, 0),  # 30 min: none
        (7_200_000, 0),
    ],
)
def test_promptness_is_full_up_to_5_minutes_and_none_from_30(rules: HealthRules, paid_after_ms: int,
                                                            points: float) -> None:  # fmt: skip
    assert score(facts(paid_after_ms), rules).breakdown["promptness"] == points


def test_a_presale_order_or_an_unknown_payment_time_keeps_every_promptness_point(rules: HealthRules) -> None:
    assert score(facts(10 * 24 * 60 * MIN, presale=True), rules).breakdown["promptness"] == 20
    unknown = facts()._replace(paid_at_ms=0)
    assert score(unknown, rules).paid_after_ms == 0 and score(unknown, rules).breakdown["promptness"] == 20


@pytest.mark.parametrize(
    ("detail", "parts", "points"),
    [
        (FULL_ADDRESS, {"road_number", "building", "unit", "room"}, 30),
        ("文三路 90 号 3 幢 501", {"road_number", "building", "room"}, 30),  # the room right after the building
        ("文三路90号3幢2单元501室", {"road_number", "building", "unit", "room"}, 30),  # written without spaces
        ("张江路 588 弄 12 号 3-2-501", {"road_number", "building", "unit", "room"}, 30),  # building-unit-room
        ("阳光小区 3-501", {"building", "room"}, 15),  # building-room, no road
        ("建国路８８号Ａ座１５０２", {"road_number", "building", "room"}, 30),  # full-width digits and letter
        ("三栋二单元五零一室", {"building", "unit", "room"}, 15),  # Chinese numerals
        ("张家村 12 号", {"road_number"}, 15),  # a village house number
        ("体育西路 1 号", {"road_number"}, 15),
        ("人民南路四段1号", {"road_number"}, 15),  # the road's section between road and number
        ("中山大道西55号", {"road_number"}, 15),  # ... or its part
        ("建设大道中 18 号 2 栋", {"road_number", "building"}, 30),
        ("文三路 90-92 号", {"road_number"}, 15),  # a number range is a road number, not building-room
        ("5 号楼", {"building"}, 15),  # 号楼 is a building, not a road number
        ("3 幢 12 单元", {"building", "unit"}, 15),  # the number after the building is the unit's
        ("3 幢 12 层", {"building"}, 15),  # ... or a floor, not a room
        ("3栋501号", {"building", "room"}, 15),
        ("万达广场 1203 房", {"room"}, 0),
        ("送到门卫 电话 138-1234-5678", set(), 0),  # a phone number is not building-unit-room
        ("", set(), 0),
    ],
)
def test_address_completeness_down_to_the_building_number(rules: HealthRules, detail: str, parts: set[str],
                                               points: float) -> None:  # fmt: skip
    assert address_parts(detail) == parts
    assert score(facts(detail=detail), rules).breakdown["address"] == points


@pytest.mark.parametrize(
    ("lines", "bundle", "custom", "points"),
    [
        (1, False, False, 20),
        (3, False, False, 20),  # up to 3 lines cost nothing
        (4, False, False, 18),
        (10, False, False, 6),  # 20 - 7 * 2
        (1, True, False, 12),
        (1, False, True, 10),
        (1, True, True, 2),
        (4, True, True, 0),  # 20 - 8 - 10 - 2
        (6, True, True, 0),  # would be -4: never below 0
    ],
)
def test_bundles_custom_lines_and_many_lines_lose_complexity_points(
    rules: HealthRules, lines: int, bundle: bool, custom: bool, points: float
) -> None:
    assert score(facts(lines=lines, bundle=bundle, custom=custom), rules).breakdown["complexity"] == points


@pytest.mark.parametrize(("returns", "points"), [(0, 30), (1, 20), (2, 10), (3, 0), (4, 0), (-1, 30)])
def test_each_return_costs_10_points_down_to_0(rules: HealthRules, returns: int, points: float) -> None:
    assert score(facts(returns=returns), rules).breakdown["returns"] == points


@pytest.mark.parametrize(
    ("coupon", "points"),
    [("", 0), ("flash_sale", 10), (" FLASH_SALE ", 10), ("seckill", 10), ("限时秒杀", 10), ("满减", 0), ("vip", 0)],
)
def test_flash_sale_coupons_add_points_others_nothing(rules: HealthRules, coupon: str, points: float) -> None:
    assert score(facts(coupon=coupon), rules).breakdown["coupon"] == points


# ---- configuration ----------------------------------------------------------------------------------
def test_the_shipped_rules_and_their_weights(rules: HealthRules) -> None:
    assert rules.weights() == {"promptness": 20, "address": 30, "complexity": 20, "returns": 30, "coupon": 10}
    assert rules.focus_below == 60 and rules.returns.window_ms == 180 * 86_400_000


SHIPPED = (Path(health.__file__).parent / "config" / "health.toml").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("weight = 30\nper_return", "weight = 40\nper_return"), "sum to 110, not 100"),
        (("room = 0", "room = 1"), "is 31, not the weight 30"),
        (("zero_after_s = 1800", "zero_after_s = 300"), "zero_after_s must be more than full_within_s"),
        (("free_lines = 3", "free_lines = 3\nfree_bundles = 1"), "free_bundles"),  # unknown keys are refused
        (("focus_below = 60", "focus_below = 160"), "focus_below"),
        (("seckill = 10", "seckill = 200"), "outside -100..100"),
        (("[coupon]", "[coupon"), "Expected .]. at the end of a table declaration"),  # not TOML
    ],
)
def test_a_wrong_rules_file_is_refused_with_its_path_and_what_is_wrong(tmp_path: Path, change: tuple[str, str],
                                                                       message: str) -> None:  # fmt: skip
    assert change[0] in SHIPPED
    path = tmp_path / "health.toml"
    path.write_text(SHIPPED.replace(change[0], change[1], 1), encoding="utf-8")
    with pytest.raises(ValueError, match=message) as refused:
        load_health_rules(path)
    assert str(path) in str(refused.value)


def test_the_rules_file_comes_from_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "health.toml"
    path.write_text(SHIPPED.replace("focus_below = 60", "focus_below = 75"), encoding="utf-8")
    assert health.health_rules(Settings(health_rules_file=path)).focus_below == 75


def test_scoring_is_cheap(rules: HealthRules) -> None:
    """A handful of comparisons and precompiled searches: far under the hot path's ~500 µs per order."""
    order = facts(20 * MIN, detail="文三路 90 号 3 幢 501", lines=5, bundle=True, returns=1)
    per_call_s = min(timeit.repeat(lambda: score(order, rules), number=2_000, repeat=5)) / 2_000
    assert per_call_s < 200e-6  # a generous bound for a loaded machine; measured at a few µs
