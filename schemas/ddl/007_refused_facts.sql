-- A refund event the pipeline refused is no fact of its refund. A warehouse's receipt of a return that the
-- refund processor dead-lettered (it named another order than its refund's, or its refund was never
-- requested) counts nowhere. A marketplace's settlement it dead-lettered is money the marketplace says went
-- back that stockflow never matched to a refund it paid: it no longer makes its refund settled, and counts
-- as a settlement stockflow never paid out (``settled_unknown``), under its refund id marked "(refused)" -
-- one such refund id for all its refused settlements, as for a settlement notified twice. The dashboards
-- read those events as they came (refund.events), so they learn of the refusal from the dead letter: the
-- sink reads the refused event's id from its original bytes (every event's first field is its id), and the
-- dead letter's source partition and offset name the copy (agents/analytics/facts.py, KEPT_PER_COPY). Rows
-- and dead letters stored before this change carry neither the id nor the copy, and count as they did.

ALTER TABLE dead_letters ADD COLUMN source_event_id String DEFAULT '';

-- The copies of refund events the pipeline refused (any stage: an event it could not even read is no fact
-- either), keyed as the sink keys them in refund_returns and refund_settlements: '<event id>@<partition>.
-- <offset>', so a copy refused is told from an earlier copy of the same event that was taken. By suffix,
-- whatever STOCKFLOW_TOPIC_PREFIX the topics carry.
CREATE VIEW IF NOT EXISTS refused_refund_events AS
SELECT DISTINCT concat(source_event_id, '@', toString(source_partition), '.', toString(source_offset)) AS copy_id
FROM dead_letters
WHERE source_event_id != '' AND endsWith(source_topic, 'refund.events');

-- refund_facts as 004_refunds.sql made it, refused receipts left out and refused settlements apart. A view
-- cannot be altered on every ClickHouse this runs on (the Debian server is 18.16): it is made again.
DROP TABLE IF EXISTS refund_facts;
CREATE VIEW refund_facts AS
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
WHERE event_id NOT IN (SELECT copy_id FROM refused_refund_events)
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
    if(refused, concat(settled_refund_id, ' (refused)'), settled_refund_id) AS refund_id, channel,
    settled_order_id AS order_id, '' AS kind, toInt64(0) AS refund_fen, '' AS state, event_time_ms,
    toUInt64(0) AS rank, toInt64(0) AS requested_ms, toInt64(0) AS reviewing_ms, toInt64(0) AS awaiting_return_ms,
    toInt64(0) AS received_ms, toInt64(0) AS return_received_ms, toInt64(0) AS inspected_ms,
    toInt64(0) AS refunding_ms, toInt64(0) AS issued_ms, toInt64(0) AS settled_ms, toInt64(0) AS completed_ms,
    toInt64(0) AS rejected_ms, toInt64(0) AS cancelled_ms, toInt64(0) AS receipt_ms, toInt64(0) AS qc_ms,
    toInt64(0) AS issue_ms, toInt64(0) AS issue_fen, event_time_ms AS settlement_ms, settled_fen AS settlement_fen,
    toInt64(0) AS failure_ms, '' AS failure_reason
FROM
(
    -- Renamed here, as the view's own columns cannot be aliases of themselves.
    SELECT
        event_id, event_time_ms, channel, refund_id AS settled_refund_id, order_id AS settled_order_id,
        amount_fen AS settled_fen, event_id IN (SELECT copy_id FROM refused_refund_events) AS refused
    FROM refund_settlements FINAL
)
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
