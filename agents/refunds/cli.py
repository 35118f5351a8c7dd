"""Refund commands: one refund's state now (``stockflow refunds show``)."""

from __future__ import annotations

import typer

from streams.cli import worker_view

refunds = typer.Typer(no_args_is_help=True, help="Refunds: one refund now, the monthly exception list.")


@refunds.command("show")
def show(
    order_id: str = typer.Argument(..., help="<channel>:<channel_order_id>"),
    channel_refund_id: str = typer.Argument(..., help="the channel's refund id"),
) -> None:
    """A refund's state, stage times, approval and return leg, from the worker that owns its order."""
    worker_view(f"/orders/{order_id}/refunds/{channel_refund_id}")
