"""A VIP override and the order it names, together in-process (``LocalRunner``: the lifecycle and the pool).

An approved override is offered to its VIP order before any stock moves: only the lifecycle knows whether a line
of the order can still take a set-aside. One that cannot (the order ended, or its lines asked the pool already)
refuses it, and the override is refused with that reason: no other order's hold is taken, no unit set aside.
"""

from __future__ import annotations

from typing import Any

import pytest

from agents.inventory.hold_stock import STORE as POOL
from agents.inventory.hold_stock import hold_key, sku_key
from agents.orders.run_lifecycle import STORE as ORDERS
from loadtest import events as ev
from streams.contract.reasons import Reason
from streams.contract.topics import OPS_OVERRIDES
from streams.engine.local import LocalRunner
from streams.settings import Settings
from tests.unit.orders.test_run_lifecycle import first_warehouse, order, pipeline, states, stock

VIP = "tmall:vip"


def approve(r: LocalRunner, sku: str, override_id: str, qty: int, vip_order: str = VIP) -> list[Any]:
    """An override requested by alice and approved by bob; the outputs of the approval and all it caused."""
    ov = {"event_id": f"{override_id}-req", "event_time_ms": 0, "override_id": override_id, "sku": sku, "qty": qty,
          "vip_order_id": vip_order, "reason": "key account", "operator": "alice"}  # fmt: skip
    r.send([(sku, "VipOverride", {**ov, "action": "REQUEST"})], OPS_OVERRIDES.name)
    approval = {**ov, "action": "APPROVE", "operator": "bob", "event_id": f"{override_id}-ok"}
    return r.send([(sku, "VipOverride", approval)], OPS_OVERRIDES.name)


def audited(outputs: list[Any]) -> list[tuple[str, str]]:
    return [(o.record["outcome"], o.record["detail"]) for o in outputs if o.event_type == "OverrideAudited"]


def pool(r: LocalRunner, sku: str) -> dict[str, Any]:
    totals = r.read(POOL, sku_key(sku), sku)
    return {k: totals[k] for k in ("locked", "open_lines", "set_asides")}


def state(r: LocalRunner, order_id: str) -> str:
    return r.read(ORDERS, order_id.encode()).state


def vip_ended_while_another_holds_the_stock(r: LocalRunner, how: str, sku: str) -> None:
    """The VIP order (one unit of ``sku``) ends ``how``: rejected for stock, cancelled, or timed out unpaid; then (or
    before, for the rejection) jd:other holds all of the SKU's 2 units, unpaid: what an override would take."""
    vip = ev.order_placed("tmall", "vip", [ev.line(1, sku, 1)], vip=True)
    other = ev.order_placed("jd", "other", [ev.line(1, sku, 2)])
    if how == "rejected":
        assert states(order(r, "OrderPlaced", other)) == ["placed", "reserved"]
        assert states(order(r, "OrderPlaced", vip)) == ["placed", "rejected"]
        return
    assert states(order(r, "OrderPlaced", vip)) == ["placed", "reserved"]
    if how == "cancelled":
        order(r, "OrderCancelled", ev.order_cancelled("tmall", "vip"))
    else:
        r.advance(int(Settings().payment_timeout_s * 1000) + 1_000)
    assert state(r, VIP) == how
    assert states(order(r, "OrderPlaced", other)) == ["placed", "reserved"]


@pytest.mark.parametrize("how", ["rejected", "cancelled", "payment_timeout"])
def test_an_override_for_a_vip_order_that_ended_is_refused_and_takes_no_hold(how: str) -> None:
    """The defect: the pool knew nothing of the order. It released the other order's unpaid hold (that order was
    cancelled: vip_override), set the units aside for an order that would never take them, locked for the hold TTL
    (2 hours by default), and told the operator APPLIED; the VIP order stayed as it was."""
    r, view = pipeline()
    stock(r, view, "SKU-E", 2, first_warehouse())
    vip_ended_while_another_holds_the_stock(r, how, "SKU-E")
    out = approve(r, "SKU-E", "OV-E", 1)
    assert audited(out) == [("OFFERED", ""), ("REFUSED", Reason.VIP_ORDER_ENDED)]
    assert state(r, "jd:other") == "reserved" and state(r, VIP) == how
    assert pool(r, "SKU-E") == {"locked": 2, "open_lines": 1, "set_asides": 0}
    assert [o for o in out if o.event_type in ("OrderStateChanged", "ReservationDecided")] == []
    held = r.read(POOL, hold_key("SKU-E", VIP, 0), "SKU-E")
    assert held is None or held["status"] != "held"


