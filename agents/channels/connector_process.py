"""``stockflow connectors run``: the outbound connectors in a process of their own, with a status view.

Runs the refund connector (``issue_refunds``) and the channel stock connector (``push_stock``) side by
side on threads: an input loop each, one refund lane and one stock lane per channel (a channel's calls
never wait for another's), the result producer's poll thread and the credentials watch, which re-reads
the credentials file when it changes and raises or clears ``credential_expiring`` (checked every
``EXPIRY_CHECK_S`` too, so a key expires on time even when nobody touches the file). Every call as it
ended goes to ``connector.calls`` (``ConnectorCalled``), for the health board in ClickHouse.

HTTP on ``STOCKFLOW_CONNECTORS_PORT`` (``STOCKFLOW_WEB_HOST``): ``/healthz``; ``/readyz`` (200 once
both input loops hold their partitions); ``/connectors/status``: per channel and endpoint the calls
ok / already applied / stale / retried / failed, the last error, latency p50 and p99, whether the
endpoint is failing; per channel the key's fingerprint and expiry, whether any endpoint is failing,
what is queued (stock figures waiting, those waiting out a retry's backoff); ``/metrics``: the same as
Prometheus metrics (``agents.channels.connector_metrics``).

SIGTERM or SIGINT stops it cleanly: reading stops, each lane ends the call in hand (a call waiting
for a retry is abandoned), every result is flushed, the finished records' offsets are committed, and
whatever was read but not finished is read again at the next start. A record the broker refuses for
good, or a bug in a thread, stops the process with exit code 1 the same way.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

import orjson
from aiohttp import web
from confluent_kafka import KafkaException

from agents.channels.calls import ChannelCaller, marketplace_url
from agents.channels.connector_metrics import connector_collector
from agents.channels.credentials import CredentialStore, ExpiryWatch
from agents.channels.issue_refunds import RefundConnector
from agents.channels.kafka_io import ConnectorAlerts, InputLoop, ResultSink
from agents.channels.platforms import ENDPOINTS
from agents.channels.push_stock import StockConnector
from streams import metrics
from streams.contract.codec import codec_for
from streams.contract.records import ConnectorCalled
from streams.contract.topics import CONNECTOR_CALLS, CONNECTOR_FAILED, ensure_topics
from streams.engine.clock import wall_ms
from streams.engine.retry import Backoff, Retry
from streams.settings import Settings

log = logging.getLogger(__name__)
LOG_LEVELS = {"crit": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO,
              "debug": logging.DEBUG}  # fmt: skip
EXPIRY_CHECK_S = 60.0
LANE_STOP_S = 15.0  # longer than a call's timeout: the call in hand ends on its own


def _broker_away(exc: BaseException) -> bool:
    return isinstance(exc, (KafkaException, OSError, TimeoutError))


class ConnectorProcess:
    """Everything ``connectors run`` runs; ``run`` blocks until ``stop`` is set and returns the exit code."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.fatal: list[str] = []
        codec = codec_for(settings)
        self.store = CredentialStore.from_settings(settings)
        self.caller = ChannelCaller(settings, self.store, stopping=self.stop.is_set)
        self.sink = ResultSink(settings, codec, on_fatal=self.fail)
        self.caller.on_call = self._published
        self.alerts = ConnectorAlerts(self.sink)
        self.refunds = RefundConnector(settings, codec, self.caller, self.sink, self.alerts, self.stop, self.fail)
        self.stock = StockConnector(settings, codec, self.caller, self.sink, self.alerts, self.stop, self.fail)
        for loop in (self.refunds.loop, self.stock.loop):
            loop.on_assignment = self._reshare
        self.expiry = ExpiryWatch(settings.credential_warn_days)
        self.started_ms = wall_ms()
        self._loops: list[tuple[InputLoop, threading.Thread]] = []

    def _published(self, record: ConnectorCalled) -> None:
        self.sink.send(CONNECTOR_CALLS.name, record["channel"], "ConnectorCalled", record)

    def rate_share(self) -> float:
        """This process's share of each platform's rate limit: the share of the input partitions it holds.

        A platform limits calls per app, and every connector process of a group calls as the same app. Each
        partition of both inputs is held by one member at a time (a cooperative rebalance revokes before it
        assigns), so the members' shares never add up to more than the whole limit, however many there are.
        A process holding none keeps one partition's share, so calls it still has in hand can end.
        """
        loops = (self.refunds.loop, self.stock.loop)
        held, total = sum(len(loop.assigned) for loop in loops), sum(loop.partitions for loop in loops)
        return max(held, 1) / total if held < total else 1.0

    def _reshare(self) -> None:
        share = self.rate_share()
        if share != self.caller.rate_share:
            log.info("connectors: %.0f%% of each platform's rate limit (the share of partitions held)", share * 100)
            self.caller.set_share(share)

    def fail(self, message: str) -> None:
        """Stop the process with exit code 1 (called from any thread)."""
        log.error("%s; stopping", message)
        self.fatal.append(message)
        self.stop.set()

    # ---- running ------------------------------------------------------------------------------------
    def run(self) -> int:
        # The connectors may start before the broker: wait for it like for any outage.
        Retry("creating the contract topics", _broker_away, backoff=Backoff(0.5, 10.0), log=log).call(
            lambda: ensure_topics(self.settings), lambda _exc: self._stop_check()
        )
        self.sink.start()
        self.refunds.start_lanes()
        self.stock.start_lanes()
        loops = [(loop, threading.Thread(target=self._guard(loop.run), name=f"{loop.stage}-input", daemon=True))
                 for loop in (self.refunds.loop, self.stock.loop)]  # fmt: skip
        for _loop, thread in loops:
            thread.start()
        self._loops = loops
        watch = threading.Thread(target=self._guard(self._watch_credentials), name="credentials", daemon=True)
        watch.start()
        log.info("connectors running: marketplace %s, credentials %s", marketplace_url(self.settings, "<channel>"),
                 self.store.path)  # fmt: skip
        while not self.stop.wait(0.5):
            pass
        self._shutdown()
        return 1 if self.fatal else 0

    def _stop_check(self) -> None:
        if self.stop.is_set():
            raise SystemExit(1 if self.fatal else 0)

    def _guard(self, target: Any) -> Any:
        def run() -> None:
            try:
                target()
            except Exception as exc:
                log.exception("%s failed", threading.current_thread().name)
                self.fail(f"{threading.current_thread().name}: {type(exc).__name__}: {exc}")

        return run

    def _shutdown(self) -> None:
        for _loop, thread in self._loops:
            thread.join(10)
        self.refunds.join(LANE_STOP_S)
        self.stock.join(LANE_STOP_S)
        self.sink.close()  # delivers the lanes' last results: their records finish
        for loop, thread in self._loops:
            if not thread.is_alive():
                loop.close()
        self.caller.close()

    def _watch_credentials(self) -> None:
        generation, next_check = -1, 0.0
        while not self.stop.wait(1.0 if generation >= 0 else 0):
            self.store.refresh()
            now = time.monotonic()
            if self.store.generation == generation and now < next_check:
                continue
            generation, next_check = self.store.generation, now + EXPIRY_CHECK_S
            for record in self.expiry.check(self.store.all(), wall_ms()):
                log.warning("%s: %s", record["kind"], record["message"])
                self.alerts.send(record)

    # ---- status -------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return not self.stop.is_set() and bool(self._loops) and all(loop.assigned for loop, _ in self._loops)

    def status(self) -> dict[str, Any]:
        now = wall_ms()
        keys = self.store.all()
        queued, pending, retrying = self.refunds.queued(), self.stock.pending(), self.stock.retrying()
        kept = self.stock.kept()
        channels = {}
        for channel in CONNECTOR_FAILED:
            key = keys.get(channel)
            channels[channel] = {
                "url": marketplace_url(self.settings, channel),
                "credentials": key.public(now, self.settings.credential_warn_days) if key else None,
                "failing": self.alerts.is_failing(channel),
                "refunds_queued": queued.get(channel, 0),
                "stock_pending": pending.get(channel, 0),
                "stock_retrying": retrying.get(channel, 0),
                "stock_parked_in_doubt": kept.get(channel, 0),  # records open until a lost call can't land
                "endpoints": {e: {**self.caller.endpoint_stats(channel, e).snapshot(),
                                  "failing": self.alerts.is_failing(channel, e)} for e in ENDPOINTS},
            }  # fmt: skip
        loops = {
            name: {"received": loop.received, "undecodable": loop.undecodable, "in_flight": loop.in_flight(),
                   "paused": loop.paused, "partitions": len(loop.assigned)}
            for name, loop in (("refunds", self.refunds.loop), ("stock", self.stock.loop))
        }  # fmt: skip
        return {"ready": self.ready, "started_ms": self.started_ms, "now_ms": now, "rate_share": self.caller.rate_share,
                "channels": channels, **loops}  # fmt: skip


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: orjson.dumps(o, default=str).decode())


