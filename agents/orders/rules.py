"""The order lifecycle: pure rules, no Kafka.

    placed -> reserved -> paid -> routed -> shipped -> delivered
    exits: rejected (a line could not be held), cancelled, payment_timeout

An order's lines are reserved all-or-nothing: one RESERVE per line goes to the line's SKU pool,
the order waits for exactly one answer per expected line number (a set, not a count, so a
duplicated answer cannot complete an order early), then either every line is held or every held
line is released. Events that arrive before their order (paid before created, as marketplaces do)
are parked on the order and applied when it arrives (a payment no order claims in time is owed back: a RED
``paid_order_not_fulfilled``). Every handler is idempotent: it looks at the
order's recorded state, so a duplicate or replayed event changes nothing.

A presale order (预售) is paid twice: its deposit secures it (stage time ``deposit_paid``: the holds are
committed so they outlive the hold TTL, but it stays reserved, unpaid and unrouted), its balance pays
it; one payment of at least its amount pays it in full at once (全款预售). The marketplace closes a trade
whose balance is unpaid itself; a balance that has not come ``presale_balance_ms`` after the deposit's
channel time cancels it here too (``balance_unpaid``), should that close be lost. A payment for an order
let go (cancelled, timed out, refused) is refused, and raises ``paid_order_not_fulfilled``: it is owed back.
What the buyer paid is kept per payment (``payments``, ``paid_fen``): refunds are bounded by it.

A VIP override's set-aside is offered to its order by the pool (``on_set_aside``) before any stock moves. Only
lines not yet sent to the pool can take one, so the order claims it while it has not been placed, and refuses it
otherwise, saying why (``Reason.VIP_ORDER_ENDED``, ``Reason.VIP_ORDER_ALREADY_PLACED``): the override is refused,
no other order's hold is taken, nothing is set aside. What its lines did not take is let go once the order leaves
``placed``, and all of it as soon as the order is known never to be placed and take it (a cancel parked for it, the
placement refused), not kept until the set-aside's expiry.

A paid order is scored for health once (``score_health``, the rules in ``agents.orders.health``),
with the customer's returns the agent looks up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agents.alerting.alerts import AlertSpec
from agents.orders import health
from agents.orders.health import HealthRules
from agents.routing.geo import locate
from streams.contract.keys import BUCKET_MARK, bucket_for
from streams.contract.reasons import Reason, Refusal
from streams.contract.records import (
    HoldCommand,
    LineDecision,
    OrderHealthScored,
    RoutingDecision,
    ShipmentOutcome,
    WarehouseDispatched,
)
from streams.contract.set_aside import SET_ASIDE_LINE, refusal_reason
from streams.engine.stored import stored_fields

TERMINAL = ("delivered", "rejected", "cancelled", "payment_timeout")
CLAIM_KEPT_TTLS = 2  # a set-aside's claim is remembered this many hold TTLs (``OrderRecord.set_asides``)
# Events kept for their order past the grace (``STOCKFLOW_PARKED_PAYMENT_GRACE_S``), with an alert, not
# dead-lettered: dropped, a payment leaves the customer's order unpaid, a cancel lets a late order ship to a
# buyer who called it off, and a shipment or delivery leaves its units on the shelf while routing ships again.
# Past that they are dead-lettered, and for the same reasons a slim copy stays for the order retention.
KEPT_FOR_ORDER = ("PaymentConfirmed", "OrderCancelled", "ShipmentDispatched", "ShipmentDelivered")
# The reason of the OrderCancelled a refund-only approved before shipment sends (``refund.order-cancels``).
REFUND_ONLY_CANCEL = "refund_only:"
# States an order may rest in for good, whose record is purged after the retention time: the finished
# ones, and shipped (not every channel reports delivery, and nothing else moves a shipped order).
RESTING = (*TERMINAL, "shipped")
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "": ("placed",),
    "placed": ("reserved", "rejected", "cancelled"),
    "reserved": ("paid", "cancelled", "payment_timeout", "rejected"),
    # Until routing ships, a WMS shipment may follow payment directly.
    # A WMS that ships from a manual push may report a shipment before routing did.
    "paid": ("routed", "shipped", "cancelled"),
    "routed": ("shipped", "cancelled"),
    "shipped": ("delivered",),
}


def can_transition(current: str, new: str) -> bool:
    return new in TRANSITIONS.get(current, ())


@dataclass(frozen=True)
class OrderRules:
    """The settings the lifecycle's decisions depend on, every one from ``Settings`` (no defaults here)."""

    channels: tuple[str, ...]
    payment_timeout_ms: int
    hold_ttl_ms: int
    parked_grace_ms: int
    parked_payment_grace_ms: int  # a payment is never dropped for waiting: it waits this long
    # How long a finished order is kept; an event ``KEPT_FOR_ORDER`` given up on (dead-lettered) keeps a slim copy
    # as long, so an order that comes later still (replayed from intake's dead letters) is paid, or called off.
    order_retention_ms: int
    max_line_qty: int
    max_lines: int
    sla_ms: int
    ship_promise_ms: int
    route_retry_ms: int
    max_route_attempts: int
    reserve_retry_ms: int
    presale_balance_ms: int  # a presale order's deposit waits this long for its balance


# A line refused because a count of its warehouse is being settled (``Reason.WAREHOUSE_COUNTING``) is routed again
# this soon: the settling waits for every bucket of a hot SKU to answer, milliseconds unless one lags. Past a minute of
# such waits over the order's life they count as attempts, so a count that does not settle is not waited on for ever
# without the order's routing alerts.
COUNT_WAIT_MS = 1_000
MAX_COUNT_WAITS = 60
# A presale order's stage time for its deposit: the order stays reserved (it is paid by its balance).
DEPOSIT_PAID = "deposit_paid"
# Why a presale order whose balance did not come in time is cancelled (``OrderStateChanged.reason``).
BALANCE_UNPAID = "balance_unpaid"
# The payments an order keeps (``OrderRecord.payments``): a presale's deposit and balance, any other payment
# in full (a normal order's, or a presale paid at once).
DEPOSIT, BALANCE, IN_FULL = "deposit", "balance", "payment"


