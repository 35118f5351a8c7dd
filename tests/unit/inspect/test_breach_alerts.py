"""The scheduled inspection's transitions: an alert when a check enters breach, one when it leaves, none between."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from agents.inspect import checks
from agents.inspect.checks import BREACH_ALERT, Result, Status, Threshold, breach_alerts
from streams.settings import Settings

LAG = Threshold(unit="records", warn=10, breach=100)
DISK = Threshold(unit="GiB", warn=5, breach=1, direction="below")


def result(status: Status, value: float | None, subject: str = "", check: str = "engine_lag") -> Result:
    return Result(check, subject, status, value, DISK if check == "disk_free" else LAG, "")


def test_a_breach_is_raised_once_and_cleared_once() -> None:
    scans = [
        [result(Status.OK, 3)],
        [result(Status.BREACH, 150)],
        [result(Status.BREACH, 900)],  # still in breach: nothing new
        [result(Status.UNKNOWN, None)],  # the source did not answer: neither raised nor cleared
        [result(Status.WARN, 20)],  # recovered past the breach level
        [result(Status.OK, 1)],
    ]
    open_breaches: dict[tuple[str, str], int] = {}
    raised = []
    for t, scan in enumerate(scans):
        open_breaches, alerts = breach_alerts(open_breaches, scan, 1000 * t)
        raised.append(alerts)
    assert [len(a) for a in raised] == [0, 1, 0, 0, 1, 0]
    breach, cleared = raised[1][0], raised[4][0]
    assert breach["kind"] == cleared["kind"] == BREACH_ALERT
    assert breach["severity"] == "RED" and not breach["cleared"] and "150 records" in breach["message"]
    assert cleared["cleared"] and cleared["event_id"] == f"{breach['event_id']}:cleared"
    assert cleared["event_id"] == "inspection_breach:engine_lag:1000:cleared" and "back to warn" in cleared["message"]
    assert open_breaches == {}


def test_each_subject_is_its_own_breach() -> None:
    first = [
        result(Status.BREACH, 2.5, "jd", "connector_latency_p99"),
        result(Status.OK, 0.1, "tmall", "connector_latency_p99"),
    ]
    state, alerts = breach_alerts({}, first, 5)
    assert [a["subject"] for a in alerts] == ["connector_latency_p99 jd"]
    second = [
        result(Status.OK, 0.2, "jd", "connector_latency_p99"),
        result(Status.BREACH, 9, "tmall", "connector_latency_p99"),
    ]
    state, alerts = breach_alerts(state, second, 6)
    assert [(a["subject"], a["cleared"]) for a in alerts] == [("connector_latency_p99 jd", True),
                                                              ("connector_latency_p99 tmall", False)]  # fmt: skip
    assert state == {("connector_latency_p99", "tmall"): 6}


def test_a_below_check_says_which_way_it_breaches_and_the_input_is_not_changed() -> None:
    before: dict[tuple[str, str], int] = {}
    _, [alert] = breach_alerts(before, [result(Status.BREACH, 0.5, "/srv", "disk_free")], 7)
    assert "disk_free /srv: 0.5 GiB (breach ≤ 1)" in alert["message"] and before == {}


def test_the_scheduled_scan_raises_no_second_alert_for_a_connector_that_alerts_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connectors raise connector_failing themselves; the worker's scan judging the same endpoint as a breach
    would post a second RED alert to the ops chat for one incident."""
    from agents.inspect import probe, scan_checks

    found = [checks.Measurement("connector_failing", "jd", 2.0, "refund, stock"),
             checks.Measurement("disk_free", "/home", 0.5)]  # fmt: skip
    monkeypatch.setattr(probe, "measure", lambda settings, config: found)
    sent: list[dict[str, Any]] = []
    producer = SimpleNamespace(send=lambda topic, key, kind, record: sent.append(record), flush=lambda timeout: 0)
    scanner = scan_checks.Scanner(Settings(), producer, checks.load_config())  # type: ignore[arg-type]
    alerts = scanner.scan(1_000)
    assert [a["subject"] for a in alerts] == [a["subject"] for a in sent] and len(sent) == 1
    assert "disk_free" in sent[0]["subject"] and "jd" not in sent[0]["subject"]
