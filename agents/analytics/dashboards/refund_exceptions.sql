-- title: Refund exceptions
-- description: Refunds past an SOP limit in the range, one row per refund and limit: customer service answering (from when the request reached review: a Kuaishou return's once its tracking number came), the buyer's return reaching the warehouse (from the approval; a no-reason return paid back at once included), warehouse QC (from the parcel's receipt, whatever the refund came to), the marketplace settling (from the refund instruction). _late: the stage took longer and has ended; _hanging: still in it at the end of the range (or now); issued_not_settled / not_issued: paid out and not settled, with or without the marketplace's acceptance. A refund is listed in every range in which it was past a limit. Times in the shop's time zone.
-- chart: table
SELECT
    refund_id,
    channel,
    order_id,
    exception,
    stage,
    toString(toDateTime(intDiv(entered, 1000)), {tz:String}) AS entered_at,
    if(left_ms = 0, '', toString(toDateTime(intDiv(left_ms, 1000)), {tz:String})) AS left_at,
    round(spent / 3600000, 2) AS hours_spent,
    round(limit_s / 3600, 2) AS limit_hours,
    state AS current_state,
    round(amount_fen / 100, 2) AS amount_yuan
FROM
(
    SELECT
        refund_id, channel, order_id, state, amount_fen, entered, left_ms, limit_s,
        if(left_ms = 0, toInt64(least({now_ms:Int64}, {to_ms:Int64})), left_ms) - entered AS spent,
        multiIf(sop = 'respond', if(reviewing > 0, 'reviewing', 'requested'),
                sop = 'qc', 'return_received',
                sop = 'return', 'awaiting_return',
                if(issued > 0, 'issued', 'refunding')) AS stage,
        multiIf(sop != 'settle', concat(sop, if(left_ms = 0, '_hanging', '_late')),
                left_ms > 0, 'settle_late',
                issued > 0, 'issued_not_settled', 'not_issued') AS exception
    FROM
    (
        SELECT
            *,
            -- A receipt, QC or issue that moved no state shows in refund_states only at the refund's next
            -- transition; until then its own event tells it (clamped: another host's clock may run behind).
            if(stated_receipt > 0, stated_receipt,
               if(kind = 'RETURN_AND_REFUND' AND first_receipt > 0
                  AND (rejected = 0 OR first_receipt < rejected) AND (cancelled = 0 OR first_receipt < cancelled),
                  greatest(first_receipt, requested), 0)) AS return_received,
            if(stated_qc > 0, stated_qc,
               if(return_received > 0 AND first_qc > 0, greatest(first_qc, return_received), 0)) AS inspected,
            if(stated_issue > 0, stated_issue,
               if(refunding > 0 AND first_issue > 0, greatest(first_issue, refunding), 0)) AS issued,
            arrayReduce('min', arrayFilter(x -> x > 0,
                [awaiting_return, received, refunding, completed, rejected, cancelled])) AS responded,
            -- Only a QC ends the QC stage: a refund rejected or withdrawn still has its parcel's units to put back.
            inspected AS checked,
            arrayReduce('min', arrayFilter(x -> x > 0, [return_received, received, refunding, cancelled])) AS returned
        FROM
        (
            -- One row per refund as it stood at the end of the range (or now): only facts known by then, and of
            -- those only the stage times reached by then (a record stamped when its state began may carry a
            -- later receipt, QC or issue). The state is the furthest in the lifecycle, not the newest stamp:
            -- the request carries the marketplace's clock, which may run ahead of the review that followed.
            WITH least({now_ms:Int64}, {to_ms:Int64}) AS cutoff
            SELECT
                refund_id,
                max(channel) AS channel,
                max(order_id) AS order_id,
                max(kind) AS kind,
                max(refund_fen) AS amount_fen,
                argMaxIf(state, (rank, event_time_ms), rank > 0) AS state,
                maxIf(requested_ms, requested_ms <= cutoff) AS requested,
                maxIf(reviewing_ms, reviewing_ms <= cutoff) AS reviewing,
                maxIf(awaiting_return_ms, awaiting_return_ms <= cutoff) AS awaiting_return,
                maxIf(received_ms, received_ms <= cutoff) AS received,
                maxIf(refunding_ms, refunding_ms <= cutoff) AS refunding,
                maxIf(settled_ms, settled_ms <= cutoff) AS settled,
                maxIf(completed_ms, completed_ms <= cutoff) AS completed,
                maxIf(rejected_ms, rejected_ms <= cutoff) AS rejected,
                maxIf(cancelled_ms, cancelled_ms <= cutoff) AS cancelled,
                maxIf(return_received_ms, return_received_ms <= cutoff) AS stated_receipt,
                maxIf(inspected_ms, inspected_ms <= cutoff) AS stated_qc,
                maxIf(issued_ms, issued_ms <= cutoff) AS stated_issue,
                minIf(receipt_ms, receipt_ms > 0) AS first_receipt,
                minIf(qc_ms, qc_ms > 0) AS first_qc,
                minIf(issue_ms, issue_ms > 0) AS first_issue,
                -- A no-reason return is paid back at once: its goods are still due within the return limit.
                refund_id IN (SELECT refund_id FROM refund_states FINAL
                              WHERE auto_approved = 1 AND kind = 'RETURN_AND_REFUND') AS paid_first
            FROM refund_facts
            WHERE event_time_ms <= cutoff
            GROUP BY refund_id
            HAVING requested > 0
        )
    )
    ARRAY JOIN
        ['respond', 'return', 'qc', 'settle'] AS sop,
        [if(reviewing > 0, reviewing, requested), if(awaiting_return > 0 OR NOT paid_first, awaiting_return, refunding), return_received,
         refunding] AS entered,
        [responded, if(awaiting_return > 0 OR NOT paid_first, returned, return_received), checked, settled] AS left_ms,
        [{respond_s:Float64}, {return_s:Float64}, {qc_s:Float64}, {settle_s:Float64}] AS limit_s
    WHERE entered > 0
      AND ({channel:String} = '' OR channel = {channel:String})
)
WHERE spent > limit_s * 1000 AND (left_ms = 0 OR left_ms > {from_ms:Int64})
ORDER BY entered, refund_id, exception
