"""The marketplaces' open-platform dialects: how each signs a call, where its endpoints are, what it
answers, and what an answer means to a caller.

Pure: no I/O, no clock (every function takes ``now_ms``), no settings. The outbound connectors sign
with ``sign_request`` and judge answers with ``classify``; the local simulator verifies with
``verify_request`` and answers with ``error_answer`` / ``ok_answer``; the intake verifies pushes
with ``verify_callback``. Modelled on the public open-platform documentation of each marketplace
(the error codes are the platforms' where known, otherwise in their style); the schemes are pinned
by known-vector tests in ``tests/unit/channels/test_platforms.py``.

Request signing, per channel (``sorted kv`` is the parameters except ``sign`` sorted by name, each
name followed by its value, no separators; bodies are JSON with sorted keys and no spaces):

- **tmall** (Taobao TOP / Qimen style): query ``method, app_key, timestamp`` ("YYYY-MM-DD HH:MM:SS",
  GMT+8), ``format=json, v=2.0, sign_method`` (``md5`` or ``hmac``), ``session`` if authorised; the
  JSON body is POSTed. ``sign = HEX(md5(secret + sorted kv + body + secret))`` or, for ``hmac``,
  ``HEX(hmac_md5(secret, sorted kv + body))``, upper case. One gateway path, the API by ``method``.
- **jd** (JOS): query ``method, app_key, timestamp`` ("YYYY-MM-DD HH:MM:SS.mmm+0800"), ``v=2.0``,
  ``access_token`` if authorised; the body is the form field ``360buy_param_json`` (signed as a
  parameter). ``sign = HEX(md5(secret + sorted kv + secret))``, upper case.
- **pdd**: one JSON body carrying ``type`` (the API), ``client_id``, ``timestamp`` (unix seconds),
  ``data_type=JSON, version=V1``, ``access_token`` if authorised, the business fields and ``sign``;
  nested values are signed as their JSON text. ``sign = HEX(md5(secret + sorted kv + secret))``, upper.
- **douyin** (Doudian shop open platform): query ``app_key, method, timestamp`` ("YYYY-MM-DD
  HH:MM:SS", GMT+8), ``v=2, sign_method=hmac-sha256`` (or ``md5``), ``access_token`` (not signed);
  the body is ``param_json``; the path is the method with dots as slashes.
  ``sign = hex(hmac_sha256(secret, secret + "app_key"+k + "method"+m + "param_json"+p + "timestamp"+t
  + "v"+"2" + secret))``, lower case (``md5`` of the same string for ``sign_method=md5``).
- **kuaishou** (Kwaixiaodian): query ``appkey, method, timestamp`` (unix ms), ``version=1,
  signMethod=HMAC_SHA256``, ``access_token`` if authorised; the body is the form field ``param``.
  ``sign = base64(hmac_sha256(secret, "k=v&k=v..." over every parameter but sign, sorted))``.
- **own** (the shop's own site): headers ``X-Stockflow-Key``, ``X-Stockflow-Timestamp`` (unix ms),
  ``X-Stockflow-Signature = hex(hmac_sha256(secret, f"{timestamp}.{body}"))``; REST paths (the path names
  the endpoint, and a body posted to the wrong one does not parse as its request).

Callbacks (marketplace -> shop: settlements, order pushes), per channel:

- **tmall**: query ``app_key, topic`` (the event), ``timestamp, sign_method=md5, sign``; JSON body;
  signed like a TOP request (md5 over sorted query + body).
- **jd**: query ``app_key, topic, timestamp`` (JOS format), ``sign``; JSON body; TOP-style md5.
- **pdd**: query ``client_id, type`` (the event), ``timestamp`` (seconds), ``sign``; JSON body; TOP-style md5.
- **douyin**: the Doudian push: headers ``app-id``, ``event-sign = hex(md5(app_key + body + secret))``,
  ``sign-method: md5``; the body is a JSON list of ``{"tag", "msg_id", "data"}`` with ``data`` the
  event's JSON text. It signs no timestamp, so no window applies: a push sent again is a repeat of its event's
  own id (the channel's order id and the kind), which intake answers ``duplicate`` and every consumer de-duplicates.
- **kuaishou**: query ``appkey, event, timestamp`` (ms), ``signMethod=HMAC_SHA256, sign``; JSON body,
  signed as the parameter ``param`` with the Kwaixiaodian request scheme.
- **own**: the own-site request headers plus ``X-Stockflow-Event``, the event, which the signature covers:
  ``hex(hmac_sha256(secret, f"{timestamp}.{event}.{body}"))``. A push's body alone does not say what
  happened (a payment and a cancel both carry an order id), so a signature over the body alone would
  let a captured payment be replayed, within the window, with its event header rewritten to a cancel.

What each push is, per kind of notification, is its event name (``PUSH_EVENTS``): a receiver holds a push
to the name it was signed with, so a signed payment posted where cancels go is still refused as a payment.

Endpoints: ``stock`` (one SKU's sellable quantity), ``refund`` (agree a refund) and ``stock_batch``,
the stock endpoint's many-SKU API: one call carries up to ``StockBatch.max_items`` figures, each with
its own version, and the answer says per figure whether it was applied or was stale (a newer version
is there). Where the many-SKU API and its limit come from (``StockBatch.source``): tmall
``tmall.item.quantity.update`` takes a ``sku_quantities`` list of at most 20 (Taobao's
``taobao.skus.quantity.update`` also caps at 20); douyin ``sku.syncStockBatch`` takes a
``sku_sync_list``; jd, pdd and kuaishou are modelled in their platforms' style (their batch API names
and limits are not confirmed here); own is ours. The platforms scope a batch to one item (product)
and carry no version; the simulator's version per figure is what makes a replayed or reordered push
harmless, as for the one-SKU call (its ``honors_versions`` off, it applies them as the platforms do; the
connector then sends a figure once more after a call whose answer was lost: ``push_stock``).

Answers: tmall, jd, pdd, douyin and kuaishou answer HTTP 200 with an error envelope for a refused
call (gateway faults come as 5xx); own answers with the HTTP status that fits. ``classify`` reads
both and says what a caller does next: done (``ok``, ``already_applied``, ``stale``), try again
(``retriable``), fix the key (``credential``), or give up on this request (``fatal``). A stock batch
answered ok carries a result per figure (``Outcome.items``, read by ``item_outcomes``): a batch with
stale figures is an ok call whose stale figures are done, like a stale one-SKU call.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

from streams.errors import StockflowError

CHANNELS: tuple[str, ...] = ("tmall", "jd", "douyin", "pdd", "kuaishou", "own")
Endpoint = Literal["stock", "refund", "stock_batch"]
# What a connector does, by which its status and failed queues are kept: a figure pushed through
# ``stock_batch`` counts as ``stock`` (``purpose``), and is parked as a ``stock`` request of its own.
ENDPOINTS: tuple[Endpoint, ...] = ("stock", "refund")
STOCK_BATCH: Endpoint = "stock_batch"
APIS: tuple[Endpoint, ...] = (*ENDPOINTS, STOCK_BATCH)  # every API a platform serves
DEFAULT_WINDOW_MS = 300_000
CHINA = timezone(timedelta(hours=8))
Json = dict[str, Any]

OWN_KEY_HEADER = "X-Stockflow-Key"
OWN_TIMESTAMP_HEADER = "X-Stockflow-Timestamp"
OWN_SIGNATURE_HEADER = "X-Stockflow-Signature"
OWN_EVENT_HEADER = "X-Stockflow-Event"
JSON_TYPE = "application/json;charset=utf-8"
FORM_TYPE = "application/x-www-form-urlencoded;charset=utf-8"


class UnknownChannel(StockflowError, ValueError):
    """A channel name none of the dialects knows."""


class BodyError(StockflowError, ValueError):
    """A request or callback body that does not carry what its endpoint needs."""


# --- what a platform is ------------------------------------------------------------------------


class SignScheme(StrEnum):
    TOP = "top"  # system params in the query, JSON body appended to the signed string (md5 / hmac-md5)
    JOS = "jos"  # params + 360buy_param_json form field, md5
    PDD = "pdd"  # everything in one JSON body, md5
    DOUDIAN = "doudian"  # fixed-order string wrapped in the secret, hmac-sha256 or md5
    KWAI = "kwai"  # k=v&k=v, base64 hmac-sha256
    OWN = "own"  # headers, hex hmac-sha256 over "timestamp.body"


class CallbackScheme(StrEnum):
    TOP_QUERY = "top_query"  # query params + JSON body, TOP md5 (tmall, jd, pdd with their param names)
    DOUDIAN_PUSH = "doudian_push"  # app-id / event-sign headers, md5(app_key + body + secret)
    KWAI_QUERY = "kwai_query"  # query params, body signed as param=..., base64 hmac-sha256
    OWN_HEADERS = "own_headers"


class TimestampFormat(StrEnum):
    GMT8_SECONDS = "gmt8_seconds"  # 2026-11-11 14:00:00
    GMT8_MILLIS = "gmt8_millis"  # 2026-11-11 14:00:00.000+0800
    UNIX_SECONDS = "unix_seconds"
    UNIX_MILLIS = "unix_millis"

    def render(self, ms: int) -> str:
        if self is TimestampFormat.UNIX_MILLIS:
            return str(ms)
        if self is TimestampFormat.UNIX_SECONDS:
            return str(ms // 1000)
        moment = datetime.fromtimestamp(ms / 1000, tz=CHINA)
        if self is TimestampFormat.GMT8_SECONDS:
            return moment.strftime("%Y-%m-%d %H:%M:%S")
        return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{ms % 1000:03d}+0800"

    def parse(self, text: str) -> int | None:
        """Epoch ms of a timestamp in this format; None if it is not one."""
        try:
            if self is TimestampFormat.UNIX_MILLIS:
                return int(text) if text.isdigit() else None
            if self is TimestampFormat.UNIX_SECONDS:
                return int(text) * 1000 if text.isdigit() else None
            if self is TimestampFormat.GMT8_SECONDS:
                moment = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA)
            else:
                moment = datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f%z")
        except ValueError:
            return None
        return round(moment.timestamp() * 1000)


class ErrorStyle(StrEnum):
    TOP = "top"  # {"error_response": {"code": 7, "msg", "sub_code", "sub_msg"}}
    JOS = "jos"  # {"error_response": {"code": "19", "zh_desc", "en_desc"}}
    PDD = "pdd"  # {"error_response": {"error_code": 70031, "error_msg", "sub_code", "sub_msg"}}
    DOUDIAN = "doudian"  # {"code": 30002, "msg", "sub_code", "sub_msg", "data": {}}; success code 10000
    KWAI = "kwai"  # {"result": 24, "error_msg", "code"}; success result 1
    OWN = "own"  # {"error": {"code": "invalid_api_key", "message"}} with a fitting HTTP status


class ErrorKind(StrEnum):
    """What a platform refused a call for: the answers ``error_answer`` builds and ``classify`` reads."""

    RATE_LIMITED = "rate_limited"
    INVALID_API_KEY = "invalid_api_key"
    EXPIRED_CREDENTIALS = "expired_credentials"
    BAD_SIGNATURE = "bad_signature"
    STALE_TIMESTAMP = "stale_timestamp"
    SERVER_ERROR = "server_error"
    ALREADY_APPLIED = "already_applied"
    STALE_VERSION = "stale_version"
    BAD_REQUEST = "bad_request"


class OutcomeKind(StrEnum):
    """What the caller does with an answer."""

    OK = "ok"  # applied
    ALREADY_APPLIED = "already_applied"  # applied before (an idempotent replay): done, never a second effect
    STALE = "stale"  # a newer figure is already there: done, nothing to send
    RETRIABLE = "retriable"  # rate limit, timeout, 5xx: the same request again, later
    CREDENTIAL = "credential"  # the key is wrong, rotated or expired: park until an operator updates it
    FATAL = "fatal"  # the request itself is wrong: dead-letter it


OUTCOME_OF: Mapping[ErrorKind, OutcomeKind] = MappingProxyType(
    {
        ErrorKind.RATE_LIMITED: OutcomeKind.RETRIABLE,
        ErrorKind.INVALID_API_KEY: OutcomeKind.CREDENTIAL,
        ErrorKind.EXPIRED_CREDENTIALS: OutcomeKind.CREDENTIAL,
        ErrorKind.BAD_SIGNATURE: OutcomeKind.CREDENTIAL,
        # Signed too long ago (a queue, a slow retry): a fresh signature on the next attempt fixes it.
        ErrorKind.STALE_TIMESTAMP: OutcomeKind.RETRIABLE,
        ErrorKind.SERVER_ERROR: OutcomeKind.RETRIABLE,
        ErrorKind.ALREADY_APPLIED: OutcomeKind.ALREADY_APPLIED,
        ErrorKind.STALE_VERSION: OutcomeKind.STALE,
        ErrorKind.BAD_REQUEST: OutcomeKind.FATAL,
    }
)


@dataclass(frozen=True)
class ErrorSpec:
    """One error answer of a platform: HTTP status, the platform's code and message."""

    http_status: int
    code: int | str
    message: str
    sub_code: str = ""
    sub_message: str = ""