def test_an_override_for_a_vip_order_placed_already_is_refused_and_takes_no_hold() -> None:
    """Its lines asked the pool before the approval: no line can take a set-aside now. Before, the set-aside stayed
    locked beside the order's own holds for the hold TTL, and the other order lost its hold for it."""
    r, view = pipeline()
    stock(r, view, "SKU-P", 3, first_warehouse())
    assert states(order(r, "OrderPlaced", ev.order_placed("tmall", "vip", [ev.line(1, "SKU-P", 1)], vip=True))) == [
        "placed", "reserved"]  # fmt: skip
    assert states(order(r, "OrderPlaced", ev.order_placed("jd", "other", [ev.line(1, "SKU-P", 2)]))) == [
        "placed", "reserved"]  # fmt: skip
    out = approve(r, "SKU-P", "OV-P", 1)
    assert audited(out) == [("OFFERED", ""), ("REFUSED", Reason.VIP_ORDER_ALREADY_PLACED)]
    assert (state(r, VIP), state(r, "jd:other")) == ("reserved", "reserved")
    assert pool(r, "SKU-P") == {"locked": 3, "open_lines": 2, "set_asides": 0}


def test_an_override_approved_before_its_vip_order_is_placed_serves_it_and_nothing_is_left_locked() -> None:
    """What an override is for: approved before the VIP order comes, its units are set aside, the order's line takes
    them. What the line did not take goes back as soon as every line has asked, not when the set-aside expires."""
    r, view = pipeline()
    stock(r, view, "SKU-S", 3, first_warehouse())
    assert states(order(r, "OrderPlaced", ev.order_placed("jd", "other", [ev.line(1, "SKU-S", 3)]))) == [
        "placed", "reserved"]  # fmt: skip
    out = approve(r, "SKU-S", "OV-S", 2)
    assert audited(out) == [("OFFERED", ""), ("APPLIED", "pledged:2")]
    # Nothing free: the 2 units are pledged, jd:other keeps its hold until the VIP order's line needs it.
    assert state(r, "jd:other") == "reserved"
    assert pool(r, "SKU-S") == {"locked": 3, "open_lines": 2, "set_asides": 1}
    out = order(r, "OrderPlaced", ev.order_placed("tmall", "vip", [ev.line(1, "SKU-S", 1)], vip=True))
    assert [(o.record["order_id"], o.record["state"]) for o in out if o.event_type == "OrderStateChanged"] == [
        (VIP, "placed"), ("jd:other", "cancelled"), (VIP, "reserved")]  # fmt: skip
    # jd:other's unpaid hold released to the VIP order's line, as approved: now, not at the approval
    assert audited(out) == [("APPLIED", "pledged:0 taken_by:tmall:vip#1")]
    assert pool(r, "SKU-S") == {"locked": 1, "open_lines": 1, "set_asides": 0}  # the unit left over is free again
    assert r.read(ORDERS, VIP.encode()).set_asides == {}
    out = order(r, "PaymentConfirmed", ev.payment_confirmed("tmall", "vip"))
    assert states(out) == ["paid", "routed"]


def test_an_override_for_a_mistyped_vip_order_takes_no_hold_from_anyone() -> None:
    """Fixed: the lifecycle claims an offer for an order it has never seen (the VIP may order later), so an override
    naming a mistyped order id was claimed, and the claim released jd:other's unpaid hold (its order cancelled) for
    an order that never came."""
    r, view = pipeline()
    stock(r, view, "SKU-M", 3, first_warehouse())
    assert states(order(r, "OrderPlaced", ev.order_placed("jd", "other", [ev.line(1, "SKU-M", 2)]))) == [
        "placed", "reserved"]  # fmt: skip
    out = approve(r, "SKU-M", "OV-M", 2, vip_order="tmall:vpi")
    assert audited(out) == [("OFFERED", ""), ("APPLIED", "pledged:1")]
    assert state(r, "jd:other") == "reserved"
    assert [o for o in out if o.event_type in ("OrderStateChanged", "ReservationDecided")] == []
    assert pool(r, "SKU-M") == {"locked": 3, "open_lines": 2, "set_asides": 1}
    assert states(order(r, "PaymentConfirmed", ev.payment_confirmed("jd", "other"))) == ["paid", "routed"]


