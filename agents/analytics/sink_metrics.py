"""The sink's Prometheus metrics and its "keeping up" rule, built on scrape from ``SinkStatus``.

Reads the ``SinkStatus`` the sink loop writes (rows, batches, refusals, retries, lag, last insert);
writes nothing. Served on the sink's ``/metrics`` (``agents.analytics.sink_views``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import Metric

from agents.analytics.sink import SinkStatus
from streams.contract.reasons import Reason
from streams.metrics import StatsCollector, counter, gauge

# /readyz: with a backlog and no insert for this long, the sink is not keeping up (stuck, not busy).
STALL_S = 60.0


def keeping_up(lag: int, last_insert_ms: int, started_ms: int, now_ms: int, stall_s: float = STALL_S) -> bool:
    """False when messages wait (``lag`` > 0) and nothing went into ClickHouse for ``stall_s``
    (counted from the start when nothing was inserted yet). An unknown lag (-1) is not a backlog."""
    if lag <= 0:
        return True
    since = last_insert_ms or started_ms
    return now_ms - since < stall_s * 1000


def sink_collector(status: SinkStatus) -> StatsCollector:
    return StatsCollector(lambda: _families(status))


def _families(status: SinkStatus) -> Iterator[Metric]:
    snap = status.snapshot()
    for field, name, doc in (
        ("rows", "sink_rows", "Events inserted into ClickHouse"),
        ("batches", "sink_inserts", "Insert batches that went into ClickHouse"),
        ("retries", "sink_insert_errors", "Failed inserts and broker errors, each retried"),
        ("unreadable", "sink_unreadable", "Messages the sink could not read (dead-lettered)"),
        (Reason.UNSTORABLE.value, "sink_unstorable", "Messages ClickHouse refused (dead-lettered)"),
        ("dead_letters", "sink_dead_letters", "Dead letters the sink wrote"),
    ):
        family = counter(name, doc)
        family.add_metric([], snap[field])
        yield family
    by_type = counter("sink_rows_by_type", "Events inserted, per event type", ["event_type"])
    for event_type, n in sorted(snap["by_type"].items()):
        by_type.add_metric([event_type], n)
    yield by_type
    lag = gauge("sink_lag_records", "Records on the sink's partitions not yet in ClickHouse (-1: unknown)")
    lag.add_metric([], snap["lag"])
    yield lag
    age = gauge("sink_last_insert_age_seconds", "Seconds since the last insert (-1: none yet)")
    age.add_metric([], time.time() - snap["last_insert_ms"] / 1000 if snap["last_insert_ms"] else -1.0)
    yield age
    for field, name, doc in (
        ("broker_ok", "sink_broker_up", "1 when the broker answers"),
        ("clickhouse_ok", "sink_clickhouse_up", "1 when ClickHouse answers"),
        ("ready", "sink_ready", "1 when /readyz says ready"),
    ):
        up = gauge(name, doc)
        up.add_metric([], 1.0 if snap[field] else 0.0)
        yield up
