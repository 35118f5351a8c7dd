-- title: Routing: share of orders per warehouse
-- description: Orders routed in the range each warehouse was given in the end (the routed order's warehouses; an attempt a warehouse could not fill and was routed again does not count), its share of all routed orders, and the average score factors of the decisions that chose it. A split order counts once at each of its warehouses, so with split orders the shares add up to more than 100% (split_rate says how many).
-- chart: bar x=warehouse_id y=orders
SELECT
    warehouse_id,
    uniqExact(order_id) AS orders,
    round(100 * uniqExact(order_id) / (
        SELECT uniqExact(order_id) FROM order_states FINAL
        WHERE routed_ms >= {from_ms:Int64} AND routed_ms < {to_ms:Int64} AND warehouse_id != ''
          AND event_time >= toDateTime(intDiv({from_ms:Int64}, 1000))
          AND ({channel:String} = '' OR channel = {channel:String})
    ), 1) AS share_pct,
    round(avgIf(distance_km, decided = 1), 1) AS avg_km,
    round(avgIf(distance, decided = 1), 3) AS avg_distance,
    round(avgIf(sufficiency, decided = 1), 3) AS avg_sufficiency,
    round(avgIf(on_time, decided = 1), 3) AS avg_on_time,
    round(avgIf(cost, decided = 1), 3) AS avg_cost,
    round(avgIf(score, decided = 1), 3) AS avg_score
FROM
(
    -- Each routing attempt is a decision of its own; the order's last routed state names the warehouses that
    -- took its lines in the end. A batch that routed and then cancelled (or acknowledged) an order publishes only
    -- its newest state, which carries the routed time and the warehouses all the same.
    SELECT order_id, arrayJoin(splitByChar(',', warehouses)) AS warehouse_id
    FROM
    (
        SELECT order_id, argMax(warehouse_id, (state = 'routed', event_time_ms)) AS warehouses
        FROM order_states FINAL
        WHERE routed_ms >= {from_ms:Int64} AND routed_ms < {to_ms:Int64} AND warehouse_id != ''
          AND event_time >= toDateTime(intDiv({from_ms:Int64}, 1000))
          AND ({channel:String} = '' OR channel = {channel:String})
        GROUP BY order_id
    )
) AS given
LEFT JOIN
(
    -- The scores of the last decision that chose the warehouse for the order (none when the pool had
    -- already tied the line to it).
    SELECT
        order_id,
        warehouse_id,
        toUInt8(1) AS decided,
        argMax(distance_km, event_time_ms) AS distance_km,
        argMax(distance, event_time_ms) AS distance,
        argMax(sufficiency, event_time_ms) AS sufficiency,
        argMax(on_time, event_time_ms) AS on_time,
        argMax(cost, event_time_ms) AS cost,
        argMax(score, event_time_ms) AS score
    FROM routing_assignments FINAL
    WHERE order_id IN (
        SELECT order_id FROM order_states FINAL
        WHERE routed_ms >= {from_ms:Int64} AND routed_ms < {to_ms:Int64} AND warehouse_id != ''
          AND event_time >= toDateTime(intDiv({from_ms:Int64}, 1000))
    )
    GROUP BY order_id, warehouse_id
) AS decisions USING (order_id, warehouse_id)
WHERE {warehouse:String} = '' OR warehouse_id = {warehouse:String}
GROUP BY warehouse_id
ORDER BY orders DESC, warehouse_id
