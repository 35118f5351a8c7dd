-- title: Reservation outcomes
-- description: Orders rejected by reason (oversell prevented), unpaid holds that expired, orders that timed out waiting for payment. With a SKU: rejections and expiries of that SKU's lines only (payment timeouts are per order and are left out).
-- chart: bar x=reason y=count series=result
SELECT result, reason, count
FROM
(
    SELECT 'rejected' AS result, reason, count() AS count
    FROM reservations FINAL
    ARRAY JOIN splitByChar(',', reasons) AS reason
    WHERE outcome = 'REJECTED' AND {sku:String} = ''
      AND event_time_ms >= {from_ms:Int64} AND event_time_ms < {to_ms:Int64}
      AND event_time BETWEEN toDateTime(intDiv({from_ms:Int64}, 1000)) AND toDateTime(intDiv({to_ms:Int64}, 1000))
      AND ({channel:String} = '' OR channel = {channel:String})
    GROUP BY reason
    UNION ALL
    -- One SKU: the reservations table keeps no SKUs, so the lines are read from the stored event (with
    -- functions every supported ClickHouse has); an order counts once per reason given to a line of that SKU.
    SELECT 'rejected' AS result, visitParamExtractString(line, 'reason') AS reason, uniqExact(event_id) AS count
    FROM events FINAL
    ARRAY JOIN extractAll(visitParamExtractRaw(payload, 'lines'), '[{][^{}]*[}]') AS line
    WHERE event_type = 'ReservationDecided' AND {sku:String} != ''
      AND visitParamExtractString(line, 'sku') = {sku:String} AND visitParamExtractString(line, 'reason') != ''
      AND event_id IN (
          SELECT event_id FROM reservations FINAL
          WHERE outcome = 'REJECTED'
            AND event_time_ms >= {from_ms:Int64} AND event_time_ms < {to_ms:Int64}
            AND event_time BETWEEN toDateTime(intDiv({from_ms:Int64}, 1000)) AND toDateTime(intDiv({to_ms:Int64}, 1000))
            AND ({channel:String} = '' OR channel = {channel:String})
      )
    GROUP BY reason
    UNION ALL
    SELECT 'hold_expired' AS result, reason, count() AS count
    FROM hold_decisions FINAL
    WHERE outcome = 'EXPIRED'
      AND event_time_ms >= {from_ms:Int64} AND event_time_ms < {to_ms:Int64}
      AND event_time BETWEEN toDateTime(intDiv({from_ms:Int64}, 1000)) AND toDateTime(intDiv({to_ms:Int64}, 1000))
      AND ({sku:String} = '' OR sku = {sku:String})
    GROUP BY reason
    UNION ALL
    SELECT 'payment_timeout' AS result, 'no payment within the timeout' AS reason, count() AS count
    FROM order_states FINAL
    WHERE state = 'payment_timeout' AND {sku:String} = ''
      AND event_time_ms >= {from_ms:Int64} AND event_time_ms < {to_ms:Int64}
      AND event_time BETWEEN toDateTime(intDiv({from_ms:Int64}, 1000)) AND toDateTime(intDiv({to_ms:Int64}, 1000))
      AND ({channel:String} = '' OR channel = {channel:String})
)
WHERE count > 0
ORDER BY result, count DESC, reason
