"""The stock pool, kept bounded: per-SKU running totals plus one record per open order line.

    available = on_hand + lent - locked - presale_reserved     (never below 0)

``SkuStock`` holds the totals (on-hand per warehouse, locked, sold, presale reserved, allocated
per warehouse), so every decision is O(1) whatever the SKU's traffic, and its stored record stays
a few hundred bytes. Each order line that holds stock is its own ``LineHold`` record; a refused
attempt stores nothing, and a finished line (released, expired, shipped) is kept only as a short
tombstone (``tombstone_ttl_ms``) so a late duplicate of its commands changes nothing.

The totals are never edited directly: ``account`` moves a line's contribution from its old record
to its new one, so totals and holds cannot drift apart. Every function is pure: it takes the
records, returns the answer and the records to store; the processor stores them in one batch,
which commits atomically with the answers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from streams.contract.reasons import Reason
from streams.contract.set_aside import SET_ASIDE_LINE, override_of, override_reason, pledge_detail
from streams.engine.stored import stored_fields

# In a bucket's count wait (``Buckets.probed``): the most it may sell, then its units no line held when it last
# looked (``buckets.hold_probes_down``); a wait stored before has neither.
MOST_SOLD = 2
HELD, SOLD, SHIPPED, RELEASED, EXPIRED = "held", "sold", "shipped", "released", "expired"
# A hot SKU's bucket (or home) passed the line's RESERVE on; its commands follow (``reason`` says where).
FORWARDED = "forwarded"
OPEN = (HELD, SOLD)
OUTCOME_OF = {HELD: "HELD", SOLD: "COMMITTED", SHIPPED: "SHIPPED", RELEASED: "RELEASED", EXPIRED: "EXPIRED"}
ADJUSTMENT_KINDS = ("RECEIPT", "COUNT", "CORRECTION", "PRESALE_CAP")
# Larger single adjustments are typing errors, not stock.
MAX_ADJUSTMENT_QTY = 10_000_000


@dataclass(frozen=True)
class PoolRules:
    """The settings the pool's decisions depend on (built from ``Settings`` by the processor)."""

    main_channel: str
    channels: tuple[str, ...]
    safety_threshold: int
    hysteresis: int
    hold_ttl_ms: int
    tombstone_ttl_ms: int  # how long a finished line is remembered, against late duplicates
    adjustment_ttl_ms: int  # how long an adjustment id is remembered, against a WMS sending it again
    max_line_qty: int
    count_clock_skew_ms: int = 0  # how far a warehouse's clock may run ahead (``count_refusal``)
    count_max_age_ms: int = 3_600_000  # how old a count may be when it arrives (``forget_old_moves``)


