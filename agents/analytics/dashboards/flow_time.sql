-- title: Flow time per lifecycle stage
-- description: Seconds each order spent in each stage (placed→reserved→paid→routed→shipped→delivered; a presale order's wait for its balance apart, as deposit→balance), p50/p90/p99, grouped by stage, channel, warehouse or placing hour in the shop's time zone (parameter by). A split order counts at each of its warehouses. The stage with the highest p90 is where orders wait.
-- chart: bar x=dimension y=p90_s series=stage
SELECT
    -- A split order's warehouse_id lists its warehouses: by warehouse it counts at each (of those asked for).
    arrayJoin(if({by:String} = 'warehouse',
                 arrayFilter(w -> {warehouse:String} = '' OR w = {warehouse:String}, splitByChar(',', warehouse)),
                 [multiIf({by:String} = 'channel', channel,
                          {by:String} = 'hour', toString(toStartOfHour(toDateTime(intDiv(placed, 1000), {tz:String}))),
                          stage)])) AS dimension,
    stage,
    count() AS orders,
    round(quantileExact(0.5)(ms) / 1000, 3) AS p50_s,
    round(quantileExact(0.9)(ms) / 1000, 3) AS p90_s,
    round(quantileExact(0.99)(ms) / 1000, 3) AS p99_s
FROM
(
    SELECT
        order_id,
        any(channel) AS channel,
        max(warehouse_id) AS warehouse,
        max(placed_ms) AS placed,
        max(reserved_ms) AS reserved,
        max(paid_ms) AS paid,
        max(routed_ms) AS routed,
        max(shipped_ms) AS shipped,
        max(delivered_ms) AS delivered,
        max(reason = 'deposit_paid') AS presale
    FROM order_states FINAL
    -- Every record of an order carries its placing time, and none is older than the placing by a day (the
    -- marketplace's clock may run ahead): the months before the range are never read.
    WHERE event_time >= toDateTime(intDiv({from_ms:Int64}, 1000)) - INTERVAL 1 DAY
    GROUP BY order_id
    HAVING placed >= {from_ms:Int64} AND placed < {to_ms:Int64}
)
ARRAY JOIN
    -- A presale order waits for its balance by design (days, the presale's window): its own stage, or it would
    -- pass for the slowest payments of the range.
    ['1 placed→reserved', if(presale, '2 deposit→balance', '2 reserved→paid'), '3 paid→routed', '4 routed→shipped',
     '5 shipped→delivered'] AS stage,
    -- At least 0: the placing carries the marketplace's clock, which may run ahead of the pipeline's.
    arrayMap(x -> greatest(x, 0), [reserved - placed, paid - reserved, routed - paid, shipped - routed,
                                   delivered - shipped]) AS ms,
    [placed > 0 AND reserved > 0, reserved > 0 AND paid > 0, paid > 0 AND routed > 0,
     routed > 0 AND shipped > 0, shipped > 0 AND delivered > 0] AS complete
WHERE complete
  AND ({channel:String} = '' OR channel = {channel:String})
  AND ({warehouse:String} = '' OR has(splitByChar(',', warehouse), {warehouse:String}))
GROUP BY dimension, stage
ORDER BY dimension, stage
