"""The stock pool of one SKU: pure rules, no Kafka.

    available = on_hand - locked - presale_reserved     (never below 0)

``on_hand`` is the sum over warehouses, each clamped at 0 so one warehouse's negative count
never cancels another's stock. ``locked`` is every open regular hold: placed and unpaid
(``held``) or paid and not shipped (``sold``). Presale holds come from the SKU's presale cap.

A hold is keyed by its order line (``<order id>#<line no>``). Its record is never deleted while a
replay could still bring its command back (``tombstone_ttl_ms``): a second RESERVE for the same
line, or a RESERVE replayed after its RELEASE, finds the record and gets the recorded answer
instead of taking stock again. Stock adjustments are idempotent by adjustment id the same way.
Each function returns the answers to publish; the caller persists the state before publishing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streams.contract.reasons import Reason

HELD, SOLD, SHIPPED, RELEASED, EXPIRED, REFUSED = (
    "held", "sold", "shipped", "released", "expired", "refused",
)  # fmt: skip
OPEN = (HELD, SOLD)
# The line number of stock an approved VIP override sets aside for a VIP order; the order's own
# lines take it over when they are reserved.
VIP_LINE = 0

# Outcomes of HoldDecided, by the status a command leaves the hold in.
OUTCOME_OF = {
    HELD: "HELD",
    SOLD: "COMMITTED",
    SHIPPED: "SHIPPED",
    RELEASED: "RELEASED",
    EXPIRED: "EXPIRED",
    REFUSED: "REFUSED",
}


@dataclass(frozen=True)
class PoolRules:
    """The settings the pool's decisions depend on."""

    main_channel: str
    channels: tuple[str, ...]
    safety_threshold: int
    hysteresis: int
    hold_ttl_ms: int
    tombstone_ttl_ms: int
    max_line_qty: int


@dataclass
class Hold:
    order_id: str
    line_no: int
    qty: int
    channel: str
    presale: bool
    status: str
    reason: str
    expires_at_ms: int  # 0: does not expire (paid, or a tombstone)
    updated_ms: int
    warehouse_id: str = ""  # set when routing allocates the line to a warehouse

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class Answer:
    """One HoldDecided to publish (to the order's partition)."""

    order_id: str
    line_no: int
    qty: int
    action: str
    outcome: str
    reason: str = ""


