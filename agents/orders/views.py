"""The orders' HTTP view: ``/orders/{order_id}``, answered by the worker owning the order."""

from __future__ import annotations

from typing import Any

import faust

from agents.orders.run_lifecycle import RunLifecycle
from streams.engine.host import answer_for_key
from streams.engine.loop import Engine


def register(app: faust.App, engine: Engine, lifecycle: RunLifecycle) -> None:
    @app.page("/orders/{order_id}")
    async def order_view(web: Any, request: Any, order_id: str) -> Any:
        return await answer_for_key(web, request, engine, order_id,
                                    lambda: lifecycle.view_of(engine.read, order_id), "order_id")  # fmt: skip
