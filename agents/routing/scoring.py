"""Which warehouse ships an order: a weighted score per candidate, pure rules, no Kafka.

Every factor is normalised to [0, 1], higher is better, among the candidates of this order:

    distance     1 - d / d_max         d: great-circle km from the warehouse to the customer's
                                       city (or province) centroid; d_max: the farthest candidate
    sufficiency  min over the lines the warehouse would ship of (free - qty) / free
                                       free: the warehouse's on-hand of the SKU minus what is
                                       already allocated to it; 1 leaves the level untouched,
                                       0 empties it
    on_time      the warehouse's rolling on-time rate (see ``OnTimeRate``)
    cost         1 - cost / cost_max   cost: operating cost per order; cost_max: the dearest
                                       candidate

    score = w_distance * distance + w_sufficiency * sufficiency + w_on_time * on_time + w_cost * cost

with the weights from configuration (``STOCKFLOW_ROUTING_WEIGHTS``). Eligible: a warehouse with
free stock for every line. If none is, the order is split across the fewest warehouses that
together cover every line (a line is never split), and among those sets the one with the highest
total score wins; each line goes to the best-scoring warehouse of the set that can serve it.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from agents.routing.geo import Place, distance_km

FACTORS = ("distance", "sufficiency", "on_time", "cost")
MAX_SPLIT = 3
WEIGHT_SUM_TOLERANCE = 1e-6  # weights read from TOML as decimals rarely add up to exactly 1.0


def check_weights(weights: dict[str, float]) -> dict[str, float]:
    """The weights, validated: exactly the four factors, none negative, summing to 1."""
    if set(weights) != set(FACTORS):
        raise ValueError(f"routing weights must name exactly {FACTORS}, got {sorted(weights)}")
    if any(w < 0 for w in weights.values()) or abs(sum(weights.values()) - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise ValueError(f"routing weights must be >= 0 and sum to 1, got {weights}")
    return dict(weights)


@dataclass(frozen=True)
class Site:
    """A warehouse as routing sees it."""

    id: str
    place: Place
    cost_per_order: float


@dataclass
class OnTimeRate:
    """Rolling on-time rate of one warehouse: the last ``window`` shipments, pulled toward a prior.

    rate = (prior * prior_weight + on_time_shipments) / (prior_weight + shipments)
    so a new warehouse starts at its configured prior and real shipments take over as they come.
    """

    prior: float
    prior_weight: float
    window: int
    outcomes: deque[bool] = field(default_factory=deque)
    on_time_in_window: int = 0  # kept with the window: every routed order reads the rate of every warehouse

    def add(self, on_time: bool) -> None:
        self.outcomes.append(on_time)
        self.on_time_in_window += on_time
        while len(self.outcomes) > self.window:
            self.on_time_in_window -= self.outcomes.popleft()

    def rate(self) -> float:
        return (self.prior * self.prior_weight + self.on_time_in_window) / (self.prior_weight + len(self.outcomes))


@dataclass(frozen=True)
class Line:
    line_no: int
    sku: str
    qty: int


@dataclass
class Decision:
    assignments: dict[str, list[int]]  # warehouse id -> line numbers it ships
    candidates: list[dict[str, Any]]  # every candidate's factors and score
    weights: dict[str, float]

    @property
    def split(self) -> bool:
        return len(self.assignments) > 1


def _serves(free: dict[tuple[str, str], int], wh: str, lines: list[Line]) -> bool:
    need: dict[str, int] = {}
    for ln in lines:
        need[ln.sku] = need.get(ln.sku, 0) + ln.qty
    return all(free.get((wh, sku), 0) >= qty for sku, qty in need.items())


def score_candidates(
    sites: dict[str, Site],
    customer: Place,
    lines_by_site: dict[str, list[Line]],
    free: dict[tuple[str, str], int],
    on_time: dict[str, float],
    weights: dict[str, float],
) -> dict[str, dict[str, Any]]:
    """Each candidate's factors and score; ``lines_by_site``: the lines each one would ship."""
    placed = _placed(sites, customer, list(lines_by_site), on_time)
    return {wh: _scored(placed[wh], free, lines, weights) for wh, lines in lines_by_site.items()}


