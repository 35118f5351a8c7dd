"""``stockflow forecast backtest``: the forecast's measured accuracy on a seeded synthetic history
(``loadtest.history``) or on a history from a file, by the rolling-origin backtest of
``agents.forecast.backtest``. It lives in the load test because it drives the load generator's model; the
entry point adds it to the product's ``forecast`` group (``register``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import typer
from rich.table import Table

from streams.cli import console, fail
from streams.settings import Settings

# Path options as module-level singletons: a call in a default that ruff (B008) cannot tell is immutable.
_HISTORY = typer.Option(None, "--history", help="CSV hour,orders to test on (default: a generated one).")
_PROMOTIONS = typer.Option(None, help="The promotion calendar of --history (TOML or CSV) [STOCKFLOW_PROMOTIONS_FILE].")
_SAVE = typer.Option(
    None, help="Write the generated history (history.csv) and its calendar (promotions.csv) into this folder."
)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def backtest(  # noqa: PLR0913, PLR0917 - a typer command declares each command-line option as a parameter
    history: Path = _HISTORY,
    promotions: Path = _PROMOTIONS,
    seed: int = typer.Option(11, help="Seed of the generated history: same seed, same history."),
    days: int = typer.Option(60, min=22, max=730, help="Days of history to generate."),
    test_days: int = typer.Option(
        14, min=1, max=60, help="The last days forecast, one at a time, each at its midnight."
    ),
    window: int = typer.Option(
        None, min=1, max=60, help="Days before each midnight the model learns from [STOCKFLOW_FORECAST_HISTORY_DAYS]."
    ),
    hour_noise: float = typer.Option(
        None, min=0, max=1, help="Generated: hour-level noise beyond Poisson, log sd [0.05]."
    ),
    day_noise: float = typer.Option(
        None, min=0, max=1, help="Generated: the day-level shock's innovation, log sd [0.05]."
    ),
    promotion_noise: float = typer.Option(
        None, min=0, max=1, help="Generated: spread of what a promotion run delivers of its plan, log sd [0.12]."
    ),
    save: Path = _SAVE,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Forecast each of the last 14 days of a 60-day hourly history from what came before it; print the accuracy
    (1 - WAPE) beside the seasonal-naive baseline's (same hour last week), per day and on promotion days."""
    from agents.forecast import backtest as bt
    from agents.forecast import predict
    from agents.forecast.drivers import Drivers, load_calendar, load_external, write_calendar_csv
    from agents.forecast.series import read_csv, write_csv
    from loadtest.history import HistoryModel, generate

    settings = Settings()
    window = window or settings.forecast_history_days
    reference = None
    try:
        if history:
            zone = predict.shop_zone(settings)
            calendar = load_calendar(promotions or settings.promotions_file, zone)
            drivers = Drivers(calendar, zone, load_external(settings.forecast_drivers_file, zone))
            with open(history, encoding="utf-8", newline="") as fh:
                series = read_csv(fh, zone)
            calendar_file = promotions or predict.calendar_path(settings)
            source: dict[str, Any] = {"history": str(history), "promotions": str(calendar_file)}
        else:
            noise = {"hour_sigma": hour_noise, "day_sigma": day_noise, "promotion_sigma": promotion_noise}
            model = HistoryModel(**{k: v for k, v in noise.items() if v is not None})
            synthetic = generate(seed=seed, days=days, model=model)
            zone = ZoneInfo(synthetic.zone)
            series, reference = synthetic.series, synthetic.expected
            drivers = Drivers(synthetic.calendar, zone)
            source = {"generated": {"seed": seed, "days": days, **model.__dict__}}
            if save:
                save.mkdir(parents=True, exist_ok=True)
                with open(save / "history.csv", "w", encoding="utf-8") as fh:
                    write_csv(series, zone, fh)
                with open(save / "promotions.csv", "w", encoding="utf-8") as fh:
                    write_calendar_csv(synthetic.calendar.promotions, zone, fh)
        result = bt.rolling_origin(series, drivers, test_days=test_days, window_days=window, reference=reference)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    figures = {**result.as_dict(), "source": source, "model": predict.MODEL_NAME}
    if as_json:
        print(json.dumps(figures, ensure_ascii=False))
        return
    table = Table("day", "orders", "forecast", "accuracy", "naive", "ceiling", "peak", "promotion",
                  title=f"forecast backtest: {test_days} days, each from the {window} days before it",
                  caption="naive: same hour last week; ceiling: the generator's own expectation; "
                  "peak: hour with most orders (forecast's)")  # fmt: skip
    for d in result.days:
        promo = f"{', '.join(d.promotions)} ×{d.peak_intensity:g}" if d.promotions else ""
        kind = " hol" if d.holiday else " off" if d.day_off else ""
        table.add_row(f"{d.date[5:]} {d.weekday}{kind}", f"{d.orders:,.0f}", f"{d.forecast:,.0f}", _pct(d.accuracy),
                      _pct(d.baseline_accuracy), _pct(d.ceiling_accuracy), f"{d.peak_hour} ({d.forecast_peak_hour})",
                      promo)  # fmt: skip
    console.print(table)
    for label, scores in (("all days", result.overall), ("promotion days", result.promotion_days),
                          ("other days", result.other_days)):  # fmt: skip
        ceiling = f", ceiling {_pct(scores.ceiling_accuracy)}" if scores.ceiling_accuracy is not None else ""
        console.print(f"{label} ({scores.days}): accuracy {_pct(scores.accuracy)}, "
                      f"baseline {_pct(scores.baseline_accuracy)}{ceiling}")  # fmt: skip
    verdict = "[green]passed[/green]" if result.passed else "[red]not passed[/red]"
    console.print(f"bar: accuracy >= {bt.BAR:.0%} and above the baseline: {verdict}")


def register() -> None:
    """Add ``backtest`` to the product's ``stockflow forecast`` group."""
    from agents.forecast.cli import forecast

    if not any(command.name == "backtest" for command in forecast.registered_commands):
        forecast.command("backtest")(backtest)
