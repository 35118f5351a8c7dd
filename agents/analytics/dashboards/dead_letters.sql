-- title: Dead letters by topic and reason
-- description: Refused messages: where they came from, why, how many, and the newest one (in the shop's time zone).
-- chart: bar x=reason y=count series=source_topic
SELECT
    source_topic,
    reason,
    count() AS count,
    toDateTime(intDiv(max(event_time_ms), 1000), {tz:String}) AS last_seen
FROM dead_letters FINAL
WHERE event_time_ms >= {from_ms:Int64} AND event_time_ms < {to_ms:Int64}
  AND event_time BETWEEN toDateTime(intDiv({from_ms:Int64}, 1000)) AND toDateTime(intDiv({to_ms:Int64}, 1000))
GROUP BY source_topic, reason
ORDER BY count DESC, source_topic, reason
