"""Pure order-lifecycle rules after payment, no broker: routing, allocation, SLA."""

from __future__ import annotations

from agents.orders import rules as flow
from agents.orders.run_lifecycle import order_rules
from loadtest import events as ev
from streams.settings import Settings

RULES = order_rules(Settings(channels=("jd",), max_line_qty=100))


def paid_order() -> flow.OrderRecord:
    rec = flow.OrderRecord(order_id="jd:1")
    flow.on_placed(rec, ev.order_placed("jd", "1", [ev.line(1, "A", 1), ev.line(2, "B", 1)], event_time_ms=0), 0, RULES)
    for n, sku in ((1, "A"), (2, "B")):
        flow.on_hold_decided(rec, {"line_no": n, "action": "RESERVE", "outcome": "HELD", "reason": "", "sku": sku}, 0,
                             RULES)  # fmt: skip
    fx = flow.on_payment(rec, {"event_id": "p"}, 1_000, RULES)
    assert rec.state == "paid" and fx.route == ["1", "2"]
    return rec


def allocated(rec: flow.OrderRecord, line_no: int, outcome: str = "ALLOCATED", reason: str = "") -> flow.Effects:
    return flow.on_hold_decided(rec, {"line_no": line_no, "action": "ALLOCATE", "outcome": outcome,
                                      "reason": reason, "sku": ""}, 2_000, RULES)  # fmt: skip


def test_an_order_is_routed_when_the_pool_confirmed_every_allocation() -> None:
    rec = paid_order()
    decision = {"assignments": {"WH-SH": [1], "WH-GZ": [2]}, "candidates": [], "weights": {}}
    fx = flow.on_route_decided(rec, decision, 1_500, RULES)
    assert [c["action"] for c in fx.hold_commands] == ["ALLOCATE", "ALLOCATE"]
    assert fx.routing_decision is not None and fx.routing_decision["split"]
    assert not allocated(rec, 1).transitions
    fx = allocated(rec, 2)
    assert rec.state == "routed" and [d["warehouse_id"] for d in fx.dispatches] == ["WH-GZ", "WH-SH"]


def test_a_refused_allocation_routes_the_line_again() -> None:
    rec = paid_order()
    flow.on_route_decided(rec, {"assignments": {"WH-SH": [1, 2]}, "candidates": [], "weights": {}}, 1_500, RULES)
    allocated(rec, 1)
    fx = allocated(rec, 2, "REFUSED", "warehouse_short")
    assert rec.state == "paid" and fx.route == ["2"]


def test_sla_is_red_once_after_fifteen_minutes_and_cleared_once_when_the_warehouse_has_it() -> None:
    rec = paid_order()
    assert not flow.sla_alerts(rec, 1_000 + 899_999, RULES)
    red = flow.sla_alerts(rec, 1_000 + 900_000, RULES)
    assert [a.severity for a in red] == ["RED"] and not flow.sla_alerts(rec, 2_000_000, RULES)
    flow.on_route_decided(rec, {"assignments": {"WH-SH": [1, 2]}, "candidates": [], "weights": {}}, 3e6, RULES)
    allocated(rec, 1), allocated(rec, 2)
    assert rec.state == "routed" and not flow.sla_alerts(rec, 3_000_000, RULES)  # pushed, not acknowledged
    assert flow.on_wms_ack(rec, {"warehouse_id": "WH-XX"}, 3_100_000).refusal[0] == "unknown_warehouse"  # type: ignore[index]
    flow.on_wms_ack(rec, {"warehouse_id": "WH-SH"}, 3_100_000)
    cleared = flow.sla_alerts(rec, 3_100_000, RULES)
    assert [a.cleared for a in cleared] == [True] and not flow.sla_alerts(rec, 4e6, RULES)  # type: ignore[arg-type]
