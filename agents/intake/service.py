"""`stockflow intake`: the HTTP service marketplace connectors, the WMS and customer service post to.

    POST /v1/channels/{channel}/{kind}   one route per kind the channel mapping configures:
                                         order | payment | cancel | shipment | delivery | wms_ack,
                                         refund | return_shipped | refund_settled | refund_cancelled
    POST /v1/wms/{ack|shipment|delivery} the WMS's order notifications; the body names the channel
    POST /v1/wms/return                  the returns desk: a return received, and its QC result
    POST /v1/wms/stock                   a stock document: receipt, count (absolute) or correction
    POST /v1/service/refund_review       customer service decided a refund
    GET  /healthz                        channels, which are signed, counts since start
    GET  /readyz                         200 when the broker answers a metadata request, else 503
    GET  /metrics                        Prometheus metrics: requests by route and status, refusals
                                         by reason, the produce latency histogram
    GET  /openapi.json                   the OpenAPI 3.1 document of every route above

Reads: the channel mapping and catalogue (``agents.intake.mapping``), the warehouses
(``agents.routing.warehouses``), the secrets file (``agents.intake.secrets``). Writes:
``order.events`` and ``refund.events`` keyed by order id, ``stock.adjustments`` keyed by SKU.

**Who may post.** A channel's callbacks are verified with that channel's signature scheme and the
app key and secret configured for it (``agents.channels.platforms.verify_callback``); the WMS and
customer service carry their shared token as ``Authorization: Bearer <token>``. A missing or bad
signature, an unknown app key or a stale timestamp is 401 and nothing is written; so is a channel
with no secret configured, unless ``STOCKFLOW_INTAKE_ALLOW_UNSIGNED=1`` (development: such
channels, and the token routes without a token, are then accepted unsigned). A Douyin push is
Doudian's envelope (a list of ``{tag, msg_id, data}``); intake reads ``data``, one message per push.
A verified push must also have been signed as a message of the route's kind
(``agents.channels.platforms.PUSH_EVENTS``: TOP ``topic``, PDD ``type``, Doudian ``tag``,
Kwaixiaodian ``event``): the signature vouches for the body and its event name, not for the route
it was posted to, so a signed payment replayed to the cancel route is 422 ``event_mismatch``. A
route configured for a kind its platform never pushes is a start-up error.

**What is accepted.** Each body is parsed by a pydantic model generated from the channel mapping
(``agents.intake.mapping``; field types in ``agents.intake.fields``). The decisions: a quantity or
line number is a JSON integer or a string of ASCII digits - ``"2"`` is accepted, as marketplaces
send numbers as strings, but never ``true``, ``2.0``, ``"+2"`` or ``"²"``; a flag reads ``"false"``
and ``"0"`` as false; a time must fall in the window of the settings. Every failure is a 4xx with
``{"error": code, "field": json.path, "detail": text}`` and writes nothing; 5xx is only
``kafka_unavailable`` (503, retry). A notification is answered 200 only after the broker
acknowledged the write (acks=all, idempotent producer).

**Repeats.** Event ids are derived from (channel, channel order id, kind) - a presale's balance
payment has an id of its own -, a refund's from (channel, channel refund id, step), and a stock
document's id is its adjustment's id (a repeat of it is the same document for the same SKU). A
request whose id intake has accepted before is answered 200 ``duplicate`` (with the first write's
offset, nothing written) when it says the same, and 409 ``conflicting_duplicate`` (nothing
written; the first stands) when it says something else. Concurrent repeats wait for the first to be written. What
intake remembers is the last ``REMEMBERED_IDS`` ids accepted since this process started, in memory:
across a restart (or beyond that many ids) a repeat is written again and is the same event
downstream, because every consumer de-duplicates by event id - but a *conflicting* repeat then goes
unnoticed by intake and is dropped downstream as a duplicate of the first, not answered 409.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import Counter
from prometheus_client.core import Metric

from agents.channels import platforms
from agents.intake.mapping import (
    Catalogue,
    ChannelMap,
    IntakeError,
    Mapped,
    OrderLimits,
    load_channels,
    service_map,
    wms_map,
)
from agents.intake.openapi import Health, Route, document
from agents.intake.secrets import SERVICE, WMS, SecretsFile
from agents.intake.stock import PARSER as STOCK_PARSER
from agents.intake.stock import build_adjustment
from agents.routing.warehouses import load_warehouses
from streams import metrics
from streams.contract.reasons import Reason
from streams.contract.topics import DEADLETTERS
from streams.engine.clock import Clock
from streams.engine.deadletter import refused_request
from streams.engine.producer import EventProducer, QueueFull
from streams.settings import Settings

log = logging.getLogger(__name__)
REMEMBERED_IDS = 500_000
STAGE = "agents.intake"
# Refusals not dead-lettered: a caller not authenticated (anyone on the network could fill the topic), a
# route that does not exist, and the broker away (the dead letter could not be written either).
UNKEPT_STATUSES = frozenset({401, 404, 503})


@dataclass(frozen=True)
class Posted:
    """A request as it came: its route, who sent it (a channel, the WMS, customer service), its body."""

    path: str
    caller: str
    body: bytes
DELIVERY_TIMEOUT_S = 25.0  # the longest the broker's acknowledgement of one event is waited for
WMS_KINDS = {"ack": "wms_ack", "shipment": "shipment", "delivery": "delivery", "return": "return_received"}
SERVICE_KINDS = {"refund_review": "refund_review"}
AUTH_REASONS = {
    platforms.AuthFailure.MALFORMED: Reason.MALFORMED_CALLBACK,
    platforms.AuthFailure.MISSING_SIGNATURE: Reason.SIGNATURE_MISSING,
    platforms.AuthFailure.UNKNOWN_APP_KEY: Reason.APP_KEY_MISMATCH,
    platforms.AuthFailure.BAD_SIGNATURE: Reason.SIGNATURE_MISMATCH,
    platforms.AuthFailure.STALE_TIMESTAMP: Reason.STALE_SIGNATURE,
}
REFUSALS = {
    400: "The body is not a JSON object:",
    401: "Not signed as the channel signs, or no secret configured for it (`no_secret`, `signature_missing`, "
    "`malformed_callback`, `app_key_mismatch`, `signature_mismatch`, `stale_signature`); nothing written.",
    409: "The same id was accepted before with different content; the first stands:",
    422: "A field is missing, of the wrong type or out of bounds (`field` is its JSON path), or the push was "
    "signed as another kind of message than the route's (`event_mismatch`).",
    503: "The broker did not acknowledge the write; retry:",
}
WMS_REFUSALS = {**REFUSALS, 401: "No or a wrong `Authorization: Bearer <token>` (`signature_missing`, "
                "`signature_mismatch`), or no token configured (`no_secret`); nothing written."}  # fmt: skip
SCHEMES = {
    platforms.CallbackScheme.TOP_QUERY: {"type": "apiKey", "in": "query", "name": "sign",
                                         "description": "TOP md5: query app_key/topic (pdd: client_id/type), "
                                         "timestamp, sign = upper(md5(secret + sorted params + body + secret))"},
    platforms.CallbackScheme.DOUDIAN_PUSH: {"type": "apiKey", "in": "header", "name": "event-sign",
                                            "description": "Doudian push: app-id header, event-sign = "
                                            "md5(app_key + body + secret); the body is [{tag, msg_id, data}]"},
    platforms.CallbackScheme.KWAI_QUERY: {"type": "apiKey", "in": "query", "name": "sign",
                                          "description": "Kwaixiaodian: appkey, event, timestamp (ms), "
                                          "signMethod=HMAC_SHA256, sign = base64 hmac-sha256 over sorted k=v"},
    platforms.CallbackScheme.OWN_HEADERS: {"type": "apiKey", "in": "header", "name": platforms.OWN_SIGNATURE_HEADER,
                                           "description": f"{platforms.OWN_KEY_HEADER}, "
                                           f"{platforms.OWN_TIMESTAMP_HEADER} (ms), signature = "
                                           f"hex hmac-sha256(secret, timestamp + '.' + {platforms.OWN_EVENT_HEADER} "
                                           "+ '.' + body)"},
}  # fmt: skip


def _refusal(err: IntakeError) -> web.Response:
    return web.json_response(err.body(), status=err.status, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


@dataclass(frozen=True, slots=True)
class _Accepted:
    """Where an accepted request was written, and a digest of what it said. Half a million are kept: as slots
    rather than the answer's dict each costs ~460 bytes instead of ~650 (~220 MiB rather than ~310 at the limit)."""

    event_id: str
    event_type: str
    key: str
    partition: int
    offset: int
    digest: bytes

    def answer(self) -> dict[str, Any]:
        subject = {"sku": self.key} if self.event_type == "StockAdjusted" else {"order_id": self.key}
        return {"event_id": self.event_id, "event_type": self.event_type, **subject, "partition": self.partition,
                "offset": self.offset}  # fmt: skip


