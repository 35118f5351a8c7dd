"""Order lifecycle on the real broker and over real HTTP: intake, routing, SLA alert and webhook."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents.intake.service import Intake
from loadtest import events as ev
from streams.contract.keys import order_key
from streams.contract.topics import ORDER_EVENTS
from streams.engine.producer import EventProducer
from streams.settings import Settings
from tests.conftest import free_port
from tests.helpers import AppServer, advance_clock, read_topic, stock_up, wait_for
from tests.unit.routing.test_scoring import EXAMPLE_SCORES

pytestmark = pytest.mark.broker

EXAMPLE_WAREHOUSES = """
[[warehouse]]
id = "WH-SH"
province = "上海"
city = "上海"
cost_per_order = 6.5
on_time_prior = 0.70

[[warehouse]]
id = "WH-NJ"
province = "江苏"
city = "南京"
cost_per_order = 5.0
on_time_prior = 0.96

[[warehouse]]
id = "WH-GZ"
province = "广东"
city = "广州"
cost_per_order = 4.0
on_time_prior = 0.99
"""


@pytest.fixture
def example_warehouses(tmp_path: Path) -> Path:
    path = tmp_path / "warehouses.toml"
    path.write_text(EXAMPLE_WAREHOUSES, encoding="utf-8")
    return path


def records(settings: Settings, topic: str, order_id: str) -> list[dict[str, Any]]:
    return [r for _, r in read_topic(settings, topic) if r.get("order_id") == order_id]


def wait_levels(settings: Settings, sku: str, **on_hand: int) -> None:
    """Until the published level of ``sku`` shows ``on_hand`` per warehouse: what routing sees."""

    def seen() -> bool:
        levels = [r for t, r in read_topic(settings, "stock.levels") if r["sku"] == sku]
        return bool(levels) and all(levels[-1]["on_hand_by_warehouse"].get(w) == q for w, q in on_hand.items())

    wait_for(seen, what=f"stock level of {sku} showing {on_hand}")


def place_and_pay(producer: EventProducer, channel: str, number: str, lines: list[Any]) -> str:
    key = order_key(channel, number)
    producer.send(ORDER_EVENTS.name, key, "OrderPlaced", ev.order_placed(channel, number, lines))
    producer.send(ORDER_EVENTS.name, key, "PaymentConfirmed", ev.payment_confirmed(channel, number))
    producer.flush()
    return key


def test_routing_picks_the_hand_computed_winner_not_the_nearest(
    make_settings, start_worker, example_warehouses
) -> None:
    settings = make_settings(safety_threshold=0, warehouses_file=example_warehouses)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    for wh, qty in (("WH-SH", 2), ("WH-NJ", 40), ("WH-GZ", 200)):
        stock_up(producer, worker, "SKU-R", qty, wh)
    wait_levels(settings, "SKU-R", **{"WH-SH": 2, "WH-NJ": 40, "WH-GZ": 200})

    order = place_and_pay(producer, "jd", "route-1", [ev.line(1, "SKU-R", 2)])  # to Hangzhou
    decision = wait_for(lambda: records(settings, "routing.decisions", order), what="a routing decision")[0]
    assert decision["assignments"] == [{"warehouse_id": "WH-NJ", "line_nos": [1]}] and not decision["split"]
    assert {c["warehouse_id"]: round(c["score"], 3) for c in decision["candidates"]} == EXAMPLE_SCORES
    assert decision["weights"] == {"distance": 0.4, "sufficiency": 0.3, "on_time": 0.2, "cost": 0.1}
    sh = next(c for c in decision["candidates"] if c["warehouse_id"] == "WH-SH")
    assert (round(sh["distance_km"]), sh["sufficiency"], sh["on_time"]) == (165, 0.0, 0.7)

    wait_for(lambda: worker.get(f"/orders/{order}").get("state") == "routed", what="order routed")
    dispatch = wait_for(lambda: records(settings, "warehouse.dispatch", order), what="dispatch")[0]
    assert dispatch["warehouse_id"] == "WH-NJ" and dispatch["lines"] == [{"line_no": 1, "sku": "SKU-R", "qty": 2}]
    assert dispatch["address"]["city"] == "杭州"
    wait_for(lambda: worker.get("/stock/SKU-R").get("allocated_by_warehouse") == {"WH-NJ": 2}, what="allocation")


def test_an_order_no_warehouse_can_ship_alone_is_split_across_the_fewest(
    make_settings, start_worker, example_warehouses
) -> None:
    settings = make_settings(safety_threshold=0, warehouses_file=example_warehouses)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    stock_up(producer, worker, "SKU-SA", 5, "WH-SH")
    stock_up(producer, worker, "SKU-SB", 5, "WH-GZ")
    stock_up(producer, worker, "SKU-SB", 1, "WH-NJ")
    wait_levels(settings, "SKU-SB", **{"WH-GZ": 5, "WH-NJ": 1})

    order = place_and_pay(producer, "tmall", "split-1", [ev.line(1, "SKU-SA", 2), ev.line(2, "SKU-SB", 3)])
    decision = wait_for(lambda: records(settings, "routing.decisions", order), what="a routing decision")[0]
    assert decision["split"]
    assert decision["assignments"] == [
        {"warehouse_id": "WH-GZ", "line_nos": [2]},
        {"warehouse_id": "WH-SH", "line_nos": [1]},
    ]
    wait_for(lambda: worker.get(f"/orders/{order}").get("state") == "routed", what="order routed")
    dispatches = wait_for(lambda: len(d := records(settings, "warehouse.dispatch", order)) == 2 and d, what="2 pushes")
    assert sorted((d["warehouse_id"], d["split"]) for d in dispatches) == [("WH-GZ", True), ("WH-SH", True)]


class WebhookReceiver:
    """A local stand-in for the WeCom group robot: records every JSON body posted to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                reply = b'{"errcode": 0, "errmsg": "ok"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/cgi-bin/webhook/send?key=test"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def about(self, order_id: str) -> list[str]:
        return [b["markdown"]["content"] for b in self.bodies if order_id in b["markdown"]["content"]]


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.server.shutdown()


