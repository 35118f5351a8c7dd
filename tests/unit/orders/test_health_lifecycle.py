"""The health score in the order lifecycle, in-process (``LocalRunner``, no broker): each order is scored once,
when it is paid, on ``order.health``; a customer's completed return, run through the refund processor and read
back into the customers' returns view as a worker's consumer would, lowers their next order's score."""

from __future__ import annotations

from typing import Any

from agents.inventory.hold_stock import HoldStock
from agents.orders.customer_returns import CustomerReturns
from agents.orders.health import health_rules
from agents.orders.rules import OrderRecord
from agents.orders.run_lifecycle import STORE as ORDERS
from agents.orders.run_lifecycle import RunLifecycle
from agents.refunds.run_refunds import RunRefunds
from agents.routing.warehouse_view import WarehouseView
from agents.routing.warehouses import load_warehouses
from loadtest import events as ev
from streams.contract.codec import default_codec
from streams.contract.topics import ORDER_EVENTS, ORDER_HEALTH, REFUND_EVENTS, STOCK_ADJUSTMENTS
from streams.engine.local import LocalRunner
from streams.settings import Settings

MIN = 60_000


def pipeline(returns: CustomerReturns | None = None) -> tuple[LocalRunner, WarehouseView, str]:
    settings = Settings(safety_threshold=0)
    view = WarehouseView.from_settings(settings)
    warehouses = frozenset(load_warehouses(settings.warehouses_file))
    processors = [RunLifecycle.from_settings(settings, view, returns), HoldStock.from_settings(settings, warehouses),
                  RunRefunds.from_settings(settings)]  # fmt: skip
    runner = LocalRunner(processors)
    view.ready = True  # as in a worker whose view has read the warehouses' stock
    return runner, view, sorted(warehouses)[0]


def stock(r: LocalRunner, view: WarehouseView, sku: str, qty: int, wh: str) -> None:
    r.send([(sku, "StockAdjusted", ev.stock_adjusted(sku, wh, qty))], STOCK_ADJUSTMENTS.name)
    for out in r.advance(1_000):
        if out.event_type == "StockLevel":
            view.apply_level(out.record)


def send(r: LocalRunner, kind: str, record: Any, topic: str = ORDER_EVENTS.name) -> list[Any]:
    return r.send([(f"{record['channel']}:{record['channel_order_id']}", kind, record)], topic)


def health_of(outputs: list[Any]) -> list[dict[str, Any]]:
    scored = [o for o in outputs if o.event_type == "OrderHealthScored"]
    assert all(o.topic == ORDER_HEALTH.name and o.key == o.record["order_id"].encode() for o in scored)
    return [o.record for o in scored]


def placed(r: LocalRunner, channel: str, oid: str, sku: str, customer: str, **fields: Any) -> Any:
    record = ev.order_placed(channel, oid, [ev.line(1, sku, 1)], event_time_ms=r.now_ms)
    record["customer_id"] = customer
    record.update(fields)
    return record


def paid(r: LocalRunner, channel: str, oid: str, after_ms: int) -> Any:
    record = ev.payment_confirmed(channel, oid)
    record["event_time_ms"] = r.now_ms + after_ms
    return record


def test_an_order_is_scored_once_when_it_is_paid() -> None:
    r, view, wh = pipeline()
    stock(r, view, "SKU-H1", 5, wh)
    out = send(r, "OrderPlaced", placed(r, "jd", "1", "SKU-H1", "buyer-1"))
    assert not health_of(out)  # placed and reserved: not scored yet
    out = send(r, "PaymentConfirmed", paid(r, "jd", "1", 20 * MIN))
    # Paid after 20 min: 8; 文三路 90 号 3 幢 501 (down to the building number): 30; one plain line: 20; no
    # returns: 30. 88.
    [scored] = health_of(out)
    assert scored["breakdown"] == {"promptness": 8, "address": 30, "complexity": 20, "returns": 30, "coupon": 0}
    assert (scored["score"], scored["focus"], scored["focus_below"], scored["returns"]) == (88.0, False, 60.0, 0)
    assert (scored["event_id"], scored["customer_id"], scored["paid_after_ms"]) == ("jd:1:health", "buyer-1", 20 * MIN)
    assert scored["weights"] == health_rules(Settings()).weights()
    assert default_codec().decode(default_codec().encode("OrderHealthScored", scored))[1] == scored
    assert r.read(ORDERS, b"jd:1", "jd:1").health_score == 88.0
    assert not health_of(send(r, "PaymentConfirmed", paid(r, "jd", "1", 21 * MIN)))  # a repeated notification


