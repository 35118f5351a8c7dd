"""The refunds' HTTP view: ``/orders/{order_id}/refunds/{channel_refund_id}``, answered by the worker
owning the order (a refund lives on its order's partition)."""

from __future__ import annotations

from typing import Any

import faust

from agents.refunds.run_refunds import RunRefunds
from streams.contract.keys import refund_key
from streams.engine.host import answer_for_key
from streams.engine.loop import Engine


def register(app: faust.App, engine: Engine, refunds: RunRefunds) -> None:
    @app.page("/orders/{order_id}/refunds/{channel_refund_id}")
    async def refund_view(web: Any, request: Any, order_id: str, channel_refund_id: str) -> Any:
        refund_id = refund_key(order_id.split(":", 1)[0], channel_refund_id)
        return await answer_for_key(web, request, engine, order_id,
                                    lambda: refunds.view_of(engine.read, order_id, refund_id), "order_id")  # fmt: skip
