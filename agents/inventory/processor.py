"""The stock pool: holds, stock adjustments, VIP overrides, expiry, channel stock levels.

Reads: ``stock.hold-commands``, ``stock.adjustments``, ``ops.overrides``, ``stock.ticks`` (all
keyed and partitioned by SKU, so one SKU is always handled by one task, in order).
Writes: ``stock.hold-results`` (one answer per command), ``stock.levels`` (coalesced per SKU),
``stock.ticks`` (its own wake-ups), ``audit.overrides``; alerts and dead letters through
``agents.alerting.alerts`` / ``streams.engine.deadletter``.
Owns: table ``holds_by_sku`` (RocksDB, compacted changelog): per SKU, on-hand per warehouse,
every hold by order line, applied adjustment ids, overrides, the pause flag, last offsets.

Each batch: apply every event to in-memory copies of the SKUs it touches (pure rules in
``agents.inventory.rules``), write each changed SKU once, wait for the changelog, then publish the answers
(``streams.engine.outbox``). A replayed command finds its hold and gets the recorded answer again.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, cast

import faust
import orjson

from agents.alerting.alerts import send_alert
from agents.inventory import rules as rules_
from agents.inventory.rules import PoolRules, SkuPool
from agents.routing.warehouses import load_warehouses
from streams.contract.keys import partition_for
from streams.contract.records import HoldCommand, HoldDecided, OverrideAudited, StockLevel, VipOverride
from streams.contract.topics import (
    AUDIT_OVERRIDES,
    HOLD_COMMANDS,
    HOLD_RESULTS,
    OPS_OVERRIDES,
    STOCK_ADJUSTMENTS,
    STOCK_LEVELS,
    STOCK_TICKS,
)
from streams.engine import keyed, tables
from streams.engine.deadletter import send_dead_letter
from streams.engine.outbox import Outbox
from streams.engine.positions import InputPositions
from streams.engine.runtime import Runtime

log = logging.getLogger(__name__)
STAGE = "agents.inventory.processor"


def pool_rules(rt: Runtime) -> PoolRules:
    s = rt.settings
    return PoolRules(
        main_channel=s.main_channel,
        channels=tuple(s.channels),
        safety_threshold=s.safety_threshold,
        hysteresis=s.threshold_hysteresis,
        hold_ttl_ms=int(s.hold_ttl_s * 1000),
        tombstone_ttl_ms=int(s.tombstone_ttl_s * 1000),
        max_line_qty=s.max_line_qty,
    )


def stock_level(pool: SkuPool, rules: PoolRules, now_ms: int) -> StockLevel:
    return StockLevel(
        event_id=f"level:{pool.sku}:{pool.newest_change_ms}",
        event_time_ms=now_ms,
        sku=pool.sku,
        on_hand=pool.on_hand_total(),
        locked=pool.locked(),
        presale_reserved=pool.presale_reserved(),
        presale_cap=pool.presale_cap,
        sold=pool.sold(),
        available=pool.available(),
        paused=pool.paused,
        sellable=pool.sellable(rules),
        on_hand_by_warehouse=dict(pool.on_hand),
        allocated_by_warehouse=pool.allocated(),
        newest_change_ms=pool.newest_change_ms,
        newest_source_ms=pool.newest_source_ms,
    )


@dataclass
class LevelPublisher:
    """Coalesces stock levels: at most one record per SKU per refresh interval."""

    interval_ms: int
    pending: dict[str, StockLevel] = field(default_factory=dict)
    last_sent_ms: dict[str, int] = field(default_factory=dict)

    def due(self, now_ms: int) -> list[StockLevel]:
        ready = [
            sku for sku in self.pending
            if now_ms - self.last_sent_ms.get(sku, 0) >= self.interval_ms
        ]  # fmt: skip
        out = []
        for sku in ready:
            level = self.pending.pop(sku)
            level["event_time_ms"] = now_ms  # the publish time: what order->refresh latency ends at
            out.append(level)
            self.last_sent_ms[sku] = now_ms
        return out


def register(app: faust.App, rt: Runtime) -> None:
    settings = rt.settings
    rules = pool_rules(rt)
    warehouses = frozenset(load_warehouses(settings.warehouses_file))
    partitions = settings.partitions
    holds_by_sku = app.Table("holds_by_sku", partitions=partitions, key_type=bytes, value_type=bytes)
    names = {settings.topic(t.name): t for t in (HOLD_COMMANDS, STOCK_ADJUSTMENTS, OPS_OVERRIDES, STOCK_TICKS)}
    source = keyed.raw_topic(app, settings, HOLD_COMMANDS, STOCK_ADJUSTMENTS, OPS_OVERRIDES, STOCK_TICKS)
    ticks = keyed.raw_topic(app, settings, STOCK_TICKS)
    levels = LevelPublisher(settings.refresh_interval_ms)
    levels_topic = settings.topic(STOCK_LEVELS.name)
    # partition -> {sku: next expiry ms}; rebuilt from the table on a partition's first tick.
    expiries: dict[int, dict[str, int]] = {}

    def answer(outbox: Outbox, sku: str, a: rules_.Answer, now_ms: int, source_ms: int = 0) -> None:
        record = HoldDecided(
            event_id=f"{a.order_id}#{a.line_no}:{a.action}:{a.outcome}",
            event_time_ms=now_ms,
            order_id=a.order_id,
            line_no=a.line_no,
            sku=sku,
            qty=a.qty,
            action=a.action,
            outcome=a.outcome,
            reason=a.reason,
            source_time_ms=source_ms,
        )
        outbox.add(HOLD_RESULTS.name, a.order_id, "HoldDecided", record)

    def audit(outbox: Outbox, sku: str, override_id: str, result: rules_.OverrideResult,
              now_ms: int, operator: str = "") -> None:  # fmt: skip
        req = result.request
        outcome = result.outcome if result.outcome != "DUPLICATE" else {
            "pending": "REQUESTED", "applied": "APPLIED"}.get(req.get("status", ""), "REFUSED")  # fmt: skip
        record = OverrideAudited(
            event_id=f"override:{override_id}:{outcome}:{result.detail or req.get('status', '')}",
            event_time_ms=now_ms,
            override_id=override_id,
            outcome=outcome,
            sku=sku,
            qty=int(req.get("qty", 0)),
            vip_order_id=str(req.get("vip_order_id", "")),
            requester=str(req.get("requester", "")),
            approver=str(req.get("approver") or operator),
            reason=str(req.get("reason", "")),
            released_holds=list(req.get("released_holds", [])),
            detail=result.detail,
        )
        outbox.add(AUDIT_OVERRIDES.name, override_id, "OverrideAudited", record)

    def apply(batch: keyed.WorkingSet[SkuPool], outbox: Outbox, event: Any, now_ms: int) -> None:
        msg = event.message
        if names[msg.topic] is STOCK_TICKS:
            expire_partition(batch, outbox, event, now_ms)
            return
        decoded = keyed.decode_for(outbox, rt.codec, msg, names[msg.topic], STAGE, now_ms)
        if decoded is None:
            return
        kind, record = decoded
        sku = record["sku"]
        if not keyed.routed_correctly(outbox, msg, sku, partitions, STAGE, now_ms):
            return
        if kind == "StockAdjusted":
            problem = rules_.check_adjustment(record["kind"], record["qty"], record["warehouse_id"], warehouses)
            if problem is not None:
                send_dead_letter(outbox, msg, STAGE, problem,
                                 f"{record['kind']} {record['qty']} at {record['warehouse_id']!r}", now_ms)  # fmt: skip
                return
        pool = batch.load(event, sku)
        position = f"{names[msg.topic].name}:{msg.partition}"
        pool.offsets[position] = max(pool.offsets.get(position, -1), msg.offset)
        was_paused, had_breach = pool.paused, bool(pool.breaches())
        if kind == "HoldCommand":
            apply_command(outbox, pool, cast(HoldCommand, record), now_ms)
        elif kind == "StockAdjusted":
            rules_.adjust(
                pool,
                record["event_id"],
                record["kind"],
                record["warehouse_id"],
                record["qty"],
                now_ms,
            )
        else:
            apply_override(outbox, pool, cast(VipOverride, record), now_ms)
        after_change(outbox, pool, was_paused, had_breach, now_ms)

    def apply_command(outbox: Outbox, pool: SkuPool, cmd: HoldCommand, now_ms: int) -> None:
        if cmd["action"] == "RESERVE":
            result = rules_.reserve(pool, rules, cmd["order_id"], cmd["line_no"], cmd["qty"],
                                    cmd["channel"], cmd["presale"], now_ms)  # fmt: skip
            if result.outcome == "HELD":
                pool.newest_source_ms = max(pool.newest_source_ms, cmd["source_time_ms"])
        else:
            result = rules_.apply_line_command(
                pool, rules, cmd["action"], cmd["order_id"], cmd["line_no"], cmd["qty"], now_ms,
                cmd.get("warehouse_id", ""), cmd["reason"],
            )  # fmt: skip
        answer(outbox, pool.sku, result, now_ms, cmd["source_time_ms"])

    def apply_override(outbox: Outbox, pool: SkuPool, ov: VipOverride, now_ms: int) -> None:
        if ov["action"] == "REQUEST":
            result = rules_.request_override(pool, ov["override_id"], ov["qty"], ov["vip_order_id"],
                                             ov["operator"], ov["reason"], now_ms)  # fmt: skip
        else:
            result = rules_.approve_override(pool, rules, ov["override_id"], ov["operator"], now_ms)
            if result.outcome == "APPLIED":
                result.request["released_holds"] = [f"{a.order_id}#{a.line_no}" for a in result.released]
        for released in result.released:
            answer(outbox, pool.sku, released, now_ms)
        audit(outbox, pool.sku, ov["override_id"], result, now_ms, ov["operator"])

    def after_change(outbox: Outbox, pool: SkuPool, was_paused: bool, had_breach: bool, now_ms: int) -> None:
        available = pool.available()
        pool.paused = rules_.next_paused(pool.paused, available, rules.safety_threshold, rules.hysteresis)
        if pool.paused != was_paused:
            send_alert(
                outbox, "stock_paused" if pool.paused else "stock_resumed",
                "WARNING" if pool.paused else "INFO", pool.sku,
                f"{pool.sku}: available {available}; "
                + ("only " + rules.main_channel + " sells" if pool.paused else "every channel sells again"),
                now_ms, cleared=not pool.paused,
                details={"available": str(available), "threshold": str(rules.safety_threshold)},
            )  # fmt: skip
        breaches = pool.breaches()
        if breaches and not had_breach:
            send_alert(outbox, "invariant_breach", "RED", pool.sku, "; ".join(breaches), now_ms)
        elif had_breach and not breaches:
            send_alert(
                outbox,
                "invariant_breach",
                "INFO",
                pool.sku,
                "invariants hold again",
                now_ms,
                cleared=True,
            )

    def expire_partition(batch: keyed.WorkingSet[SkuPool], outbox: Outbox, event: Any, now_ms: int) -> None:
        partition = event.message.partition
        if partition not in expiries:
            expiries[partition] = {}
            for key, data in tables.local_items(holds_by_sku):
                if partition_for(key, partitions) == partition:
                    pool = SkuPool.from_dict(data)
                    expiries[partition][pool.sku] = pool.next_expiry_ms()
                    # Re-publish after a (re)start: a level decided just before a crash is not lost.
                    levels.pending[pool.sku] = stock_level(pool, rules, now_ms)
        for sku, due in list(expiries[partition].items()):
            if not due or due > now_ms:
                continue
            pool = batch.load(event, sku)
            was_paused, had_breach = pool.paused, bool(pool.breaches())
            for a in rules_.expire_due(pool, rules, now_ms):
                answer(outbox, sku, a, now_ms)
            after_change(outbox, pool, was_paused, had_breach, now_ms)

    async def send_levels(now_ms: int) -> None:
        for level in levels.due(now_ms):
            # Straight to the producer, not awaited per record: levels are coalesced snapshots, and
            # the next batch's flush (or the next one's) carries them out.
            value = rt.codec.encode("StockLevel", level)
            await app.producer.send(levels_topic, level["sku"].encode(), value, None, None, None)

    @app.agent(source, name="apply_to_pool")
    async def apply_to_pool(stream: Any) -> None:
        outbox = Outbox(app, rt.codec, settings)
        parsed: keyed.ParsedCache[SkuPool] = keyed.ParsedCache()
        positions = InputPositions(
            app, holds_by_sku, settings.bootstrap, STAGE, tuple(names), settings.topic(STOCK_TICKS.name)
        )

        async def process(taken: list[Any]) -> None:
            events = await positions.admit(taken)
            now_ms = rt.clock.now_ms()
            batch = keyed.WorkingSet(holds_by_sku, SkuPool.from_dict, lambda sku: SkuPool(sku=sku), parsed)
            keyed.apply_each(events, functools.partial(apply, batch, outbox, now_ms=now_ms), outbox, STAGE, now_ms)
            for sku, (event, pool) in batch.entries.items():
                batch.write(sku)
                expiries.setdefault(event.message.partition, {})[sku] = pool.next_expiry_ms()
                levels.pending[sku] = stock_level(pool, rules, now_ms)
            await outbox.publish(state_written=bool(batch.entries))
            positions.record(events)
            await send_levels(now_ms)

        await keyed.run_batches(stream, settings, parsed, process)

    @app.timer(max(settings.refresh_interval_ms / 2000.0, 0.02))
    async def flush_levels() -> None:
        await send_levels(rt.clock.now_ms())

    @app.timer(settings.sweep_interval_s, on_leader=True)
    async def tick_pool() -> None:
        await keyed.send_ticks(ticks, rt.codec, rt.clock.now_ms(), partitions)

    @app.page("/stock/{sku}")
    @app.table_route(table=holds_by_sku, match_info="sku")
    async def stock_view(web: Any, request: Any, sku: str) -> Any:
        raw = holds_by_sku.get(sku.encode())
        if not raw:
            return web.json({"sku": sku, "known": False}, status=404)
        pool = SkuPool.from_dict(orjson.loads(raw))
        level = dict(stock_level(pool, rules, rt.clock.now_ms()))
        level["holds_open"] = sum(1 for h in pool.holds.values() if h.status in rules_.OPEN)
        return web.json(level)
