-- Every business event the sink reads, one row per distinct event.
-- ReplacingMergeTree on (topic, event_id): a redelivered or re-sent event collapses into one row;
-- dashboards read with FINAL (or GROUP BY event_id) so nothing is counted twice.
CREATE TABLE IF NOT EXISTS events (
    topic String,
    event_type String,
    event_id String,
    key String,
    partition UInt16,
    offset UInt64,
    event_time DateTime,
    event_time_ms Int64,
    ingested_at DateTime,
    payload String
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY (topic, event_id);