@dataclass
class OrderRecord:
    order_id: str
    channel: str = ""
    state: str = ""  # "" until OrderPlaced arrives
    reserve_asked_ms: int = 0  # when the RESERVEs of lines with no answer were last sent
    lines: dict[str, dict[str, Any]] = field(default_factory=dict)  # line no -> {sku, qty}
    presale: bool = False
    vip: bool = False
    placed_at_ms: int = 0
    sent_at_ms: int = 0
    answers: dict[str, list[str]] = field(default_factory=dict)  # RESERVE answer per line
    line_status: dict[str, str] = field(default_factory=dict)  # latest pool outcome per line
    previous_state: str = ""
    paid: bool = False
    payment_deadline_ms: int = 0
    stage_times: dict[str, int] = field(default_factory=dict)
    reason: str = ""
    warehouse_id: str = ""
    parked: list[dict[str, Any]] = field(default_factory=list)
    channel_order_id: str = ""
    address: dict[str, str] = field(default_factory=dict)
    # Routing: the plan (line -> warehouse) of the current attempt, its number, the waits for a warehouse's count
    # among them (not attempts), when to retry.
    routing: dict[str, Any] = field(default_factory=dict)
    allocated: dict[str, str] = field(default_factory=dict)  # line no -> warehouse, as the pool confirmed
    acked: dict[str, int] = field(default_factory=dict)  # warehouse -> WMS acknowledgement ms
    sla: str = ""  # "" | "red" | "cleared"
    ship_overdue: str = ""  # "" | "red" | "cleared": routed, and past the promised ship time with lines unshipped
    shipped_lines: list[str] = field(default_factory=list)
    # What a refund decision needs of its order (the refund processor reads this store).
    amount_fen: int = 0
    custom: bool = False  # any custom-made line: never auto-approved for a no-reason return
    # What the health score needs of the order (and refunds the customer id). Records stored before these
    # fields existed load with the defaults.
    customer_id: str = ""
    coupon_type: str = ""
    bundle: bool = False  # any bundle line
    paid_at_ms: int = 0  # the channel's payment time (PaymentConfirmed's event time; presale: the balance's)
    # When the buyer got it (ShipmentDelivered's event time, never after it was read): a refund's no-reason window
    # runs from it, so a carrier callback read days late does not stretch the window.
    delivered_at_ms: int = 0
    health_score: float | None = None  # set once, when the order is paid
    # A hot SKU's lines: the stock bucket each was sent to and, once answered, the one holding it; their
    # later commands go there (absent: the SKU's home).
    buckets: dict[str, int] = field(default_factory=dict)
    balance_deadline_ms: int = 0  # a presale order's deposit: when it is cancelled if its balance has not come
    # What each payment heard for the order took (DEPOSIT | BALANCE | IN_FULL -> amount_fen), a late one too.
    payments: dict[str, int] = field(default_factory=dict)
    # A paid order's record purged after the retention time leaves a slim one (``refund_tombstone``) for as long
    # as its refunds may come: state "" (no order to anyone), what was paid and its lines kept, and this set.
    purged_at_ms: int = 0
    # The VIP set-asides the order claimed before it was placed: SKU -> when the claim is forgotten, if the order
    # never comes. Twice the hold TTL from the claim: the pool stamps the set-aside's expiry when it takes the claim,
    # later (lag), maybe on another worker's clock; forgotten too soon, what the order's lines leave stays locked
    # until then. What its lines leave is let go once the order leaves placed, or when it is known never to take
    # it (a cancel parked for it); a RELEASE of a set-aside already expired lets go of nothing.
    set_asides: dict[str, int] = field(default_factory=dict)

    @property
    def deposit_paid(self) -> bool:
        return DEPOSIT_PAID in self.stage_times

    @property
    def paid_fen(self) -> int:
        """What the buyer has paid for the order: the sum of its payments. A payment in full or balance naming
        no amount (0), or a paid order stored before payments were kept, paid what the order asked; a deposit
        naming none adds nothing, so a refund of it goes to customer service rather than out unchecked."""
        total = sum(self.payments.values())
        unnamed = any(self.payments.get(kind) == 0 for kind in (BALANCE, IN_FULL))
        if unnamed or (self.paid and not self.payments):
            return max(total, self.amount_fen)
        return total

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OrderRecord:
        return cls(**stored_fields(cls, data))

    @property
    def tombstone(self) -> bool:
        """What is left of a paid order purged after the retention time, for its refunds (``refund_tombstone``)."""
        return bool(self.purged_at_ms) and not self.state

    def next_deadline_ms(self, rules: OrderRules) -> int:
        due = [parked_deadline_ms(p, rules) for p in self.parked]
        if not self.state and self.set_asides:
            due.append(min(self.set_asides.values()))
        if self.state == "placed" and self.reserve_asked_ms:
            due.append(self.reserve_asked_ms + rules.reserve_retry_ms)
        if self.state == "reserved" and not self.paid and self.payment_deadline_ms:
            due.append(self.payment_deadline_ms)
        if self.state == "reserved" and not self.paid and self.balance_deadline_ms:
            due.append(self.balance_deadline_ms)
        if not self.sla and "paid" in self.stage_times and waiting_for_warehouse(self):
            due.append(self.sla_since_ms() + rules.sla_ms)
        if self.state == "paid" and self.routing.get("retry_at_ms"):
            due.append(self.routing["retry_at_ms"])
        if self.state == "routed" and not self.ship_overdue and self.stage_times.get("paid"):
            due.append(self.ship_by_ms(rules))
        return min(due) if due else 0

    def ship_by_ms(self, rules: OrderRules) -> int:
        """When the order was promised to ship by (paid + ``STOCKFLOW_SHIP_PROMISE_S``); 0: not paid."""
        paid_at = self.stage_times.get("paid", 0)
        return paid_at + rules.ship_promise_ms if paid_at else 0

    def sla_since_ms(self) -> int:
        """When the order's 15 minutes to a warehouse began: when the customer paid, by the channel's clock, if
        that is earlier than when the payment was heard (a slow callback, a payment parked for its order); a
        channel clock ahead of ours must not lengthen it. 0: not paid."""
        heard = self.stage_times.get("paid", 0)
        return min(heard, self.paid_at_ms) if heard and self.paid_at_ms else heard

    def dispatched_to(self) -> dict[str, list[str]]:
        """Warehouse -> line numbers, once every line is allocated."""
        out: dict[str, list[str]] = {}
        for line_no in sorted(self.allocated, key=int):
            out.setdefault(self.allocated[line_no], []).append(line_no)
        return out


def waiting_for_warehouse(rec: OrderRecord) -> bool:
    """Paid, and not yet pushed to a warehouse and acknowledged by it: what the SLA watches."""
    if rec.state == "paid":
        return True
    return rec.state == "routed" and not set(rec.dispatched_to()) <= set(rec.acked)


@dataclass(frozen=True)
class Reservation:
    """The all-or-nothing answer for an order's lines; the agent publishes it as ``ReservationDecided``."""

    outcome: str  # RESERVED | REJECTED
    lines: list[LineDecision]


@dataclass
class Effects:
    """What a handler decided; the agent persists the record, then publishes these."""

    hold_commands: list[HoldCommand] = field(default_factory=list)
    transitions: list[tuple[str, str, str]] = field(default_factory=list)  # (from, to, reason)
    reservation: Reservation | None = None
    refusal: Refusal | None = None  # why the current event is refused (dead-lettered)
    expired_parked: list[dict[str, Any]] = field(default_factory=list)
    replay_parked: list[dict[str, Any]] = field(default_factory=list)
    route: list[str] = field(default_factory=list)  # lines the agent must find a warehouse for
    routing_decision: RoutingDecision | None = None
    dispatches: list[WarehouseDispatched] = field(default_factory=list)
    shipment_outcomes: list[ShipmentOutcome] = field(default_factory=list)
    alerts: list[AlertSpec] = field(default_factory=list)
    score_health: bool = False  # the order was just paid: the agent scores it (it knows the customer's returns)
    health: OrderHealthScored | None = None

    def extend(self, other: Effects) -> None:
        """Add ``other``'s outputs after this one's (same order, later handler)."""
        for name in ("hold_commands", "transitions", "expired_parked", "replay_parked", "route", "dispatches",
                     "shipment_outcomes", "alerts"):  # fmt: skip
            getattr(self, name).extend(getattr(other, name))
        self.reservation = other.reservation or self.reservation
        self.routing_decision = other.routing_decision or self.routing_decision
        self.refusal = self.refusal or other.refusal
        self.score_health = self.score_health or other.score_health
        self.health = other.health or self.health


def _invalid(reason: Reason, what: str) -> Refusal:
    # Dead letters of invalid orders have always read "<reason>: <what>"; readers may match on it.
    return Refusal(reason, f"{reason}: {what}")


def validate_placed(event: dict[str, Any], rules: OrderRules) -> Refusal | None:  # noqa: C901, PLR0912 - one check per field, the first failing one names the refusal
    """Why an OrderPlaced is refused (None if it is valid)."""
    if event["channel"] not in rules.channels:
        return _invalid(Reason.UNKNOWN_CHANNEL, repr(event["channel"]))
    if not event["channel_order_id"].strip():
        return _invalid(Reason.MISSING_FIELD, "channel_order_id")
    lines = event["lines"]
    if not lines:
        return _invalid(Reason.MISSING_FIELD, "lines")
    if len(lines) > rules.max_lines:
        return _invalid(Reason.INVALID_LINES, f"{len(lines)} lines, at most {rules.max_lines}")
    numbers = [ln["line_no"] for ln in lines]
    if len(set(numbers)) != len(numbers) or min(numbers) < 1:
        return _invalid(Reason.INVALID_LINES, "line numbers must be unique and >= 1")
    for ln in lines:
        if not ln["sku"].strip():
            return _invalid(Reason.MISSING_FIELD, f"lines[{ln['line_no']}].sku")
        if BUCKET_MARK in ln["sku"]:
            return _invalid(Reason.INVALID_SKU, f"line {ln['line_no']} sku {ln['sku']!r}")
        if ln["qty"] <= 0 or ln["qty"] > rules.max_line_qty:
            return _invalid(Reason.INVALID_QTY, f"line {ln['line_no']} qty {ln['qty']}")
        if ln["unit_price_fen"] < 0:
            return _invalid(Reason.INVALID_AMOUNT, f"line {ln['line_no']} price {ln['unit_price_fen']}")
    if event["amount_fen"] < 0:
        return _invalid(Reason.INVALID_AMOUNT, f"{event['amount_fen']}")
    addr = event["address"]
    for part in ("province", "city", "district"):
        if not addr[part].strip():
            return _invalid(Reason.MISSING_FIELD, f"address.{part}")
    if locate(addr["province"], addr["city"]) is None:
        return _invalid(Reason.ADDRESS_UNPLACEABLE, f"province {addr['province']!r} is not in the centroid table")
    return None


def _move(rec: OrderRecord, fx: Effects, new: str, now_ms: int, reason: str = "") -> None:
    fx.transitions.append((rec.state, new, reason))
    rec.previous_state = rec.state
    rec.state = new
    rec.reason = reason
    rec.stage_times[new] = now_ms
    if new != "placed":
        # Every line has asked the pool (sent before this, so decided first) or never will: no line can take
        # what is left of a set-aside, and kept until its expiry it would be stock no one may sell.
        _let_set_asides_go(rec, fx, f"order_{new}", now_ms)


def _let_set_asides_go(rec: OrderRecord, fx: Effects, reason: str, now_ms: int) -> None:
    for sku in sorted(rec.set_asides):
        fx.hold_commands.append(_set_aside_command(rec, "RELEASE", sku, 0, reason, now_ms))
    rec.set_asides = {}


