"""A presale order is paid twice: the deposit, and days later the balance. Tmall says which one a payment
push is with its step trade's status (``step_trade_status``), Douyin with the payment's phase
(``current_phase``, 1 the deposit, 2 the balance). The balance is a payment event of its own, never a
conflicting repeat of the deposit."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from agents.channels.platforms import sign_callback
from agents.intake.mapping import Catalogue, IntakeError, OrderLimits, load_channels
from streams.settings import Settings
from tests.unit.intake.pushes import CREDS, intake, now_ms, post

CHANNELS = load_channels(None, ("tmall", "jd", "douyin", "pdd", "kuaishou", "own"))
LIMITS = OrderLimits.from_settings(Settings())
# (the event, the body) of a presale order's deposit and balance, as each platform pushes them.
PRESALE = {
    "tmall": (
        ("taobao_trade_TradeBuyerStepPay", {"tid": "T-PRE-1", "alipay_no": "2026102022001", "payment": "20.00",
                                            "step_trade_status": "FRONT_PAID_FINAL_NOPAID"}),
        ("taobao_trade_TradeBuyerPay", {"tid": "T-PRE-1", "alipay_no": "2026111122001", "payment": "179.80",
                                        "step_trade_status": "FRONT_PAID_FINAL_PAID"}),
    ),
    "douyin": (
        ("doudian_trade_TradePaid", {"order_id": "D-PRE-1", "channel_payment_no": "PAY-DEP", "pay_amount": 2000,
                                     "current_phase": 1}),
        ("doudian_trade_TradePaid", {"order_id": "D-PRE-1", "channel_payment_no": "PAY-BAL", "pay_amount": 17980,
                                     "current_phase": 2}),
    ),
}  # fmt: skip


@pytest.mark.parametrize("channel", sorted(PRESALE))
def test_a_presale_balance_is_accepted_as_a_payment_of_its_own(tmp_path: Path, channel: str) -> None:
    service, broker = intake(tmp_path)
    route = f"/v1/channels/{channel}/payment"
    answers = []
    for event, body in PRESALE[channel]:
        status, answer = post(service, route, sign_callback(channel, CREDS[channel], event, body, now_ms()))
        assert (status, answer["status"]) == (200, "accepted"), answer
        answers.append(answer)
    order = answers[0]["order_id"]
    assert [a["event_id"] for a in answers] == [f"paid:{order}", f"paid:{order}:balance"]
    deposit, balance = (record for _, _, _, record in broker.written)
    assert (deposit["balance"], balance["balance"]) == (False, True)
    assert balance["amount_fen"] == 17980 and balance["payment_id"] != deposit["payment_id"]
    event, body = PRESALE[channel][1]  # the platform retried the balance
    status, again = post(service, route, sign_callback(channel, CREDS[channel], event, body, now_ms()))
    assert (status, again["status"], again["offset"]) == (200, "duplicate", answers[1]["offset"])


@pytest.mark.parametrize(
    ("channel", "said", "balance"),
    [
        ("tmall", {}, False),  # no step trade: an ordinary payment
        ("tmall", {"step_trade_status": "FRONT_PAID_FINAL_NOPAID"}, False),
        ("tmall", {"step_trade_status": "FRONT_PAID_FINAL_PAID"}, True),
        ("tmall", {"step_trade_status": " FRONT_PAID_FINAL_PAID "}, True),
        ("douyin", {}, False),
        ("douyin", {"current_phase": 1}, False),
        ("douyin", {"current_phase": 2}, True),
        ("douyin", {"current_phase": "2"}, True),
    ],
)  # fmt: skip
def test_the_balance_is_read_from_what_the_platform_says(channel: str, said: dict[str, Any], balance: bool) -> None:
    _, body = PRESALE[channel][0]
    body = {k: v for k, v in body.items() if k not in ("step_trade_status", "current_phase")} | said
    record = CHANNELS[channel].build("payment", body, Catalogue(), LIMITS, now_ms()).record
    assert record["balance"] is balance
    assert record["event_id"].endswith(":balance") is balance


@pytest.mark.parametrize("channel", sorted(PRESALE))
def test_a_status_of_the_wrong_type_is_refused_with_its_path(channel: str) -> None:
    _, body = PRESALE[channel][1]
    path = "step_trade_status" if channel == "tmall" else "current_phase"
    with pytest.raises(IntakeError) as err:
        CHANNELS[channel].build("payment", {**body, path: ["2"]}, Catalogue(), LIMITS, now_ms())
    assert (err.value.reason, err.value.field, err.value.status) == ("invalid_field_type", path, 422)


def test_the_openapi_document_says_which_status_is_the_balance(tmp_path: Path) -> None:
    service, _ = intake(tmp_path)
    schemas = service.openapi_document()["components"]["schemas"]
    assert "FRONT_PAID_FINAL_PAID" in str(schemas["TmallPayment"]["properties"])
    assert "'2'" in str(schemas["DouyinPayment"]["properties"]) or '"2"' in str(schemas["DouyinPayment"]["properties"])


@pytest.mark.parametrize(
    ("table", "complaint"),
    [
        ('balance_when = ["PAID"]\n', "balance_when needs a path for balance"),
        ('balance = "s"\nbalance_when = []\n', "balance_when must list"),
        ('balance = "s"\nbalance_when = [true]\n', "balance_when must list"),
        ('balance = "s"\nbalance_when = "PAID"\n', "balance_when must list"),
        ('amount_when = ["1"]\n', "amount_when: amount is not a flag"),
    ],
)
def test_a_status_flag_that_cannot_work_is_a_start_up_error(tmp_path: Path, table: str, complaint: str) -> None:
    path = tmp_path / "channels.toml"
    path.write_text('[own]\n[own.payment]\nchannel_order_id = "o"\npayment_id = "p"\namount = "a"\n' + table,
                    encoding="utf-8")  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(complaint)):
        load_channels(path, ("own",))
