-- title: Routing: share of orders per warehouse
-- description: Orders each warehouse was given, its share of all routed orders, and the average score factors of the decisions that chose it. A split order counts once at each of its warehouses, so with split orders the shares add up to more than 100% (split_rate says how many).
-- chart: bar x=warehouse_id y=orders
SELECT
    warehouse_id,
    uniqExact(order_id) AS orders,
    round(100 * uniqExact(order_id) / (
        SELECT uniqExact(order_id) FROM routing_assignments FINAL
        WHERE event_time_ms >= {from_ms:Int64} AND event_time_ms < {to_ms:Int64}
          AND ({channel:String} = '' OR channel = {channel:String})
    ), 1) AS share_pct,
    round(avg(distance_km), 1) AS avg_km,
    round(avg(distance), 3) AS avg_distance,
    round(avg(sufficiency), 3) AS avg_sufficiency,
    round(avg(on_time), 3) AS avg_on_time,
    round(avg(cost), 3) AS avg_cost,
    round(avg(score), 3) AS avg_score
FROM routing_assignments FINAL
WHERE event_time_ms >= {from_ms:Int64} AND event_time_ms < {to_ms:Int64}
  AND ({channel:String} = '' OR channel = {channel:String})
  AND ({warehouse:String} = '' OR warehouse_id = {warehouse:String})
GROUP BY warehouse_id
ORDER BY orders DESC, warehouse_id
