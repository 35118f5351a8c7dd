-- title: Focus pool
-- description: Paid orders whose health score is under the focus threshold (60 unless configured) and that are not finished (delivered, cancelled, rejected, timed out), newest first, paid in the range (paid_at in the shop's time zone). Each factor's points: promptness (placed→paid), address (road number, building, unit, room), complexity (bundles, custom lines, many lines), returns (the customer's completed returns), coupon (a flash-sale coupon adds); why: the points lost or added.
-- chart: table
SELECT
    toDateTime(intDiv(h.event_time_ms, 1000), {tz:String}) AS paid_at,
    h.order_id AS order_id,
    h.channel AS channel,
    if(s.last_state = '', 'paid', s.last_state) AS current_state,
    h.score AS score,
    h.promptness_points AS promptness,
    h.address_points AS address,
    h.complexity_points AS complexity,
    h.returns_points AS returns,
    h.coupon_points AS coupon,
    h.return_count AS customer_returns,
    round(h.paid_after_ms / 60000, 1) AS paid_after_min,
    h.customer_id AS customer_id,
    h.notes AS why
FROM
(
    SELECT *
    FROM order_health FINAL
    WHERE focus = 1
      AND event_time_ms >= {from_ms:Int64} AND event_time_ms < {to_ms:Int64}
      AND event_time BETWEEN toDateTime(intDiv({from_ms:Int64}, 1000)) AND toDateTime(intDiv({to_ms:Int64}, 1000))
      AND ({channel:String} = '' OR channel = {channel:String})
) AS h
LEFT JOIN
(
    -- Each scored order's state now: the furthest in the lifecycle, not the newest stamp (a placing carries
    -- the marketplace's clock, up to minutes ahead, so it can be stamped after the payment that followed it).
    SELECT
        order_id,
        argMax(state, (indexOf(['placed', 'reserved', 'paid', 'routed', 'shipped', 'delivered',
                                'rejected', 'cancelled', 'payment_timeout'], state), event_time_ms)) AS last_state
    FROM order_states FINAL
    WHERE order_id IN (SELECT order_id FROM order_health FINAL WHERE focus = 1 AND event_time_ms >= {from_ms:Int64})
    GROUP BY order_id
) AS s ON s.order_id = h.order_id
WHERE current_state NOT IN ('delivered', 'cancelled', 'rejected', 'payment_timeout')
ORDER BY h.event_time_ms DESC, order_id