def test_paid_and_unrouted_order_raises_one_red_alert_and_one_clearing_message(
    make_settings, start_worker, webhook
) -> None:
    settings = make_settings(
        safety_threshold=0, clock_control=True, webhook_url=webhook.url, sla_unrouted_s=900
    )
    worker = start_worker(settings)
    producer = EventProducer(settings)
    # Two units in the pool, one per warehouse: the order is reserved, but no warehouse can ship
    # its two-unit line alone (a line is never split), so it stays paid and unrouted.
    stock_up(producer, worker, "SKU-F", 1, "WH-SH")
    stock_up(producer, worker, "SKU-F", 1, "WH-GZ")
    order = place_and_pay(producer, "pdd", "late-1", [ev.line(1, "SKU-F", 2)])
    wait_for(lambda: worker.get(f"/orders/{order}").get("state") == "paid", what="order paid")

    advance_clock(producer, 14)
    wait_for(lambda: worker.get(f"/orders/{order}").get("routing", {}).get("attempt", 0) >= 2, what="a retry")
    assert webhook.about(order) == []  # 14 minutes: not yet

    advance_clock(producer, 16)
    red = wait_for(lambda: webhook.about(order), what="the red alert on the webhook",
                   explain=lambda: {"order": worker.get(f"/orders/{order}"), "notifier": worker.get("/notify/status")})
    assert len(red) == 1 and "RED: sla breach" in red[0] and "not pushed to a warehouse" in red[0]
    alerts = [r for t, r in read_topic(settings, "alerts") if r["subject"] == order]
    assert [(a["kind"], a["severity"], a["cleared"]) for a in alerts if a["kind"] == "sla_breach"] == [
        ("sla_breach", "RED", False)
    ]

    stock_up(producer, worker, "SKU-F", 1, "WH-SH")  # the warehouse can now ship both units
    wait_levels(settings, "SKU-F", **{"WH-SH": 2})
    advance_clock(producer, 17)  # the next routing retry is due
    wait_for(lambda: worker.get(f"/orders/{order}").get("state") == "routed", what="order routed")
    assert len(webhook.about(order)) == 1  # pushed but not acknowledged: still waiting, no message yet

    ack = {"event_id": f"ack:{order}", "event_time_ms": ev.now_ms(), "channel": "pdd", "channel_order_id": "late-1",
           "warehouse_id": "WH-SH", "wms_order_id": "W-1"}  # fmt: skip
    producer.send(ORDER_EVENTS.name, order, "WmsAcknowledged", ack)
    producer.send(ORDER_EVENTS.name, order, "WmsAcknowledged", ack)  # the WMS retries
    producer.flush()
    messages = wait_for(lambda: len(m := webhook.about(order)) >= 2 and m, what="the clearing message")
    advance_clock(producer, 40)
    wait_for(lambda: worker.get(f"/orders/{order}").get("sla") == "cleared", what="sla cleared")
    assert len(webhook.about(order)) == 2 and "cleared: sla breach" in messages[1]