@dataclass(slots=True)
class SkuStock:
    """One SKU's totals: what every decision reads, O(1) in the SKU's traffic."""

    sku: str
    known: bool = False  # has had at least one stock adjustment
    on_hand: dict[str, int] = field(default_factory=dict)  # per warehouse; may go negative on a miscount
    presale_cap: int = 0
    locked: int = 0  # open regular holds: placed-and-unpaid plus paid-not-shipped
    sold: int = 0  # paid, not shipped (regular)
    presale_reserved: int = 0  # open presale holds
    allocated: dict[str, int] = field(default_factory=dict)  # open units routing tied to a warehouse
    # ``allocated`` counts routed presale lines too: a record written before it did is brought up to date from its
    # line records when loaded (``count_presale_allocations``); False only until then.
    presale_allocated: bool = True
    paused: bool = False
    newest_change_ms: int = 0
    newest_source_ms: int = 0
    touched_ms: int = 0  # the clock at the last change: the version moves on once per moment
    open_lines: int = 0  # open holds of this SKU: what a scan for VIP overrides can expect
    set_asides: int = 0  # open VIP set-asides: while 0, a RESERVE need not look for one
    # What open VIP set-asides pledged of unpaid holds (``LineHold.pledged``): no other override may count on it.
    pledged: int = 0
    # Counts as of when they were taken (``counted``): per warehouse, the shelf's recent movements as
    # [slot, units taken, units added], oldest first, at most SHELF_MOVES_KEPT; the slot up to which older
    # ones were let go; and when the count the figure stands on was taken.
    shelf_moves: dict[str, list[list[int]]] = field(default_factory=dict)
    moves_from: dict[str, int] = field(default_factory=dict)
    counted_ms: dict[str, int] = field(default_factory=dict)
    # A hot SKU's stock buckets (``agents.inventory.buckets``): None on every other SKU, so a cold SKU's
    # record stays as small as it was.
    hot: Buckets | None = None

    def on_hand_total(self) -> int:
        total = 0
        for qty in self.on_hand.values():
            if qty > 0:
                total += qty
        return total

    def available(self, freeing: int = 0) -> int:
        """Free units; ``freeing``: as they would be once that many locked units are let go."""
        free = self.unheld(freeing)
        hot = self.hot
        if hot is not None:
            for waiting in hot.probed.values():
                # A bucket waiting for a count it answered sells no more than it could since: a line let go meanwhile
                # may free units the count did not find, which the home takes off it when the count is settled.
                if len(waiting) > MOST_SOLD:
                    free = min(free, int(waiting[MOST_SOLD]))
        return max(0, free)

    def unheld(self, freeing: int = 0) -> int:
        """Units no open line holds (below zero: lines hold more than there are)."""
        free = self.on_hand_total() - self.locked - self.presale_reserved + freeing
        hot = self.hot
        if hot is not None:
            # Lent units left on_hand but are still in locked (behind the line that lent them): without adding them
            # back they would be taken away twice, and a record with a free unit could look sold out. Units a bucket
            # was sent for lines a count left short back those lines only (``buckets.return_lack``).
            free += sum(hot.lent.values()) - hot.for_lack - hot.owes_home
        return free

    def lent(self) -> int:
        """Units a hot SKU's record offered in exchange for a warehouse one of its lines was routed to
        (``buckets.want``): still behind that line while they travel, and as many come back."""
        return sum(self.hot.lent.values()) if self.hot is not None else 0

    def warehouse_free(self, warehouse_id: str) -> int:
        return max(0, self.on_hand.get(warehouse_id, 0)) - self.allocated.get(warehouse_id, 0)

    def sellable(self, rules: PoolRules) -> dict[str, int]:
        available = self.available()
        return {ch: available if (ch == rules.main_channel or not self.paused) else 0 for ch in rules.channels}

    def healthy(self) -> bool:
        """``not breaches()``, without building the messages: checked twice for every event."""
        if self.locked > self.on_hand_total() + self.lent() or self.presale_reserved > self.presale_cap:
            return False
        if min(self.locked, self.sold, self.presale_reserved, self.open_lines) < 0:
            return False
        for qty in self.on_hand.values():
            if qty < 0:
                return False
        return not self.allocated or all(q <= max(0, self.on_hand.get(wh, 0)) for wh, q in self.allocated.items())

    def breaches(self) -> list[str]:
        """Invariants that must hold after every change; a breach is alerted, never hidden."""
        found = []
        lent = self.lent()
        if self.locked > self.on_hand_total() + lent:
            also = f" + {lent} lent" if lent else ""
            found.append(f"locked {self.locked} exceeds on-hand {self.on_hand_total()}{also}")
        if self.presale_reserved > self.presale_cap:
            found.append(f"presale {self.presale_reserved} exceeds cap {self.presale_cap}")
        for wh, qty in self.allocated.items():
            if qty > max(0, self.on_hand.get(wh, 0)):
                found.append(f"{wh}: allocated {qty} exceeds its on-hand {self.on_hand.get(wh, 0)}")
        negatives = {wh: q for wh, q in self.on_hand.items() if q < 0}
        if negatives:
            found.append(f"negative on-hand {negatives}")
        if min(self.locked, self.sold, self.presale_reserved, self.open_lines) < 0:
            found.append(f"negative totals locked={self.locked} sold={self.sold} presale={self.presale_reserved}")
        return found

    def touch(self, now_ms: int) -> None:
        # The newest change is the version channels take a level by: they drop a figure whose version is
        # not newer than the last one they took. On a clock behind the stored version (the partition
        # moved to a worker whose clock is slower), each new moment still moves the version on by one,
        # so two different figures never share one.
        if now_ms > self.newest_change_ms:
            self.newest_change_ms = now_ms
        elif now_ms != self.touched_ms:
            self.newest_change_ms += 1
        self.touched_ms = now_ms

    @classmethod
    def load(cls, data: dict[str, Any]) -> SkuStock:
        hot = data.get("hot")
        if isinstance(hot, dict):
            stock = cls(**{**stored_fields(cls, data), "hot": Buckets(**stored_fields(Buckets, hot))})
        else:
            stock = cls(**stored_fields(cls, data))
        if "shelf_moves" not in data and stock.on_hand:
            # Written before the pool kept the shelf's movements: none it booked so far can be put back on top of a
            # count, so a count taken before its last change is refused (count_too_old), not applied without them.
            stock.moves_from = dict.fromkeys(stock.on_hand, stock.newest_change_ms)
        if "presale_allocated" not in data:
            stock.presale_allocated = False  # written when routed presale lines were left out of ``allocated``
        return stock


@dataclass(slots=True)
class Buckets:
    """What a hot SKU's home or bucket record knows of the split (see ``agents.inventory.buckets``)."""

    bucket: int = -1  # -1: the SKU's home record; k: bucket k's record (stored under '<sku>#k')
    count: int = 0  # K: buckets taking reservations (home: 0 once cold)
    state: str = ""  # "" cold | hot | merging
    seq: int = 0  # messages this record sent (their ids, the same again when a batch is replayed)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # home: each bucket's last figures
    merged: list[int] = field(default_factory=list)  # home, merging: buckets that came home empty
    settles: list[dict[str, Any]] = field(default_factory=list)  # home: counts waiting for the buckets
    next_count: int = 0  # home: K to split into once the current merge finishes
    setting: int = 0  # home: the K last applied from the hot_skus setting
    rebalanced_ms: int = 0  # home: when buckets were last asked to send units home
    # Home: [seq, bucket, units] sent, not yet reported (an exchange's without its units: ``buckets.sent_to_bucket``).
    in_flight: list[list[Any]] = field(default_factory=list)
    acked: int = 0  # bucket: the sequence number of the last message from its home it applied
    # Home: no unit of the SKU is free anywhere, as its buckets were last told; bucket: what its home said
    # (a line it cannot fill is then refused at once, not passed on).
    sold_out: bool = False
    # Units out on exchanges for lines held here (``SkuStock.lent``), by the warehouse they are exchanged for: while
    # a line waits for a warehouse, the record keeps its own units of it (``buckets.spares``).
    lent: dict[str, int] = field(default_factory=dict)
    # Home: buckets a count left holding lines beyond their units (``buckets.relabel_phantoms``), until they report
    # they are not; the home keeps units back for them meanwhile (``buckets.owed``).
    short: list[int] = field(default_factory=list)
    # Bucket: warehouses whose count it answered keeping units there behind untied lines -> [the count's ref, until
    # when, the most it may sell, its unheld units then]: those may be units the count did not find, so no line is
    # tied there with them, none leave in an exchange, and a line let go frees none to sell
    # (``buckets.hold_probes_down``), until the home says the count is settled (``buckets.on_settled``), or for
    # ``buckets.PROBE_HOLD_MS``.
    probed: dict[str, list[Any]] = field(default_factory=dict)
    # Bucket: units its home sent for lines a count left short (``buckets.distribute``) while the SKU is short as a
    # whole: they back those lines and are never sold here; as the lines end, as many go home (``buckets.return_lack``).
    for_lack: int = 0
    lacked: list[int] = field(default_factory=list)  # home: buckets sent units for a lack, until it owes nothing
    owes_home: int = 0  # bucket: units its home asked for as a debt (``buckets.DEBT``), not sent yet
    indebted: list[int] = field(default_factory=list)  # home: buckets asked for a debt, until it has what it lacks
    debt_asked: int = 0  # home: the debt they were asked for (asked again only once it grows)


