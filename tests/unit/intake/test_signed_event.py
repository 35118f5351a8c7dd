"""The event name a marketplace signs into its push (TOP ``topic``, PDD ``type``, Doudian ``tag``,
Kwaixiaodian ``event``, the own site's ``X-Stockflow-Event``) must be one the route's kind arrives as:
a validly signed push replayed to another route - a payment posted as a cancel, a cancel as a delivery,
a settlement as a withdrawal - is refused, not mapped as the wrong event."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from agents.channels import platforms as P
from agents.channels.platforms import CHANNELS, settlement_body, sign_callback
from agents.intake.mapping import load_channels
from agents.intake.secrets import load_secrets, write_secrets
from agents.intake.service import Intake
from loadtest import events as ev
from streams.engine.producer import EventProducer, QueueFull
from streams.settings import Settings
from tests.unit.intake.pushes import CREDS, Broker, intake, now_ms, post

# What each platform names its pushes (Taobao TMC topics and Doudian message names as the platforms
# publish them; JD, Pinduoduo and Kuaishou in their platforms' style, as their settlement push is).
EVENTS = {
    "tmall": {"order": "taobao_trade_TradeCreate", "payment": "taobao_trade_TradeBuyerPay",
              "cancel": "taobao_trade_TradeClose", "delivery": "taobao_trade_TradeSuccess",
              "refund_settled": "taobao_refund_RefundSuccess", "refund_cancelled": "taobao_refund_RefundClosed"},
    "jd": {"order": "jos_order_created", "payment": "jos_order_paid", "cancel": "jos_order_cancelled",
           "delivery": "jos_order_delivered", "refund_settled": "jos_refund_settled",
           "refund_cancelled": "jos_refund_cancelled"},
    "douyin": {"order": "doudian_trade_TradeCreate", "payment": "doudian_trade_TradePaid",
               "cancel": "doudian_trade_TradeCanceled", "delivery": "doudian_trade_TradeSuccess",
               "refund_settled": "doudian_refund_RefundSuccess", "refund_cancelled": "doudian_refund_RefundClosed"},
    "pdd": {"order": "pdd_trade_TradeCreate", "payment": "pdd_trade_TradeBuyerPay", "cancel": "pdd_trade_TradeClose",
            "delivery": "pdd_trade_TradeSuccess", "refund_settled": "pdd_refund_RefundSuccess",
            "refund_cancelled": "pdd_refund_RefundClosed"},
    "kuaishou": {"order": "kwaishop_order_created", "payment": "kwaishop_order_paid",
                 "cancel": "kwaishop_order_cancelled", "delivery": "kwaishop_order_delivered",
                 "refund_settled": "kwaishop_refund_settled", "refund_cancelled": "kwaishop_refund_cancelled"},
    "own": {"order": "order", "payment": "payment", "cancel": "cancel", "delivery": "delivery",
            "refund_settled": "refund.settled", "refund_cancelled": "refund_cancelled"},
}  # fmt: skip
ORDER_IDS = {"tmall": "tid", "jd": "orderId", "douyin": "order_id", "pdd": "order_sn", "kuaishou": "oid",
             "own": "order_id"}  # fmt: skip
PAYMENTS = {
    "tmall": {"tid": "T1", "alipay_no": "A1", "payment": "10.00"},
    "jd": {"orderId": "J1", "payNo": "A1", "orderPayment": "10.00"},
    "douyin": {"order_id": "D1", "channel_payment_no": "A1", "pay_amount": 1000},
    "pdd": {"order_sn": "P1", "pay_no": "A1", "pay_amount": "10.00"},
    "kuaishou": {"oid": "K1", "payNo": "A1", "totalFee": 1000},
    "own": {"order_id": "O1", "payment_id": "A1", "amount_fen": 1000},
}


def body(channel: str, kind: str) -> dict[str, Any]:
    """A body of ``kind`` that the routes below would parse too (they need no more than its ids)."""
    if kind == "payment":
        return PAYMENTS[channel]
    if kind == "refund_settled":
        return settlement_body(channel, "RF-1", 1234, now_ms() - 1000, channel_order_id="ORD-1")
    return {ORDER_IDS[channel]: f"{channel.upper()}-9"}


# A payment replayed as a cancel would cancel a paid order; a cancel as a delivery would mark it delivered;
# a settlement as a withdrawal would close a refund that was paid out. Each body parses on the other route.
REPLAYS = [("payment", "cancel"), ("cancel", "delivery"), ("refund_settled", "refund_cancelled")]


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize(("signed_as", "route"), REPLAYS, ids=[f"{a}-to-{b}" for a, b in REPLAYS])
def test_a_push_replayed_to_another_route_is_refused_as_an_event_mismatch(
    tmp_path: Path, channel: str, signed_as: str, route: str
) -> None:
    service, broker = intake(tmp_path)
    signed = sign_callback(channel, CREDS[channel], EVENTS[channel][signed_as], body(channel, signed_as), now_ms())
    status, answer = post(service, f"/v1/channels/{channel}/{route}", signed)
    assert (status, answer["error"]) == (422, "event_mismatch"), answer
    assert EVENTS[channel][signed_as] in answer["detail"] and route in answer["detail"]
    assert broker.written == []
    assert service.counts == {"refused:event_mismatch": 1}


@pytest.mark.parametrize("channel", CHANNELS)
def test_a_push_signed_as_its_routes_event_is_accepted(tmp_path: Path, channel: str) -> None:
    service, broker = intake(tmp_path)
    for kind, event_type in (("payment", "PaymentConfirmed"), ("cancel", "OrderCancelled"),
                             ("refund_settled", "RefundSettled")):  # fmt: skip
        signed = sign_callback(channel, CREDS[channel], EVENTS[channel][kind], body(channel, kind), now_ms())
        status, answer = post(service, f"/v1/channels/{channel}/{kind}", signed)
        assert (status, answer["status"], answer["event_type"]) == (200, "accepted", event_type), answer
    assert [event_type for _, _, event_type, _ in broker.written] == [
        "PaymentConfirmed", "OrderCancelled", "RefundSettled"]  # fmt: skip


def test_a_push_naming_no_event_is_refused(tmp_path: Path) -> None:
    """The own site's event header is not part of its signature: without it, nothing says what was sent."""
    service, broker = intake(tmp_path)
    signed = sign_callback("own", CREDS["own"], "", PAYMENTS["own"], now_ms())
    status, answer = post(service, "/v1/channels/own/payment", signed)
    assert (status, answer["error"]) == (422, "event_mismatch") and broker.written == []


