"""The HTTP intake on the real broker, over real HTTP on 127.0.0.1: signed callbacks (each channel's
scheme, the WMS token), hostile bodies, repeats and conflicts, stock documents in without code (HTTP
and `stockflow stock receive|count|correct`), the OpenAPI document. What was written is read back
from the topics. The intake's answers to bad input as the lifecycle sees them are in test_lifecycle.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents.channels.platforms import (
    CHANNELS,
    PUSH_EVENTS,
    SETTLEMENT_EVENTS,
    Credentials,
    settlement_body,
    sign_callback,
)
from agents.intake.openapi import router_routes
from agents.intake.secrets import write_secrets
from agents.intake.service import Intake
from streams.contract.topics import ORDER_EVENTS, REFUND_EVENTS, STOCK_ADJUSTMENTS, ensure_topics
from streams.engine.producer import EventProducer
from streams.engine.topicreader import read_all
from streams.settings import Settings
from tests.conftest import free_port
from tests.helpers import AppServer, read_topic, wait_for, wait_stock

pytestmark = pytest.mark.broker

CREDS = {channel: Credentials(f"key-{channel}", f"secret-{channel}-0123456789") for channel in CHANNELS}
WMS_TOKEN = "wms-token-0123456789"
SERVICE_TOKEN = "service-token-0123456789"
ADDRESS = {"province": "广东省", "city": "深圳市", "district": "南山区", "detail": "科技园"}
ORDERS: dict[str, dict[str, Any]] = {
    "tmall": {"tid": "T1", "payment": "10.00", "orders": [{"outer_sku_id": "SKU-T", "num": "1", "price": "10.00"}],
              "receiver_state": "浙江省", "receiver_city": "杭州市", "receiver_district": "西湖区"},
    "jd": {"orderId": 20261111001, "orderPayment": "10.00", "itemInfoList": [{"outerSkuId": "SKU-J", "itemTotal": "1"}],
           "consigneeInfo": {"province": "北京", "city": "北京", "county": "朝阳区"}},
    "douyin": {"order_id": "D1", "pay_amount": 1000, "sku_order_list": [{"out_sku_id": "SKU-D", "item_num": 1}],
               "post_addr": {"province": {"name": "广东"}, "city": {"name": "深圳"}, "town": {"name": "南山区"}}},
    "pdd": {"order_sn": "P1", "pay_amount": "10.00", "item_list": [{"outer_id": "SKU-P", "goods_count": 1}],
            "province": "四川省", "city": "成都市", "town": "武侯区"},
    "kuaishou": {"oid": "K1", "totalFee": 1000, "orderItemList": [{"skuNick": "SKU-K", "num": 1}],
                 "addressInfo": {"province": "上海", "city": "上海", "district": "浦东新区"}},
    "own": {"order_id": "O1", "amount_fen": 1000, "lines": [{"sku": "SKU-O", "qty": 1}], "address": ADDRESS},
}  # fmt: skip


def now_ms() -> int:
    return int(time.time() * 1000)


class IntakeServer(AppServer):
    """``agents.intake.service`` on a real 127.0.0.1 port, with a secrets file of ``creds``."""

    def __init__(self, settings: Settings, creds: dict[str, Credentials], wms_token: str | None) -> None:
        path = write_secrets(settings.home_dir / f"secrets-{free_port()}.toml", creds, wms_token, SERVICE_TOKEN)
        self.settings = settings.model_copy(update={"intake_secrets_file": path})
        self.service = Intake(self.settings)
        super().__init__(self.service.app(), free_port())

    def signed(self, channel: str, kind: str, body: dict[str, Any], creds: Credentials | None = None,
               at_ms: int | None = None, event: str | None = None) -> httpx.Response:  # fmt: skip
        """Post ``body`` as ``channel``'s platform pushes it (event name ``event``, default the platform's for
        the kind), signed with ``creds`` (default: the configured)."""
        event = event or PUSH_EVENTS[channel][kind][0]
        req = sign_callback(channel, creds or CREDS[channel], event, body, at_ms or now_ms())
        return httpx.post(f"{self.url}/v1/channels/{channel}/{kind}", params=dict(req.query), headers=dict(req.headers),
                          content=req.body, timeout=30)  # fmt: skip

    def raw(self, path: str, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(self.url + path, content=content, headers=headers or {}, timeout=30)

    def wms(self, path: str, body: dict[str, Any], token: str | None = WMS_TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.raw(path, json.dumps(body, ensure_ascii=False).encode(), headers)


@pytest.fixture
def start_intake() -> Iterator[Any]:
    servers: list[IntakeServer] = []

    def start(settings: Settings, creds: dict[str, Credentials] = CREDS, wms_token: str | None = WMS_TOKEN,
              **overrides: Any) -> IntakeServer:  # fmt: skip
        ensure_topics(settings)
        servers.append(IntakeServer(settings.model_copy(update=overrides), creds, wms_token))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def refused(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error", "field", "detail"} and body["detail"], body
    return response.status_code, body["error"]


def test_each_channels_signed_callbacks_are_written_and_unsigned_ones_are_401(make_settings, start_intake) -> None:
    settings = make_settings()
    others = {c: creds for c, creds in CREDS.items() if c != "kuaishou"}  # kuaishou: no secret configured
    intake = start_intake(settings, others)
    for channel in others:
        answer = intake.signed(channel, "order", ORDERS[channel])
        assert (answer.status_code, answer.json()["status"]) == (200, "accepted"), (channel, answer.text)

    late = now_ms() - 3_600_000
    attempts = {
        "unsigned": (intake.raw("/v1/channels/own/order", json.dumps(ORDERS["own"]).encode()), "malformed_callback"),
        "wrong secret": (intake.signed("tmall", "payment", {"tid": "T1", "alipay_no": "A", "payment": "10.00"},
                                       Credentials(CREDS["tmall"].app_key, "guessed")), "signature_mismatch"),
        "another app": (intake.signed("pdd", "cancel", {"order_sn": "P1"}, Credentials("k2", CREDS["pdd"].secret)),
                        "app_key_mismatch"),
        "replayed an hour later": (intake.signed("jd", "cancel", {"orderId": "J9"}, at_ms=late), "stale_signature"),
        "no secret for the channel": (intake.signed("kuaishou", "order", ORDERS["kuaishou"]), "no_secret"),
        "WMS without token": (intake.wms("/v1/wms/delivery", {"channel": "own", "channel_order_id": "O1"}, None),
                              "signature_missing"),
        "WMS, wrong token": (intake.wms("/v1/wms/delivery", {"channel": "own", "channel_order_id": "O1"}, "guess"),
                             "signature_mismatch"),
    }  # fmt: skip
    for what, (response, code) in attempts.items():
        assert refused(response) == (401, code), what
    tampered = sign_callback("own", CREDS["own"], "order", ORDERS["own"], now_ms())
    response = intake.raw(
        "/v1/channels/own/order", tampered.body.replace(b'"qty":1', b'"qty":9'), dict(tampered.headers)
    )
    assert refused(response) == (401, "signature_mismatch")
    assert intake.wms("/v1/wms/delivery", {"channel": "own", "channel_order_id": "O1"}).status_code == 200

    written = read_topic(settings, ORDER_EVENTS.name)
    placed = sorted(r["channel"] + ":" + r["channel_order_id"] for t, r in written if t == "OrderPlaced")
    assert placed == ["douyin:D1", "jd:20261111001", "own:O1", "pdd:P1", "tmall:T1"]  # nothing refused was written
    assert [t for t, _ in written if t != "OrderPlaced"] == ["ShipmentDelivered"]
    health = httpx.get(intake.url + "/healthz", timeout=10).json()
    assert health["signed"]["kuaishou"] is False and health["signed"]["tmall"] is True and health["signed"]["wms"]
    assert health["counts"]["refused:signature_mismatch"] == 3


def test_repeats_are_duplicates_changes_are_conflicts_and_a_balance_is_its_own_payment(
    make_settings, start_intake
) -> None:
    settings = make_settings()
    intake = start_intake(settings)
    order = {**ORDERS["own"], "order_id": "R-1", "sent_at_ms": now_ms()}
    first = intake.signed("own", "order", order)
    again = intake.signed("own", "order", {**order, "sent_at_ms": now_ms() + 1})  # the shop retried
    changed = intake.signed("own", "order", {**order, "lines": [{"sku": "SKU-O", "qty": 2}]})
    assert first.json()["status"] == "accepted"
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    assert again.json()["offset"] == first.json()["offset"]
    assert refused(changed) == (409, "conflicting_duplicate") and changed.json()["field"] == "order_id"

    deposit = intake.signed("own", "payment", {"order_id": "R-1", "payment_id": "dep", "amount_fen": 100})
    balance = intake.signed("own", "payment", {"order_id": "R-1", "payment_id": "bal", "amount_fen": 900,
                                               "balance": "true"})  # fmt: skip
    assert (deposit.json()["status"], balance.json()["status"]) == ("accepted", "accepted")
    assert balance.json()["event_id"] == "paid:own:R-1:balance"

    # Twelve copies at once: one is written, the others wait for it and are its duplicates.
    burst = {**order, "order_id": "R-2"}
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: intake.signed("own", "order", burst).json()["status"], range(12)))
    assert sorted(answers) == ["accepted"] + ["duplicate"] * 11

    def rival(qty: int) -> httpx.Response:
        return intake.signed("own", "order", {**order, "order_id": "R-3", "lines": [{"sku": "SKU-O", "qty": qty}]})

    with ThreadPoolExecutor(2) as pool:
        rivals = list(pool.map(rival, (1, 2)))
    assert sorted(r.status_code for r in rivals) == [200, 409]

    ids = [r["event_id"] for _, r in read_topic(settings, ORDER_EVENTS.name)]
    assert sorted(ids) == sorted(["placed:own:R-1", "paid:own:R-1", "paid:own:R-1:balance", "placed:own:R-2",
                                  "placed:own:R-3"])  # fmt: skip


def test_hostile_bodies_get_4xx_never_5xx_and_write_nothing(make_settings, start_intake) -> None:
    settings = make_settings()
    # The own shop unsigned (development) to reach the parser with any bytes; tmall signed.
    intake = start_intake(settings, {"tmall": CREDS["tmall"]}, intake_allow_unsigned=True)
    good = ORDERS["own"]
    hostile_values: list[tuple[str, Any]] = [
        ("sent_at_ms", "yesterday"), ("sent_at_ms", 1e300), ("amount_fen", "NaN"), ("amount_fen", "Infinity"),
        ("amount_fen", -1), ("amount_fen", 10**30), ("amount_fen", [1]), ("presale", "maybe"), ("vip", {}),
        ("order_id", None), ("order_id", ""), ("order_id", "x" * 500), ("order_id", True), ("placed_at_ms", -1),
        ("placed_at_ms", "9999-12-31 00:00:00"), ("address", None), ("address", "广东"), ("lines", []),
        ("lines", None), ("lines", [None]), ("lines", "SKU-O"), ("lines", [{"sku": "SKU-O", "qty": "²"}]),
        ("lines", [{"sku": "SKU-O", "qty": "NaN"}]), ("lines", [{"sku": "SKU-O", "qty": 1.5}]),
        ("lines", [{"sku": "SKU-O", "qty": 10**40}]), ("lines", [{"sku": "S" * 65, "qty": 1}]),
        ("lines", [{"sku": "SKU O", "qty": 1}]), ("lines", [{"sku": "SKU-O", "qty": 1, "line_no": -1}]),
        ("lines", [{"sku": "SKU-O", "qty": 1, "line_no": 1}, {"sku": "SKU-O", "qty": 1, "line_no": 1}]),
        ("lines", [{"sku": "NOT-IN-CATALOGUE", "qty": 1}]),
    ]  # fmt: skip
    statuses = [intake.raw("/v1/channels/own/order", json.dumps({**good, k: v}).encode()).status_code
                for k, v in hostile_values]  # fmt: skip
    hostile_bytes = [b"", b"null", b"[]", b"{", b'{"order_id": NaN}', b"\xff\xfe", b"[" * 5000,
                     b'{"amount_fen": 1' + b"0" * 5000 + b"}", b'"order"']  # fmt: skip
    statuses += [intake.raw("/v1/channels/own/order", raw).status_code for raw in hostile_bytes]
    statuses += [intake.wms("/v1/wms/stock", doc).status_code for doc in (
        {}, {"document_id": "D", "kind": "receipt", "sku": "SKU-O", "warehouse_id": "WH-SH", "qty": "1e3"},
        {"document_id": "D", "kind": "theft", "sku": "SKU-O", "warehouse_id": "WH-SH", "qty": 1},
        {"document_id": "D", "kind": "count", "sku": "SKU-O", "warehouse_id": "WH-SH", "qty": -1},
    )]  # fmt: skip
    statuses += [intake.signed("tmall", "order", {**ORDERS["tmall"], "payment": v}).status_code
                 for v in ("NaN", "1.001", True, None, "一百")]  # fmt: skip
    assert len(statuses) >= 40
    assert all(400 <= s < 500 for s in statuses), statuses
    assert read_topic(settings, ORDER_EVENTS.name) == [] and read_topic(settings, STOCK_ADJUSTMENTS.name) == []


def test_stock_goes_in_without_code_and_a_first_order_can_then_be_taken(
    make_settings, start_worker, start_intake, tmp_path: Path
) -> None:
    settings = make_settings(safety_threshold=0)
    worker = start_worker(settings)
    intake = start_intake(settings)
    receipt = {"document_id": "PO-1", "kind": "receipt", "sku": "SKU-NEW", "warehouse_id": "WH-SH", "qty": "10",
               "reason": "first delivery"}  # fmt: skip
    first = intake.wms("/v1/wms/stock", receipt).json()
    assert {k: first[k] for k in ("status", "event_id", "event_type", "sku")} == {
        "status": "accepted", "event_id": "PO-1", "event_type": "StockAdjusted", "sku": "SKU-NEW"}  # fmt: skip
    assert intake.wms("/v1/wms/stock", receipt).json()["status"] == "duplicate"
    assert refused(intake.wms("/v1/wms/stock", {**receipt, "qty": 11})) == (409, "conflicting_duplicate")
    assert refused(intake.wms("/v1/wms/stock", {**receipt, "warehouse_id": "WH-MARS"})) == (422, "unknown_warehouse")
    assert refused(intake.wms("/v1/wms/stock", {**receipt, "sku": "NOPE-1"})) == (422, "unknown_sku")
    wait_stock(worker, "SKU-NEW", on_hand=10)

    env = {**os.environ, **settings.as_env()}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agents.cli", "stock", *args], env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    assert cli("count", "SKU-NEW", "--warehouse", "WH-SH", "--qty", "7", "--doc", "CNT-1").returncode == 0
    done = cli("correct", "SKU-NEW", "-w", "WH-SH", "--qty", "-2", "--doc", "COR-1", "--reason", "broken box")
    assert done.returncode == 0, done.stdout + done.stderr
    assert cli("correct", "SKU-NEW", "-w", "WH-SH", "--qty", "-2", "--doc", "COR-1").returncode == 0  # again: once
    bad = cli("receive", "SKU-NEW", "-w", "WH-MARS", "--qty", "1", "--doc", "R-X")
    assert bad.returncode == 1 and "unknown_warehouse" in bad.stdout
    assert cli("receive", "SKU-NEW", "-w", "WH-SH", "--qty", "1", "--doc", "R-2").returncode == 0
    # Same SKU, one partition, in order: on-hand 6 means COR-1's repeat was applied as nothing.
    wait_stock(worker, "SKU-NEW", on_hand=6)
    shown = cli("SKU-NEW")  # `stockflow stock SKU` still shows a SKU
    assert shown.returncode == 0 and json.loads(shown.stdout)["on_hand"] == 6

    adjustments = read_all(settings.bootstrap, settings.topic(STOCK_ADJUSTMENTS.name))
    assert {r.key for r in adjustments} == {b"SKU-NEW"}
    documents = [r["event_id"] for t, r in read_topic(settings, STOCK_ADJUSTMENTS.name)]
    assert documents == ["PO-1", "CNT-1", "COR-1", "COR-1", "R-2"]

    placed = intake.signed("own", "order", {**ORDERS["own"], "order_id": "FIRST",
                                            "lines": [{"sku": "SKU-NEW", "qty": 2}]})  # fmt: skip
    assert placed.status_code == 200
    wait_for(lambda: worker.get("/orders/own:FIRST").get("state") == "reserved", what="the first order reserved")


def test_refund_callbacks_the_returns_desk_and_customer_service_write_refund_events(
    make_settings, start_intake
) -> None:
    settings = make_settings()
    intake = start_intake(settings)
    applied = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() + 8 * 3600))  # JD's China time
    requested = {"orderId": "J-100", "refundId": "RF-1", "needReturn": "true", "refundAmount": "99.00",
                 "reason": "no_reason_7d", "applyTime": applied}  # fmt: skip
    assert intake.signed("jd", "refund", requested).json()["status"] == "accepted"
    assert intake.signed("jd", "return_shipped", {"orderId": "J-100", "refundId": "RF-1",
                                                  "expressCode": "JDV0001"}).status_code == 200  # fmt: skip
    received = {"channel": "jd", "channel_order_id": "J-100", "channel_refund_id": "RF-1", "warehouse_id": "WH-SH",
                "qc_done": True, "resellable": True}  # fmt: skip
    assert intake.wms("/v1/wms/return", received).status_code == 200
    assert refused(intake.wms("/v1/wms/return", {**received, "warehouse_id": "WH-MARS"})) == (422, "unknown_warehouse")
    review = {"channel": "jd", "channel_order_id": "J-100", "channel_refund_id": "RF-2", "approved": False,
              "reviewer": "cs-07", "note": "custom-made"}  # fmt: skip
    assert refused(intake.wms("/v1/service/refund_review", review)) == (401, "signature_mismatch")  # the WMS's token
    assert intake.wms("/v1/service/refund_review", review, SERVICE_TOKEN).status_code == 200
    # The marketplace's settlement push, exactly as platforms.settlement_body makes it.
    settled = settlement_body("jd", "RF-1", 9_900, now_ms(), channel_order_id="J-100")
    first = intake.signed("jd", "refund_settled", settled, event=SETTLEMENT_EVENTS["jd"])
    again = intake.signed("jd", "refund_settled", settled, event=SETTLEMENT_EVENTS["jd"])  # the platform retried
    assert (first.json()["status"], again.json()["status"]) == ("accepted", "duplicate")

    written = {r["event_id"]: (t, r) for t, r in read_topic(settings, REFUND_EVENTS.name)}
    assert sorted(written) == ["refund:jd:RF-1", "return-qc:jd:RF-1", "return-shipped:jd:RF-1", "reviewed:jd:RF-2",
                               "settled:jd:RF-1"]  # fmt: skip
    kind, request = written["refund:jd:RF-1"]
    assert (kind, request["kind"], request["amount_fen"]) == ("RefundRequested", "RETURN_AND_REFUND", 9_900)
    assert written["settled:jd:RF-1"][1]["amount_fen"] == 9_900
    keys = {r.key for r in read_all(settings.bootstrap, settings.topic(REFUND_EVENTS.name))}
    assert keys == {b"jd:J-100"}


def test_the_openapi_document_is_served_and_matches_the_routes(make_settings, start_intake) -> None:
    intake = start_intake(make_settings())
    doc = httpx.get(intake.url + "/openapi.json", timeout=10).json()
    assert doc == json.loads(json.dumps(intake.service.openapi_document()))
    served = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert served == router_routes(intake.runner.app)
    assert refused(intake.raw("/v1/channels/taobao-global/order", b"{}")) == (404, "unknown_channel")
    assert refused(intake.raw("/v1/wms/transfer", b"{}")) == (404, "unknown_event_kind")


def test_a_stopped_intake_closes_its_own_client_and_leaves_a_given_one_open(make_settings) -> None:
    settings = make_settings()
    ensure_topics(settings)
    intake = IntakeServer(settings, CREDS, WMS_TOKEN)
    assert intake.raw("/v1/channels/taobao-global/order", b"{}").status_code == 404
    intake.stop()
    # Left open, its client would reconnect for as long as the embedding process lives.
    with pytest.raises(RuntimeError, match="closed"):
        intake.service.producer.poll(0)

    given = EventProducer(make_settings())
    server = AppServer(Intake(make_settings(), producer=given).app(), free_port())
    server.stop()
    assert given.poll(0) >= 0  # still the caller's to use, and to close
    given.close()
