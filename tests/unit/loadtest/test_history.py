"""The seeded synthetic order history and the forecast backtest on it: realistic (noisy, promotions of
varying intensity known ahead, a Double-11 far above normal), repeatable, and the accuracy bar holds."""

from __future__ import annotations

import inspect
import json
import statistics
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from agents.cli import app
from agents.forecast.backtest import BAR, rolling_origin
from agents.forecast.drivers import Drivers
from loadtest import forecast_backtest
from loadtest.history import HistoryModel, SyntheticHistory, generate


@pytest.fixture(scope="module")
def history() -> SyntheticHistory:
    return generate()


def daily(values: tuple[float, ...]) -> list[float]:
    return [sum(values[i : i + 24]) for i in range(0, len(values), 24)]


def test_the_same_seed_gives_the_same_history() -> None:
    a, b, c = generate(seed=3, days=30), generate(seed=3, days=30), generate(seed=4, days=30)
    assert a == b and a.series.counts != c.series.counts
    assert len(a.series.counts) == len(a.expected) == 30 * 24


def test_double_11_is_far_above_normal_and_its_midnight_rush_is_in_the_calendar(history: SyntheticHistory) -> None:
    days = daily(history.series.counts)
    double11 = days[-7]  # the history ends at 2026-11-18 00:00: the 11th is the 7th day from the end
    assert double11 > 3 * statistics.median(days)
    drivers = Drivers(history.calendar, ZoneInfo(history.zone))
    hour = drivers.at(history.series.start_ms + (len(history.series.counts) - 7 * 24) * 3_600_000)
    assert (drivers.local(hour.hour_ms).isoformat(), hour.intensity) == ("2026-11-11T00:00:00+08:00", 16.0)


def test_promotions_vary_in_intensity_and_deliver_only_roughly_what_was_planned(history: SyntheticHistory) -> None:
    lives = [p.intensity for p in history.calendar.promotions if p.name == "live stream"]
    assert len(lives) >= 15 and len(set(lives)) >= 5 and min(lives) >= 1.3 and max(lives) <= 2.2
    # Hours are noisy around even the generator's own expectation: nothing here is trivially predictable.
    ratios = [c / e for c, e in zip(history.series.counts, history.expected, strict=True) if e > 100]
    assert 0.05 < statistics.pstdev(ratios) < 0.2


def test_the_backtest_bar_holds_on_the_seeded_history(history: SyntheticHistory) -> None:
    drivers = Drivers(history.calendar, ZoneInfo(history.zone))
    result = rolling_origin(history.series, drivers, test_days=14, window_days=7, reference=history.expected)
    overall = result.overall
    assert overall.accuracy is not None and overall.baseline_accuracy is not None and overall.ceiling_accuracy
    assert overall.accuracy >= BAR and overall.accuracy > overall.baseline_accuracy + 0.2
    # Below the generator's own expectation: nothing of the future leaks into the forecast.
    assert overall.accuracy < overall.ceiling_accuracy
    assert result.promotion_days.days >= 6 and result.promotion_days.accuracy is not None
    assert result.promotion_days.accuracy > (result.promotion_days.baseline_accuracy or 0)


def test_stockflow_forecast_backtest_prints_the_figures_and_reads_back_its_saved_history(tmp_path: Path) -> None:
    forecast_backtest.register()
    runner = CliRunner()
    generated = runner.invoke(app, ["forecast", "backtest", "--json", "--save", str(tmp_path)])
    assert generated.exit_code == 0, generated.output
    figures = json.loads(generated.output)
    assert figures["passed"] and figures["accuracy"] >= BAR > figures["baseline_accuracy"]
    assert len(figures["days"]) == 14 and figures["source"]["generated"]["seed"] == 11
    assert set(figures["promotion_days"]) == {"days", "accuracy", "baseline_accuracy", "ceiling_accuracy"}
    again = runner.invoke(app, ["forecast", "backtest", "--json", "--history", str(tmp_path / "history.csv"),
                                "--promotions", str(tmp_path / "promotions.csv")])  # fmt: skip
    assert again.exit_code == 0, again.output
    read = json.loads(again.output)
    assert (read["accuracy"], read["baseline_accuracy"]) == (figures["accuracy"], figures["baseline_accuracy"])
    assert read["ceiling_accuracy"] is None


def test_the_command_refuses_a_history_too_short_to_test() -> None:
    forecast_backtest.register()
    result = CliRunner().invoke(app, ["forecast", "backtest", "--days", "22", "--test-days", "20"])
    assert result.exit_code == 1 and "are needed" in result.output


def test_the_noise_options_name_the_generator_s_defaults() -> None:
    options = inspect.signature(forecast_backtest.backtest).parameters
    model = HistoryModel()
    for option, figure in (("hour_noise", model.hour_sigma), ("day_noise", model.day_sigma),
                           ("promotion_noise", model.promotion_sigma)):  # fmt: skip
        assert f"{figure}]" in options[option].default.help