def _command(rec: OrderRecord, action: str, line_no: str, now_ms: int, rules: OrderRules,
             reason: str = "", warehouse_id: str = "") -> HoldCommand:  # fmt: skip
    line = rec.lines[line_no]
    return {
        "event_id": f"{action.lower()}:{rec.order_id}#{line_no}",
        "event_time_ms": now_ms,
        "action": action,
        "order_id": rec.order_id,
        "line_no": int(line_no),
        "sku": line["sku"],
        "qty": line["qty"],
        "channel": rec.channel,
        "presale": rec.presale,
        "expires_at_ms": now_ms + rules.hold_ttl_ms if action == "RESERVE" else 0,
        "reason": reason,
        "source_time_ms": rec.sent_at_ms or rec.placed_at_ms,
        "warehouse_id": warehouse_id,
        "bucket": rec.buckets.get(line_no, -1),
        "tries": 0,
    }


def _release_held(rec: OrderRecord, fx: Effects, now_ms: int, rules: OrderRules, reason: str) -> None:
    # Released even when no answer is known yet: the pool leaves a tombstone, so a RESERVE
    # still in flight for the line cannot take stock afterwards.
    for line_no in rec.lines:
        answer = rec.answers.get(line_no)
        if line_no in rec.shipped_lines:
            continue  # its units left (shipped before the order was paid): nothing held to give back
        if answer is None or answer[0] in ("HELD", "COMMITTED"):
            fx.hold_commands.append(_command(rec, "RELEASE", line_no, now_ms, rules, reason))


def park(rec: OrderRecord, event_type: str, event: dict[str, Any], source: dict[str, Any],
         now_ms: int) -> Effects:  # fmt: skip
    """Keep an event that arrived before its order (a repeat of one kept, its slim copy too, changes nothing)."""
    if not any(p["event_id"] == event["event_id"] for p in rec.parked):
        rec.parked.append({"event_type": event_type, "event": event, "event_id": event["event_id"],
                           "source": source, "parked_ms": now_ms})  # fmt: skip
    rec.channel = rec.channel or event["channel"]
    fx = Effects()
    if event_type == "OrderCancelled":
        # The order ends as soon as it is placed: its lines will never take a set-aside it claimed.
        _let_set_asides_go(rec, fx, "order_cancelled", now_ms)
    return fx


def on_placed(rec: OrderRecord, event: dict[str, Any], now_ms: int, rules: OrderRules) -> Effects:
    fx = Effects()
    if rec.state:
        # Duplicate: if answers are still missing, ask again (the pool answers idempotently).
        if rec.state == "placed":
            _ask_again(rec, fx, now_ms, rules)
        return fx
    fx.refusal = validate_placed(event, rules)
    if fx.refusal is not None:
        _refused_while_paid(rec, fx.refusal, fx, now_ms)
        # No line of it asked the pool: a set-aside it claimed would stay locked for an order that may not come.
        _let_set_asides_go(rec, fx, "order_refused", now_ms)
        return fx
    rec.channel = event["channel"]
    rec.channel_order_id = event["channel_order_id"]
    rec.address = {k: str(v) for k, v in event["address"].items()}
    rec.lines = {str(ln["line_no"]): {"sku": ln["sku"], "qty": ln["qty"]} for ln in event["lines"]}
    rec.presale = bool(event.get("presale"))
    rec.vip = bool(event.get("vip"))
    rec.amount_fen = int(event.get("amount_fen") or 0)
    rec.custom = any(ln.get("custom") for ln in event["lines"])
    rec.bundle = any(ln.get("bundle") for ln in event["lines"])
    rec.customer_id = str(event.get("customer_id") or "")
    rec.coupon_type = str(event.get("coupon_type") or "")
    rec.placed_at_ms = int(event["event_time_ms"])
    rec.sent_at_ms = int(event.get("sent_at_ms") or 0)
    _move(rec, fx, "placed", now_ms)
    rec.stage_times["placed"] = rec.placed_at_ms or now_ms
    fx.hold_commands = [_command(rec, "RESERVE", n, now_ms, rules) for n in rec.lines]
    rec.reserve_asked_ms = now_ms
    fx.replay_parked, rec.parked = rec.parked, []
    # A payment said to be owed back when it was given up on is the order's after all: say so, so nobody pays it
    # back for an order that ships (if the order is let go now, paid_order_not_fulfilled is raised anew).
    fx.alerts.extend(_unclaimed_payment_alert(rec, p, now_ms, cleared=True) for p in fx.replay_parked if p.get("owed"))
    return fx


def _refused_while_paid(rec: OrderRecord, refusal: Refusal, fx: Effects, now_ms: int) -> None:
    """An order refused (invalid: no record of it is kept) whose payment waits parked for it: the customer paid for
    an order that will not ship unless it is placed again, corrected. Said now, loudly, not when the payment is given
    up on a day later; the payment stays parked, and is applied if the order comes again in time."""
    for parked in rec.parked:
        if parked["event_type"] == "PaymentConfirmed" and not parked.get("owed"):
            parked["owed"] = True
            why = f"came for an order refused ({refusal.reason}: see the dead letters)"
            fx.alerts.append(_unclaimed_payment_alert(rec, parked, now_ms, why=why))


def _ask_again(rec: OrderRecord, fx: Effects, now_ms: int, rules: OrderRules) -> None:
    """Send the RESERVE of every line with no answer again (the pool answers a line it knows as it stands)."""
    for line_no in rec.lines:
        if line_no not in rec.answers:
            # Again to where the first went: its SKU's home unless a bucket is noted (a SKU made hot
            # since must not send it to a bucket, which would hold the line a second time).
            rec.buckets.setdefault(line_no, -1)
            fx.hold_commands.append(_command(rec, "RESERVE", line_no, now_ms, rules))
    rec.reserve_asked_ms = now_ms


def on_hold_decided(rec: OrderRecord, decided: dict[str, Any], now_ms: int, rules: OrderRules) -> Effects:
    if decided["line_no"] == SET_ASIDE_LINE:
        # Never an order line's: a set-aside let go must not read as the order's stock taken back.
        return on_set_aside(rec, decided, now_ms, rules)
    line_no = str(decided["line_no"])
    if decided["action"] == "ALLOCATE":
        return _on_allocated(rec, line_no, decided["outcome"], decided["reason"], now_ms, rules)
    fx = Effects()
    if decided["action"] != "RESERVE":
        _on_line_changed(rec, fx, line_no, decided, now_ms, rules)
        return fx
    return _on_reserve_answered(rec, fx, line_no, decided, now_ms, rules)


def _on_reserve_answered(rec: OrderRecord, fx: Effects, line_no: str, decided: dict[str, Any], now_ms: int,
                         rules: OrderRules) -> Effects:  # fmt: skip
    if line_no not in rec.lines:
        return fx
    if line_no in rec.answers:
        if decided["outcome"] == "HELD" and rec.answers[line_no][0] != "HELD":
            # A RESERVE asked again (a duplicate OrderPlaced, an answer slow to come) held the line after
            # the first was refused: the order went by the refusal, so this hold goes back at once.
            fx.hold_commands.append(_command(rec, "RELEASE", line_no, now_ms, rules, f"order_{rec.state}"))
        return fx  # a duplicate answer
    _note_bucket(rec, line_no, decided.get("bucket", -1))
    # A replayed RESERVE is answered with what the line is now: paid or shipped means it was held;
    # released or expired means the pool let it go before the order heard of it.
    held = decided["outcome"] in ("HELD", "COMMITTED", "SHIPPED")
    reason = decided["reason"] or ("" if decided["outcome"] == "HELD" else decided["outcome"].lower())
    rec.answers[line_no] = ["HELD" if held else "REFUSED", reason]
    rec.line_status.setdefault(line_no, decided["outcome"])
    if rec.state != "placed":
        # Answer after the order was cancelled: make sure a late hold is given back.
        if decided["outcome"] == "HELD" and rec.state in TERMINAL:
            fx.hold_commands.append(_command(rec, "RELEASE", line_no, now_ms, rules, f"order_{rec.state}"))
        return fx
    if set(rec.answers) != set(rec.lines):
        return fx
    refused = {n: a for n, a in rec.answers.items() if a[0] != "HELD"}
    lines = reservation_lines(rec)
    if refused:
        _release_held(rec, fx, now_ms, rules, "order_rejected")
        reasons = sorted({a[1] for a in refused.values()})
        _move(rec, fx, "rejected", now_ms, ",".join(reasons))
        _paid_and_let_go(rec, fx, now_ms)
        fx.reservation = Reservation("REJECTED", lines)
        return fx
    _move(rec, fx, "reserved", now_ms)
    rec.payment_deadline_ms = now_ms + rules.payment_timeout_ms
    fx.reservation = Reservation("RESERVED", lines)
    if rec.paid:
        _pay(rec, fx, now_ms, rules)
    elif rec.deposit_paid:
        _secure(rec, fx, now_ms, rules)
    return fx


