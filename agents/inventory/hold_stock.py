"""Hold stock: the pool's engine processor.

Reads: ``stock.hold-commands`` (RESERVE / RELEASE / COMMIT / SHIP / ALLOCATE per order line; on line 0, a
VIP order's answer to an override offered to it, or its set-aside let go),
``stock.adjustments`` (receipts, counts, corrections, presale caps; ``HotSku``: mark a SKU hot or
not), ``stock.returns`` (returned units QC found resellable, as receipts), ``ops.overrides`` (VIP
override requests and approvals) and ``stock.buckets`` (its own traffic between a hot SKU's home and
buckets), all keyed and partitioned by SKU, or ``SKU#k`` for bucket k of a hot SKU.
Writes: ``stock.hold-results`` (one answer per command, and an approved override's offer to its VIP order,
keyed by order id), ``stock.levels``
(coalesced per SKU, at most one per ``STOCKFLOW_REFRESH_INTERVAL_MS``; a hot SKU's from its home
only, for all its buckets), ``stock.hot-skus`` (which SKUs are split, for the order lifecycle),
``stock.buckets``, ``audit.overrides``, and alerts (channel pause/resume, invariant breach).
Owns: store ``stock_by_sku`` (changelog ``<app>.stock_by_sku.changelog``), every key starting with
its SKU (a bucket's with ``SKU#k``): ``s`` the SKU's totals (``SkuStock``; a hot SKU's home also keeps
its buckets' settings and figures there), ``h`` one record per order line holding stock (``LineHold``;
or a marker where a bucket passed the line on), ``a`` adjustment and transfer ids already applied,
``o`` VIP override requests. Timers: each unpaid hold's expiry, each tombstone's and id's purge.
The hot-SKU rules are ``agents.inventory.buckets``.

The rules are ``agents.inventory.rules``; this module only loads records, calls them, stores what
they return and emits the answers. The engine commits a batch's answers, levels, changelog
records and input offsets in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agents.alerting.alerts import alert, alert_id
from agents.inventory import buckets as hot_
from agents.inventory import rules as rules_
from agents.inventory.buckets import HOME, Sync, bucket_key, home_sku
from agents.inventory.rules import Answer, Buckets, LineHold, OverrideRequest, PoolRules, SkuStock
from streams.contract.keys import BUCKET_MARK, partition_for
from streams.contract.reasons import Reason
from streams.contract.records import BucketSync, HoldDecided, HotSku, OverrideAudited, StockLevel
from streams.contract.set_aside import SET_ASIDE_LINE, override_of, override_reason, parse_reply
from streams.contract.topics import (
    ALERTS,
    AUDIT_OVERRIDES,
    HOLD_COMMANDS,
    HOLD_RESULTS,
    OPS_OVERRIDES,
    STOCK_ADJUSTMENTS,
    STOCK_BUCKETS,
    STOCK_HOT_SKUS,
    STOCK_LEVELS,
    STOCK_RETURNS,
)
from streams.engine.processor import Context, Processor
from streams.engine.state import StoreSpec, StoreTransaction
from streams.settings import Settings

STORE = "stock_by_sku"
LIFE_ENDED = "life-ended"  # under a bucket's adjustment ids: the last message number of a bucket dropped
# After a restart, levels of SKUs changed this long before the newest change are published again.
REPUBLISH_WINDOW_MS = 60_000
# Levels one flush publishes for one partition at most (a flush runs every half refresh interval).
MAX_LEVELS_PER_FLUSH = 1_000
SEP = b"\x00"
# A RESERVE passed on more often than this is going round in circles (a merge and a new split crossing
# it): it is refused rather than passed on again.
MAX_HOPS = 2 * hot_.MAX_BUCKETS + 2
# The tail of a pass-on marker's reason when a SHIP left it (``_pass_on``): the line shipped, so it is never held here.
SHIPPED_ON = ":ship"


def sku_key(sku: str) -> bytes:
    return b"s" + SEP + sku.encode()


def hold_key(sku: str, order_id: str, line_no: int) -> bytes:
    return b"h" + SEP + sku.encode() + SEP + f"{order_id}#{line_no}".encode()


def holds_prefix(sku: str) -> bytes:
    return b"h" + SEP + sku.encode() + SEP


def adjustment_key(sku: str, adjustment_id: str) -> bytes:
    return b"a" + SEP + sku.encode() + SEP + adjustment_id.encode()


def _override_changed_ms(request: OverrideRequest | dict[str, Any]) -> int:
    data = request if isinstance(request, dict) else request.__dict__
    return max(int(data["requested_ms"]), int(data.get("approved_ms") or 0))


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
        count_clock_skew_ms=settings.count_clock_skew_ms,
        count_max_age_ms=int(settings.count_max_age_s * 1000),
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


@dataclass(slots=True)
class _Before:
    """A record's figures before an event, what the event did is told against: the pause, a broken invariant, the
    split's state; for a bucket, its free units and the units its lines held beyond its own (``buckets.ran_dry``,
    ``buckets.ran_short``)."""

    paused: bool
    breach: bool
    hot_state: tuple[int, str]
    free: int = 0
    uncovered: int = 0

    @classmethod
    def of(cls, stock: SkuStock) -> _Before:
        uncovered = hot_.uncovered(stock) if stock.hot is not None else 0
        return cls(stock.paused, not stock.healthy(), _hot_state(stock), uncovered=uncovered)


@dataclass
class _Levels:
    """SKUs of one partition whose level changed, when each was last sent and the version it was sent under."""

    dirty: set[str] = field(default_factory=set)
    sent_ms: dict[str, int] = field(default_factory=dict)
    version_sent: dict[str, int] = field(default_factory=dict)

    def next_version(self, stock: SkuStock, version: int) -> bool:
        """Move ``stock``'s version past the one last sent for its SKU if ``version`` (what it would be sent
        under now) is not past it: two batches may read one clock millisecond, and a change in the second
        after the first sent the level would otherwise go out under the same version, which every channel
        drops as not newer. True: the stock changed and must be stored."""
        sent = self.version_sent.get(stock.sku)
        if sent is None or version > sent:
            return False
        stock.newest_change_ms = sent + 1
        return True


def _came_back(cmd: dict[str, Any], here: int) -> bool:
    """A SHIP the home sent along its marker that came home again: the line was refused on the way (no record
    holds it), yet the warehouse shipped it. Followed again it would go round until its hops ran out and be
    refused, the shipped units left on the shelf to be sold again; the home takes them off its own shelf, as a
    cold SKU would (what that leaves it owing, its buckets send back: ``buckets.owed``). A RELEASE likewise: held
    nowhere on the way, it is decided at the home (a tombstone there, as a cold SKU's) rather than go round for
    ``MAX_HOPS`` hops - each repeated on every at-least-once replay on the way - to end refused."""
    return here == HOME and cmd["action"] in ("SHIP", "RELEASE") and bool(cmd.get("followed"))


def _passed_back(bucket: SkuStock, cmd: dict[str, Any], marker: LineHold) -> bool:
    """A RESERVE this bucket passed home (it had not its CONFIG yet: the order's RESERVE and the home's CONFIG
    travel on two topics), which the home, hot, passed back here: the bucket decides it now rather than
    send it home again. Safe because it came from a pool record (tries > 0), and a pool record that passes a
    line on holds none of it; the home's CONFIG went ahead of it on this bucket's partition. Not a marker a SHIP
    left (``SHIPPED_ON``): the line shipped, and a RESERVE read again follows it home, where the shipment's
    tombstone answers it as a cold SKU's would; held here, a SHIP read again would take its units a second time."""
    return (cmd["action"] == "RESERVE" and cmd.get("tries", 0) > 0 and cmd.get("bucket", HOME) >= 0
            and marker.reason.startswith(f"to:{HOME}:") and not marker.reason.endswith(SHIPPED_ON)
            and hot_.takes_reservations(bucket))



def _alert_id(ctx: Context, kind: str, sku: str, *, cleared: bool = False) -> str:
    """``alert_id``, and how many such the batch raised before (one batch may break a SKU's rules, mend them and
    break them again: each must reach the notifier and the dashboards, which keep one of each id)."""
    seen = ctx.memo.setdefault("alert_ids", {})
    n = seen[(kind, sku, cleared)] = seen.get((kind, sku, cleared), 0) + 1
    return alert_id(kind, sku, ctx.now_ms, cleared=cleared) + (f":{n}" if n > 1 else "")

@dataclass
class HoldStock(Processor):
    rules: PoolRules | None = None
    warehouses: frozenset[str] = frozenset()
    refresh_interval_ms: int = 200
    levels: dict[int, _Levels] = field(default_factory=dict)
    hot_setting: dict[str, int] = field(default_factory=dict)  # the hot_skus setting: SKU -> buckets
    low_water: int = 5
    partitions: int = 12
    settings_applied: set[int] = field(default_factory=set)  # partitions whose hot SKUs were checked

    @classmethod
    def from_settings(cls, settings: Settings, warehouses: frozenset[str]) -> HoldStock:
        return cls(
            name="hold_stock",
            inputs=(HOLD_COMMANDS, STOCK_ADJUSTMENTS, STOCK_RETURNS, OPS_OVERRIDES, STOCK_BUCKETS),
            stores=(StoreSpec(STORE),),
            timer_store=STORE,
            flush_interval_ms=max(settings.refresh_interval_ms // 2, 10),
            rules=pool_rules(settings),
            warehouses=warehouses,
            refresh_interval_ms=settings.refresh_interval_ms,
            hot_setting=dict(settings.hot_skus),
            low_water=settings.hot_sku_low_water,
            partitions=settings.partitions,
        )

    @property
    def _rules(self) -> PoolRules:
        assert self.rules is not None
        return self.rules

    # ---- loading and storing ---------------------------------------------------------------------------
    def _stock(self, db: StoreTransaction[Any], sku: str, up_to_date: bool = True) -> SkuStock:
        """The SKU's (or bucket's) record; one an older version wrote brought up to date (``up_to_date`` False:
        not yet, the caller does it with ``_bring_up_to_date``)."""
        data = db.get(sku_key(sku))
        if isinstance(data, SkuStock):
            return data
        stock = SkuStock.load(data) if data is not None else SkuStock(sku)
        if up_to_date:
            self._bring_up_to_date(db, stock)
        return stock

    def _bring_up_to_date(self, db: StoreTransaction[Any], stock: SkuStock) -> None:
        if not stock.presale_allocated:  # once per record written before presale lines counted in ``allocated``
            rules_.count_presale_allocations(stock, self._open_holds(db, stock.sku))

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
        if event_type == "HoldCommand":
            return bucket_key(record["sku"], record.get("bucket", HOME), self.partitions)
        if event_type == "BucketSync":
            return bucket_key(record["sku"], record["to_bucket"], self.partitions)
        return str(record["sku"])

    # ---- events ----------------------------------------------------------------------------------------
    def _invalid(self, event_type: str, record: dict[str, Any]) -> tuple[Reason, str] | None:
        """Why an operator's or a warehouse's event is refused, if it is (the pool's own are valid)."""
        if event_type in ("StockAdjusted", "HotSku") and BUCKET_MARK in record["sku"]:
            # It would be read as, and change, the record of another SKU's bucket.
            return Reason.INVALID_SKU, f"{event_type} for {record['sku']!r}"
        if event_type == "StockAdjusted":
            problem = rules_.check_adjustment(record["kind"], record["qty"], record["warehouse_id"], self.warehouses)
            if problem is not None:
                return problem, f"{record['kind']} {record['qty']} at {record['warehouse_id']!r}"
        elif event_type == "HotSku" and not 0 <= record["buckets"] <= hot_.MAX_BUCKETS:
            return Reason.INVALID_QTY, f"{record['buckets']} buckets; at most {hot_.MAX_BUCKETS}"
        return None

    def handle(self, ctx: Context, event_type: str, record: dict[str, Any]) -> None:
        db = ctx.store(STORE)
        key = self.key_of(event_type, record) or ""
        if (refused := self._invalid(event_type, record)) is not None:
            ctx.refuse(*refused)
            return
        stock = self._stock(db, key, up_to_date=False)
        target = record.get("bucket", HOME) if event_type == "HoldCommand" else record.get("to_bucket", HOME)
        if event_type in ("HoldCommand", "BucketSync") and target >= 0 and stock.hot is None:
            stock.hot = Buckets(bucket=target)  # a bucket its home has not (or no longer) set up
        before = _Before.of(stock)
        # After the breach is noted: a warehouse an older version overbooked with a presale line is alerted now.
        self._bring_up_to_date(db, stock)
        if stock.hot is not None and stock.hot.bucket >= 0:
            # Before the event, not after it: an exchange or offer it makes must not skip a warehouse still.
            hot_.forget_stale_probes(stock, ctx.now_ms)
        before.free = stock.available()
        home_seq = stock.hot.seq if stock.hot is not None and stock.hot.bucket < 0 else 0
        if event_type == "HoldCommand":
            self._command(ctx, db, stock, record)
        elif event_type == "BucketSync":
            self._sync(ctx, db, stock, record)
        elif event_type == "HotSku":
            self._send(ctx, stock, hot_.mark(stock, record["buckets"], self.low_water))
        elif event_type == "StockAdjusted":
            adjustment = adjustment_key(key, record["event_id"])
            if db.get(adjustment) is not None:
                return  # applied before: a WMS sending the same document again
            dated = int(record.get("event_time_ms") or 0)
            if dated and dated < ctx.now_ms - self._rules.adjustment_ttl_ms:
                # Older than the ids remembered: a document sent again would be counted twice.
                ttl_days = self._rules.adjustment_ttl_ms / 86_400_000
                ctx.refuse(Reason.ADJUSTMENT_TOO_OLD, f"{record['kind']} {record['event_id']!r} dated "
                           f"{(ctx.now_ms - dated) / 86_400_000:.1f} days back; ids are remembered {ttl_days:g} days")
                return
            skew_ms = self._rules.count_clock_skew_ms
            taken_ms = rules_.count_time(dated, ctx.now_ms, skew_ms)
            if record["kind"] == "COUNT" and (
                    stale := rules_.count_refusal(stock, record["warehouse_id"], taken_ms, skew_ms,
                                                  hot_.buckets_kept_from(stock))) is not None:
                ctx.refuse(stale[0], f"COUNT {record['event_id']!r} at {record['warehouse_id']}: {stale[1]}")
                return
            self._adjust(ctx, stock, record)
            db.set(adjustment, {"applied_ms": ctx.now_ms})
            ctx.schedule(adjustment, ctx.now_ms + self._rules.adjustment_ttl_ms)
        else:
            self._override(ctx, db, stock, record)
        if home_seq and stock.hot is None:
            # The home dropped its split (merged, cold): its next split numbers its messages past this one's, whose
            # transfer ids the buckets remember, even at the same clock reading (or one behind: a partition moved).
            self._life_ended(ctx, db, stock, home_seq)
        self._after_change(ctx, db, stock, before)

    def _adjust(self, ctx: Context, stock: SkuStock, adj: dict[str, Any]) -> None:
        kind, wh, qty = adj["kind"], adj["warehouse_id"], adj["qty"]
        skew_ms = self._rules.count_clock_skew_ms
        dated = int(adj.get("event_time_ms") or 0) or ctx.now_ms
        if hot_.needs_settle(stock, kind, qty):
            # Some of the SKU's units are in its buckets: the count is settled with them first.
            stock.known = True
            stock.touch(ctx.now_ms)
            taken = rules_.count_time(dated, ctx.now_ms, skew_ms)  # no date further ahead is believed
            self._send(ctx, stock, hot_.start_settle(stock, kind, wh, qty, adj["event_id"], taken, skew_ms))
            return
        rules_.adjust(stock, kind, wh, qty, ctx.now_ms, dated, self._rules.count_clock_skew_ms)
        self._send(ctx, stock, hot_.distribute(stock, self.low_water))

    def _command(self, ctx: Context, db: StoreTransaction[Any], stock: SkuStock, cmd: dict[str, Any]) -> None:
        key, order_id, line_no = stock.sku, cmd["order_id"], cmd["line_no"]
        bucket = cmd.get("bucket", HOME)
        if line_no == SET_ASIDE_LINE and bucket < 0 and cmd["action"] in ("RESERVE", "RELEASE"):
            self._set_aside_reply(ctx, db, stock, cmd)  # no order line: the set-aside, the home's
            return
        hold = self._hold(db, key, order_id, line_no)
        if hold is not None and hold.status == rules_.FORWARDED:
            if not (_passed_back(stock, cmd, hold) or _came_back(cmd, bucket)):
                self._forward(ctx, cmd, hold)  # the line went on from here: so do its commands
                return
            hold = None  # decided here (see _passed_back, _came_back): the marker gives way
        action = cmd["action"]
        if (target := self._passes_on(stock, cmd, hold)) is not None:
            self._pass_on(ctx, db, stock, cmd, target, cmd.get("tries", 0) + (1 if bucket >= 0 else 0))
            return
        if action == "RESERVE":
            step = self._reserve(ctx, db, stock, cmd, hold)
            answer = step.answer
            if answer is not None and answer.outcome == "HELD":
                stock.newest_source_ms = max(stock.newest_source_ms, cmd["source_time_ms"])
            elif (bucket >= 0 and answer is not None and answer.reason == Reason.INSUFFICIENT_STOCK and stock.hot
                  and not hot_.refuses_unfilled(stock)):  # fmt: skip
                nxt = hot_.next_hop(bucket, cmd.get("tries", 0), stock.hot.count)
                if nxt is not None:  # another bucket may have the units: it decides
                    self._pass_on(ctx, db, stock, cmd, nxt, cmd.get("tries", 0) + 1)
                    return
        else:
            step = rules_.line_command(stock, self._rules, hold, action, order_id, line_no, cmd["qty"],
                                       ctx.now_ms, cmd.get("warehouse_id", ""), cmd["reason"])  # fmt: skip
            answer = step.answer
            if answer is not None and answer.reason == Reason.WAREHOUSE_SHORT and hot_.exchanges(stock):
                # Routing saw the SKU's whole stock; this record holds only part of it: it fetches the units.
                line = step.holds.get(line_no, hold)
                assert line is not None
                asked = hot_.want(stock, line, cmd["warehouse_id"])
                if asked is not None:
                    step = rules_.Step(None, {**step.holds, line_no: asked[0]})
                    self._send(ctx, stock, asked[1])
        self._store_holds(ctx, db, key, order_id, step.holds)
        if step.answer is not None:
            self._answer(ctx, stock, step.answer, cmd["source_time_ms"], bucket)

    def _reserve(self, ctx: Context, db: StoreTransaction[Any], stock: SkuStock, cmd: dict[str, Any],
                 hold: LineHold | None) -> rules_.Step:  # fmt: skip
        """A RESERVE decided here; a VIP order's line takes over what is set aside (and pledged) for it."""
        key, order_id, line_no = stock.sku, cmd["order_id"], cmd["line_no"]
        wants_vip = cmd.get("bucket", HOME) < 0 and stock.set_asides > 0 and line_no != SET_ASIDE_LINE
        vip = self._hold(db, key, order_id, SET_ASIDE_LINE) if wants_vip else None
        unpaid = self._unpaid(db, key) if vip is not None and vip.pledged else None  # a scan: only if pledged
        if hold is None and vip is None and not cmd["presale"] and hot_.short_as_a_whole(stock, cmd["qty"]):
            return rules_.Step(Answer(order_id, line_no, cmd["qty"], "RESERVE", "REFUSED", Reason.INSUFFICIENT_STOCK))
        step = rules_.reserve(stock, self._rules, hold, vip, order_id, line_no, cmd["qty"], cmd["channel"],
                              cmd["presale"], ctx.now_ms, unpaid)  # fmt: skip
        if step.released and vip is not None:
            self._took_over(ctx, db, stock, vip, step, f"{order_id}#{line_no}")
        return step

    def _passes_on(self, stock: SkuStock, cmd: dict[str, Any], hold: LineHold | None) -> int | None:
        """Where a command goes instead of being decided here. For a line this record has never seen: a RESERVE
        at a hot SKU's home to its bucket, at a bucket not taking lines home; a SHIP of a line a bucket does not
        hold to the home (whose on-hand the warehouse's shipment is taken from). And a SHIP of a line released or
        expired at a bucket its SKU has merged back (the record made anew, empty) to the home too: the units the
        line gave back went home with the rest. Taken at the bucket, it went below zero there, which the home
        ignores: a phantom unit, sold again. So too at a bucket that no longer has the warehouse's units free for it
        (made anew by a split after the merge, its units not there yet; or they went home or to other lines since):
        taken there, it went below zero too, or under 'unassigned' off a record with no such warehouse at all. A
        line the bucket shipped stays: the SHIP is one read again."""
        bucket, action = cmd.get("bucket", HOME), cmd["action"]
        if hold is not None:
            # A line shipped here already is a SHIP read again: answered here, it takes nothing twice.
            given_back = hold.status in (rules_.RELEASED, rules_.EXPIRED)
            if action != "SHIP" or bucket < 0 or not given_back:
                return None
            merged = stock.hot is not None and stock.hot.state == hot_.COLD
            gone = stock.warehouse_free(cmd.get("warehouse_id") or hold.warehouse_id) < hold.qty
            return HOME if merged or gone else None
        if bucket >= 0:
            if action == "SHIP" or (action == "RESERVE" and not hot_.takes_reservations(stock)):
                return HOME
            return None
        count = hot_.taking_reservations(stock)
        vip = stock.set_asides > 0  # the set-aside is the home's: the home decides while one is open
        if action == "RESERVE" and count and not cmd["presale"] and not vip:
            return hot_.bucket_for(cmd["order_id"], count)
        return None

    def _pass_on(self, ctx: Context, db: StoreTransaction[Any], stock: SkuStock, cmd: dict[str, Any], target: int,
                 tries: int) -> None:  # fmt: skip
        """Send the command to ``target`` and leave a marker, so the line's later commands follow it. The marker
        lives as long as a hold may (``STOCKFLOW_HOLD_TTL_S``), not a finished line's tombstone: gone while the
        target's partition still lags, the order's re-asked RESERVE was decided here and the late one there too,
        the line held twice."""
        ttl_ms = max(self._rules.tombstone_ttl_ms, self._rules.hold_ttl_ms)
        why = f"to:{target}:{tries}" + (SHIPPED_ON if cmd["action"] == "SHIP" else "")
        marker = LineHold(cmd["order_id"], cmd["line_no"], cmd["qty"], cmd["channel"], cmd["presale"],
                          rules_.FORWARDED, why, ctx.now_ms + ttl_ms, ctx.now_ms)  # fmt: skip
        self._store_holds(ctx, db, stock.sku, cmd["order_id"], {cmd["line_no"]: marker})
        self._forward(ctx, cmd, marker)

    def _forward(self, ctx: Context, cmd: dict[str, Any], marker: LineHold) -> None:
        _, target, tries = marker.reason.split(":")[:3]
        here = cmd.get("bucket", HOME)
        sku = str(cmd["sku"])
        # A RESERVE the order sent again (tries 0) follows the line with the count it had; one another pool
        # record passed here has been around, and counts on, so no two markers can pass it back and forth.
        fresh = cmd["action"] == "RESERVE" and not cmd.get("tries", 0)
        hops = int(tries) if fresh else max(int(tries), cmd.get("tries", 0) + 1)
        if cmd.get("tries", 0) > MAX_HOPS or hops > MAX_HOPS:
            why = Reason.INSUFFICIENT_STOCK if cmd["action"] == "RESERVE" else "passed_on_too_often"
            answer = Answer(cmd["order_id"], cmd["line_no"], cmd["qty"], cmd["action"], "REFUSED", why)
            self._answer(ctx, None, answer, cmd["source_time_ms"], here, sku)
            return
        onward = {**cmd, "bucket": int(target), "tries": hops, "followed": cmd.get("followed", False) or here == HOME}
        ctx.emit(STOCK_BUCKETS, bucket_key(sku, int(target), self.partitions), "HoldCommand", onward)

    def _sync(self, ctx: Context, db: StoreTransaction[Any], stock: SkuStock, msg: dict[str, Any]) -> None:
        kind, here, sender = msg["kind"], msg["to_bucket"], msg["from_bucket"]
        if kind == hot_.TRANSFER:
            applied = adjustment_key(stock.sku, f"transfer:{msg['event_id']}")
            if db.get(applied) is not None:
                return  # credited before (a batch replayed without transactions)
            db.set(applied, {"applied_ms": ctx.now_ms})
            ctx.schedule(applied, ctx.now_ms + self._rules.adjustment_ttl_ms)
        if here == HOME:
            self._home_sync(ctx, db, stock, msg)
            return
        if sender == HOME:
            hot_.configure(stock, here, msg["buckets"], msg["state"], msg["paused"], msg["seq"])
            hot_.on_settled(stock, msg["ref"])
            hot_.lift(stock, msg["ref"])
            stock.known = True
        if kind == hot_.TRANSFER:
            hot_.received(stock, msg["units"], msg["ref"])
            stock.known = True
            stock.touch(ctx.now_ms)
            swap = hot_.swap_of(msg["ref"])
            if swap is not None and swap[0] == here:
                self._swap_arrived(ctx, db, stock, swap, msg)
            elif swap is not None:
                self._send(ctx, stock, hot_.swap_ask(stock, msg["warehouse_id"], msg["units"], msg["ref"]))
        elif kind == hot_.REBALANCE:
            self._send(ctx, stock, hot_.on_rebalance(stock, msg["qty"], msg["ref"]))
        elif kind == hot_.PROBE:
            if stock.hot is None:
                stock.hot = Buckets(bucket=here)
            ended = db.get(adjustment_key(stock.sku, LIFE_ENDED))
            if ended and not stock.shelf_moves and db.get(sku_key(stock.sku)) is None:
                # Made anew since its last life ended: that life's shipments after the count stay on top of it.
                stock.shelf_moves = {wh: [list(m) for m in moves] for wh, moves in ended.get("shelf_moves", {}).items()}
                stock.moves_from = dict(ended.get("moves_from", {}))
            self._send(ctx, stock, hot_.on_probe(stock, msg["warehouse_id"], msg["ref"], ctx.now_ms,
                                                 msg.get("as_of_ms", 0), msg.get("skew_ms", 0), keep=msg["qty"]))

    def _home_sync(self, ctx: Context, db: StoreTransaction[Any], home: SkuStock, msg: dict[str, Any]) -> None:
        kind, sender = msg["kind"], msg["from_bucket"]
        if kind == hot_.TRANSFER:
            hot_.credit(home, sender, msg["units"])
            home.touch(ctx.now_ms)
            swap = hot_.swap_of(msg["ref"])
            if swap is not None:  # before the free units are handed out: the exchange's units pass on
                onward, ended_here = hot_.swap_at_home(home, sender, msg["units"], msg["warehouse_id"], msg["ref"])
                self._send(ctx, home, onward)
                if ended_here:
                    self._swap_arrived(ctx, db, home, swap, msg)
            self._send(ctx, home, hot_.distribute(home, self.low_water))
        elif kind == hot_.REPORT:
            figures = {
                "seq": msg["seq"], "acked": msg["acked"], "on_hand": msg["units"], "available": msg["qty"],
                "lent": msg["lent"],
                "locked": msg["locked"], "sold": msg["sold"], "presale_reserved": msg["presale_reserved"],
                "allocated": msg["allocated"], "open_lines": msg["open_lines"],
                "newest_change_ms": msg["newest_change_ms"], "newest_source_ms": msg["newest_source_ms"],
                "kept_from": msg.get("as_of_ms", 0),
            }  # fmt: skip
            # The level's version moves on with every report: a bucket's change stamped on its own clock may be
            # older than the home's last touch, and channels drop a figure whose version is not newer. The home's
            # own version first takes in the report's, which another worker's clock may have put ahead of it: the
            # level's (the highest of them) then moves on with the next report too.
            home.newest_change_ms = max(home.newest_change_ms, int(msg["newest_change_ms"]))
            home.touch(ctx.now_ms)
            self._send(ctx, home, hot_.on_report(home, sender, figures, self.low_water))
            self._send(ctx, home, hot_.rebalance(home, ctx.now_ms, self.low_water, self.refresh_interval_ms))
        elif kind == hot_.COUNTED:
            self._send(ctx, home, hot_.on_counted(home, sender, msg["ref"], msg["qty"], self.low_water,
                                                  left=msg["units"], tied=msg["allocated"]))

    def _swap_arrived(self, ctx: Context, db: StoreTransaction[Any], stock: SkuStock, swap: tuple[int, str, int],
                      msg: dict[str, Any]) -> None:  # fmt: skip
        """An exchange back at the record whose line asked for it: the line's allocation is answered now."""
        _, order_id, line_no = swap
        hold = self._hold(db, stock.sku, order_id, line_no)
        step, again = hot_.swap_arrived(stock, hold, msg["warehouse_id"], msg["units"], ctx.now_ms, msg["ref"])
        self._store_holds(ctx, db, stock.sku, order_id, step.holds)
        self._send(ctx, stock, again)
        if step.answer is not None:
            self._answer(ctx, stock, step.answer, 0)

    def _send(self, ctx: Context, stock: SkuStock, syncs: list[Sync]) -> None:
        """Publish what a hot-SKU rule decided; a bucket that sends units home tells its figures with them."""
        if not syncs:
            return
        hot = stock.hot = stock.hot or Buckets()
        for sync in syncs:
            self._emit_sync(ctx, stock, sync)
        kinds = {s.kind for s in syncs}
        if hot.bucket >= 0 and hot_.TRANSFER in kinds and hot_.REPORT not in kinds:
            self._emit_sync(ctx, stock, Sync(hot_.REPORT, HOME))

    def _emit_sync(self, ctx: Context, stock: SkuStock, sync: Sync) -> None:
        hot = stock.hot
        assert hot is not None
        issued: dict[str, int] = ctx.memo.setdefault("bucket_sync_seq", {})
        if hot.seq == 0:
            # A new life of this SKU's buckets (or of one bucket) after an unhot or a merge: the ids of the
            # last one's transfers are remembered for days and its sequence numbers in acks, so this one
            # numbers its syncs past them, from the clock, rather than from 1 again (its transfers would
            # be taken for the old ones and dropped, and their units lost). Past the ids it issued in this
            # batch too (one clock reading for both lives), and past a dropped bucket's last (``_life_ended``:
            # batches a clock behind, or one message a batch after a failure, may share a reading).
            ended = ctx.store(STORE).get(adjustment_key(stock.sku, LIFE_ENDED))
            hot.seq = max(ctx.now_ms * 1000, issued.get(stock.sku, 0), int(ended["seq"]) if ended else 0)
        hot.seq += 1
        issued[stock.sku] = hot.seq
        sku = home_sku(stock.sku, hot.bucket)
        record = BucketSync(
            event_id=f"{stock.sku}:{hot.seq}", event_time_ms=ctx.now_ms, sku=sku, kind=sync.kind,
            from_bucket=hot.bucket, to_bucket=sync.to_bucket, units=dict(sync.units), qty=sync.qty,
            warehouse_id=sync.warehouse_id, ref=sync.ref, buckets=0, state="", paused=False, locked=0, sold=0,
            presale_reserved=0, open_lines=0, allocated=dict(sync.allocated), newest_change_ms=0, newest_source_ms=0,
            seq=hot.seq, acked=0, lent=0, as_of_ms=sync.as_of_ms, skew_ms=sync.skew_ms,
        )  # fmt: skip
        if hot.bucket == HOME:
            record["buckets"], record["state"], record["paused"] = hot.count, hot_.told_state(hot, sync), stock.paused
            hot_.sent_to_bucket(stock, hot.seq, sync)
        elif sync.kind == hot_.REPORT:
            fig = hot_.figures(stock)
            record["units"], record["qty"], record["acked"] = fig["on_hand"], fig["available"], fig["acked"]
            record["lent"] = fig["lent"]
            record["locked"], record["sold"] = fig["locked"], fig["sold"]
            record["presale_reserved"] = fig["presale_reserved"]
            record["open_lines"], record["allocated"] = fig["open_lines"], fig["allocated"]
            record["newest_change_ms"], record["newest_source_ms"] = fig["newest_change_ms"], fig["newest_source_ms"]
            record["as_of_ms"] = max(stock.moves_from.values(), default=0)  # its shipments are kept from then
        ctx.emit(STOCK_BUCKETS, bucket_key(sku, sync.to_bucket, self.partitions), "BucketSync", record)

    def _override(self, ctx: Context, db: StoreTransaction[Any], stock: SkuStock, ov: dict[str, Any]) -> None:
        sku, override_id = stock.sku, ov["override_id"]
        existing = self._override_request(db, sku, override_id)
        if ov["action"] == "REQUEST":
            result = rules_.request_override(existing, override_id, ov["qty"], ov["vip_order_id"], ov["operator"],
                                             ov["reason"], ctx.now_ms)  # fmt: skip
        else:
            result = rules_.approve_override(stock, existing, ov["operator"], self._unpaid(db, sku), ctx.now_ms,
                                             out_in_buckets=_out_in_buckets(stock))  # fmt: skip
            self._settle_override(ctx, db, stock, result)
        self._keep_override(ctx, db, sku, override_id, existing, result)
        self._audit(ctx, sku, override_id, result, ov["operator"])

    def _set_aside_reply(self, ctx: Context, db: StoreTransaction[Any], stock: SkuStock, cmd: dict[str, Any]) -> None:
        """A VIP order's command on its set-aside's line (``SET_ASIDE_LINE``): its answer to an override offered to it
        (a RESERVE claims it; a RELEASE refuses it), or a RELEASE of what is set aside for it (see the rules)."""
        sku, order_id = stock.sku, cmd["order_id"]
        if cmd["action"] == "RESERVE":
            override_id = override_of(cmd["reason"])
            existing = self._override_request(db, sku, override_id)
            before = self._hold(db, sku, order_id, SET_ASIDE_LINE)
            result = rules_.claim_override(stock, self._rules, existing, order_id, self._unpaid(db, sku), before,
                                           ctx.now_ms, out_in_buckets=_out_in_buckets(stock))  # fmt: skip
            self._settle_override(ctx, db, stock, result)
        else:
            why, override_id = parse_reply(cmd["reason"])
            held = self._hold(db, sku, order_id, SET_ASIDE_LINE)
            if held is not None and held.is_open:  # none held: nothing to say (no tombstone: no hold can follow)
                step = rules_.line_command(stock, self._rules, held, "RELEASE", order_id, SET_ASIDE_LINE, held.qty,
                                           ctx.now_ms, reason=why)  # fmt: skip
                self._store_holds(ctx, db, sku, order_id, step.holds)
                if step.answer is not None:
                    self._answer(ctx, stock, step.answer, cmd["source_time_ms"])
            if not override_id:
                return
            existing = self._override_request(db, sku, override_id)
            result = rules_.decline_override(existing, order_id, why)
        if result.request is not None:
            self._keep_override(ctx, db, sku, result.request.override_id, existing, result)
            self._audit(ctx, sku, result.request.override_id, result, "")

    def _took_over(self, ctx: Context, db: StoreTransaction[Any], stock: SkuStock, vip: LineHold,
                   step: rules_.Step, line: str) -> None:  # fmt: skip
        """A VIP order's line took over unpaid holds its set-aside's override pledged: stored, their orders told, and
        the override's request and audit name them, as its claim's did before pledges."""
        override_id = override_of(vip.reason)
        existing = self._override_request(db, stock.sku, override_id)
        rest = step.holds.get(SET_ASIDE_LINE)
        result = rules_.took_over(existing, step.released, rest.pledged if rest is not None else 0, line)
        self._settle_override(ctx, db, stock, result)
        if result.request is not None:
            self._keep_override(ctx, db, stock.sku, override_id, existing, result)
            self._audit(ctx, stock.sku, override_id, result, "")

    def _settle_override(self, ctx: Context, db: StoreTransaction[Any], stock: SkuStock,
                         result: rules_.OverrideStep) -> None:  # fmt: skip
        """Store what an approval, a claim or a VIP line's takeover changed and tell the orders concerned."""
        for hold in result.released:
            self._store_holds(ctx, db, stock.sku, hold.order_id, {hold.line_no: hold})
            self._answer(ctx, stock, Answer(hold.order_id, hold.line_no, hold.qty, "RELEASE", "RELEASED",
                                            hold.reason), 0)  # fmt: skip
        if result.set_aside is not None:
            self._store_holds(ctx, db, stock.sku, result.set_aside.order_id, {SET_ASIDE_LINE: result.set_aside})
        request = result.request
        if request is None:
            return
        reason = override_reason(request.override_id)
        if result.outcome == "APPLIED" and not result.released:
            # An approval or a claim seen again: the orders whose holds its VIP order's lines took hear it again.
            for order_id, line_no, qty in request.released:
                self._answer(ctx, stock, Answer(order_id, line_no, qty, "RELEASE", "RELEASED", reason), 0)
        elif result.outcome == "OFFERED":
            # Again for an approval seen again: an offer its order never answered is made once more.
            offer = Answer(request.vip_order_id, SET_ASIDE_LINE, request.qty, "RESERVE", "OFFERED", reason)
            self._answer(ctx, stock, offer, 0)

    def _override_request(self, db: StoreTransaction[Any], sku: str, override_id: str) -> OverrideRequest | None:
        data = db.get(override_key(sku, override_id))
        return OverrideRequest.load(data) if isinstance(data, dict) else data

    def _keep_override(self, ctx: Context, db: StoreTransaction[Any], sku: str, override_id: str,
                       existing: OverrideRequest | None, result: rules_.OverrideStep) -> None:  # fmt: skip
        if result.request is not None and (existing is None or result.request is not existing or
                                           result.outcome != "REQUESTED"):  # fmt: skip
            key = override_key(sku, override_id)
            db.set(key, result.request)
            # Kept as long as an adjustment's id, for approvals seen again; then it goes (a pending request
            # with it: an approval after that is refused as unknown_override).
            ctx.schedule(key, self.due_ms(key, result.request))

    def _unpaid(self, db: StoreTransaction[Any], sku: str) -> list[LineHold]:
        """The holds an override may release: open, unpaid, regular, not a set-aside."""
        return [h for h in self._open_holds(db, sku) if h.status == rules_.HELD and not h.presale
                and h.line_no != SET_ASIDE_LINE]  # fmt: skip

    def _open_holds(self, db: StoreTransaction[Any], sku: str) -> list[LineHold]:
        out = []
        for _, data in db.scan(holds_prefix(sku)):
            hold = data if isinstance(data, LineHold) else LineHold.load(data)
            if hold.is_open:
                out.append(hold)
        return out

    def _after_change(self, ctx: Context, db: StoreTransaction[Any], stock: SkuStock, before: _Before) -> None:
        if stock.shelf_moves:
            rules_.forget_old_moves(stock, ctx.now_ms, self._rules.count_max_age_ms)
        if stock.hot is not None and stock.hot.bucket >= 0:
            self._bucket_changed(ctx, db, stock, before)
            self._alert_breach(ctx, stock, before.breach)
            return
        if not stock.known and not stock.on_hand and not stock.open_lines and stock.hot is None:
            # A SKU that never had stock and holds nothing (commands for it are refused as unknown_sku):
            # nothing to keep, so commands naming made-up SKUs leave no record behind.
            return
        if stock.hot is not None and stock.hot.state == hot_.HOT:
            # Units freed at the home while the SKU is hot (a line held there released or expired) go to the
            # buckets, where the orders are taken; left at the home, no order could have them.
            hot_.outstanding_debt(stock)
            self._send(ctx, stock, hot_.distribute(stock, self.low_water))
            if hot_.home_short(stock):  # a presale line held here, or units owed: they are out in the buckets
                self._send(ctx, stock, hot_.rebalance(stock, ctx.now_ms, self.low_water, self.refresh_interval_ms))
        rules = self._rules
        available = hot_.aggregate(stock).available()
        stock.paused = rules_.next_paused(stock.paused, available, rules.safety_threshold, rules.hysteresis)
        told = hot_.sold_out_news(stock)  # the buckets hear at once that the SKU sold out, or has units again
        if stock.paused != before.paused:
            how = f"only {rules.main_channel} sells" if stock.paused else "every channel sells again"
            kind, resumed = ("stock_paused", False) if stock.paused else ("stock_resumed", True)
            ctx.emit(ALERTS, stock.sku, "Alert", alert(
                kind, "INFO" if resumed else "WARNING", stock.sku, f"{stock.sku}: available {available}; {how}",
                ctx.now_ms, cleared=resumed, event_id=_alert_id(ctx, kind, stock.sku, cleared=resumed),
                details={"available": str(available), "threshold": str(rules.safety_threshold)},
            ))  # fmt: skip
            if not told and stock.hot is not None and stock.hot.state != hot_.COLD:  # they refuse by its pause
                told = [Sync(hot_.CONFIG, b) for b in range(stock.hot.count)]
        self._send(ctx, stock, told)
        self._alert_breach(ctx, stock, before.breach)
        if _hot_state(stock) != before.hot_state:
            self._publish_hot(ctx, stock)
        db.set(sku_key(stock.sku), stock)
        self.levels.setdefault(ctx.partition, _Levels()).dirty.add(stock.sku)

    def _life_ended(self, ctx: Context, db: StoreTransaction[Any], bucket: SkuStock, seq: int = 0) -> None:
        """A dropped bucket's last message number, kept as long as its transfers' ids are: a bucket made anew
        numbers its messages past it. And its shelf journal: a count taken before its last shipments may still
        probe it (the count reached the home before the bucket's word that it ended), and must find them."""
        seq = seq or (bucket.hot.seq if bucket.hot is not None else 0)
        if seq or bucket.shelf_moves:
            ended = adjustment_key(bucket.sku, LIFE_ENDED)
            db.set(ended, {"applied_ms": ctx.now_ms, "seq": seq,
                           "shelf_moves": bucket.shelf_moves, "moves_from": bucket.moves_from})  # fmt: skip
            ctx.schedule(ended, ctx.now_ms + self._rules.adjustment_ttl_ms)

    def _alert_breach(self, ctx: Context, stock: SkuStock, had_breach: bool) -> None:
        """A record's invariants broken by this change, or holding again. A hot SKU's bucket too (its key the
        subject): a shipment from a warehouse it holds none of takes its figure there below zero, which the SKU's
        total hides, and routing then sends orders to units that are not there."""
        breaches = [] if stock.healthy() else stock.breaches()
        if breaches and not had_breach:
            ctx.emit(ALERTS, stock.sku, "Alert", alert(
                "invariant_breach", "RED", stock.sku, "; ".join(breaches), ctx.now_ms,
                event_id=_alert_id(ctx, "invariant_breach", stock.sku)))  # fmt: skip
        elif had_breach and not breaches:
            ctx.emit(ALERTS, stock.sku, "Alert", alert(
                "invariant_breach", "INFO", stock.sku, "invariants hold again", ctx.now_ms, cleared=True,
                event_id=_alert_id(ctx, "invariant_breach", stock.sku, cleared=True)))  # fmt: skip

    def _bucket_changed(self, ctx: Context, db: StoreTransaction[Any], bucket: SkuStock, before: _Before) -> None:
        """A bucket not taking lines sends its free units home; once it holds nothing it says so and goes. One
        that just ran dry or short, or was told the SKU is sold out and has free units, tells its home at once."""
        hot_.hold_probes_down(bucket)
        self._send(ctx, bucket, hot_.return_lack(bucket) + hot_.pay_debt(bucket) + hot_.send_home(bucket)
                   + hot_.send_shortfall(bucket)
                   + (hot_.ran_dry(bucket, before.free) or hot_.ran_short(bucket, before.uncovered))
                   + hot_.found_units(bucket))  # fmt: skip
        if not hot_.takes_reservations(bucket) and hot_.empty(hot_.figures(bucket)):
            if db.get(sku_key(bucket.sku)) is not None:  # a bucket that was: its home counts it merged
                self._emit_sync(ctx, bucket, Sync(hot_.REPORT, HOME))
            self._life_ended(ctx, db, bucket)
            db.delete(sku_key(bucket.sku))
            self.levels.setdefault(ctx.partition, _Levels()).dirty.discard(bucket.sku)
            return
        db.set(sku_key(bucket.sku), bucket)
        self.levels.setdefault(ctx.partition, _Levels()).dirty.add(bucket.sku)

    # ---- outputs ---------------------------------------------------------------------------------------
    def _answer(self, ctx: Context, stock: SkuStock | None, a: Answer, source_ms: int, bucket: int = HOME,
                sku: str = "") -> None:  # fmt: skip
        if stock is not None:
            bucket = stock.hot.bucket if stock.hot is not None else bucket
            sku = home_sku(stock.sku, bucket)
        event_id = f"{a.order_id}#{a.line_no}:{a.action}:{a.outcome}"
        if a.line_no == SET_ASIDE_LINE:  # an order has one set-aside per SKU, and one offer per override
            event_id += f":{sku}:{a.reason}"
        ctx.emit(HOLD_RESULTS, a.order_id, "HoldDecided", HoldDecided(
            event_id=event_id, event_time_ms=ctx.now_ms,
            order_id=a.order_id, line_no=a.line_no, sku=sku, qty=a.qty, action=a.action, outcome=a.outcome,
            reason=str(a.reason), source_time_ms=source_ms, bucket=bucket,
        ))  # fmt: skip

    def _publish_hot(self, ctx: Context, home: SkuStock) -> None:
        count, state = _hot_state(home)
        ctx.emit(STOCK_HOT_SKUS, home.sku, "HotSku", HotSku(
            event_id=f"hot:{home.sku}:{state or 'cold'}:{count}:{ctx.now_ms}", event_time_ms=ctx.now_ms,
            sku=home.sku, buckets=count if state == hot_.HOT else 0, state=state, operator="", reason="",
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
        return key[:1] in (b"h", b"a", b"o")  # line records, adjustment ids and overrides; totals have none

    def due_ms(self, key: bytes, value: Any) -> int:
        if key.startswith(b"h"):
            return int(value["expires_at_ms"]) if value["status"] != rules_.SOLD else 0
        if key.startswith(b"a"):
            return int(value["applied_ms"]) + self._rules.adjustment_ttl_ms
        if key.startswith(b"o"):
            return _override_changed_ms(value) + self._rules.adjustment_ttl_ms
        return 0

    def on_timer(self, ctx: Context, key: bytes) -> None:
        db = ctx.store(STORE)
        if key.startswith(b"a"):
            db.delete(key)
            return
        if key.startswith(b"o"):
            override = db.get(key)
            if override is not None:
                due = self.due_ms(key, override)
                if due <= ctx.now_ms:
                    db.delete(key)
                else:
                    ctx.schedule(key, due)
            return
        data = db.get(key)
        if data is None:
            return
        hold = data if isinstance(data, LineHold) else LineHold.load(data)
        sku = sku_of(key)
        stock = self._stock(db, sku)
        before = _Before.of(stock)
        step = rules_.on_due(stock, self._rules, hold, ctx.now_ms)
        if not step.holds and step.answer is None:
            ctx.schedule(key, hold.expires_at_ms if hold.expires_at_ms > ctx.now_ms else 0)
            return
        self._store_holds(ctx, db, sku, hold.order_id, step.holds)
        if step.answer is not None:
            self._answer(ctx, stock, step.answer, 0)
        if step.answer is None and (stock.hot is None or stock.hot.bucket < 0) and db.get(sku_key(sku)) is None:
            return  # a purged tombstone of a bucket that is gone: nothing to store
        self._after_change(ctx, db, stock, before)

    def flush(self, ctx: Context) -> None:
        """Publish the level of every SKU that changed and was not sent within the refresh interval; a bucket
        reports its figures to its home instead (the home's level adds them up)."""
        if ctx.partition not in self.settings_applied:
            self._apply_hot_setting(ctx)
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
            stock = self._stock(db, sku)
            if stock.hot is not None and stock.hot.bucket >= 0:
                levels.next_version(stock, stock.newest_change_ms)
                self._emit_sync(ctx, stock, Sync(hot_.REPORT, HOME))
                db.set(sku_key(sku), stock)
                levels.version_sent[sku] = stock.newest_change_ms
            elif stock.hot is None and "#" in sku and db.get(sku_key(sku)) is None:
                continue  # a bucket that merged and went
            else:
                whole = hot_.aggregate(stock)
                if levels.next_version(stock, whole.newest_change_ms):
                    db.set(sku_key(sku), stock)
                    whole = hot_.aggregate(stock)
                ctx.emit(STOCK_LEVELS, sku, "StockLevel", stock_level(whole, self._rules, ctx.now_ms))
                levels.version_sent[sku] = whole.newest_change_ms

    def _apply_hot_setting(self, ctx: Context) -> None:
        """The hot_skus setting, for the SKUs whose home is this partition: applied when its value differs from
        the one last applied (an operator's hot/unhot in between stands until the setting changes)."""
        self.settings_applied.add(ctx.partition)
        db = ctx.store(STORE)
        for sku, count in sorted(self.hot_setting.items()):
            if partition_for(sku.encode(), self.partitions) != ctx.partition:
                continue
            stock = self._stock(db, sku)
            if (stock.hot.setting if stock.hot else 0) == count:
                continue
            before = _Before.of(stock)
            stock.hot = stock.hot or Buckets()
            stock.hot.setting = count
            self._send(ctx, stock, hot_.mark(stock, count, self.low_water))
            self._after_change(ctx, db, stock, before)

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
        self.settings_applied.discard(partition)

    # ---- reads -----------------------------------------------------------------------------------------
    def view(self, read: Any, sku: str) -> dict[str, Any] | None:
        """The ``/stock/{sku}`` answer from committed state (``read(store, key, partition_key)``)."""
        data = read(STORE, sku_key(sku), sku)
        if data is None:
            return None
        stock = SkuStock.load(data)
        level: dict[str, Any] = dict(stock_level(hot_.aggregate(stock), self._rules, 0))
        level["holds_open"] = hot_.aggregate(stock).open_lines
        if stock.hot is not None and stock.hot.state:
            level["buckets"] = {"count": stock.hot.count, "state": stock.hot.state, "sold_out": stock.hot.sold_out,
                                "available": hot_.reported_available(stock.hot)}  # fmt: skip
        return level


def _out_in_buckets(stock: SkuStock) -> bool:
    return stock.hot is not None and stock.hot.state != hot_.COLD


def _hot_state(stock: SkuStock) -> tuple[int, str]:
    hot = stock.hot
    return (hot.count, hot.state) if hot is not None and hot.bucket < 0 else (0, "")