@dataclass(frozen=True)
class Fields:
    """The platform's business field names for the two endpoints and the settlement push."""

    sku: str
    quantity: str
    version: str
    refund_id: str
    amount: str
    amount_unit: Literal["yuan", "fen"]
    order_id: str  # the order a refund belongs to (optional in a refund body)
    stock_extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    refund_extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class StockBatch:
    """A platform's many-SKU stock update (``stock_batch``).

    The request carries ``extra`` and the list ``items`` of at most ``max_items`` figures, each in the
    one-SKU update's field names (``Fields.sku``, ``quantity``, ``version``); the success answer lists one
    result per figure under ``results``: its SKU, quantity and version, applied or refused in the
    platform's answer style. ``source`` says where the API and its limit come from.
    """

    max_items: int
    items: str
    results: str
    source: str
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Platform:
    """One marketplace's open-platform dialect."""

    channel: str
    title: str
    production_url: str  # for reference; connectors take their base URL from configuration
    sign_scheme: SignScheme
    callback_scheme: CallbackScheme
    timestamp_format: TimestampFormat
    error_style: ErrorStyle
    methods: Mapping[Endpoint, str]  # the platform's API name for each endpoint
    paths: Mapping[Endpoint, str]  # the HTTP path under the base URL
    key_param: str  # where the app key travels (a query/body parameter, or a header for own)
    errors: Mapping[ErrorKind, ErrorSpec]
    fields: Fields
    stock_batch: StockBatch
    default_qps: float  # per-app rate limit the simulator enforces unless configured otherwise
    window_ms: int = DEFAULT_WINDOW_MS  # how far a request's timestamp may be from the server's clock
    sign_methods: tuple[str, ...] = ()  # accepted values of the sign-method parameter, the default first

    def endpoint_of(self, operation: str) -> Endpoint | None:
        for endpoint, name in self.methods.items():
            if name == operation:
                return endpoint
        return None


def _errors(specs: dict[ErrorKind, ErrorSpec]) -> Mapping[ErrorKind, ErrorSpec]:
    missing = set(ErrorKind) - set(specs)
    if missing:  # a platform without an answer for a kind would break error_answer at run time
        raise AssertionError(f"error answers missing: {sorted(missing)}")
    return MappingProxyType(specs)


def _gateway(path: str) -> Mapping[Endpoint, str]:
    return MappingProxyType(dict.fromkeys(APIS, path))


def _by_method(methods: Mapping[Endpoint, str]) -> Mapping[Endpoint, str]:
    return MappingProxyType({endpoint: "/" + name.replace(".", "/") for endpoint, name in methods.items()})


_TMALL_METHODS: Mapping[Endpoint, str] = MappingProxyType(
    {"stock": "taobao.item.quantity.update", "refund": "taobao.rp.refunds.agree",
     "stock_batch": "tmall.item.quantity.update"}
)  # fmt: skip
_DOUYIN_METHODS: Mapping[Endpoint, str] = MappingProxyType(
    {"stock": "sku.syncStock", "refund": "afterSale.operate", "stock_batch": "sku.syncStockBatch"}
)
_KWAI_METHODS: Mapping[Endpoint, str] = MappingProxyType(
    {"stock": "open.item.sku.stock.update", "refund": "open.seller.order.refund.approve",
     "stock_batch": "open.item.sku.stock.batch.update"}
)  # fmt: skip
_OWN_METHODS: Mapping[Endpoint, str] = MappingProxyType(
    {"stock": "stock.update", "refund": "refund.agree", "stock_batch": "stock.batch"}
)
MODELLED = "modelled in the platform's style: its batch stock API and limit are not confirmed here"
_E = ErrorKind

