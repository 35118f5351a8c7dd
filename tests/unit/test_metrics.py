"""The metrics helpers and the collectors built on scrape, without a broker or a running process."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.analytics.sink import SinkStatus
from agents.analytics.sink_metrics import keeping_up, sink_collector
from agents.channels.connector_metrics import connector_collector
from agents.channels.connector_process import make_app
from streams import metrics
from streams.engine.clock import wall_ms
from tests.conftest import free_port
from tests.helpers import AppServer


def samples(*collectors: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render(metrics.new_registry(*collectors)).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def test_names_get_the_prefix_once_and_counters_their_total_from_the_library() -> None:
    assert metrics.metric_name("sink_rows") == "stockflow_sink_rows"
    assert metrics.metric_name("stockflow_sink_rows") == "stockflow_sink_rows"
    with pytest.raises(ValueError, match="_total"):
        metrics.metric_name("sink_rows_total")
    with pytest.raises(ValueError, match="seconds"):
        metrics.histogram("engine_commit_ms", "a duration in the wrong unit")
    family = metrics.counter("sink_rows", "rows")
    family.add_metric([], 3)
    assert samples(metrics.StatsCollector(lambda: [family])) == {("stockflow_sink_rows_total", ()): 3.0}
    assert metrics.CONTENT_TYPE.startswith("text/plain; version=0.0.4")


def test_a_collector_is_not_run_when_registered() -> None:
    calls: list[int] = []
    metrics.new_registry(metrics.StatsCollector(lambda: calls.append(1) or []))
    assert calls == []


def test_the_sink_metrics_follow_its_status() -> None:
    status = SinkStatus(rows=5, batches=2, retries=1, unreadable=1, lag=7, last_insert_ms=1, broker_ok=True,
                        clickhouse_ok=True, by_type={"OrderPlaced": 5})  # fmt: skip
    found = samples(sink_collector(status))
    assert found[("stockflow_sink_rows_total", ())] == 5
    assert found[("stockflow_sink_inserts_total", ())] == 2
    assert found[("stockflow_sink_insert_errors_total", ())] == 1
    assert found[("stockflow_sink_rows_by_type_total", (("event_type", "OrderPlaced"),))] == 5
    assert found[("stockflow_sink_lag_records", ())] == 7
    assert found[("stockflow_sink_ready", ())] == 1
    assert found[("stockflow_sink_last_insert_age_seconds", ())] > 0


def test_keeping_up_means_no_backlog_left_without_an_insert() -> None:
    assert keeping_up(0, 0, 0, 10**9)
    assert keeping_up(-1, 0, 0, 10**9)  # unknown lag is no backlog
    assert keeping_up(50, 100_000, 0, 130_000)
    assert not keeping_up(50, 100_000, 0, 160_000)
    assert not keeping_up(50, 0, 0, 60_000)  # nothing inserted since the start a minute ago


def test_the_connector_metrics_follow_the_status_view() -> None:
    endpoint = {"ok": 3, "already_applied": 1, "stale": 0, "retried": 2, "failed": 1,
                "latency_ms": {"p50": 20.0, "p99": 250.0}}  # fmt: skip
    idle = {"ok": 0, "already_applied": 0, "stale": 0, "retried": 0, "failed": 0,
            "latency_ms": {"p50": None, "p99": None}}  # fmt: skip
    status = {"ready": True, "rate_share": 0.5, "refunds": {"received": 4, "undecodable": 1}, "stock": {"received": 0},
              "channels": {"jd": {"failing": True, "refunds_queued": 2, "stock_pending": 1,
                                  "endpoints": {"refund": endpoint, "stock": idle}}}}  # fmt: skip
    found = samples(connector_collector(lambda: status, lambda: {"jd": 86_400_000, "pdd": None}, lambda: 0))
    jd_refund = (("channel", "jd"), ("endpoint", "refund"))
    assert found[("stockflow_connector_calls_total", (*jd_refund, ("outcome", "ok")))] == 3
    assert found[("stockflow_connector_calls_total", (*jd_refund, ("outcome", "failed")))] == 1
    assert found[("stockflow_connector_call_latency_seconds", (*jd_refund, ("quantile", "0.99")))] == 0.25
    assert ("stockflow_connector_call_latency_seconds", (("channel", "jd"), ("endpoint", "stock"),
                                                         ("quantile", "0.99"))) not in found  # fmt: skip
    assert found[("stockflow_connector_failed_queue_depth", (("channel", "jd"), ("queue", "refunds")))] == 2
    assert found[("stockflow_connector_channel_failing", (("channel", "jd"),))] == 1
    assert found[("stockflow_connector_credential_expiry_seconds", (("channel", "jd"),))] == 86_400
    assert ("stockflow_connector_credential_expiry_seconds", (("channel", "pdd"),)) not in found
    assert found[("stockflow_connector_records_received_total", (("loop", "refunds"),))] == 4
    assert found[("stockflow_connector_records_undecodable_total", (("loop", "refunds"),))] == 1
    assert found[("stockflow_connector_rate_share", ())] == 0.5


def test_the_connector_status_view_serves_metrics_over_http() -> None:
    status = {"ready": True, "channels": {"jd": {"refunds_queued": 0, "stock_pending": 3, "endpoints": {}}}}
    key = SimpleNamespace(expires_at_ms=wall_ms() + 86_400_000)
    process: Any = SimpleNamespace(status=lambda: status, ready=True, store=SimpleNamespace(all=lambda: {"jd": key}))
    server = AppServer(make_app(process), free_port())
    try:
        response = httpx.get(f"{server.url}/metrics", timeout=10)
    finally:
        server.stop()
    assert response.status_code == 200 and response.headers["content-type"] == metrics.CONTENT_TYPE
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for family in text_string_to_metric_families(response.text) for s in family.samples}  # fmt: skip
    assert found[("stockflow_connector_failed_queue_depth", (("channel", "jd"), ("queue", "stock")))] == 3
    assert 0 < found[("stockflow_connector_credential_expiry_seconds", (("channel", "jd"),))] <= 86_400
