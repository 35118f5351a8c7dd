-- title: Orders per hour
-- description: Orders placed in each hour (when the customer placed them, shown in the shop's time zone), every channel or one: what `stockflow forecast` learns from.
-- chart: line x=hour y=orders
SELECT
    -- Hours on the epoch's (UTC) hours, as the forecast's series are; each shown in the shop's zone, never
    -- the server's (a zone off the hour, +05:30, shows them at :30).
    intDiv(placed_ms, 3600000) * 3600000 AS hour_ms,
    toString(toDateTime(intDiv(hour_ms, 1000), {tz:String})) AS hour,
    uniqExact(order_id) AS orders
FROM order_states
WHERE placed_ms >= {from_ms:Int64} AND placed_ms < {to_ms:Int64}
  AND ({channel:String} = '' OR channel = {channel:String})
GROUP BY hour_ms
ORDER BY hour_ms
