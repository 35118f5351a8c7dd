"""The ``stockflow check`` command: the independent audit of the pool against the topics."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from streams.cli import console
from streams.settings import Settings


def check(
    wait: float = typer.Option(0.0, help="Keep re-checking up to this many seconds while there is drift."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Audit the stock pool against the topics with independent code; exit 1 on any drift."""
    import json

    from agents.audit.checker import audit

    settings = Settings()
    deadline = time.monotonic() + wait
    report = audit(settings)
    while not report.ok and time.monotonic() < deadline:
        time.sleep(1.0)
        report = audit(settings)
    if as_json:
        print(json.dumps(report.summary()))
    else:
        table = Table("check", "result", title="stockflow check")
        for name, value in report.summary().items():
            table.add_row(name, str(value))
        console.print(table)
        for sa in report.drifted[:20]:
            rebuilt = ("unjudged" if sa.on_hand_unjudged
                       else str(sa.expected_on_hand) if sa.expected_on_hand == sa.expected_on_hand_max
                       else f"{sa.expected_on_hand}..{sa.expected_on_hand_max}")  # fmt: skip
            console.print(
                f"[red]drift[/red] {sa.sku}: on-hand table {sa.table_on_hand} vs rebuilt {rebuilt}; "
                f"open table {sa.table_open} vs rebuilt {sa.expected_open}; "
                f"missing {sa.open_keys_missing_in_table[:5]} extra {sa.open_keys_only_in_table[:5]}"
                + (f"; per warehouse {', '.join(sa.warehouses_off)}" if sa.warehouses_off else "")
            )
        for sa in [a for a in report.skus.values() if a.oversold][:20]:
            console.print(f"[red]oversold[/red] {sa.sku}: {sa.regular_oversold} beyond on-hand, "
                          f"{sa.presale_oversold} beyond the presale cap (the most at any moment)")  # fmt: skip
        for label, items in (("lost order", report.lost_orders), ("double hold", report.double_holds),
                             ("rejected but held", report.rejected_but_held),
                             ("ended but still holding", report.ended_but_held),
                             ("unreadable input no one dead-lettered", report.inputs_unrefused),
                             ("unreadable output", report.outputs_unreadable),
                             ("restocked, not returned", report.restocked_unreturned),
                             ("VIP set-aside misused", report.vip_set_aside_misused),
                             ("reserved but not every line held", report.reserved_incomplete),
                             ("line held as another SKU or quantity", report.lines_misheld),
                             ("paid or reserved without a hold", report.paid_without_hold),
                             ("shipped, never taken off the shelf", report.shipped_not_deducted),
                             ("warehouse overbooked", report.warehouse_overbooked),
                             ("paid, then timed out as unpaid", report.paid_but_timed_out),
                             ("timer that did not fire", report.overdue_timers),
                             ("timer that fired before its time", report.early_timers),
                             ("refund paid twice", report.refunds_paid_twice),
                             ("refund lost", report.refunds_lost),
                             ("refund paid against the rules", report.refunds_paid_unapproved),
                             ("order refunded above its price", report.orders_refunded_above_price)):  # fmt: skip
            for item in items[:20]:
                console.print(f"[red]{label}[/red] {item}")
        # Neither a problem nor a pass: what the topics' retention no longer lets the audit see.
        for key, reason in list(report.unjudged.items())[:20]:
            console.print(f"[yellow]unjudged[/yellow] {key}: {reason}")
    raise typer.Exit(0 if report.ok else 1)
