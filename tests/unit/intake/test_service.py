"""The intake service without a broker or a socket: who may post (each channel's signature scheme,
the WMS token, the development switch), where the notification's JSON is, the secrets file, and the
OpenAPI document against the router."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from agents.channels.platforms import (
    CHANNELS,
    PUSH_EVENTS,
    SETTLEMENT_EVENTS,
    Credentials,
    SignedRequest,
    settlement_body,
    sign_callback,
)
from agents.intake import secrets as secrets_module
from agents.intake.mapping import IntakeError
from agents.intake.openapi import router_routes
from agents.intake.secrets import SecretsFile, load_secrets, write_secrets
from agents.intake.service import Intake
from streams.settings import Settings
from tests.unit.intake import pushes

CREDS = {channel: Credentials(f"key-{channel}", f"secret-{channel}") for channel in CHANNELS}
ORDERS = {
    "tmall": {"tid": "T1", "payment": "10.00", "orders": [{"outer_sku_id": "SKU-1", "num": 1}],
              "receiver_state": "浙江省", "receiver_city": "杭州市", "receiver_district": "西湖区"},
    "jd": {"orderId": "J1", "orderPayment": "10.00", "itemInfoList": [{"outerSkuId": "SKU-1", "itemTotal": "1"}],
           "consigneeInfo": {"province": "北京", "city": "北京", "county": "朝阳区"}},
    "douyin": {"order_id": "D1", "pay_amount": 1000, "sku_order_list": [{"out_sku_id": "SKU-1", "item_num": 1}],
               "post_addr": {"province": {"name": "广东"}, "city": {"name": "深圳"}, "town": {"name": "南山区"}}},
    "pdd": {"order_sn": "P1", "pay_amount": "10.00", "item_list": [{"outer_id": "SKU-1", "goods_count": 1}],
            "province": "四川省", "city": "成都市", "town": "武侯区"},
    "kuaishou": {"oid": "K1", "totalFee": 1000, "orderItemList": [{"skuNick": "SKU-1", "num": 1}],
                 "addressInfo": {"province": "上海", "city": "上海", "district": "浦东新区"}},
    "own": {"order_id": "O1", "amount_fen": 1000, "lines": [{"sku": "SKU-1", "qty": 1}],
            "address": {"province": "广东省", "city": "深圳市", "district": "南山区"}},
}  # fmt: skip


class NoProducer:
    def poll(self, _: float) -> int:
        return 0

    def flush(self, *_: Any) -> int:
        return 0


def intake(tmp_path: Path, **settings: Any) -> Intake:
    path = write_secrets(tmp_path / "secrets.toml", CREDS, "wms-token", "service-token")
    return Intake(Settings(intake_secrets_file=path, **settings), producer=NoProducer())  # type: ignore[arg-type]


def authenticate(service: Intake, signed: SignedRequest, kind: str, raw: bytes | None = None) -> bytes:
    """What the intake reads from a signed request posted to ``kind``'s route (its headers case-insensitive,
    as aiohttp gives them)."""
    headers = CIMultiDict(signed.headers)
    body = signed.body if raw is None else raw
    return service.authenticate_channel(signed.channel, kind, signed.query, headers, body)


def order_push(channel: str, creds: Credentials | None = None, body: dict[str, Any] | None = None,
               at_ms: int | None = None) -> SignedRequest:  # fmt: skip
    """An order push as ``channel`` signs it (its event name for a new order)."""
    event = PUSH_EVENTS[channel]["order"][0]
    return sign_callback(channel, creds or CREDS[channel], event, body or ORDERS[channel], at_ms or now_ms())


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.mark.parametrize("channel", CHANNELS)
def test_a_callback_signed_with_the_channels_secret_is_accepted(tmp_path: Path, channel: str) -> None:
    service = intake(tmp_path)
    body = authenticate(service, order_push(channel), "order")
    mapped = service.channels[channel].build("order", body, service.catalogue, service.limits, now_ms())
    assert mapped.event_type == "OrderPlaced" and mapped.record["lines"][0]["sku"] == "SKU-1"


@pytest.mark.parametrize("channel", CHANNELS)
def test_a_callback_not_signed_as_its_channel_signs_is_refused_401(tmp_path: Path, channel: str) -> None:
    service = intake(tmp_path)
    body = ORDERS[channel]

    def refused(signed: SignedRequest, raw: bytes | None = None) -> str:
        with pytest.raises(IntakeError) as err:
            authenticate(service, signed, "order", raw)
        assert err.value.status == 401 and err.value.detail
        return err.value.reason

    assert refused(order_push(channel, Credentials(CREDS[channel].app_key, "wrong"), body)) == "signature_mismatch"
    assert refused(order_push(channel, Credentials("other-key", CREDS[channel].secret), body)) == "app_key_mismatch"
    good = order_push(channel, body=body)
    assert refused(good, good.body.replace(b"SKU-1", b"SKU-2")) == "signature_mismatch"  # tampered
    unsigned = SignedRequest(channel, "order", "", {}, {"Content-Type": "application/json"}, good.body)
    assert refused(unsigned) in ("signature_missing", "malformed_callback")
    if channel != "douyin":  # Doudian's push signs no time
        assert refused(order_push(channel, body=body, at_ms=now_ms() - 3_600_000)) == "stale_signature"


def test_a_douyin_push_is_read_from_its_envelope(tmp_path: Path) -> None:
    service = intake(tmp_path)
    signed = order_push("douyin")
    assert signed.body.startswith(b"[")
    body = authenticate(service, signed, "order")
    assert service.channels["douyin"].build("order", body, service.catalogue, service.limits, now_ms()).key == (
        "douyin:D1"
    )


def test_a_channel_without_a_secret_is_refused_unless_unsigned_is_allowed(tmp_path: Path) -> None:
    path = write_secrets(tmp_path / "only-own.toml", {"own": CREDS["own"]})
    strict = Intake(Settings(intake_secrets_file=path), producer=NoProducer())  # type: ignore[arg-type]
    with pytest.raises(IntakeError) as err:
        strict.authenticate_channel("tmall", "order", {}, {}, b"{}")
    assert (err.value.reason, err.value.status) == ("no_secret", 401)
    with pytest.raises(IntakeError) as err:
        strict.authenticate_token("wms", {})
    assert (err.value.reason, err.value.status) == ("no_secret", 401)
    dev_settings = Settings(intake_secrets_file=path, intake_allow_unsigned=True)
    dev = Intake(dev_settings, producer=NoProducer())  # type: ignore[arg-type]
    assert dev.authenticate_channel("tmall", "order", {}, {}, b"{}") == b"{}"
    dev.authenticate_token("service", {})
    with pytest.raises(IntakeError) as err:  # a channel with a secret is verified even so
        dev.authenticate_channel("own", "order", {}, {}, b"{}")
    assert err.value.status == 401


@pytest.mark.parametrize(
    ("authorization", "code"),
    [(None, "signature_missing"), ("wms-token", "signature_missing"), ("Bearer nope", "signature_mismatch"),
     ("Basic wms-token", "signature_missing"), ("Bearer wms-token", None), ("bearer wms-token", None)],
)  # fmt: skip
def test_the_wms_posts_with_its_token(tmp_path: Path, authorization: str | None, code: str | None) -> None:
    headers = CIMultiDict({"Authorization": authorization} if authorization else {})
    if code is None:
        intake(tmp_path).authenticate_token("wms", headers)
        return
    with pytest.raises(IntakeError) as err:
        intake(tmp_path).authenticate_token("wms", headers)
    assert (err.value.reason, err.value.status) == (code, 401)


@pytest.mark.parametrize(
    ("channel", "query", "headers"),
    [("tmall", {"app_key": "键", "topic": "t", "timestamp": "2026-01-01 00:00:00", "sign": "x"}, {}),
     ("kuaishou", {"appkey": "你", "event": "x", "timestamp": "1", "sign": "x"}, {}),
     ("own", {}, {"X-Stockflow-Key": "key-own", "X-Stockflow-Timestamp": "1", "X-Stockflow-Signature": "a\udcffb"}),
     ("douyin", {}, {"app-id": "é", "event-sign": "x"})],
)  # fmt: skip
def test_credentials_in_other_scripts_or_undecodable_bytes_are_refused_401(
    tmp_path: Path, channel: str, query: dict[str, str], headers: dict[str, str]
) -> None:
    """Changed on purpose: a non-ASCII app key or an undecodable header byte made the constant-time comparison
    raise, and anyone on the host could make intake answer 500 on every signed route."""
    with pytest.raises(IntakeError) as err:
        intake(tmp_path).authenticate_channel(channel, "order", query, CIMultiDict(headers), b'{"a": 1}')
    assert err.value.status == 401
    with pytest.raises(IntakeError) as err:
        intake(tmp_path).authenticate_token("wms", CIMultiDict({"Authorization": "Bearer \udcff\udcfe"}))
    assert (err.value.reason, err.value.status) == ("signature_mismatch", 401)


DEEP = b'{"a":' + b"[" * 3000 + b"]" * 3000 + b"}"


@pytest.mark.parametrize(
    ("channel", "query", "headers", "body"),
    [("tmall", {"app_key": "key-tmall", "topic": "taobao_trade_TradeCreate", "timestamp": "2026-11-11 00:00:00",
                "sign": "X"}, {}, DEEP),
     ("kuaishou", {"appkey": "key-kuaishou", "event": "kwaishop_order_created", "timestamp": "1", "sign": "X"}, {},
      DEEP),
     ("own", {}, {"X-Stockflow-Key": "key-own", "X-Stockflow-Timestamp": "1", "X-Stockflow-Event": "order",
                  "X-Stockflow-Signature": "x"}, DEEP),
     ("own", {}, {"X-Stockflow-Key": "key-own", "X-Stockflow-Timestamp": str(int(time.time() * 1000)),
                  "X-Stockflow-Event": "ord\udcffer", "X-Stockflow-Signature": "00"}, b'{"order_id": "O1"}'),
     ("douyin", {}, {"app-id": "key-douyin", "event-sign": "x"}, b"[" + DEEP + b"]")],
)  # fmt: skip
def test_a_body_nested_past_the_parsers_depth_or_an_undecodable_event_header_is_refused_401_unsigned(
    tmp_path: Path, channel: str, query: dict[str, str], headers: dict[str, str], body: bytes
) -> None:
    """Failed before: both raised in the signature check (RecursionError, UnicodeEncodeError), so anyone could make
    intake answer 500 on every signed route without a valid signature."""
    with pytest.raises(IntakeError) as err:
        intake(tmp_path).authenticate_channel(channel, "order", query, CIMultiDict(headers), body)
    assert err.value.status == 401


def test_in_development_an_unsigned_douyin_push_is_read_from_its_envelope_or_bare(tmp_path: Path) -> None:
    """Failed before: unsigned, the envelope was taken for the order and refused 400 not_an_object."""
    creds = {c: v for c, v in pushes.CREDS.items() if c != "douyin"}
    path = write_secrets(tmp_path / "secrets.toml", creds, "wms-token", "service-token")
    service = Intake(Settings(intake_secrets_file=path, intake_allow_unsigned=True), producer=pushes.Broker())
    data = orjson.dumps(ORDERS["douyin"])
    envelope = orjson.dumps([{"tag": "doudian_trade_TradeCreate", "msg_id": "m1", "data": data.decode()}])
    for raw in (envelope, data):
        assert service.authenticate_channel("douyin", "order", {}, CIMultiDict(), raw) == data


def test_a_douyin_push_its_signature_check_reads_but_strict_json_does_not_is_refused_400(tmp_path: Path) -> None:
    """Changed on purpose: an envelope with NaN in it passed the signature check (lenient JSON) and then raised."""
    service = intake(tmp_path)
    data = orjson.dumps(ORDERS["douyin"]).decode()
    raw = b'[{"tag": "doudian_trade_TradeCreate", "msg_id": "m3", "x": NaN, "data": ' + orjson.dumps(data) + b"}]"
    creds = CREDS["douyin"]
    sign = hashlib.md5(creds.app_key.encode() + raw + creds.secret.encode()).hexdigest()  # Doudian's scheme
    headers = CIMultiDict({"app-id": creds.app_key, "sign-method": "md5", "Content-Type": "application/json",
                           "event-sign": sign})  # fmt: skip
    with pytest.raises(IntakeError) as err:
        service.authenticate_channel("douyin", "order", {}, headers, raw)
    assert (err.value.reason, err.value.status) == ("malformed_json", 400)


# ---- the secrets file ----------------------------------------------------------------------------


def test_secrets_are_never_shown(tmp_path: Path) -> None:
    loaded = load_secrets(write_secrets(tmp_path / "s.toml", CREDS, "wms-token"), CHANNELS)
    shown = repr(loaded) + str(loaded.channels)
    assert "secret-" not in shown and "wms-token" not in shown and "key-tmall" in shown
    assert loaded.signed(["tmall", "own"]) == {"tmall": True, "own": True, "wms": True, "service": False}
    assert (tmp_path / "s.toml").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("toml", "complaint"),
    [
        ('[taobao]\napp_key = "k"\nsecret = "s"\n', "not a channel"),
        ('[tmall]\napp_key = "k"\n', "needs a non-empty app_key and secret"),
        ('[tmall]\napp_key = "k"\nsecret = ""\n', "needs a non-empty app_key and secret"),
        ("[wms]\n", "non-empty token"),
        ("[service]\ntoken = 7\n", "[service] needs a non-empty token"),
        ('tmall = "k"\n', "must be a [section]"),
    ],
)
def test_a_secrets_file_that_cannot_work_is_a_start_up_error(tmp_path: Path, toml: str, complaint: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(complaint)) as err:
        load_secrets(path, CHANNELS)
    assert '"s"' not in str(err.value)


def test_a_rotated_secret_is_taken_up_without_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secrets_module, "RECHECK_S", 0.0)
    path = write_secrets(tmp_path / "s.toml", {"jd": Credentials("k", "old")})
    live = SecretsFile(path, CHANNELS)
    assert live.current().channels["jd"].secret == "old"
    write_secrets(path, {"jd": Credentials("k", "new-and-longer")})
    assert live.current().channels["jd"].secret == "new-and-longer"
    path.write_text("[jd\n", encoding="utf-8")  # half-written: the last good secrets stay
    assert live.current().channels["jd"].secret == "new-and-longer"
    path.write_text("", encoding="utf-8")  # caught truncated by a tool that rewrites in place: the same
    assert live.current().channels["jd"].secret == "new-and-longer"
    write_secrets(path, {"jd": Credentials("k", "third")})
    assert live.current().channels["jd"].secret == "third" and not list(tmp_path.glob(".s.toml.*"))


# ---- the OpenAPI document ------------------------------------------------------------------------


def test_every_route_is_documented_and_every_documented_route_is_served(tmp_path: Path) -> None:
    service = intake(tmp_path)
    app = service.app()
    doc = service.openapi_document()
    documented = {(method.upper(), path) for path, operations in doc["paths"].items() for method in operations}
    assert router_routes(app) == documented
    for channel, mapping in service.channels.items():
        for kind in mapping.fields:
            assert ("POST", f"/v1/channels/{channel}/{kind}") in documented
    assert {("POST", "/v1/wms/stock"), ("GET", "/openapi.json"), ("GET", "/healthz")} <= documented

    async def undocumented(_: web.Request) -> web.Response:
        return web.Response()

    app.router.add_post("/v1/wms/transfer", undocumented)
    assert router_routes(app) != documented  # a route added beside the declared list is caught


def test_the_document_is_built_from_the_parsing_models(tmp_path: Path) -> None:
    service = intake(tmp_path)
    doc = service.openapi_document()
    assert doc["openapi"].startswith("3.")
    schemas = doc["components"]["schemas"]
    refs: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(doc)
    assert refs and all(ref.removeprefix("#/components/schemas/") in schemas for ref in refs)
    tmall = doc["paths"]["/v1/channels/tmall/order"]["post"]
    assert tmall["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/TmallOrder"}
    model = service.channels["tmall"].parser("order", service.limits).model.model_json_schema()
    assert schemas["TmallOrder"]["required"] == model["required"]
    assert set(schemas["TmallOrder"]["properties"]) == set(model["properties"])
    assert tmall["security"] == [{"tmall": []}] and "tmall" in doc["components"]["securitySchemes"]
    stock = schemas["StockDocument"]
    assert stock["properties"]["kind"]["enum"] == ["correction", "count", "receipt"]
    assert {"409", "401", "422"} <= set(doc["paths"]["/v1/wms/stock"]["post"]["responses"])


# ---- refunds -------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
def test_a_marketplace_settlement_push_is_a_refund_settled(tmp_path: Path, channel: str) -> None:
    """What the simulator (and the marketplace) pushes when a refund's money moved, read by the mapping."""
    service = intake(tmp_path)
    body = settlement_body(channel, "RF-1", 1234, now_ms() - 1000, channel_order_id="ORD-1")
    signed = sign_callback(channel, CREDS[channel], SETTLEMENT_EVENTS[channel], body, now_ms())
    mapped = service.channels[channel].build("refund_settled", authenticate(service, signed, "refund_settled"),
                                             service.catalogue, service.limits, now_ms())  # fmt: skip
    assert (mapped.topic, mapped.key, mapped.event_type) == ("refund.events", f"{channel}:ORD-1", "RefundSettled")
    assert (mapped.record["channel_refund_id"], mapped.record["amount_fen"]) == ("RF-1", 1234)
    assert mapped.record["event_id"] == f"settled:{channel}:RF-1"
    assert abs(mapped.record["event_time_ms"] - (now_ms() - 1000)) < 60_000