# fmt: off
PLATFORMS: Mapping[str, Platform] = MappingProxyType(
    {
        "tmall": Platform(
            channel="tmall",
            title="Tmall / Taobao (TOP)",
            production_url="https://gw.api.taobao.com",
            sign_scheme=SignScheme.TOP,
            callback_scheme=CallbackScheme.TOP_QUERY,
            timestamp_format=TimestampFormat.GMT8_SECONDS,
            error_style=ErrorStyle.TOP,
            methods=_TMALL_METHODS,
            paths=_gateway("/router/rest"),
            key_param="app_key",
            errors=_errors(
                {
                    _E.RATE_LIMITED: ErrorSpec(200, 7, "App Call Limited", "accesscontrol.limited-by-app-access-count",
                                              "This ban will last for 1 more seconds"),
                    _E.INVALID_API_KEY: ErrorSpec(200, 29, "Invalid API Key", "isv.appkey-not-exists",
                                                 "Invalid API Key: unknown app key or its secret was reset"),
                    _E.EXPIRED_CREDENTIALS: ErrorSpec(200, 27, "Invalid session", "isv.session-expired",
                                                     "the app's authorisation has expired"),
                    _E.BAD_SIGNATURE: ErrorSpec(200, 25, "Invalid signature"),
                    _E.STALE_TIMESTAMP: ErrorSpec(200, 31, "Invalid timestamp", "isv.invalid-timestamp",
                                                 "timestamp too far from the server time"),
                    _E.SERVER_ERROR: ErrorSpec(503, 15, "Remote service error", "isp.remote-service-unavailable",
                                              "service temporarily unavailable"),
                    _E.ALREADY_APPLIED: ErrorSpec(200, 15, "Remote service error", "isv.refund-already-agreed",
                                                 "退款已同意，请勿重复操作"),
                    _E.STALE_VERSION: ErrorSpec(200, 15, "Remote service error", "isv.item-quantity-version-stale",
                                               "a newer quantity is already set"),
                    _E.BAD_REQUEST: ErrorSpec(200, 41, "Invalid arguments", "isv.invalid-parameter",
                                             "parameter error"),
                }
            ),
            fields=Fields(sku="outer_id", quantity="quantity", version="version", refund_id="refund_id",
                          amount="refund_fee", amount_unit="yuan", order_id="tid",
                          stock_extra=MappingProxyType({"type": 1})),
            stock_batch=StockBatch(20, "sku_quantities", "sku_results",
                                   "tmall.item.quantity.update: sku_quantities, at most 20 per call",
                                   MappingProxyType({"options": {"type": 1}})),
            default_qps=40.0,
            window_ms=600_000,  # TOP allows ten minutes of clock error
            sign_methods=("md5", "hmac"),
        ),
        "jd": Platform(
            channel="jd",
            title="JD (JOS)",
            production_url="https://api.jd.com",
            sign_scheme=SignScheme.JOS,
            callback_scheme=CallbackScheme.TOP_QUERY,
            timestamp_format=TimestampFormat.GMT8_MILLIS,
            error_style=ErrorStyle.JOS,
            methods=MappingProxyType(
                {"stock": "jingdong.stock.write.updateSkuStock", "refund": "jingdong.pop.afs.refundapply.agree",
                 "stock_batch": "jingdong.stock.write.batchUpdateSkuStock"}
            ),
            paths=_gateway("/routerjson"),
            key_param="app_key",
            errors=_errors(
                {
                    _E.RATE_LIMITED: ErrorSpec(200, "61", "调用次数超过限制", "", "API call limit exceeded"),
                    _E.INVALID_API_KEY: ErrorSpec(200, "19", "无效的app_key", "", "Invalid API Key"),
                    _E.EXPIRED_CREDENTIALS: ErrorSpec(200, "20", "access_token已过期", "", "access_token expired"),
                    _E.BAD_SIGNATURE: ErrorSpec(200, "14", "签名无效", "", "Invalid signature"),
                    _E.STALE_TIMESTAMP: ErrorSpec(200, "11", "时间戳无效", "", "Invalid timestamp"),
                    _E.SERVER_ERROR: ErrorSpec(503, "1", "服务暂不可用", "", "Service unavailable"),
                    _E.ALREADY_APPLIED: ErrorSpec(200, "10400011", "退款已审核，请勿重复操作", "",
                                                 "Refund already agreed"),
                    _E.STALE_VERSION: ErrorSpec(200, "10200009", "库存版本过旧", "", "Stock version is older"),
                    _E.BAD_REQUEST: ErrorSpec(200, "3", "参数错误", "", "Invalid parameter"),
                }
            ),
            fields=Fields(sku="skuId", quantity="stockNum", version="version", refund_id="refundId",
                          amount="refundAmount", amount_unit="yuan", order_id="orderId"),
            stock_batch=StockBatch(50, "skuStockList", "skuStockResults", MODELLED),
            default_qps=50.0,
        ),
        "douyin": Platform(
            channel="douyin",
            title="Douyin shop (Doudian)",
            production_url="https://openapi-fxg.jinritemai.com",
            sign_scheme=SignScheme.DOUDIAN,
            callback_scheme=CallbackScheme.DOUDIAN_PUSH,
            timestamp_format=TimestampFormat.GMT8_SECONDS,
            error_style=ErrorStyle.DOUDIAN,
            methods=_DOUYIN_METHODS,
            paths=_by_method(_DOUYIN_METHODS),
            key_param="app_key",
            errors=_errors(
                {
                    _E.RATE_LIMITED: ErrorSpec(200, 50003, "请求过于频繁", "isp.request-limited",
                                              "too many requests for this app"),
                    _E.INVALID_API_KEY: ErrorSpec(200, 30002, "Invalid API Key", "isv.app-key-invalid",
                                                 "app_key无效或密钥已重置"),
                    _E.EXPIRED_CREDENTIALS: ErrorSpec(200, 30005, "access_token已过期", "isv.access-token-expired",
                                                     "authorisation expired"),
                    _E.BAD_SIGNATURE: ErrorSpec(200, 30003, "签名校验失败", "isv.sign-invalid", "bad signature"),
                    _E.STALE_TIMESTAMP: ErrorSpec(200, 30004, "时间戳无效", "isv.timestamp-invalid",
                                                 "timestamp out of range"),
                    _E.SERVER_ERROR: ErrorSpec(503, 20000, "服务不可用", "isp.service-error", "service error"),
                    _E.ALREADY_APPLIED: ErrorSpec(200, 50002, "业务处理失败", "isv.aftersale-already-operated",
                                                 "售后单已处理，请勿重复操作"),
                    _E.STALE_VERSION: ErrorSpec(200, 50002, "业务处理失败", "isv.stock-version-stale",
                                               "库存版本过旧"),
                    _E.BAD_REQUEST: ErrorSpec(200, 40004, "参数错误", "isv.parameter-invalid", "invalid parameter"),
                }
            ),
            fields=Fields(sku="code", quantity="stock_num", version="version", refund_id="aftersale_id",
                          amount="refund_amount", amount_unit="fen", order_id="order_id",
                          stock_extra=MappingProxyType({"incremental": False}),
                          refund_extra=MappingProxyType({"type": 201})),
            stock_batch=StockBatch(50, "sku_sync_list", "results",
                                   "sku.syncStockBatch: sku_sync_list (the list's limit is modelled)",
                                   MappingProxyType({"incremental": False})),
            default_qps=20.0,
            sign_methods=("hmac-sha256", "md5"),
        ),
        "pdd": Platform(
            channel="pdd",
            title="Pinduoduo",
            production_url="https://gw-api.pinduoduo.com",
            sign_scheme=SignScheme.PDD,
            callback_scheme=CallbackScheme.TOP_QUERY,
            timestamp_format=TimestampFormat.UNIX_SECONDS,
            error_style=ErrorStyle.PDD,
            methods=MappingProxyType({"stock": "pdd.goods.quantity.update", "refund": "pdd.refund.agree",
                                      "stock_batch": "pdd.goods.sku.quantity.batch.update"}),
            paths=_gateway("/api/router"),
            key_param="client_id",
            errors=_errors(
                {
                    _E.RATE_LIMITED: ErrorSpec(200, 70031, "调用过于频繁，请调整调用频率"),
                    _E.INVALID_API_KEY: ErrorSpec(200, 10016, "Invalid API Key: client_id不存在或密钥已重置"),
                    _E.EXPIRED_CREDENTIALS: ErrorSpec(200, 10019, "access_token已过期"),
                    _E.BAD_SIGNATURE: ErrorSpec(200, 10017, "签名错误"),
                    _E.STALE_TIMESTAMP: ErrorSpec(200, 10018, "timestamp已过期"),
                    _E.SERVER_ERROR: ErrorSpec(503, 50000, "系统内部错误"),
                    _E.ALREADY_APPLIED: ErrorSpec(200, 52101, "售后单已同意退款，请勿重复操作"),
                    _E.STALE_VERSION: ErrorSpec(200, 52201, "库存版本过旧，未更新"),
                    _E.BAD_REQUEST: ErrorSpec(200, 10000, "参数错误"),
                }
            ),
            fields=Fields(sku="outer_id", quantity="quantity", version="stock_version", refund_id="after_sales_id",
                          amount="refund_amount", amount_unit="fen", order_id="order_sn",
                          stock_extra=MappingProxyType({"update_type": 1})),
            stock_batch=StockBatch(20, "sku_quantity_list", "sku_results", MODELLED,
                                   MappingProxyType({"update_type": 1})),
            default_qps=20.0,
        ),
        "kuaishou": Platform(
            channel="kuaishou",
            title="Kuaishou shop (Kwaixiaodian)",
            production_url="https://openapi.kwaixiaodian.com",
            sign_scheme=SignScheme.KWAI,
            callback_scheme=CallbackScheme.KWAI_QUERY,
            timestamp_format=TimestampFormat.UNIX_MILLIS,
            error_style=ErrorStyle.KWAI,
            methods=_KWAI_METHODS,
            paths=_by_method(_KWAI_METHODS),
            key_param="appkey",
            errors=_errors(
                {
                    _E.RATE_LIMITED: ErrorSpec(200, 28, "调用频率超限", "app.call.limited"),
                    _E.INVALID_API_KEY: ErrorSpec(200, 24, "Invalid API Key", "app.key.invalid"),
                    _E.EXPIRED_CREDENTIALS: ErrorSpec(200, 26, "access_token已过期", "token.expired"),
                    _E.BAD_SIGNATURE: ErrorSpec(200, 25, "签名错误", "sign.invalid"),
                    _E.STALE_TIMESTAMP: ErrorSpec(200, 27, "时间戳过期", "timestamp.invalid"),
                    _E.SERVER_ERROR: ErrorSpec(503, 500, "服务繁忙，请稍后再试", "service.unavailable"),
                    _E.ALREADY_APPLIED: ErrorSpec(200, 802, "退款单已同意，请勿重复操作", "refund.already.approved"),
                    _E.STALE_VERSION: ErrorSpec(200, 803, "库存版本过旧", "stock.version.stale"),
                    _E.BAD_REQUEST: ErrorSpec(200, 22, "参数错误", "param.invalid"),
                }
            ),
            fields=Fields(sku="skuNick", quantity="stock", version="version", refund_id="refundId",
                          amount="refundAmount", amount_unit="fen", order_id="oid"),
            stock_batch=StockBatch(20, "skuStockList", "skuStockResults", MODELLED),
            default_qps=20.0,
            sign_methods=("HMAC_SHA256",),
        ),
        "own": Platform(
            channel="own",
            title="Own web shop",
            production_url="http://127.0.0.1",
            sign_scheme=SignScheme.OWN,
            callback_scheme=CallbackScheme.OWN_HEADERS,
            timestamp_format=TimestampFormat.UNIX_MILLIS,
            error_style=ErrorStyle.OWN,
            methods=_OWN_METHODS,
            paths=MappingProxyType({"stock": "/v1/stock/update", "refund": "/v1/refunds/agree",
                                    "stock_batch": "/v1/stock/batch"}),
            key_param=OWN_KEY_HEADER,
            errors=_errors(
                {
                    _E.RATE_LIMITED: ErrorSpec(429, "rate_limited", "Too many requests for this API key"),
                    _E.INVALID_API_KEY: ErrorSpec(401, "invalid_api_key", "Invalid API Key"),
                    _E.EXPIRED_CREDENTIALS: ErrorSpec(401, "expired_credentials", "API key expired"),
                    _E.BAD_SIGNATURE: ErrorSpec(401, "bad_signature", "Signature does not match"),
                    _E.STALE_TIMESTAMP: ErrorSpec(401, "stale_timestamp", "Timestamp outside the allowed window"),
                    _E.SERVER_ERROR: ErrorSpec(503, "server_error", "Service unavailable"),
                    _E.ALREADY_APPLIED: ErrorSpec(409, "already_applied", "Refund already agreed"),
                    _E.STALE_VERSION: ErrorSpec(409, "stale_version", "A newer stock version is applied"),
                    _E.BAD_REQUEST: ErrorSpec(400, "bad_request", "Malformed request"),
                }
            ),
            fields=Fields(sku="sku", quantity="quantity", version="version", refund_id="refund_id",
                          amount="amount_fen", amount_unit="fen", order_id="order_id"),
            stock_batch=StockBatch(100, "items", "results", "the shop's own API"),
            default_qps=100.0,
        ),
    }
)
# fmt: on
assert tuple(PLATFORMS) == CHANNELS


def platform(channel: str) -> Platform:
    try:
        return PLATFORMS[channel]
    except KeyError:
        raise UnknownChannel(f"unknown channel {channel!r}; known: {', '.join(CHANNELS)}") from None


def purpose(endpoint: Endpoint) -> Endpoint:
    """What a call to ``endpoint`` is for: ``stock_batch`` pushes stock, like ``stock``."""
    return "stock" if endpoint == STOCK_BATCH else endpoint


