"""The ops dashboards: one SQL file each in ``dashboards/``, parameters checked before they are bound.

A dashboard file starts with comment lines ``-- title:``, ``-- description:`` and ``-- chart:``
(``bar|line|table x=<column> y=<column>,... [series=<column>]``), then one query that runs
unchanged on embedded chdb and on a ClickHouse server. Parameters are written ``{name:Type}`` and
are always bound, never pasted into SQL. Each parameter a file uses comes from ``PARAMS``: it has a
type, a default and a check, so a bad value is a clear ``DashboardError``, not a stack trace.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from streams.errors import StockflowError
from streams.resources import packaged
from streams.settings import Settings

DASHBOARD_DIR = packaged("agents.analytics", "dashboards")
_PLACEHOLDER = re.compile(r"\{(\w+):(\w+)\}")
_RELATIVE = re.compile(r"^(now)?\s*([+-])\s*(\d+(?:\.\d+)?)\s*([smhd])$")
_SKU = re.compile(r"^[A-Za-z0-9._:/-]{1,64}$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
BY = ("stage", "channel", "warehouse", "hour")


class DashboardError(StockflowError, ValueError):
    """A dashboard that does not exist or a parameter that is not acceptable."""


@dataclass(frozen=True)
class Chart:
    kind: str  # bar | line | table
    x: str = ""
    y: tuple[str, ...] = ()
    series: str = ""


@dataclass(frozen=True)
class Dashboard:
    name: str
    title: str
    description: str
    chart: Chart
    sql: str
    params: tuple[str, ...] = field(default=())

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "description": self.description,
                "chart": self.chart.__dict__, "params": list(self.params)}  # fmt: skip

    @property
    def columns(self) -> tuple[str, ...]:
        """The result's column names, read from the SQL: an empty result still has a CSV header."""
        return result_columns(self.sql)