@dataclass(slots=True)
class LineHold:
    """What one order line holds of one SKU."""

    order_id: str
    line_no: int
    qty: int
    channel: str
    presale: bool
    status: str
    reason: str
    expires_at_ms: int  # HELD: when it expires unpaid; finished: when its tombstone goes; SOLD: 0
    updated_ms: int
    warehouse_id: str = ""
    # A hot SKU's record that held the line with too few units of the warehouse routing chose: that warehouse,
    # while the record exchanges units for it with the SKU's other records (``buckets.want``); the answer waits.
    wants: str = ""
    asks: int = 0  # exchanges made for ``wants`` since the line was routed there (``buckets.MAX_ASKS``)
    # A VIP set-aside: units its order's lines may still take from other orders' unpaid holds. Held in no total:
    # the holds are let go only when a line of the VIP order needs them, never for an order that may not come.
    pledged: int = 0

    @property
    def is_open(self) -> bool:
        return self.status in OPEN

    @classmethod
    def load(cls, data: dict[str, Any]) -> LineHold:
        return cls(**stored_fields(cls, data))

    def dump(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Answer:
    """One HoldDecided to publish (to the order's partition)."""

    order_id: str
    line_no: int
    qty: int
    action: str
    outcome: str
    reason: str = ""


def account(stock: SkuStock, before: LineHold | None, after: LineHold | None) -> None:
    """Move a line's contribution to the totals from its ``before`` record to its ``after`` one."""
    for hold, sign in ((before, -1), (after, 1)):
        if hold is None or not hold.is_open:
            continue
        stock.open_lines += sign
        if hold.line_no == SET_ASIDE_LINE:
            stock.set_asides += sign
            stock.pledged = max(0, stock.pledged + sign * hold.pledged)  # 0 if an older release dropped it
        if hold.presale:
            stock.presale_reserved += sign * hold.qty
        else:
            stock.locked += sign * hold.qty
            if hold.status == SOLD:
                stock.sold += sign * hold.qty
        if hold.warehouse_id:  # a presale line too: routed, it is sent the warehouse's units like any other
            stock.allocated[hold.warehouse_id] = stock.allocated.get(hold.warehouse_id, 0) + sign * hold.qty
            if stock.allocated[hold.warehouse_id] == 0:
                del stock.allocated[hold.warehouse_id]


def count_presale_allocations(stock: SkuStock, open_holds: Iterable[LineHold]) -> None:
    """Bring a record written before ``allocated`` counted routed presale lines (``presale_allocated`` False) up
    to date: add each open presale line tied to a warehouse, once. Left out, such a line would be taken off its
    warehouse's figure when it ships or is let go (``account``), a figure it was never added to; and its units
    looked free to the next order routed there. A warehouse the two already overbook is then a breach (alerted)."""
    if stock.presale_allocated:
        return
    for hold in open_holds:
        if hold.presale and hold.is_open and hold.warehouse_id:
            stock.allocated[hold.warehouse_id] = stock.allocated.get(hold.warehouse_id, 0) + hold.qty
    stock.presale_allocated = True


def next_paused(paused: bool, available: int, threshold: int, hysteresis: int) -> bool:
    """Pause below the threshold; resume only above threshold + hysteresis, so no flapping."""
    if not paused:
        return available < threshold
    return available <= threshold + hysteresis


@dataclass
class Step:
    """What one rule decided: the answer to publish and the line records to store (None: delete)."""

    answer: Answer | None
    holds: dict[int, LineHold | None] = field(default_factory=dict)  # line no -> new record
    released: list[LineHold] = field(default_factory=list)  # other orders' holds a VIP line took over, let go


def reserve(stock: SkuStock, rules: PoolRules, existing: LineHold | None, vip: LineHold | None, order_id: str,  # noqa: PLR0913, PLR0917 - a pool rule takes a command's fields one by one
            line_no: int, qty: int, channel: str, presale: bool, now_ms: int,
            unpaid: list[LineHold] | None = None) -> Step:  # fmt: skip
    """Hold ``qty`` for one order line, or refuse with a reason (a refusal stores nothing). ``unpaid``: the holds
    a VIP set-aside's pledge may take over (as for ``approve_override``), wanted only while ``vip.pledged``."""
    if existing is not None:  # a duplicate: nothing taken; say what the line is now
        return Step(Answer(order_id, line_no, existing.qty, "RESERVE", OUTCOME_OF[existing.status], existing.reason))
    # A set-aside is regular stock: a presale line goes through the presale pool as usual.
    # (Not past its expiry: the engine applies a batch's commands before its due timers.)
    open_vip = vip is not None and vip.status == HELD and vip.expires_at_ms > now_ms
    if open_vip and vip is not None and not presale and 0 < qty <= rules.max_line_qty:
        return _take_set_aside(stock, rules, vip, unpaid or [], order_id, line_no, qty, channel, now_ms)
    reason = refusal(stock, rules, qty, channel, presale)
    if reason is not None:
        return Step(Answer(order_id, line_no, qty, "RESERVE", "REFUSED", reason))
    hold = LineHold(order_id, line_no, qty, channel, presale, HELD, "", now_ms + rules.hold_ttl_ms, now_ms)
    account(stock, None, hold)
    stock.touch(now_ms)
    return Step(Answer(order_id, line_no, qty, "RESERVE", "HELD", ""), {line_no: hold})


def _take_set_aside(stock: SkuStock, rules: PoolRules, vip: LineHold, unpaid: list[LineHold], order_id: str,  # noqa: PLR0913, PLR0917 - as reserve
                    line_no: int, qty: int, channel: str, now_ms: int) -> Step:  # fmt: skip
    """Stock an operator set aside for this VIP order: the line takes it over, then free stock, then, within the
    set-aside's pledge, the newest unpaid holds of other orders (judged like any hold; refused, nothing is let go
    and the set-aside stays for the order)."""
    beyond = max(0, qty - vip.qty)
    taking = _pledge_takes(stock, vip, unpaid, beyond)
    freed = sum(h.qty for h in taking)
    # What the pledge covers was approved for this order by two operators: a channel paused for the SKU's low stock
    # (the pledge's very case) does not refuse it.
    judged_as = rules.main_channel if beyond <= vip.pledged else channel
    short = refusal(stock, rules, beyond, judged_as, False, freed) if beyond else None
    if short is not None:
        return Step(Answer(order_id, line_no, qty, "RESERVE", "REFUSED", short))
    needed = max(0, beyond - stock.available())  # from the holds let go
    released = [_let_go(stock, rules, hold, vip.reason, now_ms) for hold in taking]
    # Whatever the line takes beyond the set-aside, free stock too, is the override's: its VIP order gets no more
    # through it than was approved. Units a released hold had beyond the line's need stay set aside within that (left
    # free, a regular order could take them and be the next one the pledge lets go); the pledge keeps the rest.
    owed_still = max(0, vip.pledged - beyond)
    kept = min(freed - needed, owed_still) if taking else 0
    left = vip.qty - min(qty, vip.qty) + kept
    pledged = owed_still - kept
    rest = replace(vip, qty=left, pledged=pledged, updated_ms=now_ms) if left or pledged else None
    taken = LineHold(order_id, line_no, qty, channel, False, HELD, vip.reason, now_ms + rules.hold_ttl_ms, now_ms)
    account(stock, vip, rest)
    account(stock, None, taken)
    stock.touch(now_ms)
    return Step(Answer(order_id, line_no, qty, "RESERVE", "HELD", vip.reason), {line_no: taken, SET_ASIDE_LINE: rest},
                released)  # fmt: skip


def _pledge_takes(stock: SkuStock, vip: LineHold, unpaid: list[LineHold], beyond: int) -> list[LineHold]:
    """The newest unpaid holds of other orders that cover what a VIP line needs beyond its set-aside and the free
    stock, if its pledge reaches that far and they can; else none."""
    if beyond <= stock.available() or beyond - stock.available() > vip.pledged:
        return []
    taking: list[LineHold] = []
    for hold in _newest_first(_releasable(vip.order_id, unpaid)):
        taking.append(hold)
        if stock.available(sum(h.qty for h in taking)) >= beyond:
            return taking
    return []


def _newest_first(holds: list[LineHold]) -> list[LineHold]:
    return sorted(holds, key=lambda h: (h.updated_ms, h.order_id, h.line_no), reverse=True)


def _let_go(stock: SkuStock, rules: PoolRules, hold: LineHold, reason: str, now_ms: int) -> LineHold:
    """An unpaid hold a VIP override takes over, released (its order is told, with the override's reason)."""
    step = line_command(stock, rules, hold, "RELEASE", hold.order_id, hold.line_no, hold.qty, now_ms, reason=reason)
    return step.holds[hold.line_no] or hold


def refusal(stock: SkuStock, rules: PoolRules, qty: int, channel: str, presale: bool,
            freeing: int = 0) -> Reason | None:  # fmt: skip
    """Why ``qty`` cannot be held now (``freeing``: once that many locked units are let go), or None."""
    if qty <= 0 or qty > rules.max_line_qty:
        return Reason.INVALID_QTY
    if not stock.known:
        return Reason.UNKNOWN_SKU
    if stock.paused and channel != rules.main_channel and (not presale or stock.available() > 0):
        # A presale sale too while units are left on hand: it would take them from the main channel. A SKU
        # sold only on presale (nothing on hand) is always below the threshold, and its presale goes on.
        return Reason.CHANNEL_PAUSED
    if presale:
        return Reason.INSUFFICIENT_PRESALE_STOCK if stock.presale_reserved + qty > stock.presale_cap else None
    if qty > stock.available(freeing):
        return Reason.INSUFFICIENT_STOCK
    return None


_TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    # action: (statuses it applies to, status it leaves)
    "RELEASE": ((HELD, SOLD), RELEASED),
    "COMMIT": ((HELD,), SOLD),
    "SHIP": ((HELD, SOLD), SHIPPED),
    "EXPIRE": ((HELD,), EXPIRED),
}


