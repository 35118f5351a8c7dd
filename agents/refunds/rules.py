"""The refund rules: the state machine, auto-approval, channel preconditions and the SOP limits.

Pure functions over a ``RefundRecord`` and what the refund needs of its order (``OrderFacts``);
``agents.refunds.run_refunds`` wires them to topics and state.

    requested -> reviewing -> awaiting_return -> received -> refunding -> completed
    exits: rejected (customer service said no), cancelled (the buyer withdrew it)

- A refund-only request skips the return leg; if its order has not shipped, the order is cancelled
  with it (holds released, or the warehouse told to stop). A parcel of a shipped order that comes back
  all the same (refused at the door, sent back unasked) is received, checked and its resellable units of
  shipped lines restocked like a return's; a receipt for one whose order never shipped is refused, and one holding
  a line not known shipped yet waits for that line's shipment notice (``_not_shipped_yet``).
- So is the parcel of a refund customer service rejected or the buyer withdrew (goods sent back all the
  same): received, checked, its resellable units of shipped lines restocked once, and customer service told
  (``refund_parcel_after_close``) so a person decides whether to reopen it. The refund stays as it was
  decided: the receipt pays nothing and moves no state. A parcel received while the refund was still
  undecided is told the same way, once, when it is rejected or withdrawn (with the units it put back).
- Auto-approval (the 7-day no-reason return): delivered no more than ``no_reason_days`` calendar days
  before the request in the shop's time zone, no custom-made line anywhere in the order, order amount
  below the limit -> approved at once and the refund paid back at once on the original payment path;
  the goods still come back and are checked. A refund-only request for an order that has not shipped
  is approved at once too (nothing left the warehouse), unless a line is made to order (its making may
  have begun). Everything else goes to customer service, and
  so does a refund of an order whose presale deposit was forfeited (cancelled ``balance_unpaid``).
- A refund is bounded by what the buyer paid for the order (``OrderFacts.paid_fen``: a presale order
  may have only its deposit paid), less what its other refunds pay back.
- Channel rules differ (``config/refund_rules.toml``): Kuaishou needs the return tracking number
  before a return is reviewed, unless the marketplace settled it meanwhile (then the review starts).
  A customer-service review that comes before the number (its callback out of order, or a reviewer
  ahead of the buyer) is a person's decision, not lost: it waits on the refund and takes effect the
  moment the review may start (the number, the parcel or a settlement came), as if it came then.
- SOP limits on the pipeline clock: customer service answers within 2 h of the request, the
  warehouse finishes QC within 24 h of receiving a parcel, whatever the refund came to (a rejected or
  withdrawn refund's parcel is restocked only at its QC too: until then it is not ``finished``); and a
  refund paid out is settled by the marketplace within ``settle_ms``. A breach is flagged red once and
  cleared when the refund moves on.
- A settlement may come before stockflow pays (the marketplace's own timeout rule, the seller agreeing
  in its back office, callbacks out of order): it is kept on the refund and completes it the moment
  the refund is paid, so the outcome never depends on the order the events came in; an approved return
  still waiting for its goods is completed at once (the money is out; the goods are still received,
  checked and restocked when they come).
- Callbacks that come before their request (a settlement, a review, a withdrawal, the return's
  shipment or receipt) wait on the refund id and are applied when it comes, a withdrawal before the
  review (so a refund the buyer withdrew is never paid); ``parked_grace_ms``, then flagged;
  ``parked_keep_ms``, then given up and dead-lettered by ``run_refunds``.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agents.alerting.alerts import AlertSpec
from streams.contract.keys import order_key
from streams.contract.reasons import Reason, Refusal
from streams.engine.stored import stored_fields

TERMINAL = ("completed", "rejected", "cancelled")
STATES = ("requested", "reviewing", "awaiting_return", "received", "refunding", *TERMINAL)
# Order states in which nothing has left a warehouse yet: a refund-only cancels the order.
# A refund in these states pays, or has paid, its amount back: what the order has left to refund.
APPROVED = ("awaiting_return", "received", "refunding", "completed")
UNSHIPPED = ("placed", "reserved", "paid", "routed")
# Order states that end without goods leaving: a refund-only has nothing to cancel and nothing to wait for.
UNFULFILLED = ("rejected", "cancelled", "payment_timeout")
# A refund's exits that pay nothing: customer service said no, the buyer withdrew it.
CLOSED = ("rejected", "cancelled")
REFUND_ONLY, RETURN_AND_REFUND = "REFUND_ONLY", "RETURN_AND_REFUND"
ON_ORIGINAL_PATH = "original"
UNREQUESTED = "unrequested"  # the ``flags`` key of callbacks flagged for waiting too long for their request
PARCEL_AFTER_CLOSE = "parcel_after_close"  # the ``flags`` key of a closed refund whose parcel came back
ORDER_UNKNOWN = "order_unknown"  # the approval reason of a request whose order the refunds do not know
QC_PENDING = "qc_pending"  # ... its value while customer service was told before the parcel's QC (told again after)
# Callbacks kept on a refund id until its request comes (a settlement is kept on the record itself), at most
# MAX_EARLY of them: more for one refund id is no late request but a wrong id, refused at once.
EARLY_EVENTS = ("RefundReviewed", "RefundCancelled", "ReturnShipped", "ReturnReceived")
MAX_EARLY = 8


@dataclass(frozen=True)
class ChannelRefundRules:
    auto_approve_below_fen: int = 50_000  # strictly below 500.00 yuan
    no_reason_days: int = 7
    tracking_before_review: bool = False
    auto_approve_unshipped_refund_only: bool = True
    timezone: str = "Asia/Shanghai"


@dataclass(frozen=True)
class RefundRules:
    channels: Mapping[str, ChannelRefundRules] = field(default_factory=dict)
    default: ChannelRefundRules = ChannelRefundRules()
    respond_ms: int = 2 * 3_600_000
    qc_ms: int = 24 * 3_600_000
    settle_ms: int = 72 * 3_600_000
    return_ms: int = 7 * 24 * 3_600_000
    parked_grace_ms: int = 600_000  # a settlement before its request: flagged after this
    parked_keep_ms: int = 86_400_000  # ... and given up after this (money is not dropped for waiting)

    def for_channel(self, channel: str) -> ChannelRefundRules:
        return self.channels.get(channel, self.default)


def load_refund_rules(path: Path, respond_ms: int, qc_ms: int, settle_ms: int, return_ms: int,
                      parked_grace_ms: int = 600_000, parked_keep_ms: int = 86_400_000) -> RefundRules:  # fmt: skip
    """Channel rules from TOML: a ``[default]`` table and one table per channel overriding it."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    default = ChannelRefundRules(**data.get("default", {}))
    known = set(ChannelRefundRules.__dataclass_fields__)
    channels: dict[str, ChannelRefundRules] = {}
    for name, table in data.get("channels", {}).items():
        unknown = set(table) - known
        if unknown:
            raise ValueError(f"{path}: channel {name!r} has unknown refund rules {sorted(unknown)}")
        channels[name] = ChannelRefundRules(**{**default.__dict__, **table})
    return RefundRules(channels, default, respond_ms, qc_ms, settle_ms, return_ms, parked_grace_ms, parked_keep_ms)


