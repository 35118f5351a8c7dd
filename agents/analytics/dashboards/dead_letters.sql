-- title: Dead letters by topic and reason
-- description: Refused messages: where they came from, why, how many, and the newest one.
-- chart: bar x=reason y=count series=source_topic
SELECT
    source_topic,
    reason,
    count() AS count,
    max(event_time) AS last_seen
FROM dead_letters FINAL
WHERE event_time_ms >= {from_ms:Int64} AND event_time_ms < {to_ms:Int64}
GROUP BY source_topic, reason
ORDER BY count DESC, source_topic, reason
