"""Turning a channel's callback JSON into a stockflow event, by configuration, not code.

The channel file (``STOCKFLOW_CHANNELS_FILE``; unset, the sample in ``config/channels.toml`` beside
this module) says, per channel and per notification kind (order, payment, cancel, shipment,
delivery, wms_ack), where each stockflow field sits in that channel's JSON: a dotted path
(``receiver.province``); order lines are the list at ``lines``, each line's fields relative to the
line. Adding a channel that names its fields differently is a new section in that file.

Everything a notification needs is checked here, before anything is written: each refusal is an
``IntakeError`` with its ``Reason``, the offending field and a human detail.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from agents.routing.geo import locate
from streams.contract.keys import order_key
from streams.contract.reasons import Reason
from streams.errors import StockflowError
from streams.resources import packaged
from streams.settings import Settings

SAMPLE_CHANNELS = packaged("agents.intake", "config", "channels.toml")
SAMPLE_CATALOGUE = packaged("agents.intake", "config", "catalogue.toml")

KINDS = {
    "order": "OrderPlaced",
    "payment": "PaymentConfirmed",
    "cancel": "OrderCancelled",
    "shipment": "ShipmentDispatched",
    "delivery": "ShipmentDelivered",
    "wms_ack": "WmsAcknowledged",
}
REQUIRED = {
    "order": ("channel_order_id", "lines", "line_sku", "line_qty", "amount", "province", "city", "district"),
    "payment": ("channel_order_id", "payment_id", "amount"),
    "cancel": ("channel_order_id",),
    "shipment": ("channel_order_id", "warehouse_id"),
    "delivery": ("channel_order_id",),
    "wms_ack": ("channel_order_id", "warehouse_id"),
}
CHINA = timezone(timedelta(hours=8))
MAX_AMOUNT_FEN = 10_000_000_00  # ten million yuan: anything above is a broken payload


class IntakeError(StockflowError):
    """A notification intake refuses: answered with ``status`` and ``body()``, nothing written."""

    def __init__(self, reason: Reason, detail: str, field: str = "", status: int = 422) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.field, self.status = reason, detail, field, status

    def body(self) -> dict[str, str]:
        return {"error": str(self.reason), "field": self.field, "detail": self.detail}


@dataclass(frozen=True)
class OrderLimits:
    """How large an order intake accepts: ``STOCKFLOW_MAX_ORDER_LINES`` and ``STOCKFLOW_MAX_LINE_QTY``."""

    max_lines: int
    max_line_qty: int

    @classmethod
    def from_settings(cls, settings: Settings) -> OrderLimits:
        return cls(max_lines=settings.max_order_lines, max_line_qty=settings.max_line_qty)


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


@dataclass(frozen=True)
class ChannelMap:
    channel: str
    display_name: str
    amount_unit: str  # "yuan" or "fen"
    fields: dict[str, dict[str, str]]  # kind -> stockflow field -> JSON path

    def build(
        self, kind: str, body: Any, catalogue: Catalogue, limits: OrderLimits, now_ms: int
    ) -> tuple[str, dict[str, Any]]:
        """(event type, record) for one notification; ``IntakeError`` if it is not acceptable."""
        if kind not in KINDS or kind not in self.fields:
            raise IntakeError(Reason.UNKNOWN_EVENT_KIND, f"{self.channel} has no {kind!r} notification", status=404)
        if not isinstance(body, dict):
            raise IntakeError(Reason.NOT_AN_OBJECT, "the body must be a JSON object", status=400)
        paths = self.fields[kind]
        get = _Getter(body, paths)
        order_no = get.text("channel_order_id", required=True)
        order = order_key(self.channel, order_no)
        base = {"channel": self.channel, "channel_order_id": order_no,
                "event_time_ms": get.time("event_time") or now_ms}  # fmt: skip
        if kind == "order":
            return "OrderPlaced", self._order(get, body, paths, base, catalogue, limits)
        if kind == "payment":
            amount = self._amount(get.raw("amount", required=True), paths["amount"])
            return "PaymentConfirmed", {**base, "event_id": f"paid:{order}",
                                        "payment_id": get.text("payment_id", required=True),
                                        "amount_fen": amount, "balance": bool(get.raw("balance"))}  # fmt: skip
        if kind == "cancel":
            return "OrderCancelled", {**base, "event_id": f"cancel:{order}",
                                      "reason": get.text("reason") or "channel"}  # fmt: skip
        warehouse = get.text("warehouse_id", required=kind != "delivery")
        if kind == "shipment":
            tracking = get.text("tracking_no")
            return "ShipmentDispatched", {**base, "event_id": f"shipped:{order}:{warehouse}",
                                          "warehouse_id": warehouse, "tracking_no": tracking}  # fmt: skip
        if kind == "wms_ack":
            return "WmsAcknowledged", {**base, "event_id": f"wms-ack:{order}:{warehouse}",
                                       "warehouse_id": warehouse, "wms_order_id": get.text("wms_order_id")}  # fmt: skip
        return "ShipmentDelivered", {**base, "event_id": f"delivered:{order}"}

    def _order(self, get: _Getter, body: Any, paths: dict[str, str], base: dict[str, Any],
               catalogue: Catalogue, limits: OrderLimits) -> dict[str, Any]:  # fmt: skip
        items = dig(body, paths["lines"])
        if not isinstance(items, list) or not items:
            raise IntakeError(Reason.MISSING_FIELD, "an order needs at least one line", paths["lines"])
        if len(items) > limits.max_lines:
            raise IntakeError(Reason.INVALID_LINES, f"{len(items)} lines, at most {limits.max_lines}", paths["lines"])
        lines = []
        for i, item in enumerate(items):
            at = f"{paths['lines']}.{i}"
            line = _Getter(item, paths, prefix=at)
            sku = line.text("line_sku", required=True)
            if not catalogue.knows(sku):
                raise IntakeError(Reason.UNKNOWN_SKU, f"{sku!r} is not in the catalogue", f"{at}.{paths['line_sku']}")
            qty = line.integer("line_qty", required=True)
            if not 0 < qty <= limits.max_line_qty:
                raise IntakeError(Reason.INVALID_QTY, f"quantity {qty} is not in 1..{limits.max_line_qty}",
                                  f"{at}.{paths['line_qty']}")  # fmt: skip
            price = line.raw("line_price")
            line_no = line.integer("line_no") if paths.get("line_no") else i + 1
            lines.append({"line_no": line_no, "sku": sku, "qty": qty, "custom": False, "bundle": False,
                          "unit_price_fen": self._amount(price, paths.get("line_price", "")) if price is not None
                          else 0})  # fmt: skip
        if len({ln["line_no"] for ln in lines}) != len(lines):
            raise IntakeError(Reason.INVALID_LINES, "line numbers must be unique", paths.get("line_no", ""))
        address = {
            part: get.text(part, required=part != "detail") for part in ("province", "city", "district", "detail")
        }
        if locate(address["province"], address["city"]) is None:
            raise IntakeError(Reason.ADDRESS_UNPLACEABLE, f"province {address['province']!r} is not a known province",
                              paths["province"])  # fmt: skip
        order_no = base["channel_order_id"]
        return {**base, "event_id": f"placed:{order_key(self.channel, order_no)}",
                "customer_id": get.text("customer_id"), "lines": lines, "address": address,
                "amount_fen": self._amount(get.raw("amount", required=True), paths["amount"]),
                "coupon_type": get.text("coupon_type"), "presale": bool(get.raw("presale")),
                "vip": bool(get.raw("vip")), "sent_at_ms": int(get.raw("sent_at_ms") or 0)}  # fmt: skip

    def _amount(self, value: Any, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise IntakeError(Reason.INVALID_AMOUNT, f"amount must be a number, got {value!r}", field)
        try:
            amount = Decimal(str(value).strip())
        except InvalidOperation:
            raise IntakeError(Reason.INVALID_AMOUNT, f"amount must be a number, got {value!r}", field) from None
        fen = amount * 100 if self.amount_unit == "yuan" else amount
        if fen < 0:
            raise IntakeError(Reason.INVALID_AMOUNT, f"negative amount {value}", field)
        if fen != fen.to_integral_value() or fen > MAX_AMOUNT_FEN:
            raise IntakeError(Reason.INVALID_AMOUNT, f"amount {value} is not a whole number of fen, or absurd", field)
        return int(fen)


class _Getter:
    """Reads stockflow fields out of one JSON object through a channel's paths."""

    def __init__(self, body: Any, paths: dict[str, str], prefix: str = "") -> None:
        self.body, self.paths, self.prefix = body, paths, prefix

    def _where(self, name: str) -> str:
        path = self.paths.get(name, "")
        return f"{self.prefix}.{path}" if self.prefix else path

    def raw(self, name: str, required: bool = False) -> Any:
        path = self.paths.get(name, "")
        value = dig(self.body, path) if path else None
        if required and (value is None or (isinstance(value, str) and not value.strip())):
            reason = Reason.MISSING_FIELD if value is None else Reason.EMPTY_FIELD
            raise IntakeError(reason, f"{name} is required", self._where(name) or name)
        return value

    def text(self, name: str, required: bool = False) -> str:
        value = self.raw(name, required)
        if value is None:
            return ""
        if isinstance(value, (dict, list, bool)):
            raise IntakeError(
                Reason.INVALID_FIELD_TYPE, f"{name} must be text, got {type(value).__name__}", self._where(name)
            )
        return str(value).strip()

    def integer(self, name: str, required: bool = False) -> int:
        value = self.raw(name, required)
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
            raise IntakeError(
                Reason.INVALID_FIELD_TYPE, f"{name} must be a whole number, got {value!r}", self._where(name)
            )
        return int(value)

    def time(self, name: str) -> int:
        value = self.raw(name)
        if value is None or value == "":
            return 0
        if isinstance(value, int) and not isinstance(value, bool):
            return value if value > 10**11 else value * 1000  # seconds or milliseconds since the epoch
        try:
            return int(datetime.strptime(str(value), "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA).timestamp() * 1000)
        except ValueError:
            raise IntakeError(
                Reason.INVALID_FIELD_TYPE, f"{name}: {value!r} is not a time", self._where(name)
            ) from None


def load_channels(path: Path | None, known: tuple[str, ...]) -> dict[str, ChannelMap]:
    """Every configured channel (None: the six stockflow ships); a channel or kind missing a required
    path is a start-up error."""
    path = path or SAMPLE_CHANNELS
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    out = {}
    for channel, section in data.items():
        if channel not in known:
            raise ValueError(f"{path}: channel {channel!r} is not in STOCKFLOW_CHANNELS {known}")
        fields = {kind: dict(v) for kind, v in section.items() if isinstance(v, dict)}
        for kind, paths in fields.items():
            if kind not in KINDS:
                raise ValueError(f"{path}: [{channel}.{kind}] is not one of {sorted(KINDS)}")
            missing = [f for f in REQUIRED[kind] if not paths.get(f)]
            if missing:
                raise ValueError(f"{path}: [{channel}.{kind}] needs paths for {missing}")
        unit = section.get("amount_unit", "yuan")
        if unit not in ("yuan", "fen"):
            raise ValueError(f"{path}: {channel}.amount_unit must be 'yuan' or 'fen'")
        out[channel] = ChannelMap(channel, section.get("display_name", channel), unit, fields)
    return out