@dataclass(frozen=True)
class OrderFacts:
    """What a refund decision needs of its order; ``known`` False when the order is not (or no
    longer) in the order store, in which case nothing is approved automatically (and ``paid_fen``,
    ``qtys`` and ``skus`` are what its purge left, or ``paid_fen`` what an earlier refund of it
    recorded the buyer paid, or 0: then a person's approval is the only one, and only while none of
    its other refunds pays back)."""

    known: bool = False
    state: str = ""
    delivered_at_ms: int = 0
    amount_fen: int = 0
    custom: bool = False
    skus: Mapping[str, str] = field(default_factory=dict)  # line no -> SKU
    qtys: Mapping[str, int] = field(default_factory=dict)  # line no -> units ordered
    customer_id: str = ""  # the buyer's id on the channel
    refunded_fen: int = 0  # what the order's other refunds, approved and not called off, pay back
    paid_fen: int = 0  # what the buyer paid for it (a presale order: maybe its deposit alone), not its price
    deposit_forfeited: bool = False  # a presale order cancelled for its unpaid balance (``balance_unpaid``)
    shipped: tuple[str, ...] = ()  # the line nos that left a warehouse (a line ships whole: all its units)
    restocked: Mapping[str, int] = field(default_factory=dict)  # line no -> units the order's other refunds put back

    def amount_left_fen(self) -> int:
        return self.paid_fen - self.refunded_fen

    @property
    def any_shipped(self) -> bool:
        """A line has left a warehouse (a split order's first part, or before payment)."""
        return bool(self.shipped)

    @property
    def unshipped(self) -> bool:
        return self.state in UNSHIPPED and not self.any_shipped


@dataclass
class RefundRecord:
    refund_id: str
    order_id: str = ""
    channel: str = ""
    channel_order_id: str = ""
    channel_refund_id: str = ""
    kind: str = ""
    amount_fen: int = 0
    reason: str = ""
    # line no -> units refunded: as the request named them or, named none, as its amount says beyond doubt
    # (``units_for_amount``); {}: which units is not known (the order unknown, or part of it paid back).
    lines: dict[str, int] = field(default_factory=dict)
    skus: dict[str, str] = field(default_factory=dict)  # line no -> SKU, as far as known
    state: str = ""
    previous_state: str = ""
    stage_times: dict[str, int] = field(default_factory=dict)
    auto_approved: bool = False
    approved_by: str = ""
    waiting_for: str = ""  # a channel precondition the review waits for ("tracking_no")
    tracking_no: str = ""
    return_status: str = ""  # "" | shipped | received | inspected
    warehouse_id: str = ""
    resellable: bool = False
    restocked: bool = False
    # The units its parcel put back on hand, so customer service hears how many when it closes the refund later
    # (``_parcel_after_close``); None with ``restocked``: put back before the count was kept.
    restocked_units: int | None = None
    instructed: bool = False  # the refund instruction has been emitted
    settled_amount_fen: int = 0  # with stage "settled": what the marketplace says it paid back
    settlement_id: str = ""
    # A settlement that came before its request: where it was read, so it can still be dead-lettered with
    # its own bytes if the request never comes (kept by ``run_refunds``; {} once the request is recorded).
    settlement_source: dict[str, Any] = field(default_factory=dict)
    # Other callbacks that came before the refund could take them, in arrival order: {"type", "event", "source",
    # "at_ms"} (``keep_early``): before its request, or a review before the channel's precondition was met
    # (``waits_for_precondition``). Applied when it can (``run_refunds``), dead-lettered from ``source`` if never.
    early: list[dict[str, Any]] = field(default_factory=list)
    # SOP limit (and UNREQUESTED) -> "red" | "cleared"; PARCEL_AFTER_CLOSE -> "flagged" | QC_PENDING
    flags: dict[str, str] = field(default_factory=dict)
    customer_id: str = ""  # from the order when the request came: the health score counts returns by it
    # Whether the request named its lines (five of the six channels' refund callbacks never do): named none, its
    # amount alone says whether it takes back the whole order. True for records stored before it was kept (their
    # lines were named, or taken for the whole order).
    lines_named: bool = True

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RefundRecord:
        return cls(**stored_fields(cls, data))


@dataclass
class RefundEffects:
    transitions: list[tuple[str, str, str]] = field(default_factory=list)  # previous, state, reason
    instruct: bool = False
    cancel_order: bool = False
    cancel_paid_fen: int = 0  # with cancel_order: what the buyer had paid for the order when the refund was decided
    restock: list[tuple[str, str, int]] = field(default_factory=list)  # line no, SKU, units
    alerts: list[AlertSpec] = field(default_factory=list)
    refusal: Refusal | None = None
    dropped_settlement: str = ""  # why a settlement kept for this refund id turned out not to be its own

    @property
    def changed(self) -> bool:
        return bool(self.transitions or self.instruct or self.cancel_order or self.restock or self.alerts)

    def absorb(self, later: RefundEffects) -> None:
        """Add what a later event of the same batch did (its refusal stays its own)."""
        self.transitions += later.transitions
        self.instruct |= later.instruct
        self.cancel_order |= later.cancel_order
        self.cancel_paid_fen = later.cancel_paid_fen or self.cancel_paid_fen
        self.restock += later.restock
        self.alerts += later.alerts


# ---- pure decisions ---------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def days_since_delivery(delivered_at_ms: int, requested_at_ms: int, timezone: str) -> int:
    """Calendar days from the delivery date to the request date, both in the shop's time zone: a request
    on the delivery day is day 0, on the next calendar day day 1."""
    zone = _zone(timezone)
    delivered = dt.datetime.fromtimestamp(delivered_at_ms / 1000, zone).date()
    requested = dt.datetime.fromtimestamp(requested_at_ms / 1000, zone).date()
    return (requested - delivered).days


@dataclass(frozen=True)
class Approval:
    approved: bool
    why: str  # the rule that decided, for the refund's state record


def _above_order(amount_fen: int, facts: OrderFacts) -> str:
    """Why a refund of ``amount_fen`` is more than its order can pay back ("" if it is not)."""
    if amount_fen > facts.amount_fen:
        return "amount_above_order"
    if amount_fen > facts.paid_fen:
        return "amount_above_paid"  # a presale order with its deposit alone paid: its price was never paid
    if amount_fen > facts.amount_left_fen():
        return "amount_above_order_left"  # other refunds of the order pay back the rest
    return ""


def whole_order(lines: Mapping[str, int] | None, amount_fen: int, facts: OrderFacts) -> bool:
    """Whether a refund of ``lines`` (line no -> units; None: the request named none) and ``amount_fen`` takes
    back all the order has left. Named none, the amount alone says so: a refund of part of the money is no
    refund of the whole order, whichever channel left its lines out."""
    return amount_fen >= facts.amount_left_fen() or (lines is not None and dict(lines) == dict(facts.qtys))


def units_for_amount(kind: str, amount_fen: int, facts: OrderFacts) -> dict[str, int]:
    """The units a request naming no lines takes back, where its amount says so beyond doubt: every unit for all
    the buyer paid; and a return (its goods come back) of an order of one unit, that unit, or ``k`` of a one-line
    order's ``qty`` units for ``k/qty`` of what was paid. {}: not known (the order unknown, part of the money of a
    many-line order, an amount no whole number of units comes to, a refund-only of part of the money: a price
    difference as much as a unit called off): a person decides, and counts what comes back."""
    if not facts.qtys or facts.paid_fen <= 0:
        return {}
    if amount_fen >= facts.paid_fen or (kind == RETURN_AND_REFUND and sum(facts.qtys.values()) == 1):
        return dict(facts.qtys)
    if kind == RETURN_AND_REFUND and len(facts.qtys) == 1:
        [(line_no, qty)] = facts.qtys.items()
        units, rest = divmod(amount_fen * qty, facts.paid_fen)
        if units and not rest:
            return {line_no: units}
    return {}