def _on_line_changed(rec: OrderRecord, fx: Effects, line_no: str, decided: dict[str, Any], now_ms: int,
                     rules: OrderRules) -> None:  # fmt: skip
    """A line's hold moved on (released, expired, committed, shipped), by the order's command or not."""
    outcome = decided["outcome"]
    # Our own releases carry "order_<state>"; anything else is the pool taking a line back.
    taken_back = outcome in ("RELEASED", "EXPIRED") and not decided["reason"].startswith("order_")
    if taken_back and rec.state == "placed" and rec.answers.get(line_no, [""])[0] == "HELD":
        # Taken back before the order's other lines answered: it can no longer be reserved as
        # placed, and it says so when its last line answers (the rest are released then).
        rec.answers[line_no] = ["REFUSED", decided["reason"] or outcome.lower()]
    if taken_back and rec.state in ("reserved", "paid", "routed"):
        # The pool took the line back on its own (hold expiry, VIP override): the order
        # cannot be fulfilled as placed.
        reason = decided["reason"] or outcome.lower()
        new = "payment_timeout" if outcome == "EXPIRED" and not (rec.paid or rec.deposit_paid) else "cancelled"
        if can_transition(rec.state, new):
            _release_held(rec, fx, now_ms, rules, f"order_{new}")
            _move(rec, fx, new, now_ms, reason)
            _paid_and_let_go(rec, fx, now_ms)
    if line_no in rec.lines and outcome != "IGNORED":
        rec.line_status[line_no] = outcome


def on_set_aside(rec: OrderRecord, decided: dict[str, Any], now_ms: int, rules: OrderRules) -> Effects:
    """The pool offers the order a VIP override's set-aside (``OFFERED`` on ``SET_ASIDE_LINE``): claimed while no
    line of the order has asked the pool for stock, refused otherwise with why. Any other answer on that line is the
    pool letting a set-aside go, as the order asked: no line of the order is concerned, so nothing changes."""
    fx = Effects()
    if decided["outcome"] != "OFFERED":
        return fx
    sku, qty, offer = decided["sku"], decided["qty"], decided["reason"]
    why = set_aside_refusal(rec)
    if why is None:
        rec.set_asides[sku] = now_ms + CLAIM_KEPT_TTLS * rules.hold_ttl_ms
        fx.hold_commands.append(_set_aside_command(rec, "RESERVE", sku, qty, offer, now_ms))
    else:
        # The offer's reason names the override; the pool refuses it with ``why``.
        fx.hold_commands.append(_set_aside_command(rec, "RELEASE", sku, qty, refusal_reason(why, offer), now_ms))
    return fx


def set_aside_refusal(rec: OrderRecord) -> Reason | None:
    """Why the order cannot take a set-aside offered now, or None. A line takes one only with its RESERVE, which
    an order sends once, when placed: before that (a record with no state, or parked events only) it can."""
    if rec.state in RESTING or rec.tombstone or any(p["event_type"] == "OrderCancelled" for p in rec.parked):
        return Reason.VIP_ORDER_ENDED  # a parked cancel ends it as soon as it is placed
    if rec.state:
        return Reason.VIP_ORDER_ALREADY_PLACED
    return None


def _set_aside_command(rec: OrderRecord, action: str, sku: str, qty: int, reason: str, now_ms: int) -> HoldCommand:
    return {
        "event_id": f"{action.lower()}:{rec.order_id}#{SET_ASIDE_LINE}:{sku}:{reason}",
        "event_time_ms": now_ms,
        "action": action,
        "order_id": rec.order_id,
        "line_no": SET_ASIDE_LINE,
        "sku": sku,
        "qty": qty,
        "channel": rec.channel,
        "presale": False,
        "expires_at_ms": 0,
        "reason": reason,
        "source_time_ms": 0,
        "warehouse_id": "",
        "bucket": -1,  # a set-aside lives at its SKU's home
        "tries": 0,
    }


def _owed_back(rec: OrderRecord, message: str, now_ms: int, details: dict[str, str], suffix: str = "",
               severity: str = "RED", *, cleared: bool = False) -> AlertSpec:  # fmt: skip
    """A ``paid_order_not_fulfilled`` alert: money taken for an order that will not ship is owed back. One id per
    order and ``suffix`` (what was paid, or by what it was let go), so each owed sum is said once."""
    return AlertSpec("paid_order_not_fulfilled", severity, rec.order_id, message,
                     event_id=f"paid_order_not_fulfilled:{rec.order_id}" + (f":{suffix}" if suffix else ""),
                     at_ms=now_ms, cleared=cleared, details=details)  # fmt: skip


def _yuan(amount_fen: int) -> str:
    return f"{amount_fen / 100:.2f} yuan" if amount_fen else "an amount not given"


def _paid_and_let_go(rec: OrderRecord, fx: Effects, now_ms: int) -> None:
    """The pipeline let an order go (refused, or its stock taken back) after the customer had paid: the
    money must go back, and nothing else here would say so. A presale deposit too: the shop, not the
    buyer, let the order go."""
    if rec.paid or rec.deposit_paid:
        owed = "a refund" if rec.paid else "the deposit back"
        fx.alerts.append(_owed_back(
            rec, f"order {rec.order_id} was {'paid' if rec.paid else 'given its deposit'} but is {rec.state} "
            f"({rec.reason}): the customer is owed {owed}", now_ms, {"channel": rec.channel, "state": rec.state},
        ))  # fmt: skip


def _paid_after_let_go(rec: OrderRecord, fx: Effects, kind: str, now_ms: int) -> None:
    """A payment for an order already let go: the marketplace took the money (a balance after the window
    cancelled the order, a payment after its timeout), the units may be sold again, and a dead letter alone
    tells nobody that the customer is owed it back."""
    what = {DEPOSIT: "deposit", BALANCE: "balance"}.get(kind, "payment")
    amount = rec.payments.get(kind, 0)
    fx.alerts.append(_owed_back(
        rec, f"order {rec.order_id} ({rec.channel}) is {rec.state} ({rec.reason or 'no reason given'}) but its {what} "
        f"came now ({_yuan(amount)}): the customer is owed it back", now_ms,
        {"channel": rec.channel, "state": rec.state, "reason": rec.reason, "payment": kind, "amount_fen": str(amount)},
        kind,
    ))  # fmt: skip


def route_reserves(rec: OrderRecord, commands: list[HoldCommand], buckets_of: Callable[[str], int]) -> None:
    """Send each new RESERVE of a hot SKU (``buckets_of(sku)`` > 1) to the bucket the order id picks, and
    remember it, so a RELEASE sent before the answer goes the same way. Presale and VIP lines stay with
    the SKU's home (its presale pool and the set-aside live there), as do the lines of a SKU the order claimed a
    set-aside of (an override may name an order not marked VIP)."""
    for cmd in commands:
        line_no = str(cmd["line_no"])
        if (cmd["action"] != "RESERVE" or line_no in rec.buckets or rec.presale or rec.vip
                or cmd["sku"] in rec.set_asides):  # fmt: skip
            continue
        count = buckets_of(cmd["sku"])
        if count > 1:
            rec.buckets[line_no] = cmd["bucket"] = bucket_for(rec.order_id, count)


def _note_bucket(rec: OrderRecord, line_no: str, bucket: int) -> None:
    """Where the line's RESERVE was decided (a hot SKU's bucket, or -1: its home): its commands go there."""
    if bucket >= 0:
        rec.buckets[line_no] = bucket
    else:
        rec.buckets.pop(line_no, None)


def reservation_lines(rec: OrderRecord) -> list[LineDecision]:
    return [
        {"line_no": int(n), "sku": rec.lines[n]["sku"], "qty": rec.lines[n]["qty"],
         "outcome": rec.answers[n][0], "reason": rec.answers[n][1]}
        for n in sorted(rec.lines, key=int)
    ]  # fmt: skip


def _pay(rec: OrderRecord, fx: Effects, now_ms: int, rules: OrderRules) -> None:
    # A line a presale deposit committed already is answered as it stands (COMMITTED, or allocated when the
    # COMMIT names its warehouse), so every line is committed alike.
    for line_no in rec.lines:
        if line_no not in rec.shipped_lines:
            fx.hold_commands.append(_command(rec, "COMMIT", line_no, now_ms, rules))
    _move(rec, fx, "paid", now_ms)
    fx.route = unrouted_lines(rec)
    fx.score_health = rec.health_score is None
    if set(rec.shipped_lines) == set(rec.lines):
        _move(rec, fx, "shipped", now_ms)  # every line left before the payment came: nothing to route


def _secure(rec: OrderRecord, fx: Effects, now_ms: int, rules: OrderRules) -> None:
    """A presale order's deposit, once every line is held. The holds are committed: the pool expires only
    uncommitted holds, so the units stay held through the balance window (a presale line counts in the
    presale reserve either way, never in ``sold``). The order stays reserved, unpaid and unrouted; the
    payment timeout is over (the balance window's deadline replaces it)."""
    for line_no in rec.lines:
        fx.hold_commands.append(_command(rec, "COMMIT", line_no, now_ms, rules))
    rec.payment_deadline_ms = 0
    # A record of its own on order.states: the state stays, the new stage time is seen now.
    fx.transitions.append((rec.state, rec.state, DEPOSIT_PAID))


