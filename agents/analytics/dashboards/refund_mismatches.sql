-- title: Refund reconciliation mismatches
-- description: Refunds paid out in the range whose money does not add up at the end of the range (or now), one row per refund and mismatch: issue_failed (the marketplace call failed and waits in the channel's failed queue: replay it; detail connector_in_doubt: it may have been paid, and the replay says so without paying twice: never pay it by hand), not_issued (no acceptance past the settlement limit), issued_not_settled (past the settlement limit), settled_not_issued, settled_unknown (a settlement for a refund stockflow never paid out), amount_mismatch (issued or settled for another amount than paid out). Times in the shop's time zone.
-- chart: table
SELECT
    refund_id,
    channel,
    order_id,
    mismatch,
    round(amount_fen / 100, 2) AS instructed_yuan,
    round(issued_fen / 100, 2) AS issued_yuan,
    round(settled_fen / 100, 2) AS settled_yuan,
    if(instructed_at_ms > 0, toString(toDateTime(intDiv(instructed_at_ms, 1000)), {tz:String}), '') AS instructed_at,
    if(issued_at_ms > 0, toString(toDateTime(intDiv(issued_at_ms, 1000)), {tz:String}), '') AS issued_at,
    if(settled_at_ms > 0, toString(toDateTime(intDiv(settled_at_ms, 1000)), {tz:String}), '') AS settled_at,
    state AS current_state,
    if(mismatch = 'issue_failed', failure_reason, '') AS detail
FROM
(
    SELECT
        *,
        least({now_ms:Int64}, {to_ms:Int64}) - instructed_at_ms > {settle_s:Float64} * 1000 AS overdue
    FROM
    (
        -- One row per refund as it stood at the end of the range (or now): only facts known by then, and of
        -- those only the stage times reached by then (a record stamped when its state began may carry a later
        -- issue). The state is the furthest in the lifecycle, not the newest stamp: the request carries the
        -- marketplace's clock, which may run ahead of the review that followed.
        WITH least({now_ms:Int64}, {to_ms:Int64}) AS cutoff
        SELECT
            refund_id,
            max(channel) AS channel,
            max(order_id) AS order_id,
            max(refund_fen) AS amount_fen,
            argMaxIf(state, (rank, event_time_ms), rank > 0) AS state,
            maxIf(refunding_ms, refunding_ms <= cutoff) AS instructed_at_ms,
            if(maxIf(issued_ms, issued_ms <= cutoff) > 0, maxIf(issued_ms, issued_ms <= cutoff),
               minIf(issue_ms, issue_ms > 0)) AS issued_at_ms,
            argMinIf(issue_fen, issue_ms, issue_ms > 0) AS issued_fen,
            minIf(settlement_ms, settlement_ms > 0) AS settled_at_ms,
            argMinIf(settlement_fen, settlement_ms, settlement_ms > 0) AS settled_fen,
            maxIf(failure_ms, failure_ms > 0) AS failed_at_ms,
            argMaxIf(failure_reason, failure_ms, failure_ms > 0) AS failure_reason
        FROM refund_facts
        WHERE event_time_ms <= cutoff
        GROUP BY refund_id
        HAVING (instructed_at_ms >= {from_ms:Int64} AND instructed_at_ms < {to_ms:Int64})
            OR (instructed_at_ms = 0 AND settled_at_ms >= {from_ms:Int64} AND settled_at_ms < {to_ms:Int64})
    )
)
ARRAY JOIN
    ['issue_failed', 'not_issued', 'issued_not_settled', 'settled_not_issued', 'settled_unknown',
     'amount_mismatch'] AS mismatch,
    [instructed_at_ms > 0 AND issued_at_ms = 0 AND settled_at_ms = 0 AND failed_at_ms > 0,
     instructed_at_ms > 0 AND issued_at_ms = 0 AND settled_at_ms = 0 AND failed_at_ms = 0 AND overdue,
     issued_at_ms > 0 AND settled_at_ms = 0 AND overdue,
     instructed_at_ms > 0 AND issued_at_ms = 0 AND settled_at_ms > 0,
     instructed_at_ms = 0 AND settled_at_ms > 0,
     instructed_at_ms > 0 AND ((issued_fen > 0 AND issued_fen != amount_fen)
                               OR (settled_at_ms > 0 AND settled_fen != amount_fen))] AS flagged
WHERE flagged AND ({channel:String} = '' OR channel = {channel:String})
ORDER BY channel, refund_id, mismatch