def line_command(stock: SkuStock, rules: PoolRules, hold: LineHold | None, action: str, order_id: str,  # noqa: PLR0913, PLR0917 - as reserve
                 line_no: int, qty: int, now_ms: int, warehouse_id: str = "", reason: str = "") -> Step:  # fmt: skip
    """RELEASE, COMMIT, SHIP, EXPIRE or ALLOCATE one order line; idempotent.

    A COMMIT that names a warehouse also allocates the line there (payment and routing decided
    together): one command and one answer instead of two of each. Its answer is the allocation's,
    which can only be ALLOCATED for a committed line; REFUSED leaves the line committed.
    """
    if action == "ALLOCATE":
        return allocate(stock, hold, order_id, line_no, qty, warehouse_id, now_ms)
    if action == "COMMIT" and warehouse_id:
        committed = line_command(stock, rules, hold, "COMMIT", order_id, line_no, qty, now_ms, reason=reason)
        after = committed.holds.get(line_no, hold)
        if after is None or after.status != SOLD:
            return committed
        placed = allocate(stock, after, order_id, line_no, qty, warehouse_id, now_ms)
        return Step(placed.answer, {**committed.holds, **placed.holds})
    sources, target = _TRANSITIONS[action]
    if hold is None:
        if action == "RELEASE":
            # Released before its RESERVE was seen: a tombstone so a late RESERVE takes nothing.
            tomb = LineHold(order_id, line_no, qty, "", False, RELEASED, reason or "released_before_reserve",
                            now_ms + rules.tombstone_ttl_ms, now_ms)  # fmt: skip
            return Step(Answer(order_id, line_no, qty, action, "RELEASED", "no_open_hold"), {line_no: tomb})
        if action == "SHIP":
            # Shipped units leave the warehouse whatever the order's state: never phantom stock. The
            # line is remembered as shipped for a while, so the same SHIP again deducts nothing.
            _deduct_shipped(stock, qty, warehouse_id, now_ms)
            stock.touch(now_ms)
            shipped = LineHold(order_id, line_no, qty, "", False, SHIPPED, "no_open_hold",
                               now_ms + rules.tombstone_ttl_ms, now_ms, warehouse_id)  # fmt: skip
            return Step(Answer(order_id, line_no, qty, action, "SHIPPED", "no_open_hold"), {line_no: shipped})
        return Step(Answer(order_id, line_no, qty, action, "IGNORED", "no_hold"))
    if hold.status == target:
        return Step(Answer(order_id, line_no, hold.qty, action, OUTCOME_OF[target], hold.reason))
    if hold.status not in sources:
        if action == "SHIP" and hold.status in (RELEASED, EXPIRED):
            # The order was cancelled or expired, yet the warehouse shipped: the units are gone.
            _deduct_shipped(stock, hold.qty, warehouse_id or hold.warehouse_id, now_ms)
            shipped = replace(hold, status=SHIPPED, reason=f"shipped_after_{hold.status}", updated_ms=now_ms)
            stock.touch(now_ms)
            return Step(Answer(order_id, line_no, hold.qty, action, "SHIPPED", shipped.reason), {line_no: shipped})
        return Step(Answer(order_id, line_no, hold.qty, action, "IGNORED", f"hold_is_{hold.status}"))
    if action == "SHIP":
        # A presale line's units were kept out of what is available (``presale_reserved``) until now;
        # once shipped they are off the shelf like any other.
        _deduct_shipped(stock, hold.qty, warehouse_id or hold.warehouse_id, now_ms)
    after = replace(hold, status=target, reason=reason, updated_ms=now_ms,
                    expires_at_ms=0 if target == SOLD else now_ms + rules.tombstone_ttl_ms)  # fmt: skip
    account(stock, hold, after)
    stock.touch(now_ms)
    return Step(Answer(order_id, line_no, hold.qty, action, OUTCOME_OF[target], reason), {line_no: after})


