"""The Grafana panels draw what each dashboard file's chart line says, as ``stockflow web`` draws it: x, then the
series and the first y, or every y. Their SQL is asked on embedded ClickHouse (chdb) over the real DDL, as
Grafana sends it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.analytics import queries
from streams.settings import Settings
from streams.stores.clickhouse import ClickHouse, open_clickhouse

DASHBOARDS = queries.load_all()
MODEL = queries.grafana_dashboard(Settings())
PANELS = {dash.name: panel for dash, panel in zip(DASHBOARDS.values(), MODEL["panels"], strict=True)}
CHARTS = [name for name, dash in DASHBOARDS.items() if dash.chart.kind != "table"]
DEFAULTS = {v["name"]: str(v.get("current", {}).get("value", v.get("query", ""))) for v in MODEL["templating"]["list"]}


def as_sent(sql: str) -> str:
    """Grafana SQL as Grafana sends it: variables at their defaults, quoted; the last day as the range."""
    sql = re.sub(r"\$\{(\w+):sqlstring\}", lambda m: "'" + DEFAULTS[m.group(1)].replace("'", "''") + "'", sql)
    return sql.replace("$__fromTime", "(now() - INTERVAL 1 DAY)").replace("$__toTime", "now()")


def panel_sql(name: str) -> str:
    return as_sent(PANELS[name]["targets"][0]["rawSql"])


def drawn(dash: queries.Dashboard) -> list[str]:
    chart = dash.chart
    return [chart.x, chart.series, chart.y[0]] if chart.series else [chart.x, *chart.y]


@pytest.fixture
def ch(tmp_path: Path) -> Iterator[ClickHouse]:
    opened = open_clickhouse(Settings(clickhouse_url=f"chdb://{tmp_path}", clickhouse_database="t"))
    yield opened
    opened.close()  # embedded ClickHouse holds one folder per process: the next test opens its own


def test_a_chart_panel_returns_only_what_its_chart_draws_and_a_line_chart_a_time_first(ch: ClickHouse) -> None:
    wrong = {}
    for name in CHARTS:
        columns = [(c["name"], c["type"]) for c in ch.query(f"DESCRIBE ({panel_sql(name)})")]
        dash = DASHBOARDS[name]
        if [n for n, _ in columns] != drawn(dash):
            wrong[name] = columns
        elif dash.chart.kind == "line" and not columns[0][1].startswith("DateTime"):
            wrong[name] = columns  # Grafana draws a time series only against a time
        elif dash.chart.series and columns[1][1] != "String":
            wrong[name] = columns  # only a text column splits the rows into series
    assert wrong == {}


def test_a_line_chart_asks_for_a_time_series_sorted_by_time() -> None:
    for name in CHARTS:
        chart, target = DASHBOARDS[name].chart, PANELS[name]["targets"][0]
        if chart.kind == "line":
            assert PANELS[name]["type"] == "timeseries", name
            # Format 0 is the ClickHouse plugin's time series: one line per series value, of rows sorted by time.
            assert (target["format"], target["queryType"]) == (0, "timeseries"), name
            assert target["rawSql"].endswith("ORDER BY " + ", ".join(filter(None, [chart.x, chart.series]))), name
    lines = PANELS["connector_minutes"]
    assert lines["fieldConfig"]["defaults"]["displayName"] == "${__field.labels.line}"  # a line is named by its value


def test_a_bar_chart_takes_its_x_from_the_chart_and_a_series_becomes_a_bar_per_value() -> None:
    for name in CHARTS:
        chart, panel = DASHBOARDS[name].chart, PANELS[name]
        if chart.kind != "bar":
            continue
        assert (panel["type"], panel["options"]["xField"], panel["targets"][0]["format"]) == ("barchart", chart.x, 1)
        if not chart.series:
            assert "transformations" not in panel, name
            continue
        matrix, rename = panel["transformations"]
        grouping = {"columnField": chart.series, "rowField": chart.x, "valueField": chart.y[0], "emptyValue": "null"}
        assert matrix == {"id": "groupingToMatrix", "options": grouping}, name
        # Grafana names the matrix's first column "x\series": it is the x again.
        assert rename == {"id": "organize", "options": {"renameByName": {f"{chart.x}\\{chart.series}": chart.x}}}


def test_a_table_panel_is_the_files_query_unchanged() -> None:
    for name, dash in DASHBOARDS.items():
        if dash.chart.kind == "table":
            panel = PANELS[name]
            assert panel["type"] == "table" and not {"options", "transformations", "fieldConfig"} & set(panel)
            target = panel["targets"][0]
            assert (target["format"], target["queryType"]) == (1, "table")
            assert target["rawSql"] == queries.grafana_sql(dash)


def test_a_bar_chart_keeps_the_files_order_and_a_line_chart_gets_the_instant_of_a_shown_time(ch: ClickHouse) -> None:
    ch.execute(
        "INSERT INTO stock_levels (event_id, event_time, event_time_ms, sku, available, locked) "
        "SELECT toString(number), now(), toUnixTimestamp(now()) * 1000 - number * 1000, "
        "concat('SKU-', toString(number % 500)), (number * 7919) % 30, number % 11 FROM numbers(20000)"
    )
    low = DASHBOARDS["low_stock"]
    whole = ch.query(as_sent(queries.grafana_sql(low)))
    assert len(whole) > 100
    assert ch.query(panel_sql("low_stock")) == [{c: row[c] for c in drawn(low)} for row in whole]

    hour_ms = 1_767_225_600_000  # 2026-01-01 00:00 UTC: the shop (UTC+8) shows it as the text "2026-01-01 08:00:00"
    ch.execute(
        "INSERT INTO order_states (event_id, event_time, event_time_ms, order_id, channel, state, placed_ms) VALUES "
        f"('a', now(), {hour_ms}, 'jd:1', 'jd', 'placed', {hour_ms}), "
        f"('b', now(), {hour_ms + 60_000}, 'jd:2', 'jd', 'placed', {hour_ms + 60_000})"
    )
    sql = panel_sql("orders_per_hour").replace("now() - INTERVAL 1 DAY", f"toDateTime({hour_ms // 1000 - 1})")
    assert ch.query(f"SELECT toUnixTimestamp(hour) * 1000 AS ms, orders FROM ({sql})") == [{"ms": hour_ms, "orders": 2}]