# ---- routing: paid -> routed ---------------------------------------------------------------------


def unrouted_lines(rec: OrderRecord) -> list[str]:
    # A line shipped before its order was paid is not routed again: a second dispatch would ship it twice.
    return [n for n in sorted(rec.lines, key=int) if n not in rec.allocated and n not in rec.shipped_lines]


def defer_routing(rec: OrderRecord, now_ms: int, wait_ms: int) -> None:
    """The routing view is still reading the warehouses' stock (a worker just started): try again in
    ``wait_ms``. Not an attempt and no alert: nothing is wrong with the order, and routing on a half-read
    view would call it unroutable (or send it to a far warehouse) and retry only after ``route_retry_ms``."""
    if rec.state == "paid":
        rec.routing = {**rec.routing, "retry_at_ms": now_ms + wait_ms}


def on_route_decided(rec: OrderRecord, decision: dict[str, Any] | None, now_ms: int, rules: OrderRules) -> Effects:
    """Apply a routing decision for the order's unrouted lines (None: no warehouse can take them).

    ``decision``: {"assignments": {warehouse: [line numbers]}, "candidates": [...], "weights": {...}}.
    Each assigned line is allocated at its warehouse by the pool (ALLOCATE); the order is routed
    when the pool has confirmed every line.
    """
    fx = Effects()
    if rec.state != "paid":
        return fx
    attempt = int(rec.routing.get("attempt", 0)) + 1
    if decision is None:
        rec.routing = {**rec.routing, "attempt": attempt, "plan": {}, "retry_at_ms": now_ms + rules.route_retry_ms}
        if attempt == 1:
            fx.alerts.append(AlertSpec("unroutable", "WARNING", rec.order_id,
                                       f"{rec.order_id}: no warehouse has stock for every line; retrying",
                                       event_id=f"unroutable:{rec.order_id}"))  # fmt: skip
        return fx
    plan = {str(n): wh for wh, nos in decision["assignments"].items() for n in nos}
    every_warehouse = set(rec.allocated.values()) | set(plan.values())
    record: RoutingDecision = {
        "event_id": f"{rec.order_id}:route:{attempt}",
        "event_time_ms": now_ms,
        "order_id": rec.order_id,
        "channel": rec.channel,
        "split": len(every_warehouse) > 1,
        "assignments": [
            {"warehouse_id": wh, "line_nos": sorted(int(n) for n in nos)}
            for wh, nos in sorted(decision["assignments"].items())
        ],
        "candidates": decision["candidates"],
        "weights": decision["weights"],
    }
    # The decision itself is published on routing.decisions, not kept: its candidates were half of
    # a routed order's stored bytes, written and parsed again with every later change of the order.
    waits = {"waits": rec.routing["waits"]} if rec.routing.get("waits") else {}
    rec.routing = {"attempt": attempt, **waits, "plan": plan, "retry_at_ms": 0}
    fx.routing_decision = record
    for line_no, wh in sorted(plan.items(), key=lambda x: int(x[0])):
        fx.hold_commands.append(_command(rec, "ALLOCATE", line_no, now_ms, rules, warehouse_id=wh))
    return fx


def _on_allocated(rec: OrderRecord, line_no: str, outcome: str, reason: str, now_ms: int,
                  rules: OrderRules) -> Effects:  # fmt: skip
    fx = Effects()
    plan: dict[str, str] = rec.routing.get("plan", {})
    if rec.state != "paid" or line_no not in plan or line_no in rec.allocated:
        return fx  # late, duplicate, or for an attempt that is over
    if outcome == "ALLOCATED":
        # Where the pool tied it, which its answer names: at least once, an answer to an earlier routing of the
        # order (replayed since) may come for this one's plan, and the line must go where its units are booked.
        rec.allocated[line_no] = reason or plan[line_no]
    elif reason.startswith("allocated_to_"):  # the pool already tied it to a warehouse
        rec.allocated[line_no] = reason.removeprefix("allocated_to_")
    else:  # the warehouse no longer has the units, or is being counted: route what is left again
        del plan[line_no]
        if reason == Reason.WAREHOUSE_COUNTING:
            rec.routing["counting"] = True
    if any(n not in rec.allocated for n in plan):
        return fx  # answers still to come for this attempt
    counting = rec.routing.pop("counting", False)
    if _routed_when_placed(rec, fx, now_ms, rules):
        return fx
    if counting and int(rec.routing.get("waits", 0)) < MAX_COUNT_WAITS:
        # Nothing is short: a hot SKU's count settles in milliseconds. Routed again at once, the line would find
        # the same warehouse still counting and use up its attempts in milliseconds; this wait is not an attempt
        # (``waits``), so the order does not wait ``route_retry_ms`` for a count.
        rec.routing["waits"] = int(rec.routing.get("waits", 0)) + 1
        rec.routing["retry_at_ms"] = now_ms + COUNT_WAIT_MS
    elif int(rec.routing.get("attempt", 0)) - int(rec.routing.get("waits", 0)) < rules.max_route_attempts:
        fx.route = unrouted_lines(rec)
    else:
        rec.routing["retry_at_ms"] = now_ms + rules.route_retry_ms
    return fx


def _routed_when_placed(rec: OrderRecord, fx: Effects, now_ms: int, rules: OrderRules) -> bool:
    """A paid order whose every line is allocated to a warehouse, or shipped already (by hand, while the rest
    was being routed): routed, and each warehouse sent its lines still to ship."""
    if rec.state != "paid" or not set(rec.lines) <= set(rec.allocated) | set(rec.shipped_lines):
        return False
    _move(rec, fx, "routed", now_ms)
    rec.warehouse_id = ",".join(sorted(set(rec.allocated.values())))
    fx.dispatches = dispatch_records(rec, rules)
    return True


def merge_commit_and_allocate(commands: list[HoldCommand]) -> list[HoldCommand]:
    """A line committed and routed in the same step goes to the pool as one COMMIT naming its
    warehouse (the pool commits and allocates, and answers once), not as a COMMIT and an ALLOCATE."""
    allocate = {(c["sku"], c["line_no"]): c for c in commands if c["action"] == "ALLOCATE"}
    committed = {(c["sku"], c["line_no"]) for c in commands if c["action"] == "COMMIT"} & set(allocate)
    out: list[HoldCommand] = []
    for cmd in commands:
        line = (cmd["sku"], cmd["line_no"])
        if line in committed and cmd["action"] == "COMMIT":
            out.append({**cmd, "warehouse_id": allocate[line]["warehouse_id"]})
        elif not (line in committed and cmd["action"] == "ALLOCATE"):
            out.append(cmd)
    return out


def dispatch_records(rec: OrderRecord, rules: OrderRules, action: str = "DISPATCH") -> list[WarehouseDispatched]:
    """What each warehouse's WMS receives: its lines, the address, the promised ship-by time; with
    ``action`` CANCEL, that the push is called off."""
    # A line shipped before its order was routed (by hand) is not pushed again: it would ship twice.
    groups = {wh: nos for wh, lines in rec.dispatched_to().items()
              if (nos := [n for n in lines if action != "DISPATCH" or n not in rec.shipped_lines])}  # fmt: skip
    suffix = "dispatch" if action == "DISPATCH" else "dispatch-cancel"
    return [
        {
            "event_id": f"{rec.order_id}:{suffix}:{wh}",
            "event_time_ms": rec.stage_times.get("routed", 0),
            "order_id": rec.order_id,
            "channel": rec.channel,
            "channel_order_id": rec.channel_order_id,
            "warehouse_id": wh,
            "lines": [{"line_no": int(n), "sku": rec.lines[n]["sku"], "qty": rec.lines[n]["qty"]} for n in nos],
            "address": dict(rec.address),
            "promised_ship_by_ms": rec.stage_times.get("paid", 0) + rules.ship_promise_ms,
            "split": len(groups) > 1,
            "action": action,
        }
        for wh, nos in sorted(groups.items())
    ]


def on_wms_ack(rec: OrderRecord, event: dict[str, Any], now_ms: int) -> Effects:
    fx = Effects()
    wh = event["warehouse_id"]
    if rec.state not in ("routed", "shipped", "delivered"):
        fx.refusal = Refusal(
            Reason.NOT_DISPATCHED, f"WMS acknowledgement for an order that is {rec.state or 'unknown'}"
        )
    elif wh not in rec.dispatched_to():
        fx.refusal = Refusal(
            Reason.UNKNOWN_WAREHOUSE, f"{wh!r} was not given this order ({sorted(rec.dispatched_to())})"
        )
    elif wh not in rec.acked:
        rec.acked[wh] = now_ms
        if set(rec.dispatched_to()) <= set(rec.acked):
            rec.stage_times["acknowledged"] = now_ms
    return fx


