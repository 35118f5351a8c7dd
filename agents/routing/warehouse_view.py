"""What routing knows about warehouses: free stock per SKU and the rolling on-time rate.

Reads: ``stock.levels`` (compacted; on-hand and allocated per warehouse, per SKU) and
``warehouse.performance`` (on time or late, per shipment), every partition, from the beginning,
with a plain consumer outside any group - every worker keeps the whole view.
Writes: nothing. Owns: the in-memory ``WarehouseView`` the order agent routes with.

The view can be a refresh interval behind the pool. That is safe: the pool checks each allocation
against its own state (``agents.inventory.rules.allocate``) and refuses what a warehouse no longer has; the
view only subtracts what it has just planned so two orders in a row do not aim at the same units.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import faust

from agents.routing import scoring as routing
from agents.routing.geo import Place, locate
from agents.routing.scoring import Line, OnTimeRate, Site
from agents.routing.warehouses import load_warehouses
from streams.contract.codec import Codec
from streams.contract.topics import STOCK_LEVELS, WAREHOUSE_PERFORMANCE
from streams.engine.follow import follow
from streams.engine.runtime import Runtime
from streams.settings import Settings

log = logging.getLogger(__name__)
# Shipment outcomes remembered to drop a repeat: a redelivery comes soon after the original, and the
# topic is read from the beginning on every start, so remembering all of them would grow with it.
SEEN_OUTCOMES_MAX = 100_000
# A plan stops counting this long after it was made even if no stock level has confirmed it (levels
# arrive within a second or two; a follower stalled by a broker outage must not let the plans of a
# hot SKU pile up, every decision walking all of them). Dropping one early only risks an allocation
# the pool refuses, never an oversell.
PLANS_KEPT_MS = 60_000


@dataclass
class WarehouseView:
    sites: dict[str, Site]
    weights: dict[str, float]
    rates: dict[str, OnTimeRate]
    free: dict[tuple[str, str], int] = field(default_factory=dict)  # (warehouse, sku) -> free units
    planned: dict[str, list[tuple[int, str, int]]] = field(default_factory=dict)  # sku -> (ms, wh, qty)
    seen_outcomes: dict[str, None] = field(default_factory=dict)  # insertion order: the oldest goes first
    ready: bool = False  # read up to where the topics ended when it started; routing waits until then

    @classmethod
    def from_settings(cls, settings: Settings) -> WarehouseView:
        sites, rates = {}, {}
        for wh in load_warehouses(settings.warehouses_file).values():
            place = locate(wh.province, wh.city)
            if place is None:
                raise ValueError(f"warehouse {wh.id}: {wh.province}/{wh.city} is not in the centroid table")
            sites[wh.id] = Site(wh.id, place, wh.cost_per_order)
            prior = wh.on_time_prior if wh.on_time_prior is not None else settings.on_time_prior
            rates[wh.id] = OnTimeRate(prior, settings.on_time_prior_weight, settings.on_time_window)
        return cls(sites, routing.check_weights(settings.routing_weights), rates)

    def apply_level(self, level: dict[str, Any]) -> None:
        sku = level["sku"]
        allocated = level.get("allocated_by_warehouse", {})
        for wh in self.sites:
            on_hand = max(0, level["on_hand_by_warehouse"].get(wh, 0))
            self.free[(wh, sku)] = on_hand - allocated.get(wh, 0)
        # Plans the pool has seen are in this level now.
        self.planned[sku] = [p for p in self.planned.get(sku, []) if p[0] > level["newest_change_ms"]]

    def apply_outcome(self, outcome: dict[str, Any]) -> None:
        if outcome["event_id"] in self.seen_outcomes or outcome["warehouse_id"] not in self.rates:
            return
        self.seen_outcomes[outcome["event_id"]] = None
        if len(self.seen_outcomes) > SEEN_OUTCOMES_MAX:
            del self.seen_outcomes[next(iter(self.seen_outcomes))]
        self.rates[outcome["warehouse_id"]].add(bool(outcome["on_time"]))

    def decide(self, address: dict[str, str], lines: list[Line], now_ms: int) -> dict[str, Any] | None:
        """A routing decision (as ``agents.orders.rules.on_route_decided`` takes it), or None."""
        customer: Place | None = locate(address.get("province", ""), address.get("city", ""))
        if customer is None:
            return None
        # Only this order's SKUs: copying the whole warehouse x SKU map cost more than the rules.
        skus = {ln.sku for ln in lines}
        free = {(wh, sku): self.free.get((wh, sku), 0) for wh in self.sites for sku in skus}
        for sku in skus:
            for _, wh, qty in self._current_plans(sku, now_ms):
                free[(wh, sku)] = free.get((wh, sku), 0) - qty
        on_time = {wh: rate.rate() for wh, rate in self.rates.items()}
        decision = routing.route(self.sites, customer, lines, free, on_time, self.weights)
        if decision is None:
            return None
        by_no = {ln.line_no: ln for ln in lines}
        for wh, nos in decision.assignments.items():
            for n in nos:
                self.planned.setdefault(by_no[n].sku, []).append((now_ms, wh, by_no[n].qty))
        return {"assignments": decision.assignments, "candidates": decision.candidates, "weights": decision.weights}

    def _current_plans(self, sku: str, now_ms: int) -> list[tuple[int, str, int]]:
        plans = self.planned.get(sku, [])
        if plans and plans[0][0] < now_ms - PLANS_KEPT_MS:  # appended in time order: the oldest first
            plans = self.planned[sku] = [p for p in plans if p[0] >= now_ms - PLANS_KEPT_MS]
        return plans


def register(app: faust.App, rt: Runtime) -> WarehouseView:
    settings = rt.settings
    view = WarehouseView.from_settings(settings)

    @app.task
    async def follow_warehouses() -> None:
        await _follow(view, settings, rt.codec)

    return view


async def _follow(view: WarehouseView, settings: Settings, codec: Codec) -> None:
    def apply(kind: str, record: dict[str, Any]) -> None:
        if kind == "StockLevel":
            view.apply_level(record)
        elif kind == "ShipmentOutcome":
            view.apply_outcome(record)

    def polled(caught_up: bool) -> None:
        if caught_up and not view.ready:
            view.ready = True  # every warehouse's stock as it stood when the worker started: route now

    await follow(settings, codec, [STOCK_LEVELS.name, WAREHOUSE_PERFORMANCE.name], "warehouse-view", apply, polled)