def _refund_only_unshipped(amount_fen: int, facts: OrderFacts, rules: ChannelRefundRules,
                           lines: Mapping[str, int] | None) -> Approval:  # fmt: skip
    if facts.custom and facts.unshipped:
        # Made to order: its making may have begun though nothing shipped (DOMAIN: never a custom item).
        return Approval(False, "custom_item")
    if facts.unshipped and not whole_order(lines, amount_fen, facts):
        # Paying part back cancels no order: the rest still ships, and the lines refunded must be stopped at the
        # warehouse by a person (``_approve``).
        return Approval(False, "partial_before_shipment")
    if rules.auto_approve_unshipped_refund_only:
        return Approval(True, "refund_only_unshipped" if facts.unshipped else f"order_{facts.state}")
    return Approval(False, "channel_reviews_unshipped")


def auto_approval(kind: str, amount_fen: int, requested_at_ms: int, facts: OrderFacts, rules: ChannelRefundRules,
                  lines: Mapping[str, int] | None = None) -> Approval:  # fmt: skip
    """Whether a new request is approved without customer service, and why (not); ``lines``: those the request
    named (None: none)."""
    if not facts.known:
        return Approval(False, ORDER_UNKNOWN)
    if facts.deposit_forfeited:
        # By marketplace rules the deposit is the shop's: paying it back is a person's decision.
        return Approval(False, "deposit_forfeited")
    above = _above_order(amount_fen, facts)
    if above:
        return Approval(False, above)
    if kind == REFUND_ONLY and (facts.unshipped or (facts.state in UNFULFILLED and not facts.any_shipped)):
        return _refund_only_unshipped(amount_fen, facts, rules, lines)
    if kind != RETURN_AND_REFUND:
        return Approval(False, "refund_only_after_shipment")
    if not facts.delivered_at_ms:
        return Approval(False, "not_delivered")
    if days_since_delivery(facts.delivered_at_ms, requested_at_ms, rules.timezone) > rules.no_reason_days:
        return Approval(False, "past_no_reason_window")
    if facts.custom:
        return Approval(False, "custom_item")
    if facts.amount_fen >= rules.auto_approve_below_fen:
        return Approval(False, "amount_over_auto_limit")
    return Approval(True, "no_reason_return")


# ---- transitions ------------------------------------------------------------------------------------
def _move(rec: RefundRecord, fx: RefundEffects, state: str, now_ms: int, reason: str = "") -> None:
    fx.transitions.append((rec.state, state, reason))
    rec.previous_state, rec.state = rec.state, state
    rec.stage_times.setdefault(state, now_ms)


def _illegal(fx: RefundEffects, rec: RefundRecord, what: str) -> RefundEffects:
    fx.refusal = Refusal(Reason.ILLEGAL_TRANSITION, f"{what} for a refund that is {rec.state or 'unknown'}")
    return fx


def _settled(rec: RefundRecord) -> bool:
    return "settled" in rec.stage_times


def _start_refund(rec: RefundRecord, fx: RefundEffects, now_ms: int, reason: str) -> None:
    _move(rec, fx, "refunding", now_ms, reason)
    if not rec.instructed:
        rec.instructed = True
        fx.instruct = True
    if _settled(rec):
        # The marketplace paid before stockflow did. The instruction still goes, once, so every refund paid
        # has its instruction on record (the audit, the reconciliation); the marketplace answers it "already
        # agreed" by the refund id, never a second payment. No second settlement will come: it ends here.
        _move(rec, fx, "completed", now_ms, "settled")


def named_lines(rec: RefundRecord) -> dict[str, int] | None:
    """The lines the request named (None: it named none; ``rec.lines`` may still hold units its amount implies)."""
    return rec.lines if rec.lines_named else None


def _approve(rec: RefundRecord, fx: RefundEffects, facts: OrderFacts, by: str, why: str, now_ms: int) -> None:
    rec.approved_by = by
    if rec.kind == REFUND_ONLY:
        fx.cancel_order = facts.unshipped and whole_order(named_lines(rec), rec.amount_fen, facts)
        # The cancel reaches the order later, on its own topic: a payment heard meanwhile (a presale's balance) is
        # money this refund never saw, and the order agent says so (``agents.orders.rules.on_cancel``).
        fx.cancel_paid_fen = facts.paid_fen if fx.cancel_order else 0
        if facts.unshipped and not fx.cancel_order:
            lines = _lines_text(rec.lines) + ("" if rec.lines_named or not rec.lines else ", from its amount")
            fx.alerts.append(AlertSpec(
                "refund_partial_before_shipment", "WARNING", rec.refund_id,
                f"refund {rec.refund_id} pays back {rec.amount_fen} fen of order {rec.order_id} before it shipped "
                f"(lines {lines}); the order still ships in full: stop those lines at the warehouse",
                event_id=f"{rec.refund_id}:partial_before_shipment",
                details={"order_id": rec.order_id, "lines": lines}))  # fmt: skip
        _start_refund(rec, fx, now_ms, why)
    elif rec.auto_approved or rec.return_status == "inspected" or _settled(rec):
        # A no-reason return is paid back at once; the goods still come back and are checked. So is one the
        # marketplace paid while it was under review: the money is out, and waiting for goods that may never
        # come would leave it open for good.
        _start_refund(rec, fx, now_ms, why)
    elif rec.return_status == "received":
        _move(rec, fx, "received", now_ms, why)
    else:
        _move(rec, fx, "awaiting_return", now_ms, why)


def _lines_text(lines: Mapping[str, int]) -> str:
    return ", ".join(f"{n} x{q}" for n, q in sorted(lines.items(), key=lambda kv: int(kv[0]))) or "unknown"


def _review(rec: RefundRecord, fx: RefundEffects, facts: OrderFacts, rules: RefundRules, now_ms: int) -> None:
    """A request ready for a decision: approved automatically, or handed to customer service."""
    channel = rules.for_channel(rec.channel)
    here = rec.return_status in ("received", "inspected")
    if rec.kind == RETURN_AND_REFUND and channel.tracking_before_review and not rec.tracking_no and not here \
            and not _settled(rec):  # the marketplace paid it: waiting for the number would keep it open for good
        rec.waiting_for = "tracking_no"
        return
    rec.waiting_for = ""
    requested_at = rec.stage_times.get("requested", now_ms)
    approval = auto_approval(rec.kind, rec.amount_fen, requested_at, facts, channel, named_lines(rec))
    if approval.approved:
        rec.auto_approved = True
        _approve(rec, fx, facts, "auto", approval.why, now_ms)
    else:
        _move(rec, fx, "reviewing", now_ms, approval.why)


