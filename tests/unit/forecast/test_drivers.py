"""The known drivers: the promotion calendar (TOML and CSV), China's holidays and working days, hourly CSV
drivers; no ClickHouse."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pytest

from agents.forecast.drivers import (
    Promotion,
    load_calendar,
    load_external,
    read_external,
    write_calendar_csv,
)
from tests.unit.forecast.helpers import ZONE, at, drivers

DAY = dt.date(2026, 11, 11)


def test_the_shipped_calendar_loads_with_china_and_double_11() -> None:
    calendar = load_calendar(None, ZONE)
    assert calendar.country == "CN"
    midnight = [p for p in calendar.promotions if p.start_ms == at(DAY, 0)]
    assert [(p.name, p.intensity, p.end_ms - p.start_ms) for p in midnight] == [("Double 11 midnight", 16.0, 3_600_000)]


def test_a_toml_calendar_takes_local_times_in_the_shop_zone_and_offsets_as_given(tmp_path: Path) -> None:
    path = tmp_path / "promotions.toml"
    path.write_text(
        'holidays = "CN"\n'
        '[[promotion]]\nname = "warm-up"\nstart = 2026-11-10T20:00:00\nend = 2026-11-11T00:00:00\nintensity = 2\n'
        '[[promotion]]\nname = "flash"\nstart = "2026-11-10T12:00:00+00:00"\nend = 2026-11-10T21:00:00+00:00\n'
        "intensity = 1.5\n",
        encoding="utf-8",
    )
    warm, flash = load_calendar(path, ZONE).promotions
    assert (warm.start_ms, warm.end_ms, warm.intensity) == (at(DAY - dt.timedelta(days=1), 20), at(DAY), 2.0)
    assert (flash.start_ms, flash.end_ms) == (at(DAY - dt.timedelta(days=1), 20), at(DAY, 5))  # UTC+8


def test_a_csv_calendar_reads_as_the_toml_one_and_round_trips(tmp_path: Path) -> None:
    promotions = (Promotion("live stream", at(DAY, 20), at(DAY, 23), 1.8),
                  Promotion("Double 11", at(DAY), at(DAY + dt.timedelta(days=1)), 4.0))  # fmt: skip
    out = io.StringIO()
    write_calendar_csv(promotions, ZONE, out)
    path = tmp_path / "calendar.csv"
    path.write_text(out.getvalue(), encoding="utf-8")
    assert out.getvalue().splitlines()[1] == "live stream,2026-11-11T20:00:00+08:00,2026-11-11T23:00:00+08:00,1.8"
    assert load_calendar(path, ZONE).promotions == promotions


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('name = "x"\nstart = 2026-11-11T02:00:00\nend = 2026-11-11T01:00:00\nintensity = 2', "ends before it starts"),
        ('name = "x"\nstart = 2026-11-11T00:00:00\nend = 2026-11-11T01:00:00\nintensity = 0', "above 0"),
        ('name = "x"\nstart = 2026-11-11T00:00:00\nend = 2026-11-11T01:00:00\nintensity = "lots"', "a number"),
        ('name = "x"\nstart = "tomorrow"\nend = 2026-11-11T01:00:00\nintensity = 2', "not a time"),
        ('name = "x"\nintensity = 2', "missing end, start"),
    ],
)
def test_a_bad_promotion_is_refused_with_where_it_is(tmp_path: Path, entry: str, message: str) -> None:
    path = tmp_path / "promotions.toml"
    path.write_text(f"[[promotion]]\n{entry}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_calendar(path, ZONE)


def test_an_unknown_holiday_country_or_a_missing_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "promotions.toml"
    path.write_text('holidays = "XX"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="'XX' is not a country code"):
        load_calendar(path, ZONE)
    with pytest.raises(ValueError, match="promotion calendar"):
        load_calendar(tmp_path / "nowhere.toml", ZONE)


def test_the_strongest_promotion_counts_and_one_covering_part_of_an_hour_counts_for_that_part() -> None:
    day = Promotion("Double 11", at(DAY), at(DAY + dt.timedelta(days=1)), 4.0)
    night = Promotion("Double 11 night", at(DAY, 20), at(DAY + dt.timedelta(days=1)), 6.0)
    half = Promotion("flash", at(DAY - dt.timedelta(days=1), 10) + 1_800_000, at(DAY - dt.timedelta(days=1), 11), 3.0)
    d = drivers(day, night, half)
    assert (d.at(at(DAY, 19)).intensity, d.at(at(DAY, 19)).promotion) == (4.0, day.key)
    assert (d.at(at(DAY, 20)).intensity, d.at(at(DAY, 20)).promotion) == (6.0, night.key)
    assert d.at(at(DAY - dt.timedelta(days=1), 10)).intensity == 2.0  # half an hour of 3x
    quiet = d.at(at(DAY - dt.timedelta(days=1), 12))
    assert (quiet.intensity, quiet.promotion, quiet.hour_of_day) == (1.0, "", 12)


def test_china_s_days_off_follow_its_holidays_and_weekend_working_days() -> None:
    d = drivers()

    def kind(day: dt.date) -> tuple[bool, bool]:
        hour = d.at(at(day, 12))
        return hour.day_off, hour.holiday

    assert kind(dt.date(2026, 11, 14)) == (True, False)  # an ordinary Saturday
    assert kind(dt.date(2026, 9, 20)) == (False, False)  # a Sunday worked in lieu of National Day (调休)
    assert kind(dt.date(2026, 10, 1)) == (True, True)  # National Day, a Thursday
    assert kind(dt.date(2026, 10, 6)) == (True, True)  # a Tuesday off in lieu
    assert kind(dt.date(2026, 11, 11)) == (False, False)  # Double-11 is a working Wednesday


def test_hourly_drivers_from_csv_count_zero_where_the_file_says_nothing(tmp_path: Path) -> None:
    text = "hour,rain_mm,competitor_sale\n2026-11-11T20:00:00,3.5,1\n2026-11-11T21:00:00+08:00,0,1\n"
    external = read_external(io.StringIO(text), ZONE)
    assert external.names == ("rain_mm", "competitor_sale")
    d = drivers()
    assert external.at(at(DAY, 20)) == (3.5, 1.0) and external.at(at(DAY, 22)) == (0.0, 0.0)
    path = tmp_path / "drivers.csv"
    path.write_text(text, encoding="utf-8")
    assert load_external(path, d.zone) == external
    assert load_external(None, d.zone).names == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("when,rain\n", "column hour"),
        ("hour\n", "at least one driver"),
        ("hour,rain\n2026-11-11T20:30:00,1\n", "not on the hour"),
        ("hour,rain\n2026-11-11T20:00:00,heavy\n", "line 2"),
        ("hour,rain\n2026-11-11T20:00:00,nan\n", "not finite"),
    ],
)
def test_a_bad_drivers_file_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_external(io.StringIO(text), ZONE)