def allocate(stock: SkuStock, hold: LineHold | None, order_id: str, line_no: int, qty: int, warehouse_id: str,
             now_ms: int) -> Step:  # fmt: skip
    """Tie a paid line to the warehouse routing chose, if that warehouse still has the units free.

    Routing scores warehouses from published stock levels, which can be a refresh interval old;
    this is the authoritative check, so two orders routed at once never take the same last units.
    A presale line is checked alike: the pool keeps on-hand units back for it (``presale_reserved``), and
    routed it is sent a warehouse's units. Its stock not on a shelf yet, routing finds no warehouse for it and
    retries, as for a regular line; a refusal here has the order routed again, never the units booked twice.
    """
    if hold is None or not hold.is_open:
        detail = "no_open_hold" if hold is None else f"hold_is_{hold.status}"
        return Step(Answer(order_id, line_no, qty, "ALLOCATE", "IGNORED", detail))
    if hold.warehouse_id == warehouse_id:
        return Step(Answer(order_id, line_no, hold.qty, "ALLOCATE", "ALLOCATED", warehouse_id))
    if hold.warehouse_id:
        return Step(Answer(order_id, line_no, hold.qty, "ALLOCATE", "IGNORED", f"allocated_to_{hold.warehouse_id}"))
    if awaits_count(stock, warehouse_id, now_ms):
        return Step(Answer(order_id, line_no, hold.qty, "ALLOCATE", "REFUSED", Reason.WAREHOUSE_COUNTING))
    if stock.warehouse_free(warehouse_id) < hold.qty:
        return Step(Answer(order_id, line_no, hold.qty, "ALLOCATE", "REFUSED", Reason.WAREHOUSE_SHORT))
    after = replace(hold, warehouse_id=warehouse_id, updated_ms=now_ms)
    account(stock, hold, after)
    stock.touch(now_ms)
    return Step(Answer(order_id, line_no, hold.qty, "ALLOCATE", "ALLOCATED", warehouse_id), {line_no: after})


def awaits_count(stock: SkuStock, warehouse_id: str, now_ms: int) -> bool:
    """A hot SKU's record whose figure of the warehouse a count may still change: a bucket that answered the count
    with units kept there behind untied lines and has not heard it settled, or the home settling it. A line tied
    there now might be tied to units the count did not find (a refusal has the order routed again, never the units
    booked twice)."""
    hot = stock.hot
    if hot is None:
        return False
    if hot.bucket < 0:
        return any(settle["wh"] == warehouse_id for settle in hot.settles)
    probed = hot.probed.get(warehouse_id)
    return probed is not None and now_ms < int(probed[1])


