"""Run refunds: the refunds' engine processor.

Reads: ``refund.events`` (channel requests, customer-service reviews, return shipments, warehouse
receipts and QC, marketplace settlements, cancellations) and ``refund.issued`` (the connector: the
marketplace accepted a refund instruction), both keyed and partitioned by order id. Reads, never
writes, the order store ``orders_by_id`` of the same partition (the order's state, delivery time,
amount, what was paid for it, custom lines and customer), which ``agents.orders.run_lifecycle`` owns.
Writes: ``refund.states`` (every transition, keyed by refund id, with the order's customer: the
health score counts a customer's returns from it), ``refund.instructions`` (pay this back on the
original payment path), ``stock.returns`` (resellable returned units, keyed by SKU),
``refund.order-cancels`` (a refund-only approved before shipment cancels its order), alerts (SOP
breaches, reconciliation) and dead letters (events a refund's state does not allow, callbacks
whose refund was never requested in the time they were kept, and reviews kept for a channel's
precondition - Kuaishou's return tracking number - that never came before the refund was let go).
Owns: store ``refunds_by_id`` (changelog ``<app>.refunds_by_id.changelog``): one ``RefundRecord``
per refund (with the reviews that wait for its channel's precondition, and return receipts that wait for
their order's shipment notice), or per refund id whose
callbacks (a settlement, a review, a withdrawal, the return's shipment or receipt) wait for its
request; store ``approved_refunds_by_order``:
per order, what its approved or marketplace-settled refunds pay back (what it has left to pay back, so
one order is never refunded twice under two refund ids) and the units of each line its returns put back
on hand (so one unit is never restocked twice under two refund ids), each kept until its refund is
purged, and what the buyer paid for it (the bound still holds once the order itself is purged).
Timers: each refund's next SOP limit and its purge ``STOCKFLOW_REFUND_RETENTION_S`` after it last moved
(finished, or still open - a refund that ended with its parcel's QC owed too - then with a RED alert, so
no lost callback keeps a record for ever); callbacks before their request are flagged after
``STOCKFLOW_PARKED_GRACE_S`` and dead-lettered (``unknown_refund``) after
``STOCKFLOW_PARKED_PAYMENT_GRACE_S``; a return receipt waiting for its order's shipment is looked at
again every ``SHIPMENT_RECHECK_MS`` and dead-lettered (``nothing_shipped``) after that grace.

The rules are ``agents.refunds.rules``. The engine commits a batch's outputs, the changed refunds and
the input offsets in one transaction, so an instruction leaves exactly once with its refund's state.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from agents.alerting.alerts import AlertSpec, alert
from agents.orders.rules import BALANCE_UNPAID, REFUND_ONLY_CANCEL, OrderRecord
from agents.orders.run_lifecycle import ORDER_RECORDS
from agents.orders.run_lifecycle import STORE as ORDER_STORE
from agents.refunds import rules as flow
from agents.refunds.rules import OrderFacts, RefundEffects, RefundRecord, RefundRules
from streams.contract.keys import order_key, refund_key
from streams.contract.reasons import Reason, Refusal
from streams.contract.records import OrderCancelled, RefundInstruction, RefundStateChanged, StockAdjusted
from streams.contract.topics import (
    ALERTS,
    REFUND_EVENTS,
    REFUND_INSTRUCTIONS,
    REFUND_ISSUED,
    REFUND_ORDER_CANCELS,
    REFUND_STATES,
    STOCK_RETURNS,
)
from streams.engine.processor import Context, Processor
from streams.engine.state import StoreSpec, StoreTransaction, records_serde
from streams.resources import packaged
from streams.settings import Settings

STAGE = "agents.refunds.run_refunds"
STORE = "refunds_by_id"
APPROVED_BY_ORDER = "approved_refunds_by_order"
# In an order's entry of APPROVED_BY_ORDER beside its refunds' amounts: what the buyer paid for the order, so
# a refund reviewed after the order was purged (30 days; refunds are kept 90) is still bounded by it.
ORDER_PAID = "@order_paid_fen"
# And, per refund that put a return back on hand, the units of each line it put back (``RESTOCKED`` + line no +
# ":" + refund id -> units), so the order's other returns restock no more than the line had; kept, like its
# amount, until the refund is purged. Every key of the entry that is no refund id begins with "@".
RESTOCKED = "@restocked:"
REFUND_RECORDS = records_serde(RefundRecord.from_dict)


def refund_rules(settings: Settings) -> RefundRules:
    path = settings.refund_rules_file or packaged("agents.refunds", "config", "refund_rules.toml")
    return flow.load_refund_rules(path, respond_ms=int(settings.refund_respond_s * 1000),
                                  qc_ms=int(settings.refund_qc_s * 1000),
                                  settle_ms=int(settings.refund_settle_s * 1000),
                                  return_ms=int(settings.refund_return_s * 1000),
                                  parked_grace_ms=int(settings.parked_grace_s * 1000),
                                  parked_keep_ms=int(settings.parked_payment_grace_s * 1000))  # fmt: skip


def order_facts(order: OrderRecord | None, refunded_fen: int = 0) -> OrderFacts:
    """What a refund needs of its order; of one unknown, what its other refunds pay back (``refunded_fen``) all the
    same, and of one purged, what its slim record kept (what was paid, its lines) - still unknown, so nothing of
    it is approved automatically, but bounded."""
    if order is None or not (order.state or order.tombstone):
        return OrderFacts(refunded_fen=refunded_fen)
    kept = OrderFacts(
        amount_fen=order.amount_fen, paid_fen=order.paid_fen, custom=order.custom, customer_id=order.customer_id,
        skus={n: str(line["sku"]) for n, line in order.lines.items()},
        qtys={n: int(line["qty"]) for n, line in order.lines.items()}, refunded_fen=refunded_fen,
    )  # fmt: skip
    if order.tombstone:
        return kept
    return replace(
        kept, known=True, state=order.state,
        delivered_at_ms=order.delivered_at_ms or order.stage_times.get("delivered", 0),
        deposit_forfeited=order.state == "cancelled" and order.reason == BALANCE_UNPAID,
        shipped=tuple(order.shipped_lines),
    )  # fmt: skip


@dataclass
class RunRefunds(Processor):
    rules: RefundRules | None = None
    retention_ms: int = 90 * 86_400_000

    @classmethod
    def from_settings(cls, settings: Settings) -> RunRefunds:
        return cls(
            name="run_refunds",
            inputs=(REFUND_EVENTS, REFUND_ISSUED),
            stores=(StoreSpec(STORE, REFUND_RECORDS), StoreSpec(APPROVED_BY_ORDER)),
            reads=(StoreSpec(ORDER_STORE, ORDER_RECORDS),),
            timer_store=STORE,
            rules=refund_rules(settings),
            retention_ms=int(settings.refund_retention_s * 1000),
        )

    @property
    def _rules(self) -> RefundRules:
        assert self.rules is not None
        return self.rules

    def key_of(self, event_type: str, record: dict[str, Any]) -> str | None:
        if event_type == "RefundIssued":
            return str(record["order_id"])
        return order_key(record["channel"], record["channel_order_id"])

    # ---- state -----------------------------------------------------------------------------------------
    def _due(self, rec: RefundRecord) -> int:
        if not rec.state:
            return flow.parked_due_ms(rec, self._rules)
        # A limit still to run out keeps the record past its purge time (``on_timer``), so its deadline is the
        # next moment to look; a past purge time would fire again at every batch until then.
        return flow.next_deadline_ms(rec, self._rules) or self._idle_since(rec) + self.retention_ms

    @staticmethod
    def _idle_since(rec: RefundRecord) -> int:
        """Since when a refund has not moved, finished or not (its parcel's QC owed counts as open): after the
        retention it goes. A finished one counts from its last move too, not from when it ended: a closed refund's
        parcel checked late put units back on hand then, and the order's record of them (one unit is never restocked
        twice under two refund ids) must last as long as any other refund's."""
        return flow.last_moved_ms(rec)

    def due_ms(self, key: bytes, value: Any) -> int:
        return self._due(value)

    def _store(self, ctx: Context, db: StoreTransaction[RefundRecord], rec: RefundRecord) -> None:
        key = rec.refund_id.encode()
        db.set(key, rec)
        ctx.schedule(key, self._due(rec))

    # ---- events ----------------------------------------------------------------------------------------
    def handle(self, ctx: Context, event_type: str, record: dict[str, Any]) -> None:
        rules, now = self._rules, ctx.now_ms
        db: StoreTransaction[RefundRecord] = ctx.store(STORE)
        if event_type == "RefundIssued":
            refund_id = str(record["refund_id"])
        else:
            refund_id = refund_key(record["channel"], record["channel_refund_id"])
        rec = db.get(refund_id.encode()) or RefundRecord(refund_id=refund_id)
        stages_before = set(rec.stage_times)
        if event_type == "RefundRequested":
            order_id = order_key(record["channel"], record["channel_order_id"])
            fx = flow.on_requested(rec, record, order_id, self._facts(ctx, order_id, refund_id), rules, now)
        elif event_type == "RefundSettled":
            # One before its request is kept for it, not refused.
            facts = self._facts(ctx, rec.order_id, refund_id) if rec.state else None
            fx = flow.on_settled(rec, record, now, facts, rules)
        elif not rec.state:
            fx = RefundEffects()
        else:
            fx = self._take(ctx, rec, event_type, record)
        if fx.refusal is not None:
            ctx.refuse(fx.refusal.reason, fx.refusal.detail)
        if not rec.state:
            self._keep_for_request(ctx, db, rec, event_type, record, fx)
            return  # nothing requested yet: no state to publish
        if rec.settlement_source:
            if fx.dropped_settlement:
                ctx.refuse_kept(rec.settlement_source, STAGE, Reason.UNKNOWN_REFUND, fx.dropped_settlement)
            rec.settlement_source = {}  # its request is here: the settlement is the refund's now, or given up
        if rec.early:
            self._apply_early(ctx, rec, fx)
        self._done(ctx, db, rec, fx, stages_before)

    def _done(self, ctx: Context, db: StoreTransaction[RefundRecord], rec: RefundRecord, fx: RefundEffects,
              stages_before: set[str]) -> None:  # fmt: skip
        """A requested refund after an event or a timer: its limits looked at, what changed published and stored."""
        fx.alerts += flow.check_limits(rec, ctx.now_ms, self._rules)
        new_stages = sorted(set(rec.stage_times) - stages_before - {t[1] for t in fx.transitions})
        if new_stages and not fx.transitions:
            # A return received, checked or paid out while the refund's state stays: the stage time
            # is published now, not at the refund's next transition (the dashboards read it there).
            fx.transitions.append((rec.state, rec.state, ",".join(new_stages)))
        self._publish(ctx, rec, fx)
        self._store(ctx, db, rec)
        self._note_paid_back(ctx, rec, flow.paid_back_fen(rec), fx.restock)

    def _take(self, ctx: Context, rec: RefundRecord, event_type: str, record: dict[str, Any]) -> RefundEffects:
        """An event for a refund already requested: applied, or kept until the refund may take it."""
        if flow.can_keep_early(rec, event_type) and ctx.message is not None:
            # A review before the channel's precondition: a person decided, so it waits for it (``_apply_early``).
            flow.keep_early(rec, event_type, record, ctx.keep_message(), ctx.now_ms)
            return RefundEffects()
        if event_type == "ReturnReceived" and ctx.message is not None and flow.shipment_recheck_due_ms(rec):
            # Receipts wait for the order's shipment already: this one goes behind them, so the first QC stays the
            # one that counts (``_apply_early`` takes them in order); never ahead of them, even with no room left.
            return self._keep_for_shipment(ctx, rec, record, flow.behind_waiting_receipts(rec))
        fx = self._apply(ctx, rec, event_type, record)
        if ctx.message is not None and fx.refusal is not None and flow.can_keep_for_shipment(event_type, fx.refusal):
            # Its order's shipment notice may still come (a WMS's notices can lag its parcels): kept for it.
            return self._keep_for_shipment(ctx, rec, record, fx.refusal)
        return fx

    @staticmethod
    def _keep_for_shipment(ctx: Context, rec: RefundRecord, record: dict[str, Any], full: Refusal) -> RefundEffects:
        """A return receipt kept for its order's shipment notice, behind any kept already, and once (one the WMS sent
        again is nothing new); refused ``full`` when the refund keeps its most callbacks already."""
        if flow.kept_already(rec, record):
            return RefundEffects()
        if len(rec.early) >= flow.MAX_EARLY:
            return RefundEffects(refusal=full)
        flow.keep_for_shipment(rec, record, ctx.keep_message(), ctx.now_ms)
        return RefundEffects()

    def _apply(self, ctx: Context, rec: RefundRecord, event_type: str, record: dict[str, Any],
               kept: dict[str, Any] | None = None) -> RefundEffects:  # fmt: skip
        """An event for a refund already requested; ``kept``: its entry in ``rec.early`` when it waited there."""
        now = ctx.now_ms
        if event_type == "RefundReviewed":
            return flow.on_reviewed(rec, record, self._facts(ctx, rec.order_id, rec.refund_id), self._rules, now)
        if event_type == "ReturnShipped":
            return flow.on_return_shipped(rec, record, self._facts(ctx, rec.order_id, rec.refund_id), self._rules, now)
        if event_type == "ReturnReceived":
            facts = self._facts(ctx, rec.order_id, rec.refund_id)
            if kept is None:
                return flow.on_return_received(rec, record, facts, self._rules, now)
            return flow.on_return_received(rec, record, facts, self._rules, now, received_at_ms=int(kept["at_ms"]),
                                           wait_over=flow.shipment_wait_over(kept, now, self._rules))  # fmt: skip
        if event_type == "RefundIssued":
            return flow.on_issued(rec, now)
        return flow.on_cancelled(rec, record, now)

    def _keep_for_request(self, ctx: Context, db: StoreTransaction[RefundRecord], rec: RefundRecord,
                          event_type: str, record: dict[str, Any], fx: RefundEffects) -> None:  # fmt: skip
        """A callback for a refund not requested yet waits on the refund id, with where it was read."""
        if fx.refusal is not None or ctx.message is None or event_type == "RefundRequested":
            return  # refused (a request too), or nothing read to keep
        if event_type == "RefundSettled":
            rec.settlement_source = rec.settlement_source or ctx.keep_message()
        elif flow.can_keep_early(rec, event_type):
            flow.keep_early(rec, event_type, record, ctx.keep_message(), ctx.now_ms)
        else:
            ctx.refuse(Reason.UNKNOWN_REFUND, f"{event_type} for refund {rec.refund_id}, which was never requested")
            return
        self._store(ctx, db, rec)

    def _apply_early(self, ctx: Context, rec: RefundRecord, fx: RefundEffects) -> None:
        """The callbacks kept for this refund, in the order they arrived, now that it may take them: its request
        came, or the precondition a review waited for was met (one still waiting for it is kept). One the refund's
        state does not allow (or naming another order) is dead-lettered with its own bytes."""
        pending, rec.early = rec.early, []
        still_unshipped: list[dict[str, Any]] = []
        while pending:
            kept = pending.pop(0)
            if flow.waits_for_precondition(rec, kept["type"]):
                rec.early.append(kept)
                continue
            if str(kept["event"]["channel_order_id"]) != rec.channel_order_id:
                named = order_key(rec.channel, str(kept["event"]["channel_order_id"]))
                ctx.refuse_kept(kept["source"], STAGE, Reason.UNKNOWN_REFUND,
                                f"{kept['type']} of refund {rec.refund_id} for order {named}, which was requested "
                                f"for order {rec.order_id}")  # fmt: skip
                continue
            later = self._apply(ctx, rec, kept["type"], kept["event"], kept)
            fx.absorb(later)
            if kept["type"] == "ReturnReceived" and later.refusal is not None:  # also one kept for its request
                again = flow.kept_for_shipment_again(kept, later.refusal, ctx.now_ms, self._rules)
                if isinstance(again, dict):
                    # Copies a record stored before keep_early kept one only: one waits, and is dead-lettered once.
                    if not flow.kept_already(rec, again["event"], still_unshipped):
                        still_unshipped.append(again)
                    continue
                later.refusal = again
            if later.refusal is not None:
                ctx.refuse_kept(kept["source"], STAGE, later.refusal.reason, later.refusal.detail)
            if rec.early and not flow.waits_for_precondition(rec, rec.early[0]["type"]):
                # This one met the precondition (a tracking number, the parcel): the reviews that waited for it
                # are next, before the callbacks that came after them.
                pending, rec.early = rec.early + pending, []
        rec.early += still_unshipped  # after the loop: back in it, they would be taken up again at once

    def _facts(self, ctx: Context, order_id: str, refund_id: str) -> OrderFacts:
        order: OrderRecord | None = ctx.read_store(ORDER_STORE).get(order_id.encode())
        approved: dict[str, int] = ctx.store(APPROVED_BY_ORDER).get(order_id.encode()) or {}
        refunded = sum(fen for other, fen in approved.items() if other != refund_id and not other.startswith("@"))
        restocked: dict[str, int] = {}
        for name, units in approved.items():
            if name.startswith(RESTOCKED):
                line_no, other = name.removeprefix(RESTOCKED).split(":", 1)
                if other != refund_id:
                    restocked[line_no] = restocked.get(line_no, 0) + units
        facts = replace(order_facts(order, refunded), restocked=restocked)
        if not facts.known and not facts.paid_fen and approved.get(ORDER_PAID):
            paid = approved[ORDER_PAID]
            facts = replace(facts, paid_fen=paid, amount_fen=paid)
        return facts

    def _note_paid_back(self, ctx: Context, rec: RefundRecord, fen: int,
                        restocked: list[tuple[str, str, int]] | None = None, *,
                        purged: bool = False) -> None:  # fmt: skip
        """Keep the order's entry up to date with this refund: what it pays back (0: nothing, or no more), the
        units it put back on hand (``restocked``, added), all of it forgotten when the refund is ``purged``."""
        db = ctx.store(APPROVED_BY_ORDER)
        key = rec.order_id.encode()
        before: dict[str, int] = db.get(key) or {}
        entry = dict(before)
        if fen:
            entry[rec.refund_id] = fen
        else:
            entry.pop(rec.refund_id, None)
        for line_no, _sku, units in restocked or ():
            name = f"{RESTOCKED}{line_no}:{rec.refund_id}"
            entry[name] = entry.get(name, 0) + units
        if purged:
            entry = {name: v for name, v in entry.items()
                     if not (name.startswith(RESTOCKED) and name.split(":", 2)[2] == rec.refund_id)}  # fmt: skip
        order: OrderRecord | None = ctx.read_store(ORDER_STORE).get(key) if fen else None
        paid = order.paid_fen if order is not None and (order.state or order.tombstone) else entry.get(ORDER_PAID, 0)
        if paid:
            entry[ORDER_PAID] = paid
        if set(entry) <= {ORDER_PAID}:
            entry = {}  # nothing of the order's refunds left to keep
        if entry == before:
            return
        if entry:
            db.set(key, entry)
        else:
            db.delete(key)

    def on_timer(self, ctx: Context, key: bytes) -> None:
        db: StoreTransaction[RefundRecord] = ctx.store(STORE)
        rec = db.get(key)
        if rec is None:
            return
        if not rec.state:
            self._parked_timer(ctx, db, rec)
            return
        stages_before = set(rec.stage_times)
        fx = RefundEffects()
        if 0 < flow.shipment_recheck_due_ms(rec) <= ctx.now_ms:
            self._apply_early(ctx, rec, fx)  # a receipt kept for its order's shipment notice
        expired = self._idle_since(rec) + self.retention_ms <= ctx.now_ms
        if expired and not flow.next_deadline_ms(rec, self._rules):
            # Finished long enough ago, or open and not moved since (its limits all flagged: a lost callback,
            # a review never made, a parcel never checked): the refund's record goes, and its part of the order's,
            # so state stays bounded.
            if not flow.finished(rec):
                self._publish(ctx, rec, RefundEffects(alerts=[flow.abandoned_alert(rec, self.retention_ms)]))
            for kept in rec.early:  # reviews that waited for a precondition never met: refused now, not dropped
                ctx.refuse_kept(kept["source"], STAGE, Reason.PRECONDITION_MISSING,
                                f"{kept['type']} of refund {rec.refund_id}, kept for its return "
                                f"{rec.waiting_for or 'precondition'}, which never came")  # fmt: skip
            db.delete(key)
            self._note_paid_back(ctx, rec, 0, purged=True)
            return
        self._done(ctx, db, rec, fx, stages_before)

    def _parked_timer(self, ctx: Context, db: StoreTransaction[RefundRecord], rec: RefundRecord) -> None:
        """Callbacks still waiting for their refund's request: flagged after the grace, given up after the
        time kept (each dead-lettered from where it was read, as if refused on arrival)."""
        alerts, give_up = flow.check_parked(rec, ctx.now_ms, self._rules)
        self._publish(ctx, rec, RefundEffects(alerts=alerts))
        if not give_up:
            self._store(ctx, db, rec)
            return
        key = rec.refund_id.encode()
        db.delete(key)
        ctx.schedule(key, 0)
        kept_h = self._rules.parked_keep_ms / 3.6e6
        if rec.settlement_source:
            ctx.refuse_kept(rec.settlement_source, STAGE, Reason.UNKNOWN_REFUND,
                            f"RefundSettled for refund {rec.refund_id} ({rec.settled_amount_fen} fen), which was "
                            f"never requested: kept {kept_h:g} h for its request")  # fmt: skip
        for kept in rec.early:
            ctx.refuse_kept(kept["source"], STAGE, Reason.UNKNOWN_REFUND,
                            f"{kept['type']} for refund {rec.refund_id}, which was never requested: kept "
                            f"{kept_h:g} h for its request")  # fmt: skip

    # ---- outputs ---------------------------------------------------------------------------------------
    def _publish(self, ctx: Context, rec: RefundRecord, fx: RefundEffects) -> None:
        now = ctx.now_ms
        for previous, state, reason in fx.transitions:
            step, at = state, rec.stage_times.get(state, now)
            if previous == state:
                # Only stage times were added (the reason names them). A month's report keeps the records
                # stamped before its end, so one stamped when the state began showed a December QC in November.
                step = f"{state}:{reason}"
                at = max((rec.stage_times[s] for s in reason.split(",") if s in rec.stage_times), default=now)
            ctx.emit(REFUND_STATES, rec.refund_id, "RefundStateChanged", RefundStateChanged(
                event_id=f"{rec.refund_id}:{step}", event_time_ms=at,
                refund_id=rec.refund_id, order_id=rec.order_id, channel=rec.channel, kind=rec.kind, state=state,
                previous_state=previous, reason=reason, amount_fen=rec.amount_fen, auto_approved=rec.auto_approved,
                warehouse_id=rec.warehouse_id, stage_times=dict(rec.stage_times), customer_id=rec.customer_id,
            ))  # fmt: skip
        if fx.cancel_order:
            ctx.emit(REFUND_ORDER_CANCELS, rec.order_id, "OrderCancelled", OrderCancelled(
                event_id=f"{rec.refund_id}:cancel", event_time_ms=now, channel=rec.channel,
                channel_order_id=rec.channel_order_id, reason=f"{REFUND_ONLY_CANCEL}{rec.refund_id}",
                paid_fen_seen=fx.cancel_paid_fen,
            ))  # fmt: skip
        if fx.instruct:
            ctx.emit(REFUND_INSTRUCTIONS, rec.order_id, "RefundInstruction", RefundInstruction(
                event_id=f"{rec.refund_id}:instruction", event_time_ms=now, refund_id=rec.refund_id,
                order_id=rec.order_id, channel=rec.channel, channel_order_id=rec.channel_order_id,
                channel_refund_id=rec.channel_refund_id, amount_fen=rec.amount_fen,
                payment_path=flow.ON_ORIGINAL_PATH, idempotency_key=rec.refund_id, approved_by=rec.approved_by,
            ))  # fmt: skip
        for line_no, sku, qty in fx.restock:
            if not sku:
                fx.alerts.append(AlertSpec(
                    "refund_return_unstocked", "WARNING", rec.refund_id,
                    f"refund {rec.refund_id}: line {line_no} came back resellable but its SKU is unknown "
                    "(order purged and the channel gave none); put it on hand by hand",
                    event_id=f"{rec.refund_id}:{line_no}:unstocked"))  # fmt: skip
                continue
            ctx.emit(STOCK_RETURNS, sku, "StockAdjusted", StockAdjusted(
                event_id=f"return:{rec.refund_id}:{line_no}", event_time_ms=now, sku=sku,
                warehouse_id=rec.warehouse_id, kind="RECEIPT", qty=qty,
                reason=f"refund {rec.refund_id}: return passed QC",
            ))  # fmt: skip
        for spec in fx.alerts:
            ctx.emit(ALERTS, spec.subject, "Alert", alert(
                spec.kind, spec.severity, spec.subject, spec.message, now if spec.at_ms is None else spec.at_ms,
                cleared=spec.cleared, details=dict(spec.details), event_id=spec.event_id))  # fmt: skip

    # ---- reads -----------------------------------------------------------------------------------------
    def view_of(self, read: Any, order_id: str, refund_id: str) -> dict[str, Any] | None:
        """The ``/orders/{order_id}/refunds/{refund}`` answer from committed state (the refund lives on
        its order's partition)."""
        rec: RefundRecord | None = read(STORE, refund_id.encode(), order_id)
        # A settlement waiting for its request is no refund yet.
        return rec.to_dict() if rec is not None and rec.state and rec.order_id == order_id else None
