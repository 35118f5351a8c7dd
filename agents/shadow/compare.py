"""Where a shadow's decisions differ from the live pipeline's, and what that would change: pure
functions over decision records, no Kafka.

- Routing: per order, its first ``RoutingDecision`` (the rule's choice for the whole order; a later
  attempt only routes again what a warehouse refused). Two decisions differ when a line ships from
  another warehouse. Effect: average km from the shipping warehouse to the customer per parcel (one
  parcel per warehouse of an order), the split rate, parcels per warehouse.
- Refunds: per refund, the decision on its request - approved automatically or not, and the state it
  went to from ``requested`` (with the rule's reason). Effect: refunds approved automatically, their
  amount, refunds sent to customer service.

Only what both runs decided is compared; what one of them decided alone is counted apart (a shadow
still catching up, an order the candidate could not route yet), never called a difference; so is a refund
the shadow decided before its replay reached the order (``decided_before_its_order``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from agents.refunds.rules import ORDER_UNKNOWN
from streams.contract.records import CandidateScore, RefundStateChanged, RoutingDecision

DEFAULT_EXAMPLES = 5


# ---- routing ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RouteChoice:
    """An order's first routing decision."""

    order_id: str
    decided_ms: int
    attempt: int
    assignments: tuple[tuple[str, tuple[int, ...]], ...]  # (warehouse, its line numbers), by warehouse
    split: bool
    candidates: tuple[CandidateScore, ...]
    weights: Mapping[str, float]

    @classmethod
    def of(cls, record: RoutingDecision) -> RouteChoice:
        return cls(
            order_id=record["order_id"],
            decided_ms=int(record["event_time_ms"]),
            attempt=_attempt(record["event_id"]),
            assignments=tuple(sorted((a["warehouse_id"], tuple(sorted(a["line_nos"]))) for a in record["assignments"])),
            split=bool(record["split"]),
            candidates=tuple(record["candidates"]),
            weights=dict(record["weights"]),
        )

    @property
    def warehouses(self) -> tuple[str, ...]:
        return tuple(wh for wh, _ in self.assignments)

    @property
    def label(self) -> str:
        return "+".join(self.warehouses)

    def km(self) -> list[float]:
        """Great-circle km from each warehouse that ships a parcel of the order to the customer."""
        by_wh = {c["warehouse_id"]: float(c["distance_km"]) for c in self.candidates}
        return [by_wh[wh] for wh in self.warehouses if wh in by_wh]

    def to_dict(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id, "decided_ms": self.decided_ms, "attempt": self.attempt,
            "assignments": {wh: list(nos) for wh, nos in self.assignments}, "split": self.split,
            "km": self.km(), "weights": dict(self.weights), "candidates": [dict(c) for c in self.candidates],
        }  # fmt: skip


def _attempt(event_id: str) -> int:
    """The routing attempt an event id ``<order id>:route:<n>`` names (0 if it names none)."""
    tail = event_id.rpartition(":route:")[2]
    return int(tail) if tail.isdigit() else 0


def first_route_choices(records: Iterable[RoutingDecision]) -> dict[str, RouteChoice]:
    """Each order's first decision: its lowest attempt (repeats of one event, after a replay, are one)."""
    out: dict[str, RouteChoice] = {}
    for record in records:
        choice = RouteChoice.of(record)
        known = out.get(choice.order_id)
        if known is None or (choice.attempt, choice.decided_ms) < (known.attempt, known.decided_ms):
            out[choice.order_id] = choice
    return out


@dataclass(frozen=True)
class RoutingEffect:
    orders: int
    parcels: int
    avg_km: float
    split_rate: float
    parcels_by_warehouse: dict[str, int]


def routing_effect(choices: Iterable[RouteChoice]) -> RoutingEffect:
    orders = splits = 0
    km: list[float] = []
    parcels: Counter[str] = Counter()
    for choice in choices:
        orders += 1
        splits += choice.split
        km += choice.km()
        parcels.update(choice.warehouses)
    return RoutingEffect(
        orders=orders,
        parcels=sum(parcels.values()),
        avg_km=round(sum(km) / len(km), 1) if km else 0.0,
        split_rate=round(splits / orders, 4) if orders else 0.0,
        parcels_by_warehouse=dict(sorted(parcels.items())),
    )


# ---- refunds ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RefundChoice:
    """The decision on a refund request."""

    refund_id: str
    order_id: str
    channel: str
    kind: str
    amount_fen: int
    auto_approved: bool
    state: str  # the state the request went to; "" when compaction kept only a later record
    reason: str  # the rule's reason (e.g. amount_over_auto_limit), when known
    decided_ms: int

    @property
    def label(self) -> str:
        if self.auto_approved:
            return "auto_approved"
        return self.state or "not_auto_approved"

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "outcome": self.label}