@dataclass
class SkuPool:
    sku: str
    known: bool = False  # has had at least one stock adjustment
    on_hand: dict[str, int] = field(default_factory=dict)
    presale_cap: int = 0
    holds: dict[str, Hold] = field(default_factory=dict)
    adjustments: dict[str, int] = field(default_factory=dict)  # adjustment id -> applied at ms
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    paused: bool = False
    offsets: dict[str, int] = field(default_factory=dict)  # "topic:partition" -> last offset
    newest_change_ms: int = 0
    newest_source_ms: int = 0

    # ---- figures --------------------------------------------------------------------------------
    def on_hand_total(self) -> int:
        return sum(max(0, qty) for qty in self.on_hand.values())

    def locked(self) -> int:
        return sum(h.qty for h in self.holds.values() if h.status in OPEN and not h.presale)

    def sold(self) -> int:
        return sum(h.qty for h in self.holds.values() if h.status == SOLD and not h.presale)

    def presale_reserved(self) -> int:
        return sum(h.qty for h in self.holds.values() if h.status in OPEN and h.presale)

    def available(self) -> int:
        return max(0, self.on_hand_total() - self.locked() - self.presale_reserved())

    def allocated(self) -> dict[str, int]:
        """Per warehouse, the open units routing has allocated to it (to ship from there)."""
        out: dict[str, int] = {}
        for h in self.holds.values():
            if h.status in OPEN and h.warehouse_id:
                out[h.warehouse_id] = out.get(h.warehouse_id, 0) + h.qty
        return out

    def warehouse_free(self, warehouse_id: str) -> int:
        return max(0, self.on_hand.get(warehouse_id, 0)) - self.allocated().get(warehouse_id, 0)

    def next_expiry_ms(self) -> int:
        due = [h.expires_at_ms for h in self.holds.values() if h.status == HELD and h.expires_at_ms]
        return min(due) if due else 0

    def sellable(self, rules: PoolRules) -> dict[str, int]:
        available = self.available()
        return {
            channel: available if (channel == rules.main_channel or not self.paused) else 0
            for channel in rules.channels
        }

    def breaches(self) -> list[str]:
        """Invariants that must hold after every change; a breach is alerted, never hidden."""
        found = []
        if self.locked() > self.on_hand_total():
            found.append(f"locked {self.locked()} exceeds on-hand {self.on_hand_total()}")
        if self.presale_reserved() > self.presale_cap:
            found.append(f"presale {self.presale_reserved()} exceeds cap {self.presale_cap}")
        for wh, qty in self.allocated().items():
            if qty > max(0, self.on_hand.get(wh, 0)):
                found.append(f"{wh}: allocated {qty} exceeds its on-hand {self.on_hand.get(wh, 0)}")
        negatives = {wh: q for wh, q in self.on_hand.items() if q < 0}
        if negatives:
            found.append(f"negative on-hand {negatives}")
        return found

    # ---- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = self.__dict__.copy()
        data["holds"] = {k: h.to_dict() for k, h in self.holds.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SkuPool:
        pool = cls(**{k: v for k, v in data.items() if k != "holds"})
        pool.holds = {k: Hold(**h) for k, h in data.get("holds", {}).items()}
        return pool


def hold_key(order_id: str, line_no: int) -> str:
    return f"{order_id}#{line_no}"


def next_paused(paused: bool, available: int, threshold: int, hysteresis: int) -> bool:
    """Pause below the threshold; resume only above threshold + hysteresis, so no flapping."""
    if not paused:
        return available < threshold
    return available <= threshold + hysteresis


def _touch(pool: SkuPool, now_ms: int) -> None:
    pool.newest_change_ms = max(pool.newest_change_ms, now_ms)


def reserve(
    pool: SkuPool,
    rules: PoolRules,
    order_id: str,
    line_no: int,
    qty: int,
    channel: str,
    presale: bool,
    now_ms: int,
) -> Answer:
    key = hold_key(order_id, line_no)
    existing = pool.holds.get(key)
    if existing is not None:  # duplicate or replay: nothing taken; say what the line is now
        return Answer(order_id, line_no, existing.qty, "RESERVE", OUTCOME_OF[existing.status], existing.reason)
    reason = ""
    vip = pool.holds.get(hold_key(order_id, VIP_LINE))
    if vip is not None and vip.status == HELD and 0 < qty <= vip.qty:
        # Stock an operator released to this VIP order: the line takes it over.
        vip.qty -= qty
        if vip.qty == 0:
            del pool.holds[hold_key(order_id, VIP_LINE)]
        pool.holds[key] = Hold(order_id, line_no, qty, channel, presale, HELD, vip.reason,
                               now_ms + rules.hold_ttl_ms, now_ms)  # fmt: skip
        _touch(pool, now_ms)
        return Answer(order_id, line_no, qty, "RESERVE", "HELD", vip.reason)
    if qty <= 0 or qty > rules.max_line_qty:
        reason = Reason.INVALID_QTY
    elif not pool.known:
        reason = Reason.UNKNOWN_SKU
    elif presale:
        if pool.presale_reserved() + qty > pool.presale_cap:
            reason = Reason.INSUFFICIENT_PRESALE_STOCK
    elif pool.paused and channel != rules.main_channel:
        reason = Reason.CHANNEL_PAUSED
    elif qty > pool.available():
        reason = Reason.INSUFFICIENT_STOCK
    status = REFUSED if reason else HELD
    expires = now_ms + rules.hold_ttl_ms if status == HELD else now_ms + rules.tombstone_ttl_ms
    pool.holds[key] = Hold(order_id, line_no, qty, channel, presale, status, reason, expires, now_ms)
    if status == HELD:
        _touch(pool, now_ms)
    return Answer(order_id, line_no, qty, "RESERVE", OUTCOME_OF[status], reason)


_TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    # action: (statuses it applies to, status it leaves)
    "RELEASE": ((HELD, SOLD), RELEASED),
    "COMMIT": ((HELD,), SOLD),
    "SHIP": ((HELD, SOLD), SHIPPED),
    "EXPIRE": ((HELD,), EXPIRED),
}


