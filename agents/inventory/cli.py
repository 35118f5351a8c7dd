"""Inventory commands: a SKU's stock now, stock documents in (receive, count, correct), and VIP
overrides (request, approve)."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from streams.cli import console, fail, worker_view
from streams.settings import Settings

override = typer.Typer(no_args_is_help=True, help="VIP overrides: release locked stock to a VIP order.")


class _ShowByDefault(TyperGroup):
    """``stockflow stock SKU`` reads as ``stockflow stock show SKU``: the verbs are the exceptions."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:  # typer vendors click: its own Context
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["show", *args]
        return super().resolve_command(ctx, args)


stock_app = typer.Typer(
    cls=_ShowByDefault,
    no_args_is_help=True,
    help="A SKU's stock now (`stockflow stock SKU`), stock documents in (receive, count, correct), and hot SKUs "
    "split into stock buckets (hot, unhot).",
)


@stock_app.command("show")
def stock(sku: str) -> None:
    """A SKU's availability now, from the worker that owns it."""
    worker_view(f"/stock/{sku}")


def _stock_document(kind: str, sku: str, warehouse: str, qty: int, doc: str, reason: str) -> None:
    """Check a stock document as ``POST /v1/wms/stock`` does and write it to ``stock.adjustments``."""
    from agents.intake.mapping import Catalogue, IntakeError, OrderLimits
    from agents.intake.stock import build_adjustment
    from agents.routing.warehouses import load_warehouses
    from streams.engine.clock import wall_ms
    from streams.engine.producer import EventProducer

    settings = Settings()
    body = {"document_id": doc, "kind": kind, "sku": sku, "warehouse_id": warehouse, "qty": qty, "reason": reason}
    try:
        mapped = build_adjustment(body, tuple(load_warehouses(settings.warehouses_file)),
                                  Catalogue.load(settings.catalogue_file), OrderLimits.from_settings(settings),
                                  wall_ms())  # fmt: skip
    except IntakeError as err:
        fail(f"{err.reason} ({err.field}): {err.detail}")
    try:
        producer = EventProducer(settings)
        producer.send(mapped.topic, mapped.key, mapped.event_type, mapped.record)
        producer.flush()
    except Exception as exc:  # noqa: BLE001 - a command turns any failure to reach the broker into one line
        fail(f"not written to {settings.bootstrap}: {exc}")
    change = f"= {qty}" if kind == "count" else f"{qty:+d}"
    console.print(f"{kind} {doc}: {sku} {change} at {warehouse}, written to stock.adjustments "
                  "(the pool applies a document once per SKU)")  # fmt: skip


WAREHOUSE = typer.Option(..., "--warehouse", "-w", help="The warehouse id (routing configuration).")
DOC = typer.Option(..., "--doc", help="The document id: sending the same document again changes nothing.")
REASON = typer.Option("", "--reason", help="Why, for the people reading it later.")


@stock_app.command("receive")
def stock_receive(
    sku: str,
    warehouse: str = WAREHOUSE,
    qty: int = typer.Option(..., min=1, help="Units received."),
    doc: str = DOC,
    reason: str = REASON,
) -> None:
    """Units arrived at a warehouse (a receipt): on-hand goes up by QTY."""
    _stock_document("receipt", sku, warehouse, qty, doc, reason)


@stock_app.command("count")
def stock_count(
    sku: str,
    warehouse: str = WAREHOUSE,
    qty: int = typer.Option(..., min=0, help="Units the warehouse holds now."),
    doc: str = DOC,
    reason: str = REASON,
) -> None:
    """A stock count: the warehouse's on-hand becomes QTY, whatever it was."""
    _stock_document("count", sku, warehouse, qty, doc, reason)


@stock_app.command("correct")
def stock_correct(
    sku: str,
    warehouse: str = WAREHOUSE,
    qty: int = typer.Option(..., help="Units more, or (negative) fewer; not 0."),
    doc: str = DOC,
    reason: str = REASON,
) -> None:
    """A correction: on-hand goes up (or, with a negative QTY, down) by QTY."""
    _stock_document("correction", sku, warehouse, qty, doc, reason)


def send_hot(sku: str, buckets: int, operator: str, reason: str, settings: Settings | None = None) -> None:
    """Ask the SKU's pool to split it into ``buckets`` stock buckets (0: merge them back): a ``HotSku`` on
    ``ops.overrides``; the pool says what it made of it on ``stock.hot-skus``."""
    from streams.contract.topics import OPS_OVERRIDES
    from streams.engine.clock import wall_ms
    from streams.engine.producer import EventProducer

    settings = settings or Settings()
    producer = EventProducer(settings)
    producer.send(OPS_OVERRIDES.name, sku, "HotSku", {
        "event_id": f"hot:{sku}:{buckets}:{operator}:{wall_ms()}", "event_time_ms": wall_ms(), "sku": sku,
        "buckets": buckets, "state": "", "operator": operator, "reason": reason,
    })  # fmt: skip
    producer.flush()


@stock_app.command("hot")
def stock_hot(
    sku: str,
    buckets: int = typer.Option(..., "--buckets", min=2, max=64, help="Stock buckets (partitions) to split it into."),
    operator: str = typer.Option("", help="Who asks (kept with the request)."),
    reason: str = REASON,
) -> None:
    """Split a SKU's stock into buckets on several partitions, so several workers sell it at once."""
    settings = Settings()
    try:
        send_hot(sku, buckets, operator, reason, settings)
    except Exception as exc:  # noqa: BLE001 - a command turns any failure to reach the broker into one line
        fail(f"hot {sku} not sent: {exc}")
    console.print(f"{sku}: split into {buckets} buckets requested; `stockflow stock {sku}` shows them")
    if buckets > settings.partitions:
        console.print(f"[yellow]warning:[/yellow] {buckets} buckets on {settings.partitions} partitions "
                      "(STOCKFLOW_PARTITIONS): some share a partition, which sells no faster than one bucket "
                      "there")  # fmt: skip


