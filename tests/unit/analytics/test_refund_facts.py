"""The refund fact rows, without a broker or ClickHouse: what the sink makes of the refund processor's real
outputs and of the refund events around it, that every row fits its table in ``schemas/ddl``, and the refund
dashboards' parameters."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from agents.analytics import facts
from agents.analytics import queries as dashboards
from agents.analytics.sink import Received, decode_batch
from loadtest import events as ev
from streams.contract.codec import default_codec
from streams.contract.topics import REFUND_EVENTS, REFUND_ISSUED
from streams.settings import Settings
from tests.unit.refunds.test_run_refunds import delivered_order, of, pipeline, refund

CODEC = default_codec()
DDL = Path(__file__).resolve().parents[3] / "schemas" / "ddl"
REFUND_TABLES = ("refund_states", "refund_returns", "refund_issues", "refund_settlements", "connector_failures")
REFUND_DASHBOARDS = ("refund_exceptions", "refund_flow_time", "refund_mismatches", "refund_reconciliation")


def sunk(event_type: str, record: dict[str, Any], topic: str = "t") -> list[tuple[str, dict[str, Any]]]:
    """The rows the sink writes for one event, after the same Avro round trip it gets from Kafka."""
    decoded, refused = decode_batch(CODEC, [Received(topic, 0, 0, b"k", CODEC.encode(event_type, record))], 0)
    assert not refused, refused
    return decoded[0].rows[1:]  # after the raw ``events`` row


def ddl_columns() -> dict[str, list[str]]:
    tables: dict[str, list[str]] = {}
    for path in sorted(DDL.glob("*.sql")):
        text = re.sub(r"--[^\n]*", "", path.read_text(encoding="utf-8"))
        for name, body in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\) ENGINE", text, re.S):
            tables[name] = [line.split()[0] for line in body.strip().splitlines()]
    return tables


def test_every_fact_row_has_exactly_the_columns_of_its_table() -> None:
    tables = ddl_columns()
    assert set(REFUND_TABLES) <= set(tables)
    r = pipeline_refund()
    for event_type, record in r:
        for table, row in sunk(event_type, record):
            assert list(row) == tables[table], (event_type, table)


def pipeline_refund() -> list[tuple[str, dict[str, Any]]]:
    """A no-reason return run through the real refund processor: its transitions, with the marketplace's
    acceptance and settlement and the warehouse's receipt that drove them."""
    r, view, wh = pipeline()
    delivered_order(r, view, wh, "jd", "1", "SKU-F1")
    out = refund(r, "RefundRequested", ev.refund_requested("jd", "1", "r1", 9_900, event_time_ms=r.now_ms))
    issued = {"event_id": "refund-issued:jd:r1", "event_time_ms": r.now_ms, "refund_id": "jd:r1", "order_id": "jd:1",
              "channel": "jd", "amount_fen": 9_900, "platform_ref": "p1", "attempts": 2, "replayed": True}  # fmt: skip
    out += r.send([("jd:1", "RefundIssued", issued)], REFUND_ISSUED.name)
    received = ev.return_received("jd", "1", "r1", wh, qc_done=False)
    checked = ev.return_received("jd", "1", "r1", wh, resellable=False)
    settled = ev.refund_settled("jd", "1", "r1", 9_800)
    for kind, record in (("ReturnReceived", received), ("ReturnReceived", checked), ("RefundSettled", settled)):
        r.advance(3_600_000)
        out += r.send([("jd:1", kind, record)], REFUND_EVENTS.name)
    assert not r.refusals
    states = [("RefundStateChanged", s) for s in of(out, "RefundStateChanged")]
    return [*states, ("RefundIssued", issued), ("ReturnReceived", received), ("ReturnReceived", checked),
            ("RefundSettled", settled)]  # fmt: skip


def test_refund_transitions_become_refund_states_rows_with_every_stage_time() -> None:
    events = pipeline_refund()
    rows = [row for t, r in events if t == "RefundStateChanged" for table, row in sunk(t, r)]
    assert [(row["event_id"], row["state"], row["previous_state"]) for row in rows] == [
        ("jd:r1:requested", "requested", ""), ("jd:r1:refunding", "refunding", "requested"),
        # Paid out, received and checked while refunding: each stage time is published when it happens.
        ("jd:r1:refunding:issued", "refunding", "refunding"),
        ("jd:r1:refunding:return_received", "refunding", "refunding"),
        ("jd:r1:refunding:inspected", "refunding", "refunding"),
        ("jd:r1:completed", "completed", "refunding")]  # fmt: skip
    done = rows[-1]
    assert (done["refund_id"], done["order_id"], done["channel"], done["kind"]) == (
        "jd:r1", "jd:1", "jd", "RETURN_AND_REFUND")  # fmt: skip
    assert (done["amount_fen"], done["auto_approved"]) == (9_900, 1)
    # The completion carries every stage time so far.
    known = {stage: done[f"{stage}_ms"] for stage in facts.REFUND_STAGES if done[f"{stage}_ms"]}
    assert list(known) == ["requested", "return_received", "inspected", "refunding", "issued", "settled", "completed"]
    assert known["return_received"] + 3_600_000 == known["inspected"] == known["settled"] - 3_600_000
    assert rows[1]["return_received_ms"] == rows[1]["settled_ms"] == 0  # not known yet at that transition
    # Every stage time the processor records has a column: none is dropped on the way into ClickHouse.
    stage_names = {name for t, r in events if t == "RefundStateChanged" for name in r["stage_times"]}
    assert stage_names <= set(facts.REFUND_STAGES)


