-- title: Failed outbound calls by reason
-- description: Marketplace calls that failed for good in the range (connector.calls), per channel, endpoint and reason (connector_credentials: the key was refused or missing; connector_refused: the platform refused the request; connector_in_doubt: no usable answer within the retry budget, and an attempt was sent and got none, so it may have been applied: replay it to learn, never by hand; connector_retries_exhausted: no usable answer within the retry budget, every attempt answered as not applied), with how many were replays and the newest one's error (last_seen in the shop's time zone). The weekly connectivity report's failed-call volume.
-- chart: bar x=reason y=calls series=line
SELECT
    channel,
    endpoint,
    concat(channel, ' ', endpoint) AS line,
    reason,
    count() AS calls,
    sum(replayed) AS replayed_calls,
    toDateTime(intDiv(max(event_time_ms), 1000), {tz:String}) AS last_seen,
    argMax(error, event_time_ms) AS last_error
FROM connector_calls FINAL
WHERE failed = 1
  AND event_time_ms >= {from_ms:Int64} AND event_time_ms < {to_ms:Int64}
  AND event_time BETWEEN toDateTime(intDiv({from_ms:Int64}, 1000)) AND toDateTime(intDiv({to_ms:Int64}, 1000))
  AND ({channel:String} = '' OR channel = {channel:String})
GROUP BY channel, endpoint, reason
ORDER BY calls DESC, channel, endpoint, reason