def make_app(process: ConnectorProcess) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return _json({"ok": True})

    async def readyz(_: web.Request) -> web.Response:
        ready = process.ready
        return _json({"ready": ready}, status=200 if ready else 503)

    async def status(_: web.Request) -> web.Response:
        return _json(await asyncio.to_thread(process.status))

    def expiries() -> dict[str, int | None]:
        return {channel: key.expires_at_ms for channel, key in process.store.all().items()}

    registry = metrics.new_registry(connector_collector(process.status, expiries, wall_ms))

    async def prometheus(_: web.Request) -> web.Response:
        body = await asyncio.to_thread(metrics.render, registry)
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/connectors/status", status)
    return app


class StatusViews:
    """The views on their own event loop and thread (the connectors' threads block; the views must not)."""

    def __init__(self, settings: Settings, process: ConnectorProcess) -> None:
        self.host, self.port = settings.web_host, settings.connectors_port
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(make_app(process), access_log=None)
        self.thread = threading.Thread(target=self.loop.run_forever, name="connectors-http", daemon=True)

    def start(self) -> None:
        """Listen (raises OSError if the port is taken), then serve from the thread."""
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, self.host, self.port).start())
        self.thread.start()

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def run(settings: Settings) -> int:
    """``stockflow connectors run``: serve until SIGTERM or SIGINT; the exit code (0: stopped, 1: failed)."""
    logging.basicConfig(level=LOG_LEVELS[settings.log_level],
                        format="[%(asctime)s] [%(process)d] %(levelname)s %(name)s: %(message)s")  # fmt: skip
    process = ConnectorProcess(settings)

    def stop(signum: int, frame: FrameType | None) -> None:
        process.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    views = StatusViews(settings, process)
    try:
        views.start()
    except OSError as exc:
        log.error("cannot serve the connectors' status on %s:%d (STOCKFLOW_CONNECTORS_PORT): %s", settings.web_host,
                  settings.connectors_port, exc)  # fmt: skip
        return 1
    try:
        return process.run()
    except SystemExit as exc:  # stopped while the broker was still away at start
        return int(exc.code or 0)
    finally:
        views.stop()