def test_the_returns_desk_and_customer_service_post_with_their_tokens(tmp_path: Path) -> None:
    service = intake(tmp_path)
    received = {"channel": "jd", "channel_order_id": "J1", "channel_refund_id": "RF-9", "warehouse_id": "WH-SH",
                "qc_done": "false"}  # fmt: skip
    mapped = service.wms.build("return_received", received, service.catalogue, service.limits, now_ms())
    assert mapped.record["event_id"] == "return-received:jd:RF-9" and not mapped.record["qc_done"]
    checked = service.wms.build("return_received", {**received, "qc_done": True, "resellable": "1"},
                                service.catalogue, service.limits, now_ms()).record  # fmt: skip
    assert (checked["event_id"], checked["resellable"]) == ("return-qc:jd:RF-9", True)
    review = {"channel": "jd", "channel_order_id": "J1", "channel_refund_id": "RF-9", "approved": "yes",
              "reviewer": "cs-07"}  # fmt: skip
    decided = service.service.build("refund_review", review, service.catalogue, service.limits, now_ms())
    assert (decided.topic, decided.record["event_id"], decided.record["approved"]) == (
        "refund.events", "reviewed:jd:RF-9", True)  # fmt: skip
    with pytest.raises(IntakeError) as err:
        service.authenticate_token("service", CIMultiDict({"Authorization": "Bearer wms-token"}))
    assert err.value.reason == "signature_mismatch"  # the WMS's token is not customer service's


