-- Refund facts the refund dashboards read (agents/analytics/dashboards/refund_*.sql), one table per
-- kind of event. ReplacingMergeTree on event_id, read with FINAL: a redelivered event is one row.
-- A refund's events can still be several rows (one per transition, a resent issue or settlement
-- under a new id), so the dashboards also reduce everything per refund id before counting.

-- RefundStateChanged (refund.states): one row per transition, with every stage time known then
-- (0: not reached). Event id '<refund id>:<state>'.
CREATE TABLE IF NOT EXISTS refund_states (
    event_id String,
    event_time DateTime,
    event_time_ms Int64,
    refund_id String,
    order_id String,
    channel String,
    kind String,
    state String,
    previous_state String,
    reason String,
    amount_fen Int64,
    auto_approved UInt8,
    warehouse_id String,
    requested_ms Int64,
    reviewing_ms Int64,
    awaiting_return_ms Int64,
    received_ms Int64,
    return_received_ms Int64,
    inspected_ms Int64,
    refunding_ms Int64,
    issued_ms Int64,
    settled_ms Int64,
    completed_ms Int64,
    rejected_ms Int64,
    cancelled_ms Int64
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY event_id;

-- ReturnReceived (refund.events): the warehouse's receipt and QC of a return. A receipt and QC of an
-- already approved refund change no state, so refund.states shows them only at the next transition.
CREATE TABLE IF NOT EXISTS refund_returns (
    event_id String,
    event_time DateTime,
    event_time_ms Int64,
    refund_id String,
    order_id String,
    channel String,
    warehouse_id String,
    qc_done UInt8,
    resellable UInt8
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY event_id;

-- RefundIssued (refund.issued): the marketplace accepted the refund instruction.
CREATE TABLE IF NOT EXISTS refund_issues (
    event_id String,
    event_time DateTime,
    event_time_ms Int64,
    refund_id String,
    order_id String,
    channel String,
    amount_fen Int64,
    platform_ref String,
    attempts Int32,
    replayed UInt8
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY event_id;

-- RefundSettled (refund.events): the marketplace says the money reached the buyer.
CREATE TABLE IF NOT EXISTS refund_settlements (
    event_id String,
    event_time DateTime,
    event_time_ms Int64,
    refund_id String,
    order_id String,
    channel String,
    amount_fen Int64,
    settlement_id String
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY event_id;

-- ConnectorCallFailed (connector.failed.<channel>): an outbound call that failed for good; for the
-- refund endpoint the idempotency key is the refund id.
CREATE TABLE IF NOT EXISTS connector_failures (
    event_id String,
    event_time DateTime,
    event_time_ms Int64,
    channel String,
    endpoint String,
    idempotency_key String,
    reason String,
    attempts Int32,
    answer String,
    source String
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY event_id;

-- Every refund fact as one row shape, for the dashboards to reduce per refund. Each row carries the
-- time it became known (event_time_ms), so a dashboard can see refunds as they stood at a moment
-- (the end of a month) by keeping the rows known by then. rank orders a refund's states for rows of
-- one instant (an auto-approval enters requested and refunding at once); fact rows have rank 0.
-- Every part names every column (old servers match a view's UNION parts by name when they prune
-- columns) and no alias is also a column of its table (an alias hides the column in ClickHouse).
CREATE VIEW IF NOT EXISTS refund_facts AS
SELECT
    refund_id, channel, order_id, kind, amount_fen AS refund_fen, state, event_time_ms,
    indexOf(['requested', 'reviewing', 'awaiting_return', 'received', 'refunding', 'completed', 'rejected', 'cancelled'], state) AS rank,
    requested_ms, reviewing_ms, awaiting_return_ms, received_ms, return_received_ms, inspected_ms, refunding_ms,
    issued_ms, settled_ms, completed_ms, rejected_ms, cancelled_ms, toInt64(0) AS receipt_ms, toInt64(0) AS qc_ms,
    toInt64(0) AS issue_ms, toInt64(0) AS issue_fen, toInt64(0) AS settlement_ms, toInt64(0) AS settlement_fen,
    toInt64(0) AS failure_ms, '' AS failure_reason
FROM refund_states FINAL
UNION ALL
SELECT
    refund_id, channel, order_id, '' AS kind, toInt64(0) AS refund_fen, '' AS state, event_time_ms,
    toUInt64(0) AS rank, toInt64(0) AS requested_ms, toInt64(0) AS reviewing_ms, toInt64(0) AS awaiting_return_ms,
    toInt64(0) AS received_ms, toInt64(0) AS return_received_ms, toInt64(0) AS inspected_ms,
    toInt64(0) AS refunding_ms, toInt64(0) AS issued_ms, toInt64(0) AS settled_ms, toInt64(0) AS completed_ms,
    toInt64(0) AS rejected_ms, toInt64(0) AS cancelled_ms, event_time_ms AS receipt_ms,
    if(qc_done = 1, event_time_ms, toInt64(0)) AS qc_ms, toInt64(0) AS issue_ms, toInt64(0) AS issue_fen,
    toInt64(0) AS settlement_ms, toInt64(0) AS settlement_fen, toInt64(0) AS failure_ms, '' AS failure_reason
FROM refund_returns FINAL
UNION ALL
SELECT
    refund_id, channel, order_id, '' AS kind, toInt64(0) AS refund_fen, '' AS state, event_time_ms,
    toUInt64(0) AS rank, toInt64(0) AS requested_ms, toInt64(0) AS reviewing_ms, toInt64(0) AS awaiting_return_ms,
    toInt64(0) AS received_ms, toInt64(0) AS return_received_ms, toInt64(0) AS inspected_ms,
    toInt64(0) AS refunding_ms, toInt64(0) AS issued_ms, toInt64(0) AS settled_ms, toInt64(0) AS completed_ms,
    toInt64(0) AS rejected_ms, toInt64(0) AS cancelled_ms, toInt64(0) AS receipt_ms, toInt64(0) AS qc_ms,
    event_time_ms AS issue_ms, amount_fen AS issue_fen, toInt64(0) AS settlement_ms, toInt64(0) AS settlement_fen,
    toInt64(0) AS failure_ms, '' AS failure_reason
FROM refund_issues FINAL
UNION ALL
SELECT
    refund_id, channel, order_id, '' AS kind, toInt64(0) AS refund_fen, '' AS state, event_time_ms,
    toUInt64(0) AS rank, toInt64(0) AS requested_ms, toInt64(0) AS reviewing_ms, toInt64(0) AS awaiting_return_ms,
    toInt64(0) AS received_ms, toInt64(0) AS return_received_ms, toInt64(0) AS inspected_ms,
    toInt64(0) AS refunding_ms, toInt64(0) AS issued_ms, toInt64(0) AS settled_ms, toInt64(0) AS completed_ms,
    toInt64(0) AS rejected_ms, toInt64(0) AS cancelled_ms, toInt64(0) AS receipt_ms, toInt64(0) AS qc_ms,
    toInt64(0) AS issue_ms, toInt64(0) AS issue_fen, event_time_ms AS settlement_ms, amount_fen AS settlement_fen,
    toInt64(0) AS failure_ms, '' AS failure_reason
FROM refund_settlements FINAL
UNION ALL
SELECT
    idempotency_key AS refund_id, channel, '' AS order_id, '' AS kind, toInt64(0) AS refund_fen, '' AS state,
    event_time_ms, toUInt64(0) AS rank, toInt64(0) AS requested_ms, toInt64(0) AS reviewing_ms,
    toInt64(0) AS awaiting_return_ms, toInt64(0) AS received_ms, toInt64(0) AS return_received_ms,
    toInt64(0) AS inspected_ms, toInt64(0) AS refunding_ms, toInt64(0) AS issued_ms, toInt64(0) AS settled_ms,
    toInt64(0) AS completed_ms, toInt64(0) AS rejected_ms, toInt64(0) AS cancelled_ms, toInt64(0) AS receipt_ms,
    toInt64(0) AS qc_ms, toInt64(0) AS issue_ms, toInt64(0) AS issue_fen, toInt64(0) AS settlement_ms,
    toInt64(0) AS settlement_fen, event_time_ms AS failure_ms, reason AS failure_reason
FROM connector_failures FINAL
WHERE endpoint = 'refund';
