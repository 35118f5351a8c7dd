"""``stockflow check``: an independent audit of the stock pool against the topics.

Deliberately shares no rule code with the agents (``agents.inventory.rules``/``agents.orders.rules``): it
rebuilds, from what is in Kafka, what the pool's state must be, and compares.

* on-hand per SKU and warehouse from ``stock.adjustments`` and ``stock.returns`` (each adjustment id once,
  known warehouses only) and the shipped lines (at the warehouse their line was allocated to), in the order
  the pool applied them: an absolute COUNT replaces its warehouse's figure, so only what the pool applied
  after it stays on top (see *Order* below), and the shelf movements it booked after the count was taken,
  which it puts back on top (``STOCKFLOW_COUNT_CLOCK_SKEW_MS``);
* the open holds per SKU (held or paid, not yet shipped/released/expired) from the last answer
  per order line in ``stock.hold-results``;
* against the pool's store ``stock_by_sku`` as its changelog topic holds it (totals and line records).

It reports drift (store outside what the topics allow, or the store's totals != its own line records),
oversold units (at any moment of the run, not only at its end: open regular holds and the VIP set-asides
beyond on-hand, open presale holds beyond the presale cap), VIP set-aside units handed to another order,
double holds (an order line held again after it was released, expired or shipped: a refusal held nothing),
orders rejected while still holding stock, lost orders (placed and valid, yet neither decided nor
cancelled), paid or reserved orders without an open hold behind every line, shipments the WMS reported (its own
``ShipmentDispatched`` on ``order.events``) whose lines at that warehouse the pool never answered SHIPPED
(units gone from a shelf the pool still counts), a warehouse's units of a SKU tied to more order lines than it
had on hand when one more was tied there, and a line pushed to a warehouse (``warehouse.dispatch``) the pool did
not tie it to (both ``warehouse_overbooked``: two orders given the same units on one shelf), orders timed out
as unpaid although the pipeline took a payment for them, timers that did not fire (an unpaid hold past its
expiry, an unpaid order past its payment timeout), and timers that fired early (a hold expired, an unpaid order
timed out, a presale order cancelled for its balance, each before the pipeline's own deadline). Every SKU the
store, an answer or an adjustment names is judged (units held of a SKU that never had stock are oversold, store
units the topics do not explain are drift); every answer that holds a line is for the SKU and qty the line was
placed with; a return goes back on hand no more than its refund returned and its order shipped, at the warehouse
it reached; and a record of the pipeline's outputs the audit cannot read is a failure, not a skip.

Order. The pool applies its input topics (commands, adjustments, returns, overrides) as one stream per
partition in the order it reads them, which no topic records: commands it applies locally are not even
published. What the topics do give: the offsets of one SKU's adjustments (one partition: the pool's own
order among them); the pool's batch time on every answer (``HoldDecided.event_time_ms``), on every override
it audited, and, in its changelog, on every adjustment it applied (the ``a`` record of the adjustment id,
kept ``STOCKFLOW_TOMBSTONE_TTL_S``). A count's own ``event_time_ms`` is when the warehouse counted or sent
it, not when the pool applied it, so it orders nothing. Two batch times that differ order their changes;
equal ones (one batch) leave the order open, and the audit then accepts every result either order gives -
a range, not a guess. Likewise a hot SKU's count, settled as each bucket answers, against its buckets'
later shipments, and an adjustment whose ``a`` record is gone: it came before every timed one on its topic,
and the over-time checks take it at the moment that leaves the most stock. An answer repeated (at least
once, a replay repeats answers flushed before a crash) dates a hold's opening by its last repeat, its
closing by the first. This assumes the pool's clock does not run backwards between its batches.

Refunds, from ``refund.states``, ``refund.instructions``, ``refund.issued`` and the settlements on
``refund.events``: a refund paid out twice (two instructions for one refund id that ask for different
payouts, two acceptances with different marketplace references, or two settlements with different ids), an
order whose refunds' instructed payouts add up to more than its OrderPlaced says it cost, a refund approved
for payment with no instruction behind it (lost), and an instruction for a refund that never reached the
paying state.

Retention. The changelog, ``order.states`` and ``refund.states`` are compacted (kept); every other topic read
here is kept by time, and the brokers delete its oldest records. Each topic's partitions are read with where
they start now (their low watermark, read after their records): a partition that no longer starts at 0 lost
the start of the history of every key on it (by the contract's partitioning). What depends on that part is not
judged, and is counted as ``unjudged`` with the topic that lost it, never as drift, lost or oversold: an open
line in the store with no answer left; a SKU's on-hand (its adjustments or returns, or any shipment, deleted)
and its oversell (its adjustments or returns deleted); an undecided order whose decision or refusal may be
deleted; a paying refund whose instruction may be; a takeover of a set-aside whose override may be; an order
refunded whose OrderPlaced is. A run where every partition starts at 0 is judged whole.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias, TypeVar

import orjson

from agents.routing.warehouses import load_warehouses
from streams.contract.codec import Codec, DecodeError, codec_for
from streams.contract.keys import order_key, partition_for, refund_key
from streams.contract.reasons import Reason
from streams.contract.set_aside import SET_ASIDE_LINE, override_of, parse_pledge
from streams.contract.topics import (
    ALERTS,
    AUDIT_OVERRIDES,
    DEADLETTERS,
    HOLD_RESULTS,
    OPS_CLOCK,
    ORDER_EVENTS,
    ORDER_STATES,
    REFUND_EVENTS,
    REFUND_INSTRUCTIONS,
    REFUND_ISSUED,
    REFUND_STATES,
    RESERVATION_RESULTS,
    STOCK_ADJUSTMENTS,
    STOCK_RETURNS,
    WAREHOUSE_DISPATCH,
)
from streams.engine.changelog import changelog_topic
from streams.engine.topicreader import Record, earliest_offsets, read_all
from streams.settings import Settings

_OPEN_OUTCOMES = {"HELD", "COMMITTED"}
_STORED_OPEN = ("held", "sold")  # a line record's status while it holds units, in the pool's store
_FULFILLING = _OPEN_OUTCOMES | {"SHIPPED"}  # a paid order's line: held for it, or gone to its customer
# An order that is over, whose lines hold nothing (a rejected one: ``_check_decisions``).
ORDER_ENDED = ("cancelled", "payment_timeout", "delivered")
# A timer this late has not fired: the engine fires due timers within a batch window.
OVERDUE_GRACE_MS = 60_000
# A line let go: held before, no longer. A refusal held nothing: a line held after one is not held twice.
_LET_GO = {"RELEASED", "EXPIRED", "SHIPPED"}
# A presale order's stage time for its deposit (``OrderStateChanged.stage_times``): it stays reserved, unpaid,
# for the balance window. The contract's name, restated: the audit shares no rule code with the lifecycle.
DEPOSIT_PAID = "deposit_paid"
# The reason on the state change of a presale order cancelled because its balance never came (contract, restated).
BALANCE_UNPAID = "balance_unpaid"
# The stages whose dead letter means the order pipeline refused a message (the engine on reading it, the
# lifecycle giving up a parked one); the sink's mean only that ClickHouse could not hold it.
UNNAMED = -1  # a payment's amount when it names none
PIPELINE_STAGES = frozenset({"streams.engine", "agents.orders.run_lifecycle", "agents.refunds.run_refunds"})
# A larger single adjustment is a typing error, not stock: the pool's limit, restated here because
# the audit shares no rule code with the pool.
MAX_ADJUSTMENT_QTY = 10_000_000
# The reason on the answer refusing to tie a line to a warehouse because the pool tied it to another, followed by
# that warehouse: part of the topic contract (``HoldDecided.reason``), restated.
ALLOCATED_TO = "allocated_to_"
# Why a warehouse is overbooked (``Report.warehouse_overbooked``): more of a SKU's units tied to its lines than it
# had on hand when one more was; a line pushed to a warehouse the pool did not tie it to.
ALLOCATED_BEYOND_ON_HAND = "allocated_beyond_on_hand"
DISPATCHED_UNALLOCATED = "dispatched_unallocated"
_ADJUSTMENTS, _RETURNS = 0, 1  # the topics whose offsets order one SKU's adjustments
RETAINED = "history before the retention of"  # why a key is unjudged: its topic's first records are deleted
_T = TypeVar("_T")
_BySku: TypeAlias = dict[str, list[_T]]


@dataclass(frozen=True)
class Change:
    """One change to a SKU's on-hand or presale cap, as the topics show it.

    ``qty``: the figure of a COUNT or PRESALE_CAP, the signed change of anything else (a shipment's is
    negative). ``at_ms``: the pool's batch time, None when nothing says it any more. ``seq``: (topic, offset)
    for an adjustment, whose offsets are the pool's order within its topic."""

    kind: str  # RECEIPT | COUNT | CORRECTION | PRESALE_CAP | SHIP
    warehouse: str  # a shipment's: the warehouse its line was allocated to, "" when the answers never said
    qty: int
    at_ms: int | None
    seq: tuple[int, int] | None = None
    from_bucket: bool = False  # a shipment a hot SKU's bucket applied
    # When it happened on the shelf, as the pool dates it: an adjustment's own time (a count's: when it was
    # taken), else the pool's batch time; a shipment's batch time. None when nothing says it any more.
    dated_ms: int | None = None
    skew_ms: int = 0  # a count's: how far its warehouse's clock may run ahead (``STOCKFLOW_COUNT_CLOCK_SKEW_MS``)


@dataclass(frozen=True)
class HoldMove:
    """An order line's hold opened (``qty`` > 0) or let go (< 0) at the pool's batch time ``at_ms``."""

    at_ms: int
    key: str  # '<order>#<line>'
    qty: int
    override_id: str = ""  # opened by taking over this override's VIP set-aside


@dataclass(frozen=True)
class AllocMove:
    """An order line's units tied to ``warehouse`` (``qty`` > 0: its ALLOCATED answer) or let go (< 0: the line
    released, expired or shipped) at the pool's batch time ``at_ms``."""

    at_ms: int
    key: str  # '<order>#<line>'
    warehouse: str
    qty: int
    # Dated by an answer a replay repeated (at least once): the line was tied then or before, on a check made then
    # or before, so the batch is no moment the pool checked the shelf for it (``_overbooked`` judges it not there).
    repeated: bool = False


@dataclass(frozen=True)
class SetAside:
    """Units an approved VIP override set aside for one order at its claim (from ``audit.overrides``), and those it
    pledged: its order's lines may take them over from other orders' unpaid holds later."""

    at_ms: int
    override_id: str
    vip_order_id: str
    qty: int
    pledged: int = 0


@dataclass(frozen=True)
class SetAsideLetGo:
    """What was left of the set-aside of ``vip_order_id`` went back to the pool (a RELEASED answer on its line)."""

    at_ms: int
    vip_order_id: str


# What happens at one of the pool's batch times.
_Timed: TypeAlias = Change | HoldMove | SetAside | SetAsideLetGo | AllocMove


@dataclass
class SkuAudit:
    sku: str
    expected_on_hand: int = 0  # the least on-hand the topics allow
    expected_on_hand_max: int = 0  # the most: the same unless they leave an order of changes open
    expected_open: int = 0
    expected_presale: int = 0
    presale_cap: int = 0
    table_on_hand: int | None = None
    table_open: int | None = None
    table_presale: int | None = None
    open_keys_missing_in_table: list[str] = field(default_factory=list)
    open_keys_only_in_table: list[str] = field(default_factory=list)
    totals_disagree: str = ""
    peak_oversold: int = 0  # the most regular units held beyond on-hand at any moment of the run
    peak_presale_oversold: int = 0  # the most presale units held beyond the presale cap at any moment
    on_hand_unjudged: bool = False  # adjustments, returns or shipments of it may be deleted (retention)
    on_hand_range: OnHandRange | None = None
    warehouses_off: list[str] = field(default_factory=list)  # on-hand at a warehouse the topics cannot explain
    oversell_unjudged: bool = False  # adjustments or returns of it may be deleted: its stock over time is unknown

    @property
    def drift(self) -> bool:
        return (
            self.table_on_hand is None
            or (
                not self.on_hand_unjudged
                and (not self.expected_on_hand <= self.table_on_hand <= self.expected_on_hand_max
                     or bool(self.warehouses_off))
            )
            or self.table_open != self.expected_open
            or self.table_presale != self.expected_presale
            or bool(self.open_keys_missing_in_table or self.open_keys_only_in_table)
            or bool(self.totals_disagree)
        )

    @property
    def regular_oversold(self) -> int:
        if self.oversell_unjudged:
            return 0
        return max(0, self.peak_oversold, self.expected_open - self.expected_on_hand_max)

    @property
    def presale_oversold(self) -> int:
        if self.oversell_unjudged:
            return 0
        return max(0, self.peak_presale_oversold, self.expected_presale - self.presale_cap)

    @property
    def oversold(self) -> int:
        return self.regular_oversold + self.presale_oversold