# ---- intake over HTTP ---------------------------------------------------------------------------------


class IntakeServer(AppServer):
    """``agents.intake.service`` on a real port, as `stockflow intake` serves it. These tests are about
    the lifecycle, so callbacks go unsigned (development mode); tests/integration/test_intake.py signs."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(Intake(settings.model_copy(update={"intake_allow_unsigned": True})).app(), free_port())

    def post(self, path: str, body: Any) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
        return httpx.post(self.url + path, content=content, headers={"Content-Type": "application/json"}, timeout=30)


@pytest.fixture
def start_intake() -> Iterator[Any]:
    servers: list[IntakeServer] = []

    def start(settings: Settings) -> IntakeServer:
        servers.append(IntakeServer(settings))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def tmall_order(tid: str, **changes: Any) -> dict[str, Any]:
    body = {"tid": tid, "payment": "199.80", "orders": [{"outer_sku_id": "SKU-I", "num": 2, "price": "99.90"}],
            "receiver_state": "浙江省", "receiver_city": "杭州市", "receiver_district": "西湖区",
            "receiver_address": "文三路 90 号"}  # fmt: skip
    body.update(changes)
    return body


def test_intake_refuses_bad_input_precisely_and_accepts_retries_once(make_settings, start_worker, start_intake) -> None:
    settings = make_settings(safety_threshold=0)
    worker = start_worker(settings)
    intake = start_intake(settings)
    stock_up(EventProducer(settings), worker, "SKU-I", 10)

    refusals = {
        "unknown channel": ("/v1/channels/taobao-global/order", tmall_order("B0"), 404, "unknown_channel"),
        "unknown kind": ("/v1/channels/tmall/exchange", tmall_order("B0"), 404, "unknown_event_kind"),
        "malformed JSON": ("/v1/channels/tmall/order", b'{"tid": "B1", ', 400, "malformed_json"),
        "not an object": ("/v1/channels/tmall/order", [1, 2], 400, "not_an_object"),
        "missing field": ("/v1/channels/tmall/order", tmall_order("B2", receiver_city=None), 422, "missing_field"),
        "empty field": ("/v1/channels/tmall/order", tmall_order(" "), 422, "empty_field"),
        "negative amount": ("/v1/channels/tmall/order", tmall_order("B3", payment="-5"), 422, "invalid_amount"),
        "unknown SKU": ("/v1/channels/tmall/order",
                        tmall_order("B4", orders=[{"outer_sku_id": "XYZ-1", "num": 1}]), 422, "unknown_sku"),
        "bad quantity": ("/v1/channels/tmall/order",
                         tmall_order("B5", orders=[{"outer_sku_id": "SKU-I", "num": -1}]), 422, "invalid_qty"),
        "unplaceable address": ("/v1/channels/tmall/order", tmall_order("B6", receiver_state="火星"), 422,
                                "address_unplaceable"),
        "negative payment": ("/v1/channels/tmall/payment", {"tid": "B7", "alipay_no": "a", "payment": -1}, 422,
                             "invalid_amount"),
    }  # fmt: skip
    for what, (path, body, status, code) in refusals.items():
        response = intake.post(path, body)
        assert (response.status_code, response.json()["error"]) == (status, code), what
        assert response.json()["detail"], what
    assert intake.post("/v1/channels/tmall/order", tmall_order("B2", receiver_city=None)).json()["field"] == (
        "receiver_city"
    )

    # Paid before created, as marketplaces do; then the order callback, retried by the channel.
    paid = intake.post(
        "/v1/channels/tmall/payment", {"tid": "EARLY-1", "alipay_no": "2026111122001", "payment": "199.80"}
    )
    assert paid.status_code == 200 and paid.json()["status"] == "accepted"
    first = intake.post("/v1/channels/tmall/order", tmall_order("EARLY-1"))
    again = intake.post("/v1/channels/tmall/order", tmall_order("EARLY-1"))
    assert (first.status_code, first.json()["status"]) == (200, "accepted")
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    assert again.json()["offset"] == first.json()["offset"]

    written = read_topic(settings, ORDER_EVENTS.name)
    assert [t for t, _ in written] == ["PaymentConfirmed", "OrderPlaced"]  # nothing refused was written
    wait_for(lambda: worker.get("/orders/tmall:EARLY-1").get("state") == "routed", what="paid-before-created routed")
    order = worker.get("/orders/tmall:EARLY-1")
    assert order["paid"] and order["stage_times"]["paid"] >= order["stage_times"]["reserved"]


def test_a_multi_line_order_goes_from_intake_to_delivered(make_settings, start_worker, start_intake) -> None:
    settings = make_settings(safety_threshold=0)
    worker = start_worker(settings)
    intake = start_intake(settings)
    producer = EventProducer(settings)
    stock_up(producer, worker, "SKU-L1", 10, "WH-GZ")
    stock_up(producer, worker, "SKU-L2", 10, "WH-GZ")
    wait_levels(settings, "SKU-L2", **{"WH-GZ": 10})

    order = {"order_id": "L-1", "amount_fen": 5000, "customer_id": "c1",
             "lines": [{"line_no": 1, "sku": "SKU-L1", "qty": 1, "unit_price_fen": 2000},
                       {"line_no": 2, "sku": "SKU-L2", "qty": 3, "unit_price_fen": 1000}],
             "address": {"province": "广东省", "city": "深圳市", "district": "南山区", "detail": "科技园"}}  # fmt: skip
    assert intake.post("/v1/channels/own/order", order).status_code == 200
    assert intake.post(
        "/v1/channels/own/payment", {"order_id": "L-1", "payment_id": "P1", "amount_fen": 5000}
    ).is_success
    wait_for(lambda: worker.get("/orders/own:L-1").get("state") == "routed", what="routed")
    wms = {"channel": "own", "channel_order_id": "L-1", "warehouse_id": "WH-GZ", "wms_order_id": "GZ-77"}
    assert intake.post("/v1/wms/ack", wms).status_code == 200
    assert intake.post("/v1/wms/shipment", {**wms, "tracking_no": "SF123"}).status_code == 200
    assert intake.post("/v1/wms/delivery", {"channel": "own", "channel_order_id": "L-1"}).status_code == 200
    wait_for(lambda: worker.get("/orders/own:L-1").get("state") == "delivered", what="delivered")

    states = wait_for(lambda: (s := records(settings, "order.states", "own:L-1")) and s[-1]["state"] == "delivered"
                      and s, what="delivered published")  # fmt: skip
    # Transitions of one batch are published as the newest alone (placed and reserved, say): what is
    # published is the lifecycle in order, and its newest record carries every stage's time.
    lifecycle = ["placed", "reserved", "paid", "routed", "shipped", "delivered"]
    published = [s["state"] for s in states]
    assert published == [state for state in lifecycle if state in published]
    times = states[-1]["stage_times"]
    order_of_stages = ["placed", "reserved", "paid", "routed", "acknowledged", "shipped", "delivered"]
    assert [times[s] for s in order_of_stages] == sorted(times[s] for s in order_of_stages)
    level = wait_for(lambda: (lv := worker.get("/stock/SKU-L2")).get("on_hand") == 7 and lv, what="stock shipped")
    assert level["sold"] == 0 and level["locked"] == 0 and level["allocated_by_warehouse"] == {}
    outcome = [r for _, r in read_topic(settings, "warehouse.performance") if r["order_id"] == "own:L-1"]
    assert [(o["warehouse_id"], o["on_time"]) for o in outcome] == [("WH-GZ", True)]
