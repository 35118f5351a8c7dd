-- ConnectorCalled (connector.calls): one row per outbound marketplace call as it ended, live or replayed
-- (agents/channels/calls.py). The connector health board (dashboards/connector_health.sql) and the weekly
-- connectivity report (agents/channels/connectivity.py) read it. ReplacingMergeTree on the event id, read
-- with FINAL, so a record the sink stores twice is one call.
CREATE TABLE IF NOT EXISTS connector_calls (
    event_id String,
    event_time DateTime,
    event_time_ms Int64,
    channel String,
    endpoint String,
    outcome String,
    failed UInt8,
    reason String,
    attempts Int32,
    latencies_ms Array(Nullable(Float64)),  -- Nullable: a batch whose calls all went unanswered is empty lists only, which pyarrow types as lists of nulls
    error String,
    error_ms Int64,
    started_ms Int64,
    replayed UInt8,
    key_fingerprint String,
    key_expires_ms Int64
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY (channel, endpoint, event_time_ms, event_id);
