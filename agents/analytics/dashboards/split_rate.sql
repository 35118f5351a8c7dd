-- title: Routing: split shipments
-- description: Orders routed in the range and the share that ships from more than one warehouse in the end (an attempt a warehouse could not fill and was routed again does not count).
-- chart: table
SELECT
    count() AS routed_orders,
    countIf(position(warehouses, ',') > 0) AS split_orders,
    round(100 * countIf(position(warehouses, ',') > 0) / greatest(count(), 1), 1) AS split_pct
FROM
(
    -- Each order routed in the range, with the warehouses of its last routed state. A batch that routed and
    -- then cancelled (or acknowledged) an order publishes only its newest state, which carries the routed time
    -- and the warehouses all the same.
    SELECT order_id, argMax(warehouse_id, (state = 'routed', event_time_ms)) AS warehouses
    FROM order_states FINAL
    WHERE routed_ms >= {from_ms:Int64} AND routed_ms < {to_ms:Int64} AND warehouse_id != ''
      AND event_time >= toDateTime(intDiv({from_ms:Int64}, 1000))
      AND ({channel:String} = '' OR channel = {channel:String})
    GROUP BY order_id
)
