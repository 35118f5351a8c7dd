"""Every long-running process serves Prometheus metrics and real health checks: the worker, the sink,
the intake and the connectors, each scraped after a few events and parsed with the client library's
own parser; the intake's ``/readyz`` says 503 when the broker does not answer."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.inspect import checks, probe
from streams.devstack.connectorproc import ConnectorsProcess
from streams.settings import Settings
from tests.conftest import free_port
from tests.helpers import wait_for, wait_stock
from tests.integration.test_connectors import instruction, send_refunds, sim, wait_issued  # noqa: F401 - sim: a fixture
from tests.integration.test_connectors import settings as connector_settings  # noqa: F401 - a fixture
from tests.integration.test_intake import start_intake  # noqa: F401 - a fixture

pytestmark = pytest.mark.broker

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample at ``url`` by (name, sorted labels); the content type is Prometheus's text format."""
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}  # fmt: skip


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def names(samples: Samples) -> set[str]:
    return {n for n, _ in samples}


RECEIPT = {"document_id": "PO-M1", "kind": "receipt", "sku": "SKU-M", "warehouse_id": "WH-SH", "qty": "10",
           "reason": "first delivery"}  # fmt: skip


def test_worker_sink_and_intake_serve_metrics_and_health(make_settings, start_worker, start_sink, start_intake) -> None:  # noqa: F811
    settings = make_settings(safety_threshold=0)
    worker = start_worker(settings)
    sink = start_sink(settings)
    intake = start_intake(settings)
    for n in range(3):
        assert intake.wms("/v1/wms/stock", {**RECEIPT, "document_id": f"PO-M{n}"}).status_code == 200
    assert intake.wms("/v1/wms/stock", {**RECEIPT, "warehouse_id": "WH-MARS"}).status_code == 422
    wait_stock(worker, "SKU-M", on_hand=30)

    # The worker: records per topic, batches, commit durations, state size, lag per partition.
    base = f"http://127.0.0.1:{settings.web_port}"
    adjustments = settings.topic("stock.adjustments")
    # The lag is the engine thread's once-a-second sample: the first after the records may come later.
    engine = wait_for(lambda: (s := scrape(f"{base}/metrics"))
                      and total(s, "stockflow_engine_records_in_total", topic=adjustments) >= 3
                      and any(n == "stockflow_engine_consumer_lag" for n, _ in s) and s,
                      timeout_s=90, what="the engine's records in and its lag sample")  # fmt: skip
    assert total(engine, "stockflow_engine_batches_total") > 0
    assert total(engine, "stockflow_engine_commit_seconds_count") > 0
    assert total(engine, "stockflow_engine_batch_events_count") > 0
    assert total(engine, "stockflow_engine_records_out_total") > 0
    assert total(engine, "stockflow_engine_state_keys") > 0
    assert total(engine, "stockflow_engine_ready") == 1
    assert httpx.get(f"{base}/healthz", timeout=10).json()["ok"] is True
    assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200

    # The sink: rows and inserts, its lag and the age of its last insert.
    sink_url = f"http://127.0.0.1:{settings.sink_port}"
    sunk = wait_for(lambda: (s := scrape(f"{sink_url}/metrics")) and total(s, "stockflow_sink_rows_total") >= 3 and s,
                    timeout_s=60, what="the sink's rows")  # fmt: skip
    assert total(sunk, "stockflow_sink_inserts_total") > 0
    assert total(sunk, "stockflow_sink_rows_by_type_total", event_type="StockAdjusted") >= 3
    assert total(sunk, "stockflow_sink_last_insert_age_seconds") >= 0
    assert {"stockflow_sink_insert_errors_total", "stockflow_sink_lag_records", "stockflow_sink_ready"} <= names(sunk)
    ready = httpx.get(f"{sink_url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["keeping_up"] is True

    # The intake: requests by route template and status, refusals by reason, produce latency.
    served = scrape(f"{intake.url}/metrics")
    assert total(served, "stockflow_intake_requests_total", route="/v1/wms/stock", status="200") == 3
    assert total(served, "stockflow_intake_refusals_total", reason="unknown_warehouse") == 1
    assert total(served, "stockflow_intake_accepted_total", event_type="StockAdjusted") == 3
    assert total(served, "stockflow_intake_produce_seconds_count") == 3
    assert httpx.get(f"{intake.url}/readyz", timeout=10).status_code == 200
    del sink

    # Inspection reads the same processes and the broker.
    thresholds = checks.load_config()
    results = {(r.check, r.subject): r for r in checks.evaluate(probe.measure(settings, thresholds), thresholds)}
    engine_lag = results[("engine_lag", f"{settings.app_id}.engine")]
    assert engine_lag.status is checks.Status.OK and engine_lag.value is not None
    assert results[("sink_insert_lag", "")].status is checks.Status.OK
    assert results[("dead_letter_rate", "")].value is not None


def test_the_intake_is_not_ready_without_a_broker(make_settings, start_intake) -> None:  # noqa: F811
    settings = make_settings()
    intake = start_intake(settings, kafka_bootstrap=f"127.0.0.1:{free_port()}")
    assert httpx.get(f"{intake.url}/healthz", timeout=10).status_code == 200  # alive
    answer = httpx.get(f"{intake.url}/readyz", timeout=10)
    assert answer.status_code == 503 and answer.json() == {"ready": False, "broker_reachable": False}


def test_the_connectors_serve_call_metrics(connector_settings: Settings, tmp_path: Path) -> None:  # noqa: F811
    child = ConnectorsProcess(connector_settings, tmp_path / "connectors.log").start()
    try:
        child.wait_ready(60)
        batch = [instruction("jd", n) for n in range(3)]
        send_refunds(connector_settings, batch)
        wait_issued(connector_settings, {i["refund_id"] for i in batch})
        samples = scrape(f"http://127.0.0.1:{connector_settings.connectors_port}/metrics")
        assert total(samples, "stockflow_connector_calls_total", channel="jd", endpoint="refund", outcome="ok") == 3
        assert total(samples, "stockflow_connector_call_latency_seconds", channel="jd", quantile="0.99") > 0
        assert total(samples, "stockflow_connector_credential_expiry_seconds", channel="jd") > 300 * 86400
        assert total(samples, "stockflow_connector_failed_queue_depth", channel="jd") == 0
        assert total(samples, "stockflow_connector_ready") == 1
        thresholds = checks.load_config()
        found = {(m.check, m.subject): m for m in probe.measure(connector_settings, thresholds)}
        assert found[("credential_expiry", "jd")].value is not None and found[("credential_expiry", "jd")].value > 300
        assert found[("failed_queue_depth", "jd")].value == 0
        child.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert child.proc.wait(30) == 0  # type: ignore[union-attr]
    finally:
        child.kill9()
