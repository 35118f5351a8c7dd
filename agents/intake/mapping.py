"""Turning a channel's callback JSON into a stockflow event, by configuration, not code.

The channel file (``STOCKFLOW_CHANNELS_FILE``; unset, the sample in ``config/channels.toml`` beside
this module) says, per channel and per notification kind (order, payment, cancel, shipment,
delivery, wms_ack), where each stockflow field sits in that channel's JSON: a dotted path
(``receiver.province``); order lines are the list at ``lines``, each line's fields relative to the
line. Adding a channel that names its fields differently is a new section in that file.

From those paths each (channel, kind) gets a pydantic model (``ChannelMap.parser``, built with
``pydantic.create_model``): every path becomes a field, dotted paths nested objects, ``lines`` a
list of line models, each field typed by what the stockflow field is (``agents.intake.fields``:
text, SKU, whole number, amount, flag, time). A body is parsed by its model in JSON mode, so no
value of any JSON type can get past it unchecked; the checks that need more than one field or
outside knowledge (the catalogue, unique line numbers, a placeable address) follow. Every refusal
is an ``IntakeError`` with its ``Reason``, the JSON path of the offending field and a human detail.
The same models describe the bodies in the intake's OpenAPI document. Nothing is written here.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import tomllib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, Field, create_model

from agents.intake.fields import (
    BODY_CONFIG,
    ID_MAX,
    TEXT_MAX,
    IntakeError,
    Parser,
    Role,
    amount,
    choice,
    epoch_ms,
    flag,
    moment,
    sku,
    text,
    whole,
)
from agents.routing.geo import locate
from streams.contract.keys import order_key
from streams.contract.reasons import Reason
from streams.contract.topics import ORDER_EVENTS, REFUND_EVENTS
from streams.resources import packaged
from streams.settings import Settings

__all__ = [
    "Catalogue",
    "ChannelMap",
    "IntakeError",
    "Mapped",
    "OrderLimits",
    "dig",
    "load_channels",
    "service_map",
    "wms_map",
]

SAMPLE_CHANNELS = packaged("agents.intake", "config", "channels.toml")
SAMPLE_CATALOGUE = packaged("agents.intake", "config", "catalogue.toml")

# Every notification kind intake reads, and the event it becomes. The order's kinds go to
# ``order.events``, the refund's to ``refund.events``; both keyed by order id.
KINDS = {
    "order": "OrderPlaced",
    "payment": "PaymentConfirmed",
    "cancel": "OrderCancelled",
    "shipment": "ShipmentDispatched",
    "delivery": "ShipmentDelivered",
    "wms_ack": "WmsAcknowledged",
    "refund": "RefundRequested",
    "return_shipped": "ReturnShipped",
    "refund_settled": "RefundSettled",
    "refund_cancelled": "RefundCancelled",
    "return_received": "ReturnReceived",
    "refund_review": "RefundReviewed",
}
REFUND_KINDS = frozenset({"refund", "return_shipped", "refund_settled", "refund_cancelled", "return_received",
                          "refund_review"})  # fmt: skip
LINE_FIELDS = ("line_no", "line_sku", "line_qty", "line_price")
FIELDS = {
    "order": ("channel_order_id", "event_time", "customer_id", "lines", *LINE_FIELDS, "amount", "province", "city",
              "district", "detail", "presale", "vip", "coupon_type", "sent_at_ms"),
    "payment": ("channel_order_id", "event_time", "payment_id", "amount", "balance"),
    "cancel": ("channel_order_id", "event_time", "reason"),
    "shipment": ("channel_order_id", "event_time", "warehouse_id", "tracking_no"),
    "delivery": ("channel_order_id", "event_time"),
    "wms_ack": ("channel_order_id", "event_time", "warehouse_id", "wms_order_id"),
    "refund": ("channel_order_id", "channel_refund_id", "event_time", "return_goods", "amount", "reason", "lines",
               "line_no", "line_sku", "line_qty", "tracking_no", "sent_at_ms"),
    "return_shipped": ("channel_order_id", "channel_refund_id", "event_time", "tracking_no", "carrier"),
    "refund_settled": ("channel_order_id", "channel_refund_id", "event_time", "amount", "settlement_id"),
    "refund_cancelled": ("channel_order_id", "channel_refund_id", "event_time", "by", "reason"),
    "return_received": ("channel_order_id", "channel_refund_id", "event_time", "warehouse_id", "qc_done",
                        "resellable", "qc_note"),
    "refund_review": ("channel_order_id", "channel_refund_id", "event_time", "approved", "reviewer", "note"),
}  # fmt: skip
REQUIRED = {
    "order": ("channel_order_id", "lines", "amount", "province", "city", "district"),
    "payment": ("channel_order_id", "payment_id", "amount"),
    "cancel": ("channel_order_id",),
    "shipment": ("channel_order_id", "warehouse_id"),
    "delivery": ("channel_order_id",),
    "wms_ack": ("channel_order_id", "warehouse_id"),
    "refund": ("channel_order_id", "channel_refund_id", "return_goods", "amount"),
    "return_shipped": ("channel_order_id", "channel_refund_id", "tracking_no"),
    "refund_settled": ("channel_order_id", "channel_refund_id", "amount"),
    "refund_cancelled": ("channel_order_id", "channel_refund_id"),
    "return_received": ("channel_order_id", "channel_refund_id", "warehouse_id"),
    "refund_review": ("channel_order_id", "channel_refund_id", "approved", "reviewer"),
}
# What every line must carry, in the kinds that have lines (a refund's lines are optional: none is
# the whole order; those it lists name the order line they take back).
LINE_REQUIRED = {"order": ("line_sku", "line_qty"), "refund": ("line_no", "line_qty")}
KIND_TITLES = {"order": "Order", "payment": "Payment", "cancel": "Cancel", "shipment": "Shipment",
               "delivery": "Delivery", "wms_ack": "Ack", "refund": "Refund", "return_shipped": "ReturnShipped",
               "refund_settled": "RefundSettled", "refund_cancelled": "RefundCancelled",
               "return_received": "ReturnReceived", "refund_review": "RefundReview"}  # fmt: skip
FLAGS = ("presale", "vip", "balance", "return_goods", "qc_done", "resellable", "approved")
TIMES = ("event_time", "sent_at_ms")
LONG_TEXTS = ("detail", "reason", "note", "qc_note")
KIND_SETTINGS = ("amount_unit",)  # a kind's table may set these besides its paths
# ``<flag>_when``, also beside the paths: the flag's channel says it with a status (a string or number)
# rather than true/false, and these are the values that mean true; any other, or none, is false.
WHEN = "_when"
MAX_AMOUNT_FEN = 10_000_000_00  # ten million yuan: anything above is a broken payload
MAX_LINE_NO = 99_999
MEANINGS = {
    "channel_order_id": "the channel's order id (with the channel, the stockflow order id)",
    "event_time": "when it happened at the channel (absent: when intake received it)",
    "customer_id": "the buyer's id at the channel",
    "lines": "the order lines, at least one (a refund: the lines it takes back; none: the whole order)",
    "line_no": "the line's number, unique in the order (an order's, absent: its position from 1)",
    "line_sku": "the SKU the line sells, as the shop's catalogue names it",
    "line_qty": "units",
    "line_price": "unit price",
    "amount": "amount paid (a refund: the amount asked back, at most the order's)",
    "province": "the delivery address's province",
    "city": "the delivery address's city",
    "district": "the delivery address's district",
    "detail": "street and building",
    "presale": "a presale order (deposit now, balance later)",
    "vip": "a key-account order",
    "coupon_type": "the coupon used, if any",
    "sent_at_ms": "when the channel sent this notification",
    "payment_id": "the payment's id at the channel or payment provider",
    "balance": "the balance payment of a presale order (its deposit is a payment of its own)",
    "reason": "why (a cancel; a refund: the buyer's reason, 'no_reason_7d' for the 7-day no-reason return)",
    "warehouse_id": "the warehouse, as the routing configuration names it",
    "tracking_no": "the carrier's tracking number",
    "wms_order_id": "the WMS's own id for the order",
    "channel": "the channel the order came from",
    "channel_refund_id": "the channel's refund (after-sale) id; with the channel, the stockflow refund id",
    "return_goods": "the buyer sends the goods back first (false: refund only, nothing comes back)",
    "carrier": "the carrier of the return",
    "settlement_id": "the marketplace's id of the settlement",
    "by": "who withdrew it: buyer (the default) or platform",
    "qc_done": "QC is done (false: received, QC still to do; a second notice gives the result)",
    "resellable": "QC found the units fit to sell again: they go back on hand at this warehouse",
    "qc_note": "what QC found",
    "approved": "customer service approved the refund",
    "reviewer": "who decided",
    "note": "why",
}
# A retried callback is re-sent later: when it was sent is not part of what it says.
VOLATILE = ("sent_at_ms",)

# How the WMS (and customer service) post to their own routes: stockflow's field names, the channel
# named in the body.
_BY_NAME = {"channel": "channel", "channel_order_id": "channel_order_id", "event_time": "event_time_ms"}
WMS_PATHS: dict[str, dict[str, str]] = {
    "wms_ack": {**_BY_NAME, "warehouse_id": "warehouse_id", "wms_order_id": "wms_order_id"},
    "shipment": {**_BY_NAME, "warehouse_id": "warehouse_id", "tracking_no": "tracking_no"},
    "delivery": dict(_BY_NAME),
    "return_received": {**_BY_NAME, **{f: f for f in ("channel_refund_id", "warehouse_id", "qc_done", "resellable",
                                                      "qc_note")}},
}  # fmt: skip
SERVICE_PATHS: dict[str, dict[str, str]] = {
    "refund_review": {**_BY_NAME, **{f: f for f in ("channel_refund_id", "approved", "reviewer", "note")}},
}


@dataclass(frozen=True)
class OrderLimits:
    """What intake accepts: order size (``STOCKFLOW_MAX_ORDER_LINES``, ``STOCKFLOW_MAX_LINE_QTY``) and the
    time window (``STOCKFLOW_INTAKE_MAX_EVENT_AGE_S``, ``STOCKFLOW_INTAKE_MAX_FUTURE_S``)."""

    max_lines: int
    max_line_qty: int
    max_event_age_ms: int = 30 * 86_400_000
    max_future_ms: int = 300_000

    @classmethod
    def from_settings(cls, settings: Settings) -> OrderLimits:
        return cls(max_lines=settings.max_order_lines, max_line_qty=settings.max_line_qty,
                   max_event_age_ms=int(settings.intake_max_event_age_s * 1000),
                   max_future_ms=int(settings.intake_max_future_s * 1000))  # fmt: skip

    def window(self, now_ms: int) -> dict[str, int]:
        """The validation context the time fields check against."""
        return {"now_ms": now_ms, "max_age_ms": self.max_event_age_ms, "max_future_ms": self.max_future_ms}


@dataclass(frozen=True)
class Catalogue:
    """SKU patterns intake accepts (fnmatch); empty: every SKU (the pool still refuses unknown ones)."""

    patterns: tuple[str, ...] = ()

    @classmethod
    def load(cls, path: Path | None) -> Catalogue:
        path = path or SAMPLE_CATALOGUE
        with open(path, "rb") as fh:
            return cls(tuple(tomllib.load(fh).get("skus", [])))

    def knows(self, sku: str) -> bool:
        return not self.patterns or any(fnmatch.fnmatchcase(sku, p) for p in self.patterns)


@dataclass(frozen=True)
class Mapped:
    """An accepted request: what to write where, and what it is the same as. Two requests with one
    ``identity`` are one request repeated when their ``digest`` (a digest of what they say) agrees,
    and a conflicting duplicate when it does not."""

    event_type: str
    record: dict[str, Any]
    topic: str
    key: str
    identity: str
    digest: bytes


def content_digest(record: Mapping[str, Any], volatile: Iterable[str] = VOLATILE) -> bytes:
    """A digest of ``record`` without its ``volatile`` fields."""
    skip = set(volatile)
    kept = {k: v for k, v in record.items() if k not in skip}
    return hashlib.blake2b(orjson.dumps(kept, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


def dig(body: Any, path: str) -> Any:
    """The value at a dotted path, or None."""
    node = body
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


Tree = dict[str, Any]  # JSON key -> a subtree, or the stockflow field found there


def _tree(paths: Mapping[str, str], names: Iterable[str], where: str) -> Tree:
    """The configured paths of ``names`` as a tree of JSON keys; a clash is a configuration error."""
    tree: Tree = {}
    for name in names:
        path = paths.get(name)
        if not path:
            continue
        parts = path.split(".")
        if any(not part or part.isdigit() for part in parts):
            raise ValueError(f"{where}: {name} = {path!r}: a path is object keys separated by dots")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{where}: {name} = {path!r} runs through another field")
        if parts[-1] in node:
            raise ValueError(f"{where}: {name} = {path!r} is also another field's path")
        node[parts[-1]] = name
    return tree


def _needed(tree: Tree, required: Collection[str]) -> bool:
    return any(_needed(sub, required) if isinstance(sub, dict) else sub in required for sub in tree.values())


@dataclass(frozen=True)
class _Generation:
    """What generating one (channel, kind)'s models needs, and the roles it finds on the way."""

    kind: str
    limits: OrderLimits
    required: frozenset[str]
    roles: dict[tuple[str, ...], Role]
    special: dict[str, Role]  # fields whose role is built beforehand (the lines)