def test_a_payment_before_its_order_is_scored_once_the_order_is_reserved() -> None:
    r, view, wh = pipeline()
    stock(r, view, "SKU-H2", 5, wh)
    early = paid(r, "tmall", "2", -MIN)  # the channel's payment callback came first
    assert not health_of(send(r, "PaymentConfirmed", early))
    out = send(r, "OrderPlaced", placed(r, "tmall", "2", "SKU-H2", "buyer-2", coupon_type="flash_sale"))
    [scored] = health_of(out)
    assert scored["breakdown"]["promptness"] == 20 and scored["breakdown"]["coupon"] == 10
    assert scored["score"] == 100.0  # 20 + 30 + 20 + 30 + 10, kept at 100


def test_an_unpaid_order_is_never_scored() -> None:
    r, view, wh = pipeline()
    stock(r, view, "SKU-H3", 5, wh)
    out = send(r, "OrderPlaced", placed(r, "pdd", "3", "SKU-H3", "buyer-3"))
    out += r.advance(2 * 3_600_000)  # past the payment timeout
    assert not health_of(out) and r.read(ORDERS, b"pdd:3", "pdd:3").state == "payment_timeout"


def test_a_customers_completed_returns_lower_their_next_orders_score_into_the_focus_pool() -> None:
    returns = CustomerReturns.from_rules(health_rules(Settings()).returns, ready=True)
    r, view, wh = pipeline(returns)
    refund_states: list[dict[str, Any]] = []
    for n in range(3):  # three delivered orders of buyer-9, each returned and paid back
        oid = f"past-{n}"
        stock(r, view, f"SKU-P{n}", 5, wh)
        send(r, "OrderPlaced", placed(r, "jd", oid, f"SKU-P{n}", "buyer-9"))
        send(r, "PaymentConfirmed", paid(r, "jd", oid, MIN))
        send(r, "ShipmentDispatched", ev.shipment_dispatched("jd", oid, wh))
        send(r, "ShipmentDelivered", ev.shipment_delivered("jd", oid))
        out = send(r, "RefundRequested", ev.refund_requested("jd", oid, f"r{n}", 9_900, event_time_ms=r.now_ms),
                   REFUND_EVENTS.name)  # fmt: skip
        out += send(r, "RefundSettled", ev.refund_settled("jd", oid, f"r{n}", 9_900), REFUND_EVENTS.name)
        refund_states += [o.record for o in out if o.event_type == "RefundStateChanged"]
    assert [s["state"] for s in refund_states].count("completed") == 3
    assert {s["customer_id"] for s in refund_states} == {"buyer-9"}  # the refund took it from its order
    for record in refund_states:  # what the worker's consumer of refund.states does
        returns.apply(record)
    assert returns.count("jd", "buyer-9", r.now_ms) == 3

    # The same order from buyer-9 and from a customer without returns: 88 for one, 58 for the other.
    stock(r, view, "SKU-N", 5, wh)
    scores = {}
    for oid, customer in (("new-9", "buyer-9"), ("new-0", "buyer-0")):
        send(r, "OrderPlaced", placed(r, "jd", oid, "SKU-N", customer))
        [scored] = health_of(send(r, "PaymentConfirmed", paid(r, "jd", oid, 20 * MIN)))
        scores[customer] = scored
    assert (scores["buyer-0"]["score"], scores["buyer-0"]["focus"]) == (88.0, False)
    assert (scores["buyer-9"]["score"], scores["buyer-9"]["focus"], scores["buyer-9"]["returns"]) == (58.0, True, 3)
    assert scores["buyer-9"]["breakdown"]["returns"] == 0
    assert "3 returns in 180 days" in scores["buyer-9"]["notes"]
    assert returns.count("tmall", "buyer-9", r.now_ms) == 0  # the same id on another channel is someone else


def test_a_score_taken_while_the_return_history_loads_says_so() -> None:
    r, view, wh = pipeline(CustomerReturns.from_rules(health_rules(Settings()).returns))  # not caught up yet
    stock(r, view, "SKU-H4", 5, wh)
    send(r, "OrderPlaced", placed(r, "jd", "4", "SKU-H4", "buyer-4"))
    [scored] = health_of(send(r, "PaymentConfirmed", paid(r, "jd", "4", MIN)))
    assert scored["notes"] == ["return history still loading"]


def test_an_order_stored_before_the_health_fields_loads_and_is_scored_when_paid() -> None:
    rec = OrderRecord(order_id="jd:5", channel="jd", state="reserved", lines={"1": {"sku": "S", "qty": 1}})
    old = {k: v for k, v in rec.to_dict().items()
           if k not in ("customer_id", "coupon_type", "bundle", "paid_at_ms", "health_score")}  # fmt: skip
    loaded = OrderRecord.from_dict(old)
    assert (loaded.customer_id, loaded.coupon_type, loaded.bundle, loaded.paid_at_ms, loaded.health_score) == (
        "", "", False, 0, None)  # fmt: skip