def test_refund_events_become_rows_keyed_by_stockflows_refund_and_order_ids() -> None:
    received = ev.return_received("kuaishou", "O7", "R7", "WH-SH", qc_done=False)
    # Each copy of a marketplace's event is a row of its own, keyed by where the sink read it (partition 0,
    # offset 0 here): the same callback sent again later does not replace the first.
    assert sunk("ReturnReceived", received) == [("refund_returns", {
        "event_id": f"{received['event_id']}@0.0", "event_time": received["event_time_ms"] // 1000,
        "event_time_ms": received["event_time_ms"], "refund_id": "kuaishou:R7", "order_id": "kuaishou:O7",
        "channel": "kuaishou", "warehouse_id": "WH-SH", "qc_done": 0, "resellable": 1})]  # fmt: skip
    [(table, row)] = sunk("RefundSettled", ev.refund_settled("jd", "O8", "R8", 4_000))
    assert table == "refund_settlements"
    assert (row["refund_id"], row["order_id"], row["amount_fen"], row["settlement_id"]) == (
        "jd:R8", "jd:O8", 4_000, "st-R8")  # fmt: skip
    failed = {"event_id": "call-failed:jd:refund:jd:R8:refund.instructions/3/41", "event_time_ms": 1_794_326_400_000,
              "channel": "jd", "endpoint": "refund", "idempotency_key": "jd:R8", "request": '{"refund": "R8"}',
              "answer": "200 {\"error_response\": \"Invalid API Key\"}", "reason": "connector_credentials",
              "attempts": 1, "source": "refund.instructions/3/41"}  # fmt: skip
    [(table, row)] = sunk("ConnectorCallFailed", failed, "connector.failed.jd")
    assert table == "connector_failures" and "request" not in row  # the request body stays on its topic
    assert (row["endpoint"], row["idempotency_key"], row["reason"], row["attempts"]) == (
        "refund", "jd:R8", "connector_credentials", 1)  # fmt: skip
    # Requests, reviews, shipments and cancellations are read through refund.states, not as rows of their own.
    for kind, record in (("RefundRequested", ev.refund_requested("jd", "O8", "R8", 100)),
                         ("RefundCancelled", ev.refund_cancelled("jd", "O8", "R8"))):  # fmt: skip
        assert sunk(kind, record) == []


def test_the_refund_dashboards_bind_their_limits_and_zone_from_the_settings_and_check_them() -> None:
    settings = Settings(refund_respond_s=1800, refund_qc_s=7200, refund_settle_s=86_400)
    found = dashboards.load_all()
    assert set(REFUND_DASHBOARDS) <= set(found)
    exceptions = found["refund_exceptions"]
    bound = dashboards.bind(exceptions, {}, settings, now_ms=1_794_326_400_000)
    assert (bound["respond_s"], bound["qc_s"], bound["settle_s"], bound["tz"]) == (1800, 7200, 86_400,
                                                                                   "Asia/Shanghai")  # fmt: skip
    assert dashboards.bind(exceptions, {"tz": "Europe/Berlin", "qc_s": "60"}, settings)["qc_s"] == 60.0
    with pytest.raises(dashboards.DashboardError, match="not a time zone"):
        dashboards.bind(exceptions, {"tz": "Mars/Olympus_Mons"}, settings)
    with pytest.raises(dashboards.DashboardError, match="more than 0 and under"):
        dashboards.bind(exceptions, {"respond_s": "-5"}, settings)
    with pytest.raises(dashboards.DashboardError, match="number of seconds"):
        dashboards.bind(exceptions, {"settle_s": "3 days"}, settings)
    for name in REFUND_DASHBOARDS:  # Grafana gets every one with its parameters as variables
        assert not re.search(r"(?<!\$)\{\w+:\w+\}", dashboards.grafana_sql(found[name])), name
    variables = {v["name"]: v for v in dashboards.grafana_dashboard(settings)["templating"]["list"]}
    assert (variables["respond_s"]["query"], variables["tz"]["query"]) == ("1800.0", "Asia/Shanghai")
