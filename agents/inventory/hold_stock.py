"""Hold stock: the pool's engine processor.

Reads: ``stock.hold-commands`` (RESERVE / RELEASE / COMMIT / SHIP / ALLOCATE per order line),
``stock.adjustments`` (receipts, counts, corrections, presale caps), ``stock.returns`` (returned
units QC found resellable, as receipts) and ``ops.overrides`` (VIP override requests and approvals),
all keyed and partitioned by SKU.
Writes: ``stock.hold-results`` (one answer per command, keyed by order id), ``stock.levels``
(coalesced per SKU, at most one per ``STOCKFLOW_REFRESH_INTERVAL_MS``), ``audit.overrides``, and
alerts (channel pause/resume, invariant breach).
Owns: store ``stock_by_sku`` (changelog ``<app>.stock_by_sku.changelog``), every key starting with
its SKU: ``s`` the SKU's totals (``SkuStock``), ``h`` one record per order line holding stock
(``LineHold``), ``a`` adjustment ids already applied, ``o`` VIP override requests. Timers: each
unpaid hold's expiry, each tombstone's and adjustment id's purge.

The rules are ``agents.inventory.rules``; this module only loads records, calls them, stores what
they return and emits the answers. The engine commits a batch's answers, levels, changelog
records and input offsets in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agents.alerting.alerts import alert
from agents.inventory import rules as rules_
from agents.inventory.rules import Answer, LineHold, OverrideRequest, PoolRules, SkuStock
from streams.contract.records import HoldDecided, OverrideAudited, StockLevel
from streams.contract.topics import (
    ALERTS,
    AUDIT_OVERRIDES,
    HOLD_COMMANDS,
    HOLD_RESULTS,
    OPS_OVERRIDES,
    STOCK_ADJUSTMENTS,
    STOCK_LEVELS,
    STOCK_RETURNS,
)
from streams.engine.processor import Context, Processor
from streams.engine.state import StoreSpec, StoreTransaction
from streams.settings import Settings

STORE = "stock_by_sku"
# After a restart, levels of SKUs changed this long before the newest change are published again.
REPUBLISH_WINDOW_MS = 60_000
# Levels one flush publishes for one partition at most (a flush runs every half refresh interval).
MAX_LEVELS_PER_FLUSH = 1_000
SEP = b"\x00"


def sku_key(sku: str) -> bytes:
    return b"s" + SEP + sku.encode()


def hold_key(sku: str, order_id: str, line_no: int) -> bytes:
    return b"h" + SEP + sku.encode() + SEP + f"{order_id}#{line_no}".encode()


def holds_prefix(sku: str) -> bytes:
    return b"h" + SEP + sku.encode() + SEP


def adjustment_key(sku: str, adjustment_id: str) -> bytes:
    return b"a" + SEP + sku.encode() + SEP + adjustment_id.encode()


def override_key(sku: str, override_id: str) -> bytes:
    return b"o" + SEP + sku.encode() + SEP + override_id.encode()


def sku_of(key: bytes) -> str:
    return key.split(SEP, 2)[1].decode()


def pool_rules(settings: Settings) -> PoolRules:
    return PoolRules(
        main_channel=settings.main_channel,
        channels=tuple(settings.channels),
        safety_threshold=settings.safety_threshold,
        hysteresis=settings.threshold_hysteresis,
        hold_ttl_ms=int(settings.hold_ttl_s * 1000),
        tombstone_ttl_ms=int(settings.line_tombstone_ttl_s * 1000),
        adjustment_ttl_ms=int(settings.tombstone_ttl_s * 1000),
        max_line_qty=settings.max_line_qty,
    )


def stock_level(stock: SkuStock, rules: PoolRules, now_ms: int) -> StockLevel:
    return StockLevel(
        event_id=f"level:{stock.sku}:{stock.newest_change_ms}",
        event_time_ms=now_ms,
        sku=stock.sku,
        on_hand=stock.on_hand_total(),
        locked=stock.locked,
        presale_reserved=stock.presale_reserved,
        presale_cap=stock.presale_cap,
        sold=stock.sold,
        available=stock.available(),
        paused=stock.paused,
        sellable=stock.sellable(rules),
        on_hand_by_warehouse=dict(stock.on_hand),
        allocated_by_warehouse=dict(stock.allocated),
        newest_change_ms=stock.newest_change_ms,
        newest_source_ms=stock.newest_source_ms,
    )


@dataclass
class _Levels:
    """SKUs of one partition whose level changed, and when each was last sent."""

    dirty: set[str] = field(default_factory=set)
    sent_ms: dict[str, int] = field(default_factory=dict)


@dataclass
class HoldStock(Processor):
    rules: PoolRules | None = None
    warehouses: frozenset[str] = frozenset()
    refresh_interval_ms: int = 200
    levels: dict[int, _Levels] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings, warehouses: frozenset[str]) -> HoldStock:
        return cls(
            name="hold_stock",
            inputs=(HOLD_COMMANDS, STOCK_ADJUSTMENTS, STOCK_RETURNS, OPS_OVERRIDES),
            stores=(StoreSpec(STORE),),
            timer_store=STORE,
            flush_interval_ms=max(settings.refresh_interval_ms // 2, 10),
            rules=pool_rules(settings),
            warehouses=warehouses,
            refresh_interval_ms=settings.refresh_interval_ms,
        )

    @property
    def _rules(self) -> PoolRules:
        assert self.rules is not None
        return self.rules

    # ---- loading and storing ---------------------------------------------------------------------------
    def _stock(self, db: StoreTransaction[Any], sku: str) -> SkuStock:
        data = db.get(sku_key(sku))
        if isinstance(data, SkuStock):
            return data
        return SkuStock.load(data) if data is not None else SkuStock(sku)

    def _hold(self, db: StoreTransaction[Any], sku: str, order_id: str, line_no: int) -> LineHold | None:
        data = db.get(hold_key(sku, order_id, line_no))
        if data is None or isinstance(data, LineHold):
            return data
        return LineHold.load(data)

    def _store_holds(self, ctx: Context, db: StoreTransaction[Any], sku: str, order_id: str,
                     holds: dict[int, LineHold | None]) -> None:  # fmt: skip
        for line_no, hold in holds.items():
            key = hold_key(sku, order_id, line_no)
            if hold is None:
                db.delete(key)
                ctx.schedule(key, 0)
            else:
                db.set(key, hold)
                ctx.schedule(key, hold.expires_at_ms)

    def key_of(self, event_type: str, record: dict[str, Any]) -> str | None:
        return str(record["sku"])

    # ---- events ----------------------------------------------------------------------------------------
    def handle(self, ctx: Context, event_type: str, record: dict[str, Any]) -> None:
        db = ctx.store(STORE)
        sku = record["sku"]
        if event_type == "StockAdjusted":
            problem = rules_.check_adjustment(record["kind"], record["qty"], record["warehouse_id"], self.warehouses)
            if problem is not None:
                ctx.refuse(problem, f"{record['kind']} {record['qty']} at {record['warehouse_id']!r}")
                return
        stock = self._stock(db, sku)
        was_paused, had_breach = stock.paused, not stock.healthy()
        if event_type == "HoldCommand":
            self._command(ctx, db, stock, record)
        elif event_type == "StockAdjusted":
            key = adjustment_key(sku, record["event_id"])
            if db.get(key) is not None:
                return  # applied before: a WMS sending the same document again
            rules_.adjust(stock, record["kind"], record["warehouse_id"], record["qty"], ctx.now_ms)
            db.set(key, {"applied_ms": ctx.now_ms})
            ctx.schedule(key, ctx.now_ms + self._rules.adjustment_ttl_ms)
        else:
            self._override(ctx, db, stock, record)
        self._after_change(ctx, db, stock, was_paused, had_breach)

    def _command(self, ctx: Context, db: StoreTransaction[Any], stock: SkuStock, cmd: dict[str, Any]) -> None:
        sku, order_id, line_no = stock.sku, cmd["order_id"], cmd["line_no"]
        hold = self._hold(db, sku, order_id, line_no)
        if cmd["action"] == "RESERVE":
            wants_vip = stock.set_asides > 0 and line_no != rules_.VIP_LINE
            vip = self._hold(db, sku, order_id, rules_.VIP_LINE) if wants_vip else None
            step = rules_.reserve(stock, self._rules, hold, vip, order_id, line_no, cmd["qty"], cmd["channel"],
                                  cmd["presale"], ctx.now_ms)  # fmt: skip
            if step.answer is not None and step.answer.outcome == "HELD":
                stock.newest_source_ms = max(stock.newest_source_ms, cmd["source_time_ms"])
        else:
            step = rules_.line_command(stock, self._rules, hold, cmd["action"], order_id, line_no, cmd["qty"],
                                       ctx.now_ms, cmd.get("warehouse_id", ""), cmd["reason"])  # fmt: skip
        self._store_holds(ctx, db, sku, order_id, step.holds)
        if step.answer is not None:
            self._answer(ctx, sku, step.answer, cmd["source_time_ms"])

    def _override(self, ctx: Context, db: StoreTransaction[Any], stock: SkuStock, ov: dict[str, Any]) -> None:
        sku, override_id = stock.sku, ov["override_id"]
        key = override_key(sku, override_id)
        data = db.get(key)
        existing = OverrideRequest.load(data) if isinstance(data, dict) else data
        if ov["action"] == "REQUEST":
            result = rules_.request_override(existing, override_id, ov["qty"], ov["vip_order_id"], ov["operator"],
                                             ov["reason"], ctx.now_ms)  # fmt: skip
        else:
            unpaid = [h for h in self._open_holds(db, sku) if h.status == rules_.HELD and not h.presale
                      and h.line_no != rules_.VIP_LINE]  # fmt: skip
            before = self._hold(db, sku, existing.vip_order_id, rules_.VIP_LINE) if existing else None
            result = rules_.approve_override(stock, self._rules, existing, ov["operator"], unpaid, before,
                                             ctx.now_ms)  # fmt: skip
            for hold in result.released:
                self._store_holds(ctx, db, sku, hold.order_id, {hold.line_no: hold})
            if result.set_aside is not None:
                self._store_holds(ctx, db, sku, result.set_aside.order_id, {rules_.VIP_LINE: result.set_aside})
            if result.outcome == "APPLIED" and result.request is not None:
                # Also when the approval is seen again: the orders that lost their holds hear it again.
                for order_id, line_no, qty in result.request.released:
                    answer = Answer(order_id, line_no, qty, "RELEASE", "RELEASED", f"vip_override:{override_id}")
                    self._answer(ctx, sku, answer, 0)
        if result.request is not None and (existing is None or result.request is not existing or
                                           result.outcome != "REQUESTED"):  # fmt: skip
            db.set(key, result.request)
        self._audit(ctx, sku, override_id, result, ov["operator"])

    def _open_holds(self, db: StoreTransaction[Any], sku: str) -> list[LineHold]:
        out = []
        for _, data in db.scan(holds_prefix(sku)):
            hold = data if isinstance(data, LineHold) else LineHold.load(data)
            if hold.is_open:
                out.append(hold)
        return out

    def _after_change(self, ctx: Context, db: StoreTransaction[Any], stock: SkuStock, was_paused: bool,
                      had_breach: bool) -> None:  # fmt: skip
        rules = self._rules
        available = stock.available()
        stock.paused = rules_.next_paused(stock.paused, available, rules.safety_threshold, rules.hysteresis)
        if stock.paused != was_paused:
            how = f"only {rules.main_channel} sells" if stock.paused else "every channel sells again"
            ctx.emit(ALERTS, stock.sku, "Alert", alert(
                "stock_paused" if stock.paused else "stock_resumed", "WARNING" if stock.paused else "INFO",
                stock.sku, f"{stock.sku}: available {available}; {how}", ctx.now_ms, cleared=not stock.paused,
                details={"available": str(available), "threshold": str(rules.safety_threshold)},
            ))  # fmt: skip
        breaches = [] if stock.healthy() else stock.breaches()
        if breaches and not had_breach:
            ctx.emit(ALERTS, stock.sku, "Alert",
                     alert("invariant_breach", "RED", stock.sku, "; ".join(breaches), ctx.now_ms))  # fmt: skip
        elif had_breach and not breaches:
            ctx.emit(ALERTS, stock.sku, "Alert", alert("invariant_breach", "INFO", stock.sku,
                                                       "invariants hold again", ctx.now_ms, cleared=True))  # fmt: skip
        db.set(sku_key(stock.sku), stock)
        self.levels.setdefault(ctx.partition, _Levels()).dirty.add(stock.sku)

    # ---- outputs ---------------------------------------------------------------------------------------
    def _answer(self, ctx: Context, sku: str, a: Answer, source_ms: int) -> None:
        ctx.emit(HOLD_RESULTS, a.order_id, "HoldDecided", HoldDecided(
            event_id=f"{a.order_id}#{a.line_no}:{a.action}:{a.outcome}", event_time_ms=ctx.now_ms,
            order_id=a.order_id, line_no=a.line_no, sku=sku, qty=a.qty, action=a.action, outcome=a.outcome,
            reason=str(a.reason), source_time_ms=source_ms,
        ))  # fmt: skip

    def _audit(self, ctx: Context, sku: str, override_id: str, result: rules_.OverrideStep, operator: str) -> None:
        req = result.request
        outcome = result.outcome
        ctx.emit(AUDIT_OVERRIDES, override_id, "OverrideAudited", OverrideAudited(
            event_id=f"override:{override_id}:{outcome}:{result.detail or (req.status if req else '')}",
            event_time_ms=ctx.now_ms, override_id=override_id, outcome=outcome, sku=sku,
            qty=req.qty if req else 0, vip_order_id=req.vip_order_id if req else "",
            requester=req.requester if req else "", approver=(req.approver if req else "") or operator,
            reason=req.reason if req else "",
            released_holds=[f"{o}#{n}" for o, n, _ in req.released] if req else [],
            detail=str(result.detail),
        ))  # fmt: skip

    # ---- time ------------------------------------------------------------------------------------------
    def may_have_timer(self, key: bytes) -> bool:
        return key[:1] in (b"h", b"a")  # line records and adjustment ids; totals and overrides have none

    def due_ms(self, key: bytes, value: Any) -> int:
        if key.startswith(b"h"):
            return int(value["expires_at_ms"]) if value["status"] != rules_.SOLD else 0
        if key.startswith(b"a"):
            return int(value["applied_ms"]) + self._rules.adjustment_ttl_ms
        return 0

    def on_timer(self, ctx: Context, key: bytes) -> None:
        db = ctx.store(STORE)
        if key.startswith(b"a"):
            db.delete(key)
            return
        data = db.get(key)
        if data is None:
            return
        hold = data if isinstance(data, LineHold) else LineHold.load(data)
        sku = sku_of(key)
        stock = self._stock(db, sku)
        was_paused, had_breach = stock.paused, not stock.healthy()
        step = rules_.on_due(stock, self._rules, hold, ctx.now_ms)
        if not step.holds and step.answer is None:
            ctx.schedule(key, hold.expires_at_ms if hold.expires_at_ms > ctx.now_ms else 0)
            return
        self._store_holds(ctx, db, sku, hold.order_id, step.holds)
        if step.answer is not None:
            self._answer(ctx, sku, step.answer, 0)
        self._after_change(ctx, db, stock, was_paused, had_breach)

    def flush(self, ctx: Context) -> None:
        """Publish the level of every SKU that changed and was not sent within the refresh interval."""
        levels = self.levels.get(ctx.partition)
        if levels is None or not levels.dirty:
            return
        db = ctx.store(STORE)
        sent = 0
        for sku in list(levels.dirty):
            if ctx.now_ms - levels.sent_ms.get(sku, 0) < self.refresh_interval_ms:
                continue
            if sent == MAX_LEVELS_PER_FLUSH:
                break  # the rest go in the next flushes: a restart's republish does not stall the batch
            sent += 1
            levels.dirty.discard(sku)
            levels.sent_ms[sku] = ctx.now_ms
            ctx.emit(STOCK_LEVELS, sku, "StockLevel", stock_level(self._stock(db, sku), self._rules, ctx.now_ms))

    def on_assign(self, ctx: Context) -> None:
        # A level is emitted in the transaction after its change, at most a refresh interval later,
        # so a level lost to a crash belongs to a SKU that changed just before it. After a (re)start
        # or a move, the SKUs changed in the last minute before the partition's newest change are
        # published again; older ones were published long ago, and republishing a 100k-SKU
        # partition in full would hold the restart up for seconds.
        levels = self.levels.setdefault(ctx.partition, _Levels())
        changed = [(stock["newest_change_ms"], sku_of(key)) for key, stock in ctx.store(STORE).scan(b"s" + SEP)]
        newest = max((ms for ms, _ in changed), default=0)
        levels.dirty.update(sku for ms, sku in changed if ms >= newest - REPUBLISH_WINDOW_MS)

    def on_revoke(self, partition: int) -> None:
        self.levels.pop(partition, None)

    # ---- reads -----------------------------------------------------------------------------------------
    def view(self, read: Any, sku: str) -> dict[str, Any] | None:
        """The ``/stock/{sku}`` answer from committed state (``read(store, key, partition_key)``)."""
        data = read(STORE, sku_key(sku), sku)
        if data is None:
            return None
        stock = SkuStock.load(data)
        level: dict[str, Any] = dict(stock_level(stock, self._rules, 0))
        level["holds_open"] = stock.open_lines
        return level

