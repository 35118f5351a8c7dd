"""The pool's HTTP view: ``/stock/{sku}``, answered from committed state by the worker owning the SKU."""

from __future__ import annotations

from typing import Any

import faust

from agents.inventory.hold_stock import HoldStock
from streams.engine.host import answer_for_key
from streams.engine.loop import Engine


def register(app: faust.App, engine: Engine, pool: HoldStock) -> None:
    @app.page("/stock/{sku}")
    async def stock_view(web: Any, request: Any, sku: str) -> Any:
        return await answer_for_key(web, request, engine, sku, lambda: pool.view(engine.read, sku), "sku")