@dataclass(frozen=True)
class ChannelMap:
    channel: str
    display_name: str
    amount_unit: str  # "yuan" or "fen"
    fields: dict[str, dict[str, str]]  # kind -> stockflow field -> JSON path
    channels: tuple[str, ...] = ()  # the WMS's and customer service's maps: the channels a body may name
    units: dict[str, str] = field(default_factory=dict)  # kind -> its own amount unit, where it differs
    when: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)  # kind -> flag -> values meaning true
    _parsers: dict[tuple[str, OrderLimits], Parser] = field(default_factory=dict, compare=False, repr=False)

    @property
    def title(self) -> str:
        return self.channel.replace("-", "_").title().replace("_", "")

    def unit(self, kind: str) -> str:
        return self.units.get(kind, self.amount_unit)

    def truth(self, kind: str, name: str, said: Any) -> bool:
        """Whether flag ``name`` of a ``kind`` body is set, ``said`` being what the body has at its path
        (parsed; None when absent)."""
        meaning_true = self.when.get(kind, {}).get(name)
        return bool(said) if meaning_true is None else said in meaning_true

    def parser(self, kind: str, limits: OrderLimits) -> Parser:
        """The model a ``kind`` body of this channel is parsed with (generated once per limits)."""
        cached = self._parsers.get((kind, limits))
        if cached is None:
            cached = self._parsers[(kind, limits)] = self._generate(kind, limits)
        return cached

    def _role(self, kind: str, name: str, required: bool, limits: OrderLimits) -> Role:
        if name == "line_sku":
            return sku(name)
        if name == "line_qty":
            return whole(name, 1, limits.max_line_qty, Reason.INVALID_QTY)
        if name == "line_no":
            return whole(name, 1, MAX_LINE_NO, Reason.INVALID_LINES)
        if name in ("amount", "line_price"):
            return amount(name, self.unit(kind), MAX_AMOUNT_FEN)
        if name in self.when.get(kind, {}):
            return text(name, required)
        if name in FLAGS:
            return flag(name)
        if name in TIMES:
            return moment(name)
        if name == "channel":
            return choice(name, self.channels, Reason.UNKNOWN_CHANNEL)
        return text(name, required, TEXT_MAX if name in LONG_TEXTS else ID_MAX)

    def _generate(self, kind: str, limits: OrderLimits) -> Parser:
        paths = self.fields[kind]
        required = set(REQUIRED[kind]) | set(LINE_REQUIRED.get(kind, ())) | ({"channel"} if self.channels else set())
        gen = _Generation(kind, limits, frozenset(required), {}, {})
        name = f"{self.title}{KIND_TITLES[kind]}"
        if paths.get("lines"):
            line_gen = _Generation(kind, limits, gen.required, {}, {})
            line = self._model(line_gen, f"{name}Line", _tree(paths, LINE_FIELDS, name), ())
            at = tuple(paths["lines"].split("."))
            gen.roles.update({(*at, "*", *loc): role for loc, role in line_gen.roles.items()})
            gen.roles[(*at, "*")] = Role("line", dict)
            least = 1 if "lines" in REQUIRED[kind] else 0
            lines_type = Annotated[list[line], Field(min_length=least, max_length=limits.max_lines)]  # type: ignore[valid-type]
            gen.special["lines"] = Role("lines", lines_type, range_reason=Reason.INVALID_LINES,
                                        overrides={"too_short": Reason.MISSING_FIELD})  # fmt: skip
        names = [n for n in paths if n not in LINE_FIELDS]
        model = self._model(gen, name, _tree(paths, names, name), ())
        return Parser(model, gen.roles)

    def _model(self, gen: _Generation, name: str, tree: Tree, at: tuple[str, ...]) -> type[BaseModel]:
        definitions: dict[str, Any] = {}
        for i, (key, sub) in enumerate(tree.items()):
            loc = (*at, key)
            if isinstance(sub, dict):
                annotation: Any = self._model(gen, f"{name}_{key}", sub, loc)
                gen.roles[loc] = Role(key, dict)
                needed = _needed(sub, gen.required)
            else:
                role = gen.special.get(sub) or self._role(gen.kind, sub, sub in gen.required, gen.limits)
                gen.roles[loc] = role
                annotation, needed = role.annotation, sub in gen.required
            # Field names are positional: JSON keys need not be Python identifiers; the alias is the key.
            about = (
                {"title": key} if isinstance(sub, dict) else {"title": sub, "description": self._meaning(gen.kind, sub)}
            )
            if needed:
                definitions[f"f{i}"] = (annotation, Field(alias=key, **about))
            else:
                definitions[f"f{i}"] = (annotation | None, Field(None, alias=key, **about))
        model: type[BaseModel] = create_model(name, __config__=BODY_CONFIG, **definitions)
        return model

    def _meaning(self, kind: str, name: str) -> str | None:
        meaning_true = self.when.get(kind, {}).get(name)
        if meaning_true is None:
            return MEANINGS.get(name)
        return f"{MEANINGS.get(name, name)}: true when it is {' or '.join(json.dumps(v) for v in sorted(meaning_true))}"

    def build(self, kind: str, body: Any, catalogue: Catalogue, limits: OrderLimits, now_ms: int) -> Mapped:
        """What to write for one notification (``body``: the raw JSON bytes, or any other value to be
        encoded as JSON); ``IntakeError`` if it is not acceptable."""
        if kind not in KINDS or kind not in self.fields:
            raise IntakeError(Reason.UNKNOWN_EVENT_KIND, f"{self.channel} has no {kind!r} notification", status=404)
        raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False)
        data = self.parser(kind, limits).parse(raw, limits.window(now_ms))
        paths = self.fields[kind]

        def value(name: str) -> Any:
            return dig(data, paths[name]) if paths.get(name) else None

        channel = value("channel") or self.channel
        order = order_key(channel, value("channel_order_id"))
        given = value("event_time")
        base = {"channel": channel, "channel_order_id": value("channel_order_id"),
                "event_time_ms": epoch_ms(given) if given is not None else now_ms}  # fmt: skip
        # A callback that names no time of its own is stamped on arrival: a retry's stamp differs.
        volatile = VOLATILE if given is not None else (*VOLATILE, "event_time_ms")
        if kind == "order":
            record = self._order(data, paths, base, catalogue)
        elif kind in REFUND_KINDS:
            record = self._refund(kind, data, paths, base)
        elif kind == "payment":
            balance = self.truth(kind, "balance", value("balance"))
            # A presale's balance is a second payment of the same order: an event of its own.
            record = {**base, "event_id": f"paid:{order}:balance" if balance else f"paid:{order}",
                      "payment_id": value("payment_id"), "amount_fen": self._fen(kind, value("amount")),
                      "balance": balance}  # fmt: skip
        elif kind == "cancel":
            record = {**base, "event_id": f"cancel:{order}", "reason": value("reason") or "channel"}
        elif kind == "shipment":
            warehouse = value("warehouse_id")
            record = {**base, "event_id": f"shipped:{order}:{warehouse}", "warehouse_id": warehouse,
                      "tracking_no": value("tracking_no") or ""}  # fmt: skip
        elif kind == "wms_ack":
            warehouse = value("warehouse_id")
            record = {**base, "event_id": f"wms-ack:{order}:{warehouse}", "warehouse_id": warehouse,
                      "wms_order_id": value("wms_order_id") or ""}  # fmt: skip
        else:
            record = {**base, "event_id": f"delivered:{order}"}
        digest = content_digest(record, volatile)
        topic = REFUND_EVENTS.name if kind in REFUND_KINDS else ORDER_EVENTS.name
        return Mapped(KINDS[kind], record, topic, order, record["event_id"], digest)

    def _lines(self, kind: str, data: dict[str, Any], paths: dict[str, str],
               catalogue: Catalogue | None) -> list[dict[str, Any]]:  # fmt: skip
        """The body's lines: line numbers unique, an order's SKUs in the catalogue."""
        lines, numbers = [], dict[int, int]()
        for i, item in enumerate(dig(data, paths["lines"]) or () if paths.get("lines") else ()):

            def value(name: str, node: Any = item) -> Any:
                return dig(node, paths[name]) if paths.get(name) else None

            at = f"{paths['lines']}.{i}"
            line_sku = value("line_sku") or ""
            if catalogue is not None and not catalogue.knows(line_sku):
                raise IntakeError(Reason.UNKNOWN_SKU, f"{line_sku!r} is not in the catalogue",
                                  f"{at}.{paths['line_sku']}")  # fmt: skip
            line_no = value("line_no") or i + 1
            if line_no in numbers:
                raise IntakeError(Reason.INVALID_LINES, f"line number {line_no} repeats line {numbers[line_no]}",
                                  f"{at}.{paths.get('line_no', '')}".rstrip("."))  # fmt: skip
            numbers[line_no] = i
            line = {"line_no": line_no, "sku": line_sku, "qty": value("line_qty")}
            if kind == "order":
                price = value("line_price")
                line |= {"custom": False, "bundle": False,
                         "unit_price_fen": self._fen(kind, price) if price is not None else 0}  # fmt: skip
            lines.append(line)
        return lines

    def _order(self, data: dict[str, Any], paths: dict[str, str], base: dict[str, Any],
               catalogue: Catalogue) -> dict[str, Any]:  # fmt: skip
        def value(name: str) -> Any:
            return dig(data, paths[name]) if paths.get(name) else None

        lines = self._lines("order", data, paths, catalogue)
        address = {part: value(part) or "" for part in ("province", "city", "district", "detail")}
        if locate(address["province"], address["city"]) is None:
            raise IntakeError(Reason.ADDRESS_UNPLACEABLE, f"province {address['province']!r} is not a known province",
                              paths["province"])  # fmt: skip
        sent = value("sent_at_ms")
        return {**base, "event_id": f"placed:{order_key(base['channel'], base['channel_order_id'])}",
                "customer_id": value("customer_id") or "", "lines": lines, "address": address,
                "amount_fen": self._fen("order", value("amount")), "coupon_type": value("coupon_type") or "",
                "presale": self.truth("order", "presale", value("presale")),
                "vip": self.truth("order", "vip", value("vip")),
                "sent_at_ms": epoch_ms(sent) if sent is not None else 0}  # fmt: skip

    def _refund(self, kind: str, data: dict[str, Any], paths: dict[str, str], base: dict[str, Any]) -> dict[str, Any]:
        """A refund notification; its event id is the refund id and the step, as every refund producer names it."""

        def value(name: str) -> Any:
            return dig(data, paths[name]) if paths.get(name) else None

        refund_no = value("channel_refund_id")
        refund = f"{base['channel']}:{refund_no}"
        base = {**base, "channel_refund_id": refund_no}
        if kind == "refund":
            asked = self._fen(kind, value("amount"))
            if asked <= 0:
                raise IntakeError(Reason.INVALID_AMOUNT, "a refund asks for more than nothing", paths["amount"])
            sent = value("sent_at_ms")
            return {**base, "event_id": f"refund:{refund}", "amount_fen": asked,
                    "kind": "RETURN_AND_REFUND" if self.truth(kind, "return_goods", value("return_goods"))
                    else "REFUND_ONLY",
                    "reason": value("reason") or "", "lines": self._lines(kind, data, paths, None),
                    "tracking_no": value("tracking_no") or "", "sent_at_ms": epoch_ms(sent) if sent else 0}  # fmt: skip
        if kind == "return_shipped":
            return {**base, "event_id": f"return-shipped:{refund}", "tracking_no": value("tracking_no"),
                    "carrier": value("carrier") or ""}  # fmt: skip
        if kind == "refund_settled":
            return {**base, "event_id": f"settled:{refund}", "amount_fen": self._fen(kind, value("amount")),
                    "settlement_id": value("settlement_id") or ""}  # fmt: skip
        if kind == "refund_cancelled":
            return {**base, "event_id": f"refund-cancelled:{refund}", "by": value("by") or "buyer",
                    "reason": value("reason") or ""}  # fmt: skip
        if kind == "return_received":
            qc_said = value("qc_done")
            qc_done = qc_said is None or self.truth(kind, "qc_done", qc_said)  # absent: received and checked in one go
            return {**base, "event_id": f"return-{'qc' if qc_done else 'received'}:{refund}",
                    "warehouse_id": value("warehouse_id"), "qc_done": qc_done,
                    "resellable": self.truth(kind, "resellable", value("resellable")),
                    "qc_note": value("qc_note") or ""}  # fmt: skip
        return {**base, "event_id": f"reviewed:{refund}", "approved": self.truth(kind, "approved", value("approved")),
                "reviewer": value("reviewer"), "note": value("note") or ""}  # fmt: skip

    def _fen(self, kind: str, value: Decimal) -> int:
        return int(value * 100) if self.unit(kind) == "yuan" else int(value)