@dataclass
class Report:
    skus: dict[str, SkuAudit] = field(default_factory=dict)
    orders_placed: int = 0
    orders_decided: int = 0
    orders_cancelled_undecided: int = 0
    lost_orders: list[str] = field(default_factory=list)
    double_holds: list[str] = field(default_factory=list)
    rejected_but_held: list[str] = field(default_factory=list)
    ended_but_held: list[str] = field(default_factory=list)  # cancelled, timed out or delivered, a line still held
    inputs_unrefused: list[str] = field(default_factory=list)  # an unreadable input the pipeline did not dead-letter
    outputs_unreadable: list[str] = field(default_factory=list)  # a record of the pipeline's the audit cannot read
    restocked_unreturned: list[str] = field(default_factory=list)  # a return put on hand QC never found resellable
    reserved_incomplete: list[str] = field(default_factory=list)
    # An answer that took stock (held, committed, shipped) for another SKU or quantity than its order line.
    lines_misheld: list[str] = field(default_factory=list)
    paid_without_hold: list[str] = field(default_factory=list)  # a paid, routed or reserved order, a line unheld
    shipped_not_deducted: list[str] = field(default_factory=list)
    # One warehouse's units of a SKU given to more lines than it had, or an order sent to a warehouse the pool
    # never tied its line to: '<reason> key=value ...' (``_overbooked``, ``_check_dispatches``).
    warehouse_overbooked: list[str] = field(default_factory=list)
    paid_but_timed_out: list[str] = field(default_factory=list)
    overdue_timers: list[str] = field(default_factory=list)
    early_timers: list[str] = field(default_factory=list)  # a hold expired, or an order timed out, before its time
    vip_set_aside_misused: list[str] = field(default_factory=list)
    refunds: int = 0
    refunds_paid_twice: list[str] = field(default_factory=list)
    orders_refunded_above_price: list[str] = field(default_factory=list)
    refunds_lost: list[str] = field(default_factory=list)
    refunds_paid_unapproved: list[str] = field(default_factory=list)
    # '<line|sku|order|refund> <id>' -> what of it is not judged and why: its history starts before its topic's
    # retention. Neither a problem nor a pass.
    unjudged: dict[str, str] = field(default_factory=dict)

    def sku_audit(self, sku: str) -> SkuAudit:
        """The audit of ``sku``, started when the topics first mention it."""
        return self.skus.setdefault(sku, SkuAudit(sku))

    def unjudge(self, key: str, what: str, topic: str) -> None:
        """``what`` of ``key`` is not judged: the retention of ``topic`` (its contract name) deleted its start."""
        reason = f"{what}: {RETAINED} {topic}"
        before = self.unjudged.get(key)
        self.unjudged[key] = reason if before is None or reason in before else f"{before}; {reason}"

    @property
    def drifted(self) -> list[SkuAudit]:
        return [a for a in self.skus.values() if a.drift]

    @property
    def oversold_units(self) -> int:
        return sum(a.oversold for a in self.skus.values())

    @property
    def ok(self) -> bool:
        """No failure of any kind. ``unjudged`` is not one, on purpose: every key in it is one whose history a
        topic's retention deleted (its partition no longer starts at 0; ``unjudge`` says so), which on a cluster
        older than its retention is true of every key that old, for good - failing on it would fail every audit
        of such a cluster and leave ``stockflow check --wait`` nothing to wait for. It is never silent: the
        summary counts it, the command prints each key with its reason, and the run verdicts (bench, demo),
        whose topics are the run's own and start at 0, fail on any. What the audit cannot judge for any other
        reason is a failure here: an input no one could read nor dead-lettered (``inputs_unrefused``), an
        output it cannot read (``outputs_unreadable``)."""
        return not (
            self.drifted or self.oversold_units or self.lost_orders or self.double_holds
            or self.rejected_but_held or self.ended_but_held or self.inputs_unrefused or self.outputs_unreadable
            or self.restocked_unreturned
            or self.reserved_incomplete or self.lines_misheld or self.paid_without_hold or self.overdue_timers
            or self.early_timers
            or self.shipped_not_deducted or self.warehouse_overbooked or self.paid_but_timed_out
            or self.vip_set_aside_misused or self.refunds_paid_twice or self.orders_refunded_above_price
            or self.refunds_lost or self.refunds_paid_unapproved
        )  # fmt: skip

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "skus": len(self.skus),
            "skus_drifted": len(self.drifted),
            "oversold_units": self.oversold_units,
            "presale_oversold_units": sum(a.presale_oversold for a in self.skus.values()),
            "vip_set_aside_misused": len(self.vip_set_aside_misused),
            "orders_placed": self.orders_placed,
            "orders_decided": self.orders_decided,
            "orders_cancelled_before_decision": self.orders_cancelled_undecided,
            "lost_orders": len(self.lost_orders),
            "double_holds": len(self.double_holds),
            "rejected_but_held": len(self.rejected_but_held),
            "ended_but_held": len(self.ended_but_held),
            "inputs_unrefused": len(self.inputs_unrefused),
            "outputs_unreadable": len(self.outputs_unreadable),
            "restocked_unreturned": len(self.restocked_unreturned),
            "reserved_incomplete": len(self.reserved_incomplete),
            "lines_misheld": len(self.lines_misheld),
            "paid_without_hold": len(self.paid_without_hold),
            "shipped_not_deducted": len(self.shipped_not_deducted),
            "warehouse_overbooked": len(self.warehouse_overbooked),
            "paid_but_timed_out": len(self.paid_but_timed_out),
            "overdue_timers": len(self.overdue_timers),
            "early_timers": len(self.early_timers),
            "refunds": self.refunds,
            "refunds_paid_twice": len(self.refunds_paid_twice),
            "orders_refunded_above_price": len(self.orders_refunded_above_price),
            "refunds_lost": len(self.refunds_lost),
            "refunds_paid_unapproved": len(self.refunds_paid_unapproved),
            "unjudged": len(self.unjudged),
            "other_failures": self.other_failures,
        }

    # The failure kinds the run verdicts (bench, demo) do not show a figure of their own for.
    OTHER_FAILURES = ("rejected_but_held", "ended_but_held", "inputs_unrefused", "outputs_unreadable",
                      "restocked_unreturned", "reserved_incomplete", "lines_misheld", "paid_without_hold",
                      "shipped_not_deducted", "warehouse_overbooked", "paid_but_timed_out", "overdue_timers",
                      "early_timers", "vip_set_aside_misused", "orders_refunded_above_price",
                      "refunds_paid_unapproved")  # fmt: skip

    @property
    def other_failures(self) -> dict[str, int]:
        """Each such kind with how many it found; empty when none."""
        return {kind: len(getattr(self, kind)) for kind in self.OTHER_FAILURES if getattr(self, kind)}


@dataclass
class _Reading:
    """The topics as the audit reads them, and where each one's partitions start on the brokers."""

    settings: Settings
    codec: Codec
    earliest: dict[str, dict[int, int]] = field(default_factory=dict)  # contract name -> partition -> offset
    # contract name -> (partition, offset) of each record it could not decode
    unreadable: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    _refused: dict[tuple[str, int, int], dict[str, Any]] | None = None
    _letters: dict[tuple[str, int, int], dict[str, Any]] | None = None

    def refused_by_pipeline(self) -> dict[tuple[str, int, int], dict[str, Any]]:
        """Where each message the pipeline refused was read (topic, partition, offset) -> its dead letter; read
        once an audit. The pipeline's only: the sink dead-letters what ClickHouse cannot hold, which the
        pipeline took all the same. And only what it refused for what the message says: one a handler failed on
        (``processing_error``) was valid as far as anyone knows, and is judged as taken (an order never decided
        is lost)."""
        if self._refused is None:
            self._refused = {where: r for where, r in self._dead_letters().items()
                             if r["stage"] in PIPELINE_STAGES and r["reason"] != Reason.PROCESSING_ERROR}  # fmt: skip
        return self._refused

    def _dead_letters(self) -> dict[tuple[str, int, int], dict[str, Any]]:
        """Every dead letter, any stage's, by where its message was read (topic, partition, offset); read once."""
        if self._letters is None:
            self._letters = {(r["source_topic"], r["source_partition"], r["source_offset"]): r
                             for _, _, r in self.decoded(DEADLETTERS.name)}  # fmt: skip
        return self._letters

    def decoded(self, name: str) -> list[tuple[Record, str, dict[str, Any]]]:
        topic = self.settings.topic(name)
        records = read_all(self.settings, topic)
        # After the records: a start that moved while they were read counts as cut, never the other way round.
        self.earliest[name] = earliest_offsets(self.settings, topic)
        out = []
        unreadable = self.unreadable[name] = []
        for rec in records:
            try:
                event_type, record = self.codec.decode(rec.value)
            except DecodeError:
                unreadable.append((rec.partition, rec.offset))
                continue
            out.append((rec, event_type.short_name, record))
        return out

    def unrefused(self, names: tuple[str, ...]) -> list[str]:
        """Records of the input topics ``names`` (read already) that no one could read and no one dead-lettered:
        an input dropped without a word, whatever it was (an order, a payment, a stock count). The sink, which
        reads every topic, is the one that dead-letters unreadable bytes; the engine skips them."""
        lettered = self._dead_letters()
        return [f"{name} partition {partition} offset {offset}" for name in names
                for partition, offset in self.unreadable.get(name, [])
                if (self.settings.topic(name), partition, offset) not in lettered]  # fmt: skip

    def cut(self, name: str, key: str | None = None) -> bool:
        """Whether the retention of topic ``name`` (read already) deleted records from the partition of ``key``
        (by the contract's murmur2 partitioning), or, with no key, from any of its partitions."""
        starts = self.earliest.get(name, {})
        if key is None or not starts:
            return any(start > 0 for start in starts.values())
        return starts.get(partition_for(key.encode(), max(starts) + 1), 0) > 0


def _pipeline_now_ms(reading: _Reading) -> int:
    """The time on the pipeline's clock, which its timers go by: the wall's, moved on by ``ops.clock`` when drills
    and tests may move it (``STOCKFLOW_CLOCK_CONTROL``). By the wall alone a timer due on a clock moved three
    hours on would be overdue only three hours later, long after the run's audit."""
    offset = 0
    if reading.settings.clock_control:
        offset = max((int(record["offset_ms"]) for _, _, record in reading.decoded(OPS_CLOCK.name)), default=0)
    return int(time.time() * 1000) + offset


def audit(settings: Settings) -> Report:
    reading = _Reading(settings, codec_for(settings))
    report = Report()
    totals, holds, applied, split = _pool_store(settings)
    changes, mentioned = _stock_changes(reading, applied, report)
    answers = reading.decoded(HOLD_RESULTS.name)
    at_least_once = settings.processing_guarantee == "at_least_once"
    last, moves, ships, allocated = _fold_answers(answers, report, replays_lose_state=at_least_once)
    allocations, told = _fold_allocations(answers, replays_lose_state=at_least_once)
    split |= set(settings.hot_skus) | {res["sku"] for _, kind, res in answers
                                       if kind == "HoldDecided" and res.get("bucket", -1) >= 0}  # fmt: skip
    for sku, shipped in ships.items():
        changes[sku].extend(shipped)
    orders = _placed_orders(reading)
    presale_of, price_of = orders.presale_of, orders.price_of
    totals, holds = _fold_buckets(totals, holds)
    for by_line in holds.values():
        for key, hold in by_line.items():
            presale_of.setdefault(key.rpartition("#")[0], bool(hold["presale"]))
    _classify_unplaced_holds(moves, presale_of, reading, report)
    set_asides = _set_asides(reading)
    let_go = _set_asides_let_go(answers)
    open_by_sku = _open_lines_by_sku(last, report)
    # SKUs the topics give a stock or an open line: a store with no record of one has lost it (drift). Every other
    # SKU the store, an answer or an adjustment (a refused one too) names is judged as well, against no record as
    # against an empty one: units held of a SKU that never had stock are oversold, units in the store the topics do
    # not explain (a receipt the pool should have refused, a record nothing wrote) are drift.
    stocked = set(report.skus)
    for sku in (*totals, *holds, *(res["sku"] for res in last.values()), *moves, *ships, *changes, *mentioned):
        report.sku_audit(sku)
    presale_keys = {key for by_line in holds.values() for key, hold in by_line.items() if hold["presale"]}
    unseen = _lines_past_retention(holds, last, reading, report)
    now_ms = _pipeline_now_ms(reading)
    hold_ttl_ms = int(settings.hold_ttl_s * 1000)
    _find_overdue_holds(holds, now_ms, report)
    _check_takeovers(moves, set_asides, reading, report)
    for sku, sa in report.skus.items():
        _stock_past_retention(sa, reading, report)
        expected_keys = open_by_sku.get(sku, {})
        _expect(sa, changes.get(sku, []), expected_keys, presale_keys)
        sa.peak_oversold, sa.peak_presale_oversold = _peak_oversold(
            changes.get(sku, []), moves.get(sku, []), set_asides.get(sku, []), presale_of, hold_ttl_ms,
            let_go.get(sku, []))
        if not sa.oversell_unjudged:
            report.warehouse_overbooked.extend(_overbooked(sku, changes.get(sku, []), allocations.get(sku, []),
                                                           late_losses=sku in split))  # fmt: skip
        state = totals.get(sku, None if sku in stocked else _NO_RECORD)
        if state is not None:
            _compare_with_store(sa, state, holds.get(sku, {}), expected_keys, presale_keys, unseen)
    # At least once, a crash in a batch's flush may keep its changelog and lose its answers: the hold's first HELD
    # on the topic is then the replay's, answered as the line stands, later than the hold.
    expired = _check_early_expiries(answers, hold_ttl_ms, report, orders.placed_at_ms if at_least_once else None)
    _audit_orders(reading, orders, last, now_ms, report, expired)
    _check_lines_held_as_placed(answers, orders, report)
    _check_shipments(orders, allocated, last, reading, report)
    _check_dispatches(reading, told, report)
    _audit_refunds(reading, price_of, report)
    _check_restocks(reading, orders, last, report)
    _check_unreadable_inputs(reading, report)
    _check_unreadable_outputs(reading, report)
    return report


