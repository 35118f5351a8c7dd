"""Which SKUs are split into stock buckets, as every worker's order lifecycle sees it.

Reads ``stock.hot-skus`` (compacted, written by ``agents.inventory.hold_stock``) from the beginning on
every worker, outside any consumer group (``streams.engine.follow``); owns nothing stored. The lifecycle
sends a hot SKU's RESERVE straight to one of its buckets by it. The view may lag the pool by a poll:
a RESERVE the view sends to the home of a SKU that just became hot is passed on by the home, one sent
to a bucket of a SKU that just went cold is passed home by the bucket, so a stale view costs a hop,
never a wrong decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import faust

from streams.contract.codec import Codec
from streams.contract.topics import STOCK_HOT_SKUS
from streams.engine.follow import follow
from streams.engine.runtime import Runtime
from streams.settings import Settings


@dataclass
class HotSkus:
    skus: dict[str, int] = field(default_factory=dict)  # SKU -> buckets taking reservations
    ready: bool = False

    def apply(self, record: dict[str, Any]) -> None:
        # Replaced whole, never edited in place: the engine's thread reads it while the follower writes.
        if record["buckets"] > 1:
            self.skus = {**self.skus, record["sku"]: record["buckets"]}
        elif record["sku"] in self.skus:
            self.skus = {k: v for k, v in self.skus.items() if k != record["sku"]}

    def buckets(self, sku: str) -> int:
        return self.skus.get(sku, 0)


def register(app: faust.App, rt: Runtime) -> HotSkus:
    view = HotSkus()

    @app.task
    async def follow_hot_skus() -> None:
        await _follow(view, rt.settings, rt.codec)

    return view


async def _follow(view: HotSkus, settings: Settings, codec: Codec) -> None:
    def apply(kind: str, record: dict[str, Any]) -> None:
        if kind == "HotSku":
            view.apply(record)

    def polled(caught_up: bool) -> None:
        if caught_up:
            view.ready = True

    await follow(settings, codec, [STOCK_HOT_SKUS.name], "hot-skus", apply, polled)
