-- title: Routing: split shipments
-- description: Routed orders and the share that had to ship from more than one warehouse.
-- chart: table
SELECT
    uniqExact(order_id) AS routed_orders,
    uniqExactIf(order_id, split = 1) AS split_orders,
    round(100 * uniqExactIf(order_id, split = 1) / greatest(uniqExact(order_id), 1), 1) AS split_pct
FROM routing_assignments FINAL
WHERE event_time_ms >= {from_ms:Int64} AND event_time_ms < {to_ms:Int64}
  AND ({channel:String} = '' OR channel = {channel:String})
