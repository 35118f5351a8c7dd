-- title: Reservation outcomes
-- description: Orders rejected by reason (oversell prevented), unpaid holds that expired, orders that timed out waiting for payment.
-- chart: bar x=reason y=count series=result
SELECT result, reason, count
FROM
(
    SELECT 'rejected' AS result, reason, count() AS count
    FROM reservations FINAL
    ARRAY JOIN splitByChar(',', reasons) AS reason
    WHERE outcome = 'REJECTED'
      AND event_time_ms >= {from_ms:Int64} AND event_time_ms < {to_ms:Int64}
      AND ({channel:String} = '' OR channel = {channel:String})
    GROUP BY reason
    UNION ALL
    SELECT 'hold_expired' AS result, reason, count() AS count
    FROM hold_decisions FINAL
    WHERE outcome = 'EXPIRED'
      AND event_time_ms >= {from_ms:Int64} AND event_time_ms < {to_ms:Int64}
      AND ({sku:String} = '' OR sku = {sku:String})
    GROUP BY reason
    UNION ALL
    SELECT 'payment_timeout' AS result, 'no payment within the timeout' AS reason, count() AS count
    FROM order_states FINAL
    WHERE state = 'payment_timeout'
      AND event_time_ms >= {from_ms:Int64} AND event_time_ms < {to_ms:Int64}
      AND ({channel:String} = '' OR channel = {channel:String})
)
WHERE count > 0
ORDER BY result, count DESC, reason
