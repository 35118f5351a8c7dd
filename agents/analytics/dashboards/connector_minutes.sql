-- title: Outbound calls per minute, done and failed
-- description: Per channel and endpoint, the marketplace calls that ended in each minute of the range (connector.calls): done, failed for good, and the first and last of each; the weekly connectivity report finds its incidents in these minutes (a minute whose calls all failed is down). minute in the shop's time zone; minute_ms in epoch ms.
-- chart: line x=minute y=failed series=line
SELECT
    toDateTime(intDiv(minute_ms, 1000), {tz:String}) AS minute,
    minute_ms,
    concat(channel, ' ', endpoint) AS line,
    channel,
    endpoint,
    done,
    failed_calls AS failed,
    first_ok_ms,
    last_ok_ms,
    first_fail_ms,
    last_fail_ms,
    error
FROM
(
    SELECT
        channel,
        endpoint,
        intDiv(event_time_ms, 60000) * 60000 AS minute_ms,
        countIf(failed = 0) AS done,
        countIf(failed = 1) AS failed_calls,
        minIf(event_time_ms, failed = 0) AS first_ok_ms,
        maxIf(event_time_ms, failed = 0) AS last_ok_ms,
        minIf(event_time_ms, failed = 1) AS first_fail_ms,
        maxIf(event_time_ms, failed = 1) AS last_fail_ms,
        argMaxIf(error, event_time_ms, failed = 1) AS error
    FROM connector_calls FINAL
    WHERE event_time_ms >= {from_ms:Int64} AND event_time_ms < {to_ms:Int64}
      AND event_time BETWEEN toDateTime(intDiv({from_ms:Int64}, 1000)) AND toDateTime(intDiv({to_ms:Int64}, 1000))
      AND ({channel:String} = '' OR channel = {channel:String})
    GROUP BY channel, endpoint, minute_ms
)
ORDER BY minute_ms, channel, endpoint
