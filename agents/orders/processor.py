"""The order lifecycle and the all-or-nothing reservation of an order's lines.

Reads: ``order.events`` (channel and WMS events), ``stock.hold-results`` (the pool's answers),
``order.ticks`` (its own wake-ups for payment timeouts and parked events) - all keyed and
partitioned by order id.
Writes: ``stock.hold-commands`` (RESERVE / RELEASE / COMMIT / ALLOCATE / SHIP per line, keyed by
SKU), ``reservation.results``, ``order.states``, ``routing.decisions``, ``warehouse.dispatch``,
``warehouse.performance``, ``order.ticks``; alerts (SLA, unroutable) and dead letters through
``agents.alerting.alerts`` / ``streams.engine.deadletter``.
Owns: table ``orders_by_id`` (RocksDB, compacted changelog): per order its lines, the answer per
line, state, stage times, payment deadline, routing plan and allocations, WMS acknowledgements,
SLA flag and events parked until the order arrives. Routes paid orders with the in-memory
``agents.routing.warehouse_view`` (scores in ``agents.routing.scoring``).

Rules live in ``agents.orders.rules``; this module moves events in and effects out, persisting each
changed order before publishing what it decided (``streams.engine.outbox``).
"""

from __future__ import annotations

import base64
import functools
import logging
from dataclasses import dataclass
from typing import Any

import faust
import orjson

from agents.alerting.alerts import send_alert_spec
from agents.orders import rules as flow
from agents.orders.rules import Effects, OrderRecord, OrderRules
from agents.routing.scoring import Line
from agents.routing.warehouse_view import WarehouseView
from streams.contract.keys import order_key, partition_for
from streams.contract.reasons import Reason
from streams.contract.records import OrderStateChanged, ReservationDecided
from streams.contract.topics import (
    HOLD_COMMANDS,
    HOLD_RESULTS,
    ORDER_EVENTS,
    ORDER_STATES,
    ORDER_TICKS,
    RESERVATION_RESULTS,
    ROUTING_DECISIONS,
    WAREHOUSE_DISPATCH,
    WAREHOUSE_PERFORMANCE,
)
from streams.engine import keyed, tables
from streams.engine.deadletter import send_dead_letter
from streams.engine.outbox import Outbox
from streams.engine.positions import InputPositions
from streams.engine.runtime import Runtime
from streams.settings import Settings

log = logging.getLogger(__name__)
STAGE = "agents.orders.processor"


def order_rules(s: Settings) -> OrderRules:
    return OrderRules(
        channels=tuple(s.channels),
        payment_timeout_ms=int(s.payment_timeout_s * 1000),
        hold_ttl_ms=int(s.hold_ttl_s * 1000),
        parked_grace_ms=int(s.parked_grace_s * 1000),
        parked_payment_grace_ms=int(s.parked_payment_grace_s * 1000),
        max_line_qty=s.max_line_qty,
        max_lines=s.max_order_lines,
        sla_ms=int(s.sla_unrouted_s * 1000),
        ship_promise_ms=int(s.ship_promise_s * 1000),
        route_retry_ms=int(s.route_retry_s * 1000),
        max_route_attempts=s.max_route_attempts,
    )


