-- title: Refund flow time per stage and channel
-- description: Hours refunds requested in the range spent in each stage (requested, customer-service review, the buyer's return, warehouse QC, the marketplace accepting the refund, settlement, and request to finish), p50/p90/average per channel; only stages a refund has left count. The stage with the highest p90 is where refunds wait.
-- chart: bar x=stage y=p90_h series=channel
SELECT
    channel,
    stage,
    count() AS refunds,
    round(quantileExact(0.5)(left_ms - entered) / 3600000, 3) AS p50_h,
    round(quantileExact(0.9)(left_ms - entered) / 3600000, 3) AS p90_h,
    round(avg(left_ms - entered) / 3600000, 3) AS avg_h
FROM
(
    SELECT
        *,
        -- A receipt, QC or issue that moved no state is published at once as a stage-time record; the
        -- refund's own events still tell it where that record is missing (refunds stored before it was
        -- published so), clamped: another host's clock may run behind.
        if(stated_receipt > 0, stated_receipt,
           if(kind = 'RETURN_AND_REFUND' AND first_receipt > 0
              AND (rejected = 0 OR first_receipt < rejected) AND (cancelled = 0 OR first_receipt < cancelled),
              greatest(first_receipt, requested), 0)) AS return_received,
        if(stated_qc > 0, stated_qc,
           if(return_received > 0 AND first_qc > 0, greatest(first_qc, return_received), 0)) AS inspected,
        if(stated_issue > 0, stated_issue,
           if(refunding > 0 AND first_issue > 0, greatest(first_issue, refunding), 0)) AS issued,
        arrayReduce('min', arrayFilter(x -> x > 0,
            [reviewing, awaiting_return, received, refunding, completed, rejected, cancelled])) AS left_request,
        arrayReduce('min', arrayFilter(x -> x > 0,
            [awaiting_return, received, refunding, completed, rejected, cancelled])) AS decided,
        arrayReduce('min', arrayFilter(x -> x > 0, [return_received, cancelled])) AS returned,
        arrayReduce('min', arrayFilter(x -> x > 0, [completed, rejected, cancelled])) AS finished
    FROM
    (
        -- One row per refund: the newest of each stage time any of its facts tells.
        SELECT
            refund_id,
            max(channel) AS channel,
            max(kind) AS kind,
            max(requested_ms) AS requested,
            max(reviewing_ms) AS reviewing,
            max(awaiting_return_ms) AS awaiting_return,
            max(received_ms) AS received,
            max(refunding_ms) AS refunding,
            max(settled_ms) AS settled,
            max(completed_ms) AS completed,
            max(rejected_ms) AS rejected,
            max(cancelled_ms) AS cancelled,
            max(return_received_ms) AS stated_receipt,
            max(inspected_ms) AS stated_qc,
            max(issued_ms) AS stated_issue,
            minIf(receipt_ms, receipt_ms > 0) AS first_receipt,
            minIf(qc_ms, qc_ms > 0) AS first_qc,
            minIf(issue_ms, issue_ms > 0) AS first_issue
        FROM refund_facts
        GROUP BY refund_id
        HAVING requested >= {from_ms:Int64} AND requested < {to_ms:Int64}
    )
)
ARRAY JOIN
    ['1 requested', '2 reviewing', '3 awaiting_return', '4 received→inspected', '5 refunding→issued',
     '6 issued→settled', '7 requested→finished'] AS stage,
    [requested, reviewing, awaiting_return, return_received, refunding, issued, requested] AS entered,
    [left_request, decided, returned, inspected, issued, settled, finished] AS left_ms
WHERE entered > 0 AND left_ms >= entered
  AND ({channel:String} = '' OR channel = {channel:String})
GROUP BY channel, stage
ORDER BY channel, stage