# What the store holds of a SKU it has no record of: nothing on hand, nothing locked.
_NO_RECORD: dict[str, Any] = {"on_hand": {}, "locked": 0, "presale_reserved": 0}


def _classify_unplaced_holds(moves: dict[str, list[HoldMove]], presale_of: dict[str, bool], reading: _Reading,
                             report: Report) -> None:  # fmt: skip
    """A hold whose order no OrderPlaced the pipeline took describes, nor a line record in the store (a stray or
    replayed RESERVE, an order the pipeline refused), counts as a regular hold: counted in neither regular nor
    presale holds, the units it took beyond on-hand were oversold unseen. Unless its OrderPlaced may be deleted
    (its partition of ``order.events`` lost its start): a presale order's holds may pass on-hand up to the cap, so
    such a hold's oversell is unjudged (it counts in neither)."""
    for sku_moves in moves.values():
        for order_id in sorted({_order(m) for m in sku_moves} - set(presale_of)):
            if reading.cut(ORDER_EVENTS.name, order_id):
                report.unjudge(f"order {order_id}", "presale or regular", ORDER_EVENTS.name)
            else:
                presale_of[order_id] = False


def _check_unreadable_inputs(reading: _Reading, report: Report) -> None:
    """Every record on the input topics that no one can read has its dead letter, unless dead letters may be
    deleted by now (unjudged then). ``stock.returns`` is the pool's input too: a restock dropped unread is a return
    that never reached the shelf."""
    unrefused = reading.unrefused((ORDER_EVENTS.name, REFUND_EVENTS.name, STOCK_ADJUSTMENTS.name, STOCK_RETURNS.name))
    if unrefused and reading.cut(DEADLETTERS.name):
        for where in unrefused:
            report.unjudge(f"record {where}", "refusal", DEADLETTERS.name)
    else:
        report.inputs_unrefused = unrefused


# The pipeline's own outputs the audit judges by (those it read: the alerts only when an SLA was due).
_OUTPUTS = (HOLD_RESULTS.name, RESERVATION_RESULTS.name, ORDER_STATES.name, AUDIT_OVERRIDES.name, DEADLETTERS.name,
            ALERTS.name, REFUND_STATES.name, REFUND_INSTRUCTIONS.name, REFUND_ISSUED.name,
            WAREHOUSE_DISPATCH.name)  # fmt: skip


def _check_unreadable_outputs(reading: _Reading, report: Report) -> None:
    """Every record of the pipeline's outputs the audit read is one it can read. An unreadable one is no input
    refused (nothing dead-letters what the pipeline wrote, and a dead letter would not make it readable): it is an
    answer, a decision, a state the audit cannot see, so what it judges without it may pass a broken run (a double
    hold in an unreadable answer). A failure, not unjudged: a run's own outputs have none."""
    report.outputs_unreadable = [f"{name} partition {partition} offset {offset}" for name in _OUTPUTS
                                 for partition, offset in reading.unreadable.get(name, [])]  # fmt: skip


def _lines_past_retention(holds: dict[str, dict[str, dict[str, Any]]], last: dict[str, dict[str, Any]],
                          reading: _Reading, report: Report) -> set[str]:  # fmt: skip
    """Open lines in the store with no answer left, on a hold-results partition that lost its start: their answers
    may be deleted (a presale line committed at its deposit stays open for weeks). Unjudged, and left out of the
    store's side of the comparison. A line with an answer left has its last one (deletion takes the oldest)."""
    unseen = set()
    for by_line in holds.values():
        for key, hold in by_line.items():
            if (
                hold["status"] in _STORED_OPEN
                and hold["line_no"] != 0
                and key not in last
                and reading.cut(HOLD_RESULTS.name, key.rpartition("#")[0])
            ):
                unseen.add(key)
                report.unjudge(f"line {key}", "open hold", HOLD_RESULTS.name)
    return unseen


def _stock_past_retention(sa: SkuAudit, reading: _Reading, report: Report) -> None:
    """A SKU whose adjustments or returns lost their start: its on-hand, presale cap and stock over time are
    unknown (a deleted receipt is stock the rebuild misses). Any hold-results partition that lost its start may
    have taken one of its shipments: its on-hand is unknown, and only that (deleted shipments and holds leave the
    oversell found an underestimate)."""
    for name in (STOCK_ADJUSTMENTS.name, STOCK_RETURNS.name):
        if reading.cut(name, sa.sku):
            sa.on_hand_unjudged = sa.oversell_unjudged = True
            report.unjudge(f"sku {sa.sku}", "on-hand and oversell", name)
    if reading.cut(HOLD_RESULTS.name):
        sa.on_hand_unjudged = True
        report.unjudge(f"sku {sa.sku}", "on-hand", HOLD_RESULTS.name)


@dataclass
class _Returns:
    """What ``refund.events`` says came back, the messages the pipeline refused left out, by refund id."""

    first_qc: dict[str, bool] = field(default_factory=dict)  # resellable, by its first QC report
    reached: dict[str, set[str]] = field(default_factory=dict)  # the warehouses its return reports name
    order_of: dict[str, str] = field(default_factory=dict)  # its order id, by its request
    units: dict[str, dict[str, int]] = field(default_factory=dict)  # SKU -> units it asked to return


def _returns(reading: _Reading, orders: _OrderInputs) -> _Returns:
    """Each refund's return as its messages the pipeline took give it. The units: per line its request names, the
    line's qty (a request naming none returns the whole order, as the refund agent has it), under the SKU its
    order was placed with (the request's own where the OrderPlaced is not on the topics); a request sent again
    that asks more counts at its most."""
    refused = reading.refused_by_pipeline()
    topic = reading.settings.topic(REFUND_EVENTS.name)
    out = _Returns()
    lines: dict[str, dict[int, tuple[str, int]]] = defaultdict(dict)  # refund id -> line -> (SKU, units)
    for rec, kind, r in reading.decoded(REFUND_EVENTS.name):
        if (topic, rec.partition, rec.offset) in refused or kind not in ("ReturnReceived", "RefundRequested"):
            continue
        refund_id = refund_key(r["channel"], r["channel_refund_id"])
        if kind == "ReturnReceived":
            out.reached.setdefault(refund_id, set()).add(str(r["warehouse_id"]))
            if r.get("qc_done", True):
                out.first_qc.setdefault(refund_id, bool(r["resellable"]))
            continue
        order_id = out.order_of.setdefault(refund_id, order_key(r["channel"], r["channel_order_id"]))
        placed = orders.line_items.get(order_id, {})
        asked = {int(ln["line_no"]): (str(ln.get("sku") or ""), int(ln["qty"])) for ln in r.get("lines") or []}
        asked = asked or placed
        for line_no, (sku, qty) in asked.items():
            sku = placed.get(line_no, (sku, 0))[0]
            lines[refund_id][line_no] = (sku, max(qty, lines[refund_id].get(line_no, (sku, 0))[1]))
    for refund_id, by_line in lines.items():
        units = out.units[refund_id] = defaultdict(int)
        for sku, qty in by_line.values():
            units[sku] += qty
    return out


def _check_restocks(reading: _Reading, orders: _OrderInputs, last: dict[str, dict[str, Any]],
                    report: Report) -> None:  # fmt: skip
    """A return goes back on hand (``stock.returns``, ids ``return:<refund id>:<line>``) only once the warehouse
    said it received it and QC found it resellable: the refund's first QC report the pipeline took says so; at a
    warehouse the return reached; and no more units of a SKU than its refund asked to return, nor, over all of
    its order's refunds, than the order shipped of it (the pool's SHIPPED answers). A restock beyond any of these
    is units on a shelf that are not there (written off, never sent back, counted twice), sold again. One whose
    refund's events, or its order's answers, may be deleted is unjudged. Each restock id once: the pool applies
    it once."""
    returns = _returns(reading, orders)
    shipped: dict[tuple[str, str], int] = defaultdict(int)  # (order id, SKU) -> units shipped
    for key, res in last.items():
        if res["outcome"] == "SHIPPED":
            shipped[(key.rpartition("#")[0], res["sku"])] += res["qty"]
    put_back: dict[tuple[str, str], int] = defaultdict(int)  # (refund or order id, SKU) -> units restocked so far
    seen: set[tuple[str, str]] = set()
    for _, kind, r in reading.decoded(STOCK_RETURNS.name):
        if kind != "StockAdjusted" or (r["sku"], r["event_id"]) in seen:
            continue
        seen.add((r["sku"], r["event_id"]))
        refund_id = r["event_id"].removeprefix("return:").rpartition(":")[0]
        order_id = returns.order_of.get(refund_id, "")
        put_back[(refund_id, r["sku"])] += r["qty"]
        put_back[(order_id, r["sku"])] += r["qty"]
        what = f"{r['event_id']}: {r['qty']} of {r['sku']} at {r['warehouse_id']}"
        qc, asked = returns.first_qc.get(refund_id), returns.units.get(refund_id)
        if (qc is None or (qc and asked is None)) and reading.cut(REFUND_EVENTS.name):
            report.unjudge(f"refund {refund_id}", "return", REFUND_EVENTS.name)
        elif not qc or asked is None:
            report.restocked_unreturned.append(what if not qc else f"{what}, no return asked")
        elif r["warehouse_id"] not in returns.reached[refund_id]:
            reached = ", ".join(sorted(returns.reached[refund_id]))
            report.restocked_unreturned.append(f"{what}, the return reached {reached}")
        elif put_back[(refund_id, r["sku"])] > asked.get(r["sku"], 0):
            report.restocked_unreturned.append(f"{what}, {asked.get(r['sku'], 0)} returned")
        elif put_back[(order_id, r["sku"])] > (left := shipped[(order_id, r["sku"])]):
            if reading.cut(HOLD_RESULTS.name, order_id):
                report.unjudge(f"refund {refund_id}", "units shipped", HOLD_RESULTS.name)
            else:
                report.restocked_unreturned.append(f"{what}, order {order_id} shipped {left}")


def _audit_refunds(reading: _Reading, price_of: dict[str, int], report: Report) -> None:
    """5. Refunds: every refund that reached payment has exactly one instruction, and no other has one; no order
    is paid back more than it may be (``price_of``: order id -> its price, or its payments when less)."""
    paying: dict[str, str] = {}  # refund id -> its order id
    reviewed: set[str] = set()  # refunds handed to customer service
    for _, _, r in reading.decoded(REFUND_STATES.name):
        report.refunds += 0 if r["previous_state"] else 1
        if r["state"] == "refunding" or "refunding" in r["stage_times"]:
            paying[r["refund_id"]] = r["order_id"]
        if "reviewing" in r["stage_times"]:
            reviewed.add(r["refund_id"])
    instructions = [r for _, _, r in reading.decoded(REFUND_INSTRUCTIONS.name)]
    issued = [r for _, _, r in reading.decoded(REFUND_ISSUED.name)]
    refund_events = reading.decoded(REFUND_EVENTS.name)
    settled = [r for _, kind, r in refund_events if kind == "RefundSettled"]
    instructed = {r["refund_id"] for r in instructions}
    report.refunds_paid_twice = _paid_twice(instructions, issued, settled)
    report.orders_refunded_above_price = _refunded_above_price(instructions, issued, settled, price_of)
    for order_id in sorted({r["order_id"] for r in instructions} - set(price_of)):
        if reading.cut(ORDER_EVENTS.name, order_id):
            report.unjudge(f"order {order_id}", "price", ORDER_EVENTS.name)
    for refund_id in sorted(set(paying) - instructed):
        # Its instructions are keyed by its order: that partition may have lost it.
        if reading.cut(REFUND_INSTRUCTIONS.name, paying[refund_id]):
            report.unjudge(f"refund {refund_id}", "instruction", REFUND_INSTRUCTIONS.name)
        else:
            report.refunds_lost.append(refund_id)
    refused = reading.refused_by_pipeline()
    events_topic = reading.settings.topic(REFUND_EVENTS.name)
    applied = [(rec, kind, r) for rec, kind, r in refund_events
               if (events_topic, rec.partition, rec.offset) not in refused]  # fmt: skip
    against = _paid_against_the_rules(instructions, reviewed, applied)
    report.refunds_paid_unapproved = sorted((instructed - set(paying)) | against)