def _deduct_shipped(stock: SkuStock, qty: int, warehouse_id: str, now_ms: int) -> None:
    bucket = stock.hot is not None and stock.hot.bucket >= 0
    if warehouse_id not in stock.on_hand and not (bucket and warehouse_id):
        # The WMS did not say (or named a warehouse without this SKU): take it from the fullest. Not at a hot SKU's
        # bucket that has none of a warehouse named: the SKU may have it elsewhere (the shortfall goes home).
        warehouse_id = max(stock.on_hand, key=lambda wh: stock.on_hand[wh], default="unassigned")
    stock.on_hand[warehouse_id] = stock.on_hand.get(warehouse_id, 0) - qty
    note_shelf_move(stock, warehouse_id, -qty, now_ms)


def on_due(stock: SkuStock, rules: PoolRules, hold: LineHold, now_ms: int) -> Step:
    """A line's timer: an unpaid hold past its expiry expires; a tombstone past its time is dropped.

    What is left of a VIP set-aside goes back to the pool with no answer: no order line holds it,
    so no order may be cancelled by its expiry.
    """
    if hold.expires_at_ms > now_ms or hold.status == SOLD:
        return Step(None)
    if hold.status == HELD:
        step = line_command(stock, rules, hold, "EXPIRE", hold.order_id, hold.line_no, hold.qty, now_ms,
                            reason=Reason.HOLD_EXPIRED)  # fmt: skip
        if hold.line_no == SET_ASIDE_LINE:
            step.answer = None
        return step
    return Step(None, {hold.line_no: None})


def check_adjustment(kind: str, qty: int, warehouse_id: str, warehouses: frozenset[str]) -> Reason | None:
    """The reason a stock adjustment is refused, or None if it is valid."""
    if kind not in ADJUSTMENT_KINDS:
        return Reason.INVALID_KIND
    if kind != "PRESALE_CAP" and warehouse_id not in warehouses:
        return Reason.UNKNOWN_WAREHOUSE
    if (kind == "RECEIPT" and qty <= 0) or (kind in ("COUNT", "PRESALE_CAP") and qty < 0):
        return Reason.INVALID_QTY
    if (kind == "CORRECTION" and qty == 0) or abs(qty) > MAX_ADJUSTMENT_QTY:
        return Reason.INVALID_QTY
    return None


def adjust(stock: SkuStock, kind: str, warehouse_id: str, qty: int, now_ms: int, dated_ms: int = 0,
           skew_ms: int = 0) -> None:  # fmt: skip
    """Apply a validated stock adjustment (the processor makes it idempotent by adjustment id); ``dated_ms``: when
    the warehouse made it (a count: when it was taken; ``count_refusal`` first), the pool's clock if not said."""
    stock.known = True
    if kind in ("RECEIPT", "CORRECTION"):
        at_ms = count_time(dated_ms, now_ms, skew_ms)  # a date further ahead is not believed either
        in_force = stock.counted_ms.get(warehouse_id)
        if in_force is not None and at_ms <= (in_force if qty > 0 else in_force - skew_ms):
            # Put away (or found missing) before the count in force was taken: the count has it already.
            stock.touch(now_ms)
            return
        stock.on_hand[warehouse_id] = stock.on_hand.get(warehouse_id, 0) + qty
        note_shelf_move(stock, warehouse_id, qty, at_ms)
    elif kind == "COUNT":
        taken_ms = count_time(dated_ms, now_ms, skew_ms)
        stock.on_hand[warehouse_id] = qty + moved_since(stock, warehouse_id, taken_ms, skew_ms)
        counted(stock, warehouse_id, taken_ms, skew_ms)
    elif kind == "PRESALE_CAP":
        stock.presale_cap = qty
    stock.touch(now_ms)


# ---- counts, as of when they were taken ------------------------------------------------------------
#
# A count says what stood on the shelf when it was taken, and reaches the pool later: a shipment booked in
# between already came off, and replacing the figure would put it back (a phantom unit, sold again); a receipt
# in between would be lost. So the pool keeps each warehouse's recent movements and puts those after the
# count's time back on top of it. The clocks differ (a shipment is dated by the pool's batch, a count by the
# warehouse), so every doubt errs on the side of fewer units: units taken count as after the count from
# ``skew_ms`` (STOCKFLOW_COUNT_CLOCK_SKEW_MS) before its time, dated to the end of their slot of
# SHELF_MOVE_SLOT_MS; units added only when dated after it, to the start of theirs. At most SHELF_MOVES_KEPT
# slots are kept per warehouse; a count older than what is kept is refused (``count_too_old``), and one taken
# before the count in force (``count_superseded``).

SHELF_MOVE_SLOT_MS = 250
SHELF_MOVES_KEPT = 48  # slots with movements per warehouse: 12 s of a SKU shipping all the time, ~1 KB


