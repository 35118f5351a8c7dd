"""`stockflow intake`: the HTTP service marketplace connectors and the WMS post notifications to.

    POST /v1/channels/{channel}/{kind}   kind: order | payment | cancel | shipment | delivery | wms_ack
    POST /v1/wms/{kind}                  kind: ack | shipment | delivery; body names the channel
    GET  /healthz

A notification is mapped and checked (``agents.intake.mapping``), written to ``order.events``
keyed by order id, and answered 200 only after the broker acknowledged the write (acks=all,
idempotent producer). A refusal is a 4xx with ``{"error": code, "field": path, "detail": text}``
and writes nothing. Event ids are derived from (channel, channel order id, kind), so a channel
retrying a callback gets 200 again: intake remembers recent ids and does not write them twice,
and whatever does reach Kafka twice (an intake restart in between) is one event downstream.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from typing import Any

import orjson
from aiohttp import web

from agents.intake.mapping import Catalogue, ChannelMap, IntakeError, OrderLimits, load_channels
from streams.contract.keys import order_key
from streams.contract.reasons import Reason
from streams.contract.topics import ORDER_EVENTS
from streams.engine.clock import Clock
from streams.engine.producer import EventProducer
from streams.settings import Settings

log = logging.getLogger(__name__)
REMEMBERED_IDS = 500_000
WMS_KINDS = {"ack": "wms_ack", "shipment": "shipment", "delivery": "delivery"}
WMS_PATHS = {
    "wms_ack": {"channel_order_id": "channel_order_id", "warehouse_id": "warehouse_id",
                "wms_order_id": "wms_order_id", "event_time": "event_time_ms"},
    "shipment": {"channel_order_id": "channel_order_id", "warehouse_id": "warehouse_id",
                 "tracking_no": "tracking_no", "event_time": "event_time_ms"},
    "delivery": {"channel_order_id": "channel_order_id", "event_time": "event_time_ms"},
}  # fmt: skip


def _refusal(err: IntakeError) -> web.Response:
    return web.json_response(err.body(), status=err.status, dumps=lambda o: orjson.dumps(o).decode())


class Intake:
    def __init__(self, settings: Settings, producer: EventProducer | None = None) -> None:
        self.settings = settings
        self.channels = load_channels(settings.channels_file, tuple(settings.channels))
        self.catalogue = Catalogue.load(settings.catalogue_file)
        self.limits = OrderLimits.from_settings(settings)
        self.producer = producer or EventProducer(settings)
        self.clock = Clock()
        self.accepted: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="intake-delivery", daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/v1/channels/{channel}/{kind}", self.channel_notification)
        app.router.add_post("/v1/wms/{kind}", self.wms_notification)
        app.router.add_get("/healthz", self.health)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _start(self, _: web.Application) -> None:
        self._poller.start()

    async def _cleanup(self, _: web.Application) -> None:
        self._stop.set()
        await asyncio.to_thread(self.producer.flush, 10.0)

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"ok": True, "channels": sorted(self.channels), "counts": self.counts})

    async def channel_notification(self, request: web.Request) -> web.Response:
        channel = request.match_info["channel"]
        mapping = self.channels.get(channel)
        if mapping is None:
            return _refusal(IntakeError(Reason.UNKNOWN_CHANNEL, f"{channel!r} is not a configured channel", status=404))
        return await self._accept(request, mapping, request.match_info["kind"])

    async def wms_notification(self, request: web.Request) -> web.Response:
        kind = WMS_KINDS.get(request.match_info["kind"])
        if kind is None:
            return _refusal(IntakeError(Reason.UNKNOWN_EVENT_KIND, f"WMS sends {sorted(WMS_KINDS)}", status=404))
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        channel = body.get("channel") if isinstance(body, dict) else None
        if channel not in self.channels:
            return _refusal(IntakeError(Reason.UNKNOWN_CHANNEL, f"channel {channel!r} is not configured", "channel"))
        mapping = ChannelMap(channel, channel, "fen", {kind: WMS_PATHS[kind]})
        return await self._accept(request, mapping, kind, body)

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _refusal(IntakeError(Reason.MALFORMED_JSON, f"body is not JSON: {exc}", status=400))

    async def _accept(self, request: web.Request, mapping: ChannelMap, kind: str, body: Any = None) -> web.Response:
        if body is None:
            body = await self._body(request)
            if isinstance(body, web.Response):
                return body
        try:
            event_type, record = mapping.build(kind, body, self.catalogue, self.limits, self.clock.now_ms())
        except IntakeError as err:
            self.counts[f"refused:{err.reason}"] = self.counts.get(f"refused:{err.reason}", 0) + 1
            return _refusal(err)
        event_id = record["event_id"]
        if event_id in self.accepted:
            return web.json_response({"status": "duplicate", **self.accepted[event_id]})
        key = order_key(mapping.channel, record["channel_order_id"])
        try:
            where = await self._write(key, event_type, record)
        except Exception as exc:  # noqa: BLE001 - whatever kept it from the topic, the caller gets a 503 to retry on
            log.error("intake: writing %s failed: %r", event_id, exc)
            return _refusal(IntakeError(Reason.KAFKA_UNAVAILABLE, f"not written, retry later: {exc}", status=503))
        answer = {"event_id": event_id, "event_type": event_type, "order_id": key, **where}
        self.accepted[event_id] = answer
        while len(self.accepted) > REMEMBERED_IDS:
            self.accepted.popitem(last=False)
        self.counts[event_type] = self.counts.get(event_type, 0) + 1
        return web.json_response({"status": "accepted", **answer})

    async def _write(self, key: str, event_type: str, record: dict[str, Any]) -> dict[str, Any]:
        """Produce and wait for the broker's acknowledgement."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[dict[str, Any]] = loop.create_future()

        def delivered(err: Any, msg: Any) -> None:
            def settle() -> None:
                if done.done():
                    return
                if err is not None:
                    done.set_exception(RuntimeError(str(err)))
                else:
                    done.set_result({"partition": msg.partition(), "offset": msg.offset()})

            loop.call_soon_threadsafe(settle)

        self.producer.send_with_callback(ORDER_EVENTS.name, key, event_type, record, delivered)
        return await asyncio.wait_for(done, timeout=30.0)


def serve(settings: Settings) -> None:
    """Run the intake service until interrupted."""
    web.run_app(Intake(settings).app(), host=settings.intake_host, port=settings.intake_port, print=None)
