-- OrderHealthScored (order.health): one row per paid order, its health score and each factor's points
-- (agents/orders/health.py). Event id '<order id>:health'; ReplacingMergeTree on it, read with FINAL,
-- so a redelivered score is one row. The focus pool (dashboards/focus_pool.sql) is focus = 1.
CREATE TABLE IF NOT EXISTS order_health (
    event_id String,
    event_time DateTime,
    event_time_ms Int64,
    order_id String,
    channel String,
    customer_id String,
    score Float64,
    focus UInt8,
    focus_below Float64,
    promptness_points Float64,
    address_points Float64,
    complexity_points Float64,
    returns_points Float64,
    coupon_points Float64,
    notes String,
    paid_after_ms Int64,
    return_count Int32
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY event_id;