# --- credentials and signed requests -----------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """An app's key and secret on one platform (and the shop's access token, where the platform wants one)."""

    app_key: str
    secret: str = field(repr=False)
    access_token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"Credentials(app_key={self.app_key!r}, secret={fingerprint(self.secret)})"

    __str__ = __repr__


def fingerprint(secret: str) -> str:
    """A short, stable tag for a secret: tells two secrets apart in logs and tables without showing either."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class SignedRequest:
    """What goes on the wire: ``body`` holds the exact bytes that were signed."""

    channel: str
    operation: str  # the platform's API name (request) or event name (callback)
    path: str  # under the platform's base URL; "" for a callback, which goes to the shop's URL
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    http_method: str = "POST"

    def url(self, base: str) -> str:
        """``base`` + path + query string, e.g. ``url("http://127.0.0.1:18090/jd")``."""
        url = base.rstrip("/") + self.path
        return f"{url}?{urlencode(dict(self.query))}" if self.query else url


def canonical_json(value: object) -> str:
    """JSON with sorted keys and no spaces: what every dialect signs (Doudian requires sorted keys)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)


def _param_text(value: object) -> str:
    """A parameter's value as the PDD scheme signs it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return canonical_json(value)


def _top_sign(secret: str, params: Mapping[str, str], body: str, sign_method: str) -> str:
    text = "".join(k + params[k] for k in sorted(params) if k != "sign") + body
    if sign_method == "hmac":
        return hmac.new(secret.encode(), text.encode(), hashlib.md5).hexdigest().upper()
    return hashlib.md5((secret + text + secret).encode()).hexdigest().upper()


def _doudian_sign(secret: str, params: Mapping[str, str], param_json: str, sign_method: str) -> str:
    # A parameter missing signs as empty: the request then fails its signature, as the platform answers it.
    text = "".join(k + (param_json if k == "param_json" else params.get(k, ""))
                   for k in ("app_key", "method", "param_json", "timestamp", "v"))  # fmt: skip
    wrapped = secret + text + secret
    if sign_method == "md5":
        return hashlib.md5(wrapped.encode()).hexdigest()
    return hmac.new(secret.encode(), wrapped.encode(), hashlib.sha256).hexdigest()


def _kwai_sign(secret: str, params: Mapping[str, str]) -> str:
    text = "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "sign")
    return base64.b64encode(hmac.new(secret.encode(), text.encode(), hashlib.sha256).digest()).decode()


def _own_sign(secret: str, timestamp: str, body: bytes, event: str | None = None) -> str:
    """The own site's signature: over the timestamp and body of a request, and a push's event besides."""
    # Headers arrive surrogate-escaped where their bytes are not UTF-8: signed as the bytes that were sent.
    signed = (timestamp.encode("utf-8", "surrogateescape") + b"."
              + (b"" if event is None else event.encode("utf-8", "surrogateescape") + b".") + body)  # fmt: skip
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def _douyin_push_sign(app_key: str, body: bytes, secret: str) -> str:
    return hashlib.md5(app_key.encode() + body + secret.encode()).hexdigest()


PDD_SYSTEM_PARAMS = frozenset({"type", "client_id", "timestamp", "data_type", "version", "access_token", "sign"})


@dataclass(frozen=True)
class _Call:
    """What every request signer needs, resolved once."""

    p: Platform
    creds: Credentials
    endpoint: Endpoint
    ts: str
    sign_method: str
    payload: str  # the canonical JSON of the business body
    body: Mapping[str, Any]

    def signed(
        self, query: Mapping[str, str], content_type: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> SignedRequest:
        return SignedRequest(self.p.channel, self.p.methods[self.endpoint], self.p.paths[self.endpoint], dict(query),
                             {"Content-Type": content_type, **(headers or {})}, body)  # fmt: skip


def _sign_top(c: _Call) -> SignedRequest:
    query = {"method": c.p.methods[c.endpoint], "app_key": c.creds.app_key, "timestamp": c.ts, "format": "json",
             "v": "2.0", "sign_method": c.sign_method}  # fmt: skip
    if c.creds.access_token:
        query["session"] = c.creds.access_token
    query["sign"] = _top_sign(c.creds.secret, query, c.payload, c.sign_method)
    return c.signed(query, JSON_TYPE, c.payload.encode())


def _sign_jos(c: _Call) -> SignedRequest:
    params = {"method": c.p.methods[c.endpoint], "app_key": c.creds.app_key, "timestamp": c.ts, "v": "2.0",
              "360buy_param_json": c.payload}  # fmt: skip
    if c.creds.access_token:
        params["access_token"] = c.creds.access_token
    params["sign"] = _top_sign(c.creds.secret, params, "", "md5")
    form = urlencode({"360buy_param_json": params.pop("360buy_param_json")}).encode()
    return c.signed(params, FORM_TYPE, form)


def _sign_pdd(c: _Call) -> SignedRequest:
    clash = PDD_SYSTEM_PARAMS & set(c.body)
    if clash:
        raise BodyError(f"pdd body fields clash with system parameters: {sorted(clash)}")
    signed: dict[str, Any] = {"type": c.p.methods[c.endpoint], "client_id": c.creds.app_key, "timestamp": c.ts,
                              "data_type": "JSON", "version": "V1", **c.body}  # fmt: skip
    if c.creds.access_token:
        signed["access_token"] = c.creds.access_token
    signed["sign"] = _top_sign(c.creds.secret, {k: _param_text(v) for k, v in signed.items()}, "", "md5")
    return c.signed({}, JSON_TYPE, canonical_json(signed).encode())


def _sign_doudian(c: _Call) -> SignedRequest:
    query = {"app_key": c.creds.app_key, "method": c.p.methods[c.endpoint], "timestamp": c.ts, "v": "2",
             "sign_method": c.sign_method}  # fmt: skip
    query["sign"] = _doudian_sign(c.creds.secret, query, c.payload, c.sign_method)
    if c.creds.access_token:  # Doudian does not sign the access token
        query["access_token"] = c.creds.access_token
    return c.signed(query, JSON_TYPE, c.payload.encode())


def _sign_kwai(c: _Call) -> SignedRequest:
    params = {"appkey": c.creds.app_key, "method": c.p.methods[c.endpoint], "timestamp": c.ts, "version": "1",
              "signMethod": c.sign_method, "param": c.payload}  # fmt: skip
    if c.creds.access_token:
        params["access_token"] = c.creds.access_token
    params["sign"] = _kwai_sign(c.creds.secret, params)
    form = urlencode({"param": params.pop("param")}).encode()
    return c.signed(params, FORM_TYPE, form)


def _sign_own(c: _Call) -> SignedRequest:
    raw = c.payload.encode()
    headers = {OWN_KEY_HEADER: c.creds.app_key, OWN_TIMESTAMP_HEADER: c.ts,
               OWN_SIGNATURE_HEADER: _own_sign(c.creds.secret, c.ts, raw)}  # fmt: skip
    return c.signed({}, JSON_TYPE, raw, headers)


_SIGNERS: Mapping[SignScheme, Callable[[_Call], SignedRequest]] = MappingProxyType(
    {
        SignScheme.TOP: _sign_top,
        SignScheme.JOS: _sign_jos,
        SignScheme.PDD: _sign_pdd,
        SignScheme.DOUDIAN: _sign_doudian,
        SignScheme.KWAI: _sign_kwai,
        SignScheme.OWN: _sign_own,
    }
)


def sign_request(
    channel: str,
    creds: Credentials,
    endpoint: Endpoint,
    body: Mapping[str, Any],
    now_ms: int,
    *,
    sign_method: str | None = None,
) -> SignedRequest:
    """Sign a call to ``endpoint`` (``stock`` or ``refund``) the way ``channel``'s open platform wants it.

    ``body`` is the business payload (``stock_body`` / ``refund_body`` build one in the platform's
    field names). ``sign_method`` picks one of ``Platform.sign_methods`` (default: the first).
    Raises ``BodyError`` for a payload the platform cannot carry (a pdd field named like a system one).
    """
    p = platform(channel)
    method = sign_method or (p.sign_methods[0] if p.sign_methods else "")
    if p.sign_methods and method not in p.sign_methods:
        raise ValueError(f"{channel} signs with {', '.join(p.sign_methods)}, not {method!r}")
    call = _Call(p, creds, endpoint, p.timestamp_format.render(now_ms), method, canonical_json(dict(body)), body)
    return _SIGNERS[p.sign_scheme](call)


def sign_callback(channel: str, creds: Credentials, event: str, body: Mapping[str, Any], now_ms: int) -> SignedRequest:
    """Sign a push from ``channel`` to the shop (a settlement, an order callback); see the module docstring.

    The result's ``path`` is empty: post it to the shop's callback URL with ``url(callback_url)``.
    """
    p = platform(channel)
    ts = p.timestamp_format.render(now_ms)
    payload = canonical_json(dict(body))
    raw = payload.encode()
    secret = creds.secret
    scheme = p.callback_scheme
    if scheme is CallbackScheme.TOP_QUERY:
        query = {p.key_param: creds.app_key, _event_param(p): event, "timestamp": ts}
        if p.channel == "tmall":
            query["sign_method"] = "md5"
        query["sign"] = _top_sign(secret, query, payload, "md5")
        return SignedRequest(channel, event, "", query, {"Content-Type": JSON_TYPE}, raw)
    if scheme is CallbackScheme.DOUDIAN_PUSH:
        message = {"tag": event, "msg_id": hashlib.md5((event + payload).encode()).hexdigest()[:20], "data": payload}
        raw = canonical_json([message]).encode()
        headers = {"app-id": creds.app_key, "event-sign": _douyin_push_sign(creds.app_key, raw, secret),
                   "sign-method": "md5", "Content-Type": JSON_TYPE}  # fmt: skip
        return SignedRequest(channel, event, "", {}, headers, raw)
    if scheme is CallbackScheme.KWAI_QUERY:
        query = {"appkey": creds.app_key, "event": event, "timestamp": ts, "signMethod": "HMAC_SHA256"}
        query["sign"] = _kwai_sign(secret, {**query, "param": payload})
        return SignedRequest(channel, event, "", query, {"Content-Type": JSON_TYPE}, raw)
    headers = {OWN_KEY_HEADER: creds.app_key, OWN_TIMESTAMP_HEADER: ts,
               OWN_SIGNATURE_HEADER: _own_sign(secret, ts, raw, event), OWN_EVENT_HEADER: event,
               "Content-Type": JSON_TYPE}  # fmt: skip
    return SignedRequest(channel, event, "", {}, headers, raw)


def _event_param(p: Platform) -> str:
    return "type" if p.channel == "pdd" else "topic"


# --- verifying ---------------------------------------------------------------------------------


class AuthFailure(StrEnum):
    """Why a signed request or callback was refused."""

    MALFORMED = "malformed"  # a required parameter missing, a body that is not JSON, an unknown method
    MISSING_SIGNATURE = "missing_signature"
    UNKNOWN_APP_KEY = "unknown_app_key"
    BAD_SIGNATURE = "bad_signature"
    STALE_TIMESTAMP = "stale_timestamp"

    @property
    def error_kind(self) -> ErrorKind:
        """The platform answer this refusal gets."""
        return _FAILURE_ANSWER[self]


_FAILURE_ANSWER: Mapping[AuthFailure, ErrorKind] = MappingProxyType(
    {
        AuthFailure.MALFORMED: ErrorKind.BAD_REQUEST,
        AuthFailure.MISSING_SIGNATURE: ErrorKind.BAD_SIGNATURE,
        AuthFailure.UNKNOWN_APP_KEY: ErrorKind.INVALID_API_KEY,
        AuthFailure.BAD_SIGNATURE: ErrorKind.BAD_SIGNATURE,
        AuthFailure.STALE_TIMESTAMP: ErrorKind.STALE_TIMESTAMP,
    }
)


@dataclass(frozen=True)
class Verdict:
    """The result of verifying a request or callback. ``payload`` is the business body, decoded."""

    ok: bool
    failure: AuthFailure | None = None
    app_key: str | None = None
    endpoint: Endpoint | None = None
    operation: str | None = None
    timestamp_ms: int | None = None
    payload: Json | None = None
    detail: str = ""


@dataclass(frozen=True)
class _Parsed:
    app_key: str
    signature: str
    operation: str
    timestamp_ms: int | None  # None: the scheme signs no timestamp (the Doudian push)
    payload: Json
    expected: Callable[[str], str]  # the signature a given secret makes


def _refused(failure: AuthFailure, detail: str, app_key: str | None = None) -> Verdict:
    return Verdict(ok=False, failure=failure, app_key=app_key, detail=detail)


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), "")


def _json_object(text: str | bytes, what: str) -> Json | Verdict:
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nesting past the parser's depth: before any signature
        return _refused(AuthFailure.MALFORMED, f"{what} is not JSON")
    if not isinstance(value, dict):
        return _refused(AuthFailure.MALFORMED, f"{what} is not a JSON object")
    return value


def _form(body: bytes) -> dict[str, str] | Verdict:
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body)))
    except (ValueError, UnicodeDecodeError):
        return _refused(AuthFailure.MALFORMED, "body is not a form")


def _timestamp(p: Platform, text: str) -> int | Verdict:
    ms = p.timestamp_format.parse(text) if text else None
    if ms is None:
        return _refused(AuthFailure.MALFORMED, f"timestamp {text!r} is not {p.timestamp_format.value}")
    return ms


def _need(params: Mapping[str, str], *names: str) -> Verdict | None:
    missing = [n for n in names if not params.get(n)]
    return _refused(AuthFailure.MALFORMED, f"missing parameters: {', '.join(missing)}") if missing else None


def _sign_method(p: Platform, given: str | None) -> str | Verdict:
    method = given or p.sign_methods[0]
    if method not in p.sign_methods:
        return _refused(AuthFailure.MALFORMED, f"sign method {method!r} not supported")
    return method


def _parse_own(p: Platform, query: Mapping[str, str], headers: Mapping[str, str], body: bytes) -> _Parsed | Verdict:
    ts_text = _header(headers, OWN_TIMESTAMP_HEADER)
    ts = _timestamp(p, ts_text)
    if isinstance(ts, Verdict):
        return ts
    payload = _json_object(body, "body")
    if isinstance(payload, Verdict):
        return payload
    return _Parsed(_header(headers, OWN_KEY_HEADER), _header(headers, OWN_SIGNATURE_HEADER), "", ts, payload,
                   lambda secret: _own_sign(secret, ts_text, body))  # fmt: skip


def _parse_pdd(p: Platform, query: Mapping[str, str], headers: Mapping[str, str], body: bytes) -> _Parsed | Verdict:
    whole = _json_object(body, "body")
    if isinstance(whole, Verdict):
        return whole
    texts = {k: _param_text(v) for k, v in whole.items()}
    if missing := _need(texts, "type", "client_id", "timestamp"):
        return missing
    ts = _timestamp(p, texts["timestamp"])
    if isinstance(ts, Verdict):
        return ts
    payload = {k: v for k, v in whole.items() if k not in PDD_SYSTEM_PARAMS}
    return _Parsed(texts["client_id"], texts.get("sign", ""), texts["type"], ts, payload,
                   _bind_top(texts, "", "md5"))  # fmt: skip


def _parse_query_json(
    p: Platform, query: Mapping[str, str], headers: Mapping[str, str], body: bytes
) -> _Parsed | Verdict:
    """TOP and Doudian: system parameters in the query, the JSON body signed as it came."""
    params = dict(query)
    if missing := _need(params, "app_key", "method", "timestamp"):
        return missing
    method = _sign_method(p, params.get("sign_method"))
    if isinstance(method, Verdict):
        return method
    payload = _json_object(body, "body")
    if isinstance(payload, Verdict):
        return payload
    ts = _timestamp(p, params["timestamp"])
    if isinstance(ts, Verdict):
        return ts
    text = body.decode("utf-8")  # it parsed as JSON, so it is UTF-8
    bind = _bind_top if p.sign_scheme is SignScheme.TOP else _bind_doudian
    return _Parsed(params["app_key"], params.get("sign", ""), params["method"], ts, payload, bind(params, text, method))


def _parse_query_form(
    p: Platform, query: Mapping[str, str], headers: Mapping[str, str], body: bytes
) -> _Parsed | Verdict:
    """JOS and Kwaixiaodian: system parameters in the query, the JSON in a form field, all signed as parameters."""
    form = _form(body)
    if isinstance(form, Verdict):
        return form
    if set(form) & set(query):
        return _refused(AuthFailure.MALFORMED, "a parameter is both in the query and the body")
    params = {**query, **form}
    json_param = "360buy_param_json" if p.sign_scheme is SignScheme.JOS else "param"
    if missing := _need(params, p.key_param, "method", "timestamp", json_param):
        return missing
    if p.sign_scheme is SignScheme.KWAI and isinstance(method := _sign_method(p, params.get("signMethod")), Verdict):
        return method
    payload = _json_object(params[json_param], json_param)
    if isinstance(payload, Verdict):
        return payload
    ts = _timestamp(p, params["timestamp"])
    if isinstance(ts, Verdict):
        return ts
    expected = _bind_top(params, "", "md5") if p.sign_scheme is SignScheme.JOS else _bind_kwai(params)
    return _Parsed(params[p.key_param], params.get("sign", ""), params["method"], ts, payload, expected)


_Parser = Callable[[Platform, Mapping[str, str], Mapping[str, str], bytes], "_Parsed | Verdict"]
_PARSERS: Mapping[SignScheme, _Parser] = MappingProxyType(
    {
        SignScheme.TOP: _parse_query_json,
        SignScheme.JOS: _parse_query_form,
        SignScheme.PDD: _parse_pdd,
        SignScheme.DOUDIAN: _parse_query_json,
        SignScheme.KWAI: _parse_query_form,
        SignScheme.OWN: _parse_own,
    }
)


def _bind_top(params: Mapping[str, str], body: str, method: str) -> Callable[[str], str]:
    return lambda secret: _top_sign(secret, params, body, method)


def _bind_doudian(params: Mapping[str, str], param_json: str, method: str) -> Callable[[str], str]:
    return lambda secret: _doudian_sign(secret, params, param_json, method)


def _bind_kwai(params: Mapping[str, str]) -> Callable[[str], str]:
    return lambda secret: _kwai_sign(secret, params)


def _judge(
    parsed: _Parsed, secret_for: Callable[[str], str | None], now_ms: int, window_ms: int, endpoint: Endpoint | None
) -> Verdict:
    if not parsed.signature:
        return _refused(AuthFailure.MISSING_SIGNATURE, "no signature", parsed.app_key or None)
    if not parsed.app_key:
        return _refused(AuthFailure.UNKNOWN_APP_KEY, "no app key")
    secret = secret_for(parsed.app_key)
    if secret is None:
        return _refused(AuthFailure.UNKNOWN_APP_KEY, f"unknown app key {parsed.app_key!r}", parsed.app_key)
    # Constant-time: the time a mismatch takes says nothing about how much of it matched.
    if not same_secret(parsed.expected(secret), parsed.signature):
        return _refused(AuthFailure.BAD_SIGNATURE, "signature does not match", parsed.app_key)
    if parsed.timestamp_ms is not None and abs(now_ms - parsed.timestamp_ms) > window_ms:
        skew = (now_ms - parsed.timestamp_ms) / 1000
        return _refused(AuthFailure.STALE_TIMESTAMP, f"timestamp {skew:+.3f}s from server time", parsed.app_key)
    return Verdict(ok=True, app_key=parsed.app_key, endpoint=endpoint, operation=parsed.operation,
                   timestamp_ms=parsed.timestamp_ms, payload=parsed.payload)  # fmt: skip


def verify_request(
    channel: str,
    secret_for: Callable[[str], str | None],
    query: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes,
    now_ms: int,
    window_ms: int | None = None,
    *,
    path: str | None = None,
) -> Verdict:
    """Check a call to ``channel``'s open platform as the platform does.

    ``secret_for(app_key)`` returns the app's current secret, or None for a key it does not know.
    The timestamp may be at most ``window_ms`` (default: the platform's window) before or after
    ``now_ms``. ``path``, when given, must be the path the named API is served at (for ``own`` it
    names the endpoint). Checks run in order: well-formed, signed, known key, signature, timestamp.
    """
    p = platform(channel)
    parsed = _PARSERS[p.sign_scheme](p, query, headers, body)
    if isinstance(parsed, Verdict):
        return parsed
    if p.sign_scheme is SignScheme.OWN:
        endpoint = next((e for e, route in p.paths.items() if route == path), None)
        parsed = _Parsed(parsed.app_key, parsed.signature, p.methods[endpoint] if endpoint else "",
                         parsed.timestamp_ms, parsed.payload, parsed.expected)  # fmt: skip
        if path is not None and endpoint is None:
            return _refused(AuthFailure.MALFORMED, f"no API at {path}")
    else:
        endpoint = p.endpoint_of(parsed.operation)
        if endpoint is None:
            return _refused(AuthFailure.MALFORMED, f"unknown method {parsed.operation!r}")
        if path is not None and p.paths[endpoint] != path:
            return _refused(AuthFailure.MALFORMED, f"{parsed.operation} is not served at {path}")
    return _judge(parsed, secret_for, now_ms, p.window_ms if window_ms is None else window_ms, endpoint)


def _parse_callback(
    p: Platform, query: Mapping[str, str], headers: Mapping[str, str], body: bytes
) -> _Parsed | Verdict:
    scheme = p.callback_scheme
    text = body.decode("utf-8", errors="replace")
    if scheme is CallbackScheme.DOUDIAN_PUSH:
        app_key = _header(headers, "app-id")
        try:
            messages = json.loads(body)
            message = messages[0]
            payload = _json_object(message["data"], "data")
            event = str(message["tag"])
        except (ValueError, UnicodeDecodeError, LookupError, TypeError, RecursionError):
            return _refused(AuthFailure.MALFORMED, "body is not a Doudian push")
        if isinstance(payload, Verdict):
            return payload
        return _Parsed(app_key, _header(headers, "event-sign"), event, None, payload,
                       lambda secret: _douyin_push_sign(app_key, body, secret))  # fmt: skip
    if scheme is CallbackScheme.OWN_HEADERS:
        parsed = _PARSERS[p.sign_scheme](p, query, headers, body)
        if isinstance(parsed, Verdict):
            return parsed
        event, ts_text = _header(headers, OWN_EVENT_HEADER), _header(headers, OWN_TIMESTAMP_HEADER)
        return _Parsed(parsed.app_key, parsed.signature, event, parsed.timestamp_ms, parsed.payload,
                       lambda secret: _own_sign(secret, ts_text, body, event))  # fmt: skip
    params = dict(query)
    event_param = "event" if scheme is CallbackScheme.KWAI_QUERY else _event_param(p)
    if missing := _need(params, p.key_param, event_param, "timestamp"):
        return missing
    payload = _json_object(body, "body")
    if isinstance(payload, Verdict):
        return payload
    ts = _timestamp(p, params["timestamp"])
    if isinstance(ts, Verdict):
        return ts
    if scheme is CallbackScheme.KWAI_QUERY:
        expected = _bind_kwai({**params, "param": text})
    else:
        expected = _bind_top(params, text, "md5")
    return _Parsed(params[p.key_param], params.get("sign", ""), params[event_param], ts, payload, expected)


def verify_callback(
    channel: str,
    secret: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes,
    now_ms: int,
    window_ms: int | None = None,
    *,
    app_key: str | None = None,
) -> Verdict:
    """Check a push from ``channel`` against the shop's app secret for that channel.

    ``app_key``, when given, must be the key the push names. Douyin's push signs no timestamp, so no
    window applies to it (``Verdict.timestamp_ms`` is None); the other channels' must be within
    ``window_ms`` (default: the platform's) of ``now_ms``. ``Verdict.operation`` is the event name,
    ``Verdict.payload`` the event's JSON object.
    """
    p = platform(channel)
    parsed = _parse_callback(p, query, headers, body)
    if isinstance(parsed, Verdict):
        return parsed

    def secret_for(key: str) -> str | None:
        return secret if app_key is None or same_secret(key, app_key) else None

    return _judge(parsed, secret_for, now_ms, p.window_ms if window_ms is None else window_ms, None)


def same_secret(given: str, expected: str) -> bool:
    """Whether a credential a caller sent is the expected one, in constant time (how long a mismatch takes
    says nothing about how much of it matched). Compared as bytes: ``hmac.compare_digest`` refuses text
    with non-ASCII characters, and a header's undecodable bytes come as surrogates; either was a 500."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


def route(channel: str, path: str) -> tuple[Endpoint, ...]:
    """The endpoints ``channel`` serves at ``path`` (both for a one-gateway platform, none for a stranger)."""
    p = platform(channel)
    return tuple(e for e in APIS if p.paths[e] == path)


# --- business bodies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StockUpdate:
    """A channel stock push: set ``sku``'s sellable quantity to ``quantity``, as of level ``version``."""

    sku: str
    quantity: int
    version: int

    @property
    def idempotency_key(self) -> str:
        return f"{self.sku}:{self.version}"


@dataclass(frozen=True)
class RefundAgree:
    """A refund instruction: agree refund ``refund_id`` for ``amount_fen`` (1/100 yuan)."""

    refund_id: str
    amount_fen: int
    channel_order_id: str | None = None

    @property
    def idempotency_key(self) -> str:
        return self.refund_id


@dataclass(frozen=True)
class Settlement:
    """A marketplace's notice that a refund's money has moved."""

    refund_id: str
    amount_fen: int
    settled_at_ms: int
    channel_order_id: str | None = None


def _events(**kinds: str | tuple[str, ...]) -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType({kind: (names,) if isinstance(names, str) else names for kind, names in kinds.items()})


# fmt: off
# The event name each platform gives a push to the shop (``sign_callback``'s ``event``, ``Verdict.operation``
# of ``verify_callback``), per notification kind the intake reads it as: the first is what a sender names the
# kind, any other a message the platform also sends for it. It is signed with the push (the own site's header
# excepted), so it, not the route a push is posted to, says what the platform meant. Taobao's TMC topics and
# Doudian's message names are the platforms' own: a presale (step) trade's deposit comes as
# ``TradeBuyerStepPay``, its balance as ``TradeBuyerPay`` like any full payment, which is why the payload's
# status, not the topic, tells the balance apart. JD's, Pinduoduo's and Kuaishou's are modelled in their style.
PUSH_EVENTS: Mapping[str, Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "tmall": _events(
            order="taobao_trade_TradeCreate",
            payment=("taobao_trade_TradeBuyerPay", "taobao_trade_TradeBuyerStepPay"),
            cancel="taobao_trade_TradeClose", shipment="taobao_trade_TradeSellerShip",
            delivery="taobao_trade_TradeSuccess", refund="taobao_refund_RefundCreated",
            return_shipped="taobao_refund_RefundBuyerReturnGoods", refund_settled="taobao_refund_RefundSuccess",
            refund_cancelled="taobao_refund_RefundClosed",
        ),
        "jd": _events(
            order="jos_order_created", payment="jos_order_paid", cancel="jos_order_cancelled",
            shipment="jos_order_shipped", delivery="jos_order_delivered", refund="jos_refund_created",
            return_shipped="jos_refund_return_shipped", refund_settled="jos_refund_settled",
            refund_cancelled="jos_refund_cancelled",
        ),
        "douyin": _events(
            order="doudian_trade_TradeCreate", payment="doudian_trade_TradePaid",
            cancel="doudian_trade_TradeCanceled", shipment="doudian_trade_TradeSellerShip",
            delivery="doudian_trade_TradeSuccess", refund="doudian_refund_RefundCreated",
            return_shipped="doudian_refund_RefundBuyerReturnGoods", refund_settled="doudian_refund_RefundSuccess",
            refund_cancelled="doudian_refund_RefundClosed",
        ),
        "pdd": _events(
            order="pdd_trade_TradeCreate", payment="pdd_trade_TradeBuyerPay", cancel="pdd_trade_TradeClose",
            shipment="pdd_trade_TradeSellerShip", delivery="pdd_trade_TradeSuccess",
            refund="pdd_refund_RefundCreated", return_shipped="pdd_refund_RefundBuyerReturnGoods",
            refund_settled="pdd_refund_RefundSuccess", refund_cancelled="pdd_refund_RefundClosed",
        ),
        "kuaishou": _events(
            order="kwaishop_order_created", payment="kwaishop_order_paid", cancel="kwaishop_order_cancelled",
            shipment="kwaishop_order_shipped", delivery="kwaishop_order_delivered",
            refund="kwaishop_refund_created", return_shipped="kwaishop_refund_return_shipped",
            refund_settled="kwaishop_refund_settled", refund_cancelled="kwaishop_refund_cancelled",
        ),
        # The shop's own site names the intake route it posts to; its settlement push is ours.
        "own": _events(
            order="order", payment="payment", cancel="cancel", shipment="shipment", delivery="delivery",
            wms_ack="wms_ack", refund="refund", return_shipped="return_shipped", refund_settled="refund.settled",
            refund_cancelled="refund_cancelled",
        ),
    }
)
# fmt: on
SETTLEMENT_EVENTS: Mapping[str, str] = MappingProxyType(
    {channel: kinds["refund_settled"][0] for channel, kinds in PUSH_EVENTS.items()}
)


def push_events(channel: str, kind: str) -> tuple[str, ...]:
    """The event names ``channel`` pushes a ``kind`` notification as; none for a kind it never pushes."""
    return PUSH_EVENTS.get(channel, MappingProxyType({})).get(kind, ())


def push_event_field(channel: str) -> str:
    """Where ``channel``'s push names its event, for a human reading a refusal."""
    p = platform(channel)
    if p.callback_scheme is CallbackScheme.TOP_QUERY:
        return f"query {_event_param(p)}"
    if p.callback_scheme is CallbackScheme.DOUDIAN_PUSH:
        return "message tag"
    if p.callback_scheme is CallbackScheme.KWAI_QUERY:
        return "query event"
    return f"header {OWN_EVENT_HEADER}"


def _amount_out(unit: str, fen: int) -> str | int:
    return f"{Decimal(fen) / 100:.2f}" if unit == "yuan" else fen


def _amount_in(unit: str, value: object, name: str) -> int:
    if isinstance(value, bool):
        raise BodyError(f"{name} must be an amount, not {value!r}")
    if unit == "fen":
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            return int(value)
        raise BodyError(f"{name} must be whole fen, not {value!r}")
    try:
        yuan = Decimal(str(value))
    except InvalidOperation:
        raise BodyError(f"{name} must be yuan, not {value!r}") from None
    try:
        cents = yuan.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP) if yuan.is_finite() else None
    except InvalidOperation:  # more digits than a Decimal holds (1e400): no amount either
        cents = None
    if cents is None or yuan != cents:
        raise BodyError(f"{name} must be yuan with at most two decimals, not {value!r}")
    return int(yuan * 100)


