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


def test_a_line_goes_to_the_warehouse_the_pool_tied_it_to() -> None:
    """Failed before: at least once, a lifecycle that replays a payment routes the order again (the stock levels
    moved on: WH-GZ now) while the pool's answer to the first routing (line 1 ALLOCATED at WH-SH) is on the topic
    already. The order took that answer for the new plan's warehouse and pushed line 1 to WH-GZ, whose WMS
    shipped units the pool still offered there to the next order, while WH-SH's stayed tied to a line no one
    would ship from it."""
    rec = paid_order()
    flow.on_route_decided(rec, {"assignments": {"WH-GZ": [1, 2]}, "candidates": [], "weights": {}}, 1_500, RULES)
    allocated(rec, 1, reason="WH-SH")  # the first routing's answer
    fx = allocated(rec, 2, reason="WH-GZ")
    assert rec.state == "routed" and rec.allocated == {"1": "WH-SH", "2": "WH-GZ"}
    assert [(d["warehouse_id"], [ln["line_no"] for ln in d["lines"]]) for d in fx.dispatches] == [
        ("WH-GZ", [2]), ("WH-SH", [1])]
    assert not allocated(rec, 1, "IGNORED", "allocated_to_WH-SH").dispatches  # the second routing's, for line 1


def test_a_refused_allocation_routes_the_line_again() -> None:
    rec = paid_order()
    flow.on_route_decided(rec, {"assignments": {"WH-SH": [1, 2]}, "candidates": [], "weights": {}}, 1_500, RULES)
    allocated(rec, 1)
    fx = allocated(rec, 2, "REFUSED", "warehouse_short")
    assert rec.state == "paid" and fx.route == ["2"]


def test_a_line_refused_while_its_warehouse_is_counted_waits_a_second_and_uses_no_attempt() -> None:
    """Failed before: a hot SKU's count settles in milliseconds, and a line refused meanwhile was routed again at
    once, to the same warehouse (the view had not moved), refused again, and after five attempts in milliseconds
    waited route_retry_s (30 s) with nothing short."""
    rec = paid_order()
    plan = {"assignments": {"WH-SH": [1, 2]}, "candidates": [], "weights": {}}
    flow.on_route_decided(rec, plan, 1_500, RULES)
    allocated(rec, 1)
    for n in range(RULES.max_route_attempts + 2):  # more waits than attempts: none of them counts
        fx = allocated(rec, 2, "REFUSED", "warehouse_counting")
        assert not fx.route and rec.routing["retry_at_ms"] == 2_000 + flow.COUNT_WAIT_MS
        fx = flow.on_tick(rec, 2_000 + flow.COUNT_WAIT_MS, RULES)
        assert fx.route == ["2"]
        decision = flow.on_route_decided(rec, {**plan, "assignments": {"WH-SH": [2]}}, 3_500, RULES).routing_decision
        assert decision is not None and decision["event_id"] == f"jd:1:route:{n + 2}"  # each decision its own id
    fx = allocated(rec, 2, "REFUSED", "warehouse_short")
    assert fx.route == ["2"]  # a real shortage: routed again at once, the first attempt of five used
    assert int(rec.routing["attempt"]) - int(rec.routing["waits"]) == 1
    flow.on_route_decided(rec, {**plan, "assignments": {"WH-GZ": [2]}}, 4_000, RULES)
    allocated(rec, 2)
    assert rec.state == "routed" and rec.allocated == {"1": "WH-SH", "2": "WH-GZ"}


def test_a_count_that_never_settles_is_waited_on_no_longer_than_a_bucket_waits() -> None:
    rec = paid_order()
    plan = {"assignments": {"WH-SH": [1, 2]}, "candidates": [], "weights": {}}
    flow.on_route_decided(rec, plan, 1_500, RULES)
    allocated(rec, 1)
    rec.routing["waits"] = flow.MAX_COUNT_WAITS
    fx = allocated(rec, 2, "REFUSED", "warehouse_counting")
    assert fx.route == ["2"] and "counting" not in rec.routing  # an attempt now, routed at once


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


def test_a_split_order_whose_unroutable_line_is_shipped_by_hand_sends_its_other_line_to_its_warehouse() -> None:
    """Failed before: line 2 allocated at WH-BJ, line 1 short everywhere and waiting for a retry, then shipped by
    hand from WH-GZ; the order stayed paid for good, line 2 never pushed to WH-BJ and no timer left."""
    rec = paid_order()
    flow.on_route_decided(rec, {"assignments": {"WH-SH": [1], "WH-BJ": [2]}, "candidates": [], "weights": {}},
                          1_500, RULES)  # fmt: skip
    allocated(rec, 2)
    assert allocated(rec, 1, "REFUSED", "warehouse_short").route == ["1"]
    for _ in range(RULES.max_route_attempts):
        flow.on_route_decided(rec, None, 3_000, RULES)  # no warehouse has it in the view
    assert rec.state == "paid" and rec.routing["retry_at_ms"]
    fx = flow.on_shipment(rec, {"warehouse_id": "WH-GZ"}, "ShipmentDispatched", 4_000, RULES)
    assert rec.state == "routed" and rec.shipped_lines == ["1"]
    assert [(d["warehouse_id"], [ln["line_no"] for ln in d["lines"]]) for d in fx.dispatches] == [("WH-BJ", [2])]
    assert rec.next_deadline_ms(RULES)  # its ship-by time is watched
    fx = flow.on_shipment(rec, {"warehouse_id": "WH-BJ"}, "ShipmentDispatched", 5_000, RULES)
    assert rec.state == "shipped"


def test_the_same_shipment_notice_again_from_one_warehouse_of_a_split_order_changes_nothing() -> None:
    """Failed before: the WMS's retry of a notice was dead-lettered illegal_transition while the order's other
    warehouse had not shipped yet (a single-warehouse order took it silently)."""
    rec = paid_order()
    flow.on_route_decided(rec, {"assignments": {"WH-SH": [1], "WH-BJ": [2]}, "candidates": [], "weights": {}},
                          1_500, RULES)  # fmt: skip
    allocated(rec, 1), allocated(rec, 2)
    assert flow.on_shipment(rec, {"warehouse_id": "WH-BJ"}, "ShipmentDispatched", 3_000, RULES).hold_commands
    again = flow.on_shipment(rec, {"warehouse_id": "WH-BJ"}, "ShipmentDispatched", 3_100, RULES)
    assert (again.refusal, again.hold_commands, again.alerts, rec.state) == (None, [], [], "routed")
    # A warehouse never given the order is still refused.
    assert flow.on_shipment(rec, {"warehouse_id": "WH-CD"}, "ShipmentDispatched", 3_200, RULES).refusal is not None


def test_a_stored_order_written_by_a_newer_version_still_loads() -> None:
    """Failed before: a field this version does not know made every event and timer of the order fail."""
    data = flow.OrderRecord(order_id="jd:1", state="paid").to_dict()
    assert flow.OrderRecord.from_dict({**data, "field_of_a_newer_version": 1}) == flow.OrderRecord.from_dict(data)