@pytest.mark.parametrize("line_qty", [1, 3])
def test_a_set_aside_its_order_could_not_use_goes_back_when_the_order_ends_not_hours_later(line_qty: int) -> None:
    """The VIP order takes part of its set-aside and is cancelled (1), or asks for more than was set aside and no free
    stock makes up the rest (3): the order ends after the override was claimed. Before, what no line took stayed
    locked for the hold TTL, for an order that would never take it."""
    r, view = pipeline()
    stock(r, view, "SKU-R", 3, first_warehouse())
    assert states(order(r, "OrderPlaced", ev.order_placed("jd", "other", [ev.line(1, "SKU-R", 1)]))) == [
        "placed", "reserved"]  # fmt: skip
    assert audited(approve(r, "SKU-R", "OV-R", 2)) == [("OFFERED", ""), ("APPLIED", "")]
    assert pool(r, "SKU-R") == {"locked": 3, "open_lines": 2, "set_asides": 1}
    vip = ev.order_placed("tmall", "vip", [ev.line(1, "SKU-R", line_qty)], vip=True)
    if line_qty == 3:
        assert states(order(r, "OrderPlaced", vip)) == ["placed", "rejected"]
    else:
        assert states(order(r, "OrderPlaced", vip)) == ["placed", "reserved"]
        assert pool(r, "SKU-R") == {"locked": 2, "open_lines": 2, "set_asides": 0}
        assert states(order(r, "OrderCancelled", ev.order_cancelled("tmall", "vip"))) == ["cancelled"]
    assert pool(r, "SKU-R") == {"locked": 1, "open_lines": 1, "set_asides": 0}  # jd:other's unit only
    assert r.read(POOL, hold_key("SKU-R", VIP, 0), "SKU-R")["status"] == "released"


@pytest.mark.parametrize("how", ["rejected", "cancelled", "payment_timeout"])
def test_an_order_that_ends_while_its_offer_travels_refuses_it_and_no_hold_is_taken(how: str) -> None:
    """The reverse race: the approval was made while the VIP order could still take a set-aside (not placed yet;
    reserved, for the cancel and the timeout, where it would be refused as placed), and the order ended before it
    heard the offer. It answers as it stands, ended: nothing is released or set aside."""
    r, view = pipeline()
    stock(r, view, "SKU-X", 2, first_warehouse())
    vip = ev.order_placed("tmall", "vip", [ev.line(1, "SKU-X", 1)], vip=True)
    other = ev.order_placed("jd", "other", [ev.line(1, "SKU-X", 2 if how == "rejected" else 1)])
    assert states(order(r, "OrderPlaced", other)) == ["placed", "reserved"]
    if how != "rejected":
        assert states(order(r, "OrderPlaced", vip)) == ["placed", "reserved"]
    ov = {"event_id": "OV-X-req", "event_time_ms": 0, "override_id": "OV-X", "sku": "SKU-X", "qty": 1,
          "vip_order_id": VIP, "reason": "key account", "operator": "alice"}  # fmt: skip
    r.send([("SKU-X", "VipOverride", {**ov, "action": "REQUEST"})], OPS_OVERRIDES.name)
    approval = {**ov, "action": "APPROVE", "operator": "bob", "event_id": "OV-X-ok"}
    in_flight = r._round([(OPS_OVERRIDES.name, "SKU-X", "VipOverride", approval)])  # noqa: SLF001 - held back
    assert [e[2] for e in in_flight] == ["HoldDecided", "OverrideAudited"]  # the offer, not delivered yet
    if how == "rejected":
        assert states(order(r, "OrderPlaced", vip)) == ["placed", "rejected"]
    elif how == "cancelled":
        order(r, "OrderCancelled", ev.order_cancelled("tmall", "vip"))
    else:
        r.advance(int(Settings().payment_timeout_s * 1000) + 1_000)  # jd:other times out too
        holder = ev.order_placed("jd", "later", [ev.line(1, "SKU-X", 2)])
        assert states(order(r, "OrderPlaced", holder)) == ["placed", "reserved"]
    assert state(r, VIP) == how
    locked = pool(r, "SKU-X")
    before = len(r.outputs)
    r._drain(in_flight)  # noqa: SLF001 - the offer arrives now
    assert audited(r.outputs[before:]) == [("REFUSED", Reason.VIP_ORDER_ENDED)]
    assert [o for o in r.outputs[before:] if o.event_type == "OrderStateChanged"] == []  # no one's hold taken
    assert state(r, VIP) == how and pool(r, "SKU-X") == locked
    assert r.read(POOL, hold_key("SKU-X", VIP, 0), "SKU-X") is None


