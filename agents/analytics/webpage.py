"""`stockflow web`: the dashboards as one live HTML page with charts.

Serves ``streams/static/index.html`` (Plotly charts, refreshed every few seconds), Plotly's own
JavaScript from the installed ``plotly`` package (no network needed), and a JSON API over
``agents.analytics.queries.run`` - so the page shows exactly what ``stockflow dash`` prints - and over
``agents.forecast.predict`` for the forecast card (``/api/forecast``) and ``agents.shadow.card`` for the
shadow runs' card (``/api/shadow``), both listed with the dashboards. The control tower's other cards are
dashboards like any: the connector health board (``connector_health``), the focus pool (``focus_pool``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import plotly
from aiohttp import web

from agents.analytics import queries as dashboards
from agents.forecast import predict as forecast
from agents.routing.warehouses import load_warehouses
from agents.shadow import card as shadow_card
from streams.settings import Settings

STATIC = Path(__file__).parent / "static"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: orjson.dumps(o).decode())


def make_app(
    settings: Settings, shadow_rows: Callable[[Settings], list[dict[str, Any]]] | None = None
) -> web.Application:
    """The page's app; ``shadow_rows`` replaces reading the shadows (tests)."""
    shadows = shadow_card.Cached(shadow_rows or shadow_card.rows)

    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def plotly_js(_: web.Request) -> web.FileResponse:
        return web.FileResponse(PLOTLY_JS, headers={"Cache-Control": "max-age=86400"})

    async def catalogue(_: web.Request) -> web.Response:
        return _json({
            "dashboards": [*(d.describe() for d in dashboards.load_all().values()), forecast.chart_card(),
                           shadow_card.chart_card()],
            "channels": list(settings.channels),
            "warehouses": sorted(load_warehouses(settings.warehouses_file)),
        })  # fmt: skip

    async def rows(request: web.Request) -> web.Response:
        try:
            dash, found = await asyncio.to_thread(
                dashboards.run, settings, request.match_info["name"], dict(request.query)
            )
        except dashboards.DashboardError as exc:
            return _json({"error": str(exc)}, status=400)
        except Exception as exc:  # noqa: BLE001 - ClickHouse away: shown, asked again on the next refresh
            return _json({"error": f"ClickHouse: {exc}"}, status=503)
        return _json({"dashboard": dash.describe(), "rows": found})

    async def forecast_rows(_: web.Request) -> web.Response:
        try:
            found = await asyncio.to_thread(forecast.chart_rows, settings)
        except ValueError as exc:  # a promotion calendar or drivers file that does not parse
            return _json({"error": f"forecast: {exc}"}, status=400)
        except Exception as exc:  # noqa: BLE001 - ClickHouse away: shown, asked again on the next refresh
            return _json({"error": f"ClickHouse: {exc}"}, status=503)
        return _json({"dashboard": forecast.chart_card(), "rows": found})

    async def shadow_report(_: web.Request) -> web.Response:
        try:
            found = await asyncio.to_thread(shadows.get, settings)
        except Exception as exc:  # noqa: BLE001 - the broker away or a shadow's files unreadable: shown, asked again
            return _json({"error": f"shadow runs: {exc}"}, status=503)
        return _json({"dashboard": shadow_card.chart_card(), "rows": found})

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/static/plotly.min.js", plotly_js)
    app.router.add_get("/api/dashboards", catalogue)
    app.router.add_get("/api/dash/{name}", rows)
    app.router.add_get("/api/forecast", forecast_rows)
    app.router.add_get("/api/shadow", shadow_report)
    return app


def serve(settings: Settings, port: int) -> None:
    web.run_app(make_app(settings), host=settings.web_host, port=port, print=None)
