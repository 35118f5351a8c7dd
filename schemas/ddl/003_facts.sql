-- Typed facts the dashboards read, one table per kind of event, one row per event id.
-- ReplacingMergeTree on event_id: a batch re-inserted after a crash or a ClickHouse outage
-- collapses into the rows already there; dashboards read with FINAL, so nothing counts twice.
CREATE TABLE IF NOT EXISTS order_states (
    event_id String,
    event_time DateTime,
    event_time_ms Int64,
    order_id String,
    channel String,
    state String,
    previous_state String,
    reason String,
    warehouse_id String,
    placed_ms Int64,
    reserved_ms Int64,
    paid_ms Int64,
    routed_ms Int64,
    acknowledged_ms Int64,
    shipped_ms Int64,
    delivered_ms Int64
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS reservations (
    event_id String,
    event_time DateTime,
    event_time_ms Int64,
    order_id String,
    channel String,
    outcome String,
    reasons String,
    line_count UInt16,
    placed_at_ms Int64
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS hold_decisions (
    event_id String,
    event_time DateTime,
    event_time_ms Int64,
    order_id String,
    sku String,
    action String,
    outcome String,
    reason String,
    qty Int32
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS stock_levels (
    event_id String,
    event_time DateTime,
    event_time_ms Int64,
    sku String,
    on_hand Int32,
    locked Int32,
    sold Int32,
    presale_reserved Int32,
    available Int32,
    paused UInt8
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS alerts (
    event_id String,
    event_time DateTime,
    event_time_ms Int64,
    kind String,
    severity String,
    subject String,
    message String,
    cleared UInt8
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS routing_assignments (
    event_id String,
    event_time DateTime,
    event_time_ms Int64,
    decision_id String,
    order_id String,
    channel String,
    warehouse_id String,
    split UInt8,
    line_count UInt16,
    distance_km Float64,
    distance Float64,
    sufficiency Float64,
    on_time Float64,
    cost Float64,
    score Float64
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY event_id;
