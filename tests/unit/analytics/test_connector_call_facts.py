"""A connector call as the connectors record it: through the Avro codec into ``connector_calls``' columns, and the
shadow card's rows."""

from __future__ import annotations

from agents.channels.outbound import CallOutcome
from agents.shadow import card
from tests.unit.analytics.test_refund_facts import ddl_columns, sunk
from tests.unit.shadow.sample_report import shadow_report

T = 1_794_326_400_000  # 2026-11-11T00:00+08:00


def test_a_call_record_becomes_one_row_with_the_tables_columns() -> None:
    call = CallOutcome("jd", "refund", T, replayed=True, key_fingerprint="fp", key_expires_ms=9_000)
    call.latencies_ms += [12.34567, 80.0]
    call.failed_attempt("HTTP 500 " + "x" * 900, T + 50)
    record = call.record("already_applied", "connector_refused", 2, T + 100, "abc:1")
    assert record["reason"] == "" and len(record["error"]) == 500 and record["event_id"] == "call:jd:refund:abc:1"
    [(table, row)] = sunk("ConnectorCalled", dict(record))
    assert table == "connector_calls" and list(row) == ddl_columns()["connector_calls"]
    assert row["failed"] == 0 and row["replayed"] == 1 and row["latencies_ms"] == [12.346, 80.0]
    failed = CallOutcome("jd", "refund", T).record("failed", "connector_credentials", 1, T + 1, "abc:2")
    [(_, row)] = sunk("ConnectorCalled", dict(failed))
    assert row["failed"] == 1 and row["reason"] == "connector_credentials" and row["latencies_ms"] == []


def test_the_shadow_card_has_a_row_per_decision_either_run_made() -> None:
    [row] = card.card_rows([shadow_report()])  # no refund decided by either run: no refunds row
    assert row["decision"] == "routing" and row["differing"] == 4 and row["share"] == 0.3333
    assert row["most_common_change"] == "WH-SH -> WH-HZ (4)" and row["first_example"] == "jd:R1: WH-SH -> WH-HZ"
    assert row["candidate"] == "routing weights distance 0.9" and row["running"] is True
