"""Run the order lifecycle: the orders' engine processor.

Reads: ``order.events`` (channel and WMS events), ``stock.hold-results`` (the pool's answers, and the
set-asides of VIP overrides it offers, claimed or refused on line 0) and
``refund.order-cancels`` (a refund-only approved before shipment), all keyed and partitioned by
order id.
Writes: ``stock.hold-commands`` (RESERVE / RELEASE / COMMIT / ALLOCATE / SHIP per line, keyed by
SKU; a hot SKU's line by its bucket, ``SKU#k``, chosen by order id from the in-memory
``agents.orders.hot_skus`` view, the line's later commands to the bucket that answered),
``reservation.results``, ``order.states``, ``routing.decisions``, ``warehouse.dispatch``,
``warehouse.performance``, ``order.health`` (each order's health score, once, when it is paid),
alerts (SLA, unroutable, payment waiting for its order, money taken for an order let go or never
seen) and dead letters (refused events, events parked past their grace).
Owns: store ``orders_by_id`` (changelog ``<app>.orders_by_id.changelog``): one ``OrderRecord`` per
order: lines, the pool's answer per line, state and stage times, payment deadline, routing plan and
allocations, WMS acknowledgements, SLA flag, and events parked until their order arrives (those given
up on and dead-lettered keep a slim copy for ``STOCKFLOW_ORDER_RETENTION_S``, for an order replayed later).
Timers: each order's next deadline (payment timeout, a presale deposit's balance window, parked grace, SLA,
routing retry) and, once it is finished, its purge after ``STOCKFLOW_ORDER_RETENTION_S``; all derived
from the stored order (``due_ms``), so a restart rebuilds every one. A paid order's purge leaves a slim
record (``flow.refund_tombstone``: state "", what was paid, its lines) that the refunds read for as long as
refunds are kept (``STOCKFLOW_REFUND_RETENTION_S``), then goes too.

The rules are ``agents.orders.rules``; paid orders are routed with the in-memory
``agents.routing.warehouse_view`` and scored (``agents.orders.health``) with the customer's returns
from the in-memory ``agents.orders.customer_returns``. The engine commits what a batch decided, the
changed orders and the input offsets in one transaction, so an order's outputs leave exactly when
its state does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.alerting.alerts import AlertSpec, alert
from agents.orders import rules as flow
from agents.orders.customer_returns import CustomerReturns
from agents.orders.health import HealthRules, health_rules
from agents.orders.hot_skus import HotSkus
from agents.orders.rules import Effects, OrderRecord, OrderRules
from agents.routing.scoring import Line
from agents.routing.warehouse_view import WarehouseView
from streams.contract.keys import bucket_key, order_key
from streams.contract.reasons import Reason
from streams.contract.records import OrderStateChanged, ReservationDecided
from streams.contract.set_aside import SET_ASIDE_LINE
from streams.contract.topics import (
    ALERTS,
    HOLD_COMMANDS,
    HOLD_RESULTS,
    ORDER_EVENTS,
    ORDER_HEALTH,
    ORDER_STATES,
    REFUND_ORDER_CANCELS,
    RESERVATION_RESULTS,
    ROUTING_DECISIONS,
    WAREHOUSE_DISPATCH,
    WAREHOUSE_PERFORMANCE,
)
from streams.engine.processor import Context, Processor
from streams.engine.state import StoreSpec, StoreTransaction, records_serde
from streams.settings import Settings

STORE = "orders_by_id"
# The store reads back OrderRecords, so a batch, the timers and the view all see the same type.
ORDER_RECORDS = records_serde(OrderRecord.from_dict)
STAGE = "agents.orders.run_lifecycle"
# A paid order that finds the routing view still reading the warehouses' stock (a worker just started)
# is routed again this soon, instead of being called unroutable and retried after route_retry_s.
VIEW_WAIT_MS = 1_000


def order_rules(s: Settings) -> OrderRules:
    return OrderRules(
        channels=tuple(s.channels),
        payment_timeout_ms=int(s.payment_timeout_s * 1000),
        hold_ttl_ms=int(s.hold_ttl_s * 1000),
        parked_grace_ms=int(s.parked_grace_s * 1000),
        parked_payment_grace_ms=int(s.parked_payment_grace_s * 1000),
        order_retention_ms=int(s.order_retention_s * 1000),
        max_line_qty=s.max_line_qty,
        max_lines=s.max_order_lines,
        sla_ms=int(s.sla_unrouted_s * 1000),
        ship_promise_ms=int(s.ship_promise_s * 1000),
        route_retry_ms=int(s.route_retry_s * 1000),
        reserve_retry_ms=int(s.reserve_retry_s * 1000),
        max_route_attempts=s.max_route_attempts,
        presale_balance_ms=int(s.presale_balance_s * 1000),
    )


@dataclass
class RunLifecycle(Processor):
    rules: OrderRules | None = None
    view: WarehouseView | None = None
    retention_ms: int = 30 * 86_400_000
    tombstone_ms: int = 90 * 86_400_000  # how long a paid order's slim record outlives its purge: refunds may come
    parked_grace_s: float = 600.0
    health: HealthRules | None = None
    returns: CustomerReturns | None = None
    hot: HotSkus | None = None
    partitions: int = 8  # of the topics: where a hot SKU's buckets live (``bucket_key``)

    @classmethod
    def from_settings(cls, settings: Settings, view: WarehouseView, returns: CustomerReturns | None = None,
                      hot: HotSkus | None = None) -> RunLifecycle:  # fmt: skip
        """``returns``: the worker's view of customers' returns; None scores every customer as one without.
        ``hot``: the worker's view of hot SKUs (``stock.hot-skus``); None sends every line to its SKU's home."""
        health = health_rules(settings)
        return cls(
            name="run_lifecycle",
            inputs=(ORDER_EVENTS, HOLD_RESULTS, REFUND_ORDER_CANCELS),
            stores=(StoreSpec(STORE, ORDER_RECORDS),),
            timer_store=STORE,
            rules=order_rules(settings),
            view=view,
            retention_ms=int(settings.order_retention_s * 1000),
            tombstone_ms=int(settings.refund_retention_s * 1000),
            parked_grace_s=settings.parked_grace_s,
            health=health,
            returns=returns if returns is not None else CustomerReturns.from_rules(health.returns, ready=True),
            hot=hot,
            partitions=settings.partitions,
        )

    @property
    def _rules(self) -> OrderRules:
        assert self.rules is not None
        return self.rules

    def key_of(self, event_type: str, record: dict[str, Any]) -> str | None:
        if event_type == "HoldDecided":
            return str(record["order_id"])
        return order_key(record["channel"], record["channel_order_id"])

    # ---- state -----------------------------------------------------------------------------------------
    def _load(self, db: StoreTransaction[OrderRecord], order_id: str) -> OrderRecord:
        rec = db.get(order_id.encode())
        return rec if rec is not None else OrderRecord(order_id=order_id)

    def _store(self, ctx: Context, db: StoreTransaction[Any], rec: OrderRecord) -> None:
        key = rec.order_id.encode()
        if not rec.state and not rec.parked and not rec.tombstone and not rec.set_asides:
            db.delete(key)  # parked events given up on, a set-aside's claim forgotten: nothing left to keep
            ctx.schedule(key, 0)
            return
        db.set(key, rec)
        ctx.schedule(key, self._due(rec))

    def _due(self, rec: OrderRecord) -> int:
        due = rec.next_deadline_ms(self._rules)
        if rec.state in flow.RESTING or rec.tombstone:
            purge = rec.purged_at_ms + self.tombstone_ms if rec.tombstone else (
                rec.stage_times.get(rec.state, 0) + self.retention_ms)  # fmt: skip
            return min(due, purge) if due else purge
        return due

    def due_ms(self, key: bytes, value: Any) -> int:
        return self._due(value)

    # ---- events ----------------------------------------------------------------------------------------
    def handle(self, ctx: Context, event_type: str, record: dict[str, Any]) -> None:
        rules, now = self._rules, ctx.now_ms
        db = ctx.store(STORE)
        order_id = self.key_of(event_type, record) or ""
        rec = self._load(db, order_id)
        if rec.tombstone and event_type == "OrderPlaced":
            rec = OrderRecord(order_id=order_id, parked=rec.parked)  # placed again after its purge: a new order
        if event_type == "HoldDecided":
            if not rec.state and record["line_no"] != SET_ASIDE_LINE:
                return  # an answer for no order of ours (an orphan's expiry)
            fx = flow.on_hold_decided(rec, record, now, rules)
        elif event_type != "OrderPlaced" and not rec.state:
            self._publish(ctx, rec, flow.park(rec, event_type, record, ctx.keep_message(), now))
            self._store(ctx, db, rec)
            return
        else:
            fx = self._apply(rec, event_type, record, now)
        if fx.refusal is not None:
            ctx.refuse(fx.refusal.reason, fx.refusal.detail)
        self._publish(ctx, rec, self._settle(rec, fx, now))
        for parked in fx.replay_parked:
            later = self._apply(rec, parked["event_type"], parked["event"], now)
            if later.refusal is not None and not parked.get("dead_lettered"):  # one given up on was already
                ctx.refuse_kept(parked["source"], STAGE, later.refusal.reason, later.refusal.detail)
            self._publish(ctx, rec, self._settle(rec, later, now))
        self._store(ctx, db, rec)

    def _apply(self, rec: OrderRecord, kind: str, record: dict[str, Any], now_ms: int) -> Effects:
        rules = self._rules
        if kind == "OrderPlaced":
            return flow.on_placed(rec, record, now_ms, rules)
        if kind == "PaymentConfirmed":
            return flow.on_payment(rec, record, now_ms, rules)
        if kind == "PaymentFailed":
            return Effects()  # the order keeps its holds until the payment timeout
        if kind == "OrderCancelled":
            return flow.on_cancel(rec, record, now_ms, rules)
        if kind == "WmsAcknowledged":
            return flow.on_wms_ack(rec, record, now_ms)
        return flow.on_shipment(rec, record, kind, now_ms, rules)

    def _settle(self, rec: OrderRecord, fx: Effects, now_ms: int) -> Effects:
        """Add what follows from ``fx`` within the order: its health score, routing the paid lines, the SLA check."""
        if fx.score_health and self.health is not None and self.returns is not None:
            returns = self.returns.count(rec.channel, rec.customer_id, now_ms)
            fx.health = flow.score_health(rec, returns, self.health, now_ms, self.returns.ready)
            fx.score_health = False
        if fx.route and rec.state == "paid" and self.view is not None:
            if not self.view.ready:
                flow.defer_routing(rec, now_ms, VIEW_WAIT_MS)
            else:
                lines = [Line(int(n), rec.lines[n]["sku"], rec.lines[n]["qty"]) for n in fx.route]
                decision = self.view.decide(rec.address, lines, now_ms)
                fx.extend(flow.on_route_decided(rec, decision, now_ms, self._rules))
                fx.hold_commands = flow.merge_commit_and_allocate(fx.hold_commands)
        fx.route = []
        fx.alerts.extend(flow.sla_alerts(rec, now_ms, self._rules))
        fx.alerts.extend(flow.ship_overdue_alerts(rec, now_ms, self._rules))
        return fx

    def on_timer(self, ctx: Context, key: bytes) -> None:
        db = ctx.store(STORE)
        rec = self._load(db, key.decode())
        finished_at = rec.stage_times.get(rec.state, 0) if rec.state in flow.RESTING else 0
        if finished_at and not rec.next_deadline_ms(self._rules) and finished_at + self.retention_ms <= ctx.now_ms:
            # Finished long enough ago: the order's record goes; a paid one's slim record stays for its refunds.
            tombstone = flow.refund_tombstone(rec, ctx.now_ms)
            if tombstone is None:
                db.delete(key)
            else:
                db.set(key, tombstone)
                ctx.schedule(key, self._due(tombstone))
            return
        if rec.tombstone and not rec.parked and rec.purged_at_ms + self.tombstone_ms <= ctx.now_ms:
            db.delete(key)  # kept as long as refunds are: now nothing is left of the order
            return
        fx = flow.on_tick(rec, ctx.now_ms, self._rules)
        self._publish(ctx, rec, self._settle(rec, fx, ctx.now_ms))
        self._store(ctx, db, rec)

    # ---- outputs ---------------------------------------------------------------------------------------
    def _publish(self, ctx: Context, rec: OrderRecord, fx: Effects) -> None:
        now = ctx.now_ms
        if self.hot is not None and self.hot.skus:
            flow.route_reserves(rec, fx.hold_commands, self.hot.buckets)
        for cmd in fx.hold_commands:
            ctx.emit(HOLD_COMMANDS, bucket_key(cmd["sku"], cmd.get("bucket", -1), self.partitions), "HoldCommand", cmd)
        for previous, state, reason in fx.transitions:
            # A stage reached while the state stays (a presale deposit) is a record of its own, at its time.
            step, at = (state, state) if previous != state else (f"{state}:{reason}", reason)
            ctx.emit(ORDER_STATES, rec.order_id, "OrderStateChanged", OrderStateChanged(
                event_id=f"{rec.order_id}:{step}", event_time_ms=rec.stage_times.get(at, now),
                order_id=rec.order_id, channel=rec.channel, state=state, previous_state=previous,
                reason=reason, warehouse_id=rec.warehouse_id, stage_times=dict(rec.stage_times),
            ))  # fmt: skip
        if fx.reservation is not None:
            ctx.emit(RESERVATION_RESULTS, rec.order_id, "ReservationDecided", ReservationDecided(
                event_id=f"{rec.order_id}:reservation", event_time_ms=now, order_id=rec.order_id,
                channel=rec.channel, outcome=fx.reservation.outcome, lines=fx.reservation.lines,
                placed_at_ms=rec.placed_at_ms, sent_at_ms=rec.sent_at_ms,
            ))  # fmt: skip
        if fx.health is not None:
            ctx.emit(ORDER_HEALTH, rec.order_id, "OrderHealthScored", fx.health)
        if fx.routing_decision is not None:
            ctx.emit(ROUTING_DECISIONS, rec.order_id, "RoutingDecision", fx.routing_decision)
        for dispatch in fx.dispatches:
            ctx.emit(WAREHOUSE_DISPATCH, rec.order_id, "WarehouseDispatched", dispatch)
        for outcome in fx.shipment_outcomes:
            ctx.emit(WAREHOUSE_PERFORMANCE, outcome["warehouse_id"], "ShipmentOutcome", outcome)
        for spec in fx.alerts:
            ctx.emit(ALERTS, spec.subject, "Alert", _alert(spec, now))
        for parked in fx.expired_parked:
            ctx.refuse_kept(parked["source"], STAGE, Reason.UNKNOWN_ORDER,
                            f"{parked['event_type']} waited {self.parked_grace_s:.0f}s for order "
                            f"{rec.order_id}, which never arrived")  # fmt: skip

    # ---- reads -----------------------------------------------------------------------------------------
    def view_of(self, read: Any, order_id: str) -> dict[str, Any] | None:
        """The ``/orders/{id}`` answer from committed state."""
        rec: OrderRecord | None = read(STORE, order_id.encode())
        return rec.to_dict() if rec is not None and not rec.tombstone else None  # a purged order is none any more


def _alert(spec: AlertSpec, now_ms: int) -> Any:
    return alert(spec.kind, spec.severity, spec.subject, spec.message, now_ms if spec.at_ms is None else spec.at_ms,
                 cleared=spec.cleared, details=dict(spec.details), event_id=spec.event_id)  # fmt: skip
