-- title: Routing: split shipments
-- description: Orders routed in the range and the share that ships from more than one warehouse in the end (an attempt a warehouse could not fill and was routed again does not count).
-- chart: table
SELECT
    uniqExact(order_id) AS routed_orders,
    uniqExactIf(order_id, position(warehouse_id, ',') > 0) AS split_orders,
    round(100 * uniqExactIf(order_id, position(warehouse_id, ',') > 0) / greatest(uniqExact(order_id), 1), 1) AS split_pct
FROM order_states FINAL
WHERE state = 'routed'
  AND event_time_ms >= {from_ms:Int64} AND event_time_ms < {to_ms:Int64}
  AND event_time BETWEEN toDateTime(intDiv({from_ms:Int64}, 1000)) AND toDateTime(intDiv({to_ms:Int64}, 1000))
  AND ({channel:String} = '' OR channel = {channel:String})
