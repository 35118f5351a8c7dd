-- title: Where orders wait now
-- description: Orders not yet finished, by the state they are in, with how long they have been in it. The state with the most old orders is the bottleneck now.
-- chart: bar x=state y=orders,p90_age_min
SELECT
    state,
    count() AS orders,
    round(quantileExact(0.5)((({now_ms:Int64}) - since) / 60000), 1) AS p50_age_min,
    round(quantileExact(0.9)((({now_ms:Int64}) - since) / 60000), 1) AS p90_age_min,
    round(max((({now_ms:Int64}) - since) / 60000), 1) AS oldest_min
FROM
(
    SELECT
        order_id,
        argMax(state, event_time_ms) AS state,
        max(event_time_ms) AS since,
        any(channel) AS channel,
        max(warehouse_id) AS warehouse
    FROM order_states FINAL
    GROUP BY order_id
)
WHERE state IN ('placed', 'reserved', 'paid', 'routed', 'shipped')
  AND since >= {from_ms:Int64} AND since < {to_ms:Int64}
  AND ({channel:String} = '' OR channel = {channel:String})
  AND ({warehouse:String} = '' OR warehouse = {warehouse:String})
GROUP BY state
ORDER BY p90_age_min DESC
