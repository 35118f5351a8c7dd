"""``stockflow forecast`` on real orders: a week of placed orders through Kafka and the sink into ClickHouse
(embedded, read through the running sink, and a server), forecast with the promotion calendar."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from agents.analytics import queries as dashboards
from agents.cli import app
from streams.engine.producer import EventProducer
from streams.settings import Settings
from tests.helpers import wait_for
from tests.integration.test_dashboards import state

pytestmark = pytest.mark.broker

ZONE = ZoneInfo("Asia/Shanghai")
AT = dt.datetime(2026, 11, 20, tzinfo=ZONE)  # a Friday; the week before it is learned from
# Orders placed in each local hour, the same every day of that week (a Saturday and a Sunday included).
PER_HOUR = [1, 0, 0, 0, 0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 2, 2, 2, 3, 3, 4, 6, 8, 6, 2]
JD_EVERY = 5  # every 5th order of the week is a jd order, the rest tmall
CALENDAR = """
[[promotion]]
name = "evening sale"
start = 2026-11-20T20:00:00
end = 2026-11-20T22:00:00
intensity = 2.0
"""


def send_week(settings: Settings) -> tuple[int, int]:
    """A week of placed orders (and, for some, the next state, which must not count twice); the orders and
    the jd orders sent."""
    producer = EventProducer(settings)
    sent = jd = 0
    for day in range(7, 0, -1):
        midnight = AT - dt.timedelta(days=day)
        for hour, count in enumerate(PER_HOUR):
            for n in range(count):
                placed = int((midnight + dt.timedelta(hours=hour, minutes=7 * n + 1)).timestamp() * 1000)
                channel = "jd" if sent % JD_EVERY == 0 else "tmall"
                jd += channel == "jd"
                order = f"{channel}:F{sent}"
                sent += 1
                producer.send("order.states", order, "OrderStateChanged", state(order, channel, "placed",
                                                                                 {"placed": placed}))  # fmt: skip
                if n == 0:
                    times = {"placed": placed, "reserved": placed + 1000}
                    producer.send("order.states", order, "OrderStateChanged", state(order, channel, "reserved", times))
    # A re-sent placement of an order already counted (the sink keeps both rows; it is one order).
    first = int((AT - dt.timedelta(days=7)).timestamp() * 1000) + 60_000
    resent = {**state("jd:F0", "jd", "placed", {"placed": first}), "event_id": "jd:F0:placed:again"}
    producer.send("order.states", "jd:F0", "OrderStateChanged", resent)
    producer.flush()
    return sent, jd


def forecast_cli(settings: Settings, calendar: Path, *args: str) -> Any:
    env = {
        "STOCKFLOW_HOME": str(settings.home),
        "STOCKFLOW_CLICKHOUSE_URL": settings.clickhouse_url,
        "STOCKFLOW_CLICKHOUSE_DATABASE": settings.clickhouse_database,
        "STOCKFLOW_SINK_PORT": str(settings.sink_port),
        "STOCKFLOW_PROMOTIONS_FILE": str(calendar),
    }
    return CliRunner().invoke(app, ["forecast", *args], env=env)


@pytest.mark.parametrize("backend", ["embedded", "server"])
def test_stockflow_forecast_learns_last_week_s_orders_from_clickhouse(
    backend: str, make_settings, start_sink, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue("clickhouse_server_url") if backend == "server" else f"chdb://{tmp_path / 'ch'}"
    settings = make_settings(clickhouse_url=url)
    start_sink(settings)  # with chdb the sink owns the folder: the forecast reads through it
    calendar = tmp_path / "promotions.toml"
    calendar.write_text(CALENDAR, encoding="utf-8")
    sent, jd = send_week(settings)
    week = {
        "from_ms": str(int((AT - dt.timedelta(days=7)).timestamp() * 1000)),
        "to_ms": str(int(AT.timestamp() * 1000)),
    }

    def counted() -> int | None:
        total = sum(int(r["orders"]) for r in dashboards.run(settings, "orders_per_hour", week)[1])
        return total if total == sent else None

    wait_for(counted, timeout_s=90, what=f"{sent} placed orders in ClickHouse")

    result = forecast_cli(settings, calendar, "--json", "--at", AT.isoformat())
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    hours = figures["hours"]
    assert len(hours) == 24 and hours[0]["hour"] == "2026-11-20T00:00:00+08:00"
    assert figures["model"]["history_orders"] == sent == 7 * sum(PER_HOUR)
    assert figures["model"]["history_hours"] == 7 * 24
    forecast = [h["orders"] for h in hours]
    # Every day of the week alike: the forecast is that day again, doubled where the evening sale runs.
    expected = [c * (2 if h in (20, 21) else 1) for h, c in enumerate(PER_HOUR)]
    assert forecast == pytest.approx(expected, abs=0.05)
    assert (hours[21]["promotion"], hours[21]["intensity"]) == ("evening sale", 2.0)
    assert figures["peak"] == {"hour": "2026-11-20T21:00:00+08:00", "orders": pytest.approx(16, abs=0.05)}

    one_channel = forecast_cli(settings, calendar, "--json", "--at", AT.isoformat(), "--channel", "jd", "--hours", "6")
    assert one_channel.exit_code == 0, one_channel.output
    jd_figures = json.loads(one_channel.output)
    assert (jd_figures["model"]["history_orders"], len(jd_figures["hours"])) == (jd, 6)

    table = forecast_cli(settings, calendar, "--at", AT.isoformat())
    assert table.exit_code == 0 and "evening sale ×2" in table.output and "peak 16 at 21:00" in table.output

    nothing = forecast_cli(settings, calendar, "--at", "2026-10-01T00:00")
    assert nothing.exit_code == 1 and "no orders placed between" in nothing.output
