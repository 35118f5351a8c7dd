-- title: SLA breaches over time
-- description: Paid orders not pushed to (or not acknowledged by) a warehouse within the SLA: red alerts raised and cleared per hour of the shop's time zone.
-- chart: line x=hour y=raised,clearings
SELECT
    toStartOfHour(toDateTime(intDiv(event_time_ms, 1000), {tz:String})) AS hour,
    countIf(cleared = 0) AS raised,
    countIf(cleared = 1) AS clearings
FROM alerts FINAL
WHERE kind = 'sla_breach'
  AND event_time_ms >= {from_ms:Int64} AND event_time_ms < {to_ms:Int64}
  AND event_time BETWEEN toDateTime(intDiv({from_ms:Int64}, 1000)) AND toDateTime(intDiv({to_ms:Int64}, 1000))
GROUP BY hour
ORDER BY hour