def _whole(payload: Mapping[str, Any], name: str, minimum: int = 0) -> int:
    value = payload.get(name)
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise BodyError(f"{name} must be a whole number >= {minimum}, not {value!r}")
    return value


def _text(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise BodyError(f"{name} is missing")
    return value


def stock_body(channel: str, sku: str, quantity: int, version: int) -> Json:
    """The stock-update payload in ``channel``'s field names (sign it with ``sign_request(..., "stock", ...)``)."""
    f = platform(channel).fields
    return {**f.stock_extra, f.sku: sku, f.quantity: quantity, f.version: version}


def refund_body(channel: str, refund_id: str, amount_fen: int, *, channel_order_id: str | None = None) -> Json:
    """The refund-agree payload in ``channel``'s field names and amount unit (yuan text or fen), with the
    order it belongs to when given."""
    f = platform(channel).fields
    body = {**f.refund_extra, f.refund_id: refund_id, f.amount: _amount_out(f.amount_unit, amount_fen)}
    if channel_order_id is not None:
        body[f.order_id] = channel_order_id
    return body


def parse_stock(channel: str, payload: Mapping[str, Any]) -> StockUpdate:
    """Read a stock-update payload; ``BodyError`` if a field is missing or not a number."""
    f = platform(channel).fields
    return StockUpdate(_text(payload, f.sku), _whole(payload, f.quantity), _whole(payload, f.version, minimum=1))


def stock_batch_body(channel: str, updates: Sequence[StockUpdate]) -> Json:
    """The many-SKU stock payload (sign it with ``sign_request(..., "stock_batch", ...)``): each figure in the
    one-SKU update's field names. ``BodyError`` for none, more than the platform takes, or a SKU twice (the
    order of two figures of one SKU in one call would be the platform's to choose)."""
    p = platform(channel)
    batch, f = p.stock_batch, p.fields
    _check_batch(p, [u.sku for u in updates])
    return {**batch.extra, batch.items: [{f.sku: u.sku, f.quantity: u.quantity, f.version: u.version}
                                         for u in updates]}  # fmt: skip


def _check_batch(p: Platform, skus: Sequence[str]) -> None:
    if not skus:
        raise BodyError(f"{p.stock_batch.items} is empty")
    if len(skus) > p.stock_batch.max_items:
        raise BodyError(f"{p.channel} takes at most {p.stock_batch.max_items} SKUs per call, not {len(skus)}")
    if len(set(skus)) < len(skus):
        raise BodyError(f"{p.stock_batch.items} names a SKU twice")


def parse_stock_batch(channel: str, payload: Mapping[str, Any]) -> list[StockUpdate]:
    """Read a many-SKU stock payload, figures in the order sent; ``BodyError`` if the list is missing, empty,
    longer than the platform takes, names a SKU twice, or a figure is not one."""
    p = platform(channel)
    items = payload.get(p.stock_batch.items)
    if not isinstance(items, list):
        raise BodyError(f"{p.stock_batch.items} must be a list")
    if not all(isinstance(item, Mapping) for item in items):
        raise BodyError(f"{p.stock_batch.items} must hold objects")
    updates = [parse_stock(channel, item) for item in items]
    _check_batch(p, [u.sku for u in updates])
    return updates


def parse_refund(channel: str, payload: Mapping[str, Any]) -> RefundAgree:
    """Read a refund-agree payload; ``BodyError`` if a field is missing or the amount is not one."""
    f = platform(channel).fields
    if f.amount not in payload:
        raise BodyError(f"{f.amount} is missing")
    amount = _amount_in(f.amount_unit, payload[f.amount], f.amount)
    if amount <= 0:
        raise BodyError(f"{f.amount} must be positive")
    order_id = _text(payload, f.order_id) if payload.get(f.order_id) not in (None, "") else None
    return RefundAgree(_text(payload, f.refund_id), amount, order_id)


def settlement_body(
    channel: str, refund_id: str, amount_fen: int, settled_at_ms: int, *, channel_order_id: str | None = None
) -> Json:
    """The settlement push payload (event ``SETTLEMENT_EVENTS[channel]``) in ``channel``'s field names."""
    body = refund_body(channel, refund_id, amount_fen, channel_order_id=channel_order_id)
    for extra in platform(channel).fields.refund_extra:
        body.pop(extra)
    return {**body, "status": "SUCCESS", "settled_at": platform(channel).timestamp_format.render(settled_at_ms)}


def parse_settlement(channel: str, payload: Mapping[str, Any]) -> Settlement:
    """Read a settlement push payload; ``BodyError`` if it is not one."""
    p = platform(channel)
    refund = parse_refund(channel, payload)
    settled_at = p.timestamp_format.parse(_text(payload, "settled_at"))
    if settled_at is None:
        raise BodyError("settled_at is not a timestamp")
    return Settlement(refund.refund_id, refund.amount_fen, settled_at, refund.channel_order_id)


# --- answers -----------------------------------------------------------------------------------


def _response_key(p: Platform, endpoint: Endpoint) -> str:
    name = p.methods[endpoint]
    if p.error_style is ErrorStyle.TOP:
        return name.removeprefix("taobao.").replace(".", "_") + "_response"
    if p.error_style is ErrorStyle.JOS:
        return name.replace(".", "_") + "_responce"  # sic: JOS spells it so
    return name.removeprefix("pdd.").replace(".", "_") + "_response"


def ok_answer(channel: str, endpoint: Endpoint, result: Mapping[str, Any]) -> tuple[int, Json]:
    """(HTTP status, body) of ``channel``'s success answer for ``endpoint`` carrying ``result``."""
    p = platform(channel)
    style = p.error_style
    if style in (ErrorStyle.TOP, ErrorStyle.PDD):
        return 200, {_response_key(p, endpoint): dict(result)}
    if style is ErrorStyle.JOS:
        return 200, {_response_key(p, endpoint): {"code": "0", **result}}
    if style is ErrorStyle.DOUDIAN:
        return 200, {"code": 10000, "msg": "success", "sub_code": "", "sub_msg": "", "data": dict(result)}
    if style is ErrorStyle.KWAI:
        return 200, {"result": 1, "error_msg": "", "data": dict(result)}
    return 200, {"data": dict(result)}


def stock_batch_answer(channel: str, results: Sequence[tuple[StockUpdate, ErrorKind | None]]) -> tuple[int, Json]:
    """(HTTP status, body) of ``channel``'s success answer to a many-SKU stock call: per figure sent, its SKU,
    quantity and version, and None (applied) or the refusal it got (``STALE_VERSION``: a newer one is there),
    in the platform's answer style."""
    p = platform(channel)
    entries = [_item_entry(p, update, kind) for update, kind in results]
    return ok_answer(channel, STOCK_BATCH, {p.stock_batch.results: entries})


_ITEM_APPLIED: Mapping[ErrorStyle, Json] = MappingProxyType(
    {
        ErrorStyle.TOP: {"success": True},
        ErrorStyle.JOS: {"code": "0"},
        ErrorStyle.PDD: {"is_success": True},
        # Doudian's SKU field is ``code``: a figure's status is an envelope of its own.
        ErrorStyle.DOUDIAN: {"status": {"code": 10000, "msg": "success"}},
        ErrorStyle.KWAI: {"result": 1},
        ErrorStyle.OWN: {"status": "applied"},
    }
)


def _item_entry(p: Platform, update: StockUpdate, kind: ErrorKind | None) -> Json:
    """One figure's result: its SKU, quantity and version, then applied or the refusal as the platform words it."""
    f = p.fields
    entry: Json = {f.sku: update.sku, f.quantity: update.quantity, f.version: update.version}
    if kind is None:
        return {**entry, **_ITEM_APPLIED[p.error_style]}
    spec, style = p.errors[kind], p.error_style
    refusal: Json
    if style is ErrorStyle.TOP:
        refusal = {"success": False, "code": spec.code, "msg": spec.message, "sub_code": spec.sub_code,
                   "sub_msg": spec.sub_message}  # fmt: skip
    elif style is ErrorStyle.JOS:
        refusal = {"code": spec.code, "zh_desc": spec.message, "en_desc": spec.sub_message}
    elif style is ErrorStyle.PDD:
        refusal = {"is_success": False, "error_code": spec.code, "error_msg": spec.message, "sub_code": spec.sub_code}
    elif style is ErrorStyle.DOUDIAN:
        refusal = {"status": {"code": spec.code, "msg": spec.message, "sub_code": spec.sub_code,
                              "sub_msg": spec.sub_message}}  # fmt: skip
    elif style is ErrorStyle.KWAI:
        refusal = {"result": spec.code, "error_msg": spec.message, "code": spec.sub_code}
    else:
        refusal = {"status": "refused", "error": {"code": spec.code, "message": spec.message}}
    return {**entry, **refusal}


def error_answer(channel: str, kind: ErrorKind, *, request_id: str = "") -> tuple[int, Json]:
    """(HTTP status, body) ``channel`` answers when it refuses a call for ``kind``."""
    p = platform(channel)
    spec = p.errors[kind]
    style = p.error_style
    body: Json
    if style is ErrorStyle.TOP:
        body = {"error_response": {"code": spec.code, "msg": spec.message, "sub_code": spec.sub_code,
                                   "sub_msg": spec.sub_message}}  # fmt: skip
    elif style is ErrorStyle.JOS:
        body = {"error_response": {"code": spec.code, "zh_desc": spec.message, "en_desc": spec.sub_message}}
    elif style is ErrorStyle.PDD:
        body = {"error_response": {"error_code": spec.code, "error_msg": spec.message, "sub_code": spec.sub_code,
                                   "sub_msg": spec.sub_message}}  # fmt: skip
    elif style is ErrorStyle.DOUDIAN:
        body = {"code": spec.code, "msg": spec.message, "sub_code": spec.sub_code, "sub_msg": spec.sub_message,
                "data": {}}  # fmt: skip
    elif style is ErrorStyle.KWAI:
        body = {"result": spec.code, "error_msg": spec.message, "code": spec.sub_code}
    else:
        body = {"error": {"code": spec.code, "message": spec.message}}
    if request_id:
        body.get("error_response", body)["request_id"] = request_id
    return spec.http_status, body


@dataclass(frozen=True)
class ItemResult:
    """One figure's result in a many-SKU stock answer: which SKU and version, and what it means."""

    sku: str
    version: int
    kind: OutcomeKind
    error: ErrorKind | None = None
    code: str = ""
    message: str = ""


@dataclass(frozen=True)
class Outcome:
    """What an answer means: ``kind`` says what to do; ``error`` which refusal it was (None: ok or unknown)."""

    kind: OutcomeKind
    error: ErrorKind | None = None
    code: str = ""
    message: str = ""
    http_status: int | None = None
    result: Json | None = None  # the success answer's payload
    items: tuple[ItemResult, ...] | None = None  # a many-SKU stock answer's result per figure; None: not one

    @property
    def done(self) -> bool:
        """The effect is in place (now or before): nothing more to send for this request."""
        return self.kind in (OutcomeKind.OK, OutcomeKind.ALREADY_APPLIED, OutcomeKind.STALE)

    @property
    def maybe_applied(self) -> bool:
        """An answer that is not done yet leaves the request maybe applied, now or later (a gateway holding it): no
        answer, a server error (by status, or by the platform's code in any status) or a success nobody can read.
        A refusal the platform names - a rate limit, a stale timestamp, a key, a bad request - was not applied."""
        if self.done:
            return False
        if self.error is not None:
            return self.error is ErrorKind.SERVER_ERROR
        status = self.http_status
        return status is None or status >= 500 or 200 <= status < 300  # noqa: PLR2004 - server faults and 2xx


def _envelope(style: ErrorStyle, body: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(code, sub_code, message) of an error answer; None when the body is a success."""
    if style in (ErrorStyle.TOP, ErrorStyle.JOS, ErrorStyle.PDD):
        err = body.get("error_response")
        if not isinstance(err, Mapping):
            return None
        if style is ErrorStyle.PDD:
            return str(err.get("error_code", "")), str(err.get("sub_code", "")), str(err.get("error_msg", ""))
        if style is ErrorStyle.JOS:
            message = " / ".join(str(err[k]) for k in ("en_desc", "zh_desc") if err.get(k))
            return str(err.get("code", "")), "", message
        message = " / ".join(str(err[k]) for k in ("msg", "sub_msg") if err.get(k))
        return str(err.get("code", "")), str(err.get("sub_code", "")), message
    if style is ErrorStyle.DOUDIAN:
        if body.get("code") == 10000:  # noqa: PLR2004 - Doudian's success code
            return None
        message = " / ".join(str(body[k]) for k in ("msg", "sub_msg") if body.get(k))
        return str(body.get("code", "")), str(body.get("sub_code", "")), message
    if style is ErrorStyle.KWAI:
        if body.get("result") == 1:
            return None
        return str(body.get("result", "")), str(body.get("code", "")), str(body.get("error_msg", ""))
    err = body.get("error")
    if not isinstance(err, Mapping):
        return None
    return str(err.get("code", "")), "", str(err.get("message", ""))


def _success_result(p: Platform, body: Mapping[str, Any]) -> Json:
    style = p.error_style
    if style in (ErrorStyle.DOUDIAN, ErrorStyle.KWAI, ErrorStyle.OWN):
        data = body.get("data")
        return dict(data) if isinstance(data, Mapping) else {}
    inner = next((v for k, v in body.items() if k.endswith(("_response", "_responce")) and isinstance(v, Mapping)), {})
    return {k: v for k, v in inner.items() if not (style is ErrorStyle.JOS and k == "code")}


def _kind_of(p: Platform, code: str, sub_code: str) -> ErrorKind | None:
    exact = [k for k, s in p.errors.items() if str(s.code) == code and s.sub_code == sub_code]
    if exact:
        return exact[0]
    by_code = [k for k, s in p.errors.items() if str(s.code) == code]
    return by_code[0] if len(by_code) == 1 else None


def classify(channel: str, http_status: int | None, body: Mapping[str, Any] | bytes | str | None) -> Outcome:
    """What ``channel``'s answer means for the caller.

    ``http_status`` None means no answer at all (timeout, connection refused): retriable, as are
    5xx, 429, the rate-limit and server-error answers and a success status with an unreadable body
    (the calls are idempotent, so asking again is safe). Invalid/rotated key, expired credentials and
    a bad signature are ``credential``; a refund agreed before is ``already_applied`` (done, never a
    second refund); an older stock version is ``stale``; anything else refused is ``fatal``.
    """
    p = platform(channel)
    if http_status is None:
        return Outcome(OutcomeKind.RETRIABLE, message="no answer")
    parsed: object = body
    if isinstance(body, (bytes, str)):
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            parsed = None
    if not isinstance(parsed, Mapping):
        return _by_status(http_status, "answer is not a JSON object")
    envelope = _envelope(p.error_style, parsed)
    if envelope is None:
        if 200 <= http_status < 300:  # noqa: PLR2004 - the 2xx range
            result = _success_result(p, parsed)
            return Outcome(OutcomeKind.OK, http_status=http_status, result=result, items=_item_results(p, result))
        return _by_status(http_status, "error status without an error body")
    code, sub_code, message = envelope
    kind = _error_kind(p, code, sub_code)
    if kind is None:
        # An error we have no entry for: a faulty status says what it is; a refusal in a 2xx is fatal.
        by_status = _by_status(http_status, message).kind if http_status >= 300 else OutcomeKind.FATAL  # noqa: PLR2004
        return Outcome(by_status, None, code, message, http_status)
    return Outcome(OUTCOME_OF[kind], kind, code, message, http_status)


def _error_kind(p: Platform, code: str, sub_code: str) -> ErrorKind | None:
    """What a refusal is, of a whole call or of one figure in it (None: not one we can name)."""
    kind = _kind_of(p, code, sub_code)
    if kind is None and p.error_style is ErrorStyle.TOP and sub_code.startswith("isp."):
        kind = ErrorKind.SERVER_ERROR  # TOP: "isp." errors are the platform's own, worth another try
    return kind


def _item_results(p: Platform, result: Mapping[str, Any]) -> tuple[ItemResult, ...] | None:
    """The per-figure results of a many-SKU stock answer (None when ``result`` is not one); a result that names
    no SKU or version is left out (its figure then has no result: see ``item_outcomes``)."""
    entries = result.get(p.stock_batch.results)
    if not isinstance(entries, list):
        return None
    found = []
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        try:
            sku, version = _text(entry, p.fields.sku), _whole(entry, p.fields.version, minimum=1)
        except BodyError:
            continue
        envelope = _item_envelope(p.error_style, entry)
        if envelope is None:
            found.append(ItemResult(sku, version, OutcomeKind.OK))
            continue
        code, sub_code, message = envelope
        kind = _error_kind(p, code, sub_code)
        # Only a refusal of this figure can come per item; one we cannot name is not worth sending again.
        found.append(ItemResult(sku, version, OUTCOME_OF[kind] if kind else OutcomeKind.FATAL, kind, code, message))
    return tuple(found)


def _item_envelope(style: ErrorStyle, entry: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(code, sub_code, message) of a refused figure in a many-SKU answer; None when it was applied."""
    if style is ErrorStyle.TOP:
        if entry.get("success") is True:
            return None
        message = " / ".join(str(entry[k]) for k in ("msg", "sub_msg") if entry.get(k))
        return str(entry.get("code", "")), str(entry.get("sub_code", "")), message
    if style is ErrorStyle.JOS:
        if str(entry.get("code")) == "0":
            return None
        message = " / ".join(str(entry[k]) for k in ("en_desc", "zh_desc") if entry.get(k))
        return str(entry.get("code", "")), "", message
    if style is ErrorStyle.PDD:
        if entry.get("is_success") is True:
            return None
        return str(entry.get("error_code", "")), str(entry.get("sub_code", "")), str(entry.get("error_msg", ""))
    if style is ErrorStyle.DOUDIAN:
        status = entry.get("status")
        return _envelope(style, status if isinstance(status, Mapping) else {})
    if style is ErrorStyle.KWAI:
        if entry.get("result") == 1:
            return None
        return str(entry.get("result", "")), str(entry.get("code", "")), str(entry.get("error_msg", ""))
    if entry.get("status") == "applied":
        return None
    err = entry.get("error")
    err = err if isinstance(err, Mapping) else {}
    return str(err.get("code", "")), "", str(err.get("message", ""))


def item_outcomes(outcome: Outcome, updates: Sequence[StockUpdate]) -> list[Outcome]:
    """What ``outcome`` (a many-SKU stock call's) means for each of ``updates``, in their order.

    A call that is not done is not done for any figure. A done call whose answer lists results gives each
    figure its own (applied: ok; stale: done); a figure the answer names no result for is ``fatal`` (sending
    it again would be answered the same). A done answer without a list (a platform answering all or nothing)
    means the same for every figure.
    """
    if not outcome.done or outcome.items is None:
        return [outcome] * len(updates)
    by_key = {(item.sku, item.version): item for item in outcome.items}
    out = []
    for update in updates:
        item = by_key.get((update.sku, update.version))
        if item is None:
            missing = f"the answer has no result for {update.sku} version {update.version}"
            out.append(Outcome(OutcomeKind.FATAL, message=missing, http_status=outcome.http_status))
        else:
            out.append(Outcome(item.kind, item.error, item.code, item.message, outcome.http_status))
    return out


def _by_status(http_status: int, message: str) -> Outcome:
    if http_status == 429 or http_status >= 500:  # noqa: PLR2004 - rate limit and server faults by HTTP status
        kind = OutcomeKind.RETRIABLE
    elif http_status in (401, 403):  # authentication refused, by HTTP status
        kind = OutcomeKind.CREDENTIAL
    elif 200 <= http_status < 300:  # noqa: PLR2004 - a 2xx we cannot read: the call is idempotent, ask again
        kind = OutcomeKind.RETRIABLE
    else:
        kind = OutcomeKind.FATAL
    return Outcome(kind, message=message, http_status=http_status)