def on_requested(rec: RefundRecord, event: Mapping[str, Any], order_id: str, facts: OrderFacts,
                 rules: RefundRules, now_ms: int) -> RefundEffects:  # fmt: skip
    fx = RefundEffects()
    if rec.state:
        return fx  # the channel sent the request again: nothing new
    kind, amount = str(event["kind"]), int(event["amount_fen"])
    if kind not in (REFUND_ONLY, RETURN_AND_REFUND):
        fx.refusal = Refusal(Reason.INVALID_KIND, f"refund kind {kind!r}")
        return fx
    if amount <= 0:
        fx.refusal = Refusal(Reason.INVALID_AMOUNT, f"refund of {amount} fen")
        return fx
    named = {str(ln["line_no"]): int(ln["qty"]) for ln in event.get("lines") or []}
    if facts.qtys:  # the order known, or what its purge left
        bad = [n for n, qty in named.items() if n not in facts.qtys or not 0 < qty <= facts.qtys[n]]
        if bad:
            fx.refusal = Refusal(Reason.INVALID_LINES, f"order {order_id} has no such line/units: {sorted(bad)}")
            return fx
    if _settled(rec) and rec.channel_order_id != str(event["channel_order_id"]):
        fx.dropped_settlement = (f"a settlement of refund {rec.refund_id} for order {rec.order_id}, which was "
                                 f"requested for order {order_id}")  # fmt: skip
        _forget_settlement(rec)
    rec.order_id, rec.channel, rec.kind, rec.amount_fen = order_id, str(event["channel"]), kind, amount
    rec.channel_order_id, rec.channel_refund_id = str(event["channel_order_id"]), str(event["channel_refund_id"])
    rec.customer_id = facts.customer_id
    # Named none (Tmall, JD, Douyin, Pinduoduo and Kuaishou never name them): what the amount says beyond doubt,
    # else none, so a return of one unit of three is never taken for all three when it is put back on hand.
    rec.lines_named = bool(named)
    lines = named or units_for_amount(kind, amount, facts)
    rec.reason, rec.tracking_no, rec.lines = str(event.get("reason", "")), str(event.get("tracking_no", "")), lines
    rec.skus = {n: str(ln.get("sku") or "") for ln in event.get("lines") or [] for n in [str(ln["line_no"])]}
    rec.skus.update({n: sku for n, sku in facts.skus.items() if not lines or n in lines})
    if rec.tracking_no:
        rec.return_status = "shipped"
    fx.alerts += _requested_at_last(rec)
    _move(rec, fx, "requested", int(event["event_time_ms"]) or now_ms, rec.reason)
    withdrawal = next((e for e in rec.early if e["type"] == "RefundCancelled"
                       and str(e["event"]["channel_order_id"]) == rec.channel_order_id), None)  # fmt: skip
    if withdrawal is not None and not _settled(rec):
        # The buyer withdrew it before its request was read: it is withdrawn before any review, never paid.
        rec.early.remove(withdrawal)
        _move(rec, fx, "cancelled", now_ms, _withdrawn_by(withdrawal["event"]))
        return fx
    _review(rec, fx, facts, rules, now_ms)
    return fx


def keep_early(rec: RefundRecord, event_type: str, event: Mapping[str, Any], source: dict[str, Any],
               now_ms: int) -> None:  # fmt: skip
    """Keep a callback that came before its refund's request on the refund id (``can_keep_early``); the same one sent
    again while the first waits is kept once, so it is neither applied, waited on nor dead-lettered twice."""
    if kept_already(rec, event):
        return
    if not rec.order_id:
        rec.channel, rec.channel_order_id = str(event["channel"]), str(event["channel_order_id"])
        rec.channel_refund_id = str(event["channel_refund_id"])
        rec.order_id = order_key(rec.channel, rec.channel_order_id)
    rec.early.append({"type": event_type, "event": dict(event), "source": source, "at_ms": now_ms})


def waits_for_precondition(rec: RefundRecord, event_type: str) -> bool:
    """A review of a request still waiting for the channel's precondition (Kuaishou: the return's tracking number):
    not refused, but kept until the review may start (``can_keep_early``)."""
    return event_type == "RefundReviewed" and rec.state == "requested" and bool(rec.waiting_for)


# A return receipt for an order no warehouse is known to have shipped waits for the shipment's notice (a WMS's
# notices can come late, and the parcel it sent may come back first), looked at again this often while kept.
SHIPMENT_RECHECK_MS = 600_000
WAITS_FOR_SHIPMENT = "shipment"


def keep_for_shipment(rec: RefundRecord, event: Mapping[str, Any], source: dict[str, Any], now_ms: int) -> None:
    """Keep a return receipt refused ``nothing_shipped`` until its order is known to have shipped: applied then
    (``run_refunds``), dead-lettered from ``source`` after ``parked_keep_ms``."""
    rec.early.append({"type": "ReturnReceived", "event": dict(event), "source": source, "at_ms": now_ms,
                      "waits": WAITS_FOR_SHIPMENT, "shipment_since": now_ms,
                      "due_ms": now_ms + SHIPMENT_RECHECK_MS})  # fmt: skip


def can_keep_for_shipment(event_type: str, refusal: Refusal | None) -> bool:
    """A return receipt refused only because its order (or a line of it) is not known shipped yet: kept for the notice
    while the refund has room (``MAX_EARLY``)."""
    return event_type == "ReturnReceived" and refusal is not None and refusal.reason == Reason.NOTHING_SHIPPED


def behind_waiting_receipts(rec: RefundRecord) -> Refusal:
    """Why a return receipt is refused when receipts before it wait for the order's shipment and the refund has no
    room to keep it behind them: taken ahead of them, a later QC would overtake the first one."""
    return Refusal(Reason.RECEIPT_QUEUE_FULL,
                   f"a return receipt for refund {rec.refund_id}, behind receipts waiting for order {rec.order_id}'s "
                   f"shipment notice, with {MAX_EARLY} callbacks kept already")  # fmt: skip


def kept_for_shipment_again(kept: dict[str, Any], refusal: Refusal, now_ms: int,
                            rules: RefundRules) -> dict[str, Any] | Refusal:  # fmt: skip
    """A kept return receipt refused (one kept for its refund's request, or for its order's shipment): kept on for
    the shipment, looked at next after ``SHIPMENT_RECHECK_MS``, while it is ``nothing_shipped`` and within
    ``parked_keep_ms`` of when it began waiting for the shipment; else the refusal it is dead-lettered with."""
    if refusal.reason != Reason.NOTHING_SHIPPED:
        return refusal
    if shipment_wait_over(kept, now_ms, rules):
        kept_h = rules.parked_keep_ms / 3.6e6
        return Refusal(refusal.reason, f"{refusal.detail}; kept {kept_h:g} h for its order's shipment notice")
    due = int(kept.get("due_ms", 0))
    return {**kept, "waits": WAITS_FOR_SHIPMENT, "shipment_since": _shipment_since(kept, now_ms),
            "due_ms": due if now_ms < due else now_ms + SHIPMENT_RECHECK_MS}  # fmt: skip


def shipment_wait_over(kept: Mapping[str, Any], now_ms: int, rules: RefundRules) -> bool:
    """A kept return receipt has waited ``parked_keep_ms`` for its order's shipment notice: taken for what shipped,
    or given up (``kept_for_shipment_again``)."""
    return now_ms >= _shipment_since(kept, now_ms) + rules.parked_keep_ms


def _shipment_since(kept: Mapping[str, Any], now_ms: int) -> int:
    """Since when a kept return receipt waits for its order's shipment: one kept for its refund's request only starts
    now (its request came), so its time kept for that does not eat the shipment's grace. One stored before this was
    recorded waits since it arrived."""
    if kept.get("waits") != WAITS_FOR_SHIPMENT:
        return now_ms
    return int(kept.get("shipment_since", kept["at_ms"]))


def kept_already(rec: RefundRecord, event: Mapping[str, Any], more: Sequence[Mapping[str, Any]] = ()) -> bool:
    """The same callback (by event id) is kept on the refund already (or among ``more`` entries about to be kept
    again): one sent again while the first waits."""
    return any(kept["event"].get("event_id") == event.get("event_id") for kept in (*rec.early, *more))


def shipment_recheck_due_ms(rec: RefundRecord) -> int:
    """When the receipts kept for their order's shipment are next looked at (0: none is kept)."""
    return min((int(e["due_ms"]) for e in rec.early if e.get("waits") == WAITS_FOR_SHIPMENT), default=0)


def can_keep_early(rec: RefundRecord, event_type: str) -> bool:
    """Whether a callback the refund cannot take yet is kept for when it can, at most MAX_EARLY of them."""
    early = (not rec.state and event_type in EARLY_EVENTS) or waits_for_precondition(rec, event_type)
    return early and len(rec.early) < MAX_EARLY