def sla_alerts(rec: OrderRecord, now_ms: int, rules: OrderRules) -> list[AlertSpec]:
    """Red once when a paid order waits too long for a warehouse; one clearing message when it moves on."""
    paid_at = rec.sla_since_ms()
    # Runs after every event of every order: decide cheaply (no Effects built) that there is nothing to say.
    if not paid_at or rec.sla == "cleared" or (not rec.sla and now_ms - paid_at < rules.sla_ms):
        return []
    alerts: list[AlertSpec] = []
    waiting = waiting_for_warehouse(rec)
    if waiting and not rec.sla and now_ms - paid_at >= rules.sla_ms:
        rec.sla = "red"
        stage = "not pushed to a warehouse" if rec.state == "paid" else "not acknowledged by its warehouse"
        minutes = (now_ms - paid_at) / 60_000
        alerts.append(AlertSpec(
            "sla_breach", "RED", rec.order_id,
            f"order {rec.order_id} ({rec.channel}) paid {minutes:.0f} min ago, {stage}",
            event_id=f"sla_breach:{rec.order_id}", at_ms=now_ms,
            details={"channel": rec.channel, "state": rec.state, "paid_at_ms": str(paid_at),
                     "warehouses": rec.warehouse_id},
        ))  # fmt: skip
    elif rec.sla == "red" and not waiting:
        rec.sla = "cleared"
        alerts.append(AlertSpec(
            "sla_breach", "INFO", rec.order_id,
            f"order {rec.order_id} moved on: {rec.state}" + (f" at {rec.warehouse_id}" if rec.warehouse_id else ""),
            event_id=f"sla_breach:{rec.order_id}:cleared", at_ms=now_ms, cleared=True,
            details={"channel": rec.channel, "state": rec.state, "warehouses": rec.warehouse_id},
        ))  # fmt: skip
    return alerts


def ship_overdue_alerts(rec: OrderRecord, now_ms: int, rules: OrderRules) -> list[AlertSpec]:
    """RED once when a routed order is past its promised ship time with lines its warehouses have not shipped
    (acknowledged and then never shipped, or shipped by one warehouse of a split order and not the other):
    nothing else would ever move it. One clearing message when it moves on (shipped, or called off)."""
    if rec.ship_overdue == "cleared" or (not rec.ship_overdue and rec.state != "routed"):
        return []
    due = rec.ship_by_ms(rules)
    if not rec.ship_overdue and due and now_ms >= due:
        rec.ship_overdue = "red"
        waiting = {wh: [n for n in lines if n not in rec.shipped_lines] for wh, lines in rec.dispatched_to().items()}
        waiting = {wh: lines for wh, lines in waiting.items() if lines}
        where = "; ".join(f"{wh} line(s) {', '.join(lines)}" for wh, lines in sorted(waiting.items()))
        return [AlertSpec(
            "shipment_overdue", "RED", rec.order_id,
            f"order {rec.order_id} ({rec.channel}) was promised to ship by now and has not: {where or 'unshipped'}",
            event_id=f"shipment_overdue:{rec.order_id}", at_ms=now_ms,
            details={"channel": rec.channel, "state": rec.state, "warehouses": ",".join(sorted(waiting))},
        )]  # fmt: skip
    if rec.ship_overdue == "red" and rec.state != "routed":
        rec.ship_overdue = "cleared"
        return [AlertSpec(
            "shipment_overdue", "INFO", rec.order_id, f"order {rec.order_id} moved on: {rec.state}",
            event_id=f"shipment_overdue:{rec.order_id}:cleared", at_ms=now_ms, cleared=True,
            details={"channel": rec.channel, "state": rec.state},
        )]  # fmt: skip
    return []


def payment_kind(rec: OrderRecord, event: dict[str, Any]) -> str:
    """Which of the order's payments ``event`` is. Tmall and Douyin send no step status for a presale paid in
    full at once (全款预售), so its one payment reads ``balance`` false: its amount tells it from a deposit (a
    payment naming no amount cannot show it paid in full)."""
    if event.get("balance"):
        return BALANCE
    amount = int(event.get("amount_fen") or 0)
    if rec.presale and not (amount > 0 and amount >= rec.amount_fen):
        return DEPOSIT
    return IN_FULL


def on_payment(rec: OrderRecord, event: dict[str, Any], now_ms: int, rules: OrderRules) -> Effects:
    """A payment: the order's price, or for a presale order its deposit (``balance`` false), its balance, or
    its whole amount at once."""
    fx = Effects()
    kind = payment_kind(rec, event)
    if kind == BALANCE and not rec.presale:
        fx.refusal = Refusal(Reason.NOT_PRESALE, f"balance payment for an order that is not presale ({rec.state})")
        return fx
    # Every payment's money is kept, a late one's too (a deposit heard after its balance was paid all the same).
    heard_before = kind in rec.payments
    rec.payments.setdefault(kind, int(event.get("amount_fen") or 0))
    if rec.paid:
        # A duplicate; or a presale deposit heard after its balance (a platform takes no balance without
        # its deposit, so the balance already paid the order).
        return fx
    if rec.state in TERMINAL:
        fx.refusal = Refusal(Reason.ORDER_NOT_PAYABLE, f"payment for an order that is {rec.state}")
        if not heard_before and not (kind == DEPOSIT and rec.deposit_paid):
            _paid_after_let_go(rec, fx, kind, now_ms)
        return fx
    if kind == DEPOSIT:
        if not rec.deposit_paid:
            rec.stage_times[DEPOSIT_PAID] = now_ms
            # From the channel's time: a deposit heard late (a slow callback, a parked payment) has had its
            # window running since the buyer paid; a channel clock ahead of ours must not lengthen it.
            paid_at = int(event.get("event_time_ms") or 0) or now_ms
            rec.balance_deadline_ms = min(paid_at, now_ms) + rules.presale_balance_ms
            if rec.state == "reserved":
                _secure(rec, fx, now_ms, rules)
            # In "placed" the deposit is applied when the reservation completes.
        return fx
    rec.paid = True
    rec.paid_at_ms = int(event.get("event_time_ms") or 0)
    if rec.state == "reserved":
        _pay(rec, fx, now_ms, rules)
    # In "placed" the payment is applied when the reservation completes.
    return fx


# ---- health: scored when paid -------------------------------------------------------------------


def health_facts(rec: OrderRecord, returns: int) -> health.HealthFacts:
    return health.HealthFacts(
        placed_at_ms=rec.placed_at_ms, paid_at_ms=rec.paid_at_ms or rec.stage_times.get("paid", 0),
        presale=rec.presale, address_detail=rec.address.get("detail", ""), lines=len(rec.lines),
        bundle=rec.bundle, custom=rec.custom, coupon_type=rec.coupon_type, returns=returns,
    )  # fmt: skip


def score_health(rec: OrderRecord, returns: int, rules: HealthRules, now_ms: int,
                 history_complete: bool = True) -> OrderHealthScored:  # fmt: skip
    """The order's health record (``order.health``); ``returns``: the customer's completed returns, as far
    as this worker knows them (``history_complete`` False while it is still reading them)."""
    scored = health.score(health_facts(rec, returns), rules)
    rec.health_score = scored.score
    notes = list(scored.notes)
    if not history_complete:
        notes.append("return history still loading")
    return {
        "event_id": f"{rec.order_id}:health", "event_time_ms": rec.stage_times.get("paid", now_ms),
        "order_id": rec.order_id, "channel": rec.channel, "customer_id": rec.customer_id, "score": scored.score,
        "focus": scored.focus, "focus_below": rules.focus_below, "breakdown": scored.breakdown,
        "weights": rules.weights(), "notes": notes, "paid_after_ms": scored.paid_after_ms, "returns": returns,
    }  # fmt: skip


def refund_tombstone(rec: OrderRecord, now_ms: int) -> OrderRecord | None:
    """What is kept of a finished order when its record is purged: for a paid one, what its refunds are bounded by
    (its payments and amount) and its lines (SKU and units: what a return may put back on hand), so a refund asked
    after the purge is neither unbounded nor paid twice; nothing of an order nobody paid for."""
    if rec.paid_fen <= 0:
        return None
    return OrderRecord(
        order_id=rec.order_id, channel=rec.channel, channel_order_id=rec.channel_order_id,
        lines={n: {"sku": line["sku"], "qty": line["qty"]} for n, line in rec.lines.items()},
        paid=rec.paid, payments=dict(rec.payments), amount_fen=rec.amount_fen, custom=rec.custom,
        customer_id=rec.customer_id, delivered_at_ms=rec.delivered_at_ms, purged_at_ms=now_ms,
    )  # fmt: skip


