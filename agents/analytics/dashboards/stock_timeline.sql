-- title: Stock timeline of a SKU
-- description: Available, locked, sold and on-hand units of one SKU (parameter sku) as the pool published them.
-- chart: line x=time y=available,locked,sold,on_hand
SELECT
    toDateTime(intDiv(event_time_ms, 1000)) AS time,
    available,
    locked,
    sold,
    on_hand,
    paused
FROM stock_levels FINAL
WHERE sku = {sku:String}
  AND event_time_ms >= {from_ms:Int64} AND event_time_ms < {to_ms:Int64}
ORDER BY event_time_ms
LIMIT 5000
