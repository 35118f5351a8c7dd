-- title: Orders per hour
-- description: Orders placed in each hour (when the customer placed them, shown in the shop's time zone), every channel or one: what `stockflow forecast` learns from.
-- chart: line x=hour y=orders
SELECT
    toInt64(toUnixTimestamp(shop_hour)) * 1000 AS hour_ms,
    toString(shop_hour) AS hour,
    uniqExact(order_id) AS orders
FROM order_states
WHERE placed_ms >= {from_ms:Int64} AND placed_ms < {to_ms:Int64}
  AND ({channel:String} = '' OR channel = {channel:String})
-- The hour in the shop's zone (a zone off the hour, +05:30, starts its hours at :30 UTC).
GROUP BY toStartOfHour(toDateTime(intDiv(placed_ms, 1000), {tz:String})) AS shop_hour
ORDER BY hour_ms
