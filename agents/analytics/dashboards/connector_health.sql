-- title: Connector health board
-- description: Per channel and endpoint, the outbound marketplace calls that ended in the range (live and replayed; connector.calls): calls, their success rate (done: ok, or the platform had it already / a newer figure; of the calls that finished, as `stockflow connectors status` counts them), attempts and retries, latency p50/p99 of every answered attempt, the last error and when, the last success, the calls `stockflow connectors replay` sent and how many of them failed again, and the key the last call used with its expiry countdown in days (as of now). Times in the shop's time zone.
-- chart: table
SELECT
    channel,
    endpoint,
    count() AS calls,
    round((count() - sum(failed)) / count(), 4) AS success_rate,
    countIf(outcome = 'ok') AS ok,
    countIf(outcome IN ('already_applied', 'stale')) AS done_before,
    sum(failed) AS failed_calls,
    sum(attempts) AS attempts_sent,
    sum(attempts) - count() AS retried,
    sum(replayed) AS replayed_calls,
    sumIf(failed, replayed = 1) AS replayed_failed,
    round(quantileExactArray(0.5)(latencies_ms), 1) AS p50_ms,
    round(quantileExactArray(0.99)(latencies_ms), 1) AS p99_ms,
    argMaxIf(error, error_ms, error_ms > 0) AS last_error,
    if(maxIf(error_ms, error_ms > 0) = 0, '', toString(toDateTime(intDiv(maxIf(error_ms, error_ms > 0), 1000)), {tz:String})) AS last_error_at,
    if(maxIf(event_time_ms, failed = 0) = 0, '', toString(toDateTime(intDiv(maxIf(event_time_ms, failed = 0), 1000)), {tz:String})) AS last_ok_at,
    argMax(key_fingerprint, event_time_ms) AS key,
    if(argMax(key_expires_ms, event_time_ms) = 0, '', toString(toDateTime(intDiv(argMax(key_expires_ms, event_time_ms), 1000)), {tz:String})) AS key_expires_at,
    if(argMax(key_expires_ms, event_time_ms) = 0, NULL, toInt64(floor((argMax(key_expires_ms, event_time_ms) - {now_ms:Int64}) / 86400000))) AS key_days_left
FROM connector_calls FINAL
WHERE event_time_ms >= {from_ms:Int64} AND event_time_ms < {to_ms:Int64}
  AND event_time BETWEEN toDateTime(intDiv({from_ms:Int64}, 1000)) AND toDateTime(intDiv({to_ms:Int64}, 1000))
  AND ({channel:String} = '' OR channel = {channel:String})
GROUP BY channel, endpoint
ORDER BY success_rate, channel, endpoint
