"""The inspection's thresholds and judgements, without a broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agents.inspect import checks, probe
from agents.inspect.checks import Measurement, Status, Threshold
from agents.inspect.probe import disk_free
from streams.settings import Settings

LAG = Threshold(unit="records", warn=100, breach=1000)
DAYS = Threshold(unit="days", warn=14, breach=3, direction="below")


ABOVE = [(0, Status.OK), (99, Status.OK), (100, Status.WARN), (999, Status.WARN), (1000, Status.BREACH),
         (None, Status.UNKNOWN)]  # fmt: skip


@pytest.mark.parametrize(("value", "expected"), ABOVE)
def test_a_figure_above_is_judged_at_each_level(value: float | None, expected: Status) -> None:
    assert checks.judge(value, LAG) is expected


@pytest.mark.parametrize(("value", "expected"), [(30, Status.OK), (14, Status.WARN), (4, Status.WARN),
                                                 (3, Status.BREACH), (-2, Status.BREACH)])  # fmt: skip
def test_a_figure_below_is_judged_the_other_way(value: float, expected: Status) -> None:
    assert checks.judge(value, DAYS) is expected


def test_levels_in_the_wrong_order_are_refused() -> None:
    with pytest.raises(ValidationError):
        Threshold(unit="records", warn=1000, breach=100)
    with pytest.raises(ValidationError):
        Threshold(unit="days", warn=3, breach=14, direction="below")


def test_the_packaged_config_names_every_check_and_a_missing_one_is_refused(tmp_path: Path) -> None:
    config = checks.load_config()
    assert set(config.checks) == set(checks.CHECKS)
    assert config.checks["dead_letter_rate"].window_minutes == 15
    assert config.checks["disk_free"].direction == "below"
    partial = tmp_path / "inspect.toml"
    partial.write_text('[checks.engine_lag]\nunit = "records"\nwarn = 1\nbreach = 2\n')
    with pytest.raises(ValidationError, match="missing"):
        checks.load_config(partial)


def test_the_worst_result_decides_and_unknown_only_warns() -> None:
    config = checks.load_config()
    ok = Measurement("engine_lag", "g", 0.0)
    unknown = Measurement("sink_insert_lag", "", None, "sink unreachable")
    breach = Measurement("credential_expiry", "jd", 1.0)
    assert checks.worst(checks.evaluate([ok], config)) is Status.OK
    assert checks.worst(checks.evaluate([ok, unknown], config)) is Status.WARN
    results = checks.evaluate([ok, unknown, breach], config)
    assert checks.worst(results) is Status.BREACH
    assert results[2].as_dict() == {
        "check": "credential_expiry", "subject": "jd", "status": "breach", "value": 1.0, "unit": "days",
        "warn": 14.0, "breach": 3.0, "direction": "below", "detail": "",
    }  # fmt: skip


def test_group_lag_counts_from_the_commit_or_the_start() -> None:
    high = {("t", 0): 10, ("t", 1): 5, ("t", 2): -1}
    assert checks.group_lag({("t", 0): 7, ("t", 1): -1001}, high) == 3 + 5
    assert checks.group_lag({("t", 0): 12}, {("t", 0): 10}) == 0


def test_rates_and_insert_lag() -> None:
    assert checks.dead_letter_rate({0: 30, 1: 0, 2: 15}, 15) == 3.0
    assert checks.sink_insert_lag_s(0, 0, 1_000, 100_000) == 0.0
    assert checks.sink_insert_lag_s(5, 40_000, 0, 100_000) == 60.0
    assert checks.sink_insert_lag_s(5, 0, 10_000, 100_000) == 90.0


def test_disk_free_reads_the_nearest_existing_folder(tmp_path: Path) -> None:
    found = disk_free(tmp_path / "not" / "yet")
    assert found.check == "disk_free" and found.subject == str(tmp_path) and found.value is not None
    assert found.value > 0


def test_a_channel_whose_key_is_refused_is_a_breach_though_its_queue_is_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by an on-call trial: jd's key rotated, every call refused, a RED connector_failing alert standing, and
    inspect said ok (the failed queue held 5, under its warn level of 10)."""
    status = {"channels": {
        "jd": {"refunds_queued": 5, "stock_pending": 0, "credentials": None,
               "endpoints": {"refund": {"failing": True}, "stock": {"failing": True}}},
        "own": {"refunds_queued": 0, "stock_pending": 0, "credentials": None,
                "endpoints": {"refund": {"failing": False}, "stock": {"failing": False}}},
    }}  # fmt: skip
    monkeypatch.setattr(probe, "_get", lambda url: status)
    found = {(m.check, m.subject): m for m in probe._connectors(Settings())}  # noqa: SLF001
    assert (found[("connector_failing", "jd")].value, found[("connector_failing", "jd")].detail) == (
        2.0, "refund, stock")  # fmt: skip
    results = {(r.check, r.subject): r.status for r in checks.evaluate(found.values(), checks.load_config())}
    assert results[("connector_failing", "jd")] is Status.BREACH
    assert results[("connector_failing", "own")] is Status.OK
    assert results[("failed_queue_depth", "jd")] is Status.OK
