"""Which ClickHouse rows an event becomes: pure functions, one registry entry per event type.

The sink writes every event to ``events`` (the raw log) and, through ``FACTS``, typed rows to the
tables the dashboards read (``schemas/ddl/003_facts.sql``). Adding a dashboard over a new event
is a table in the DDL and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

Row = dict[str, Any]
STAGES = ("placed", "reserved", "paid", "routed", "acknowledged", "shipped", "delivered")


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
    yield {**_time(r), "source_topic": r["source_topic"], "source_partition": r["source_partition"],
           "source_offset": r["source_offset"], "stage": r["stage"], "reason": r["reason"], "detail": r["detail"],
           "original_value_hex": (r.get("original_value") or b"").hex()}  # fmt: skip


FACTS: dict[str, tuple[str, Callable[[dict[str, Any]], Iterable[Row]]]] = {
    "OrderStateChanged": ("order_states", order_state_rows),
    "ReservationDecided": ("reservations", reservation_rows),
    "HoldDecided": ("hold_decisions", hold_decision_rows),
    "StockLevel": ("stock_levels", stock_level_rows),
    "Alert": ("alerts", alert_rows),
    "RoutingDecision": ("routing_assignments", routing_rows),
    "DeadLetter": ("dead_letters", dead_letter_rows),
}


def rows_of(event_type: str, record: dict[str, Any]) -> list[tuple[str, Row]]:
    """The typed rows of one event, as (table, row); none for an event no dashboard reads."""
    fact = FACTS.get(event_type)
    if fact is None:
        return []
    table, rows = fact
    return [(table, row) for row in rows(record)]