def wms_map(channels: Iterable[str]) -> ChannelMap:
    """The WMS's routes as a channel of their own: stockflow's field names, the channel in the body."""
    return ChannelMap("wms", "WMS", "fen", {kind: dict(p) for kind, p in WMS_PATHS.items()}, tuple(channels))


def service_map(channels: Iterable[str]) -> ChannelMap:
    """Customer service's route (refund reviews), like the WMS's: stockflow's names, the channel in the body."""
    paths = {kind: dict(p) for kind, p in SERVICE_PATHS.items()}
    return ChannelMap("service", "Customer service", "fen", paths, tuple(channels))


def load_channels(path: Path | None, known: tuple[str, ...]) -> dict[str, ChannelMap]:
    """Every configured channel (None: the six stockflow ships); a channel or kind missing a required
    path, naming a field stockflow does not know, or two fields at one path is a start-up error."""
    path = path or SAMPLE_CHANNELS
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    out = {}
    for channel, section in data.items():
        if channel not in known:
            raise ValueError(f"{path}: channel {channel!r} is not in STOCKFLOW_CHANNELS {known}")
        unknown_keys = sorted(k for k, v in section.items() if not isinstance(v, dict)
                              and k not in ("display_name", "amount_unit"))  # fmt: skip
        if unknown_keys:
            raise ValueError(f"{path}: [{channel}] has unknown settings {unknown_keys}")
        fields = {kind: _kind_paths(f"{path}: [{channel}.{kind}]", kind, table)
                  for kind, table in section.items() if isinstance(table, dict)}  # fmt: skip
        units = {kind: section[kind]["amount_unit"] for kind in fields if "amount_unit" in section[kind]}
        when = {kind: _kind_when(f"{path}: [{channel}.{kind}]", section[kind], paths) for kind, paths in fields.items()}
        unit = section.get("amount_unit", "yuan")
        for name, value in (("amount_unit", unit), *((f"{k}.amount_unit", u) for k, u in units.items())):
            if value not in ("yuan", "fen"):
                raise ValueError(f"{path}: {channel}.{name} must be 'yuan' or 'fen'")
        out[channel] = ChannelMap(channel, section.get("display_name", channel), unit, fields, units=units,
                                  when={kind: flags for kind, flags in when.items() if flags})  # fmt: skip
    return out