def _paid_against_the_rules(instructions: list[dict[str, Any]], reviewed: set[str],
                            refund_events: list[tuple[Record, str, dict[str, Any]]]) -> set[str]:  # fmt: skip
    """Refunds handed to customer service and paid though its first decision the pipeline took was no (a later
    decision is refused, so it cannot have turned it into a yes), whatever the refund agent's states say next.
    ``refund_events``: those the pipeline did not dead-letter (a review it refused decided nothing, and customer
    service decides again)."""
    first_review: dict[str, bool] = {}
    for _, kind, r in refund_events:
        if kind == "RefundReviewed":
            first_review.setdefault(refund_key(r["channel"], r["channel_refund_id"]), bool(r["approved"]))
    return {i["refund_id"] for i in instructions
            if i["refund_id"] in reviewed and first_review.get(i["refund_id"]) is False}  # fmt: skip


# What an instruction pays: every instruction of one refund carries the same event id, and a batch replayed
# (at least once) sends the same instruction again with a new time, which the connector's idempotency key
# makes one payout. Instructions that differ in any of these are two payouts asked for.
_PAYOUT = ("order_id", "channel", "channel_order_id", "channel_refund_id", "amount_fen", "payment_path",
           "idempotency_key")  # fmt: skip


def _paid_twice(instructions: list[dict[str, Any]], issued: list[dict[str, Any]],
                settled: list[dict[str, Any]]) -> list[str]:  # fmt: skip
    """Refund ids with two payouts: two different instructions, two acceptances by the marketplace with
    different references (a call sent again is answered "already agreed", which carries none), or two
    settlements with different ids (a callback delivered again carries the same one)."""
    payouts: dict[str, set[tuple[str, Any]]] = defaultdict(set)
    for r in instructions:
        payouts[r["refund_id"]].add(("instruction", tuple(r[k] for k in _PAYOUT)))
    for r in issued:
        if r["platform_ref"]:
            payouts[r["refund_id"]].add(("accepted", r["platform_ref"]))
    for r in settled:
        if r["settlement_id"]:
            payouts[refund_key(r["channel"], r["channel_refund_id"])].add(("settled", r["settlement_id"]))
    twice = set()
    for refund_id, seen in payouts.items():
        for source in ("instruction", "accepted", "settled"):
            if sum(1 for s, _ in seen if s == source) > 1:
                twice.add(refund_id)
    return sorted(twice)


def _refunded_above_price(instructions: list[dict[str, Any]], issued: list[dict[str, Any]],
                          settled: list[dict[str, Any]], price_of: dict[str, int]) -> list[str]:  # fmt: skip
    """Orders whose refunds add up to more than the order may be paid back (``price_of``): per refund id the most
    any source says went back - instructed, accepted by the marketplace, or settled (a settlement above the
    instruction, or one for a refund never instructed, took that money out all the same) - summed over the
    order's refund ids. An order whose OrderPlaced the topics no longer hold is not judged."""
    most: dict[str, tuple[str, int]] = {}  # refund id -> (its order id, the most paid back)

    def saw(refund_id: str, order_id: str, amount: int) -> None:
        first_order, before = most.get(refund_id, (order_id, 0))
        most[refund_id] = (first_order, max(before, amount))

    for r in instructions:
        saw(r["refund_id"], r["order_id"], int(r["amount_fen"]))
    for r in issued:
        saw(r["refund_id"], r["order_id"], int(r["amount_fen"]))
    for r in settled:
        saw(refund_key(r["channel"], r["channel_refund_id"]), order_key(r["channel"], r["channel_order_id"]),
            int(r["amount_fen"]))  # fmt: skip
    by_order: dict[str, int] = defaultdict(int)
    for order_id, amount in most.values():
        by_order[order_id] += amount
    return sorted(order_id for order_id, total in by_order.items()
                  if order_id in price_of and total > price_of[order_id])  # fmt: skip


def _stock_changes(reading: _Reading, applied: dict[tuple[str, str], int], report: Report
                   ) -> tuple[dict[str, list[Change]], set[str]]:  # fmt: skip
    """1. Each SKU's adjustments and returns, each id once, refused ones skipped, with the pool's batch time
    where its changelog still records it (``applied``: (SKU, adjustment id) -> ms); and every SKU an adjustment
    names, a refused one's too (units the pool booked from it are drift)."""
    warehouses = set(load_warehouses(reading.settings.warehouses_file))
    changes: dict[str, list[Change]] = defaultdict(list)
    mentioned: set[str] = set()
    seen_adjustments: set[tuple[str, str]] = set()
    # Dated before the ids the pool remembers: refused on the pool's clock at the time, which only its
    # dead letter records (its time); the age is judged here again, so a refusal that was wrong still counts.
    too_old = {where: int(r["event_time_ms"]) for where, r in reading.refused_by_pipeline().items()
               if r["reason"] == Reason.ADJUSTMENT_TOO_OLD}  # fmt: skip
    memory_ms = int(reading.settings.tombstone_ttl_s * 1000)
    refused_counts: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for (topic, partition, offset), r in reading.refused_by_pipeline().items():
        if r["reason"] in (Reason.COUNT_SUPERSEDED, Reason.COUNT_TOO_OLD):
            refused_counts[topic].add((partition, offset))
    for source, topic in ((_ADJUSTMENTS, STOCK_ADJUSTMENTS.name), (_RETURNS, STOCK_RETURNS.name)):
        full_name = reading.settings.topic(topic)
        for rec, kind, adj in reading.decoded(topic):
            if kind != "StockAdjusted" or (adj["sku"], adj["event_id"]) in seen_adjustments:
                continue
            mentioned.add(adj["sku"])
            refused_at = too_old.get((full_name, rec.partition, rec.offset))
            if refused_at is not None and 0 < int(adj.get("event_time_ms") or 0) < refused_at - memory_ms:
                continue
            qty, wh = adj["qty"], adj["warehouse_id"]
            valid = {
                "RECEIPT": qty > 0 and wh in warehouses,
                "COUNT": qty >= 0 and wh in warehouses,
                "CORRECTION": qty != 0 and wh in warehouses,
                "PRESALE_CAP": qty >= 0,
            }.get(adj["kind"], False)
            if not valid or abs(qty) > MAX_ADJUSTMENT_QTY:
                continue
            seen_adjustments.add((adj["sku"], adj["event_id"]))
            report.sku_audit(adj["sku"])
            if adj["kind"] == "COUNT" and (rec.partition, rec.offset) in refused_counts.get(full_name, ()):
                continue  # not applied: taken before the count in force, or before the movements the pool keeps
            at_ms = applied.get((adj["sku"], adj["event_id"]))
            where = "" if adj["kind"] == "PRESALE_CAP" else wh
            dated = int(adj.get("event_time_ms") or 0) or at_ms
            skew_ms = reading.settings.count_clock_skew_ms
            if adj["kind"] in ("COUNT", "RECEIPT", "CORRECTION") and dated is not None and at_ms is not None:
                dated = min(dated, at_ms + skew_ms)  # the pool believes no clock further ahead
            changes[adj["sku"]].append(Change(adj["kind"], where, qty, at_ms, (source, rec.offset), dated_ms=dated,
                                              skew_ms=skew_ms))  # fmt: skip
    return changes, mentioned


def _fold_answers(results: list[tuple[Record, str, dict[str, Any]]], report: Report, *, replays_lose_state: bool
                  ) -> tuple[dict[str, dict[str, Any]], _BySku[HoldMove], _BySku[Change], dict[str, str]]:  # fmt: skip
    """2. The last answer per order line (``<order>#<line>``), in the order the pool gave them; per SKU, when
    each line's hold opened and closed, and its shipments; the warehouse each line was allocated to. An order
    line held again after it was let go is a double hold. ``replays_lose_state``: at least once, where a replay
    repeats answers whose state never committed (see below)."""
    last: dict[str, dict[str, Any]] = {}
    history: dict[str, list[str]] = defaultdict(list)
    allocated: dict[str, str] = {}
    moves: dict[str, list[HoldMove]] = defaultdict(list)
    opening: dict[str, tuple[int, str]] = {}  # an open line -> its opening's place in its SKU's moves, its answer
    ships: dict[str, list[Change]] = defaultdict(list)
    shipped: dict[str, int] = {}  # a shipped line -> its shipment's place in its SKU's list
    for _, kind, res in results:
        if kind != "HoldDecided" or res["outcome"] == "IGNORED" or res["line_no"] == SET_ASIDE_LINE:
            continue  # a set-aside is judged from its override and its letting go (``_set_asides_let_go``)
        key = f"{res['order_id']}#{res['line_no']}"
        if res["action"] == "ALLOCATE":
            # An allocation ties an open line to a warehouse (its answer's reason); it neither opens nor closes it.
            if res["outcome"] == "ALLOCATED":
                allocated[key] = res["reason"]
            continue
        outcomes = history[key]
        if not outcomes or outcomes[-1] != res["outcome"]:
            if res["outcome"] == "HELD" and any(o in _LET_GO for o in outcomes):
                report.double_holds.append(key)
            outcomes.append(res["outcome"])
        was = last.get(key, {}).get("outcome")
        sku, at_ms = res["sku"], res["event_time_ms"]
        if res["outcome"] == "SHIPPED" and was != "SHIPPED":
            shipped[key] = len(ships[sku])
            ships[sku].append(Change("SHIP", allocated.get(key, ""), -res["qty"], at_ms,
                                     from_bucket=res.get("bucket", -1) >= 0, dated_ms=at_ms))  # fmt: skip
        elif res["outcome"] == "SHIPPED" and key in shipped and ships[sku][shipped[key]].dated_ms != at_ms:
            # Answered again (at least once, a replay): the pool booked it at one of the two batch times.
            ships[sku][shipped[key]] = replace(ships[sku][shipped[key]], dated_ms=None)
        opened, is_open = was in _OPEN_OUTCOMES, res["outcome"] in _OPEN_OUTCOMES
        if is_open and not opened:
            reason = res["reason"]
            taken = override_of(reason)  # a line that took over a VIP set-aside: the override's id
            opening[key] = (len(moves[sku]), res["outcome"])
            moves[sku].append(HoldMove(at_ms, key, res["qty"], taken))
        elif opened and is_open and replays_lose_state and opening.get(key, (0, ""))[1] == res["outcome"]:
            # The answer that opened it, again: at least once, a replay repeats the answers flushed before a crash,
            # and only the replay's changelog (the stock they were taken from) is there. The hold is dated by the
            # last repeat (the fewest held), its closing by the first answer that let it go. Exactly once, the
            # first answer committed with its state: a repeat is the pool answering a RESERVE asked again (the
            # lifecycle's retry, a duplicate) with what the line is, and dating the hold by it would hide a hold
            # taken beyond the stock before a later receipt.
            at = opening[key][0]
            moves[sku][at] = replace(moves[sku][at], at_ms=at_ms)
        elif opened and not is_open:
            opening.pop(key, None)
            moves[sku].append(HoldMove(at_ms, key, -last[key]["qty"]))
        last[key] = res
    return last, moves, ships, allocated


