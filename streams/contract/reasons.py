"""Every reason code stockflow gives for refusing something, in one vocabulary.

A reason is part of the contract: it is the ``reason`` of a dead letter (``deadletters``, the
``dead_letters`` table and its dashboard), of a pool answer (``stock.hold-results``, and through
it a rejected order's reason and reservation lines), the ``detail`` of a refused VIP override
(``audit.overrides``) and the ``error`` of an HTTP intake refusal. ``Reason`` is a ``StrEnum``, so
a member is equal to, encodes as and serialises as exactly the string already on the wire, in
ClickHouse and in tests. ``DESCRIPTIONS`` says when each one is used; the README's "Refused input"
section and intake table list the same codes (checked by ``tests/unit/contract/test_reasons.py``).

Codes built from data (``hold_is_<status>``, ``allocated_to_<warehouse>``, ``order_<state>``,
``vip_override:<id>``) and internal markers of the pool (``no_hold``, ``no_open_hold``,
``released_before_reserve``) describe a hold's state, not a refusal, and are not listed here.
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class Reason(enum.StrEnum):
    # ---- unreadable bytes: the codec (``DecodeError``); dead-lettered by the sink --------------
    EMPTY_MESSAGE = "empty_message"
    BAD_HEADER = "bad_header"
    UNKNOWN_FINGERPRINT = "unknown_fingerprint"
    TRUNCATED = "truncated"
    MALFORMED_BODY = "malformed_body"
    TRAILING_BYTES = "trailing_bytes"
    # ---- readable events ClickHouse cannot hold: dead-lettered by the sink ------------------------
    UNSTORABLE = "unstorable"
    # ---- messages an agent cannot apply: dead letters --------------------------------------------
    KEY_MISMATCH = "key_mismatch"
    MISROUTED_PARTITION = "misrouted_partition"
    UNEXPECTED_EVENT_TYPE = "unexpected_event_type"
    PROCESSING_ERROR = "processing_error"
    INVALID_KIND = "invalid_kind"
    UNKNOWN_WAREHOUSE = "unknown_warehouse"
    UNKNOWN_ORDER = "unknown_order"
    ORDER_NOT_PAYABLE = "order_not_payable"
    ILLEGAL_TRANSITION = "illegal_transition"
    NOT_DISPATCHED = "not_dispatched"
    PRECONDITION_MISSING = "precondition_missing"
    UNKNOWN_REFUND = "unknown_refund"
    # ---- invalid orders: the intake (HTTP 4xx) and the order agent (dead letters) ----------------
    UNKNOWN_CHANNEL = "unknown_channel"
    MISSING_FIELD = "missing_field"
    INVALID_LINES = "invalid_lines"
    INVALID_QTY = "invalid_qty"
    INVALID_AMOUNT = "invalid_amount"
    ADDRESS_UNPLACEABLE = "address_unplaceable"
    UNKNOWN_SKU = "unknown_sku"
    # ---- the stock pool's answers (``HoldDecided.reason``) --------------------------------------
    INSUFFICIENT_STOCK = "insufficient_stock"
    CHANNEL_PAUSED = "channel_paused"
    INSUFFICIENT_PRESALE_STOCK = "insufficient_presale_stock"
    WAREHOUSE_SHORT = "warehouse_short"
    HOLD_EXPIRED = "hold_expired"
    # ---- refused VIP overrides (``OverrideAudited.detail``) --------------------------------------
    REASON_REQUIRED = "reason_required"
    REQUESTER_REQUIRED = "requester_required"
    VIP_ORDER_REQUIRED = "vip_order_required"
    UNKNOWN_OVERRIDE = "unknown_override"
    APPROVER_MUST_DIFFER_FROM_REQUESTER = "approver_must_differ_from_requester"
    INSUFFICIENT_LOCKED_STOCK = "insufficient_locked_stock"
    # ---- the HTTP intake only (``{"error": code}``) ----------------------------------------------
    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_EVENT_KIND = "unknown_event_kind"
    EMPTY_FIELD = "empty_field"
    INVALID_FIELD_TYPE = "invalid_field_type"
    KAFKA_UNAVAILABLE = "kafka_unavailable"

    @property
    def description(self) -> str:
        """When this reason is given (one line, for the README and the docs)."""
        return DESCRIPTIONS[self]


DESCRIPTIONS: dict[Reason, str] = {
    Reason.EMPTY_MESSAGE: "a message with no value",
    Reason.BAD_HEADER: "the value is not Avro single-object encoding (no C3 01 marker, or shorter than the header)",
    Reason.UNKNOWN_FINGERPRINT: "the writer schema's fingerprint is no schema stockflow has ever published",
    Reason.TRUNCATED: "the Avro body ends before the record does",
    Reason.MALFORMED_BODY: "the Avro body does not read as its writer schema says",
    Reason.TRAILING_BYTES: "bytes are left after the record",
    Reason.UNSTORABLE: (
        "the sink cannot store the event in ClickHouse: its event time is outside 2000-01-01..2100-01-01 "
        "(microseconds or seconds instead of milliseconds, say), or ClickHouse refuses a value in it "
        "(type, overflow, parse); the rest of its batch is stored"
    ),
    Reason.KEY_MISMATCH: "the message key is not the record's SKU or order id",
    Reason.MISROUTED_PARTITION: "the key belongs on another partition: produced without the murmur2 partitioner",
    Reason.UNEXPECTED_EVENT_TYPE: "a readable event of a type its topic does not carry",
    Reason.PROCESSING_ERROR: "applying the event raised; it is dead-lettered and the stream goes on",
    Reason.INVALID_KIND: (
        "a stock adjustment whose kind is not RECEIPT, COUNT, CORRECTION or PRESALE_CAP; "
        "a refund that is neither REFUND_ONLY nor RETURN_AND_REFUND"
    ),
    Reason.UNKNOWN_WAREHOUSE: (
        "a stock adjustment for a warehouse not in the warehouses file, "
        "or a WMS acknowledgement from a warehouse the order was not pushed to"
    ),
    Reason.UNKNOWN_ORDER: "an event that waited for its order longer than STOCKFLOW_PARKED_GRACE_S",
    Reason.ORDER_NOT_PAYABLE: "a payment for an order that is already finished (rejected, cancelled, ...)",
    Reason.ILLEGAL_TRANSITION: (
        "a cancel, shipment or delivery the order's state does not allow; a refund event its refund's state "
        "does not allow (a settlement before the refund was paid out, a cancel once it is being paid, ...)"
    ),
    Reason.NOT_DISPATCHED: "a WMS acknowledgement for an order not pushed to a warehouse yet",
    Reason.UNKNOWN_REFUND: "a review, return, settlement or cancel for a refund that was never requested",
    Reason.PRECONDITION_MISSING: (
        "a refund review before the channel's precondition is met (Kuaishou: the return tracking number)"
    ),
    Reason.UNKNOWN_CHANNEL: "an order from a channel not in STOCKFLOW_CHANNELS, or an intake route or body naming one",
    Reason.MISSING_FIELD: "a required field (order id, lines, SKU, address part, ...) is absent",
    Reason.INVALID_LINES: (
        "too many order lines, or line numbers not unique and >= 1; a refund of lines or units its order does not have"
    ),
    Reason.INVALID_QTY: (
        "a quantity out of range: an order line outside 1..STOCKFLOW_MAX_LINE_QTY (intake, order agent, pool), "
        "a stock adjustment of the wrong sign or size, a VIP override of no units"
    ),
    Reason.INVALID_AMOUNT: "a negative or fractional-fen amount or unit price; a refund of nothing",
    Reason.ADDRESS_UNPLACEABLE: "the province is not in the offline centroid table, so the order cannot be routed",
    Reason.UNKNOWN_SKU: "intake: the SKU matches no catalogue pattern; pool: no stock adjustment was ever seen for it",
    Reason.INSUFFICIENT_STOCK: "the pool refused a hold: fewer units available than the line asks for",
    Reason.CHANNEL_PAUSED: "the pool refused a hold: below the safety threshold only the main channel sells",
    Reason.INSUFFICIENT_PRESALE_STOCK: "the pool refused a presale hold: it would exceed the SKU's presale cap",
    Reason.WAREHOUSE_SHORT: "the pool refused an allocation: the chosen warehouse no longer has the units free",
    Reason.HOLD_EXPIRED: "an unpaid hold outlived STOCKFLOW_HOLD_TTL_S and was given back by the pool",
    Reason.REASON_REQUIRED: "a VIP override request without a reason",
    Reason.REQUESTER_REQUIRED: "a VIP override request without a requester",
    Reason.VIP_ORDER_REQUIRED: "a VIP override request without the VIP order it is for",
    Reason.UNKNOWN_OVERRIDE: "an approval for an override that was never requested",
    Reason.APPROVER_MUST_DIFFER_FROM_REQUESTER: "an override approved by its own requester (or by nobody)",
    Reason.INSUFFICIENT_LOCKED_STOCK: "an override asking for more than free stock plus unpaid holds",
    Reason.MALFORMED_JSON: "intake: the body is not JSON",
    Reason.NOT_AN_OBJECT: "intake: the body is JSON but not an object",
    Reason.UNKNOWN_EVENT_KIND: "intake: no such notification kind for the channel or the WMS",
    Reason.EMPTY_FIELD: "intake: a required field is blank",
    Reason.INVALID_FIELD_TYPE: "intake: a field has the wrong JSON type (text, whole number, time)",
    Reason.KAFKA_UNAVAILABLE: "intake: the broker did not acknowledge the write; retry",
}


class Refusal(NamedTuple):
    """Why one input is refused: the code, and a detail for the humans reading the dead letter."""

    reason: Reason
    detail: str
