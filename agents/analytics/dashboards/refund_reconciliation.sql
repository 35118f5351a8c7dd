-- title: Refunds issued vs settled per channel
-- description: Refunds paid out (instructed) in the range, per channel, as they stood at the end of the range (or now): instructed, accepted by the marketplace (issued) and settled, in count and yuan; not issued (issue_failed: a failed call waits in the channel's failed queue; the mismatches board gives each one's reason, and connector_in_doubt there may have been paid: replay it, never pay by hand), issued and unsettled (overdue: past the settlement limit), settled for another amount than paid out, and settlements in the range for refunds stockflow never paid out.
-- chart: bar x=channel y=instructed,issued,settled
SELECT
    channel,
    countIf(instructed_at_ms > 0) AS instructed,
    countIf(instructed_at_ms > 0 AND issued_at_ms > 0) AS issued,
    countIf(settled_at_ms > 0) AS settled,
    round(sumIf(amount_fen, instructed_at_ms > 0) / 100, 2) AS instructed_yuan,
    round(sumIf(issued_fen, instructed_at_ms > 0 AND issued_at_ms > 0) / 100, 2) AS issued_yuan,
    round(sumIf(settled_fen, settled_at_ms > 0) / 100, 2) AS settled_yuan,
    countIf(instructed_at_ms > 0 AND issued_at_ms = 0 AND settled_at_ms = 0) AS not_issued,
    countIf(instructed_at_ms > 0 AND issued_at_ms = 0 AND settled_at_ms = 0 AND failed_at_ms > 0) AS issue_failed,
    countIf(issued_at_ms > 0 AND settled_at_ms = 0) AS unsettled,
    countIf(issued_at_ms > 0 AND settled_at_ms = 0 AND overdue) AS unsettled_overdue,
    countIf(wrong_amount) AS amount_mismatch,
    countIf(settled_at_ms > 0 AND instructed_at_ms = 0) AS settled_unknown
FROM
(
    SELECT
        *,
        least({now_ms:Int64}, {to_ms:Int64}) - instructed_at_ms > {settle_s:Float64} * 1000 AS overdue,
        instructed_at_ms > 0 AND ((issued_fen > 0 AND issued_fen != amount_fen)
                                  OR (settled_at_ms > 0 AND settled_fen != amount_fen)) AS wrong_amount
    FROM
    (
        -- One row per refund as it stood at the end of the range (or now): only facts known by then, and of
        -- those only the stage times reached by then (a record stamped when its state began may carry a later
        -- issue).
        WITH least({now_ms:Int64}, {to_ms:Int64}) AS cutoff
        SELECT
            refund_id,
            max(channel) AS channel,
            max(refund_fen) AS amount_fen,
            maxIf(refunding_ms, refunding_ms <= cutoff) AS instructed_at_ms,
            if(maxIf(issued_ms, issued_ms <= cutoff) > 0, maxIf(issued_ms, issued_ms <= cutoff),
               minIf(issue_ms, issue_ms > 0)) AS issued_at_ms,
            argMinIf(issue_fen, issue_ms, issue_ms > 0) AS issued_fen,
            minIf(settlement_ms, settlement_ms > 0) AS settled_at_ms,
            argMinIf(settlement_fen, settlement_ms, settlement_ms > 0) AS settled_fen,
            maxIf(failure_ms, failure_ms > 0) AS failed_at_ms
        FROM refund_facts
        WHERE event_time_ms <= cutoff
        GROUP BY refund_id
        HAVING (instructed_at_ms >= {from_ms:Int64} AND instructed_at_ms < {to_ms:Int64})
            OR (instructed_at_ms = 0 AND settled_at_ms >= {from_ms:Int64} AND settled_at_ms < {to_ms:Int64})
    )
)
WHERE {channel:String} = '' OR channel = {channel:String}
GROUP BY channel
ORDER BY channel