def apply_line_command(
    pool: SkuPool,
    rules: PoolRules,
    action: str,
    order_id: str,
    line_no: int,
    qty: int,
    now_ms: int,
    warehouse_id: str = "",
    reason: str = "",
) -> Answer:
    """RELEASE, COMMIT, SHIP, EXPIRE or ALLOCATE one order line; idempotent."""
    key = hold_key(order_id, line_no)
    hold = pool.holds.get(key)
    if action == "ALLOCATE":
        return allocate(pool, hold, order_id, line_no, qty, warehouse_id, now_ms)
    sources, target = _TRANSITIONS[action]
    if hold is None:
        if action == "RELEASE":
            # Released before its RESERVE was seen: leave a tombstone so a late RESERVE
            # (a replay, or one overtaken on another path) cannot take stock for a dead line.
            pool.holds[key] = Hold(
                order_id, line_no, qty, "", False, RELEASED, reason or "released_before_reserve",
                now_ms + rules.tombstone_ttl_ms, now_ms,
            )  # fmt: skip
            return Answer(order_id, line_no, qty, action, "RELEASED", "no_open_hold")
        return Answer(order_id, line_no, qty, action, "IGNORED", "no_hold")
    if hold.status == target:
        return Answer(order_id, line_no, hold.qty, action, OUTCOME_OF[target], hold.reason)
    if hold.status not in sources:
        return Answer(order_id, line_no, hold.qty, action, "IGNORED", f"hold_is_{hold.status}")
    if action == "SHIP" and not hold.presale:
        _deduct_shipped(pool, hold.qty, hold.warehouse_id or warehouse_id)
    hold.status = target
    hold.reason = reason
    hold.updated_ms = now_ms
    hold.expires_at_ms = 0 if target == SOLD else now_ms + rules.tombstone_ttl_ms
    _touch(pool, now_ms)
    return Answer(order_id, line_no, hold.qty, action, OUTCOME_OF[target], reason)


def allocate(pool: SkuPool, hold: Hold | None, order_id: str, line_no: int, qty: int, warehouse_id: str,
             now_ms: int) -> Answer:  # fmt: skip
    """Tie a paid line to the warehouse routing chose, if that warehouse still has the units free.

    Routing scores warehouses from published stock levels, which can be a refresh interval old;
    this is the authoritative check, so two orders routed at once can never both take the last
    units of one warehouse.
    """
    if hold is None or hold.status not in OPEN:
        return Answer(order_id, line_no, qty, "ALLOCATE", "IGNORED", "no_open_hold" if hold is None else
                      f"hold_is_{hold.status}")  # fmt: skip
    if hold.warehouse_id == warehouse_id:
        return Answer(order_id, line_no, hold.qty, "ALLOCATE", "ALLOCATED", warehouse_id)
    if hold.warehouse_id:
        return Answer(order_id, line_no, hold.qty, "ALLOCATE", "IGNORED", f"allocated_to_{hold.warehouse_id}")
    if pool.warehouse_free(warehouse_id) < hold.qty:
        return Answer(order_id, line_no, hold.qty, "ALLOCATE", "REFUSED", Reason.WAREHOUSE_SHORT)
    hold.warehouse_id = warehouse_id
    hold.updated_ms = now_ms
    _touch(pool, now_ms)
    return Answer(order_id, line_no, hold.qty, "ALLOCATE", "ALLOCATED", warehouse_id)


def _deduct_shipped(pool: SkuPool, qty: int, warehouse_id: str) -> None:
    if warehouse_id not in pool.on_hand:
        # The WMS did not say (or named a warehouse without this SKU): take it from the fullest.
        warehouse_id = max(pool.on_hand, key=lambda wh: pool.on_hand[wh], default="unassigned")
    pool.on_hand[warehouse_id] = pool.on_hand.get(warehouse_id, 0) - qty


def expire_due(pool: SkuPool, rules: PoolRules, now_ms: int) -> list[Answer]:
    """Expire unpaid holds past their expiry; forget tombstones past theirs."""
    answers = []
    for key, hold in list(pool.holds.items()):
        if not hold.expires_at_ms or hold.expires_at_ms > now_ms:
            continue
        if hold.status == HELD:
            answers.append(
                apply_line_command(pool, rules, "EXPIRE", hold.order_id, hold.line_no, hold.qty,
                                   now_ms, reason=Reason.HOLD_EXPIRED)
            )  # fmt: skip
        elif hold.status != SOLD:
            del pool.holds[key]
    for adjustment_id, applied_ms in list(pool.adjustments.items()):
        if applied_ms + rules.tombstone_ttl_ms <= now_ms:
            del pool.adjustments[adjustment_id]
    return answers


ADJUSTMENT_KINDS = ("RECEIPT", "COUNT", "CORRECTION", "PRESALE_CAP")