def _kind_paths(where: str, kind: str, table: Mapping[str, Any]) -> dict[str, str]:
    """A kind's table of paths, checked: every required path there, no field stockflow does not read,
    no two fields at one path."""
    if kind not in KINDS:
        raise ValueError(f"{where} is not one of {sorted(KINDS)}")
    paths = {k: v for k, v in table.items() if k not in KIND_SETTINGS and not k.endswith(WHEN)}
    missing = [f for f in REQUIRED[kind] if not paths.get(f)]
    if paths.get("lines"):
        missing += [f for f in LINE_REQUIRED.get(kind, ()) if not paths.get(f)]
    if missing:
        raise ValueError(f"{where} needs paths for {missing}")
    strangers = sorted(set(paths) - set(FIELDS[kind]))
    if strangers:
        raise ValueError(f"{where} names fields stockflow does not read: {strangers}")
    if not all(isinstance(p, str) for p in paths.values()):
        raise ValueError(f"{where}: every path is a string")
    _tree(paths, [n for n in paths if n not in LINE_FIELDS], where)
    _tree(paths, LINE_FIELDS, where)
    return paths


def _kind_when(where: str, table: Mapping[str, Any], paths: Mapping[str, str]) -> dict[str, frozenset[str]]:
    """A kind's ``<flag>_when`` settings, checked: a flag with a path, and values a status can have."""
    out = {}
    for key, values in table.items():
        if not key.endswith(WHEN):
            continue
        name = key.removesuffix(WHEN)
        if name not in FLAGS:
            raise ValueError(f"{where}: {key}: {name} is not a flag ({', '.join(FLAGS)})")
        if not paths.get(name):
            raise ValueError(f"{where}: {key} needs a path for {name}")
        # TOML's true would read as "True", which no channel sends: only text and whole numbers are statuses.
        if not (isinstance(values, list) and values
                and all(isinstance(v, str | int) and not isinstance(v, bool) for v in values)):  # fmt: skip
            raise ValueError(f"{where}: {key} must list the values (strings or whole numbers) that mean {name}")
        out[name] = frozenset(str(v).strip() for v in values)
    return out