def _withdrawn_by(event: Mapping[str, Any]) -> str:
    return f"{event.get('by') or 'buyer'}: {event.get('reason') or ''}".strip(": ")


def on_reviewed(rec: RefundRecord, event: Mapping[str, Any], facts: OrderFacts, rules: RefundRules,
                now_ms: int) -> RefundEffects:  # fmt: skip
    fx = RefundEffects()
    approved = bool(event["approved"])
    if rec.state == "requested" and rec.waiting_for:
        # Refused only when it cannot be kept for the precondition (``waits_for_precondition``): MAX_EARLY kept.
        fx.refusal = Refusal(Reason.PRECONDITION_MISSING,
                             f"{rec.channel} needs the return {rec.waiting_for} before a review")  # fmt: skip
        return fx
    if rec.state != "reviewing":
        if rec.state not in ("", "cancelled") and (rec.state == "rejected") != approved:
            return fx  # the same decision again, or an approval of a refund approved automatically
        return _illegal(fx, rec, "a review")  # a withdrawn refund, above all, is never approved unnoticed
    if approved and not facts.known and not facts.paid_fen and facts.refunded_fen:
        # Nothing says what the buyer paid (an order stockflow never saw, or long gone), yet its other refunds pay
        # back already: one more is paid back blind. The marketplace's own after-sales page shows what is left.
        fx.refusal = Refusal(Reason.REFUND_BOUND_UNKNOWN,
                             f"refund {rec.refund_id} of {rec.amount_fen} fen: what order {rec.order_id} was paid is "
                             f"not known, and its other refunds pay back {facts.refunded_fen}")  # fmt: skip
        return fx
    if approved and (facts.known or facts.paid_fen) and rec.amount_fen > facts.amount_left_fen():
        # Customer service cannot pay an order back twice under two refund ids either.
        fx.refusal = Refusal(Reason.REFUNDS_ABOVE_ORDER,
                             f"refund {rec.refund_id} of {rec.amount_fen} fen: order {rec.order_id} paid "
                             f"{facts.paid_fen}, its other refunds pay back {facts.refunded_fen}")  # fmt: skip
        return fx
    if approved:
        _approve(rec, fx, facts, str(event.get("reviewer") or "customer_service"), "approved", now_ms)
    else:
        rec.approved_by = str(event.get("reviewer") or "customer_service")
        _move(rec, fx, "rejected", now_ms, str(event.get("note") or "rejected"))
        if _parcel_here(rec):
            # Received (and maybe restocked) while it was under review: said no to, its units are on the shelf.
            fx.alerts += _parcel_after_close(rec)
        if _settled(rec):
            fx.alerts.append(AlertSpec(
                "refund_reconciliation", "RED", rec.refund_id,
                f"refund {rec.refund_id} was rejected by {rec.approved_by}, but the marketplace already paid "
                f"{rec.settled_amount_fen} fen back: recover it, or approve the refund",
                event_id=f"{rec.refund_id}:settled_rejected", details={"reason": "settled_but_rejected"}))  # fmt: skip
    return fx


def on_return_shipped(rec: RefundRecord, event: Mapping[str, Any], facts: OrderFacts, rules: RefundRules,
                      now_ms: int) -> RefundEffects:  # fmt: skip
    fx = RefundEffects()
    if rec.kind != RETURN_AND_REFUND or rec.state in ("rejected", "cancelled"):
        return _illegal(fx, rec, "a return shipment")
    if rec.return_status in ("received", "inspected"):
        rec.tracking_no = rec.tracking_no or str(event["tracking_no"])
        return fx  # the goods are already here (and the review started then); the tracking callback came late
    rec.tracking_no = str(event["tracking_no"])
    rec.return_status = "shipped"
    if rec.state == "requested" and rec.waiting_for == "tracking_no":
        _review(rec, fx, facts, rules, now_ms)
    return fx


def on_return_received(rec: RefundRecord, event: Mapping[str, Any], facts: OrderFacts, rules: RefundRules,
                       now_ms: int, *, wait_over: bool = False, received_at_ms: int = 0) -> RefundEffects:  # fmt: skip
    """The warehouse received a refund's parcel (and, ``qc_done``, checked it): recorded, its resellable units put
    back on hand once. A refund rejected or withdrawn (``CLOSED``) takes it too - the goods are on the shelf all the
    same - but stays as it was decided: nothing paid, no state moved, and customer service told. ``wait_over``: a
    receipt kept for its order's shipment notice that has waited ``parked_keep_ms`` (``shipment_wait_over``);
    ``received_at_ms``: when a kept receipt arrived (0: now)."""
    fx = RefundEffects()
    if not rec.state:
        return _illegal(fx, rec, "a return receipt")
    closed = rec.state in CLOSED
    if _unasked(rec) and facts.known:
        fx.refusal = _not_shipped_yet(rec, facts, wait_over)
        if fx.refusal is not None:
            return fx
    if rec.return_status == "inspected":
        return fx  # QC already recorded: the warehouse sent it again
    if rec.return_status != "received":
        rec.return_status = "received"
        rec.warehouse_id = str(event["warehouse_id"])
        rec.stage_times.setdefault("return_received", _arrived_at(rec, received_at_ms, now_ms))
        if rec.state == "awaiting_return":
            _move(rec, fx, "received", now_ms)
    if event.get("qc_done", True):
        _inspected(rec, fx, bool(event["resellable"]), facts, _arrived_at(rec, received_at_ms, now_ms))
    if closed:
        # Rejected or withdrawn, it stays so: the parcel coming back pays nothing and reopens nothing by itself.
        fx.alerts += _parcel_after_close(rec)
        return fx
    if rec.state == "received" and rec.return_status == "inspected":
        _start_refund(rec, fx, now_ms, "resellable" if rec.resellable else "not_resellable")
    _review_once_here(rec, fx, facts, rules, now_ms)
    return fx


def _arrived_at(rec: RefundRecord, received_at_ms: int, now_ms: int) -> int:
    """When a receipt's stage times are stamped: when it arrived, not when a receipt kept for the shipment notice (or
    the request) was applied, so the QC limit runs from the parcel's arrival; never before the request, so no flow
    time from it goes negative (nor after now: a request stamped with a channel's clock ahead of the pipeline's)."""
    return min(now_ms, max(received_at_ms, rec.stage_times.get("requested", 0))) if received_at_ms else now_ms


def _inspected(rec: RefundRecord, fx: RefundEffects, resellable: bool, facts: OrderFacts, at_ms: int) -> None:
    """The parcel's QC recorded: its resellable units put back on hand once."""
    rec.return_status, rec.resellable = "inspected", resellable
    rec.stage_times.setdefault("inspected", at_ms)
    if not rec.resellable or rec.restocked:
        return
    rec.restocked = True
    if _unasked(rec) and not facts.known:
        # A parcel no approved return asked for (refused at the door, sent back unasked) of an order no longer
        # known: whether, and which of, its lines ever shipped is not known, so a person counts it.
        fx.alerts.append(_unstocked(rec, shipment_unknown=True))
    else:
        fx.restock, capped = restock_within_order(rec, facts)
        fx.alerts += capped
        if not rec.lines:
            fx.alerts.append(_unstocked(rec))
    rec.restocked_units = sum(qty for _, sku, qty in fx.restock if sku)  # a line without SKU is put by hand