def _slot_of(at_ms: int, qty: int) -> int:
    """The slot a movement is dated to: units taken to the end of theirs, units added to the start (fewer units)."""
    slots = -(-at_ms // SHELF_MOVE_SLOT_MS) if qty < 0 else at_ms // SHELF_MOVE_SLOT_MS
    return slots * SHELF_MOVE_SLOT_MS


def taken_after(at_ms: int, taken_ms: int, skew_ms: int) -> bool:
    """Whether units that left the shelf at ``at_ms`` count as gone after a count taken at ``taken_ms``."""
    return _slot_of(at_ms, -1) > taken_ms - skew_ms


def count_time(dated_ms: int, now_ms: int, skew_ms: int) -> int:
    """When a count dated ``dated_ms`` was taken, as the pool holds it: a clock further ahead than the skew allows is
    not believed (the count would stand over every honest one taken before that moment)."""
    return min(dated_ms, now_ms + skew_ms) if dated_ms else now_ms


def note_shelf_move(stock: SkuStock, warehouse_id: str, qty: int, at_ms: int) -> None:
    """Units that left (``qty`` < 0) or reached (> 0) ``warehouse_id``'s shelf at ``at_ms``."""
    if qty == 0:
        return
    when = _slot_of(at_ms, qty)
    moves = stock.shelf_moves.setdefault(warehouse_id, [])
    at = len(moves)
    while at > 0 and moves[at - 1][0] > when:
        at -= 1
    if at > 0 and moves[at - 1][0] == when:
        moves[at - 1][1 if qty < 0 else 2] += abs(qty)
    else:
        moves.insert(at, [when, -qty if qty < 0 else 0, qty if qty > 0 else 0])
    if len(moves) > SHELF_MOVES_KEPT:
        gone = moves.pop(0)
        stock.moves_from[warehouse_id] = max(stock.moves_from.get(warehouse_id, 0), gone[0])


def forget_old_moves(stock: SkuStock, now_ms: int, max_age_ms: int) -> None:
    """Let go of movements older than a count may be (``STOCKFLOW_COUNT_MAX_AGE_S``): a SKU that stopped moving
    keeps a small record, and a count taken before them is refused."""
    for warehouse_id, moves in list(stock.shelf_moves.items()):
        if moves[0][0] >= now_ms - max_age_ms:
            continue
        keep = [m for m in moves if m[0] >= now_ms - max_age_ms]
        newest_gone = moves[len(moves) - len(keep) - 1][0]
        stock.moves_from[warehouse_id] = max(stock.moves_from.get(warehouse_id, 0), newest_gone)
        if keep:
            stock.shelf_moves[warehouse_id] = keep
        else:
            del stock.shelf_moves[warehouse_id]


def moved_since(stock: SkuStock, warehouse_id: str, taken_ms: int, skew_ms: int) -> int:
    """The shelf's net movement after a count taken at ``taken_ms``, as far as the pool has booked it."""
    net = 0
    for when, taken, added in stock.shelf_moves.get(warehouse_id, ()):  # ``when``: the slot's end or start
        if when > taken_ms - skew_ms:
            net -= taken
        if when > taken_ms:
            net += added
    return net


def count_refusal(stock: SkuStock, warehouse_id: str, taken_ms: int, skew_ms: int,
                  elsewhere_kept_from: int = 0) -> tuple[Reason, str] | None:  # fmt: skip
    """Why a count taken at ``taken_ms`` (``count_time``) cannot be applied, if it cannot; ``elsewhere_kept_from``:
    from when a hot SKU's buckets keep their shipments."""
    in_force = stock.counted_ms.get(warehouse_id, 0)
    if taken_ms < in_force:
        return Reason.COUNT_SUPERSEDED, f"taken at {taken_ms}, before the count in force (taken at {in_force})"
    kept_from = max(stock.moves_from.get(warehouse_id, 0), elsewhere_kept_from)
    if taken_ms - skew_ms < kept_from:
        return Reason.COUNT_TOO_OLD, (f"taken at {taken_ms}; the shelf's movements are kept from {kept_from} on "
                                      f"(its last {SHELF_MOVES_KEPT} moments with any)")  # fmt: skip
    return None


def counted(stock: SkuStock, warehouse_id: str, taken_ms: int, skew_ms: int) -> None:
    """A count taken at ``taken_ms`` is in force: movements no later count can need are let go."""
    stock.counted_ms[warehouse_id] = taken_ms
    moves = stock.shelf_moves.get(warehouse_id)
    if moves:
        moves[:] = [m for m in moves if m[0] > taken_ms - skew_ms]
        if not moves:
            del stock.shelf_moves[warehouse_id]


# ---- VIP override ----------------------------------------------------------------------------------
#
# Requested by one operator, approved by another, then offered to the VIP order before any stock moves: the pool
# cannot tell an order that can still take a set-aside from one that never will (rejected, cancelled, timed out,
# or placed already, its lines asked for stock before the override). The order's lifecycle answers on the
# set-aside's line (``SET_ASIDE_LINE``): a RESERVE claims the override, and only then are free units set aside and
# the rest pledged (the lifecycle claims for an order it has not seen, so the order may never come: no other order's
# hold is released until a line of the VIP order needs it, ``reserve``); a RELEASE whose reason is
# ``<why>:vip_override:<id>`` refuses it, ``why`` becoming the override's refusal. A RELEASE naming no override lets
# go of what is set aside for the order: its lines took what they could.
# The line and the reasons naming an override are the contract's (``streams.contract.set_aside``).


@dataclass
class OverrideRequest:
    override_id: str
    qty: int
    vip_order_id: str
    requester: str
    reason: str
    requested_ms: int
    status: str = "pending"  # pending | offered (approved, the VIP order's answer awaited) | applied | refused
    approver: str = ""
    approved_ms: int = 0
    detail: str = ""
    released: list[list[Any]] = field(default_factory=list)  # [order id, line no, qty] of released holds

    @classmethod
    def load(cls, data: dict[str, Any]) -> OverrideRequest:
        return cls(**stored_fields(cls, data))


@dataclass
class OverrideStep:
    outcome: str  # REQUESTED | OFFERED | APPLIED | REFUSED
    request: OverrideRequest | None
    detail: str = ""
    released: list[LineHold] = field(default_factory=list)  # holds after their release
    set_aside: LineHold | None = None  # the VIP order's line-0 hold


_OUTCOME_OF_STATUS = {"pending": "REQUESTED", "offered": "OFFERED", "applied": "APPLIED", "refused": "REFUSED"}


def recorded(request: OverrideRequest | None) -> OverrideStep:
    """An override's step seen again (a duplicate, a replay) answers with its recorded outcome; an applied one's
    request names the holds it released, so the orders that lost them are told again."""
    if request is None:
        return OverrideStep("REFUSED", None, Reason.UNKNOWN_OVERRIDE)
    return OverrideStep(_OUTCOME_OF_STATUS.get(request.status, "REFUSED"), request, request.detail)


def request_override(existing: OverrideRequest | None, override_id: str, qty: int, vip_order_id: str,
                     requester: str, reason: str, now_ms: int) -> OverrideStep:  # fmt: skip
    if existing is not None:
        return recorded(existing)
    request = OverrideRequest(override_id, qty, vip_order_id, requester, reason, now_ms)
    problem: Reason | None = None
    if not reason.strip():
        problem = Reason.REASON_REQUIRED
    elif not requester.strip():
        problem = Reason.REQUESTER_REQUIRED
    elif qty <= 0:
        problem = Reason.INVALID_QTY
    elif not vip_order_id.strip():
        problem = Reason.VIP_ORDER_REQUIRED
    if problem is not None:
        request.status, request.detail = "refused", problem
        return OverrideStep("REFUSED", request, problem)
    return OverrideStep("REQUESTED", request)


def _releasable(vip_order_id: str, unpaid: list[LineHold]) -> list[LineHold]:
    # Never the VIP order's own: released, it would cancel the order the override is for. Never a paid or presale
    # hold, nor a set-aside, whatever the caller passed: a pledge is on unpaid regular holds only.
    # Nor a line another VIP order holds through its own override.
    return [h for h in unpaid if h.order_id != vip_order_id and h.line_no != SET_ASIDE_LINE and h.status == HELD
            and not h.presale and not override_of(h.reason)]  # fmt: skip


def _shortfall(stock: SkuStock, qty: int, unpaid: list[LineHold], out_in_buckets: bool) -> Reason | None:
    if stock.available() + sum(h.qty for h in unpaid) - stock.pledged >= qty:
        return None
    # A hot SKU's free units and newest holds are out in its buckets, on other partitions, where the home
    # cannot take them back in one step: the operator sets it cold first (its buckets merge home).
    return Reason.OVERRIDE_ON_HOT_SKU if out_in_buckets else Reason.INSUFFICIENT_LOCKED_STOCK


def approve_override(stock: SkuStock, request: OverrideRequest | None, approver: str, unpaid: list[LineHold],
                     now_ms: int, *, out_in_buckets: bool = False) -> OverrideStep:  # fmt: skip
    """Approve a requested override: if free stock and unpaid holds could cover it, it is offered to its VIP order
    (OFFERED) and nothing moves until the order claims it (``claim_override``) or refuses it (``decline_override``).

    ``unpaid`` is every open, unpaid, regular hold of the record; ``out_in_buckets``: the SKU is hot and
    some of its units are held by its buckets, not this record.
    """
    if request is None or request.status != "pending":
        return recorded(request)
    if not approver.strip() or approver == request.requester:
        # Not recorded as a decision: the right approver may still approve it.
        return OverrideStep("REFUSED", request, Reason.APPROVER_MUST_DIFFER_FROM_REQUESTER)
    short = _shortfall(stock, request.qty, _releasable(request.vip_order_id, unpaid), out_in_buckets)
    if short is not None:
        request.status, request.approver, request.detail = "refused", approver, short
        return OverrideStep("REFUSED", request, short)
    request.status, request.approver, request.approved_ms = "offered", approver, now_ms
    return OverrideStep("OFFERED", request)


def claim_override(stock: SkuStock, rules: PoolRules, request: OverrideRequest | None, order_id: str,
                   unpaid: list[LineHold], set_aside_before: LineHold | None, now_ms: int, *,
                   out_in_buckets: bool = False) -> OverrideStep:  # fmt: skip
    """The VIP order ``order_id`` claims the override offered to it, checked again against the stock now (``unpaid``
    as for ``approve_override``): free units are set aside at once, the rest pledged. No hold of another order is
    let go yet: the order may never come (a mistyped id claims too); its lines take the pledge over (``reserve``)."""
    if request is None or request.vip_order_id != order_id:
        return recorded(None)  # only the order an override names can claim it
    if request.status != "offered":
        return recorded(request)
    short = _shortfall(stock, request.qty, _releasable(request.vip_order_id, unpaid), out_in_buckets)
    if short is not None:
        request.status, request.detail = "refused", short
        return OverrideStep("REFUSED", request, short)
    free = min(request.qty, stock.available())
    # A second override for the same VIP order adds to what the first set aside and pledged.
    before = set_aside_before if set_aside_before is not None and set_aside_before.status == HELD else None
    set_aside = LineHold(request.vip_order_id, SET_ASIDE_LINE, free + (before.qty if before else 0), "vip", False,
                         HELD, override_reason(request.override_id), now_ms + rules.hold_ttl_ms, now_ms,
                         pledged=request.qty - free + (before.pledged if before else 0))  # fmt: skip
    account(stock, before, set_aside)
    stock.touch(now_ms)
    request.status, request.released = "applied", []
    request.detail = pledge_detail(request.qty - free) if request.qty > free else ""
    return OverrideStep("APPLIED", request, request.detail, set_aside=set_aside)


def took_over(request: OverrideRequest | None, released: list[LineHold], pledged: int, line: str) -> OverrideStep:
    """The VIP order's line ``line`` (``<order>#<line>``) took over ``released`` holds its override pledged, leaving
    ``pledged``: the request names them with those its claim released, and the audit says which line took them."""
    if request is not None:
        request.released += [[h.order_id, h.line_no, h.qty] for h in released]
    return OverrideStep("APPLIED", request, pledge_detail(pledged, line), released=released)


def decline_override(request: OverrideRequest | None, order_id: str, why: str) -> OverrideStep:
    """The VIP order ``order_id`` refuses the override offered to it, ``why`` (a ``Reason``): nothing was released or
    set aside for it."""
    if request is None or request.vip_order_id != order_id:
        return recorded(None)
    if request.status != "offered":
        return recorded(request)
    request.status, request.detail = "refused", why
    return OverrideStep("REFUSED", request, why)
