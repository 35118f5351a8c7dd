"""Which ClickHouse rows an event becomes: pure functions, one registry entry per event type.

The sink writes every event to ``events`` (the raw log) and, through ``FACTS``, typed rows to the
tables the dashboards read (``schemas/ddl/003_facts.sql``; the refunds' in ``004_refunds.sql``; the order
health scores' in ``005_order_health.sql``; the connectors' calls in ``006_connector_calls.sql``; the
refused events' ids in ``007_refused_facts.sql``).
Adding a dashboard over a new event is a table in the DDL and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from streams.contract.codec import event_id_of
from streams.contract.keys import order_key, refund_key

Row = dict[str, Any]
STAGES = ("placed", "reserved", "paid", "routed", "acknowledged", "shipped", "delivered")
# A refund's stage times as RefundStateChanged carries them: its states, and the return's receipt and
# QC, the marketplace's acceptance and settlement, which happen without a state of their own.
REFUND_STAGES = ("requested", "reviewing", "awaiting_return", "received", "return_received", "inspected",
                 "refunding", "issued", "settled", "completed", "rejected", "cancelled")  # fmt: skip


def _time(record: dict[str, Any]) -> Row:
    ms = int(record.get("event_time_ms") or 0)
    return {"event_id": record["event_id"], "event_time": max(ms // 1000, 0), "event_time_ms": ms}


def order_state_rows(r: dict[str, Any]) -> Iterable[Row]:
    stage_times = r.get("stage_times") or {}
    yield {**_time(r), "order_id": r["order_id"], "channel": r["channel"], "state": r["state"],
           "previous_state": r["previous_state"], "reason": r["reason"], "warehouse_id": r["warehouse_id"],
           **{f"{s}_ms": int(stage_times.get(s, 0)) for s in STAGES}}  # fmt: skip


def reservation_rows(r: dict[str, Any]) -> Iterable[Row]:
    reasons = sorted({ln["reason"] for ln in r["lines"] if ln["reason"]})
    yield {**_time(r), "order_id": r["order_id"], "channel": r["channel"], "outcome": r["outcome"],
           "reasons": ",".join(reasons), "line_count": len(r["lines"]), "placed_at_ms": r["placed_at_ms"]}  # fmt: skip


def hold_decision_rows(r: dict[str, Any]) -> Iterable[Row]:
    yield {**_time(r), "order_id": r["order_id"], "sku": r["sku"], "action": r["action"],
           "outcome": r["outcome"], "reason": r["reason"], "qty": r["qty"]}  # fmt: skip


def stock_level_rows(r: dict[str, Any]) -> Iterable[Row]:
    figures = ("on_hand", "locked", "sold", "presale_reserved", "available")
    yield {**_time(r), "sku": r["sku"], **{f: r[f] for f in figures}, "paused": int(r["paused"])}


def alert_rows(r: dict[str, Any]) -> Iterable[Row]:
    yield {**_time(r), "kind": r["kind"], "severity": r["severity"], "subject": r["subject"],
           "message": r["message"], "cleared": int(r["cleared"])}  # fmt: skip


def routing_rows(r: dict[str, Any]) -> Iterable[Row]:
    scores = {c["warehouse_id"]: c for c in r["candidates"]}
    for assignment in r["assignments"]:
        wh = assignment["warehouse_id"]
        c = scores.get(wh, {})
        yield {**_time(r), "event_id": f"{r['event_id']}:{wh}", "decision_id": r["event_id"],
               "order_id": r["order_id"], "channel": r["channel"], "warehouse_id": wh, "split": int(r["split"]),
               "line_count": len(assignment["line_nos"]),
               **{f: float(c.get(f, 0.0)) for f in ("distance_km", "distance", "sufficiency", "on_time", "cost",
                                                     "score")}}  # fmt: skip


def dead_letter_rows(r: dict[str, Any]) -> Iterable[Row]:
    # The refused event's own id, so a dashboard reading the events as they came (a marketplace's settlement)
    # can tell what the pipeline refused (007_refused_facts.sql); "" for a body that was never an event.
    original = r.get("original_value") or b""
    yield {**_time(r), "source_topic": r["source_topic"], "source_partition": r["source_partition"],
           "source_offset": r["source_offset"], "stage": r["stage"], "reason": r["reason"], "detail": r["detail"],
           "original_value_hex": original.hex(), "source_event_id": event_id_of(original)}  # fmt: skip


def refund_state_rows(r: dict[str, Any]) -> Iterable[Row]:
    stage_times = r.get("stage_times") or {}
    yield {**_time(r), "refund_id": r["refund_id"], "order_id": r["order_id"], "channel": r["channel"],
           "kind": r["kind"], "state": r["state"], "previous_state": r.get("previous_state", ""),
           "reason": r.get("reason", ""), "amount_fen": int(r.get("amount_fen", 0)),
           "auto_approved": int(bool(r.get("auto_approved"))), "warehouse_id": r.get("warehouse_id", ""),
           **{f"{s}_ms": int(stage_times.get(s, 0)) for s in REFUND_STAGES}}  # fmt: skip


# The refund events on refund.events name the refund and its order by the channel's ids; the rows
# carry stockflow's ids so they line up with refund_states.
def _refund_ids(r: dict[str, Any]) -> Row:
    return {"refund_id": refund_key(r["channel"], r["channel_refund_id"]),
            "order_id": order_key(r["channel"], r["channel_order_id"]), "channel": r["channel"]}  # fmt: skip


def return_rows(r: dict[str, Any]) -> Iterable[Row]:
    yield {**_time(r), **_refund_ids(r), "warehouse_id": r["warehouse_id"],
           "qc_done": int(bool(r.get("qc_done", True))), "resellable": int(bool(r.get("resellable")))}  # fmt: skip


def refund_issue_rows(r: dict[str, Any]) -> Iterable[Row]:
    yield {**_time(r), "refund_id": r["refund_id"], "order_id": r["order_id"], "channel": r["channel"],
           "amount_fen": int(r["amount_fen"]), "platform_ref": r.get("platform_ref", ""),
           "attempts": int(r.get("attempts", 1)), "replayed": int(bool(r.get("replayed")))}  # fmt: skip


def refund_settlement_rows(r: dict[str, Any]) -> Iterable[Row]:
    yield {**_time(r), **_refund_ids(r), "amount_fen": int(r["amount_fen"]),
           "settlement_id": r.get("settlement_id", "")}  # fmt: skip


HEALTH_FACTORS = ("promptness", "address", "complexity", "returns", "coupon")


def order_health_rows(r: dict[str, Any]) -> Iterable[Row]:
    points = r.get("breakdown") or {}
    yield {**_time(r), "order_id": r["order_id"], "channel": r["channel"], "customer_id": r.get("customer_id", ""),
           "score": float(r["score"]), "focus": int(bool(r["focus"])), "focus_below": float(r["focus_below"]),
           **{f"{f}_points": float(points.get(f, 0.0)) for f in HEALTH_FACTORS},
           "notes": "; ".join(r.get("notes") or ()), "paid_after_ms": int(r.get("paid_after_ms", 0)),
           "return_count": int(r.get("returns", 0))}  # fmt: skip


def connector_failure_rows(r: dict[str, Any]) -> Iterable[Row]:
    yield {**_time(r), "channel": r["channel"], "endpoint": r["endpoint"], "idempotency_key": r["idempotency_key"],
           "reason": r["reason"], "attempts": int(r["attempts"]), "answer": r["answer"],
           "source": r.get("source", "")}  # fmt: skip


def connector_call_rows(r: dict[str, Any]) -> Iterable[Row]:
    yield {**_time(r), "channel": r["channel"], "endpoint": r["endpoint"], "outcome": r["outcome"],
           "failed": int(r["outcome"] == "failed"), "reason": r.get("reason", ""), "attempts": int(r["attempts"]),
           "latencies_ms": [float(v) for v in r.get("latencies_ms") or ()], "error": r.get("error", ""),
           "error_ms": int(r.get("error_ms", 0)), "started_ms": int(r.get("started_ms", 0)),
           "replayed": int(bool(r.get("replayed"))), "key_fingerprint": r.get("key_fingerprint", ""),
           "key_expires_ms": int(r.get("key_expires_ms", 0))}  # fmt: skip


FACTS: dict[str, tuple[str, Callable[[dict[str, Any]], Iterable[Row]]]] = {
    "OrderStateChanged": ("order_states", order_state_rows),
    "ReservationDecided": ("reservations", reservation_rows),
    "HoldDecided": ("hold_decisions", hold_decision_rows),
    "StockLevel": ("stock_levels", stock_level_rows),
    "Alert": ("alerts", alert_rows),
    "RoutingDecision": ("routing_assignments", routing_rows),
    "DeadLetter": ("dead_letters", dead_letter_rows),
    "RefundStateChanged": ("refund_states", refund_state_rows),
    "ReturnReceived": ("refund_returns", return_rows),
    "RefundIssued": ("refund_issues", refund_issue_rows),
    "RefundSettled": ("refund_settlements", refund_settlement_rows),
    "ConnectorCallFailed": ("connector_failures", connector_failure_rows),
    "ConnectorCalled": ("connector_calls", connector_call_rows),
    "OrderHealthScored": ("order_health", order_health_rows),
}


# The tables that keep every copy of an event as its own row, keyed '<event id>@<partition>.<offset>' (where the
# sink read it; a redelivery of one message is still one row). A marketplace or a connector may send one event
# again, later, under the same id: a retried callback stamped when intake got it, an issue repeated after a
# crash. Keyed by the event id alone, ReplacingMergeTree kept the last copy, and a settled refund turned
# unsettled when its callback came again after the month's end. The dashboards reduce these rows per refund
# to the first copy, as the refund processor does; a copy it refused is matched by the same key
# (``007_refused_facts.sql``).
KEPT_PER_COPY = frozenset({"refund_settlements", "refund_returns", "refund_issues"})


def rows_of(event_type: str, record: dict[str, Any], fallback_ms: int = 0, copy: str = "") -> list[tuple[str, Row]]:
    """The typed rows of one event, as (table, row); none for an event no dashboard reads. An event without
    a time of its own (0) is stamped ``fallback_ms``, the time the sink gives it in ``events``. ``copy``
    is where the sink read it ('<partition>.<offset>'), for the tables that keep every copy."""
    fact = FACTS.get(event_type)
    if fact is None:
        return []
    table, rows = fact
    if fallback_ms and not record.get("event_time_ms"):
        # Stamped 0, a settlement (or a receipt, an alert) fell outside every range the dashboards ask
        # for, and a completed refund showed as unsettled.
        record = {**record, "event_time_ms": fallback_ms}
    if copy and table in KEPT_PER_COPY:
        return [(table, {**row, "event_id": f"{row['event_id']}@{copy}"}) for row in rows(record)]
    return [(table, row) for row in rows(record)]
