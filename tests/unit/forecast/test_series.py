"""Orders per hour as one contiguous series and its CSV form."""

from __future__ import annotations

import datetime as dt
import io

import pytest

from agents.forecast.series import HOUR_MS, HourlySeries, from_hours, hour_floor, read_csv, write_csv
from tests.unit.forecast.helpers import ZONE, at

DAY = dt.date(2026, 11, 11)


def test_hours_nobody_ordered_in_count_zero() -> None:
    series = from_hours({at(DAY, 1): 5.0, at(DAY, 3): 2.0}, at(DAY), at(DAY, 4) + 10)
    assert series.counts == (0.0, 5.0, 0.0, 2.0) and series.end_ms == at(DAY, 4)
    assert series.between(at(DAY, 1), at(DAY, 3)).counts == (5.0, 0.0)
    assert hour_floor(at(DAY, 2) + 59_999) == at(DAY, 2)
    with pytest.raises(ValueError, match="starts on an hour"):
        HourlySeries(at(DAY) + 1, ())
    with pytest.raises(ValueError, match="not an hour boundary"):
        series.index(at(DAY, 9))


def test_the_csv_form_round_trips_and_fills_gaps() -> None:
    text = "hour,orders\n2026-11-11T02:00:00+08:00,7\n2026-11-11T00:00:00,3\n"
    series = read_csv(io.StringIO(text), ZONE)
    assert (series.start_ms, series.counts) == (at(DAY), (3.0, 0.0, 7.0))
    out = io.StringIO()
    write_csv(series, ZONE, out)
    assert out.getvalue().splitlines() == [
        "hour,orders", "2026-11-11T00:00:00+08:00,3", "2026-11-11T01:00:00+08:00,0", "2026-11-11T02:00:00+08:00,7",
    ]  # fmt: skip
    assert read_csv(io.StringIO(out.getvalue()), ZONE) == series
    assert series.hours_ms() == [at(DAY), at(DAY) + HOUR_MS, at(DAY) + 2 * HOUR_MS]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hour,count\n", "hour,orders"),
        ("hour,orders\n", "no rows"),
        ("hour,orders\n2026-11-11T00:30:00,1\n", "not on the hour"),
        ("hour,orders\n2026-11-11T00:00:00,-1\n", "negative"),
        ("hour,orders\nyesterday,1\n", "line 2"),
    ],
)
def test_a_bad_history_file_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_csv(io.StringIO(text), ZONE)
