"""``stockflow forecast``: orders per hour for the next hours, from the last week's orders in ClickHouse and the
known drivers (``agents.forecast.predict``). ``stockflow forecast backtest`` is added to this group by the load
test's entry point (``loadtest.forecast_backtest``): it generates its history with the load generator."""

from __future__ import annotations

import datetime as dt
import json

import typer
from rich.table import Table

from streams.cli import console, fail
from streams.settings import Settings

forecast = typer.Typer(
    help="Orders per hour for the next hours (default 24), from the last week's orders in ClickHouse, the promotion "
    "calendar and holidays; `backtest`: its measured accuracy.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def _orders(expected: float) -> str:
    """An expected count of orders: whole above 10; below, a tenth shows what a whole number would round to 0."""
    return f"{expected:,.0f}" if expected >= 10 else f"{expected:.1f}"  # noqa: PLR2004 - where tenths stop mattering


@forecast.callback()
def predict(
    ctx: typer.Context,
    hours: int = typer.Option(24, min=1, max=168, help="Hours to forecast, from the current hour."),
    days: int = typer.Option(
        None, min=1, max=60, help="Days of orders to learn from [STOCKFLOW_FORECAST_HISTORY_DAYS]."
    ),
    channel: str = typer.Option("", help="One channel's orders only (default: every channel's)."),
    at: str = typer.Option(None, help="Forecast as of this time instead of now (ISO; no offset: the shop's zone)."),
    output: str = typer.Option("table", "--format", help="table or json."),
    as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
) -> None:
    """Orders per hour for the next hours (default 24), from the last week of orders and the promotion calendar."""
    if ctx.invoked_subcommand is not None:
        return
    from agents.forecast import predict as p
    from agents.forecast.series import parse_time

    output = "json" if as_json else output
    if output not in ("table", "json"):
        fail(f"--format must be table or json, not {output!r}")
    settings = Settings()
    if channel and channel not in settings.channels:
        fail(f"--channel must be one of {', '.join(settings.channels)}, not {channel!r}")
    try:
        zone = p.shop_zone(settings)
        drivers = p.load_drivers(settings, zone)
        at_ms = parse_time(at, zone) if at else None
    except ValueError as exc:
        fail(str(exc))
    try:
        result = p.forecast(settings, hours=hours, days=days, at_ms=at_ms, channel=channel, drivers=drivers)
    except p.NoHistory as exc:
        fail(f"{exc}; is the sink running (stockflow sink)?")
    except ValueError as exc:  # a dashboard parameter, a model that cannot be fitted
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - ClickHouse unreachable or refusing
        fail(f"could not read orders from ClickHouse at {settings.clickhouse_url_shown}: {exc}")
    if output == "json":
        print(json.dumps(result.as_dict(), ensure_ascii=False, indent=2))
        return
    table = Table("hour", "orders", "promotion", "day", title=f"orders per hour from {result.hours[0].hour[:16]} "
                  f"({result.zone}, {result.channel or 'every channel'})")  # fmt: skip
    for h in result.hours:
        promotion = f"{h.promotion} ×{h.intensity:g}" if h.promotion else ""
        day = "holiday" if h.holiday else "day off" if h.day_off else ""
        table.add_row(dt.datetime.fromisoformat(h.hour).strftime("%a %m-%d %H:%M"), _orders(h.orders), promotion, day)
    console.print(table)
    model = result.model
    console.print(
        f"total {_orders(result.total)} orders; peak {_orders(result.peak.orders)} at {result.peak.hour[11:16]}. "
        "Learned from "
        f"{model.history_hours} hours ({model.history_orders:,.0f} orders, {model.promotions_seen} promotion "
        f"run{'' if model.promotions_seen == 1 else 's'}, "
        f"which delivered {model.realisation:.0%} of their planned uplift)."
    )
