"""The weekly connectivity report's pure logic: weeks, incidents from minute rows, availability, rendering."""

from __future__ import annotations

import pytest

from agents.alerting.digest import nbytes
from agents.channels import connectivity as cn

ZONE = "Asia/Shanghai"
WEEK = cn.parse_week("2026-W47", ZONE)
M = cn.MINUTE_MS


def minute(n: int, done: int = 0, failed: int = 0, *, endpoint: str = "refund", ok_at: tuple[int, int] = (0, 0),
           fail_at: tuple[int, int] = (0, 0), error: str = "") -> cn.Minute:  # fmt: skip
    """Minute ``n`` of the week; times are seconds into that minute."""
    base = WEEK.start_ms + n * M

    def at(s: int, present: int) -> int:
        return base + s * 1000 if present else 0

    return cn.Minute("jd", endpoint, base, done, failed, at(ok_at[0], done), at(ok_at[1], done),
                     at(fail_at[0], failed), at(fail_at[1], failed), error)  # fmt: skip


def test_an_iso_week_runs_monday_to_monday_in_the_shops_zone() -> None:
    assert WEEK.first_day.isoformat() == "2026-11-16" and WEEK.last_day.isoformat() == "2026-11-22"
    assert WEEK.start_ms == 1_794_758_400_000  # 2026-11-16T00:00+08:00 (2026-11-11 is 1_794_326_400_000)
    assert WEEK.end_ms - WEEK.start_ms == 7 * 86_400_000
    assert cn.week_of(WEEK.start_ms, ZONE) == "2026-W47" and cn.week_of(WEEK.start_ms - 1, ZONE) == "2026-W46"
    for bad in ("2026-47", "W47", "2026-W54", "2026-W00"):
        with pytest.raises(cn.WeekError):
            cn.parse_week(bad, ZONE)


def test_a_run_of_failed_minutes_is_one_incident_from_first_failure_to_first_success() -> None:
    rows = [
        minute(10, done=5, ok_at=(1, 50)),
        minute(11, failed=4, fail_at=(7, 55), error="HTTP 401 Invalid API Key"),
        minute(12, failed=6, fail_at=(0, 59)),
        minute(14, failed=2, fail_at=(3, 30)),  # a quiet minute between does not break it
        minute(15, done=3, failed=1, ok_at=(20, 50), fail_at=(5, 5)),
    ]
    [incident] = cn.incidents(rows)
    assert incident.start_ms == WEEK.start_ms + 11 * M + 7000
    assert incident.end_ms == WEEK.start_ms + 15 * M + 20_000
    assert incident.failed_calls == 12 and incident.last_error == "HTTP 401 Invalid API Key"
    assert incident.duration_ms(0) == 4 * M + 13_000


def test_short_runs_are_noise_and_a_run_still_failing_is_open() -> None:
    rows = [minute(1, failed=2, fail_at=(0, 1)), minute(2, done=1, ok_at=(9, 9)), minute(50, failed=3, fail_at=(0, 2))]
    assert [(i.start_ms, i.end_ms) for i in cn.incidents(rows)] == [(WEEK.start_ms + 50 * M, None)]
    assert len(cn.incidents(rows, min_failures=1)) == 2


def test_a_minute_ending_in_failure_starts_a_run_at_its_last_failure() -> None:
    rows = [minute(3, done=2, failed=2, ok_at=(1, 10), fail_at=(5, 40)), minute(4, failed=5, fail_at=(0, 59)),
            minute(5, done=1, ok_at=(30, 30))]  # fmt: skip
    [incident] = cn.incidents(rows)
    assert incident.start_ms == WEEK.start_ms + 3 * M + 40_000 and incident.failed_calls == 6
    # Failures between successes in one minute are no incident.
    assert cn.incidents([minute(3, done=2, failed=5, ok_at=(1, 50), fail_at=(5, 40))], min_failures=1) == []


def test_endpoints_are_kept_apart() -> None:
    rows = [minute(1, failed=3, fail_at=(0, 9)), minute(2, done=1, endpoint="stock", ok_at=(0, 0)),
            minute(3, done=1, ok_at=(0, 0))]  # fmt: skip
    [incident] = cn.incidents(rows)
    assert incident.endpoint == "refund" and incident.end_ms == WEEK.start_ms + 3 * M


def test_availability_is_the_share_of_the_observed_week_outside_incidents() -> None:
    rows = [minute(0, failed=10, fail_at=(0, 59)), minute(60, done=1, ok_at=(0, 0))]  # down for the first hour
    totals = [cn.EndpointTotals("jd", "refund", calls=100, failed=10, attempts=130, replayed=4, replayed_failed=1),
              cn.EndpointTotals("jd", "stock", calls=50, failed=0, attempts=50)]  # fmt: skip
    volume = [cn.FailedVolume("jd", "refund", "connector_credentials", 10)]
    report = cn.build_report(WEEK, WEEK.end_ms + 1, totals, rows, volume)
    refund, stock = report.endpoints
    assert refund.availability == pytest.approx(1 - 1 / (7 * 24), abs=1e-6) and refund.downtime_ms == 3_600_000
    assert refund.success_rate == 0.9 and refund.retried == 30 and refund.incidents == 1
    assert stock.availability == 1.0 and stock.success_rate == 1.0
    assert report.failed_calls == 10 and report.replayed_calls == 4
    # Half a day into the week, the same hour is a twelfth of it.
    early = cn.build_report(WEEK, WEEK.start_ms + 12 * 3_600_000, totals, rows, volume)
    assert early.endpoints[0].availability == pytest.approx(11 / 12)
    assert early.to_dict()["replays"] == [{"channel": "jd", "endpoint": "refund", "replayed": 4, "done": 3,
                                           "still_failing": 1}]  # fmt: skip


def evil_report() -> cn.ConnectivityReport:
    error = "HTTP 500 <script>alert(1)</script> | a\nb"
    rows = [minute(0, failed=5, fail_at=(0, 59), error=error)]
    totals = [cn.EndpointTotals("jd", "refund", calls=9, failed=5, attempts=9, p50_ms=12.5, p99_ms=80.0)]
    return cn.build_report(WEEK, WEEK.end_ms, totals, rows, [cn.FailedVolume("jd", "refund", "connector_refused", 5)])


def test_markdown_and_html_show_every_section_and_escape_what_the_marketplace_said() -> None:
    report = evil_report()
    md = cn.render_markdown(report, ZONE)
    for title in ("Availability per endpoint", "Incidents", "Failed calls by reason", "Replays"):
        assert f"## {title}" in md
    assert "2026-W47 (2026-11-16 to 2026-11-22" in md and "ongoing" in md and "connector_refused" in md
    assert "\\|" in md and "a b" in md  # a pipe or newline in an answer does not break the table
    page = cn.render_html(report, ZONE)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<table>") == 3  # no replays: "none"


def test_the_summary_fits_the_robots_limit() -> None:
    report = evil_report()
    text = cn.summary(report, ZONE, 4096)
    assert text.startswith("**Connectivity report 2026-W47") and "incidents 1" in text and "jd refund" in text
    long = cn.build_report(WEEK, WEEK.end_ms, [cn.EndpointTotals(f"c{i}" * 40, "refund", 1, 0, 1) for i in range(50)],
                           [], [])  # fmt: skip
    assert nbytes(cn.summary(long, ZONE, 600)) <= 600