def on_cancel(rec: OrderRecord, event: dict[str, Any], now_ms: int, rules: OrderRules) -> Effects:
    fx = Effects()
    if rec.state == "cancelled":
        return fx
    reason = str(event.get("reason", ""))
    if rec.shipped_lines:
        # Goods (all of the order, or a split order's first part) left before the channel called it off: the buyer
        # is refunded, or will be, and gets them unless someone intercepts the parcel. What has not shipped is
        # still called off below.
        shipped = f"line(s) {', '.join(rec.shipped_lines)} shipped from {rec.warehouse_id or 'the WMS'}"
        refund_id = reason.removeprefix(REFUND_ONLY_CANCEL) if reason.startswith(REFUND_ONLY_CANCEL) else ""
        if refund_id:  # a refund-only approved as not shipped: its money is already on the way back
            kind, event_id = "refund_reconciliation", f"refund_only_shipped:{rec.order_id}:{refund_id}"
            message = (f"refund {refund_id} paid order {rec.order_id} ({rec.channel}) back as not shipped, but "
                       f"{shipped}: intercept the parcel, or recover the refund")
            details = {"reason": "refund_only_after_shipment", "refund_id": refund_id, "state": rec.state}
        else:
            kind, event_id = "cancelled_after_shipment", f"cancelled_after_shipment:{rec.order_id}"
            message = (f"order {rec.order_id} ({rec.channel}) was cancelled by the channel after {shipped}: "
                       "intercept the parcel, or expect it back as a return")
            details = {"channel": rec.channel, "state": rec.state, "reason": reason}
        fx.alerts.append(AlertSpec(kind, "RED", rec.order_id, message, event_id=event_id, at_ms=now_ms,
                                   details=details))  # fmt: skip
    if not can_transition(rec.state, "cancelled"):
        fx.refusal = Refusal(Reason.ILLEGAL_TRANSITION, f"cannot cancel an order that is {rec.state}")
        return fx
    if rec.state == "routed":
        # The warehouse has it: tell it to stop, or it ships a cancelled order.
        fx.dispatches = dispatch_records(rec, rules, "CANCEL")
    _release_held(rec, fx, now_ms, rules, "order_cancelled")
    _move(rec, fx, "cancelled", now_ms, event.get("reason", ""))
    _paid_past_refund(rec, fx, event, now_ms)
    return fx


def _paid_past_refund(rec: OrderRecord, fx: Effects, event: dict[str, Any], now_ms: int) -> None:
    """A refund-only's cancel decided on less than the buyer has paid now: a payment came between the refund's
    decision and its cancel (a presale's balance, read first). The order is cancelled all the same - the buyer
    asked for it back, and the shop must not ship goods it has already paid a part of back - and the rest is
    owed back: a RED ``paid_order_not_fulfilled`` naming it, as for any payment for an order let go."""
    reason = str(event.get("reason", ""))
    seen = int(event.get("paid_fen_seen") or 0)
    if not reason.startswith(REFUND_ONLY_CANCEL) or not seen or rec.paid_fen <= seen:
        return
    refund_id, owed = reason.removeprefix(REFUND_ONLY_CANCEL), rec.paid_fen - seen
    fx.alerts.append(_owed_back(
        rec, f"order {rec.order_id} ({rec.channel}) was cancelled by refund {refund_id}, which paid back what was "
        f"paid when it was decided ({_yuan(seen)}); {_yuan(owed)} paid since (a presale's balance?) is owed back to "
        "the customer too", now_ms,
        {"channel": rec.channel, "state": rec.state, "reason": "paid_after_refund_decided", "refund_id": refund_id,
         "paid_fen": str(rec.paid_fen), "paid_fen_seen": str(seen), "amount_fen": str(owed)},
        refund_id,
    ))  # fmt: skip


def _delivered(rec: OrderRecord, fx: Effects, event: dict[str, Any], now_ms: int) -> None:
    _move(rec, fx, "delivered", now_ms)
    rec.delivered_at_ms = min(int(event.get("event_time_ms") or now_ms), now_ms)


def on_shipment(rec: OrderRecord, event: dict[str, Any], event_type: str, now_ms: int,
                rules: OrderRules) -> Effects:  # fmt: skip
    """Shipped (per warehouse: a split order is shipped when its last warehouse ships) or delivered."""
    fx = Effects()
    target = "shipped" if event_type == "ShipmentDispatched" else "delivered"
    if rec.state == target or (target == "shipped" and rec.state == "delivered"):
        return fx  # a duplicate, or the WMS's notice after the channel's delivery: shipped already
    if target == "delivered" and rec.state in ("paid", "routed"):
        # Delivered before the WMS reported the shipment: the units have left all the same.
        unshipped = _unshipped_part(rec, now_ms)
        fx = on_shipment(rec, {"warehouse_id": ""}, "ShipmentDispatched", now_ms, rules)
        if rec.state == "shipped":
            _delivered(rec, fx, event, now_ms)
        fx.alerts.extend(unshipped)
        return fx
    if rec.state in ("cancelled", "payment_timeout", "rejected", "placed", "reserved"):
        if target == "delivered" and rec.shipped_lines:
            # The parcel delivered is the part that left, shipped and off the shelf already (a split order's first
            # warehouse shipped, the other took the cancel and still has its units): it confirms those lines. The
            # delivery names no warehouse, so taking it as a shipment of the rest would take units still on a shelf.
            return fx
        # Called off, or not paid yet (a payment callback lost and the order pushed to the WMS by hand); a
        # delivery of an order none of which shipped means the same, its shipment notice lost on the way.
        return _shipped_anyway(rec, event if target == "shipped" else {"warehouse_id": ""}, now_ms, rules)
    if not can_transition(rec.state, target):
        fx.refusal = Refusal(Reason.ILLEGAL_TRANSITION, f"cannot move an order that is {rec.state} to {target}")
        return fx
    if target == "delivered":
        _delivered(rec, fx, event, now_ms)
        return fx
    return _shipped(rec, fx, event.get("warehouse_id", ""), now_ms, rules)


def _unshipped_part(rec: OrderRecord, now_ms: int) -> list[AlertSpec]:
    """A delivery (naming no warehouse) of an order part of which shipped and part not (a split order, one warehouse
    shipped): it is taken as the shipment of the rest - its notice may be what was lost - but it may be the first
    parcel's alone, the rest still on a shelf, never to leave, with its units off the pool and the order delivered.
    Which cannot be told from here: ops must check with the warehouse, and hear of it now."""
    unshipped = [n for n in sorted(rec.lines, key=int) if n not in rec.shipped_lines]
    if not rec.shipped_lines or not unshipped:
        return []
    where: dict[str, list[str]] = {}
    for line_no in unshipped:
        where.setdefault(rec.allocated.get(line_no, "no warehouse yet"), []).append(line_no)
    at = "; ".join(f"{wh} line(s) {', '.join(nos)}" for wh, nos in sorted(where.items()))
    return [AlertSpec(
        "delivered_with_unshipped_lines", "RED", rec.order_id,
        f"order {rec.order_id} ({rec.channel}) was reported delivered while {at} had not reported shipping: taken as "
        "shipped (its units are off the pool); check it left, or ship it and count that warehouse's stock",
        event_id=f"delivered_with_unshipped_lines:{rec.order_id}", at_ms=now_ms,
        details={"channel": rec.channel, "state": rec.state, "warehouses": ",".join(sorted(where)),
                 "lines": ",".join(unshipped)},
    )]  # fmt: skip


def _shipped(rec: OrderRecord, fx: Effects, shipped_from: str, now_ms: int, rules: OrderRules) -> Effects:
    """``shipped_from`` (or a warehouse not named: "") shipped its lines of a paid or routed order."""
    lines = [n for n in sorted(rec.lines, key=int) if n not in rec.shipped_lines
             and (not shipped_from or rec.allocated.get(n, shipped_from) == shipped_from)]  # fmt: skip
    if not lines:
        if shipped_from and any(rec.allocated.get(n) == shipped_from for n in rec.shipped_lines):
            return fx  # the same notice again: this warehouse's lines of a split order are shipped already
        fx.alerts.extend(_shipped_elsewhere(rec, shipped_from, now_ms))
        fx.refusal = Refusal(Reason.ILLEGAL_TRANSITION, f"{shipped_from!r} has no unshipped line of this order")
        return fx
    for line_no in lines:
        wh = rec.allocated.get(line_no) or shipped_from
        fx.hold_commands.append(_command(rec, "SHIP", line_no, now_ms, rules, warehouse_id=wh))
        rec.shipped_lines.append(line_no)
    rec.warehouse_id = rec.warehouse_id or shipped_from
    if shipped_from:
        rec.acked.setdefault(shipped_from, now_ms)  # a warehouse that ships has taken the order
    paid_at = rec.stage_times.get("paid", 0)
    if paid_at and shipped_from:
        promised = paid_at + rules.ship_promise_ms
        fx.shipment_outcomes.append({
            "event_id": f"{rec.order_id}:shipped:{shipped_from}", "event_time_ms": now_ms,
            "order_id": rec.order_id, "warehouse_id": shipped_from, "on_time": now_ms <= promised,
            "promised_ship_by_ms": promised, "shipped_ms": now_ms,
        })  # fmt: skip
    if set(rec.shipped_lines) == set(rec.lines):
        _move(rec, fx, "shipped", now_ms)
    else:
        _routed_when_placed(rec, fx, now_ms, rules)  # the lines left are allocated: they go to their warehouses
    return fx


