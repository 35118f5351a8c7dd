"""Inventory commands: a SKU's stock now, and VIP overrides (request, approve)."""

from __future__ import annotations

import typer

from streams.cli import console, worker_view
from streams.settings import Settings

override = typer.Typer(no_args_is_help=True, help="VIP overrides: release locked stock to a VIP order.")


def stock(sku: str) -> None:
    """A SKU's availability now, from the worker that owns it."""
    worker_view(f"/stock/{sku}")


def _send_override(action: str, override_id: str, sku: str, qty: int, vip_order: str, operator: str,
                   reason: str) -> None:  # fmt: skip
    from streams.contract.topics import OPS_OVERRIDES
    from streams.engine.clock import wall_ms
    from streams.engine.producer import EventProducer

    producer = EventProducer(Settings())
    producer.send(OPS_OVERRIDES.name, sku, "VipOverride", {
        "event_id": f"{override_id}:{action}:{operator}:{wall_ms()}", "event_time_ms": wall_ms(),
        "override_id": override_id, "action": action, "sku": sku, "qty": qty, "vip_order_id": vip_order,
        "operator": operator, "reason": reason,
    })  # fmt: skip
    producer.flush()
    console.print(f"{action} {override_id} sent; the outcome is written to audit.overrides")


@override.command("request")
def override_request(
    override_id: str = typer.Option(..., "--id"),
    sku: str = typer.Option(...),
    qty: int = typer.Option(..., min=1),
    vip_order: str = typer.Option(..., help="<channel>:<channel_order_id> of the VIP order"),
    requester: str = typer.Option(...),
    reason: str = typer.Option(...),
) -> None:
    """Ask to release locked stock to a VIP order (nothing moves until someone else approves)."""
    _send_override("REQUEST", override_id, sku, qty, vip_order, requester, reason)


@override.command("approve")
def override_approve(
    override_id: str = typer.Option(..., "--id"),
    sku: str = typer.Option(...),
    approver: str = typer.Option(..., help="Must differ from the requester."),
) -> None:
    """Approve a requested override; the pool applies it and audits who, when, why, how much."""
    _send_override("APPROVE", override_id, sku, 0, "", approver, "")
