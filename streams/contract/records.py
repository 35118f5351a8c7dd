"""Typed shapes of every event, one TypedDict per schema file in ``schemas/``.

Events travel as plain dicts (what fastavro reads and writes without conversion); these types let
mypy check the fields each agent touches. Field meanings are documented in the ``.avsc`` files.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class OrderLine(TypedDict):
    line_no: int
    sku: str
    qty: int
    unit_price_fen: int
    custom: bool
    bundle: bool


class Address(TypedDict):
    province: str
    city: str
    district: str
    detail: str


class OrderPlaced(TypedDict):
    event_id: str
    event_time_ms: int
    channel: str
    channel_order_id: str
    customer_id: str
    lines: list[OrderLine]
    address: Address
    amount_fen: int
    coupon_type: str
    presale: bool
    vip: bool
    sent_at_ms: int


class PaymentConfirmed(TypedDict):
    event_id: str
    event_time_ms: int
    channel: str
    channel_order_id: str
    payment_id: str
    amount_fen: int
    balance: bool


class PaymentFailed(TypedDict):
    event_id: str
    event_time_ms: int
    channel: str
    channel_order_id: str
    reason: str


class OrderCancelled(TypedDict):
    event_id: str
    event_time_ms: int
    channel: str
    channel_order_id: str
    reason: str
    paid_fen_seen: NotRequired[int]  # a refund-only's cancel: what was paid when it was decided; 0/absent: unsaid


class StockAdjusted(TypedDict):
    event_id: str
    event_time_ms: int
    sku: str
    warehouse_id: str
    kind: str  # RECEIPT | COUNT | CORRECTION | PRESALE_CAP
    qty: int
    reason: str


class ShipmentDispatched(TypedDict):
    event_id: str
    event_time_ms: int
    channel: str
    channel_order_id: str
    warehouse_id: str
    tracking_no: str


class ShipmentDelivered(TypedDict):
    event_id: str
    event_time_ms: int
    channel: str
    channel_order_id: str


class HoldCommand(TypedDict):
    event_id: str
    event_time_ms: int
    action: str  # RESERVE | RELEASE | COMMIT | SHIP | EXPIRE | ALLOCATE
    order_id: str
    line_no: int
    sku: str
    qty: int
    channel: str
    presale: bool
    expires_at_ms: int
    reason: str
    source_time_ms: int
    warehouse_id: str
    bucket: NotRequired[int]  # a hot SKU's bucket (key '<sku>#<bucket>'); -1 or absent: the home
    tries: NotRequired[int]  # RESERVE: buckets that passed it on already
    followed: NotRequired[bool]  # SHIP: sent along the line's way by the home already


class HoldDecided(TypedDict):
    event_id: str
    event_time_ms: int
    order_id: str
    line_no: int
    sku: str
    qty: int
    action: str
    outcome: str  # HELD | REFUSED | RELEASED | COMMITTED | SHIPPED | EXPIRED | IGNORED | ALLOCATED | OFFERED (line 0)
    reason: str
    source_time_ms: int
    bucket: NotRequired[int]  # the hot SKU's bucket that answered (and holds the line); -1: the home


class LineDecision(TypedDict):
    line_no: int
    sku: str
    qty: int
    outcome: str
    reason: str


class ReservationDecided(TypedDict):
    event_id: str
    event_time_ms: int
    order_id: str
    channel: str
    outcome: str  # RESERVED | REJECTED
    lines: list[LineDecision]
    placed_at_ms: int
    sent_at_ms: int


class OrderStateChanged(TypedDict):
    event_id: str
    event_time_ms: int
    order_id: str
    channel: str
    state: str
    previous_state: str
    reason: str
    warehouse_id: str
    stage_times: dict[str, int]


class OrderHealthScored(TypedDict):
    event_id: str
    event_time_ms: int
    order_id: str
    channel: str
    customer_id: str
    score: float
    focus: bool
    focus_below: float
    breakdown: dict[str, float]
    weights: dict[str, float]
    notes: list[str]
    paid_after_ms: int
    returns: int


class StockLevel(TypedDict):
    event_id: str
    event_time_ms: int
    sku: str
    on_hand: int
    locked: int
    presale_reserved: int
    presale_cap: int
    sold: int
    available: int
    paused: bool
    sellable: dict[str, int]
    on_hand_by_warehouse: dict[str, int]
    allocated_by_warehouse: dict[str, int]
    newest_change_ms: int
    newest_source_ms: int


class Assignment(TypedDict):
    warehouse_id: str
    line_nos: list[int]


class CandidateScore(TypedDict):
    warehouse_id: str
    distance_km: float
    distance: float
    sufficiency: float
    on_time: float
    cost: float
    score: float


class RoutingDecision(TypedDict):
    event_id: str
    event_time_ms: int
    order_id: str
    channel: str
    split: bool
    assignments: list[Assignment]
    candidates: list[CandidateScore]
    weights: dict[str, float]


class Alert(TypedDict):
    event_id: str
    event_time_ms: int
    kind: str
    severity: str  # INFO | WARNING | RED
    subject: str
    message: str
    cleared: bool
    details: dict[str, str]


class DeadLetter(TypedDict):
    event_id: str
    event_time_ms: int
    source_topic: str
    source_partition: int
    source_offset: int
    stage: str
    reason: str
    detail: str
    original_key: bytes | None
    original_value: bytes | None


class VipOverride(TypedDict):
    event_id: str
    event_time_ms: int
    override_id: str
    action: str  # REQUEST | APPROVE
    sku: str
    qty: int
    vip_order_id: str
    operator: str
    reason: str


class OverrideAudited(TypedDict):
    event_id: str
    event_time_ms: int
    override_id: str
    outcome: str  # REQUESTED | OFFERED | APPLIED | REFUSED
    sku: str
    qty: int
    vip_order_id: str
    requester: str
    approver: str
    reason: str
    released_holds: list[str]
    detail: str


class ClockAdvanced(TypedDict):
    event_id: str
    event_time_ms: int
    offset_ms: int


class WmsAcknowledged(TypedDict):
    event_id: str
    event_time_ms: int
    channel: str
    channel_order_id: str
    warehouse_id: str
    wms_order_id: str


class DispatchLine(TypedDict):
    line_no: int
    sku: str
    qty: int


class WarehouseDispatched(TypedDict):
    event_id: str
    event_time_ms: int
    order_id: str
    channel: str
    channel_order_id: str
    warehouse_id: str
    lines: list[DispatchLine]
    address: dict[str, str]
    promised_ship_by_ms: int
    split: bool
    action: str  # DISPATCH | CANCEL


class ShipmentOutcome(TypedDict):
    event_id: str
    event_time_ms: int
    order_id: str
    warehouse_id: str
    on_time: bool
    promised_ship_by_ms: int
    shipped_ms: int


class RefundLine(TypedDict):
    line_no: int
    sku: str
    qty: int


class RefundRequested(TypedDict):
    event_id: str
    event_time_ms: int
    channel: str
    channel_order_id: str
    channel_refund_id: str
    kind: str
    amount_fen: int
    reason: str
    lines: list[RefundLine]
    tracking_no: str
    sent_at_ms: int


class RefundReviewed(TypedDict):
    event_id: str
    event_time_ms: int
    channel: str
    channel_order_id: str
    channel_refund_id: str
    approved: bool
    reviewer: str
    note: str


class ReturnShipped(TypedDict):
    event_id: str
    event_time_ms: int
    channel: str
    channel_order_id: str
    channel_refund_id: str
    tracking_no: str
    carrier: str


class ReturnReceived(TypedDict):
    event_id: str
    event_time_ms: int
    channel: str
    channel_order_id: str
    channel_refund_id: str
    warehouse_id: str
    qc_done: bool
    resellable: bool
    qc_note: str


class RefundSettled(TypedDict):
    event_id: str
    event_time_ms: int
    channel: str
    channel_order_id: str
    channel_refund_id: str
    amount_fen: int
    settlement_id: str


class RefundCancelled(TypedDict):
    event_id: str
    event_time_ms: int
    channel: str
    channel_order_id: str
    channel_refund_id: str
    by: str
    reason: str


class RefundInstruction(TypedDict):
    event_id: str
    event_time_ms: int
    refund_id: str
    order_id: str
    channel: str
    channel_order_id: str
    channel_refund_id: str
    amount_fen: int
    payment_path: str
    idempotency_key: str
    approved_by: str


class RefundIssued(TypedDict):
    event_id: str
    event_time_ms: int
    refund_id: str
    order_id: str
    channel: str
    amount_fen: int
    platform_ref: str
    attempts: int
    replayed: bool


class RefundStateChanged(TypedDict):
    event_id: str
    event_time_ms: int
    refund_id: str
    order_id: str
    channel: str
    kind: str
    state: str
    previous_state: str
    reason: str
    amount_fen: int
    auto_approved: bool
    warehouse_id: str
    stage_times: dict[str, int]
    customer_id: str


class ConnectorCalled(TypedDict):
    event_id: str
    event_time_ms: int
    channel: str
    endpoint: str
    outcome: str  # ok | already_applied | stale | failed
    reason: str
    attempts: int
    latencies_ms: list[float]
    error: str
    error_ms: int
    started_ms: int
    replayed: bool
    key_fingerprint: str
    key_expires_ms: int


class ConnectorCallFailed(TypedDict):
    event_id: str
    event_time_ms: int
    channel: str
    endpoint: str
    idempotency_key: str
    request: str
    answer: str
    reason: str
    attempts: int
    source: str


class HotSku(TypedDict):
    """Mark a SKU hot (split into ``buckets``) or not (0); on ``stock.hot-skus`` what its pool made of it."""

    event_id: str
    event_time_ms: int
    sku: str
    buckets: int
    state: str  # stock.hot-skus: hot | merging | "" (cold)
    operator: str
    reason: str


class BucketSync(TypedDict):
    """Stock and figures between a hot SKU's home and its buckets (internal to the pool)."""

    event_id: str
    event_time_ms: int
    sku: str
    kind: str  # TRANSFER | REPORT | CONFIG | REBALANCE | PROBE | COUNTED
    from_bucket: int
    to_bucket: int
    units: dict[str, int]
    qty: int
    warehouse_id: str
    ref: str
    buckets: int
    state: str
    paused: bool
    locked: int
    sold: int
    presale_reserved: int
    open_lines: int
    allocated: dict[str, int]
    newest_change_ms: int
    newest_source_ms: int
    seq: int
    acked: int
    lent: int
    as_of_ms: int
    skew_ms: int
