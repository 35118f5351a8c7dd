-- title: Where orders wait now
-- description: Orders not yet finished, by the state they are in, with how long they have been in it, as things stood at the range's end (or now, if it is later): every one that entered its state before then, however long ago (the range's start is not used, so the oldest stay in view). With a warehouse, the orders it was given alone or with others (a split order). The state with the most old orders is the bottleneck now. A presale order whose deposit is paid waits for its balance by design: it is shown as deposit_paid, apart from the reserved orders waiting for a payment.
-- chart: bar x=state y=orders,p90_age_min
SELECT
    if(current = 'reserved' AND deposit_paid, 'deposit_paid', current) AS state,
    count() AS orders,
    round(quantileExact(0.5)((least({now_ms:Int64}, {to_ms:Int64}) - since) / 60000), 1) AS p50_age_min,
    round(quantileExact(0.9)((least({now_ms:Int64}, {to_ms:Int64}) - since) / 60000), 1) AS p90_age_min,
    round(max((least({now_ms:Int64}, {to_ms:Int64}) - since) / 60000), 1) AS oldest_min
FROM
(
    -- The current state is the furthest one in the lifecycle, not the newest stamp: a placing carries the
    -- marketplace's clock (up to minutes ahead), so it can be stamped after the reservation that followed it.
    -- It began at its first record (a presale deposit is a record of its own in the reserved state).
    SELECT
        order_id,
        argMax(state, (rank, event_time_ms)) AS current,
        max(reason = 'deposit_paid') AS deposit_paid,
        argMax(event_time_ms, (rank, -event_time_ms)) AS since,
        any(channel) AS channel,
        max(warehouse_id) AS warehouse
    FROM
    (
        SELECT order_id, channel, warehouse_id, state, reason, event_time_ms,
               indexOf(['placed', 'reserved', 'paid', 'routed', 'shipped', 'delivered',
                        'rejected', 'cancelled', 'payment_timeout'], state) AS rank
        FROM order_states FINAL
        WHERE event_time_ms < least({now_ms:Int64}, {to_ms:Int64})  -- a range ending in the past: its state then
    )
    GROUP BY order_id
)
WHERE current IN ('placed', 'reserved', 'paid', 'routed', 'shipped')
  AND since < {to_ms:Int64}
  AND ({channel:String} = '' OR channel = {channel:String})
  AND ({warehouse:String} = '' OR has(splitByChar(',', warehouse), {warehouse:String}))
GROUP BY state
ORDER BY p90_age_min DESC