def test_the_platforms_table_names_what_each_platform_sends() -> None:
    for channel, kinds in EVENTS.items():
        for kind, event in kinds.items():
            assert P.PUSH_EVENTS[channel][kind][0] == event, (channel, kind)
        assert P.SETTLEMENT_EVENTS[channel] == kinds["refund_settled"]


def test_every_route_of_a_signed_channel_has_its_events_and_no_event_is_two_kinds() -> None:
    channels = load_channels(None, CHANNELS)
    for channel, mapping in channels.items():
        named: dict[str, str] = {}
        for kind in mapping.fields:
            events = P.PUSH_EVENTS[channel][kind]
            assert events and all(events), (channel, kind)
            for event in events:
                assert named.setdefault(event, kind) == kind, f"{channel}: {event} names {named[event]} and {kind}"


def test_a_route_for_a_kind_the_platform_never_pushes_is_a_start_up_error(tmp_path: Path) -> None:
    path = tmp_path / "channels.toml"
    path.write_text('[tmall]\n[tmall.wms_ack]\nchannel_order_id = "tid"\nwarehouse_id = "store"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape("tmall pushes no wms_ack notification")):
        Intake(Settings(channels_file=path), producer=Broker())  # type: ignore[arg-type]


def test_an_unsigned_development_channel_has_no_event_to_check(tmp_path: Path) -> None:
    """Nothing is signed on a channel without a secret in development, so there is nothing to hold the route to."""
    service = Intake(Settings(intake_allow_unsigned=True), producer=Broker())  # type: ignore[arg-type]
    assert service.authenticate_channel("tmall", "cancel", {"topic": "taobao_trade_TradeBuyerPay"}, {}, b"{}") == (
        b"{}"
    )


def test_what_an_authenticated_caller_sent_and_intake_refused_is_dead_lettered_with_its_body(tmp_path: Path) -> None:
    """Changed on purpose: a refusal wrote nothing anywhere, so a validly signed order intake could not take (a
    SKU the catalogue lacks, say) was gone once the marketplace stopped retrying."""
    service, broker = intake(tmp_path)
    order = {"order_id": "O9", "amount_fen": 1000, "lines": [{"sku": "NOT A SKU", "qty": 1}],
             "address": {"province": "广东省", "city": "深圳市", "district": "南山区"}}  # fmt: skip
    signed = sign_callback("own", CREDS["own"], EVENTS["own"]["order"], order, now_ms())
    for _ in range(2):  # the marketplace retries: one dead letter's id
        status, answer = post(service, "/v1/channels/own/order", signed)
        assert status == 422 and answer["error"] in ("invalid_sku", "unknown_sku")
    assert broker.written == [] and len({d["event_id"] for d in broker.dead_letters}) == 1
    letter = broker.dead_letters[0]
    assert (letter["source_topic"], letter["source_partition"], letter["reason"], letter["original_key"]) == (
        "http:/v1/channels/own/order", 0, answer["error"], b"own")  # fmt: skip
    assert letter["original_value"] == signed.body and letter["source_offset"] == -1
    forged = sign_callback("own", P.Credentials("key-own", "not-the-secret"), EVENTS["own"]["order"], order, now_ms())
    assert post(service, "/v1/channels/own/order", forged)[0] == 401
    assert len(broker.dead_letters) == 2  # the forgery is refused and not kept: anyone could send one


@pytest.mark.parametrize("channel", CHANNELS)
def test_during_a_key_rotation_a_push_signed_with_either_secret_is_accepted(tmp_path: Path, channel: str) -> None:
    """Changed on purpose: intake held one secret a channel, so from the moment the marketplace signed with its
    new key until the file changed (or, written early, from then until the marketplace switched) every push was
    refused 401, and lost for good once its retries ran out."""
    old = CREDS[channel]
    new = P.Credentials(old.app_key, f"rotated-{channel}")
    path = write_secrets(tmp_path / "secrets.toml", {channel: new}, previous={channel: old.secret})
    broker = Broker()
    service = Intake(Settings(intake_secrets_file=path), producer=broker)  # type: ignore[arg-type]
    for creds in (old, new):
        signed = sign_callback(channel, creds, EVENTS[channel]["cancel"], body(channel, "cancel"), now_ms())
        assert post(service, f"/v1/channels/{channel}/cancel", signed)[0] == 200
    stranger = P.Credentials(old.app_key, "never-configured")
    signed = sign_callback(channel, stranger, EVENTS[channel]["cancel"], body(channel, "cancel"), now_ms())
    status, answer = post(service, f"/v1/channels/{channel}/cancel", signed)
    assert (status, answer["error"]) == (401, "signature_mismatch")
    assert "rotated" not in repr(load_secrets(path, CHANNELS)) and old.secret not in repr(load_secrets(path, CHANNELS))


def test_with_the_queue_to_kafka_full_a_push_is_answered_503_at_once(tmp_path: Path) -> None:
    """Changed on purpose: with the broker away long enough to fill the producer's queue, intake waited for room
    on its event loop, and every route, the health checks too, stopped answering until the broker was back."""
    path = write_secrets(tmp_path / "secrets.toml", CREDS)
    settings = Settings(intake_secrets_file=path, kafka_bootstrap="127.0.0.1:1")  # nothing listens there
    producer = EventProducer(settings, None, **{"queue.buffering.max.messages": 1, "message.timeout.ms": 600_000,
                                                "log_level": 0})  # fmt: skip
    try:
        producer.send_raw("order.events", "own:O0", b"fills the queue")
        with pytest.raises(QueueFull):
            producer.send_with_callback("order.events", "own:O1", "PaymentConfirmed", ev.payment_confirmed("own", "O1"),
                                        print, wait=False)  # fmt: skip
        service = Intake(settings, producer=producer)
        signed = sign_callback("own", CREDS["own"], EVENTS["own"]["payment"], PAYMENTS["own"], now_ms())
        status, answer = post(service, "/v1/channels/own/payment", signed)
        assert (status, answer["error"]) == (503, "kafka_unavailable")
    finally:
        producer._producer.purge()  # noqa: SLF001 - nothing is to reach a broker that is not there
        producer._producer.flush(0)  # noqa: SLF001
        del producer  # its threads stop now, not at the collector's leisure, and stop dialling 127.0.0.1:1