class Intake:
    def __init__(self, settings: Settings, producer: EventProducer | None = None) -> None:
        self.settings = settings
        self.channels = load_channels(settings.channels_file, tuple(settings.channels))
        for channel, mapping in self.channels.items():
            known = channel in platforms.CHANNELS
            never = [kind for kind in mapping.fields if known and not platforms.push_events(channel, kind)]
            if never:
                # Such a route could accept no signed push at all: said at start-up, not by refusing each one.
                tables = ", ".join(f"[{channel}.{kind}]" for kind in never)
                raise ValueError(f"{settings.channels_file or 'the channel mapping'}: {channel} pushes no "
                                 f"{' or '.join(never)} notification; remove {tables}")  # fmt: skip
        self.wms = wms_map(self.channels)
        self.service = service_map(self.channels)
        self.catalogue = Catalogue.load(settings.catalogue_file)
        self.limits = OrderLimits.from_settings(settings)
        # A stock document older than the pool remembers adjustment ids is refused there (adjustment_too_old):
        # answered here instead, so the WMS is not told a document it must send otherwise was taken.
        self.stock_limits = replace(self.limits, max_event_age_ms=min(self.limits.max_event_age_ms,
                                                                      int(settings.tombstone_ttl_s * 1000)))
        self.warehouses = tuple(load_warehouses(settings.warehouses_file))
        self.secrets = SecretsFile(settings.intake_secrets_file, settings.channels)
        # librdkafka gives up on a message before the caller is answered 503: a message that answer said was
        # not written can then never turn up later (its retry, perhaps changed, is the one that counts).
        delivery = {"message.timeout.ms": int(DELIVERY_TIMEOUT_S * 1000)}
        self.producer = producer or EventProducer(settings, None, **delivery)
        self._owns_producer = producer is None
        self.clock = Clock()
        self.accepted: OrderedDict[str, _Accepted] = OrderedDict()  # popping a dict's oldest key is O(size)
        self.inflight: dict[str, asyncio.Future[None]] = {}
        self.counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="intake-delivery", daemon=True)
        self.registry = metrics.new_registry(metrics.StatsCollector(self._refusal_families))
        self.requests = Counter(metrics.metric_name("intake_requests"), "HTTP requests answered, per route and status",
                                ["route", "status"], registry=self.registry)  # fmt: skip
        self.produce_seconds = metrics.histogram("intake_produce_seconds", "From produce to the broker's ack",
                                                 registry=self.registry)  # fmt: skip
        if settings.intake_allow_unsigned:
            unsigned = [c for c, signed in self.secrets.current().signed(self.channels).items() if not signed]
            if unsigned:
                log.warning("intake: STOCKFLOW_INTAKE_ALLOW_UNSIGNED is on: accepting %s unsigned", unsigned)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    # ---- routes ---------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        """Every route the intake serves, documented (the router and /openapi.json are built from it)."""
        out = []
        for channel, mapping in self.channels.items():
            for kind in mapping.fields:
                out.append(Route(
                    "POST", f"/v1/channels/{channel}/{kind}", self._channel_handler(mapping, kind),
                    f"{mapping.display_name}: {kind} notification", "channels",
                    body=mapping.parser(kind, self.limits).model, refusals=REFUSALS,
                    security=channel if channel in platforms.CHANNELS else None,
                ))  # fmt: skip
        for route_kind, kind in WMS_KINDS.items():
            out.append(Route("POST", f"/v1/wms/{route_kind}", self._token_handler(WMS, self.wms, kind),
                             f"WMS: {kind.replace('_', ' ')}", "wms", body=self.wms.parser(kind, self.limits).model,
                             refusals=WMS_REFUSALS, security=WMS))  # fmt: skip
        for route_kind, kind in SERVICE_KINDS.items():
            out.append(Route("POST", f"/v1/service/{route_kind}", self._token_handler(SERVICE, self.service, kind),
                             "Customer service: a refund approved or rejected", "service",
                             body=self.service.parser(kind, self.limits).model, refusals=WMS_REFUSALS,
                             security=SERVICE))  # fmt: skip
        out.append(Route("POST", "/v1/wms/stock", self.wms_stock, "WMS/ERP: a stock receipt, count or correction",
                         "wms", body=STOCK_PARSER.model, refusals=WMS_REFUSALS, security=WMS,
                         description="Written to `stock.adjustments` as `StockAdjusted`, keyed by SKU; the "
                         "document id is the adjustment id, so a document sent twice moves stock once."))  # fmt: skip
        unknown = {404: "No such channel or notification kind:"}
        out += [
            Route("POST", "/v1/channels/{channel}/{kind}", self.unknown_route, "Any other channel or kind: refused",
                  "channels", refusals=unknown, parameters=(_path("channel"), _path("kind"))),
            Route("POST", "/v1/wms/{kind}", self.unknown_route, "Any other WMS kind: refused", "wms",
                  refusals=unknown, parameters=(_path("kind"),)),
            Route("POST", "/v1/service/{kind}", self.unknown_route, "Any other customer-service kind: refused",
                  "service", refusals=unknown, parameters=(_path("kind"),)),
            Route("GET", "/healthz", self.health, "Liveness, configured channels and counts", "ops", answer=Health),
            Route("GET", "/readyz", self.readyz, "Readiness: the broker answers a metadata request", "ops",
                  answer=None, refusals={503: "the broker does not answer"}),
            Route("GET", "/metrics", self.prometheus, "Prometheus metrics", "ops", answer=None,
                  description="The Prometheus text exposition format (`text/plain; version=0.0.4`), not JSON."),
            Route("GET", "/openapi.json", self.openapi, "This document (OpenAPI 3.1)", "ops", answer=None),
        ]  # fmt: skip
        return out

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20, middlewares=[self._count_requests])
        # Concrete routes first: the templated ones only answer what nothing else does.
        for route in self.routes():
            app.router.add_route(route.method, route.path, route.handler)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._cleanup)
        return app

    def openapi_document(self) -> dict[str, Any]:
        schemes: dict[str, dict[str, Any]] = {
            WMS: {"type": "http", "scheme": "bearer", "description": "the WMS token (`[wms] token`)"},
            SERVICE: {
                "type": "http",
                "scheme": "bearer",
                "description": "customer service's token (`[service] token`)",
            },
        }
        for channel in self.channels:
            if channel in platforms.CHANNELS:
                schemes[channel] = SCHEMES[platforms.platform(channel).callback_scheme]
        try:
            release = version("stockflow")
        except PackageNotFoundError:
            release = "0"
        return document(self.routes(), schemes, release)

    async def _start(self, _: web.Application) -> None:
        self._poller.start()

    async def _cleanup(self, _: web.Application) -> None:
        self._stop.set()
        await asyncio.to_thread(self.producer.flush, 10.0)
        if self._owns_producer:
            # Its own client goes with it: left to the collector, it would keep reconnecting to a
            # broker that went away, for as long as the process embedding the intake lives.
            if self._poller.is_alive():
                await asyncio.to_thread(self._poller.join, 1.0)
            self.producer.close()

    async def health(self, _: web.Request) -> web.Response:
        signed = self.secrets.current().signed(self.channels)
        return web.json_response({"ok": True, "channels": sorted(self.channels), "signed": signed,
                                  "counts": self.counts})  # fmt: skip

    async def readyz(self, _: web.Request) -> web.Response:
        reachable = await asyncio.to_thread(self.producer.reachable, 2.0)
        return web.json_response({"ready": reachable, "broker_reachable": reachable}, status=200 if reachable else 503)

    async def prometheus(self, _: web.Request) -> web.Response:
        return web.Response(body=metrics.render(self.registry), headers={"Content-Type": metrics.CONTENT_TYPE})

    def _refusal_families(self) -> Iterator[Metric]:
        refused = metrics.counter("intake_refusals", "Requests refused, per reason code", ["reason"])
        accepted = metrics.counter("intake_accepted", "Notifications written, per event type", ["event_type"])
        for what, n in sorted(self.counts.items()):
            if what.startswith("refused:"):
                refused.add_metric([what.removeprefix("refused:")], n)
            elif what != "duplicate":
                accepted.add_metric([what], n)
        yield refused
        yield accepted

    @web.middleware
    async def _count_requests(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # Labelled by the route's template, never the raw path: a path per order id would explode the series.
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "unmatched"
        try:
            response = await handler(request)
        except (web.HTTPRequestEntityTooLarge, web.HTTPMethodNotAllowed) as exc:
            # aiohttp's own answers are plain text: given the refusal contract's body like every other.
            reason = Reason.BODY_TOO_LARGE if exc.status == web.HTTPRequestEntityTooLarge.status_code else (
                Reason.METHOD_NOT_ALLOWED)  # fmt: skip
            self._count(f"refused:{reason}")
            response = _refusal(IntakeError(reason, exc.text or exc.reason, status=exc.status))
        except web.HTTPException as exc:
            self.requests.labels(route, str(exc.status)).inc()
            raise
        except Exception:
            self.requests.labels(route, "500").inc()  # a bug: counted where alerts on 5xx look
            raise
        self.requests.labels(route, str(response.status)).inc()
        return response

    async def openapi(self, _: web.Request) -> web.Response:
        return web.json_response(self.openapi_document(), dumps=_dumps)

    async def unknown_route(self, request: web.Request) -> web.Response:
        channel = request.match_info.get("channel")
        if channel is not None and channel not in self.channels:
            err = IntakeError(Reason.UNKNOWN_CHANNEL, f"{channel!r} is not a configured channel", status=404)
        elif channel is not None:
            kinds = sorted(self.channels[channel].fields)
            err = IntakeError(Reason.UNKNOWN_EVENT_KIND, f"{channel} sends {kinds}", status=404)
        else:
            err = IntakeError(Reason.UNKNOWN_EVENT_KIND, f"the WMS sends {[*WMS_KINDS, 'stock']}, customer "
                              f"service {[*SERVICE_KINDS]}", status=404)  # fmt: skip
        return self._refuse(err)

    # ---- handlers -------------------------------------------------------------------------------

    def _channel_handler(self, mapping: ChannelMap, kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        order_id_path = mapping.fields[kind]["channel_order_id"]

        async def handle(request: web.Request) -> web.Response:
            raw = await request.read()
            posted = Posted(request.path, mapping.channel, raw)
            try:
                query = {k: request.query[k] for k in request.query}
                body = self.authenticate_channel(mapping.channel, kind, query, request.headers, raw)
                mapped = mapping.build(kind, body, self.catalogue, self.limits, self.clock.now_ms())
            except IntakeError as err:
                return self._refuse(err, posted)
            return await self._accept(mapped, order_id_path, posted)

        return handle

    def _token_handler(
        self, caller: str, mapping: ChannelMap, kind: str
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            raw = await request.read()
            posted = Posted(request.path, caller, raw)
            try:
                self.authenticate_token(caller, request.headers)
                mapped = mapping.build(kind, raw, self.catalogue, self.limits, self.clock.now_ms())
                warehouse = mapped.record.get("warehouse_id")
                if warehouse is not None and warehouse not in self.warehouses:
                    raise IntakeError(Reason.UNKNOWN_WAREHOUSE, f"warehouse {warehouse!r} is not one of "
                                      f"{sorted(self.warehouses)}", "warehouse_id")  # fmt: skip
            except IntakeError as err:
                return self._refuse(err, posted)
            return await self._accept(mapped, "channel_order_id", posted)

        return handle

    async def wms_stock(self, request: web.Request) -> web.Response:
        raw = await request.read()
        posted = Posted(request.path, WMS, raw)
        try:
            self.authenticate_token(WMS, request.headers)
            mapped = build_adjustment(raw, self.warehouses, self.catalogue, self.stock_limits, self.clock.now_ms())
        except IntakeError as err:
            return self._refuse(err, posted)
        return await self._accept(mapped, "document_id", posted)

    # ---- who may post ---------------------------------------------------------------------------

    def authenticate_channel(self, channel: str, kind: str, query: Mapping[str, str], headers: Mapping[str, str],
                             raw: bytes) -> bytes:  # fmt: skip
        """The notification's JSON if the request (its query, headers and body ``raw``) is signed by
        ``channel``'s secret as a ``kind`` notification; ``IntakeError`` if not (401 not signed so, 422
        ``event_mismatch`` signed as another kind). A channel without a secret passes unsigned only in
        development."""
        secrets = self.secrets.current()
        creds = secrets.channels.get(channel)
        if creds is None:
            if self.settings.intake_allow_unsigned:
                # In development a Doudian push may come in its envelope, as it would signed, or bare.
                envelope = platforms.platform(channel).callback_scheme is platforms.CallbackScheme.DOUDIAN_PUSH
                return _one_doudian_message(raw) if envelope and raw.lstrip().startswith(b"[") else raw
            raise IntakeError(Reason.NO_SECRET, f"no callback secret is configured for {channel}", status=401)
        now_ms = self.clock.now_ms()
        verdicts = (platforms.verify_callback(channel, secret, query, headers, raw, now_ms, app_key=creds.app_key)
                    for secret in secrets.callback_secrets(channel))  # fmt: skip
        first = next(verdicts)
        # The current secret's verdict is the one told when neither passes: the previous one is a courtesy.
        verdict = first if first.ok else next((v for v in verdicts if v.ok), first)
        if not verdict.ok:
            reason = AUTH_REASONS.get(verdict.failure or platforms.AuthFailure.BAD_SIGNATURE, Reason.SIGNATURE_MISMATCH)
            raise IntakeError(reason, verdict.detail or str(reason), status=401)
        events = platforms.push_events(channel, kind)
        if verdict.operation not in events:
            raise IntakeError(Reason.EVENT_MISMATCH, f"signed as {verdict.operation!r} "
                              f"({platforms.push_event_field(channel)}), which is no {kind} notification of "
                              f"{channel} ({' or '.join(events)}); posted to the wrong route?")  # fmt: skip
        if platforms.platform(channel).callback_scheme is platforms.CallbackScheme.DOUDIAN_PUSH:
            return _one_doudian_message(raw)
        return raw

    def authenticate_token(self, caller: str, headers: Mapping[str, str]) -> None:
        """Nothing if the headers carry ``caller``'s token (``wms``, ``service``; or none is configured, in
        development); ``IntakeError`` (401) if not."""
        token = self.secrets.current().token(caller)
        if token is None:
            if self.settings.intake_allow_unsigned:
                return
            raise IntakeError(Reason.NO_SECRET, f"no {caller} token is configured", status=401)
        scheme, _, given = headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise IntakeError(Reason.SIGNATURE_MISSING, f"send Authorization: Bearer <the {caller} token>", status=401)
        if not platforms.same_secret(given.strip(), token):
            raise IntakeError(Reason.SIGNATURE_MISMATCH, f"the {caller} token does not match", status=401)

    # ---- writing once ---------------------------------------------------------------------------

    def _refuse(self, err: IntakeError, posted: Posted | None = None) -> web.Response:
        self._count(f"refused:{err.reason}")
        if posted is not None and err.status not in UNKEPT_STATUSES:
            self._dead_letter(err, posted)
        return _refusal(err)

    def _dead_letter(self, err: IntakeError, posted: Posted) -> None:
        """Keep what an authenticated caller sent and intake refused, with the body as sent: the caller
        has its answer, but an order with a SKU the catalogue lacks (say) must not be gone once the
        marketplace stops retrying. Written without waiting: the answer does not depend on it."""
        detail = f"{err.field}: {err.detail}" if err.field else err.detail
        now = self.clock.now_ms()
        letter = refused_request(posted.path, posted.body, posted.caller, STAGE, err.reason, detail, now)

        def delivered(error: Any, _: Any) -> None:
            if error is not None:
                log.error("intake: the dead letter of a refused %s (%s) was not written: %s", posted.path,
                          err.reason, error)  # fmt: skip

        try:
            self.producer.send_with_callback(DEADLETTERS.name, letter["source_topic"], "DeadLetter", letter, delivered,
                                             wait=False)  # fmt: skip
        except QueueFull as exc:
            delivered(exc, None)

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    async def _accept(self, mapped: Mapped, id_field: str, posted: Posted) -> web.Response:
        identity = mapped.identity
        # A repeat arriving while the first is being written waits for its outcome.
        while (pending := self.inflight.get(identity)) is not None:
            await asyncio.wait([pending])
        known = self.accepted.get(identity)
        if known is not None:
            if known.digest == mapped.digest:
                self._count("duplicate")
                return web.json_response({"status": "duplicate", **known.answer()}, dumps=_dumps)
            return self._refuse(IntakeError(
                Reason.CONFLICTING_DUPLICATE,
                f"{known.event_id} was accepted before (partition {known.partition}, offset {known.offset}) "
                "with different content; the first stands and this is not applied",
                id_field, status=409,
            ), posted)  # fmt: skip
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.inflight[identity] = done
        try:
            where = await self._write(mapped)
        except Exception as exc:  # noqa: BLE001 - whatever kept it from the topic, the caller gets a 503 to retry on
            log.error("intake: writing %s failed: %r", mapped.record["event_id"], exc)
            return self._refuse(IntakeError(Reason.KAFKA_UNAVAILABLE, f"not written, retry later: {exc}", status=503))
        finally:
            del self.inflight[identity]
            done.set_result(None)
        accepted = self.accepted[identity] = _Accepted(mapped.record["event_id"], mapped.event_type, mapped.key,
                                                       where["partition"], where["offset"], mapped.digest)  # fmt: skip
        while len(self.accepted) > REMEMBERED_IDS:
            self.accepted.popitem(last=False)
        self._count(mapped.event_type)
        return web.json_response({"status": "accepted", **accepted.answer()}, dumps=_dumps)

    async def _write(self, mapped: Mapped) -> dict[str, Any]:
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

        # Never waits for room: with the broker away long enough to fill the queue, a caller is answered 503 at once
        # and every other route (the health checks too) still answers.
        self.producer.send_with_callback(mapped.topic, mapped.key, mapped.event_type, mapped.record, delivered,
                                         wait=False)  # fmt: skip
        with self.produce_seconds.time():
            return await asyncio.wait_for(done, timeout=DELIVERY_TIMEOUT_S + 5.0)


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _one_doudian_message(raw: bytes) -> bytes:
    """The ``data`` of a verified Doudian push of one message (a push of several is refused whole:
    answering for one and dropping the rest would lose them)."""
    try:
        messages = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # its signature check read it, more leniently (NaN, say)
        raise IntakeError(Reason.MALFORMED_JSON, f"the push is not strict JSON: {exc}", status=400) from exc
    if not isinstance(messages, list) or len(messages) != 1:
        count = len(messages) if isinstance(messages, list) else "no list of"
        raise IntakeError(Reason.NOT_AN_OBJECT, f"a push of {count} messages; send one per push", status=400)
    data = messages[0].get("data") if isinstance(messages[0], dict) else None
    if not isinstance(data, str):
        raise IntakeError(Reason.MISSING_FIELD, "the push's message has no data text", "data", status=400)
    return data.encode()


def serve(settings: Settings, service: Intake | None = None) -> None:
    """Run the intake service until interrupted."""
    app = (service or Intake(settings)).app()
    web.run_app(app, host=settings.intake_host, port=settings.intake_port, print=None)