def _top_level(sql: str) -> list[tuple[int, str]]:
    """(position, character) of every character outside brackets, quotes and comments."""
    out: list[tuple[int, str]] = []
    depth, quote, i = 0, "", 0
    while i < len(sql):
        ch = sql[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'`\"":
            quote = ch
        elif sql.startswith("--", i):
            i = sql.find("\n", i)
            if i < 0:
                break
            continue
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0:
            out.append((i, ch))
        i += 1
    return out


def result_columns(sql: str) -> tuple[str, ...]:
    """Column names of a query's outermost SELECT list (aliases, else the last part of a column name).

    () when they cannot be read from the text (``SELECT *``): then only rows can say.
    """
    positions = _top_level(sql)
    flat = "".join(ch for _, ch in positions)
    start = re.search(r"\bSELECT\s+(?:DISTINCT\s+)?", flat, re.IGNORECASE)
    if start is None:
        return ()
    end = re.compile(r"\b(FROM|WHERE|GROUP\s+BY|ORDER\s+BY|LIMIT|UNION|SETTINGS|FORMAT)\b", re.IGNORECASE)
    stop = end.search(flat, start.end())
    # Map the top-level positions back to the text, so bracketed parts of an item are kept.
    first = positions[start.end()][0] if start.end() < len(positions) else len(sql)
    last = positions[stop.start()][0] if stop else len(sql)
    commas = [i for i, ch in positions if ch == "," and first <= i < last]
    names = []
    for lo, hi in zip([first, *(c + 1 for c in commas)], [*commas, last], strict=True):
        item = re.sub(r"--[^\n]*", "", sql[lo:hi]).strip()
        alias = re.search(r"\bAS\s+`?(\w+)`?\s*$", item, re.IGNORECASE)
        if alias:
            names.append(alias.group(1))
        elif re.fullmatch(r"[\w.`]+", item) and item != "*":
            names.append(item.replace("`", "").rsplit(".", 1)[-1])
        else:
            return ()
    return tuple(names)


def parse_time(text: str, now_ms: int, zone: str = "UTC") -> int:
    """Milliseconds since the epoch from ``now``, ``-24h`` / ``now-30m``, an ISO time (in ``zone`` if it names
    none: the shop's, as every time a dashboard shows) or ms."""
    value = text.strip()
    if value == "now":
        return now_ms
    if value.isdigit():
        return int(value)
    rel = _RELATIVE.match(value)
    if rel:
        sign = -1 if rel.group(2) == "-" else 1
        return now_ms + sign * int(float(rel.group(3)) * _UNITS[rel.group(4)] * 1000)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise DashboardError(f"not a time: {text!r} (use now, -24h, 2026-11-11T00:00 or epoch ms)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(zone))
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class Param:
    type: str
    help: str
    default: Callable[[Settings, int], Any]
    check: Callable[[str, Settings, int], Any]


def _choice(name: str, allowed: Callable[[Settings], tuple[str, ...]]) -> Callable[[str, Settings, int], str]:
    def check(value: str, settings: Settings, now_ms: int) -> str:
        if value and value not in allowed(settings):
            raise DashboardError(
                f"{name} must be one of {', '.join(allowed(settings))} (or empty for all), not {value!r}"
            )
        return value

    return check


def _warehouses(settings: Settings) -> tuple[str, ...]:
    from agents.routing.warehouses import load_warehouses

    return tuple(sorted(load_warehouses(settings.warehouses_file)))


def _sku(value: str, settings: Settings, now_ms: int) -> str:
    if value and not _SKU.match(value):
        raise DashboardError(f"not a SKU: {value!r}")
    return value


def _int(name: str, low: int, high: int) -> Callable[[str, Settings, int], int]:
    def check(value: str, settings: Settings, now_ms: int) -> int:
        try:
            number = int(value)
        except ValueError:
            raise DashboardError(f"{name} must be a whole number, not {value!r}") from None
        if not low <= number <= high:
            raise DashboardError(f"{name} must be between {low} and {high}, not {number}")
        return number

    return check


def _seconds(name: str) -> Callable[[str, Settings, int], float]:
    def check(value: str, settings: Settings, now_ms: int) -> float:
        try:
            number = float(value)
        except ValueError:
            raise DashboardError(f"{name} must be a number of seconds, not {value!r}") from None
        if not 0 < number < 10**9:
            raise DashboardError(f"{name} must be more than 0 and under 10^9 seconds, not {value!r}")
        return number

    return check


def _shop_zone(settings: Settings) -> str:
    from agents.refunds.reports import shop_zone

    return shop_zone(settings)


def _zone(value: str, settings: Settings, now_ms: int) -> str:
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(value)
    except (ValueError, KeyError):  # ZoneInfoNotFoundError is a KeyError
        raise DashboardError(f"not a time zone: {value!r} (use e.g. Asia/Shanghai)") from None
    return value


PARAMS: dict[str, Param] = {
    "from_ms": Param("Int64", "start of the time range (now, -24h, ISO time in the shop's zone unless it names one, "
                     "epoch ms)", lambda s, now: now - 24 * 3600 * 1000,
                     lambda v, s, now: parse_time(v, now, _shop_zone(s))),
    "to_ms": Param("Int64", "end of the time range", lambda s, now: now + 60_000,
                   lambda v, s, now: parse_time(v, now, _shop_zone(s))),
    "now_ms": Param("Int64", "what 'now' is for ages", lambda s, now: now,
                    lambda v, s, now: parse_time(v, now, _shop_zone(s))),
    "channel": Param("String", "one channel, or empty for all", lambda s, now: "",
                     _choice("channel", lambda s: tuple(s.channels))),
    "warehouse": Param("String", "one warehouse id, or empty for all", lambda s, now: "",
                       _choice("warehouse", _warehouses)),
    "sku": Param("String", "one SKU, or empty for all", lambda s, now: "", _sku),
    "by": Param("String", f"group flow times by {'|'.join(BY)}", lambda s, now: "stage", _choice("by", lambda s: BY)),
    "threshold": Param("Int64", "low-stock threshold", lambda s, now: s.safety_threshold, _int("threshold", 0, 10**9)),
    "respond_s": Param("Float64", "refund SOP: customer service answers within (s)",
                       lambda s, now: s.refund_respond_s, _seconds("respond_s")),
    "qc_s": Param("Float64", "refund SOP: QC of a return within (s)", lambda s, now: s.refund_qc_s, _seconds("qc_s")),
    "settle_s": Param("Float64", "refund paid out, settled within (s)", lambda s, now: s.refund_settle_s,
                      _seconds("settle_s")),
    "return_s": Param("Float64", "refund SOP: an approved return reaches the warehouse within (s)",
                      lambda s, now: s.refund_return_s, _seconds("return_s")),
    "tz": Param("String", "time zone times are shown in (the shop's)", lambda s, now: _shop_zone(s), _zone),
}  # fmt: skip


def parse(path: Path) -> Dashboard:
    header: dict[str, str] = {}
    body: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        meta = re.match(r"^--\s*(title|description|chart):\s*(.*)$", line)
        if meta and not body:
            header[meta.group(1)] = meta.group(2).strip()
        else:
            body.append(line)
    sql = "\n".join(body).strip()
    parts = header.get("chart", "table").split()
    options = dict(p.split("=", 1) for p in parts[1:])
    chart = Chart(parts[0] if parts else "table", options.get("x", ""),
                  tuple(filter(None, options.get("y", "").split(","))), options.get("series", ""))  # fmt: skip
    used: list[str] = []
    for name, type_ in _PLACEHOLDER.findall(sql):
        if name not in PARAMS:
            raise ValueError(f"{path.name}: unknown parameter {name!r}")
        if PARAMS[name].type != type_:
            raise ValueError(f"{path.name}: {name} is {PARAMS[name].type}, not {type_}")
        if name not in used:
            used.append(name)
    return Dashboard(path.stem, header.get("title", path.stem), header.get("description", ""), chart, sql,
                     tuple(used))  # fmt: skip


def load_all(directory: Path = DASHBOARD_DIR) -> dict[str, Dashboard]:
    return {p.stem: parse(p) for p in sorted(directory.glob("*.sql"))}


def find(name: str, directory: Path = DASHBOARD_DIR) -> Dashboard:
    dashboards = load_all(directory)
    if name not in dashboards:
        raise DashboardError(f"no dashboard {name!r}; there are: {', '.join(dashboards)}")
    return dashboards[name]


def bind(dashboard: Dashboard, given: dict[str, str], settings: Settings, now_ms: int | None = None) -> dict[str, Any]:
    """The typed value of every parameter the dashboard uses: given ones checked, others defaulted."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    unknown = sorted(set(given) - set(PARAMS))
    if unknown:
        raise DashboardError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(PARAMS)}")
    values = {}
    for name in dashboard.params:
        raw = given.get(name)
        param = PARAMS[name]
        values[name] = param.default(settings, now) if raw is None else param.check(str(raw), settings, now)
    if "sku" in dashboard.params and dashboard.name == "stock_timeline" and not values["sku"]:
        raise DashboardError("stock_timeline needs a sku")
    if "from_ms" in values and "to_ms" in values and values["from_ms"] >= values["to_ms"]:
        raise DashboardError("the time range is empty: from must be before to")
    return values


def jsonable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with times as ISO strings (UTC), ready for JSON, CSV and charts."""
    out = []
    for row in rows:
        fixed = {}
        for key, value in row.items():
            if isinstance(value, datetime):
                value = (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
            elif isinstance(value, timedelta):
                value = value.total_seconds()
            fixed[key] = value
        out.append(fixed)
    return out


def run(settings: Settings, name: str, given: dict[str, str]) -> tuple[Dashboard, list[dict[str, Any]]]:
    """A dashboard's rows. An embedded ClickHouse belongs to the running sink process (``stockflow
    sink``), so it is asked over HTTP; a ClickHouse server (or an embedded one no sink holds) is
    queried directly."""
    import httpx

    from streams.stores.clickhouse import open_clickhouse

    dash = find(name)
    params = bind(dash, given, settings)
    if settings.clickhouse_url.startswith("chdb"):
        url = f"{settings.sink_base_url}/dash/{name}"
        try:
            response = httpx.get(url, params=given, timeout=30)
        except httpx.HTTPError:
            response = None  # no sink: the folder is free to open here
        if response is not None:
            try:
                answer = response.json()
            except ValueError:
                answer = {"error": f"{url} answered {response.status_code}: {response.text[:200]}"}
            if response.status_code == HTTPStatus.BAD_REQUEST:
                raise DashboardError(answer.get("error", "the sink refused the parameters"))
            if response.status_code != HTTPStatus.OK:
                raise RuntimeError(answer.get("error", f"the sink answered {response.status_code}"))
            return dash, answer["rows"]
    ch = open_clickhouse(settings)
    try:
        return dash, jsonable(ch.query(dash.sql, params))
    finally:
        ch.close()


# ---- Grafana ------------------------------------------------------------------------------------
# The same SQL, with each bound parameter replaced by a Grafana macro or template variable, so
# ClickHouse-server users get these dashboards in Grafana (see docker-compose.yml). A variable is
# never pasted raw: `:sqlstring` has Grafana quote it and double its quotes (the SKU is a free text
# box), and the numbers are converted from that string, so no value can become SQL.
GRAFANA_DATASOURCE = {"type": "grafana-clickhouse-datasource", "uid": "stockflow-clickhouse"}
GRAFANA_SUBSTITUTES = {
    "from_ms": "(toUnixTimestamp($__fromTime) * 1000)",
    "to_ms": "(toUnixTimestamp($__toTime) * 1000)",
    "now_ms": "(toUnixTimestamp(now()) * 1000)",
    "channel": "${channel:sqlstring}",
    "warehouse": "${warehouse:sqlstring}",
    "sku": "${sku:sqlstring}",
    "by": "${by:sqlstring}",
    "threshold": "toInt64(${threshold:sqlstring})",
    "respond_s": "toFloat64(${respond_s:sqlstring})",
    "qc_s": "toFloat64(${qc_s:sqlstring})",
    "settle_s": "toFloat64(${settle_s:sqlstring})",
    "return_s": "toFloat64(${return_s:sqlstring})",
    "tz": "${tz:sqlstring}",
}


def grafana_sql(dash: Dashboard) -> str:
    return _PLACEHOLDER.sub(lambda m: GRAFANA_SUBSTITUTES[m.group(1)], dash.sql)


def grafana_panel_sql(dash: Dashboard) -> str:
    """A panel's SQL. A chart's returns only what ``stockflow web`` draws of it: x, then the series and the first
    y, or every y. Grafana draws every numeric column it gets, and splits a time series into one line per value
    of every text column."""
    sql = grafana_sql(dash)
    chart = dash.chart
    if chart.kind not in ("bar", "line"):
        return sql
    x = chart.x
    if chart.kind == "line" and f"{x}_ms" in dash.columns:
        # A time series needs a time, and the x shown may be text (the shop's hour): its epoch ms is the instant.
        x = f"toDateTime(intDiv({x}_ms, 1000)) AS {x}"
    drawn = [x, chart.series, chart.y[0]] if chart.series else [x, *chart.y]
    # Grafana splits rows into a line per series value only when they are sorted by time. A bar chart keeps the
    # file's own order (its ranking): a projection keeps the order the inner ORDER BY gave.
    order = f"\nORDER BY {', '.join(filter(None, [chart.x, chart.series]))}" if chart.kind == "line" else ""
    return f"SELECT {', '.join(drawn)}\nFROM\n(\n{sql}\n){order}"


def grafana_panel(dash: Dashboard, i: int) -> dict[str, Any]:
    """The i-th panel (two a row), drawing the dashboard as its chart line says."""
    chart = dash.chart
    line = chart.kind == "line"
    panel: dict[str, Any] = {
        "id": i + 1, "title": dash.title, "description": dash.description,
        "type": {"bar": "barchart", "line": "timeseries"}.get(chart.kind, "table"), "datasource": GRAFANA_DATASOURCE,
        "gridPos": {"h": 9, "w": 12, "x": 12 * (i % 2), "y": 9 * (i // 2)},
        # The ClickHouse plugin's formats: 0 time series (long rows become one field per series value), 1 table.
        "targets": [{"refId": "A", "datasource": GRAFANA_DATASOURCE, "editorType": "sql", "format": 0 if line else 1,
                     "queryType": "timeseries" if line else "table", "rawSql": grafana_panel_sql(dash)}],
    }  # fmt: skip
    if line and chart.series:  # each line named by its series value alone, as on the web page
        panel["fieldConfig"] = {"defaults": {"displayName": f"${{__field.labels.{chart.series}}}"}, "overrides": []}
    if chart.kind == "bar":
        panel["options"] = {"xField": chart.x}
        if chart.series:
            # A bar per series value at each x: one column per series value, and the x column, which Grafana
            # names x\series, named x again. An x the series lacks gets no bar (null), not a 0 or a ''.
            panel["transformations"] = [
                {"id": "groupingToMatrix", "options": {"columnField": chart.series, "rowField": chart.x,
                                                       "valueField": chart.y[0], "emptyValue": "null"}},
                {"id": "organize", "options": {"renameByName": {f"{chart.x}\\{chart.series}": chart.x}}},
            ]  # fmt: skip
    return panel


def grafana_dashboard(settings: Settings, directory: Path = DASHBOARD_DIR) -> dict[str, Any]:
    """A Grafana dashboard model with one panel per dashboard file."""
    panels = [grafana_panel(dash, i) for i, dash in enumerate(load_all(directory).values())]

    def choice(name: str, values: list[str], default: str = "") -> dict[str, Any]:
        options = [{"text": v or "all", "value": v} for v in values]
        return {"name": name, "type": "custom", "query": ",".join(v or " " for v in values),
                "current": {"text": default or "all", "value": default}, "options": options}  # fmt: skip

    variables = [
        choice("channel", ["", *settings.channels]),
        choice("warehouse", ["", *_warehouses(settings)]),
        {"name": "sku", "type": "textbox", "query": "", "current": {"text": "", "value": ""}},
        choice("by", list(BY), "stage"),
        {"name": "threshold", "type": "constant", "query": str(settings.safety_threshold)},
        {"name": "respond_s", "type": "constant", "query": str(settings.refund_respond_s)},
        {"name": "qc_s", "type": "constant", "query": str(settings.refund_qc_s)},
        {"name": "settle_s", "type": "constant", "query": str(settings.refund_settle_s)},
        {"name": "return_s", "type": "constant", "query": str(settings.refund_return_s)},
        {"name": "tz", "type": "constant", "query": _shop_zone(settings)},
    ]
    return {
        "uid": "stockflow-ops", "title": "stockflow: orders, stock and flow time", "schemaVersion": 39,
        "time": {"from": "now-24h", "to": "now"}, "refresh": "10s", "tags": ["stockflow"],
        "templating": {"list": variables}, "panels": panels,
    }  # fmt: skip