def test_a_claim_the_pool_takes_late_is_remembered_until_its_set_aside_expired_there() -> None:
    """The defect: the lifecycle forgot its claim a hold TTL after the offer, the pool set the units aside for a hold
    TTL after it took the claim, later. An order placed in between took part of the set-aside, and what it left
    stayed locked until the pool's expiry: no RELEASE on line 0 was sent."""
    r, view = pipeline()
    stock(r, view, "SKU-F", 3, first_warehouse())
    ov = {"event_id": "F-req", "event_time_ms": 0, "override_id": "OV-F", "sku": "SKU-F", "qty": 2,
          "vip_order_id": VIP, "reason": "key account", "operator": "alice"}  # fmt: skip
    r.send([("SKU-F", "VipOverride", {**ov, "action": "REQUEST"})], OPS_OVERRIDES.name)
    approval = {**ov, "action": "APPROVE", "operator": "bob", "event_id": "F-ok"}
    approved = r._round([(OPS_OVERRIDES.name, "SKU-F", "VipOverride", approval)])  # noqa: SLF001 - one step at a time
    offer = [e for e in approved if e[2] == "HoldDecided"]
    claim = [e for e in r._round(offer) if e[2] == "HoldCommand"]  # noqa: SLF001 - the claim held back
    assert [c[3]["action"] for c in claim] == ["RESERVE"]
    ttl, lag = int(Settings().hold_ttl_s * 1000), 10 * 60_000
    r.advance(lag)  # the pool takes the claim 10 minutes late
    r._drain(claim)  # noqa: SLF001 - the claim arrives now
    assert pool(r, "SKU-F")["set_asides"] == 1
    r.advance(ttl - lag + 1_000)  # a hold TTL after the offer, the set-aside still there at the pool
    assert pool(r, "SKU-F")["set_asides"] == 1
    out = order(r, "OrderPlaced", ev.order_placed("tmall", "vip", [ev.line(1, "SKU-F", 1)], vip=True))
    assert states(out) == ["placed", "reserved"]
    assert pool(r, "SKU-F") == {"locked": 1, "open_lines": 1, "set_asides": 0}  # the unit it left went back


def test_a_cancel_parked_for_an_order_that_claimed_a_set_aside_lets_it_go_at_once() -> None:
    """The defect: the order will be cancelled as soon as it is placed, so no line of it takes the set-aside, yet
    the units stayed set aside for the hold TTL."""
    r, view = pipeline()
    stock(r, view, "SKU-C", 2, first_warehouse())
    assert audited(approve(r, "SKU-C", "OV-C", 1)) == [("OFFERED", ""), ("APPLIED", "")]
    assert pool(r, "SKU-C")["set_asides"] == 1
    order(r, "OrderCancelled", ev.order_cancelled("tmall", "vip"))  # parked: the order is not placed yet
    assert pool(r, "SKU-C") == {"locked": 0, "open_lines": 0, "set_asides": 0}
    assert r.read(ORDERS, VIP.encode()).set_asides == {}
    # Placed later, it is cancelled at once and takes nothing.
    out = order(r, "OrderPlaced", ev.order_placed("tmall", "vip", [ev.line(1, "SKU-C", 1)], vip=True))
    assert states(out)[-1] == "cancelled"
    assert pool(r, "SKU-C") == {"locked": 0, "open_lines": 0, "set_asides": 0}
