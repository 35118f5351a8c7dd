"""Order commands: an order's state now."""

from __future__ import annotations

import typer

from streams.cli import worker_view


def order(order_id: str = typer.Argument(..., help="<channel>:<channel_order_id>")) -> None:
    """An order's state now, from the worker that owns it."""
    worker_view(f"/orders/{order_id}")
