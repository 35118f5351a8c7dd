"""``stockflow check``: an independent audit of the stock pool against the topics.

Deliberately shares no rule code with the agents (``agents.inventory.rules``/``agents.orders.rules``): it
rebuilds, from what is in Kafka, what the pool's state must be, and compares.

* on-hand per SKU from ``stock.adjustments`` and ``stock.returns`` (each adjustment id once, known
  warehouses only) minus every shipped line;
* the open holds per SKU (held or paid, not yet shipped/released/expired) from the last answer
  per order line in ``stock.hold-results``;
* against the pool's store ``stock_by_sku`` as its changelog topic holds it (totals and line records).

It reports drift (store != rebuilt, or the store's totals != its own line records), oversold units
(open holds beyond on-hand), double holds (an order line held again after it was let go), orders
rejected while still holding stock, lost orders (placed and valid, yet neither decided nor
cancelled), paid orders without an open hold behind every line, and timers that did not fire (an
unpaid hold past its expiry, an unpaid order past its payment timeout).

Refunds, from ``refund.states`` and ``refund.instructions``: a refund paid out twice (two different
instructions for one refund id), a refund approved for payment with no instruction behind it (lost),
and an instruction for a refund that never reached the paying state.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson

from agents.routing.warehouses import load_warehouses
from streams.contract.codec import Codec, DecodeError, codec_for
from streams.contract.keys import order_key
from streams.contract.topics import (
    DEADLETTERS,
    HOLD_RESULTS,
    ORDER_EVENTS,
    ORDER_STATES,
    REFUND_INSTRUCTIONS,
    REFUND_STATES,
    RESERVATION_RESULTS,
    STOCK_ADJUSTMENTS,
    STOCK_RETURNS,
)
from streams.engine.changelog import changelog_topic
from streams.engine.topicreader import read_all
from streams.settings import Settings

_OPEN_OUTCOMES = {"HELD", "COMMITTED"}
_FULFILLING = _OPEN_OUTCOMES | {"SHIPPED"}  # a paid order's line: held for it, or gone to its customer
# A timer this late has not fired: the engine fires due timers within a batch window.
OVERDUE_GRACE_MS = 60_000
_LET_GO = {"RELEASED", "EXPIRED", "REFUSED", "SHIPPED"}
# A larger single adjustment is a typing error, not stock: the pool's limit, restated here because
# the audit shares no rule code with the pool.
MAX_ADJUSTMENT_QTY = 10_000_000


@dataclass
class SkuAudit:
    sku: str
    expected_on_hand: int = 0
    expected_open: int = 0
    expected_presale: int = 0
    table_on_hand: int | None = None
    table_open: int | None = None
    table_presale: int | None = None
    open_keys_missing_in_table: list[str] = field(default_factory=list)
    open_keys_only_in_table: list[str] = field(default_factory=list)
    totals_disagree: str = ""

    @property
    def drift(self) -> bool:
        return (
            self.table_on_hand != self.expected_on_hand
            or self.table_open != self.expected_open
            or self.table_presale != self.expected_presale
            or bool(self.open_keys_missing_in_table or self.open_keys_only_in_table)
            or bool(self.totals_disagree)
        )

    @property
    def oversold(self) -> int:
        return max(0, self.expected_open - self.expected_on_hand)


@dataclass
class Report:
    skus: dict[str, SkuAudit] = field(default_factory=dict)
    orders_placed: int = 0
    orders_decided: int = 0
    orders_cancelled_undecided: int = 0
    lost_orders: list[str] = field(default_factory=list)
    double_holds: list[str] = field(default_factory=list)
    rejected_but_held: list[str] = field(default_factory=list)
    reserved_incomplete: list[str] = field(default_factory=list)
    paid_without_hold: list[str] = field(default_factory=list)
    overdue_timers: list[str] = field(default_factory=list)
    refunds: int = 0
    refunds_paid_twice: list[str] = field(default_factory=list)
    refunds_lost: list[str] = field(default_factory=list)
    refunds_paid_unapproved: list[str] = field(default_factory=list)

    def sku_audit(self, sku: str) -> SkuAudit:
        """The audit of ``sku``, started when the topics first mention it."""
        return self.skus.setdefault(sku, SkuAudit(sku))

    @property
    def drifted(self) -> list[SkuAudit]:
        return [a for a in self.skus.values() if a.drift]

    @property
    def oversold_units(self) -> int:
        return sum(a.oversold for a in self.skus.values())

    @property
    def ok(self) -> bool:
        return not (
            self.drifted or self.oversold_units or self.lost_orders or self.double_holds
            or self.rejected_but_held or self.reserved_incomplete or self.paid_without_hold or self.overdue_timers
            or self.refunds_paid_twice or self.refunds_lost or self.refunds_paid_unapproved
        )  # fmt: skip

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "skus": len(self.skus),
            "skus_drifted": len(self.drifted),
            "oversold_units": self.oversold_units,
            "orders_placed": self.orders_placed,
            "orders_decided": self.orders_decided,
            "orders_cancelled_before_decision": self.orders_cancelled_undecided,
            "lost_orders": len(self.lost_orders),
            "double_holds": len(self.double_holds),
            "rejected_but_held": len(self.rejected_but_held),
            "reserved_incomplete": len(self.reserved_incomplete),
            "paid_without_hold": len(self.paid_without_hold),
            "overdue_timers": len(self.overdue_timers),
            "refunds": self.refunds,
            "refunds_paid_twice": len(self.refunds_paid_twice),
            "refunds_lost": len(self.refunds_lost),
            "refunds_paid_unapproved": len(self.refunds_paid_unapproved),
        }


def _decoded(codec: Codec, settings: Settings, name: str) -> list[tuple[Any, str, dict[str, Any]]]:
    out = []
    for rec in read_all(settings, settings.topic(name)):
        try:
            event_type, record = codec.decode(rec.value)
        except DecodeError:
            continue
        out.append((rec, event_type.short_name, record))
    return out


def audit(settings: Settings) -> Report:
    codec = codec_for(settings)
    report = Report()
    on_hand = _on_hand_by_sku(codec, settings, report)
    last, shipped = _last_answers(codec, settings, report)
    open_by_sku = _open_lines_by_sku(last, report)
    totals, holds = _fold_buckets(*_pool_store(settings))
    presale_keys = {key for by_line in holds.values() for key, hold in by_line.items() if hold["presale"]}
    now_ms = int(time.time() * 1000)
    _find_overdue_holds(holds, now_ms, report)
    for sku, sa in report.skus.items():
        expected_keys = open_by_sku.get(sku, {})
        _expect(sa, on_hand.get(sku, {}), shipped.get(sku, 0), expected_keys, presale_keys)
        state = totals.get(sku)
        if state is not None:
            _compare_with_store(sa, state, holds.get(sku, {}), expected_keys, presale_keys)
    _audit_orders(codec, settings, last, now_ms, report)
    _audit_refunds(codec, settings, report)
    return report


def _audit_refunds(codec: Codec, settings: Settings, report: Report) -> None:
    """5. Refunds: every refund that reached payment has exactly one instruction, and no other has one."""
    paying: set[str] = set()
    for _, _, r in _decoded(codec, settings, REFUND_STATES.name):
        report.refunds += 0 if r["previous_state"] else 1
        if r["state"] == "refunding" or "refunding" in r["stage_times"]:
            paying.add(r["refund_id"])
    instructions: dict[str, set[str]] = defaultdict(set)
    for _, _, r in _decoded(codec, settings, REFUND_INSTRUCTIONS.name):
        instructions[r["refund_id"]].add(r["event_id"])
    report.refunds_paid_twice = sorted(rid for rid, ids in instructions.items() if len(ids) > 1)
    report.refunds_lost = sorted(paying - set(instructions))
    report.refunds_paid_unapproved = sorted(set(instructions) - paying)


def _on_hand_by_sku(codec: Codec, settings: Settings, report: Report) -> dict[str, dict[str, int]]:
    """1. On-hand per SKU and warehouse from the adjustments, each id once, refused ones skipped."""
    warehouses = set(load_warehouses(settings.warehouses_file))
    on_hand: dict[str, dict[str, int]] = defaultdict(dict)
    seen_adjustments: set[tuple[str, str]] = set()
    adjustments = _decoded(codec, settings, STOCK_ADJUSTMENTS.name) + _decoded(codec, settings, STOCK_RETURNS.name)
    for _, kind, adj in adjustments:
        if kind != "StockAdjusted" or (adj["sku"], adj["event_id"]) in seen_adjustments:
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
        if adj["kind"] in ("RECEIPT", "CORRECTION"):
            on_hand[adj["sku"]][wh] = on_hand[adj["sku"]].get(wh, 0) + qty
        elif adj["kind"] == "COUNT":
            on_hand[adj["sku"]][wh] = qty
    return on_hand


def _last_answers(codec: Codec, settings: Settings, report: Report) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """2. The last answer per order line (``<order>#<line>``), in the order the pool gave them, and the
    units shipped per SKU. An order line held again after it was let go is a double hold."""
    last: dict[str, dict[str, Any]] = {}
    history: dict[str, list[str]] = defaultdict(list)
    shipped: dict[str, int] = defaultdict(int)
    for _, kind, res in _decoded(codec, settings, HOLD_RESULTS.name):
        if kind != "HoldDecided" or res["outcome"] == "IGNORED" or res["action"] == "ALLOCATE":
            continue  # an allocation ties an open line to a warehouse; it neither opens nor closes it
        key = f"{res['order_id']}#{res['line_no']}"
        outcomes = history[key]
        if not outcomes or outcomes[-1] != res["outcome"]:
            if res["outcome"] == "HELD" and any(o in _LET_GO for o in outcomes):
                report.double_holds.append(key)
            outcomes.append(res["outcome"])
        if res["outcome"] == "SHIPPED" and last.get(key, {}).get("outcome") != "SHIPPED":
            shipped[res["sku"]] += res["qty"]
        last[key] = res
    return last, shipped


def _open_lines_by_sku(last: dict[str, dict[str, Any]], report: Report) -> dict[str, dict[str, int]]:
    """The units each open order line holds, per SKU, by the last answers."""
    open_by_sku: dict[str, dict[str, int]] = defaultdict(dict)
    for key, res in last.items():
        if res["outcome"] in _OPEN_OUTCOMES:
            open_by_sku[res["sku"]][key] = res["qty"]
            report.sku_audit(res["sku"])
    return open_by_sku


def _pool_store(settings: Settings) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, dict[str, Any]]]]:
    r"""3. The pool's store as its changelog holds it (committed batches only): per SKU its totals
    record (key "s\0<sku>") and one record per order line (key "h\0<sku>\0<order>#<line>")."""
    totals: dict[str, dict[str, Any]] = {}
    holds: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for rec in read_all(settings, changelog_topic(settings, "stock_by_sku")):
        kind_byte, _, rest = (rec.key or b"").partition(b"\0")
        value = orjson.loads(rec.value) if rec.value else None
        if kind_byte == b"s":
            if value is None:
                totals.pop(rest.decode(), None)
            else:
                totals[rest.decode()] = value
        elif kind_byte == b"h":
            sku_raw, _, line = rest.partition(b"\0")
            if value is None:
                holds[sku_raw.decode()].pop(line.decode(), None)
            else:
                holds[sku_raw.decode()][line.decode()] = value
    return totals, holds


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
            if part_of == key or hold["status"] in ("held", "sold"):
                merged[part_of][line] = hold
    return folded, merged


def _find_overdue_holds(holds: dict[str, dict[str, dict[str, Any]]], now_ms: int, report: Report) -> None:
    for sku, by_line in holds.items():
        for key, hold in by_line.items():
            if hold["status"] == "held" and 0 < hold["expires_at_ms"] < now_ms - OVERDUE_GRACE_MS:
                report.overdue_timers.append(f"hold {sku}/{key} expired at {hold['expires_at_ms']}")


def _expect(sa: SkuAudit, on_hand: dict[str, int], shipped: int, expected_keys: dict[str, int],
            presale_keys: set[str]) -> None:  # fmt: skip
    """What the topics say the pool must hold of ``sa.sku``."""
    sa.expected_on_hand = sum(max(0, q) for q in on_hand.values()) - shipped
    sa.expected_open = sum(q for k, q in expected_keys.items() if k not in presale_keys)
    sa.expected_presale = sum(q for k, q in expected_keys.items() if k in presale_keys)


def _compare_with_store(sa: SkuAudit, state: dict[str, Any], lines: dict[str, dict[str, Any]],
                        expected_keys: dict[str, int], presale_keys: set[str]) -> None:  # fmt: skip
    """What the pool's store holds of ``sa.sku``, and whether its totals agree with its own line records."""
    open_lines = {k: h for k, h in lines.items() if h["status"] in ("held", "sold")}
    table_keys = {k: h["qty"] for k, h in open_lines.items() if h["line_no"] != 0}
    sa.table_on_hand = sum(max(0, q) for q in state["on_hand"].values())
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


def _audit_orders(codec: Codec, settings: Settings, last: dict[str, dict[str, Any]], now_ms: int,
                  report: Report) -> None:  # fmt: skip
    """4. Orders: every valid placed order is decided or was cancelled first."""
    placed = _placed_orders(codec, settings)
    decided = {}
    for _, _, r in _decoded(codec, settings, RESERVATION_RESULTS.name):
        decided[r["order_id"]] = r
    final_state: dict[str, str] = {}
    stage_time: dict[str, int] = {}
    for _, _, r in _decoded(codec, settings, ORDER_STATES.name):
        final_state[r["order_id"]] = r["state"]
        stage_time[r["order_id"]] = r["stage_times"].get(r["state"], 0)
    report.orders_placed = len(placed)
    report.orders_decided = len(placed & set(decided))
    for order_id in sorted(placed - set(decided)):
        if final_state.get(order_id) == "cancelled":
            report.orders_cancelled_undecided += 1
        else:
            report.lost_orders.append(order_id)
    payment_timeout_ms = int(settings.payment_timeout_s * 1000)
    _check_order_states(last, final_state, stage_time, payment_timeout_ms, now_ms, report)
    _check_decisions(decided, last, report)


def _placed_orders(codec: Codec, settings: Settings) -> set[str]:
    """The ids of the placed orders the pipeline did not refuse as input."""
    refused = {
        (r["source_topic"], r["source_partition"], r["source_offset"])
        for _, _, r in _decoded(codec, settings, DEADLETTERS.name)
    }
    order_topic = settings.topic(ORDER_EVENTS.name)
    placed = set()
    for rec, kind, ev in _decoded(codec, settings, ORDER_EVENTS.name):
        if kind == "OrderPlaced" and (order_topic, rec.partition, rec.offset) not in refused:
            placed.add(order_key(ev["channel"], ev["channel_order_id"]))
    return placed


def _check_order_states(last: dict[str, dict[str, Any]], final_state: dict[str, str], stage_time: dict[str, int],
                        payment_timeout_ms: int, now_ms: int, report: Report) -> None:  # fmt: skip
    """A paid order holds every line; an unpaid one does not outlive its payment timeout."""
    lines_of: dict[str, list[str]] = defaultdict(list)
    for line_key in last:
        lines_of[line_key.rpartition("#")[0]].append(line_key)
    for order_id, order_state in final_state.items():
        # A split order stays paid or routed until its last warehouse ships: lines shipped before are done.
        if order_state in ("paid", "routed") and any(
            last[k].get("outcome") not in _FULFILLING for k in lines_of.get(order_id, [])
        ):
            report.paid_without_hold.append(order_id)
        reserved_at = stage_time.get(order_id, 0)
        if order_state == "reserved" and reserved_at and reserved_at + payment_timeout_ms < now_ms - OVERDUE_GRACE_MS:
            report.overdue_timers.append(f"order {order_id} unpaid past its payment timeout")


def _check_decisions(decided: dict[str, dict[str, Any]], last: dict[str, dict[str, Any]], report: Report) -> None:
    """A rejected order holds nothing; a reserved one holds every line."""
    for order_id, r in decided.items():
        decided_lines = {f"{order_id}#{ln['line_no']}" for ln in r["lines"]}
        still_open = [k for k in decided_lines if last.get(k, {}).get("outcome") in _OPEN_OUTCOMES]
        if r["outcome"] == "REJECTED" and still_open:
            report.rejected_but_held.append(order_id)
        if r["outcome"] == "RESERVED" and any(ln["outcome"] != "HELD" for ln in r["lines"]):
            report.reserved_incomplete.append(order_id)