def _placed(sites: dict[str, Site], customer: Place, candidates: list[str],
            on_time: dict[str, float]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The factors that do not depend on the lines a candidate ships, scaled over ``candidates``."""
    km = {wh: distance_km(sites[wh].place, customer) for wh in candidates}
    d_max = max(km.values(), default=0.0)
    c_max = max((sites[wh].cost_per_order for wh in candidates), default=0.0)
    return {
        wh: {"warehouse_id": wh, "distance_km": round(km[wh], 3),
             "distance": 1.0 - km[wh] / d_max if d_max > 0 else 1.0, "on_time": min(1.0, max(0.0, on_time[wh])),
             "cost": 1.0 - sites[wh].cost_per_order / c_max if c_max > 0 else 1.0}
        for wh in candidates
    }  # fmt: skip


def _scored(placed: dict[str, Any], free: dict[tuple[str, str], int], lines: list[Line],
            weights: dict[str, float]) -> dict[str, Any]:  # fmt: skip
    wh = placed["warehouse_id"]
    need: dict[str, int] = {}
    for ln in lines:  # two lines of one SKU take from the same units
        need[ln.sku] = need.get(ln.sku, 0) + ln.qty
    sufficiency = min(
        ((free[(wh, sku)] - qty) / free[(wh, sku)] for sku, qty in need.items() if free.get((wh, sku), 0) > 0),
        default=0.0,
    )
    factors = {**placed, "sufficiency": max(0.0, sufficiency)}
    return {**factors, "score": sum(weights[f] * factors[f] for f in FACTORS)}


def route(
    sites: dict[str, Site],
    customer: Place,
    lines: list[Line],
    free: dict[tuple[str, str], int],
    on_time: dict[str, float],
    weights: dict[str, float],
) -> Decision | None:
    """The routing decision for ``lines``, or None when no set of warehouses can ship them."""
    whole = {wh: lines for wh in sorted(sites) if _serves(free, wh, lines)}
    if whole:
        scored = score_candidates(sites, customer, whole, free, on_time, weights)
        best = max(sorted(scored), key=lambda wh: scored[wh]["score"])
        return Decision({best: [ln.line_no for ln in lines]}, [scored[wh] for wh in sorted(scored)], weights)
    partial = {wh: [ln for ln in lines if _serves(free, wh, [ln])] for wh in sorted(sites)}
    partial = {wh: served for wh, served in partial.items() if served}
    if not partial:
        return None
    placed = _placed(sites, customer, list(partial), on_time)
    scored = {wh: _scored(placed[wh], free, served, weights) for wh, served in partial.items()}
    ranked = sorted(partial, key=lambda wh: (-scored[wh]["score"], wh))
    by_no = {ln.line_no: ln for ln in lines}
    for size in range(2, min(MAX_SPLIT, len(ranked)) + 1):
        found: tuple[float, dict[str, list[int]], dict[str, dict[str, Any]]] | None = None
        for combo in itertools.combinations(ranked, size):
            plan = _assign(combo, lines, free)
            if plan is None or len(plan) < size:
                continue  # cannot cover every line, or a smaller set would do
            # Each warehouse of the plan scored on the lines it would ship, not every line it could: one kept
            # from a line another ships would lose sufficiency for stock it keeps. The other candidates stay in,
            # so distance and cost are scaled alike for every plan.
            ships = {wh: _scored(placed[wh], free, [by_no[n] for n in nos], weights) for wh, nos in plan.items()}
            total = sum(c["score"] for c in ships.values())
            if found is None or total > found[0] + 1e-12:
                found = (total, plan, ships)
        if found is not None:
            candidates = {**scored, **found[2]}
            return Decision(found[1], [candidates[wh] for wh in sorted(candidates)], weights)
    return None


def _assign(combo: tuple[str, ...], lines: list[Line], free: dict[tuple[str, str], int]) -> dict[str, list[int]] | None:
    """Each line, largest first, to the first warehouse that still has stock for it, trying the warehouses of
    ``combo`` in its order (best score first) and then in every other order: one order's first fit can miss a
    plan another finds (4 and 3 units for lines of 3, 2 and 2 fit only with the 3 placed second)."""
    for order in itertools.permutations(combo):
        plan = _first_fit(order, lines, free)
        if plan is not None:
            return plan
    return None


def _first_fit(order: tuple[str, ...], lines: list[Line],
               free: dict[tuple[str, str], int]) -> dict[str, list[int]] | None:  # fmt: skip
    left = dict(free)
    plan: dict[str, list[int]] = {}
    for ln in sorted(lines, key=lambda x: (-x.qty, x.line_no)):
        for wh in order:
            if left.get((wh, ln.sku), 0) >= ln.qty:
                left[(wh, ln.sku)] -= ln.qty
                plan.setdefault(wh, []).append(ln.line_no)
                break
        else:
            return None
    return {wh: sorted(nos) for wh, nos in plan.items()}
