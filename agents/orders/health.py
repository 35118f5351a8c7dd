"""The order health score: pure rules, no Kafka.

An order is scored 0-100 when it is paid, from what is known of it then:

- **payment promptness**: the channel's payment time minus its order time; fast is good;
- **address completeness** down to the building number: road and number (号), building (栋 / 幢 / 座 /
  号楼); unit (单元) and room (室, or the number right after the building or unit) are read too and
  earn what the rules give them (nothing by default), all from the address's detail text by Chinese
  address conventions;
- **item complexity**: a bundle line, a custom-made line and many lines each lose points;
- **the customer's history of returns**: completed return-and-refunds of the same customer;
- **coupon type**: a flash-sale coupon adds points.

The first four give at most their weight each (the weights sum to 100); the coupon adds on top and
the score is kept within 0-100. Orders under ``focus_below`` are in the focus pool. Every number is
configuration (``config/health.toml``, or ``STOCKFLOW_HEALTH_RULES_FILE``), loaded and checked once;
``score`` itself is a few comparisons and precompiled pattern searches per order.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streams.resources import packaged
from streams.settings import Settings

FACTORS = ("promptness", "address", "complexity", "returns", "coupon")
ADDRESS_PARTS = ("road_number", "building", "unit", "room")
MAX_SCORE = 100.0
_EPSILON = 1e-9  # sums of configured points that are equal up to float rounding
_PART_NAMES = {"road_number": "road number", "building": "building", "unit": "unit", "room": "room"}


class _Rules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PromptnessRules(_Rules):
    weight: float = Field(ge=0)
    full_within_s: float = Field(ge=0)
    zero_after_s: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> PromptnessRules:
        if self.zero_after_s <= self.full_within_s:
            raise ValueError("zero_after_s must be more than full_within_s")
        return self


class AddressRules(_Rules):
    weight: float = Field(ge=0)
    road_number: float = Field(ge=0)
    building: float = Field(ge=0)
    unit: float = Field(ge=0)
    room: float = Field(ge=0)

    @model_validator(mode="after")
    def _parts_make_the_weight(self) -> AddressRules:
        parts = self.road_number + self.building + self.unit + self.room
        if abs(parts - self.weight) > _EPSILON:
            raise ValueError(f"road_number + building + unit + room is {parts:g}, not the weight {self.weight:g}")
        return self


class ComplexityRules(_Rules):
    weight: float = Field(ge=0)
    bundle: float = Field(ge=0)
    custom: float = Field(ge=0)
    free_lines: int = Field(ge=1)
    per_extra_line: float = Field(ge=0)


class ReturnsRules(_Rules):
    weight: float = Field(ge=0)
    per_return: float = Field(ge=0)
    window_days: float = Field(gt=0)
    max_customers: int = Field(ge=1)
    max_per_customer: int = Field(ge=1)

    @property
    def window_ms(self) -> int:
        return int(self.window_days * 86_400_000)


class HealthRules(_Rules):
    focus_below: float = Field(ge=0, le=100)
    promptness: PromptnessRules
    address: AddressRules
    complexity: ComplexityRules
    returns: ReturnsRules
    coupon: dict[str, float] = Field(default_factory=dict)  # coupon type (lower case) -> points added

    @field_validator("coupon")
    @classmethod
    def _coupon_types(cls, value: dict[str, float]) -> dict[str, float]:
        out = {}
        for name, points in value.items():
            if not -MAX_SCORE <= points <= MAX_SCORE:
                raise ValueError(f"coupon {name!r}: {points:g} points is outside -100..100")
            out[normal_coupon(name)] = points
        return out

    @model_validator(mode="after")
    def _weights_make_100(self) -> HealthRules:
        total = self.promptness.weight + self.address.weight + self.complexity.weight + self.returns.weight
        if abs(total - MAX_SCORE) > _EPSILON:
            raise ValueError(f"the weights of promptness, address, complexity and returns sum to {total:g}, not 100")
        return self

    def weights(self) -> dict[str, float]:
        """Most points each factor gives (the coupon's: the most any coupon type adds)."""
        return {"promptness": self.promptness.weight, "address": self.address.weight,
                "complexity": self.complexity.weight, "returns": self.returns.weight,
                "coupon": max([*self.coupon.values(), 0.0])}  # fmt: skip


def load_health_rules(path: Path) -> HealthRules:
    """The rules of a health TOML file, checked: a missing or mistyped setting is one clear ValueError."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        return HealthRules.model_validate(data)
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def health_rules(settings: Settings) -> HealthRules:
    return load_health_rules(settings.health_rules_file or packaged("agents.orders", "config", "health.toml"))


def normal_coupon(name: str) -> str:
    return name.strip().lower()


class HealthFacts(NamedTuple):
    """What the score reads of a paid order (``agents.orders.rules.health_facts`` builds it)."""

    placed_at_ms: int
    paid_at_ms: int
    presale: bool
    address_detail: str
    lines: int
    bundle: bool
    custom: bool
    coupon_type: str
    returns: int  # the customer's completed returns in the window


class Health(NamedTuple):
    score: float
    focus: bool
    breakdown: dict[str, float]  # factor -> points it gave (coupon: points added)
    notes: tuple[str, ...]  # why points were lost or added, for the operator
    paid_after_ms: int


# ---- the factors --------------------------------------------------------------------------------
def promptness_points(paid_after_ms: int, presale: bool, rules: PromptnessRules) -> float:
    if presale:
        return rules.weight  # the balance of a presale order is paid days later by design
    seconds = max(paid_after_ms, 0) / 1000
    if seconds <= rules.full_within_s:
        return rules.weight
    if seconds >= rules.zero_after_s:
        return 0.0
    return rules.weight * (rules.zero_after_s - seconds) / (rules.zero_after_s - rules.full_within_s)


# Numbers as addresses write them: ASCII, full-width (\d matches both) or Chinese numerals. Only that a
# part is there matters, so the patterns look at the one character before a marker, not the whole number.
_DIGIT = r"[\d一二三四五六七八九十百零〇两]"
_BUILDING_MARK = r"(?:[栋幢座]|号楼)"
# A road, lane or village and its number: 文三路 90 号, 中关村大街 27 号院, 588 弄 12 号, with the road's part or
# section between them (中山大道西 55 号, 人民南路四段 1 号); not 5 号楼.
_ROAD_NUMBER = re.compile(rf"(?:[路街道巷弄里村]|胡同)(?:\s*[东西南北中])?(?:\s*{_DIGIT}+\s*段)?"
                          rf"\s*{_DIGIT}+(?:\s*[-－]\s*{_DIGIT}+)?\s*号(?!\s*楼)")
_BUILDING = re.compile(rf"[\dA-Za-zＡ-Ｚａ-ｚ一二三四五六七八九十百零〇两]\s*{_BUILDING_MARK}")
_UNIT = re.compile(rf"{_DIGIT}\s*单元")
_ROOM_MARKED = re.compile(rf"{_DIGIT}\s*(?:室|房(?!间))")  # 501 室, 501 房
# The number right after the building or unit (3 幢 501, 2 单元 1203), not another building, unit or
# floor (3 幢 12 单元, 3 幢 12 层).
_ROOM_AFTER = re.compile(rf"(?:{_BUILDING_MARK}|单元)\s*[-－]?\s*\d{{2,5}}(?!\d)(?!\s*(?:单元|[栋幢座层楼]|号楼))")
# The short forms: 3-2-501 (building-unit-room) and 3-501 (building-room); not a number range (90-92 号).
_SHORT_3 = re.compile(r"(?<![\d-])\d{1,3}\s*[-－]\s*\d{1,2}\s*[-－]\s*\d{2,5}(?![\d-])(?!\s*号)")
_SHORT_2 = re.compile(r"(?<![\d-])\d{1,3}\s*[-－]\s*\d{3,5}(?![\d-])(?!\s*号)")


def address_parts(detail: str) -> frozenset[str]:
    """Which of road_number, building, unit and room an address's detail text names."""
    # Each pattern runs only when its marker is in the text: a search that fails tries every position.
    found = []
    if "号" in detail and _ROAD_NUMBER.search(detail):
        found.append("road_number")
    marked = "栋" in detail or "幢" in detail or "座" in detail or "号楼" in detail
    if marked and _BUILDING.search(detail):
        found.append("building")
    if "单元" in detail and _UNIT.search(detail):
        found.append("unit")
    if (("室" in detail or "房" in detail) and _ROOM_MARKED.search(detail)) or (
        (marked or "单元" in detail) and _ROOM_AFTER.search(detail)
    ):
        found.append("room")
    if len(found) < len(ADDRESS_PARTS) and ("-" in detail or "－" in detail):
        if _SHORT_3.search(detail):
            found += ("building", "unit", "room")
        elif _SHORT_2.search(detail):
            found += ("building", "room")
    return frozenset(found)


def address_points(parts: frozenset[str], rules: AddressRules) -> float:
    return (rules.road_number * ("road_number" in parts) + rules.building * ("building" in parts)
            + rules.unit * ("unit" in parts) + rules.room * ("room" in parts))  # fmt: skip


def complexity_points(lines: int, bundle: bool, custom: bool, rules: ComplexityRules) -> float:
    lost = rules.bundle * bundle + rules.custom * custom + rules.per_extra_line * max(lines - rules.free_lines, 0)
    return max(rules.weight - lost, 0.0)


def returns_points(returns: int, rules: ReturnsRules) -> float:
    return max(rules.weight - rules.per_return * max(returns, 0), 0.0)


def coupon_points(coupon_type: str, coupons: dict[str, float]) -> float:
    if not coupon_type:
        return 0.0
    return coupons.get(normal_coupon(coupon_type), 0.0)


# ---- the score ----------------------------------------------------------------------------------
def score(facts: HealthFacts, rules: HealthRules) -> Health:
    """The order's score, each factor's points (rounded to 0.1) and the reasons points were lost or added."""
    paid_after_ms = max(facts.paid_at_ms - facts.placed_at_ms, 0) if facts.paid_at_ms and facts.placed_at_ms else 0
    parts = address_parts(facts.address_detail)
    breakdown = {
        "promptness": round(promptness_points(paid_after_ms, facts.presale, rules.promptness), 1),
        "address": round(address_points(parts, rules.address), 1),
        "complexity": round(complexity_points(facts.lines, facts.bundle, facts.custom, rules.complexity), 1),
        "returns": round(returns_points(facts.returns, rules.returns), 1),
        "coupon": round(coupon_points(facts.coupon_type, rules.coupon), 1),
    }
    total = round(min(max(sum(breakdown.values()), 0.0), MAX_SCORE), 1)
    return Health(total, total < rules.focus_below, breakdown, _notes(facts, rules, breakdown, parts, paid_after_ms),
                  paid_after_ms)  # fmt: skip


def _notes(facts: HealthFacts, rules: HealthRules, points: dict[str, float], parts: frozenset[str],
           paid_after_ms: int) -> tuple[str, ...]:  # fmt: skip
    notes = []
    if points["promptness"] < rules.promptness.weight:
        notes.append(f"paid after {paid_after_ms / 60_000:.0f} min")
    if points["address"] < rules.address.weight:
        missing = [_PART_NAMES[p] for p in ADDRESS_PARTS if p not in parts and getattr(rules.address, p)]
        notes.append("address without " + ", ".join(missing))
    if facts.bundle and rules.complexity.bundle:
        notes.append("bundle")
    if facts.custom and rules.complexity.custom:
        notes.append("custom-made line")
    if facts.lines > rules.complexity.free_lines and rules.complexity.per_extra_line:
        notes.append(f"{facts.lines} lines")
    if facts.returns and rules.returns.per_return:
        notes.append(f"{facts.returns} return{'s' if facts.returns > 1 else ''} in {rules.returns.window_days:g} days")
    if points["coupon"]:
        notes.append(f"coupon {facts.coupon_type.strip()} {points['coupon']:+g}")
    return tuple(notes)
