-- title: Orders per hour
-- description: Orders placed in each hour (when the customer placed them, shown in the shop's time zone), every channel or one: what `stockflow forecast` learns from.
-- chart: line x=hour y=orders
SELECT
    intDiv(placed_ms, 3600000) * 3600000 AS hour_ms,
    toString(toStartOfHour(toDateTime(intDiv(placed_ms, 1000))), {tz:String}) AS hour,
    uniqExact(order_id) AS orders
FROM order_states
WHERE placed_ms >= {from_ms:Int64} AND placed_ms < {to_ms:Int64}
  AND ({channel:String} = '' OR channel = {channel:String})
GROUP BY hour_ms, hour
ORDER BY hour_ms