def on_tick(rec: OrderRecord, now_ms: int, rules: OrderRules) -> Effects:
    fx = Effects()
    if rec.state == "placed" and 0 < rec.reserve_asked_ms <= now_ms - rules.reserve_retry_ms:
        missing = sorted(set(rec.lines) - set(rec.answers), key=int)
        _ask_again(rec, fx, now_ms, rules)
        fx.alerts.append(AlertSpec(
            "reservation_unanswered", "WARNING", rec.order_id,
            f"order {rec.order_id} has waited {rules.reserve_retry_ms // 1000} s for the stock answer of line(s) "
            f"{', '.join(missing)}; asked again", event_id=f"reservation_unanswered:{rec.order_id}", at_ms=now_ms,
        ))  # fmt: skip
    if rec.state == "reserved" and not rec.paid and 0 < rec.payment_deadline_ms <= now_ms:
        _release_held(rec, fx, now_ms, rules, "order_payment_timeout")
        _move(rec, fx, "payment_timeout", now_ms, "no payment within the payment timeout")
    if rec.state == "reserved" and not rec.paid and 0 < rec.balance_deadline_ms <= now_ms:
        # The buyer forfeits the deposit by marketplace rules: nothing is owed, so no paid_order_not_fulfilled.
        _release_held(rec, fx, now_ms, rules, "order_cancelled")
        _move(rec, fx, "cancelled", now_ms, BALANCE_UNPAID)
    if rec.state == "paid" and 0 < rec.routing.get("retry_at_ms", 0) <= now_ms:
        rec.routing["retry_at_ms"] = 0
        if not _routed_when_placed(rec, fx, now_ms, rules):
            fx.route = unrouted_lines(rec)
    if not rec.state:
        # A claim the order never came for: kept twice the hold TTL, the set-aside expired at the pool by now
        # unless the pool took the claim more than a hold TTL late.
        rec.set_asides = {sku: due for sku, due in rec.set_asides.items() if due > now_ms}
        keep = []
        for parked in rec.parked:
            if parked_deadline_ms(parked, rules) > now_ms:
                keep.append(parked)
            elif parked.get("dead_lettered"):
                continue  # a slim copy past the order retention: its order is not coming
            elif parked["event_type"] in KEPT_FOR_ORDER and not parked.get("alerted"):
                # A customer paid, called off, or was shipped to, for an order we have not seen: say so now, and
                # keep the event, so a late order is paid, not shipped after a cancel, or not shipped twice.
                parked["alerted"] = True
                kind = parked["event_type"]
                alert = "payment_without_order" if kind == "PaymentConfirmed" else "event_without_order"
                fx.alerts.append(AlertSpec(
                    alert, "WARNING", rec.order_id,
                    f"{'payment' if kind == 'PaymentConfirmed' else kind} for {rec.order_id} has waited "
                    f"{rules.parked_grace_ms // 60_000} min for its order; "
                    f"it is kept {rules.parked_payment_grace_ms // 60_000} min and applied if the order arrives",
                    event_id=f"{alert}:{rec.order_id}" + ("" if kind == "PaymentConfirmed" else f":{kind}"),
                    at_ms=now_ms, details={"event_type": kind},
                ))  # fmt: skip
                keep.append(parked)
            else:
                fx.expired_parked.append(parked)
                if parked["event_type"] in KEPT_FOR_ORDER:
                    keep.append(_given_up(rec, fx, parked, now_ms))
        rec.parked = keep
    return fx


def _given_up(rec: OrderRecord, fx: Effects, parked: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """An event kept for its order (``KEPT_FOR_ORDER``) that waited its longer grace in vain: dead-lettered
    (``unknown_order``), and a slim copy of it (no message bytes) kept for the order retention, so an order that
    comes later still (replayed from intake's dead letters) is paid, not shipped after its cancel, not shipped twice,
    as if it had come in time. A payment taken for an order that never came is money owed back: a RED alert, not
    the dashboard's WARNING alone (none after a purge: a payment for an order paid and finished is a repeat)."""
    slim = {k: v for k, v in parked.items() if k != "source"} | {"dead_lettered": True}
    if parked["event_type"] == "PaymentConfirmed" and not rec.tombstone and not parked.get("owed"):
        slim["owed"] = True  # (one said to be owed when its order was refused is not said again)
        fx.alerts.append(_unclaimed_payment_alert(rec, slim, now_ms))
    return slim


def _unclaimed_payment_alert(rec: OrderRecord, parked: dict[str, Any], now_ms: int, *, cleared: bool = False,
                             why: str = "") -> AlertSpec:  # fmt: skip
    """RED ``paid_order_not_fulfilled`` for a parked payment no order claimed (``why``: what is known of the order),
    or, ``cleared``, its clearing when the order came after all and the payment was applied to it."""
    event = parked["event"]
    kind = BALANCE if event.get("balance") else IN_FULL
    amount = int(event.get("amount_fen") or 0)
    paid = _yuan(amount)
    details = {"channel": rec.channel or str(event.get("channel", "")), "reason": "payment_without_order",
               "payment": kind, "payment_id": str(event.get("payment_id", "")), "amount_fen": str(amount)}  # fmt: skip
    if cleared:
        return _owed_back(
            rec, f"order {rec.order_id} came after all and its {paid} payment given up on is applied to it: nothing "
            "is owed back for it", now_ms, details, f"unclaimed:{kind}:cleared", "INFO", cleared=True,
        )  # fmt: skip
    return _owed_back(
        rec, f"a payment of {paid} for order {rec.order_id} ({details['channel']}) "
        f"{why or 'waited in vain for its order (lost, or refused: see the dead letters)'}: the customer is owed it "
        "back, unless the order is placed again (then the payment is applied to it)", now_ms, details,
        f"unclaimed:{kind}",
    )  # fmt: skip


def parked_deadline_ms(parked: dict[str, Any], rules: OrderRules) -> int:
    """When a parked event is next looked at: its grace, or for an alerted one (``KEPT_FOR_ORDER``) its longer
    one; the slim copy of one given up on goes the order retention after that."""
    if parked.get("dead_lettered"):
        return int(parked["parked_ms"]) + rules.parked_payment_grace_ms + rules.order_retention_ms
    if parked.get("alerted"):
        return int(parked["parked_ms"]) + rules.parked_payment_grace_ms
    return int(parked["parked_ms"]) + rules.parked_grace_ms


def _shipped_elsewhere(rec: OrderRecord, shipped_from: str, now_ms: int) -> list[AlertSpec]:
    """A shipment from a warehouse routing did not choose, the order's lines still unshipped: moved by hand. Its
    units left a shelf the pool still counts, and the routed warehouse's stay held; which units left cannot be
    told from here, so ops must count, and hear of it now."""
    routed_to = sorted(rec.dispatched_to())
    unshipped = set(rec.lines) - set(rec.shipped_lines)
    if not shipped_from or not rec.allocated or shipped_from in routed_to or not unshipped:
        return []
    return [AlertSpec(
        "shipped_from_other_warehouse", "RED", rec.order_id,
        f"order {rec.order_id} ({rec.channel}) was routed to {', '.join(routed_to)} but {shipped_from} reports "
        f"shipping it: count {shipped_from}'s stock, and cancel the order's dispatch at {', '.join(routed_to)}",
        event_id=f"shipped_from_other_warehouse:{rec.order_id}:{shipped_from}", at_ms=now_ms,
        details={"channel": rec.channel, "state": rec.state, "warehouse": shipped_from,
                 "routed_to": ",".join(routed_to)})]  # fmt: skip


def _shipped_anyway(rec: OrderRecord, event: dict[str, Any], now_ms: int, rules: OrderRules) -> Effects:
    """The WMS shipped an order that was called off, or not paid yet. The units have left the warehouse,
    so the pool takes them off the shelf (no phantom stock), and ops hear of it at once; an unpaid order
    keeps its state, and a payment after it routes only what did not ship."""
    fx = Effects()
    shipped_from = event.get("warehouse_id", "")
    # What that warehouse held of it: a split order's other warehouse took the cancel and kept its units.
    lines = [n for n in sorted(rec.lines, key=int) if n not in rec.shipped_lines
             and (not shipped_from or rec.allocated.get(n, shipped_from) == shipped_from)]  # fmt: skip
    if not lines:
        return fx  # a repeated shipment notice, or none of it was at that warehouse
    for line_no in lines:
        wh = rec.allocated.get(line_no) or shipped_from
        fx.hold_commands.append(_command(rec, "SHIP", line_no, now_ms, rules, warehouse_id=wh))
        rec.shipped_lines.append(line_no)
    fx.alerts.append(AlertSpec(
        "shipped_after_cancel", "RED", rec.order_id,
        f"order {rec.order_id} ({rec.channel}) was shipped by {shipped_from or 'the WMS'} although it is {rec.state}",
        # One per warehouse: both parts of a split order may ship after its cancel, and the notifier and the
        # dashboards keep one alert per id; a repeat of the same warehouse's notice is the same alert.
        event_id=f"shipped_after_cancel:{rec.order_id}" + (f":{shipped_from}" if shipped_from else ""), at_ms=now_ms,
        details={"channel": rec.channel, "state": rec.state, "warehouse": shipped_from},
    ))  # fmt: skip
    return fx
