"""The sink process's HTTP views, on ``STOCKFLOW_SINK_PORT``, served from a thread of their own.

- ``/healthz``: the process answers;
- ``/readyz``: 200 when the broker and ClickHouse answer and the last insert went in (or there was
  nothing to insert) and it keeps up (no backlog waiting a minute without an insert), else 503;
- ``/metrics``: Prometheus metrics (``agents.analytics.sink_metrics``);
- ``/sink/status``: rows written, dead letters, retries, last error, lag;
- ``/sink/query/events-by-type``: events in ClickHouse per type;
- ``/dash/{name}``: a dashboard's rows, through the sink's own ClickHouse connection - the only way
  into an embedded (chdb) ClickHouse while the sink holds its folder; ``stockflow dash`` and
  ``stockflow web`` ask here (``agents.analytics.queries.run``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import orjson
from aiohttp import web

from agents.analytics import queries as dashboards
from agents.analytics.sink import SharedClickHouse, SinkStatus
from agents.analytics.sink_metrics import keeping_up, sink_collector
from streams import metrics
from streams.settings import Settings

log = logging.getLogger(__name__)


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: orjson.dumps(o, default=str).decode())


def make_app(settings: Settings, status: SinkStatus, clickhouse: SharedClickHouse) -> web.Application:
    registry = metrics.new_registry(sink_collector(status))
    started_ms = int(time.time() * 1000)

    async def healthz(_: web.Request) -> web.Response:
        return _json({"ok": True})

    async def readyz(_: web.Request) -> web.Response:
        up = keeping_up(status.lag, status.last_insert_ms, started_ms, int(time.time() * 1000))
        ready = status.ready and up
        return _json({"ready": ready, "broker": status.broker_ok, "clickhouse": status.clickhouse_ok,
                      "last_insert_ok": status.last_insert_ok, "keeping_up": up, "lag": status.lag},
                     status=200 if ready else 503)  # fmt: skip

    async def prometheus(_: web.Request) -> web.Response:
        body = metrics.render(registry)
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

    async def sink_status(_: web.Request) -> web.Response:
        return _json(status.snapshot())

    async def events_by_type(_: web.Request) -> web.Response:
        try:
            rows = await asyncio.to_thread(
                clickhouse.query,
                "SELECT event_type, count() AS n FROM (SELECT event_type FROM events FINAL) "
                "GROUP BY event_type ORDER BY event_type",
            )
        except Exception as exc:  # noqa: BLE001 - ClickHouse away: say so; the sink retries on its own
            return _json({"error": f"ClickHouse: {exc}"}, status=503)
        return _json(rows)

    async def dashboard(request: web.Request) -> web.Response:
        try:
            dash = dashboards.find(request.match_info["name"])
            params = dashboards.bind(dash, dict(request.query), settings)
        except dashboards.DashboardError as exc:
            return _json({"error": str(exc)}, status=400)
        try:
            rows = await asyncio.to_thread(clickhouse.query, dash.sql, params)
        except Exception as exc:  # noqa: BLE001 - ClickHouse away: the page shows it and asks again
            return _json({"error": f"ClickHouse: {exc}"}, status=503)
        return _json({"dashboard": dash.describe(), "rows": dashboards.jsonable(rows)})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/sink/status", sink_status)
    app.router.add_get("/sink/query/events-by-type", events_by_type)
    app.router.add_get("/dash/{name}", dashboard)
    return app


class SinkViews:
    """The views on their own event loop and thread: the sink's poll loop blocks, the views must not."""

    def __init__(self, settings: Settings, status: SinkStatus, clickhouse: SharedClickHouse) -> None:
        self.host, self.port = settings.web_host, settings.sink_port
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(make_app(settings, status, clickhouse), access_log=None)
        self.thread = threading.Thread(target=self.loop.run_forever, name="sink-http", daemon=True)

    def start(self) -> None:
        """Listen (raises OSError if the port is taken), then serve from the thread."""
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, self.host, self.port).start())
        self.thread.start()
        log.info("sink views on http://%s:%d/sink/status", self.host, self.port)

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