def _not_shipped_yet(rec: RefundRecord, facts: OrderFacts, wait_over: bool) -> Refusal | None:
    """Why an unasked parcel (``_unasked``) is not taken yet (``nothing_shipped``: kept for the shipment notice by
    ``run_refunds``), or None. Nothing of the order left a warehouse (a refund-only that cancelled it, or it has not
    shipped yet): no parcel can come back, and putting one on hand would make units that are already on the shelf
    twice. A line of it not known shipped (a split order's late notice) waits for that line's notice the same way:
    taken now, it would be put back on hand as none (``restock_within_order``) and never again once the notice came.
    Once that wait is over, the parcel is taken for the lines that did ship, the others left to a person."""
    if not facts.any_shipped:
        return Refusal(Reason.NOTHING_SHIPPED, f"a return receipt for {_unasked_text(rec)} {rec.refund_id}: order "
                       f"{rec.order_id} ({facts.state}) never shipped")  # fmt: skip
    waiting = {n: q for n, q in rec.lines.items() if n not in facts.shipped}
    if not waiting or wait_over:
        return None
    return Refusal(Reason.NOTHING_SHIPPED, f"a return receipt for {_unasked_text(rec)} {rec.refund_id}: line(s) "
                   f"{_lines_text(waiting)} of order {rec.order_id} not known shipped")  # fmt: skip


def _unasked(rec: RefundRecord) -> bool:
    """Whether a parcel of this refund is one no approved return asked for: a refund-only's (refused at the door,
    sent back unasked), or one of a refund rejected or withdrawn. It holds only units of lines that shipped."""
    return rec.kind == REFUND_ONLY or rec.state in CLOSED


def _unasked_text(rec: RefundRecord) -> str:
    return f"{rec.state} refund" if rec.state in CLOSED else "refund-only"


def _parcel_here(rec: RefundRecord) -> bool:
    return rec.return_status in ("received", "inspected")


def _parcel_after_close(rec: RefundRecord) -> list[AlertSpec]:
    """Customer service told, once, that a refund it rejected (or the buyer withdrew) has its parcel back, whether
    the parcel came before the decision or after it; told before the parcel's QC, once more with its result."""
    told = rec.flags.get(PARCEL_AFTER_CLOSE)
    inspected = rec.return_status == "inspected"
    if told == "flagged" or (told == QC_PENDING and not inspected):
        return []
    # Told before its QC, customer service hears the QC's result once more (what went back on hand).
    suffix = ":qc" if told == QC_PENDING else ""
    rec.flags[PARCEL_AFTER_CLOSE] = "flagged" if inspected else QC_PENDING
    decided = f"rejected by {rec.approved_by or 'customer service'}" if rec.state == "rejected" else "withdrawn"
    put_back = rec.restocked_units if inspected and rec.resellable else 0  # None: restocked, count not on record
    units = "unknown" if put_back is None else str(put_back)
    if not inspected:
        qc, checked = "qc_pending", "QC not done yet: its resellable units go back on hand when it is"
    elif not rec.resellable:
        qc, checked = "not_resellable", "not resellable, nothing put back on hand"
    elif rec.restocked_units is None:
        qc, checked = "resellable", "resellable, put back on hand (how many units is not on record)"
    else:
        qc, checked = "resellable", f"resellable, {units} unit(s) put back on hand"
    return [AlertSpec(
        "refund_parcel_after_close", "WARNING", rec.refund_id,
        f"refund {rec.refund_id} of order {rec.order_id} was {decided}, but its parcel is back at "
        f"{rec.warehouse_id} ({checked}). The refund stays {rec.state} and nothing is paid back: decide whether to "
        "reopen it on the marketplace",
        event_id=f"{rec.refund_id}:{PARCEL_AFTER_CLOSE}{suffix}",
        details={"reason": "refund_rejected" if rec.state == "rejected" else "refund_withdrawn", "state": rec.state,
                 "order_id": rec.order_id, "warehouse_id": rec.warehouse_id, "qc": qc,
                 "restocked": units})]  # fmt: skip


def restock_within_order(rec: RefundRecord, facts: OrderFacts) -> tuple[list[tuple[str, str, int]], list[AlertSpec]]:
    """The units of each of the return's lines put back on hand: never more than the order line had, less what the
    order's other refunds put back (a unit scanned in again under a second refund id is no second unit); and an
    alert for any left off. A line whose units ordered are not known (the order unknown) is taken as it comes. A
    parcel holds only units of lines that shipped: a split order's line still at its warehouse is on hand there
    already. An approved return of an order that says nothing of its shipped lines (stored before they were kept)
    is taken as it comes; a parcel no approved return asked for (``_unasked``: a refund-only's, a rejected or
    withdrawn refund's; it came back all the same) never is."""
    restock, left_off = [], []
    for line_no, qty in sorted(rec.lines.items(), key=lambda kv: int(kv[0])):
        ordered = facts.qtys.get(line_no)
        never_shipped = line_no not in facts.shipped and (_unasked(rec) or bool(facts.shipped))
        before = facts.restocked.get(line_no, 0)
        units = 0 if never_shipped else qty if ordered is None else max(0, min(qty, ordered - before))
        if units:
            restock.append((line_no, rec.skus.get(line_no, ""), units))
        if units < qty:
            why = ("which never shipped: 0 restocked. Check the parcel" if never_shipped else
                   f"which had {ordered}, {before} of them put back on hand by its other refunds: {units} restocked. "
                   "The same unit returned under two refund ids? check the parcel")  # fmt: skip
            left_off.append(AlertSpec(
                "refund_restock_capped", "WARNING", rec.refund_id,
                f"refund {rec.refund_id}: its return holds {qty} unit(s) of line {line_no} of order {rec.order_id}, "
                f"{why} and put any real extra on hand by hand",
                event_id=f"{rec.refund_id}:{line_no}:restock_capped",
                details={"reason": "line_not_shipped" if never_shipped else "above_units_ordered",
                         "order_id": rec.order_id, "line_no": line_no, "ordered": str(ordered),
                         "restocked_before": str(before), "returned": str(qty)}))  # fmt: skip
    return restock, left_off


def _unstocked(rec: RefundRecord, *, shipment_unknown: bool = False) -> AlertSpec:
    """A resellable return nothing is put on hand for: which units it holds is not known."""
    if shipment_unknown:
        why, reason = (f"a parcel no approved return asked for ({_unasked_text(rec)}), and order {rec.order_id} is "
                       "not known any more: what of it shipped is not known"), "shipment_unknown"  # fmt: skip
    elif rec.skus:  # the order was known: the request named no lines, and paid back part of it
        why, reason = (f"the request named no lines and its {rec.amount_fen} fen is part of order {rec.order_id}, "
                       "no whole number of one line's units"), "lines_not_named"  # fmt: skip
    else:
        why, reason = f"order {rec.order_id} unknown when requested, and the request named no lines", ORDER_UNKNOWN
    return AlertSpec(
        "refund_return_unstocked", "WARNING", rec.refund_id,
        f"refund {rec.refund_id}: the return came back resellable, but which units it holds is unknown ({why}); "
        "count them and put them on hand by hand", event_id=f"{rec.refund_id}:unstocked",
        details={"reason": reason, "order_id": rec.order_id, "warehouse_id": rec.warehouse_id})  # fmt: skip


def _review_once_here(rec: RefundRecord, fx: RefundEffects, facts: OrderFacts, rules: RefundRules,
                      now_ms: int) -> None:  # fmt: skip
    """A request waiting for the return's tracking number whose goods reached the warehouse first: the
    number would only have shown they were on their way, so the review starts now."""
    if rec.state == "requested" and rec.waiting_for == "tracking_no":
        _review(rec, fx, facts, rules, now_ms)


def on_issued(rec: RefundRecord, now_ms: int) -> RefundEffects:
    fx = RefundEffects()
    if rec.state not in ("refunding", "completed"):
        return _illegal(fx, rec, "a marketplace refund")
    rec.stage_times.setdefault("issued", now_ms)
    return fx