def test_a_body_too_large_or_a_wrong_method_is_refused_in_the_refusal_contract(tmp_path: Path) -> None:
    """Changed on purpose: aiohttp answered both in plain text, outside the {"error", "field", "detail"} contract."""
    from aiohttp.test_utils import TestClient, TestServer

    async def ask() -> list[tuple[int, str, str]]:
        client = TestClient(TestServer(intake(tmp_path).app()))
        await client.start_server()
        try:
            answers = []
            for call in (client.post("/v1/wms/stock", data=b"x" * (1 << 21), headers={"Authorization": "Bearer x"}),
                         client.get("/v1/wms/stock")):  # fmt: skip
                response = await call
                answers.append((response.status, response.content_type, (await response.json())["error"]))
            return answers
        finally:
            await client.close()

    assert asyncio.run(ask()) == [(413, "application/json", "body_too_large"),
                                  (405, "application/json", "method_not_allowed")]  # fmt: skip


def test_a_stock_document_older_than_the_pool_remembers_is_refused_at_intake(tmp_path: Path) -> None:
    """Found by review: intake took stock documents up to 30 days old and answered 200, while the pool, which
    remembers adjustment ids for STOCKFLOW_TOMBSTONE_TTL_S (7 days), refused those older: the WMS was told a
    document was taken that never counted."""
    from aiohttp.test_utils import TestClient, TestServer

    day = 86_400_000

    async def post(days_back: int) -> tuple[int, str]:
        service = Intake(Settings(intake_secrets_file=write_secrets(tmp_path / "s.toml", CREDS, "wms-token")),
                         producer=pushes.Broker())  # type: ignore[arg-type]  # fmt: skip
        client = TestClient(TestServer(service.app()))
        await client.start_server()
        try:
            body = {"document_id": f"GRN-{days_back}", "sku": "SKU-1", "warehouse_id": "WH-SH", "kind": "RECEIPT",
                    "qty": 5, "event_time_ms": now_ms() - days_back * day}  # fmt: skip
            response = await client.post("/v1/wms/stock", json=body, headers={"Authorization": "Bearer wms-token"})
            return response.status, (await response.json()).get("error", "")
        finally:
            await client.close()

    assert asyncio.run(post(6)) == (200, "")
    assert asyncio.run(post(8)) == (422, "time_out_of_range")