def refund_choices(records: Iterable[RefundStateChanged]) -> dict[str, RefundChoice]:
    """Each decided refund's decision: its transition out of ``requested``. On a compacted topic that
    record may be gone; a refund whose newest record is past ``requested`` was decided all the same,
    and ``auto_approved`` stays on every later record. A refund still ``requested`` is undecided."""
    by_refund: dict[str, list[RefundStateChanged]] = {}
    for record in records:
        by_refund.setdefault(record["refund_id"], []).append(record)
    out: dict[str, RefundChoice] = {}
    for refund_id, history in by_refund.items():
        auto = any(r["auto_approved"] for r in history)
        decision = next((r for r in history if r["previous_state"] == "requested" and r["state"] != "requested"), None)
        newest = history[-1]
        if decision is None and newest["state"] in ("", "requested") and not auto:
            continue
        source = decision or newest
        out[refund_id] = RefundChoice(
            refund_id=refund_id, order_id=newest["order_id"], channel=newest["channel"], kind=newest["kind"],
            amount_fen=int(newest["amount_fen"]), auto_approved=auto,
            state=decision["state"] if decision else "", reason=decision["reason"] if decision else "",
            decided_ms=int(source["event_time_ms"]),
        )  # fmt: skip
    return out


@dataclass(frozen=True)
class RefundEffect:
    refunds: int
    auto_approved: int
    auto_approved_fen: int
    to_review: int  # sent to customer service


def refund_effect(choices: Iterable[RefundChoice]) -> RefundEffect:
    refunds = auto = fen = review = 0
    for choice in choices:
        refunds += 1
        if choice.auto_approved:
            auto += 1
            fen += choice.amount_fen
        elif choice.state == "reviewing":
            review += 1
    return RefundEffect(refunds, auto, fen, review)


# ---- comparing ----------------------------------------------------------------------------------------
C = TypeVar("C", RouteChoice, RefundChoice)
E = TypeVar("E", RoutingEffect, RefundEffect)


@dataclass
class Comparison(Generic[C, E]):
    """Live against shadow over what both decided."""

    compared: int
    differing: int
    only_live: int
    only_shadow: int
    live_effect: E
    shadow_effect: E
    moves: dict[str, int] = field(default_factory=dict)  # "<live> -> <shadow>": how often
    examples: list[tuple[C, C]] = field(default_factory=list)  # (live, shadow), earliest first
    # Both decided, but the shadow before it had read what the decision rests on (its replay): not compared.
    unjudged: int = 0

    @property
    def share(self) -> float:
        return round(self.differing / self.compared, 4) if self.compared else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "compared": self.compared, "differing": self.differing, "share": self.share,
            "only_live": self.only_live, "only_shadow": self.only_shadow, "unjudged": self.unjudged,
            "effect": {"live": self.live_effect.__dict__, "shadow": self.shadow_effect.__dict__},
            "moves": self.moves,
            "examples": [{"live": live.to_dict(), "shadow": shadow.to_dict()} for live, shadow in self.examples],
        }  # fmt: skip


def _compare(live: Mapping[str, C], shadow: Mapping[str, C], differ: Callable[[C, C], bool],
             effect: Callable[[Iterable[C]], E], examples: int,
             unjudged: Callable[[C, C], bool] | None = None) -> Comparison[C, E]:  # fmt: skip
    decided = sorted(live.keys() & shadow.keys(), key=lambda k: (live[k].decided_ms, k))
    both = [k for k in decided if unjudged is None or not unjudged(live[k], shadow[k])]
    differing = [k for k in both if differ(live[k], shadow[k])]
    moves = Counter(f"{live[k].label} -> {shadow[k].label}" for k in differing)
    return Comparison(
        compared=len(both),
        unjudged=len(decided) - len(both),
        differing=len(differing),
        only_live=len(live.keys() - shadow.keys()),
        only_shadow=len(shadow.keys() - live.keys()),
        live_effect=effect(live[k] for k in both),
        shadow_effect=effect(shadow[k] for k in both),
        moves=dict(moves.most_common()),
        examples=[(live[k], shadow[k]) for k in differing[: max(examples, 0)]],
    )


def routes_differ(live: RouteChoice, shadow: RouteChoice) -> bool:
    return live.assignments != shadow.assignments


def refunds_differ(live: RefundChoice, shadow: RefundChoice) -> bool:
    if live.auto_approved != shadow.auto_approved:
        return True
    return bool(live.state and shadow.state and live.state != shadow.state)


def compare_routing(live: Mapping[str, RouteChoice], shadow: Mapping[str, RouteChoice],
                    examples: int = DEFAULT_EXAMPLES) -> Comparison[RouteChoice, RoutingEffect]:  # fmt: skip
    return _compare(live, shadow, routes_differ, routing_effect, examples)


def decided_before_its_order(live: RefundChoice, shadow: RefundChoice) -> bool:
    """The shadow decided the refund without its order, which the live run had: replaying, it read the request
    before the order (two topics, read side by side from their beginning), a gap of the replay, not of the rule."""
    return shadow.reason == ORDER_UNKNOWN and live.reason != ORDER_UNKNOWN


def compare_refunds(live: Mapping[str, RefundChoice], shadow: Mapping[str, RefundChoice],
                    examples: int = DEFAULT_EXAMPLES) -> Comparison[RefundChoice, RefundEffect]:  # fmt: skip
    return _compare(live, shadow, refunds_differ, refund_effect, examples, unjudged=decided_before_its_order)