@dataclass
class SourceRef:
    """Where a parked event came from, so it can still be dead-lettered with its bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @classmethod
    def of(cls, msg: Any) -> SourceRef:
        return cls(msg.topic, msg.partition, msg.offset, msg.key, msg.value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic, "partition": self.partition, "offset": self.offset,
            "key": base64.b64encode(self.key or b"").decode(),
            "value": base64.b64encode(self.value or b"").decode(),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SourceRef:
        return cls(d["topic"], d["partition"], d["offset"],
                   base64.b64decode(d["key"]) or None, base64.b64decode(d["value"]) or None)  # fmt: skip


def register(app: faust.App, rt: Runtime, view: WarehouseView) -> None:
    settings = rt.settings
    rules = order_rules(settings)
    partitions = settings.partitions
    orders_by_id = app.Table("orders_by_id", partitions=partitions, key_type=bytes, value_type=bytes)
    names = {settings.topic(t.name): t for t in (ORDER_EVENTS, HOLD_RESULTS, ORDER_TICKS)}
    source = keyed.raw_topic(app, settings, ORDER_EVENTS, HOLD_RESULTS, ORDER_TICKS)
    ticks = keyed.raw_topic(app, settings, ORDER_TICKS)
    deadlines: dict[int, dict[str, int]] = {}

    def settle(rec: OrderRecord, fx: Effects, now_ms: int) -> Effects:
        """Add what follows from ``fx`` within the order: routing the paid lines, the SLA check."""
        if fx.route and rec.state == "paid":
            lines = [Line(int(n), rec.lines[n]["sku"], rec.lines[n]["qty"]) for n in fx.route]
            fx.extend(flow.on_route_decided(rec, view.decide(rec.address, lines, now_ms), now_ms, rules))
        fx.route = []
        fx.extend(flow.check_sla(rec, now_ms, rules))
        return fx

    def publish(outbox: Outbox, rec: OrderRecord, fx: Effects, now_ms: int) -> None:
        for cmd in fx.hold_commands:
            outbox.add(HOLD_COMMANDS.name, cmd["sku"], "HoldCommand", cmd)
        for previous, state, reason in fx.transitions:
            outbox.add(ORDER_STATES.name, rec.order_id, "OrderStateChanged", OrderStateChanged(
                event_id=f"{rec.order_id}:{state}", event_time_ms=rec.stage_times.get(state, now_ms),
                order_id=rec.order_id, channel=rec.channel, state=state, previous_state=previous,
                reason=reason, warehouse_id=rec.warehouse_id, stage_times=dict(rec.stage_times),
            ))  # fmt: skip
        if fx.reservation is not None:
            outbox.add(RESERVATION_RESULTS.name, rec.order_id, "ReservationDecided", ReservationDecided(
                event_id=f"{rec.order_id}:reservation", event_time_ms=now_ms, order_id=rec.order_id,
                channel=rec.channel, outcome=fx.reservation.outcome, lines=fx.reservation.lines,
                placed_at_ms=rec.placed_at_ms, sent_at_ms=rec.sent_at_ms,
            ))  # fmt: skip
        if fx.routing_decision is not None:
            outbox.add(ROUTING_DECISIONS.name, rec.order_id, "RoutingDecision", fx.routing_decision)
        for dispatch in fx.dispatches:
            outbox.add(WAREHOUSE_DISPATCH.name, rec.order_id, "WarehouseDispatched", dispatch)
        for outcome in fx.shipment_outcomes:
            outbox.add(WAREHOUSE_PERFORMANCE.name, outcome["warehouse_id"], "ShipmentOutcome", outcome)
        for alert in fx.alerts:
            send_alert_spec(outbox, alert, now_ms)
        for parked in fx.expired_parked:
            ref = SourceRef.from_dict(parked["source"])
            send_dead_letter(outbox, ref, STAGE, Reason.UNKNOWN_ORDER,
                             f"{parked['event_type']} waited {settings.parked_grace_s:.0f}s "
                             f"for order {rec.order_id}, which never arrived", now_ms)  # fmt: skip

    def handle(rec: OrderRecord, kind: str, record: dict[str, Any], now_ms: int) -> Effects:
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

    def apply(batch: keyed.WorkingSet[OrderRecord], outbox: Outbox, event: Any, now_ms: int) -> None:
        msg = event.message
        if names[msg.topic] is ORDER_TICKS:
            sweep_partition(batch, outbox, event, now_ms)
            return
        decoded = keyed.decode_for(outbox, rt.codec, msg, names[msg.topic], STAGE, now_ms)
        if decoded is None:
            return
        kind, record = decoded
        if kind == "HoldDecided":
            order_id = record["order_id"]
        else:
            order_id = order_key(record["channel"], record["channel_order_id"])
        if not keyed.routed_correctly(outbox, msg, order_id, partitions, STAGE, now_ms):
            return
        rec = batch.load(event, order_id)
        source = f"{msg.topic}:{msg.partition}"
        if msg.offset <= rec.applied.get(source, -1):
            # This very message was applied before a crash, which may have come before its outputs
            # were published: publish what the order's state implies again (all idempotent).
            publish(outbox, rec, flow.implied_effects(rec, now_ms, rules), now_ms)
            return
        rec.applied[source] = msg.offset
        if kind == "HoldDecided":
            if not rec.state:
                return  # an answer for no order of ours (a VIP set-aside, an orphan's expiry)
            fx = flow.on_hold_decided(rec, record, now_ms, rules)
        elif kind != "OrderPlaced" and not rec.state:
            flow.park(rec, kind, record, SourceRef.of(msg).to_dict(), now_ms)
            return
        else:
            fx = handle(rec, kind, record, now_ms)
        if fx.refusal is not None:
            send_dead_letter(outbox, msg, STAGE, fx.refusal.reason, fx.refusal.detail, now_ms)
        publish(outbox, rec, settle(rec, fx, now_ms), now_ms)
        for parked in fx.replay_parked:
            later = handle(rec, parked["event_type"], parked["event"], now_ms)
            if later.refusal is not None:
                ref = SourceRef.from_dict(parked["source"])
                send_dead_letter(outbox, ref, STAGE, later.refusal.reason, later.refusal.detail, now_ms)
            publish(outbox, rec, settle(rec, later, now_ms), now_ms)

    def sweep_partition(batch: keyed.WorkingSet[OrderRecord], outbox: Outbox, event: Any, now_ms: int) -> None:
        partition = event.message.partition
        if partition not in deadlines:
            deadlines[partition] = {}
            for key, data in tables.local_items(orders_by_id):
                if partition_for(key, partitions) == partition:
                    rec = OrderRecord.from_dict(data)
                    deadlines[partition][rec.order_id] = rec.next_deadline_ms(rules)
        for order_id, due in list(deadlines[partition].items()):
            if due and due <= now_ms:
                rec = batch.load(event, order_id)
                publish(outbox, rec, settle(rec, flow.on_tick(rec, now_ms, rules), now_ms), now_ms)

    @app.agent(source, name="run_order_lifecycle")
    async def run_order_lifecycle(stream: Any) -> None:
        outbox = Outbox(app, rt.codec, settings)
        parsed: keyed.ParsedCache[OrderRecord] = keyed.ParsedCache()

        def new_order(order_id: str) -> OrderRecord:
            return OrderRecord(order_id=order_id)

        positions = InputPositions(
            app, orders_by_id, settings.bootstrap, STAGE, tuple(names), settings.topic(ORDER_TICKS.name)
        )

        async def process(taken: list[Any]) -> None:
            events = await positions.admit(taken)
            now_ms = rt.clock.now_ms()
            batch = keyed.WorkingSet(orders_by_id, OrderRecord.from_dict, new_order, parsed)
            keyed.apply_each(events, functools.partial(apply, batch, outbox, now_ms=now_ms), outbox, STAGE, now_ms)
            for order_id, (event, rec) in batch.entries.items():
                if rec.state or rec.parked:
                    batch.write(order_id)
                else:  # parked events given up on: nothing left to keep
                    tables.delete(orders_by_id, event, order_id.encode())
                due = rec.next_deadline_ms(rules)
                bucket = deadlines.setdefault(event.message.partition, {})
                if due:
                    bucket[order_id] = due
                else:
                    bucket.pop(order_id, None)
            await outbox.publish(state_written=bool(batch.entries))
            positions.record(events)

        await keyed.run_batches(stream, settings, parsed, process)

    @app.timer(settings.sweep_interval_s, on_leader=True)
    async def tick_orders() -> None:
        await keyed.send_ticks(ticks, rt.codec, rt.clock.now_ms(), partitions)

    @app.page("/orders/{order_id}")
    @app.table_route(table=orders_by_id, match_info="order_id")
    async def order_view(web: Any, request: Any, order_id: str) -> Any:
        raw = orders_by_id.get(order_id.encode())
        if not raw:
            return web.json({"order_id": order_id, "known": False}, status=404)
        return web.json(orjson.loads(raw))
