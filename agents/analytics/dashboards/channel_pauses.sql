-- title: Channel pause and resume history
-- description: When a SKU fell below its safety threshold (every channel but the main one stopped selling it) and when selling resumed (times in the shop's time zone).
-- chart: table
SELECT
    toDateTime(intDiv(event_time_ms, 1000), {tz:String}) AS time,
    subject AS sku,
    if(kind = 'stock_paused', 'paused', 'resumed') AS change,
    message
FROM alerts FINAL
WHERE kind IN ('stock_paused', 'stock_resumed')
  AND event_time_ms >= {from_ms:Int64} AND event_time_ms < {to_ms:Int64}
  AND event_time BETWEEN toDateTime(intDiv({from_ms:Int64}, 1000)) AND toDateTime(intDiv({to_ms:Int64}, 1000))
  AND ({sku:String} = '' OR subject = {sku:String})
ORDER BY event_time_ms DESC, sku
LIMIT 1000