def on_settled(rec: RefundRecord, event: Mapping[str, Any], now_ms: int, facts: OrderFacts | None = None,
               rules: RefundRules | None = None) -> RefundEffects:  # fmt: skip
    """A marketplace's settlement; ``facts`` and ``rules`` review a request that waited for the return's
    tracking number (without them it goes to customer service)."""
    fx = RefundEffects()
    channel_order_id = str(event["channel_order_id"])
    if rec.channel_order_id and channel_order_id != rec.channel_order_id:
        other = order_key(rec.channel, channel_order_id)
        detail = f"a settlement of refund {rec.refund_id} for order {other}; the refund is {rec.order_id}'s"
        fx.refusal = Refusal(Reason.UNKNOWN_REFUND, detail)
        return fx
    if rec.state == "completed" or _settled(rec):
        # A refund is settled once, and the first settlement stands; the same one sent again is nothing new. One
        # with another reference or amount says the marketplace paid twice.
        fx.alerts += _settled_again(rec, str(event.get("settlement_id") or ""), int(event["amount_fen"]))
        return fx
    rec.settled_amount_fen, rec.settlement_id = int(event["amount_fen"]), str(event.get("settlement_id") or "")
    rec.stage_times["settled"] = now_ms
    if rec.state in ("rejected", "cancelled"):
        # Kept, not refused: the money left the order all the same, so the order's other refunds count it
        # (``paid_back_fen``), as they do when the settlement comes before the rejection.
        fx.alerts.append(AlertSpec(
            "refund_reconciliation", "RED", rec.refund_id,
            f"the marketplace settled refund {rec.refund_id} ({rec.settled_amount_fen} fen) that stockflow never "
            f"paid out (it is {rec.state}): recover it, or count it as paid back",
            event_id=f"{rec.refund_id}:settled_unpaid", details={"reason": "settled_without_instruction"}))  # fmt: skip
        return fx
    if not rec.state:
        # Before its request: kept on the refund id, so the request finds it (``run_refunds`` keeps where it
        # was read, and gives it up as ``unknown_refund`` if the request does not come).
        rec.channel, rec.channel_order_id = str(event["channel"]), channel_order_id
        rec.channel_refund_id = str(event["channel_refund_id"])
        rec.order_id = order_key(rec.channel, channel_order_id)
        return fx
    fx.alerts += _amount_mismatch(rec)
    if rec.state == "refunding":
        _move(rec, fx, "completed", now_ms, "settled")
    elif rec.state in ("awaiting_return", "received"):
        # Approved, its goods not back or not checked yet: the marketplace paid on its own (its timeout rule),
        # and the goods may never come. The money is out, so it ends now; a return that still comes is
        # received, checked and restocked on the completed refund (``on_return_received``), never paid again.
        _start_refund(rec, fx, now_ms, "settled")
    elif rec.state == "requested" and rec.waiting_for:
        # Waiting for the return's tracking number (Kuaishou), which nothing may ever send now: the marketplace
        # paid (its timeout rule), so the review starts. Approved (at once, or by customer service, whom the
        # precondition no longer refuses), it completes; rejected, it is flagged.
        if facts is not None and rules is not None:
            _review(rec, fx, facts, rules, now_ms)
        else:
            rec.waiting_for = ""
            _move(rec, fx, "reviewing", now_ms, "settled")
    # Otherwise stockflow has not decided yet: the settlement waits on the refund and completes it when it is
    # approved (``_start_refund``); rejected meanwhile, it is flagged (``on_reviewed``).
    return fx


def _settled_again(rec: RefundRecord, settlement_id: str, amount_fen: int) -> list[AlertSpec]:
    if not _settled(rec) or (settlement_id == rec.settlement_id and amount_fen == rec.settled_amount_fen):
        return []
    return [AlertSpec(
        "refund_reconciliation", "RED", rec.refund_id,
        f"the marketplace reports refund {rec.refund_id} (order {rec.order_id}) settled again: {amount_fen} fen as "
        f"{settlement_id or 'no reference'}, after {rec.settled_amount_fen} fen as "
        f"{rec.settlement_id or 'no reference'}: paid twice? recover the second payout",
        event_id=f"{rec.refund_id}:settled_again:{settlement_id}:{amount_fen}",
        details={"reason": "settled_twice", "first": rec.settlement_id, "second": settlement_id})]  # fmt: skip


def _amount_mismatch(rec: RefundRecord) -> list[AlertSpec]:
    if rec.settled_amount_fen == rec.amount_fen:
        return []
    return [AlertSpec(
        "refund_reconciliation", "RED", rec.refund_id,
        f"refund {rec.refund_id}: settled {rec.settled_amount_fen} fen, the refund is {rec.amount_fen}",
        event_id=f"{rec.refund_id}:settled_amount", details={"reason": "amount_mismatch"})]  # fmt: skip


def _forget_settlement(rec: RefundRecord) -> None:
    rec.settled_amount_fen, rec.settlement_id = 0, ""
    rec.stage_times.pop("settled", None)
    rec.flags.pop(UNREQUESTED, None)


def _requested_at_last(rec: RefundRecord) -> list[AlertSpec]:
    """The request kept callbacks waited for: a settlement's amount can be checked now, and their flag cleared."""
    alerts = _amount_mismatch(rec) if _settled(rec) else []
    if rec.flags.get(UNREQUESTED) == "red":
        rec.flags[UNREQUESTED] = "cleared"
        alerts.append(AlertSpec("refund_reconciliation", "INFO", rec.refund_id,
                                f"refund {rec.refund_id} was requested after its callbacks",
                                event_id=f"{rec.refund_id}:{UNREQUESTED}:cleared", cleared=True,
                                details={"reason": _unrequested_reason(rec)}))  # fmt: skip
    return alerts


def _unrequested_reason(rec: RefundRecord) -> str:
    return "settled_without_request" if _settled(rec) else "callbacks_without_request"


def _parked_since_ms(rec: RefundRecord) -> int:
    times = [e["at_ms"] for e in rec.early] + ([rec.stage_times["settled"]] if _settled(rec) else [])
    return min(times) if times else 0


def parked_due_ms(rec: RefundRecord, rules: RefundRules) -> int:
    """When callbacks kept for a request that has not come are next looked at (0: there are none)."""
    since = 0 if rec.state else _parked_since_ms(rec)
    if not since:
        return 0
    flagged = rec.flags.get(UNREQUESTED) == "red"
    return since + (max(rules.parked_keep_ms, rules.parked_grace_ms) if flagged else rules.parked_grace_ms)


def check_parked(rec: RefundRecord, now_ms: int, rules: RefundRules) -> tuple[list[AlertSpec], bool]:
    """Callbacks still waiting for their request: flagged once after the grace, and whether to give them up
    (the request did not come in the time kept; ``run_refunds`` dead-letters them as ``unknown_refund``)."""
    due = parked_due_ms(rec, rules)
    if not due or now_ms < due:
        return [], False
    if rec.flags.get(UNREQUESTED) == "red":
        return [], True
    rec.flags[UNREQUESTED] = "red"
    kept = f"kept {rules.parked_keep_ms / 3.6e6:g} h and applied if the request comes"
    if _settled(rec):
        text = (f"the marketplace settled refund {rec.refund_id} ({rec.settled_amount_fen} fen, order "
                f"{rec.order_id}), which was never requested; {kept}")  # fmt: skip
    else:
        kinds = ", ".join(sorted({e["type"] for e in rec.early}))
        text = f"refund {rec.refund_id} (order {rec.order_id}) has callbacks ({kinds}) but no request; {kept}"
    alert = AlertSpec("refund_reconciliation", "RED", rec.refund_id, text, event_id=f"{rec.refund_id}:{UNREQUESTED}",
                      at_ms=due, details={"reason": _unrequested_reason(rec)})  # fmt: skip
    return [alert], now_ms >= _parked_since_ms(rec) + rules.parked_keep_ms


