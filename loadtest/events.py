"""Builders of well-formed input events, as a channel connector or WMS would send them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from streams.contract.keys import order_key
from streams.contract.records import (
    Address,
    OrderCancelled,
    OrderLine,
    OrderPlaced,
    PaymentConfirmed,
    RefundCancelled,
    RefundLine,
    RefundRequested,
    RefundReviewed,
    RefundSettled,
    ReturnReceived,
    ReturnShipped,
    ShipmentDelivered,
    ShipmentDispatched,
    StockAdjusted,
)

DEFAULT_ADDRESS = Address(province="浙江", city="杭州", district="西湖区", detail="文三路 90 号 3 幢 501")


def now_ms() -> int:
    return int(time.time() * 1000)


DEFAULT_PRICE_FEN = 9900


def line(line_no: int, sku: str, qty: int, price_fen: int = DEFAULT_PRICE_FEN) -> OrderLine:
    return OrderLine(line_no=line_no, sku=sku, qty=qty, unit_price_fen=price_fen, custom=False, bundle=False)


def order_placed(
    channel: str,
    channel_order_id: str,
    lines: Sequence[OrderLine],
    *,
    presale: bool = False,
    vip: bool = False,
    address: Address = DEFAULT_ADDRESS,
    event_time_ms: int | None = None,
    sent_at_ms: int = 0,
) -> OrderPlaced:
    return OrderPlaced(
        event_id=f"placed:{order_key(channel, channel_order_id)}",
        event_time_ms=event_time_ms or now_ms(),
        channel=channel,
        channel_order_id=channel_order_id,
        customer_id=f"c-{channel_order_id}",
        lines=list(lines),
        address=address,
        amount_fen=sum(ln["qty"] * ln["unit_price_fen"] for ln in lines),
        coupon_type="",
        presale=presale,
        vip=vip,
        sent_at_ms=sent_at_ms,
    )


# A presale's deposit: this share of its price; the balance pays the rest.
DEPOSIT_SHARE = 0.2


def payment_fen(lines: Sequence[tuple[str, int]], presale: bool, balance: bool) -> int:
    """What a payment of an order of ``lines`` (SKU, qty) at the default price pays: the price, or a presale's
    deposit or balance. Refunds are bounded by what was paid, so a run must pay what it orders."""
    price = sum(qty * DEFAULT_PRICE_FEN for _, qty in lines)
    if not presale:
        return price
    deposit = int(price * DEPOSIT_SHARE)
    return price - deposit if balance else deposit


def payment_confirmed(channel: str, channel_order_id: str, amount_fen: int = 0) -> PaymentConfirmed:
    return PaymentConfirmed(
        event_id=f"paid:{order_key(channel, channel_order_id)}",
        event_time_ms=now_ms(),
        channel=channel,
        channel_order_id=channel_order_id,
        payment_id=f"pay-{channel_order_id}",
        amount_fen=amount_fen,
        balance=False,
    )


def order_cancelled(channel: str, channel_order_id: str, reason: str = "buyer") -> OrderCancelled:
    return OrderCancelled(
        event_id=f"cancel:{order_key(channel, channel_order_id)}",
        event_time_ms=now_ms(),
        channel=channel,
        channel_order_id=channel_order_id,
        reason=reason,
    )


def shipment_dispatched(channel: str, channel_order_id: str, warehouse_id: str) -> ShipmentDispatched:
    return ShipmentDispatched(
        event_id=f"shipped:{order_key(channel, channel_order_id)}",
        event_time_ms=now_ms(),
        channel=channel,
        channel_order_id=channel_order_id,
        warehouse_id=warehouse_id,
        tracking_no=f"SF{channel_order_id}",
    )


def shipment_delivered(channel: str, channel_order_id: str) -> ShipmentDelivered:
    return ShipmentDelivered(
        event_id=f"delivered:{order_key(channel, channel_order_id)}",
        event_time_ms=now_ms(),
        channel=channel,
        channel_order_id=channel_order_id,
    )


def stock_adjusted(
    sku: str, warehouse_id: str, qty: int, kind: str = "RECEIPT", adjustment_id: str | None = None
) -> StockAdjusted:
    return StockAdjusted(
        event_id=adjustment_id or f"adj-{uuid.uuid4().hex}",
        event_time_ms=now_ms(),
        sku=sku,
        warehouse_id=warehouse_id,
        kind=kind,
        qty=qty,
        reason="",
    )


# ---- refunds: what a channel, customer service and the returns desk send -----------------------------
def refund_requested(  # noqa: PLR0913 - a request's fields, all keyword after the ids
    channel: str, channel_order_id: str, refund_id: str, amount_fen: int, *, kind: str = "RETURN_AND_REFUND",
    lines: Sequence[RefundLine] = (), tracking_no: str = "",
    event_time_ms: int | None = None, sent_at_ms: int = 0,
) -> RefundRequested:  # fmt: skip
    return RefundRequested(event_id=f"refund:{channel}:{refund_id}", event_time_ms=event_time_ms or now_ms(),
                           channel=channel, channel_order_id=channel_order_id,
 channel_refund_id=refund_id, kind=kind, amount_fen=amount_fen,
                           reason="no_reason_7d", lines=list(lines), tracking_no=tracking_no,
                           sent_at_ms=sent_at_ms)  # fmt: skip


def refund_reviewed(channel: str, channel_order_id: str, refund_id: str, approved: bool,
                    reviewer: str = "cs-01") -> RefundReviewed:  # fmt: skip
    return RefundReviewed(event_id=f"reviewed:{channel}:{refund_id}", event_time_ms=now_ms(),
                          channel=channel, channel_order_id=channel_order_id,
 channel_refund_id=refund_id, approved=approved, reviewer=reviewer,
                          note="")  # fmt: skip


def return_shipped(channel: str, channel_order_id: str, refund_id: str, tracking_no: str = "") -> ReturnShipped:
    return ReturnShipped(event_id=f"return-shipped:{channel}:{refund_id}", event_time_ms=now_ms(),
                         channel=channel, channel_order_id=channel_order_id,
 channel_refund_id=refund_id,
                         tracking_no=tracking_no or f"YT{refund_id}", carrier="yto")  # fmt: skip


def return_received(channel: str, channel_order_id: str, refund_id: str, warehouse_id: str, *,
                    resellable: bool = True, qc_done: bool = True) -> ReturnReceived:  # fmt: skip
    step = "qc" if qc_done else "received"
    return ReturnReceived(event_id=f"return-{step}:{channel}:{refund_id}", event_time_ms=now_ms(),
                          channel=channel, channel_order_id=channel_order_id,
 channel_refund_id=refund_id, warehouse_id=warehouse_id,
                          qc_done=qc_done, resellable=resellable, qc_note="")  # fmt: skip


def refund_settled(channel: str, channel_order_id: str, refund_id: str, amount_fen: int) -> RefundSettled:
    return RefundSettled(event_id=f"settled:{channel}:{refund_id}", event_time_ms=now_ms(),
                         channel=channel, channel_order_id=channel_order_id,
 channel_refund_id=refund_id, amount_fen=amount_fen,
                         settlement_id=f"st-{refund_id}")  # fmt: skip


def refund_cancelled(channel: str, channel_order_id: str, refund_id: str) -> RefundCancelled:
    return RefundCancelled(event_id=f"refund-cancelled:{channel}:{refund_id}", event_time_ms=now_ms(),
                           channel=channel, channel_order_id=channel_order_id,
 channel_refund_id=refund_id, by="buyer",
                           reason="changed mind")  # fmt: skip