def _fold_allocations(results: list[tuple[Record, str, dict[str, Any]]], *, replays_lose_state: bool
                      ) -> tuple[_BySku[AllocMove], dict[str, set[str]]]:  # fmt: skip
    """Per SKU, when each order line's units were tied to a warehouse (its ALLOCATED answer: the answer to an
    ALLOCATE, or to a COMMIT naming a warehouse) and when it let them go (its first answer RELEASED, EXPIRED or
    SHIPPED after that), in the order the pool gave them; and per line, every warehouse an answer says the pool
    tied it to (ALLOCATED there, or another warehouse refused as ``allocated_to_`` it). A repeated ALLOCATED
    answer dates the allocation as a repeated HELD dates a hold (``_fold_answers``): at least once by the last
    repeat, exactly once by the first (a repeat is the pool answering an ALLOCATE asked again)."""
    moves: dict[str, list[AllocMove]] = defaultdict(list)
    told: dict[str, set[str]] = defaultdict(set)
    tied: dict[str, tuple[str, int]] = {}  # a line tied to a warehouse -> its SKU, its allocation's place in its moves
    for _, kind, res in results:
        if kind != "HoldDecided":
            continue
        key, outcome, at_ms = f"{res['order_id']}#{res['line_no']}", res["outcome"], int(res["event_time_ms"])
        if res["action"] == "ALLOCATE":
            if outcome == "IGNORED" and res["reason"].startswith(ALLOCATED_TO):
                told[key].add(res["reason"].removeprefix(ALLOCATED_TO))
            if outcome != "ALLOCATED":
                continue
            told[key].add(res["reason"])
            if key not in tied:
                tied[key] = (res["sku"], len(moves[res["sku"]]))
                moves[res["sku"]].append(AllocMove(at_ms, key, res["reason"], res["qty"]))
            elif replays_lose_state:
                sku, at = tied[key]
                moves[sku][at] = replace(moves[sku][at], at_ms=at_ms, repeated=True)
        elif outcome in _LET_GO and key in tied:
            sku, at = tied.pop(key)
            moves[sku].append(AllocMove(at_ms, key, moves[sku][at].warehouse, -moves[sku][at].qty))
    return moves, told


def _open_lines_by_sku(last: dict[str, dict[str, Any]], report: Report) -> dict[str, dict[str, int]]:
    """The units each open order line holds, per SKU, by the last answers."""
    open_by_sku: dict[str, dict[str, int]] = defaultdict(dict)
    for key, res in last.items():
        if res["outcome"] in _OPEN_OUTCOMES:
            open_by_sku[res["sku"]][key] = res["qty"]
            report.sku_audit(res["sku"])
    return open_by_sku


def _set_asides(reading: _Reading) -> dict[str, list[SetAside]]:
    """What each applied VIP override set aside at its claim, per SKU (a claim seen again is audited again: once).
    Its pledge is not set aside: the units stay in other orders' holds until a line of its VIP order takes them over
    (audited again, naming the line), which lets those holds go and opens the line's in the same batch."""
    out: dict[str, list[SetAside]] = defaultdict(list)
    seen: set[str] = set()
    for _, _, r in reading.decoded(AUDIT_OVERRIDES.name):
        pledged, taken_by = parse_pledge(r.get("detail") or "")
        if r["outcome"] == "APPLIED" and not taken_by and r["override_id"] not in seen:
            seen.add(r["override_id"])
            out[r["sku"]].append(SetAside(r["event_time_ms"], r["override_id"], r["vip_order_id"], r["qty"] - pledged,
                                          pledged))  # fmt: skip
    return out


def _set_asides_let_go(answers: list[tuple[Record, str, dict[str, Any]]]) -> dict[str, list[SetAsideLetGo]]:
    """When the rest of each VIP order's set-aside went back to the pool before its expiry, per SKU."""
    out: dict[str, list[SetAsideLetGo]] = defaultdict(list)
    for _, kind, res in answers:
        if kind == "HoldDecided" and res["line_no"] == SET_ASIDE_LINE and res["outcome"] == "RELEASED":
            out[res["sku"]].append(SetAsideLetGo(res["event_time_ms"], res["order_id"]))
    return out


def _check_takeovers(moves: dict[str, list[HoldMove]], set_asides: dict[str, list[SetAside]], reading: _Reading,
                     report: Report) -> None:  # fmt: skip
    """Set-aside units go to lines of the order their override named, and no more than it set aside. A takeover of
    an override not seen, on a partition that lost its start, or beyond what the overrides seen set aside for its
    order while any partition did, may have been covered by what was deleted: unjudged."""
    for sku, sku_moves in moves.items():
        overrides = {s.override_id: s for s in set_asides.get(sku, [])}
        taken: dict[str, int] = defaultdict(int)
        for move in sorted(sku_moves, key=lambda m: m.at_ms):
            if not move.override_id:
                continue
            order_id = move.key.rpartition("#")[0]
            override = overrides.get(move.override_id)
            taken[order_id] += move.qty
            given = sum(s.qty + s.pledged for s in overrides.values()
                        if s.vip_order_id == order_id and s.at_ms <= move.at_ms)  # fmt: skip
            if override is not None and override.vip_order_id != order_id:
                report.vip_set_aside_misused.append(f"{sku}/{move.key}")
            elif override is None or taken[order_id] > given:
                # Not seen, or beyond what those seen set aside: what was deleted may have set it aside.
                if reading.cut(AUDIT_OVERRIDES.name, None if override else move.override_id):
                    report.unjudge(f"line {move.key}", "set-aside taken over", AUDIT_OVERRIDES.name)
                else:
                    report.vip_set_aside_misused.append(f"{sku}/{move.key}")


def _pool_store(settings: Settings) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, dict[str, Any]]],
                                             dict[tuple[str, str], int], set[str]]:  # fmt: skip
    r"""3. The pool's store as its changelog holds it (committed batches only): per SKU its totals
    record (key "s\0<sku>") and one record per order line (key "h\0<sku>\0<order>#<line>"); when it
    applied each adjustment (key "a\0<sku>\0<adjustment id>", its first record: a purge deletes it later); and the
    SKUs any version of whose totals, or of a bucket's, says they were split into buckets."""
    totals: dict[str, dict[str, Any]] = {}
    holds: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    applied: dict[tuple[str, str], int] = {}
    split: set[str] = set()
    for rec in read_all(settings, changelog_topic(settings, "stock_by_sku")):
        kind_byte, _, rest = (rec.key or b"").partition(b"\0")
        value = orjson.loads(rec.value) if rec.value else None
        if kind_byte == b"s":
            if value is None:
                totals.pop(rest.decode(), None)
            else:
                totals[rest.decode()] = value
                if value.get("hot"):
                    key = rest.decode()
                    split.add(key.rpartition("#")[0] if int(value["hot"].get("bucket", -1)) >= 0 else key)
        elif kind_byte == b"h":
            sku_raw, _, line = rest.partition(b"\0")
            if value is None:
                holds[sku_raw.decode()].pop(line.decode(), None)
            else:
                holds[sku_raw.decode()][line.decode()] = value
        elif kind_byte == b"a" and isinstance(value, dict) and "applied_ms" in value:
            sku_raw, _, adjustment_id = rest.partition(b"\0")
            applied.setdefault((sku_raw.decode(), adjustment_id.decode()), int(value["applied_ms"]))
    return totals, holds, applied, split


def _fold_buckets(totals: dict[str, dict[str, Any]], holds: dict[str, dict[str, dict[str, Any]]]
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, dict[str, Any]]]]:  # fmt: skip
    """A hot SKU's stock buckets (store keys '<sku>#<k>' or '<sku>#<k>.<salt>', their totals marked with their
    bucket number) are parts of the SKU: their on-hand, totals and line records are added to the SKU's own.
    Units in transit between the SKU's home and a bucket are in neither for a moment: a pipeline still busy
    shows as drift until they land, which the audit, run again, no longer finds."""
    buckets = {key for key, state in totals.items() if ((state.get("hot") or {}).get("bucket", -1)) >= 0}
    hot_homes = {key for key, state in totals.items() if state.get("hot") and key not in buckets}
    folded: dict[str, dict[str, Any]] = {k: v for k, v in totals.items() if k not in buckets}
    for key in sorted(buckets):
        sku = key.rpartition("#")[0]
        part = totals[key]
        into = folded.setdefault(sku, {"on_hand": {}, "locked": 0, "presale_reserved": 0})
        into = folded[sku] = {**into, "on_hand": dict(into["on_hand"])}
        for wh, qty in part["on_hand"].items():
            into["on_hand"][wh] = into["on_hand"].get(wh, 0) + qty
        into["locked"] += part["locked"]
        into["presale_reserved"] += part["presale_reserved"]
    merged: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for key, lines in holds.items():
        sku, _, number = key.rpartition("#")
        is_bucket = number.partition(".")[0].isdigit()  # '<k>' or '<k>.<salt>' (``bucket_key``)
        part_of = sku if is_bucket and (key in buckets or sku in hot_homes or sku in folded) else key
        for line, hold in lines.items():
            # A line's open record (held or paid, at the bucket that holds it) stands, whichever partition is read
            # first: the home's marker of a line it forwarded, or a bucket's record of one it let go, does not
            # replace it.
            kept_open = merged[part_of].get(line, {}).get("status") in _STORED_OPEN
            if hold["status"] in _STORED_OPEN or (part_of == key and not kept_open):
                merged[part_of][line] = hold
    return folded, merged


def _find_overdue_holds(holds: dict[str, dict[str, dict[str, Any]]], now_ms: int, report: Report) -> None:
    for sku, by_line in holds.items():
        for key, hold in by_line.items():
            if hold["status"] == "held" and 0 < hold["expires_at_ms"] < now_ms - OVERDUE_GRACE_MS:
                report.overdue_timers.append(f"hold {sku}/{key} expired at {hold['expires_at_ms']}")


# The pool's rule for a count taken before shelf movements it booked (``agents.inventory.rules``, restated here
# from its documentation): units taken count as after the count from STOCKFLOW_COUNT_CLOCK_SKEW_MS before its
# time, dated to the end of their quarter of a second; units added only when dated after it, to its start.
SHELF_MOVE_SLOT_MS = 250


def _before(change: Change, count: Change) -> bool | None:
    """Whether the COUNT ``count``'s figure includes ``change``: the pool applied it before the count, and not as
    a shelf movement after the count was taken, which it puts back on top; None when the topics leave it open.
    Units put away before the count was taken are in it when the pool applied them after it too: it skips a
    receipt dated (to the millisecond) no later than the count in force, and a loss dated the skew before it."""
    back = _put_back(change, count)
    order = _applied_before(change, count)
    if back is not None and change.kind in ("RECEIPT", "CORRECTION"):
        assert change.dated_ms is not None and count.dated_ms is not None  # known, or _put_back said None
        late = change.dated_ms > count.dated_ms - (count.skew_ms if change.qty < 0 else 0)
        if order is None:
            return (not late) if late == back else None
        return not (back if order else late)
    if order is False:
        return False
    if back:
        return False
    return None if back is None else order