def check_adjustment(kind: str, qty: int, warehouse_id: str, warehouses: frozenset[str]) -> Reason | None:
    """The reason a stock adjustment is refused, or None if it is valid."""
    if kind not in ADJUSTMENT_KINDS:
        return Reason.INVALID_KIND
    if kind != "PRESALE_CAP" and warehouse_id not in warehouses:
        return Reason.UNKNOWN_WAREHOUSE
    if kind == "RECEIPT" and qty <= 0:
        return Reason.INVALID_QTY
    if kind in ("COUNT", "PRESALE_CAP") and qty < 0:
        return Reason.INVALID_QTY
    if kind == "CORRECTION" and qty == 0:
        return Reason.INVALID_QTY
    if abs(qty) > 10_000_000:
        return Reason.INVALID_QTY
    return None


def adjust(pool: SkuPool, adjustment_id: str, kind: str, warehouse_id: str, qty: int, now_ms: int) -> bool:
    """Apply a (validated) stock adjustment once; False if this id was applied already."""
    if adjustment_id in pool.adjustments:
        return False
    pool.adjustments[adjustment_id] = now_ms
    pool.known = True
    if kind == "RECEIPT" or kind == "CORRECTION":
        pool.on_hand[warehouse_id] = pool.on_hand.get(warehouse_id, 0) + qty
    elif kind == "COUNT":
        pool.on_hand[warehouse_id] = qty
    elif kind == "PRESALE_CAP":
        pool.presale_cap = qty
    _touch(pool, now_ms)
    return True


# ---- VIP override ------------------------------------------------------------------------------


@dataclass
class OverrideResult:
    outcome: str  # REQUESTED | APPLIED | REFUSED | DUPLICATE
    detail: str = ""
    released: list[Answer] = field(default_factory=list)
    request: dict[str, Any] = field(default_factory=dict)


def request_override(
    pool: SkuPool,
    override_id: str,
    qty: int,
    vip_order_id: str,
    requester: str,
    reason: str,
    now_ms: int,
) -> OverrideResult:
    if override_id in pool.overrides:
        return OverrideResult("DUPLICATE", request=pool.overrides[override_id])
    request = {
        "qty": qty, "vip_order_id": vip_order_id, "requester": requester,
        "reason": reason, "requested_ms": now_ms, "status": "pending", "approver": "",
    }  # fmt: skip
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
        request["status"] = "refused"
        pool.overrides[override_id] = request
        return OverrideResult("REFUSED", problem, request=request)
    pool.overrides[override_id] = request
    return OverrideResult("REQUESTED", request=request)


def approve_override(pool: SkuPool, rules: PoolRules, override_id: str, approver: str, now_ms: int) -> OverrideResult:
    """Release locked stock to the VIP order: free stock first, then the newest unpaid holds."""
    request = pool.overrides.get(override_id)
    if request is None:
        return OverrideResult("REFUSED", Reason.UNKNOWN_OVERRIDE)
    if request["status"] != "pending":
        return OverrideResult("DUPLICATE", request=request)
    if not approver.strip() or approver == request["requester"]:
        # Not recorded as a decision: the right approver may still approve it.
        return OverrideResult("REFUSED", Reason.APPROVER_MUST_DIFFER_FROM_REQUESTER, request=request)
    qty = int(request["qty"])
    free = pool.available()
    unpaid = sorted(
        (h for h in pool.holds.values() if h.status == HELD and not h.presale),
        key=lambda h: (h.updated_ms, h.order_id, h.line_no),
        reverse=True,
    )
    if free + sum(h.qty for h in unpaid) < qty:
        request["status"] = "refused"
        request["approver"] = approver
        return OverrideResult("REFUSED", Reason.INSUFFICIENT_LOCKED_STOCK, request=request)
    needed = qty - free
    released = []
    for hold in unpaid:
        if needed <= 0:
            break
        released.append(
            apply_line_command(pool, rules, "RELEASE", hold.order_id, hold.line_no, hold.qty,
                               now_ms, reason=f"vip_override:{override_id}")
        )  # fmt: skip
        needed -= hold.qty
    vip_key = hold_key(request["vip_order_id"], VIP_LINE)
    pool.holds[vip_key] = Hold(
        request["vip_order_id"], VIP_LINE, qty, "vip", False, HELD, f"vip_override:{override_id}",
        now_ms + rules.hold_ttl_ms, now_ms,
    )  # fmt: skip
    request.update(status="applied", approver=approver, approved_ms=now_ms)
    _touch(pool, now_ms)
    return OverrideResult("APPLIED", released=released, request=request)