@stock_app.command("unhot")
def stock_unhot(
    sku: str,
    operator: str = typer.Option("", help="Who asks (kept with the request)."),
    reason: str = REASON,
) -> None:
    """Merge a hot SKU's buckets back: they stop taking new lines, send their units home, finish open ones."""
    try:
        send_hot(sku, 0, operator, reason)
    except Exception as exc:  # noqa: BLE001 - as above
        fail(f"unhot {sku} not sent: {exc}")
    console.print(f"{sku}: merge requested; its buckets finish their open lines and send their units home (a SKU "
                  f"that is not hot stays as it is); `stockflow stock {sku}` shows it")  # fmt: skip


WAIT = typer.Option(30.0, "--wait", min=0, help="Seconds to wait for the outcome, for an approval its VIP order's "
                                                "answer to the offer (0: send only, do not wait).")  # fmt: skip


def _send_override(action: str, override_id: str, sku: str, qty: int, vip_order: str, operator: str,
                   reason: str, wait_s: float) -> None:  # fmt: skip
    """Send the action to ``ops.overrides`` and print the pool's answer; exit 1 on a refusal or no answer."""
    from agents.inventory.override_outcome import OutcomeWatch, verdict
    from streams.contract.topics import OPS_OVERRIDES
    from streams.engine.clock import wall_ms
    from streams.engine.producer import EventProducer

    settings = Settings()
    watch, answer, offered = None, None, []

    def on_progress(record: dict[str, Any]) -> None:
        offered.append(record)
        console.print(verdict(record).line, soft_wrap=True)

    try:
        if wait_s > 0:  # positioned before sending: the answer may come faster than we start listening
            watch = OutcomeWatch(settings)
        producer = EventProducer(settings)
        producer.send(OPS_OVERRIDES.name, sku, "VipOverride", {
            "event_id": f"{override_id}:{action}:{operator}:{wall_ms()}", "event_time_ms": wall_ms(),
            "override_id": override_id, "action": action, "sku": sku, "qty": qty, "vip_order_id": vip_order,
            "operator": operator, "reason": reason,
        })  # fmt: skip
        producer.flush()
        if watch is None:
            console.print(f"{action} {override_id} sent; the outcome is written to audit.overrides")
            return
        answer = watch.wait(override_id, action, wait_s, on_progress)
    except Exception as exc:  # noqa: BLE001 - a command turns any failure to reach the broker into one line
        fail(f"{action} {override_id} not sent to {settings.bootstrap}: {exc}")
    finally:
        if watch is not None:
            watch.close()
    if answer is None and offered:
        fail(f"{action} {override_id} OFFERED, but its VIP order has not answered yet within {wait_s:g}s (timeout): "
             "the override is APPLIED or REFUSED once it does; `stockflow override list` shows it later")  # fmt: skip
        return
    if answer is None:
        fail(f"{action} {override_id} sent, but no answer on audit.overrides within {wait_s:g}s (timeout): "
             "is a worker running? `stockflow override list` shows it later")  # fmt: skip
        return
    result = verdict(answer)
    if not result.ok:
        fail(result.line)
    console.print(result.line, soft_wrap=True)


@override.command("request")
def override_request(
    override_id: str = typer.Option(..., "--id"),
    sku: str = typer.Option(...),
    qty: int = typer.Option(..., min=1),
    vip_order: str = typer.Option(..., help="<channel>:<channel_order_id> of the VIP order"),
    requester: str = typer.Option(...),
    reason: str = typer.Option(...),
    wait: float = WAIT,
) -> None:
    """Ask to release locked stock to a VIP order (nothing moves until someone else approves)."""
    _send_override("REQUEST", override_id, sku, qty, vip_order, requester, reason, wait)


@override.command("approve")
def override_approve(
    override_id: str = typer.Option(..., "--id"),
    sku: str = typer.Option(...),
    approver: str = typer.Option(..., help="Must differ from the requester."),
    wait: float = WAIT,
) -> None:
    """Approve a requested override; the pool offers it to the VIP order, which claims it (APPLIED: free units set
    aside, the rest pledged: unpaid holds of other orders are released only as its lines need them) or refuses it
    (an order rejected, cancelled, timed out or placed already cannot take a set-aside), and audits who, when, why,
    how much."""
    _send_override("APPROVE", override_id, sku, 0, "", approver, "", wait)


@override.command("list")
def override_list(
    as_json: bool = typer.Option(False, "--json", help="Print JSON: the newest audit record of each override."),
    limit: int = typer.Option(20, min=1, help="How many overrides, newest first."),
) -> None:
    """Recent overrides and what became of them, from audit.overrides."""
    import json

    from rich.table import Table

    from agents.inventory.override_outcome import latest_per_override, read_audits

    settings = Settings()
    try:
        rows = latest_per_override(read_audits(settings), limit)
    except Exception as exc:  # noqa: BLE001 - a command turns any failure to reach the broker into one line
        fail(f"could not read audit.overrides at {settings.bootstrap}: {exc}")
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        console.print("no overrides on audit.overrides")
        return
    table = Table("override", "outcome", "sku", "qty", "vip order", "requester", "approver", "detail", "reason")
    for r in rows:
        table.add_row(*(str(r.get(c, "")) for c in ("override_id", "outcome", "sku", "qty", "vip_order_id",
                                                     "requester", "approver", "detail", "reason")))  # fmt: skip
    console.print(table)