def _put_back(change: Change, count: Change) -> bool | None:
    """Whether the pool, had it applied ``change`` before ``count``, put it back on top of the count: a shelf movement
    booked after the count was taken (a hot SKU's bucket takes its shipments since out of its answer to the probe).
    A shipment whose warehouse no answer named may or may not be the counted warehouse's."""
    if change.kind not in ("SHIP", "RECEIPT", "CORRECTION"):
        return False
    if change.dated_ms is None or count.dated_ms is None:
        return None
    slot = SHELF_MOVE_SLOT_MS
    if change.qty < 0:
        back = -(-change.dated_ms // slot) * slot > count.dated_ms - count.skew_ms
    else:
        back = change.dated_ms // slot * slot > count.dated_ms
    return None if back and not change.warehouse else back


def _applied_before(change: Change, count: Change) -> bool | None:
    """Whether the pool applied ``change`` before the COUNT ``count``; None when the topics leave it open."""
    if change.seq is not None and count.seq is not None and change.seq[0] == count.seq[0]:
        return change.seq < count.seq
    if change.at_ms is None or count.at_ms is None:
        return None
    if change.at_ms < count.at_ms:
        return True
    # A hot SKU's count stands as of the moment each bucket answers the home's probe, which no topic records:
    # a bucket's later shipment may be in it or on top of it.
    if change.at_ms > count.at_ms and not change.from_bucket:
        return False
    return None  # one batch: the topics do not say which came first


@dataclass(frozen=True)
class OnHandRange:
    """What the topics allow the pool's on-hand of a SKU to be: per warehouse, the least and the most; and units
    shipped with no warehouse named (``unplaced``), which may have come off any of them."""

    by_warehouse: dict[str, tuple[int, int]]
    off_for_sure: int = 0  # unplaced, and after every count
    off_maybe: int = 0  # unplaced, and perhaps in a count already

    @property
    def least(self) -> int:
        return sum(low for low, _ in self.by_warehouse.values()) + self.off_for_sure + self.off_maybe

    @property
    def most(self) -> int:
        return sum(high for _, high in self.by_warehouse.values()) + self.off_for_sure

    def outside(self, on_hand: dict[str, int]) -> list[str]:
        """The warehouses whose figure in ``on_hand`` no order of the changes explains."""
        unplaced = -(self.off_for_sure + self.off_maybe)  # shipped quantities are negative: this is what they took
        off = []
        for wh in sorted(self.by_warehouse.keys() | on_hand.keys()):
            low, high = self.by_warehouse.get(wh, (0, 0))
            low, figure = max(0, low - unplaced), max(0, on_hand.get(wh, 0))
            if not low <= figure <= high:
                off.append(f"{wh}: {figure} against {low}..{high}")
        return off


def _on_hand_range(changes: list[Change]) -> OnHandRange:
    """The least and the most on-hand the pool can hold after ``changes``, per warehouse: the last COUNT's figure
    and what it applied after it; a change it may have applied before or after counts as either."""
    stocked = {c.warehouse for c in changes if c.kind in ("RECEIPT", "COUNT", "CORRECTION")}
    counts = [c for c in changes if c.kind == "COUNT"]
    by_warehouse: dict[str, list[Change]] = defaultdict(list)
    off_for_sure = off_maybe = 0
    for c in changes:
        if c.kind == "PRESALE_CAP":
            continue
        if c.kind == "SHIP" and c.warehouse not in stocked:
            # A line shipped with no allocation the answers name: the pool takes it from the warehouse the WMS
            # named or the fullest one; from the SKU's total here (the same unless that warehouse goes below
            # zero, which the pool alerts on), and only if no count can have counted it already.
            if all(_before(c, k) is False for k in counts):
                off_for_sure += c.qty
            else:
                off_maybe += c.qty
            continue
        by_warehouse[c.warehouse].append(c)
    ranges = {}
    for wh, items in by_warehouse.items():
        count = max((c for c in items if c.kind == "COUNT"), key=lambda c: c.seq or (0, 0), default=None)
        low = high = count.qty if count is not None else 0
        for c in items:
            if c.kind == "COUNT":
                continue  # the last one is the base; earlier ones it replaced
            order = _before(c, count) if count is not None else False
            if order is None:
                low, high = low + min(0, c.qty), high + max(0, c.qty)
            elif not order:
                low, high = low + c.qty, high + c.qty
        ranges[wh] = (max(0, low), max(0, high))
    return OnHandRange(ranges, off_for_sure, off_maybe)


def _peak_oversold(changes: list[Change], moves: list[HoldMove], set_asides: list[SetAside],
                   presale_of: dict[str, bool], hold_ttl_ms: int,
                   let_go: list[SetAsideLetGo] | None = None) -> tuple[int, int]:  # fmt: skip
    """The most units held beyond what could be held, at any of the pool's batch times in the run: regular
    holds and VIP set-asides beyond on-hand, and presale holds beyond the presale cap.

    A batch's changes commit together, so the state is judged after each batch time. On-hand is taken at the
    most the topics allow (a change of unknown order against a count: whichever leaves more; a line shipped
    with no allocation named: not taken off) and held units at the least (a line whose order says neither
    presale nor regular: in neither; a set-aside: gone from its expiry on, or from when it was let go, last in
    its batch), so an excess found is one the pool
    really had. An adjustment whose batch time the pool's changelog no longer records came before every timed
    one on its topic (the pool applies them in offset order) and at a moment no topic gives: it is taken at
    the moment that leaves the most on-hand (see ``_MostOnHand.start``), a loss at its latest: in the batch of
    the next timed adjustment on its topic, or, with none, not at all."""
    timeline, untimed = _batches(changes, [*moves, *set_asides, *(let_go or [])])
    stock = _MostOnHand(_stocked(changes))
    stock.start(untimed)
    held = _LeastHeld(presale_of, {s.override_id: s.vip_order_id for s in set_asides}, hold_ttl_ms)
    peak = peak_presale = 0
    for at_ms in sorted(timeline):
        batch = timeline[at_ms]
        moves_now = [i for i in batch if isinstance(i, HoldMove)]
        # The pool holds a regular line only from what presale holds leave of on-hand: the presale held through
        # the batch, at the least (what was held before it, less what it let go), stands behind a regular line the
        # batch opened. (Not at every moment: presale holds taken after the regular ones may pass on-hand, up to
        # the presale cap.)
        presale_through = held.presale + sum(m.qty for m in moves_now if m.qty < 0 and presale_of.get(_order(m)))
        opens_regular = any(m.qty > 0 and not m.override_id and presale_of.get(_order(m)) is False for m in moves_now)
        stock.apply([i for i in batch if isinstance(i, Change)])
        held.apply(at_ms, [i for i in batch if isinstance(i, SetAside)], moves_now,
                   [i for i in batch if isinstance(i, SetAsideLetGo)])
        peak = max(peak, held.regular + held.aside_at(at_ms) - stock.on_hand())
        if opens_regular:
            peak = max(peak, held.regular + held.aside_at(at_ms) + max(0, presale_through) - stock.on_hand())
        peak_presale = max(peak_presale, held.presale - stock.cap)
    return peak, peak_presale


def _batches(changes: list[Change], others: list[_Timed]) -> tuple[dict[int, list[_Timed]], list[Change]]:
    """``changes`` and ``others`` by the pool's batch time, and the adjustments no batch time dates that add stock
    (counts and presale caps among them: ``_MostOnHand.start`` takes each at the moment that leaves the most). A
    loss no batch time dates goes in the batch of the next timed adjustment on its topic (the latest the pool can
    have applied it), or in none."""
    timeline: dict[int, list[_Timed]] = defaultdict(list)
    untimed: list[Change] = []
    for item in [*changes, *others]:
        if item.at_ms is not None:
            timeline[item.at_ms].append(item)
        elif isinstance(item, Change):
            if item.kind in ("COUNT", "PRESALE_CAP") or item.qty > 0:
                untimed.append(item)
            elif (latest := _next_timed(item, changes)) is not None:
                timeline[latest].append(replace(item, at_ms=latest))
    return timeline, untimed


def _stocked(changes: list[Change]) -> set[str]:
    """The warehouses a SKU has had an adjustment at."""
    return {c.warehouse for c in changes if c.kind in ("RECEIPT", "COUNT", "CORRECTION")}


def _overbooked(sku: str, changes: list[Change], allocations: list[AllocMove], *, late_losses: bool) -> list[str]:
    """The warehouses that tied more of ``sku``'s units to order lines than they had on hand, each at the first
    batch that did: in a batch that tied a line to a warehouse, the units tied there after it exceed the most the
    warehouse can have held at any moment of it.

    The pool ties a line to a warehouse only if the warehouse's on-hand, less what is tied there already, covers it
    (``allocate``): at that moment every line tied there (that line too) stood on units it had. So the units tied
    there at the least - lines tied in that batch or before, and not let go in it or before - cannot pass the most
    it had at any moment of the batch: its most on-hand before and after the batch (``_MostOnHand``: a change of
    unknown order against a count counts as whichever leaves more, a shipment of a line tied nowhere comes off no
    warehouse), or a count of the batch with what a count may put on top of it, plus every unit the batch's other
    changes there moved, in or out, as any of them may have come after the line. Lines let go after the batch
    count as tied; a count that found fewer units than are tied does not, by itself, book anything twice (it is
    the pool's breach, alerted): only a line tied there while the warehouse is short is. ``late_losses``: a SKU
    split into buckets settles a count, or a correction that takes units, once every bucket has answered it, at a
    moment no topic records, and its records tie lines meanwhile on the figures before it: such a loss is never
    taken off."""
    if not allocations:
        return []
    timeline, untimed = _batches(changes, list(allocations))
    stock = _MostOnHand(_stocked(changes), late_losses=late_losses)
    stock.start(untimed)
    tied: dict[str, dict[str, int]] = defaultdict(dict)  # warehouse -> line -> units tied to it
    found: dict[str, str] = {}
    for at_ms in sorted(timeline):
        batch = timeline[at_ms]
        changes_now = [i for i in batch if isinstance(i, Change)]
        moves_now = [i for i in batch if isinstance(i, AllocMove)]
        opened = {m.warehouse for m in moves_now if m.qty > 0 and not m.repeated} - set(found)
        before = {wh: stock.most_during(wh, changes_now) for wh in opened}
        stock.apply(changes_now)
        for m in moves_now:
            if m.qty > 0:
                tied[m.warehouse][m.key] = m.qty
            else:
                tied[m.warehouse].pop(m.key, None)
        for wh in sorted(opened):
            most = max(before[wh], stock.most_during(wh, changes_now))
            units = sum(tied[wh].values())
            if units > most:
                by = ",".join(sorted(m.key for m in moves_now if m.qty > 0 and m.warehouse == wh))
                found[wh] = (f"{ALLOCATED_BEYOND_ON_HAND} sku={sku} warehouse={wh} at_ms={at_ms} allocated={units} "
                             f"on_hand_at_most={most} lines={by}")  # fmt: skip
    return [found[wh] for wh in sorted(found)]


def _order(move: HoldMove) -> str:
    return move.key.rpartition("#")[0]


def _next_timed(change: Change, changes: list[Change]) -> int | None:
    """The batch time of the first timed adjustment after ``change`` on its topic: the pool applied it by then."""
    if change.seq is None:
        return None
    return min((c.at_ms for c in changes if c.at_ms is not None and c.seq is not None
                and c.seq[0] == change.seq[0] and c.seq > change.seq), default=None)  # fmt: skip


@dataclass
class _MostOnHand:
    """The most on-hand per warehouse, and the presale cap, batch after batch."""

    stocked: set[str]  # warehouses the SKU has had an adjustment at: a shipment from another is unplaced
    most: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    count_of: dict[str, Change] = field(default_factory=dict)  # per warehouse, the count its figure stands on
    # Per warehouse, the movements applied since its last count: the next count may put some back on top.
    since_count: dict[str, list[Change]] = field(default_factory=lambda: defaultdict(list))
    applied_to: dict[int, int] = field(default_factory=dict)  # per adjustment topic, its last offset applied so far
    cap: int = 0
    late_losses: bool = False  # a count or a correction never takes units off (``_overbooked``)

    def on_hand(self) -> int:
        return sum(max(0, q) for q in self.most.values())

    def most_during(self, warehouse: str, batch: list[Change]) -> int:
        """The most ``warehouse`` can hold at any moment of ``batch``, before or after it is applied: what it holds
        now, or a count of the batch with every movement a count may put on top, and each unit the batch's other
        changes there move, which may come before or after any moment of it."""
        now = max(0, self.most.get(warehouse, 0))
        counted = [c.qty for c in batch if c.kind == "COUNT" and c.warehouse == warehouse]
        if counted:
            now = max(now, max(counted) + sum(max(0, c.qty) for c in self.since_count.get(warehouse, ())))
        return now + sum(abs(c.qty) for c in batch if c.warehouse == warehouse and c.kind != "COUNT")

    def start(self, untimed: list[Change]) -> None:
        """The adjustments the changelog no longer times (no losses: see ``_peak_oversold``), before the first
        batch: each at the moment that leaves the most. A receipt from the start; a presale cap too, the highest
        of them; a count from the start as well, at the higher of its figure and what stood before it, and every
        shipment of unknown order against it left on top until a later adjustment on its topic shows it applied.
        """
        ordered = sorted(untimed, key=lambda c: c.seq or (-1, 0))
        self.cap = max((c.qty for c in ordered if c.kind == "PRESALE_CAP"), default=self.cap)
        added = [c for c in ordered if c.kind in ("RECEIPT", "CORRECTION")]
        for wh in {c.warehouse for c in ordered if c.kind == "COUNT"}:
            counts = [c for c in ordered if c.kind == "COUNT" and c.warehouse == wh]
            count, here = counts[-1], [c for c in added if c.warehouse == wh]
            earlier = max((c.qty for c in counts[:-1]), default=0)  # what stood until it was applied
            before = earlier + sum(c.qty for c in here if _before(c, count) is not False)
            after = count.qty + sum(c.qty for c in here if _before(c, count) is not True)
            self.most[wh], self.count_of[wh] = max(before, after), count
            self.since_count[wh].extend(c for c in here if _put_back(c, count) is not False)
        for c in added:
            if c.warehouse not in self.count_of:
                self.most[c.warehouse] += c.qty
                self.since_count[c.warehouse].append(c)

    def apply(self, batch: list[Change]) -> None:
        ordered = sorted(batch, key=lambda c: c.seq or (-1, 0))
        counts = {c.warehouse: c for c in ordered if c.kind == "COUNT"}  # the batch's last per warehouse
        for wh, count in counts.items():
            # The count, and the movements of earlier batches the pool put back on top of it; those a later count
            # may put back again stay in its journal.
            earlier = self.since_count[wh]
            figure = count.qty + sum(self._on_top(c, count) for c in earlier)
            self.most[wh] = max(self.most[wh], figure) if self.late_losses else figure
            earlier[:] = [c for c in earlier if _put_back(c, count) is not False]
        self.count_of.update(counts)
        for c in ordered:
            if c.kind == "PRESALE_CAP":
                self.cap = c.qty
            elif self.late_losses and c.kind == "CORRECTION" and c.qty < 0:
                continue
            elif c.kind != "COUNT" and (c.kind != "SHIP" or c.warehouse in self.stocked):
                in_force = self.count_of.get(c.warehouse)
                self.most[c.warehouse] += self._on_top(c, in_force) if in_force is not None else c.qty
                self.since_count[c.warehouse].append(c)
        for c in ordered:
            if c.seq is not None:
                self.applied_to[c.seq[0]] = max(self.applied_to.get(c.seq[0], -1), c.seq[1])

    def _on_top(self, change: Change, count: Change) -> int:
        """What ``change`` adds on top of ``count`` at the most."""
        order = self._before(change, count)
        return max(0, change.qty) if order is None else 0 if order else change.qty

    def _before(self, change: Change, count: Change) -> bool | None:
        """``_before``, and: a count the changelog no longer times was applied once a later adjustment on its topic
        was, in an earlier batch (a hot SKU's bucket still answers its probe at a moment no topic gives)."""
        order = _before(change, count)
        if (order is None and _applied_before(change, count) is None and count.at_ms is None
                and count.seq is not None and not change.from_bucket):  # fmt: skip
            return False if count.seq[1] < self.applied_to.get(count.seq[0], -1) else None
        return order


@dataclass
class _LeastHeld:
    """The fewest units held, batch after batch: open regular and presale holds, and VIP set-asides."""

    presale_of: dict[str, bool]  # order id -> presale
    vip_of: dict[str, str]  # override id -> the VIP order it set units aside for
    hold_ttl_ms: int
    regular: int = 0
    presale: int = 0
    aside: dict[str, tuple[int, int]] = field(default_factory=dict)  # VIP order -> (units left, when they expire)

    def aside_at(self, at_ms: int) -> int:
        # The pool lets a set-aside go in the first batch at or after its expiry: from then on, maybe gone.
        return sum(left for left, due in self.aside.values() if at_ms < due)

    def apply(self, at_ms: int, set_asides: list[SetAside], moves: list[HoldMove],
              let_go: list[SetAsideLetGo] | None = None) -> None:  # fmt: skip
        for s in set_asides:  # before the batch's takeovers: a line takes over only what is set aside
            left, due = self.aside.get(s.vip_order_id, (0, 0))
            self.aside[s.vip_order_id] = (s.qty + (left if at_ms < due else 0), at_ms + self.hold_ttl_ms)
        for m in moves:
            is_presale = self.presale_of.get(m.key.rpartition("#")[0])
            if is_presale is False:
                self.regular += m.qty
            elif is_presale:
                self.presale += m.qty
            vip = self.vip_of.get(m.override_id, "")
            if m.qty > 0 and vip in self.aside:
                left, due = self.aside[vip]
                self.aside[vip] = (max(0, left - m.qty), due)
        for gone in let_go or ():  # last: whatever the batch's order, the fewest units held
            if gone.vip_order_id in self.aside:
                self.aside[gone.vip_order_id] = (0, self.aside[gone.vip_order_id][1])


def _expect(sa: SkuAudit, changes: list[Change], expected_keys: dict[str, int], presale_keys: set[str]) -> None:
    """What the topics say the pool must hold of ``sa.sku``."""
    sa.on_hand_range = _on_hand_range(changes)
    sa.expected_on_hand, sa.expected_on_hand_max = sa.on_hand_range.least, sa.on_hand_range.most
    caps = [c for c in changes if c.kind == "PRESALE_CAP"]
    sa.presale_cap = max(caps, key=lambda c: c.seq or (0, 0)).qty if caps else 0
    sa.expected_open = sum(q for k, q in expected_keys.items() if k not in presale_keys)
    sa.expected_presale = sum(q for k, q in expected_keys.items() if k in presale_keys)


def _compare_with_store(sa: SkuAudit, state: dict[str, Any], lines: dict[str, dict[str, Any]],
                        expected_keys: dict[str, int], presale_keys: set[str], unseen: set[str]) -> None:  # fmt: skip
    """What the pool's store holds of ``sa.sku``, and whether its totals agree with its own line records (all of
    them: ``unseen`` lines, whose answers may be deleted, are left out of the comparison with the topics only)."""
    open_lines = {k: h for k, h in lines.items() if h["status"] in _STORED_OPEN}
    table_keys = {k: h["qty"] for k, h in open_lines.items() if h["line_no"] != 0 and k not in unseen}
    sa.table_on_hand = sum(max(0, q) for q in state["on_hand"].values())
    if sa.on_hand_range is not None:
        sa.warehouses_off = sa.on_hand_range.outside(state["on_hand"])
    sa.table_open = sum(q for k, q in table_keys.items() if k not in presale_keys)
    sa.table_presale = sum(q for k, q in table_keys.items() if k in presale_keys)
    sa.open_keys_missing_in_table = sorted(set(expected_keys) - set(table_keys))
    sa.open_keys_only_in_table = sorted(set(table_keys) - set(expected_keys))
    # The totals the pool decides with must equal what its line records add up to.
    regular = sum(h["qty"] for k, h in open_lines.items() if not h["presale"])
    presale = sum(h["qty"] for k, h in open_lines.items() if h["presale"])
    if (state["locked"], state["presale_reserved"]) != (regular, presale):
        sa.totals_disagree = f"totals locked {state['locked']} presale {state['presale_reserved']}, " \
                             f"line records {regular} / {presale}"


def _audit_orders(reading: _Reading, orders: _OrderInputs, last: dict[str, dict[str, Any]], now_ms: int,
                  report: Report, expired: frozenset[str] = frozenset()) -> None:  # fmt: skip
    """4. Orders: every valid placed order is decided or was cancelled first, and none the pipeline took a payment
    for ends timed out as unpaid. One undecided whose decision, or the dead letter refusing its OrderPlaced, may be
    deleted is unjudged."""
    settings, placed = reading.settings, orders.placed
    decided = {}
    for _, _, r in reading.decoded(RESERVATION_RESULTS.name):
        decided[r["order_id"]] = r
    final_state: dict[str, str] = {}
    final_reason: dict[str, str] = {}
    stage_times: dict[str, dict[str, int]] = {}
    for _, _, r in reading.decoded(ORDER_STATES.name):
        final_state[r["order_id"]] = r["state"]
        final_reason[r["order_id"]] = r.get("reason", "")
        stage_times[r["order_id"]] = r["stage_times"]
    report.orders_placed = len(placed)
    # A payment the pipeline refused (the order had ended) is dead-lettered with an alert: not among these,
    # unless that dead letter is deleted by now.
    timed_out = sorted(
        o for o in orders.paid
        if final_state.get(o) == "payment_timeout"
        or (o in orders.balance_paid and final_state.get(o) == "cancelled" and final_reason.get(o) == BALANCE_UNPAID)
    )  # fmt: skip
    if timed_out and reading.cut(DEADLETTERS.name, settings.topic(ORDER_EVENTS.name)):
        for order_id in timed_out:
            report.unjudge(f"order {order_id}", "payment", DEADLETTERS.name)
    else:
        report.paid_but_timed_out = timed_out
    report.orders_decided = len(placed & set(decided))
    for order_id in sorted(placed - set(decided)):
        if final_state.get(order_id) == "cancelled":
            report.orders_cancelled_undecided += 1
        elif reading.cut(RESERVATION_RESULTS.name, order_id):
            report.unjudge(f"order {order_id}", "decision", RESERVATION_RESULTS.name)
        elif reading.cut(DEADLETTERS.name, settings.topic(ORDER_EVENTS.name)):  # dead letters: keyed by source topic
            report.unjudge(f"order {order_id}", "refusal", DEADLETTERS.name)
        else:
            report.lost_orders.append(order_id)
    unpaid_for_ms = {"reserved": int(settings.payment_timeout_s * 1000),
                     DEPOSIT_PAID: int(settings.presale_balance_s * 1000)}  # fmt: skip
    # The lines each order was placed with, where none of their answers can be deleted: a line with no answer
    # then is one the pool never held. (Where they can, the lines answered are judged, as they stand.)
    placed_lines = {o: lines for o, lines in orders.lines_of.items() if not reading.cut(HOLD_RESULTS.name, o)}
    _check_order_states(last, placed_lines, final_state, stage_times, unpaid_for_ms, now_ms, report)
    _check_decisions(decided, last, placed_lines, report)
    _check_sla_alerts(reading, final_state, stage_times, now_ms, report)
    _check_early_order_timers(final_state, final_reason, stage_times, orders, expired, settings, report)


@dataclass
class _OrderInputs:
    """What ``order.events`` says, the messages the pipeline refused left out."""

    placed: set[str] = field(default_factory=set)  # order ids
    presale_of: dict[str, bool] = field(default_factory=dict)
    price_of: dict[str, int] = field(default_factory=dict)  # the most an order may be paid back
    lines_of: dict[str, list[int]] = field(default_factory=dict)  # the line numbers of the order the lifecycle took
    line_items: dict[str, dict[int, tuple[str, int]]] = field(default_factory=dict)  # order -> line -> (SKU, qty)
    paid: set[str] = field(default_factory=set)  # orders with a payment the pipeline took (a deposit counts)
    # The earliest channel time of any payment but a balance (a presale's deposit among them), by order.
    first_paid_ms: dict[str, int] = field(default_factory=dict)
    placed_at_ms: dict[str, int] = field(default_factory=dict)  # the channel time of the OrderPlaced it took
    cancelled: set[str] = field(default_factory=set)  # orders a channel's OrderCancelled called off
    balance_paid: set[str] = field(default_factory=set)  # presale orders whose balance payment it took
    shipments: set[tuple[str, str]] = field(default_factory=set)  # (order id, warehouse) of each the WMS reported


def _placed_orders(reading: _Reading) -> _OrderInputs:
    """The ids of the placed orders the pipeline did not refuse as input, whether each is a presale order and
    the most it may be paid back: what it cost (the first one not refused is the one the lifecycle took), or
    what its payments add up to when they say so and that is less (a presale order with its deposit alone);
    the shipments it did not refuse."""
    refused = reading.refused_by_pipeline()  # an order the sink alone dead-lettered must still be decided
    order_topic = reading.settings.topic(ORDER_EVENTS.name)
    out = _OrderInputs()
    payments: dict[str, list[dict[str, Any]]] = defaultdict(list)  # order id -> its payment events, in order
    for rec, kind, ev in reading.decoded(ORDER_EVENTS.name):
        if kind not in ORDER_EVENTS.events:
            continue  # not of the topic's contract: the pipeline's to refuse, the audit's to skip
        taken = (order_topic, rec.partition, rec.offset) not in refused
        order_id = order_key(ev["channel"], ev["channel_order_id"])
        if kind == "OrderPlaced" and taken:
            out.placed.add(order_id)
            out.presale_of.setdefault(order_id, bool(ev["presale"]))
            if int(ev.get("event_time_ms") or 0) > 0:
                out.placed_at_ms.setdefault(order_id, int(ev["event_time_ms"]))
            out.price_of.setdefault(order_id, int(ev["amount_fen"]))
            out.lines_of.setdefault(order_id, [int(line["line_no"]) for line in ev["lines"]])
            out.line_items.setdefault(order_id, {int(line["line_no"]): (str(line["sku"]), int(line["qty"]))
                                                 for line in ev["lines"]})  # fmt: skip
        elif kind == "PaymentConfirmed":
            payments[order_id].append(ev)
            if taken:
                out.paid.add(order_id)
                if ev.get("balance"):
                    out.balance_paid.add(order_id)
        elif kind == "ShipmentDispatched" and taken:
            out.shipments.add((order_id, str(ev["warehouse_id"])))  # a repeat is the same shipment
        elif kind == "OrderCancelled":
            out.cancelled.add(order_id)
    _note_payments(out, payments)
    return out


def _note_payments(out: _OrderInputs, payments: dict[str, list[dict[str, Any]]]) -> None:
    """What each order's payment events (``payments``, in order) say: the earliest channel time of one that is no
    balance, and the most the order may be paid back."""
    for order_id, events in payments.items():
        times = [int(ev.get("event_time_ms") or 0) for ev in events if not ev.get("balance")]
        if any(times):
            out.first_paid_ms[order_id] = min(t for t in times if t > 0)
        if order_id not in out.price_of:
            continue
        # One payment of each kind, the first heard, as the lifecycle keeps them (``on_payment``): a deposit
        # heard twice under two event ids is one deposit. A payment naming no amount pays the order in full.
        paid: dict[str, int] = {}
        for ev in events:
            amount = int(ev.get("amount_fen") or 0)
            in_full = amount > 0 and amount >= out.price_of[order_id]
            kind = "balance" if ev.get("balance") else "deposit" if out.presale_of[order_id] and not in_full \
                else "in_full"  # fmt: skip
            paid.setdefault(kind, amount or UNNAMED)
        if UNNAMED not in paid.values():
            out.price_of[order_id] = min(out.price_of[order_id], sum(paid.values()))


def _check_shipments(orders: _OrderInputs, allocated: dict[str, str], last: dict[str, dict[str, Any]],
                     reading: _Reading, report: Report) -> None:  # fmt: skip
    """Units the WMS shipped leave the shelf: for every shipment the pipeline took (the WMS's own message, not the
    pool's account of it), each line of its order allocated to the shipping warehouse, and each line allocated to
    none (every line, when the WMS named no warehouse), was answered SHIPPED. One left unanswered is stock the
    pool still counts on a shelf that is empty (a cancel racing the shipment, a lost SHIP). Like every check here,
    it judges a pipeline that has drained. A shipment whose answers, or whose refusal, may be deleted is
    unjudged."""
    order_topic = reading.settings.topic(ORDER_EVENTS.name)
    for order_id, warehouse in sorted(orders.shipments):
        lines = orders.lines_of.get(order_id)
        if not lines:
            # The pipeline has not taken its order: the shipment waits for it (and is refused if it never
            # comes), or the order's OrderPlaced is deleted by now.
            if reading.cut(ORDER_EVENTS.name, order_id):
                report.unjudge(f"order {order_id}", "shipment", ORDER_EVENTS.name)
            continue
        keys = [f"{order_id}#{n}" for n in lines]
        leaving = [k for k in keys if not warehouse or allocated.get(k, warehouse) == warehouse]
        missing = [k for k in leaving if last.get(k, {}).get("outcome") != "SHIPPED"]
        if not missing:
            continue
        if reading.cut(HOLD_RESULTS.name, order_id):
            report.unjudge(f"order {order_id}", "shipment", HOLD_RESULTS.name)
        elif reading.cut(DEADLETTERS.name, order_topic):  # dead letters: keyed by source topic
            report.unjudge(f"order {order_id}", "shipment refused", DEADLETTERS.name)
        else:
            report.shipped_not_deducted.append(f"{order_id} from {warehouse or 'an unnamed warehouse'}: "
                                               f"{', '.join(missing)}")  # fmt: skip


def _check_dispatches(reading: _Reading, told: dict[str, set[str]], report: Report) -> None:
    """Every line pushed to a warehouse (a DISPATCH on ``warehouse.dispatch``: what its WMS ships) is one the pool
    tied to that warehouse (``told``: per line, the warehouses its answers name). One the pool tied elsewhere, or
    nowhere, is units that warehouse ships while the pool still offers them to the next order routed there: the
    judgement of the warehouses' allocations (``_overbooked``) cannot see it. Unjudged where the order's answers
    may be deleted."""
    found: dict[tuple[str, str], str] = {}
    for _, kind, d in reading.decoded(WAREHOUSE_DISPATCH.name):
        if kind != "WarehouseDispatched" or d["action"] != "DISPATCH":
            continue
        order_id, wh = d["order_id"], d["warehouse_id"]
        for line in d["lines"]:
            key = f"{order_id}#{line['line_no']}"
            pool = told.get(key, set())
            if wh in pool or (key, wh) in found:
                continue
            if reading.cut(HOLD_RESULTS.name, order_id):
                report.unjudge(f"line {key}", "dispatch", HOLD_RESULTS.name)
            else:
                found[(key, wh)] = (f"{DISPATCHED_UNALLOCATED} sku={line['sku']} warehouse={wh} line={key} "
                                    f"pool_allocated={','.join(sorted(pool)) or 'none'}")  # fmt: skip
    report.warehouse_overbooked.extend(found[k] for k in sorted(found))


def _check_lines_held_as_placed(answers: list[tuple[Record, str, dict[str, Any]]], orders: _OrderInputs,
                                report: Report) -> None:
    """Every answer that took or keeps stock for an order line (held, committed, shipped) is for the SKU and the
    quantity the line was placed with: the lifecycle sends one command per line, its SKU and qty as placed (a
    bundle or custom line too: none is split into components), and the pool answers with the qty it holds (a
    hot SKU's bucket with the plain SKU). A line held as 1 of 5, then shipped, leaves 4 units the pool counts on
    an empty shelf; one held under another SKU takes that SKU's stock. Judged where the OrderPlaced the pipeline
    took is on the topics; a line number it does not have is misheld too."""
    misheld: dict[str, str] = {}
    for _, kind, res in answers:
        if kind != "HoldDecided" or res["outcome"] not in _FULFILLING:
            continue
        order_id, line_no = res["order_id"], int(res["line_no"])
        items = orders.line_items.get(order_id)
        key = f"{order_id}#{line_no}"
        if items is None or key in misheld:
            continue
        placed = items.get(line_no)
        if placed != (res["sku"], res["qty"]):
            what = f"placed {placed[1]} of {placed[0]}" if placed else "no such line placed"
            misheld[key] = f"{key}: {res['outcome']} {res['qty']} of {res['sku']}, {what}"
    report.lines_misheld = sorted(misheld.values())


def _check_order_states(last: dict[str, dict[str, Any]], placed_lines: dict[str, list[int]],
                        final_state: dict[str, str], stage_times: dict[str, dict[str, int]],
                        unpaid_for_ms: dict[str, int], now_ms: int, report: Report) -> None:  # fmt: skip
    """A paid order holds every line it was placed with, and so does a reserved one (what it was reserved with is
    what the buyer is shown and pays for: a hold the pool took back, a VIP override's or an expiry, moves it on,
    cancelled or timed out; a presale deposit commits its lines, the WMS shipping it unpaid ships them); an order
    that ended (cancelled, timed out, delivered, rejected) holds none; an unpaid one does not outlive its payment
    timeout, nor a presale order whose deposit is paid its balance window (``unpaid_for_ms``: how long each may
    wait, from its stage time)."""
    answered: dict[str, list[str]] = defaultdict(list)
    for line_key in last:
        answered[line_key.rpartition("#")[0]].append(line_key)
    for order_id, order_state in final_state.items():
        lines = sorted({f"{order_id}#{n}" for n in placed_lines.get(order_id, [])} | set(answered.get(order_id, [])))
        outcomes = [last.get(k, {}).get("outcome") for k in lines]
        # A split order stays paid or routed until its last warehouse ships: lines shipped before are done.
        if order_state in ("reserved", "paid", "routed") and any(o not in _FULFILLING for o in outcomes):
            report.paid_without_hold.append(order_id)
        if order_state in ORDER_ENDED and any(o in _OPEN_OUTCOMES for o in outcomes):
            report.ended_but_held.append(order_id)  # its units locked for an order that is over
        if order_state != "reserved":
            continue
        times = stage_times.get(order_id, {})
        waits = DEPOSIT_PAID if DEPOSIT_PAID in times else "reserved"
        since = times.get(waits, 0)
        if since and since + unpaid_for_ms[waits] < now_ms - OVERDUE_GRACE_MS:
            what = "its balance window" if waits == DEPOSIT_PAID else "its payment timeout"
            report.overdue_timers.append(f"order {order_id} unpaid past {what}")


def _check_early_expiries(answers: list[tuple[Record, str, dict[str, Any]]], hold_ttl_ms: int, report: Report,
                          placed_at_ms: dict[str, int] | None = None) -> frozenset[str]:  # fmt: skip
    """No hold expires before its time: the pool dates a hold's expiry ``STOCKFLOW_HOLD_TTL_S`` after the batch
    that held it (the HELD answer's time, its own clock, which ``ops.clock`` only moves on) and expires it in the
    first batch at or after that. Judged from the first HELD answer of the hold: a repeat (at least once, a replay;
    or a RESERVE asked again, answered as the line stands) is later, and a replay whose state was lost holds it
    anew, later still. With ``placed_at_ms`` (at least once, where the first HELD itself may be lost) no later
    than when its order was placed (its channel time): no hold is taken before. Returns the orders a line of
    which expired (their timeout is the hold's)."""
    held_at: dict[str, int] = {}  # an open line -> when its hold was first answered HELD
    expired: set[str] = set()
    for _, kind, res in answers:
        if kind != "HoldDecided" or res["action"] == "ALLOCATE" or res["outcome"] == "IGNORED":
            continue
        key, outcome, at_ms = f"{res['order_id']}#{res['line_no']}", res["outcome"], int(res["event_time_ms"])
        if outcome == "HELD":
            held_at.setdefault(key, min(at_ms, (placed_at_ms or {}).get(res["order_id"], at_ms)))
        elif outcome == "EXPIRED":
            expired.add(res["order_id"])
            since = held_at.pop(key, None)
            if since is not None and at_ms < since + hold_ttl_ms:
                report.early_timers.append(f"hold {key} expired {at_ms - since} ms after it was held, "
                                           f"due after {hold_ttl_ms}")  # fmt: skip
        elif outcome in _LET_GO:
            held_at.pop(key, None)
    return frozenset(expired)


def _check_early_order_timers(final_state: dict[str, str], final_reason: dict[str, str],
                              stage_times: dict[str, dict[str, int]], orders: _OrderInputs, expired: frozenset[str],
                              settings: Settings, report: Report) -> None:  # fmt: skip
    """No order times out before its time, by the lifecycle's own deadlines (its stage times are on the pipeline's
    clock, which never runs backwards, so the two times compared are on one clock): an unpaid order times out
    ``STOCKFLOW_PAYMENT_TIMEOUT_S`` after it was reserved, unless its hold expired first (``expired``: judged by
    its hold's time); a presale order is cancelled ``balance_unpaid`` ``STOCKFLOW_PRESALE_BALANCE_S`` after its
    deposit, counted from the deposit's channel time when that is earlier than when it was heard - unless a
    channel's OrderCancelled, which may give any reason, called it off."""
    payment_ms, balance_ms = int(settings.payment_timeout_s * 1000), int(settings.presale_balance_s * 1000)
    for order_id, order_state in sorted(final_state.items()):
        times = stage_times.get(order_id, {})
        if order_state == "payment_timeout" and order_id not in expired and times.get("reserved"):
            since, at_ms = times["reserved"], times.get("payment_timeout", 0)
            if at_ms < since + payment_ms:
                report.early_timers.append(f"order {order_id} timed out {at_ms - since} ms after it was reserved, "
                                           f"due after {payment_ms}")  # fmt: skip
        elif (order_state == "cancelled" and final_reason.get(order_id) == BALANCE_UNPAID
              and order_id not in orders.cancelled and times.get(DEPOSIT_PAID)):  # fmt: skip
            since = min(times[DEPOSIT_PAID], orders.first_paid_ms.get(order_id, times[DEPOSIT_PAID]))
            at_ms = times.get("cancelled", 0)
            if at_ms < since + balance_ms:
                report.early_timers.append(f"order {order_id} cancelled {BALANCE_UNPAID} {at_ms - since} ms after its "
                                           f"deposit, due after {balance_ms}")  # fmt: skip


def _check_sla_alerts(reading: _Reading, final_state: dict[str, str], stage_times: dict[str, dict[str, int]],
                      now_ms: int, report: Report) -> None:  # fmt: skip
    """An order paid and still not pushed to a warehouse past ``STOCKFLOW_SLA_UNROUTED_S`` has had its RED
    ``sla_breach`` alert: the timer that raises it fired. (Its paid time is when the payment was heard, the
    latest the SLA can have started.)"""
    sla_ms = int(reading.settings.sla_unrouted_s * 1000)
    late = now_ms - sla_ms - OVERDUE_GRACE_MS
    due = [o for o, st in final_state.items() if st == "paid" and 0 < stage_times.get(o, {}).get("paid", 0) < late]
    if not due:
        return
    raised = {a["subject"] for _, kind, a in reading.decoded(ALERTS.name)
              if kind == "Alert" and a["kind"] == "sla_breach" and not a.get("cleared")}  # fmt: skip
    for order_id in sorted(set(due) - raised):
        if reading.cut(ALERTS.name, order_id):
            report.unjudge(f"order {order_id}", "SLA alert", ALERTS.name)
        else:
            report.overdue_timers.append(f"order {order_id} paid, unrouted past its SLA, no sla_breach alert")


def _check_decisions(decided: dict[str, dict[str, Any]], last: dict[str, dict[str, Any]],
                     placed_lines: dict[str, list[int]], report: Report) -> None:  # fmt: skip
    """A rejected order holds nothing; a reserved one holds every line it was placed with, each answered HELD."""
    for order_id, r in decided.items():
        decided_lines = {f"{order_id}#{ln['line_no']}" for ln in r["lines"]}
        still_open = [k for k in decided_lines if last.get(k, {}).get("outcome") in _OPEN_OUTCOMES]
        if r["outcome"] == "REJECTED" and still_open:
            report.rejected_but_held.append(order_id)
        if r["outcome"] != "RESERVED":
            continue
        listed = {ln["line_no"] for ln in r["lines"] if ln["outcome"] == "HELD"}
        if len(listed) != len(r["lines"]):
            report.reserved_incomplete.append(order_id)
        elif order_id in placed_lines:
            # Each line it was placed with listed HELD, and answered by the pool (held, then maybe moved on).
            placed = set(placed_lines[order_id])
            if placed - listed or any(f"{order_id}#{n}" not in last for n in placed):
                report.reserved_incomplete.append(order_id)
