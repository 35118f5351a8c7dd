-- title: Stock timeline of a SKU
-- description: Available, locked, sold and on-hand units of one SKU (parameter sku) as the pool published them, over the whole range: the range is cut into about 1,000 equal steps and each shows the last level published in it, at the time it was published (shop's time zone). Steps sit on fixed clock times, so a refresh shows the same points.
-- chart: line x=time y=available,locked,sold,on_hand
SELECT
    toDateTime(intDiv(max(event_time_ms), 1000), {tz:String}) AS time,
    argMax(available, event_time_ms) AS available,
    argMax(locked, event_time_ms) AS locked,
    argMax(sold, event_time_ms) AS sold,
    argMax(on_hand, event_time_ms) AS on_hand,
    argMax(paused, event_time_ms) AS paused
FROM stock_levels FINAL
WHERE sku = {sku:String}
  AND event_time_ms >= {from_ms:Int64} AND event_time_ms < {to_ms:Int64}
  AND event_time BETWEEN toDateTime(intDiv({from_ms:Int64}, 1000)) AND toDateTime(intDiv({to_ms:Int64}, 1000))
-- A busy SKU publishes tens of thousands of levels a day: one point per step keeps the chart light and
-- reaching the range's end, where cutting the list at a row count showed only its first hours.
-- Steps start at multiples of the step on the clock, not at the range's start: a range that slides with
-- 'now' would otherwise regroup the same levels on every refresh and make points come and go.
GROUP BY intDiv(event_time_ms, greatest(intDiv({to_ms:Int64} - {from_ms:Int64} + 999, 1000), 1000))
ORDER BY max(event_time_ms)
