"""Every reason code stockflow gives for refusing something, in one vocabulary.

A reason is part of the contract: it is the ``reason`` of a dead letter (``deadletters``, the
``dead_letters`` table and its dashboard), of a pool answer (``stock.hold-results``, and through
it a rejected order's reason and reservation lines), the ``detail`` of a refused VIP override
(``audit.overrides``; the two ``vip_order_*`` ones the order lifecycle gives, answering the set-aside's
offer) and the ``error`` of an HTTP intake refusal. ``Reason`` is a ``StrEnum``, so
a member is equal to, encodes as and serialises as exactly the string already on the wire, in
ClickHouse and in tests. ``DESCRIPTIONS`` says when each one is used; the README's "Refused input"
section and intake table list the same codes (checked by ``tests/unit/contract/test_reasons.py``).

Codes built from data (``hold_is_<status>``, ``allocated_to_<warehouse>``, ``order_<state>``,
``vip_override:<id>``, and ``<reason>:vip_override:<id>``: a VIP order refusing that override's set-aside) and
internal markers of the pool (``no_hold``, ``no_open_hold``, ``released_before_reserve``) describe a hold's state,
not a refusal, and are not listed here.
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class Reason(enum.StrEnum):
    # ---- unreadable bytes: the codec (``DecodeError``); dead-lettered by the sink --------------
    EMPTY_MESSAGE = "empty_message"
    BAD_HEADER = "bad_header"
    UNKNOWN_FINGERPRINT = "unknown_fingerprint"
    UNKNOWN_SCHEMA_ID = "unknown_schema_id"
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
    ADJUSTMENT_TOO_OLD = "adjustment_too_old"
    COUNT_SUPERSEDED = "count_superseded"
    COUNT_TOO_OLD = "count_too_old"
    UNKNOWN_ORDER = "unknown_order"
    ORDER_NOT_PAYABLE = "order_not_payable"
    ILLEGAL_TRANSITION = "illegal_transition"
    NOT_DISPATCHED = "not_dispatched"
    NOTHING_SHIPPED = "nothing_shipped"
    RECEIPT_QUEUE_FULL = "receipt_queue_full"
    NOT_PRESALE = "not_presale"
    PRECONDITION_MISSING = "precondition_missing"
    UNKNOWN_REFUND = "unknown_refund"
    REFUNDS_ABOVE_ORDER = "refunds_above_order"
    REFUND_BOUND_UNKNOWN = "refund_bound_unknown"
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
    WAREHOUSE_COUNTING = "warehouse_counting"
    HOLD_EXPIRED = "hold_expired"
    # ---- refused VIP overrides (``OverrideAudited.detail``) --------------------------------------
    REASON_REQUIRED = "reason_required"
    REQUESTER_REQUIRED = "requester_required"
    VIP_ORDER_REQUIRED = "vip_order_required"
    UNKNOWN_OVERRIDE = "unknown_override"
    APPROVER_MUST_DIFFER_FROM_REQUESTER = "approver_must_differ_from_requester"
    INSUFFICIENT_LOCKED_STOCK = "insufficient_locked_stock"
    OVERRIDE_ON_HOT_SKU = "override_on_hot_sku"
    VIP_ORDER_ENDED = "vip_order_ended"
    VIP_ORDER_ALREADY_PLACED = "vip_order_already_placed"
    # ---- outbound marketplace calls that failed for good (``connector.failed.<channel>``) --------
    CONNECTOR_CREDENTIALS = "connector_credentials"
    CONNECTOR_REFUSED = "connector_refused"
    CONNECTOR_RETRIES_EXHAUSTED = "connector_retries_exhausted"
    CONNECTOR_IN_DOUBT = "connector_in_doubt"
    # ---- the HTTP intake only (``{"error": code}``) ----------------------------------------------
    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_EVENT_KIND = "unknown_event_kind"
    EMPTY_FIELD = "empty_field"
    INVALID_FIELD_TYPE = "invalid_field_type"
    KAFKA_UNAVAILABLE = "kafka_unavailable"
    FIELD_TOO_LONG = "field_too_long"
    INVALID_SKU = "invalid_sku"
    TIME_OUT_OF_RANGE = "time_out_of_range"
    CONFLICTING_DUPLICATE = "conflicting_duplicate"
    NO_SECRET = "no_secret"
    SIGNATURE_MISSING = "signature_missing"
    MALFORMED_CALLBACK = "malformed_callback"
    APP_KEY_MISMATCH = "app_key_mismatch"
    SIGNATURE_MISMATCH = "signature_mismatch"
    STALE_SIGNATURE = "stale_signature"
    EVENT_MISMATCH = "event_mismatch"
    BODY_TOO_LARGE = "body_too_large"
    METHOD_NOT_ALLOWED = "method_not_allowed"

    @property
    def description(self) -> str:
        """When this reason is given (one line, for the README and the docs)."""
        return DESCRIPTIONS[self]


DESCRIPTIONS: dict[Reason, str] = {
    Reason.EMPTY_MESSAGE: "a message with no value",
    Reason.BAD_HEADER: (
        "the value is neither Avro single-object encoding (C3 01 and an 8-byte fingerprint) nor Schema Registry "
        "framing (byte 0 and a 4-byte schema id), or is shorter than its header"
    ),
    Reason.UNKNOWN_FINGERPRINT: "the writer schema's fingerprint is no schema stockflow has ever published",
    Reason.UNKNOWN_SCHEMA_ID: (
        "a Schema Registry-framed value whose schema id the registry (STOCKFLOW_SCHEMA_REGISTRY_URL) does not know, "
        "whose schema is no stockflow event, or that arrived with no registry configured"
    ),
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
    Reason.ADJUSTMENT_TOO_OLD: (
        "pool: a stock adjustment dated further back than STOCKFLOW_TOMBSTONE_TTL_S, how long applied adjustment "
        "ids are remembered: it could not be told from a document the WMS sent again, so it is not applied"
    ),
    Reason.COUNT_SUPERSEDED: (
        "pool: a stock count taken before the count its warehouse's figure stands on (a WMS sending counts out of "
        "order): it is older news, so it is not applied"
    ),
    Reason.COUNT_TOO_OLD: (
        "pool: a stock count taken before the oldest shelf movement the pool still keeps for its warehouse (its last "
        "48 moments with any, a quarter of a second each): the movements since could not be put back on top of it, "
        "so it is not applied"
    ),
    Reason.UNKNOWN_ORDER: "an event that waited for its order longer than STOCKFLOW_PARKED_GRACE_S",
    Reason.ORDER_NOT_PAYABLE: "a payment for an order that is already finished (rejected, cancelled, ...)",
    Reason.ILLEGAL_TRANSITION: (
        "a cancel, shipment or delivery the order's state does not allow; a refund event its refund's state "
        "does not allow (a settlement before the refund was paid out, a cancel once it is being paid, ...)"
    ),
    Reason.NOT_DISPATCHED: "a WMS acknowledgement for an order not pushed to a warehouse yet",
    Reason.NOTHING_SHIPPED: (
        "a return receipt for a refund-only, or for a refund rejected or withdrawn, whose order never left a "
        "warehouse (cancelled before shipment, or not shipped yet) after it waited STOCKFLOW_PARKED_PAYMENT_GRACE_S "
        "for the order's shipment notice (at once when the refund keeps its most callbacks already): nothing went out, "
        "so nothing goes back on hand (one holding a line not known shipped waits for that line's notice too, then is "
        "taken for the lines that shipped)"
    ),
    Reason.RECEIPT_QUEUE_FULL: (
        "a return receipt for a refund whose earlier receipts wait for its order's shipment notice while it keeps its "
        "most callbacks already: taken ahead of them, a later QC would overtake the first, so it is refused (replay it "
        "once they are taken)"
    ),
    Reason.NOT_PRESALE: (
        "a balance payment (`balance` true) for an order that was not placed as presale: there is no deposit for it "
        "to complete, so it pays nothing"
    ),
    Reason.UNKNOWN_REFUND: "a review, return, settlement or cancel for a refund that was never requested",
    Reason.REFUNDS_ABOVE_ORDER: (
        "a refund approval that would take what the order's approved refunds pay back past what was paid for it"
    ),
    Reason.REFUND_BOUND_UNKNOWN: (
        "a refund approval for an order whose paid amount is not known (never seen, or purged longer ago than "
        "refunds are kept) while its other refunds already pay some of it back"
    ),
    Reason.PRECONDITION_MISSING: (
        "a refund review kept for the channel's precondition (Kuaishou: the return tracking number) when the refund "
        "is let go without it, or one more than are kept for it"
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
    Reason.WAREHOUSE_COUNTING: (
        "the pool refused an allocation for now: a count of the warehouse is being settled across a hot SKU's "
        "buckets (milliseconds unless a bucket lags; at most 5 minutes); the line is routed again a second later, not "
        "counted as a routing attempt"
    ),
    Reason.HOLD_EXPIRED: "an unpaid hold outlived STOCKFLOW_HOLD_TTL_S and was given back by the pool",
    Reason.REASON_REQUIRED: "a VIP override request without a reason",
    Reason.REQUESTER_REQUIRED: "a VIP override request without a requester",
    Reason.VIP_ORDER_REQUIRED: "a VIP override request without the VIP order it is for",
    Reason.UNKNOWN_OVERRIDE: "an approval for an override that was never requested",
    Reason.APPROVER_MUST_DIFFER_FROM_REQUESTER: "an override approved by its own requester (or by nobody)",
    Reason.INSUFFICIENT_LOCKED_STOCK: "an override asking for more than free stock plus unpaid holds",
    Reason.OVERRIDE_ON_HOT_SKU: (
        "an override a hot SKU's home cannot cover while its units are out in buckets: set the SKU cold "
        "(`stockflow stock unhot SKU`), then request and approve a new override (a new id: a refused one stays "
        "refused)"
    ),
    Reason.VIP_ORDER_ENDED: (
        "an override whose VIP order answered the offer of its set-aside as over: rejected, cancelled, timed out "
        "unpaid, shipped or delivered (or cancelled before it arrived), as far as its lifecycle still knows it (an "
        "order whose record was purged after the retention time is not known as ended); no hold was released, "
        "nothing set aside"
    ),
    Reason.VIP_ORDER_ALREADY_PLACED: (
        "an override whose VIP order was placed before it was approved: its lines asked the pool for stock then, "
        "and a set-aside is taken only by a line's first ask; no hold was released, nothing set aside (approve "
        "an override before its VIP order is placed)"
    ),
    Reason.CONNECTOR_CREDENTIALS: (
        "a marketplace call refused for its key: unknown or rotated app key (\"Invalid API Key\"), expired "
        "authorisation, bad signature, or no key set; parked until `stockflow connectors set-key` and a replay"
    ),
    Reason.CONNECTOR_REFUSED: "a marketplace call the platform refused for the request itself (a bad parameter)",
    Reason.CONNECTOR_RETRIES_EXHAUSTED: (
        "a marketplace call that got no usable answer (timeouts, 5xx, rate limit) within "
        "STOCKFLOW_CONNECTOR_RETRY_BUDGET_S, every attempt of it answered as not applied (a rate limit, a stale "
        "timestamp); or a stock figure the platform refused on its own, for now, too often"
    ),
    Reason.CONNECTOR_IN_DOUBT: (
        "a marketplace call that failed for good (out of retries, or refused) after an attempt that went out and "
        "got no answer, a server error or a success nobody could read: the platform may have applied it (a refund "
        "may be paid). Replay it to learn: it carries its idempotency key, so the platform answers 'already "
        "agreed' rather than pay twice; never pay it by hand. A stock call that fails so is sent again by its lane"
    ),
    Reason.MALFORMED_JSON: "intake: the body is not JSON",
    Reason.BODY_TOO_LARGE: "intake: a request body over 1 MiB",
    Reason.METHOD_NOT_ALLOWED: "intake: a route posted to with another method than POST",
    Reason.NOT_AN_OBJECT: "intake: the body is JSON but not an object",
    Reason.UNKNOWN_EVENT_KIND: "intake: no such notification kind for the channel or the WMS",
    Reason.EMPTY_FIELD: "intake: a required field is blank",
    Reason.INVALID_FIELD_TYPE: "intake: a field has the wrong JSON type (text, whole number, time)",
    Reason.KAFKA_UNAVAILABLE: "intake: the broker did not acknowledge the write; retry",
    Reason.FIELD_TOO_LONG: "intake: a text field is longer than intake accepts (ids 128 characters, texts 1024)",
    Reason.INVALID_SKU: (
        "a SKU longer than 64 characters, or with whitespace, control characters or '#' in it (a hot SKU's "
        "buckets are keyed '<sku>#<n>')"
    ),
    Reason.TIME_OUT_OF_RANGE: (
        "intake: a time further in the past than STOCKFLOW_INTAKE_MAX_EVENT_AGE_S "
        "or further ahead than STOCKFLOW_INTAKE_MAX_FUTURE_S"
    ),
    Reason.CONFLICTING_DUPLICATE: (
        "intake: an event id already accepted with different content (the same channel order id and kind, "
        "or the same stock document id); the first stands, the change is not applied"
    ),
    Reason.NO_SECRET: (
        "intake: no callback secret is configured for the channel (or no WMS token) in "
        "STOCKFLOW_INTAKE_SECRETS_FILE, and STOCKFLOW_INTAKE_ALLOW_UNSIGNED is off"
    ),
    Reason.SIGNATURE_MISSING: "intake: a callback without its channel's signature, or a WMS call without the token",
    Reason.MALFORMED_CALLBACK: (
        "intake: a callback lacking a parameter or header its channel's signature scheme needs, "
        "or whose body is not what that scheme signs"
    ),
    Reason.APP_KEY_MISMATCH: "intake: a callback naming another app key than the one configured for its channel",
    Reason.SIGNATURE_MISMATCH: "intake: the signature does not match the channel's secret, or the WMS token is wrong",
    Reason.STALE_SIGNATURE: "intake: the signed timestamp is further from intake's clock than the channel allows",
    Reason.EVENT_MISMATCH: (
        "intake: a callback whose event name (TOP topic, PDD type, Doudian tag, Kwaixiaodian event, the own site's "
        "X-Stockflow-Event) is not one its channel sends for the route's kind: a push replayed to another route"
    ),
}


class Refusal(NamedTuple):
    """Why one input is refused: the code, and a detail for the humans reading the dead letter."""

    reason: Reason
    detail: str