def paid_back_fen(rec: RefundRecord) -> int:
    """What this refund pays, or has paid, its order back: what was approved, or what the marketplace says
    it paid when that is more (a settlement above the approval, or one for a refund stockflow rejected, took
    that money out of the order all the same)."""
    approved = rec.amount_fen if rec.state in APPROVED else 0
    settled = rec.settled_amount_fen if rec.state and _settled(rec) else 0
    return max(approved, settled)


def on_cancelled(rec: RefundRecord, event: Mapping[str, Any], now_ms: int) -> RefundEffects:
    fx = RefundEffects()
    if rec.state == "cancelled":
        return fx
    if rec.state not in ("requested", "reviewing", "awaiting_return"):
        return _illegal(fx, rec, "a cancellation")  # the money is on its way, or it was decided
    if _settled(rec):
        # The marketplace closed it by paying: a withdrawal now is stale, and the refund is completed on approval.
        fx.refusal = Refusal(Reason.ILLEGAL_TRANSITION, f"a cancellation of refund {rec.refund_id}, which the "
                             f"marketplace already paid back ({rec.settled_amount_fen} fen)")  # fmt: skip
        return fx
    _move(rec, fx, "cancelled", now_ms, _withdrawn_by(event))
    if _parcel_here(rec):
        fx.alerts += _parcel_after_close(rec)  # withdrawn with its parcel already back: its units are on the shelf
    return fx


# ---- SOP limits and timers --------------------------------------------------------------------------
def _limits(rec: RefundRecord, rules: RefundRules) -> dict[str, int]:
    """Each SOP limit that applies now, with when it runs out (0: it does not apply)."""
    waiting_for_service = rec.state == "reviewing" or (rec.state == "requested" and not rec.waiting_for)
    # Whatever the refund came to: a parcel's resellable units go back on hand only at its QC.
    qc_open = qc_owed(rec)
    unsettled = rec.instructed and "settled" not in rec.stage_times and rec.state == "refunding"
    waiting_for_tracking = rec.state == "requested" and rec.waiting_for == "tracking_no"
    # An approved return whose goods are not back: awaited, or paid back at once (a no-reason return: its goods are
    # due all the same), from the approval on. One the marketplace paid on its own while it was awaited ends there.
    paid_first = rec.auto_approved and rec.state in ("refunding", "completed")
    goods_out = rec.kind == RETURN_AND_REFUND and rec.return_status not in ("received", "inspected") and (
        rec.state == "awaiting_return" or paid_first)
    approved_at = rec.stage_times.get("awaiting_return" if rec.state == "awaiting_return" else "refunding", 0)
    return {
        # From when customer service could first see it: a review that waited for the channel's precondition
        # (Kuaishou's tracking number) reaches it only then; every other one at its request.
        "respond": rec.stage_times.get("reviewing", rec.stage_times.get("requested", 0)) + rules.respond_ms
        if waiting_for_service else 0,
        "qc": rec.stage_times.get("return_received", 0) + rules.qc_ms if qc_open else 0,
        "settle": rec.stage_times.get("refunding", 0) + rules.settle_ms if unsettled else 0,
        "return": approved_at + rules.return_ms if goods_out and approved_at else 0,
        # A channel that reviews only with the return's tracking number (Kuaishou): the buyer has as long to
        # ship it as an approved return has to arrive, or the request waits unseen for good.
        "tracking": rec.stage_times.get("requested", 0) + rules.return_ms if waiting_for_tracking else 0,
    }


_LIMIT_TEXT = {
    "respond": ("refund_sop_breach", "customer service has not answered refund {id} within {h:g} h"),
    "qc": ("refund_sop_breach", "the warehouse has not finished QC of refund {id}'s return within {h:g} h"),
    "settle": ("refund_reconciliation", "refund {id} was paid out but the marketplace has not settled it in {h:g} h"),
    "return": ("refund_sop_breach", "the return of refund {id} has not reached the warehouse {h:g} h after approval"),
    "tracking": ("refund_sop_breach", "refund {id} has waited {h:g} h for the buyer's return tracking number"),
}


def check_limits(rec: RefundRecord, now_ms: int, rules: RefundRules) -> list[AlertSpec]:
    """Flag each limit breached (once), clear each flagged one that no longer applies."""
    alerts = []
    hours = {"respond": rules.respond_ms, "qc": rules.qc_ms, "settle": rules.settle_ms, "return": rules.return_ms,
             "tracking": rules.return_ms}
    for limit, due in _limits(rec, rules).items():
        kind, text = _LIMIT_TEXT[limit]
        flagged = rec.flags.get(limit) == "red"
        if due and now_ms >= due and not flagged:
            rec.flags[limit] = "red"
            alerts.append(AlertSpec(kind, "RED", rec.refund_id, text.format(id=rec.refund_id, h=hours[limit] / 3.6e6),
                                    event_id=f"{rec.refund_id}:{limit}", at_ms=due,
                                    details={"limit": limit, "channel": rec.channel, "state": rec.state}))  # fmt: skip
        elif flagged and not due:
            rec.flags[limit] = "cleared"
            alerts.append(AlertSpec(kind, "INFO", rec.refund_id, f"refund {rec.refund_id} moved on ({rec.state})",
                                    event_id=f"{rec.refund_id}:{limit}:cleared", cleared=True,
                                    details={"limit": limit, "channel": rec.channel, "state": rec.state}))  # fmt: skip
    return alerts


def qc_owed(rec: RefundRecord) -> bool:
    """A parcel of the refund was received and its QC is not recorded yet."""
    return rec.return_status == "received"


def finished(rec: RefundRecord) -> bool:
    """Nothing left to do on the refund: it ended (completed, rejected, withdrawn) and no parcel of it waits for its
    QC. One that ended with its QC owed is still open to the warehouse: kept, timed and let go like an open one."""
    return rec.state in TERMINAL and not qc_owed(rec)


def last_moved_ms(rec: RefundRecord) -> int:
    """When the refund last moved (a state or a stage reached)."""
    return max(rec.stage_times.values(), default=0)


def abandoned_alert(rec: RefundRecord, retention_ms: int) -> AlertSpec:
    """A refund still open (``finished`` False) after ``retention_ms`` without moving, its limits all flagged: it is
    let go."""
    days = f"{retention_ms / 86_400_000:g} days"
    if rec.state in TERMINAL:  # ended, its parcel's QC never recorded
        text = (f"refund {rec.refund_id} ({rec.state}) has waited {days} for the QC of its parcel at "
                f"{rec.warehouse_id}: its record is let go; check the parcel and put its resellable units on hand "
                "by hand")  # fmt: skip
    else:
        text = (f"refund {rec.refund_id} has not moved in {days} ({rec.state}): its record is let go; finish it by "
                "hand on the marketplace (its history is on refund.states)")  # fmt: skip
    return AlertSpec("refund_sop_breach", "RED", rec.refund_id, text, event_id=f"{rec.refund_id}:abandoned",
                     details={"limit": "abandoned", "channel": rec.channel, "state": rec.state})  # fmt: skip


def next_deadline_ms(rec: RefundRecord, rules: RefundRules) -> int:
    due = [d for limit, d in _limits(rec, rules).items() if d and rec.flags.get(limit) != "red"]
    due += [d for d in (shipment_recheck_due_ms(rec),) if d]
    return min(due) if due else 0
