-- Refused messages, readable without decoding the payload JSON; original bytes as hex.
CREATE TABLE IF NOT EXISTS dead_letters (
    event_id String,
    event_time DateTime,
    event_time_ms Int64,
    source_topic String,
    source_partition UInt16,
    source_offset Int64,
    stage String,
    reason String,
    detail String,
    original_value_hex String
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY (source_topic, event_id);
