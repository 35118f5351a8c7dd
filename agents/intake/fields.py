"""The field types the intake parses bodies with, and how a failed parse becomes a refusal.

Every body the intake accepts is parsed by a pydantic model (generated from the channel mapping in
``agents.intake.mapping``, or ``agents.intake.stock.StockDocument``); this module holds the one set
of field types those models are built from - a ``Role`` per kind of field: text, SKU, whole number,
amount, flag, time, choice - and turns a ``pydantic.ValidationError`` into an ``IntakeError`` with
the ``Reason``, the JSON path of the offending field and a human detail. Nothing here reads or
writes anything.

What the types accept (the intake's documented leniency):

- whole numbers (quantities, line numbers): a JSON integer, or a string of ASCII digits (``"2"``:
  several marketplaces send every number as a string). Refused: ``true``, ``2.0``, ``"2.5"``,
  ``"+2"``, ``"²"``, ``"1e3"``;
- amounts: a JSON number or a decimal string, finite, not negative, no finer than a fen;
- flags: ``true``/``false``, ``0``/``1``, and the strings ``"true"``, ``"false"``, ``"0"``, ``"1"``,
  ``"yes"``, ``"no"``, ``"on"``, ``"off"`` (so ``"false"`` and ``"0"`` read as false);
- times: epoch seconds or milliseconds (number or digit string), or ISO 8601 / ``YYYY-MM-DD
  HH:MM:SS`` (without an offset: China time), inside the window the settings allow;
- text: trimmed; a number is taken as its text (order ids are often numbers).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    create_model,
)
from pydantic_core import PydanticCustomError

from streams.contract.keys import BUCKET_MARK
from streams.contract.reasons import Reason
from streams.errors import StockflowError

CHINA = timezone(timedelta(hours=8))
ID_MAX = 128  # order, payment, warehouse, tracking ids
TEXT_MAX = 1024  # free text: address detail, cancel reason
SKU_MAX = 64
SKU_PATTERN = rf"^[^\s\x00-\x1f\x7f{BUCKET_MARK}]+$"
SHOWN_MAX = 60  # how much of an offending value a refusal quotes
DIGITS_MAX = 30  # a longer digit string is no quantity; never hand it to int()
# Channels send far more than stockflow reads: unknown keys are ignored, numbers may stand for text.
BODY_CONFIG = ConfigDict(extra="ignore", coerce_numbers_to_str=True, populate_by_name=False)
# Pydantic error types that mean "not this kind of value" rather than "a value out of bounds".
_TYPE_ERRORS = ("_type", "_parsing", "int_from_float", "value_error")


class IntakeError(StockflowError):
    """A request intake refuses: answered with ``status`` and ``body()``, nothing written."""

    def __init__(self, reason: Reason, detail: str, field: str = "", status: int = 422) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.field, self.status = reason, detail, field, status

    def body(self) -> dict[str, str]:
        return {"error": str(self.reason), "field": self.field, "detail": self.detail}


@dataclass(frozen=True)
class Role:
    """One kind of field: its pydantic type, and the reason for each way a value can fail it."""

    label: str  # what the field is, for the refusal's detail
    annotation: Any
    type_reason: Reason = Reason.INVALID_FIELD_TYPE  # the value is not of the field's kind
    range_reason: Reason = Reason.INVALID_FIELD_TYPE  # of the right kind, outside its bounds
    overrides: Mapping[str, Reason] = field(default_factory=dict)  # pydantic error type -> reason
    messages: Mapping[str, str] = field(default_factory=dict)  # pydantic error type -> a plainer message

    def reason(self, error_type: str, value_is_null: bool) -> Reason:
        if error_type in self.overrides:
            return self.overrides[error_type]
        if error_type == "missing" or value_is_null:
            return Reason.MISSING_FIELD
        if error_type == "string_too_short":
            return Reason.EMPTY_FIELD
        if error_type.endswith(_TYPE_ERRORS):
            return self.type_reason
        return self.range_reason


def _digits(value: Any) -> Any:
    """A string of ASCII digits as the integer it spells; anything else for the strict check to judge."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.isascii() and stripped.isdigit() and len(stripped) <= DIGITS_MAX:
            return int(stripped)
    return value


def text(label: str, required: bool, max_length: int = ID_MAX) -> Role:
    constraints = StringConstraints(strip_whitespace=True, min_length=1 if required else 0, max_length=max_length)
    return Role(label, Annotated[str, constraints], range_reason=Reason.FIELD_TOO_LONG)


def sku(label: str) -> Role:
    constraints = StringConstraints(strip_whitespace=True, min_length=1, max_length=SKU_MAX, pattern=SKU_PATTERN)
    plain = {"string_pattern_mismatch": f"a SKU has no whitespace, control characters or {BUCKET_MARK!r}"}
    return Role(label, Annotated[str, constraints], range_reason=Reason.INVALID_SKU, messages=plain)


def whole(label: str, low: int, high: int, range_reason: Reason) -> Role:
    schema = {"anyOf": [{"type": "integer", "minimum": low, "maximum": high},
                        {"type": "string", "pattern": "^[0-9]+$"}]}  # fmt: skip
    annotation = Annotated[int, Strict(), Field(ge=low, le=high), BeforeValidator(_digits), WithJsonSchema(schema)]
    return Role(label, annotation, range_reason=range_reason)


def signed_whole(label: str, bound: int, range_reason: Reason) -> Role:
    """A whole number that may be negative (a stock correction): JSON integer or ``-?digits`` string."""

    def digits(value: Any) -> Any:
        if isinstance(value, str) and value.strip().startswith("-"):
            parsed = _digits(value.strip()[1:])
            return -parsed if isinstance(parsed, int) else value
        return _digits(value)

    schema = {"anyOf": [{"type": "integer", "minimum": -bound, "maximum": bound},
                        {"type": "string", "pattern": "^-?[0-9]+$"}]}  # fmt: skip
    annotation = Annotated[int, Strict(), Field(ge=-bound, le=bound), BeforeValidator(digits), WithJsonSchema(schema)]
    return Role(label, annotation, range_reason=range_reason)


def amount(label: str, unit: str, max_fen: int) -> Role:
    """Money in the channel's unit: yuan (two decimals) or fen (whole)."""
    places, high = (2, Decimal(max_fen) / 100) if unit == "yuan" else (0, Decimal(max_fen))
    annotation = Annotated[Decimal, Field(ge=0, le=high, decimal_places=places, allow_inf_nan=False)]
    return Role(label, annotation, type_reason=Reason.INVALID_AMOUNT, range_reason=Reason.INVALID_AMOUNT)


def flag(label: str) -> Role:
    return Role(label, bool)


def _in_window(value: datetime, info: ValidationInfo) -> datetime:
    """The time, read as China time when it names no offset, if it is inside the context's window."""
    when = value if value.tzinfo is not None else value.replace(tzinfo=CHINA)
    window = info.context or {}
    if "now_ms" in window:
        at_ms = epoch_ms(when)
        earliest, latest = window["now_ms"] - window["max_age_ms"], window["now_ms"] + window["max_future_ms"]
        if not earliest <= at_ms <= latest:
            raise PydanticCustomError(
                Reason.TIME_OUT_OF_RANGE.value,
                "{when} is outside the accepted window {earliest} .. {latest}",
                {"when": when.isoformat(), "earliest": _iso(earliest), "latest": _iso(latest)},
            )
    return when


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=CHINA).isoformat(timespec="seconds")


def epoch_ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def moment(label: str) -> Role:
    schema = {"anyOf": [
        {"type": "integer", "description": "epoch seconds or milliseconds"},
        {"type": "string", "format": "date-time",
         "description": "ISO 8601 or 'YYYY-MM-DD HH:MM:SS'; without an offset: China time"},
    ]}  # fmt: skip
    return Role(label, Annotated[datetime, AfterValidator(_in_window), WithJsonSchema(schema)])


def choice(label: str, values: Collection[str], reason: Reason) -> Role:
    """One of a fixed set of words (case-insensitive), refused with ``reason`` otherwise."""
    allowed = {v.lower(): v for v in values}

    def pick(value: str) -> str:
        found = allowed.get(value.lower())
        if found is None:
            # Pydantic fills {name} with str(): the value is quoted here, not with !r it does not apply.
            raise PydanticCustomError(reason.value, "{value} is not one of {allowed}",
                                      {"value": repr(value), "allowed": sorted(allowed.values())})  # fmt: skip
        return found

    schema = {"type": "string", "enum": sorted(allowed.values())}
    annotation = Annotated[str, StringConstraints(strip_whitespace=True), AfterValidator(pick), WithJsonSchema(schema)]
    return Role(label, annotation)


OBJECT = Role("object", dict)
_CODES = frozenset(r.value for r in Reason)


def refusal(error: ValidationError, roles: Mapping[tuple[str, ...], Role]) -> IntakeError:
    """The first failure of a parse as a refusal; ``roles`` says what each field (by its JSON path,
    list positions as ``*``) is, so the reason fits the field."""
    first = error.errors(include_url=False)[0]
    kind, where = first["type"], tuple(first["loc"])
    path = ".".join(str(part) for part in where)
    if kind == "json_invalid":
        return IntakeError(Reason.MALFORMED_JSON, f"body is not JSON: {first['msg']}", status=400)
    if not where:
        return IntakeError(Reason.NOT_AN_OBJECT, "the body must be a JSON object", status=400)
    role = roles.get(tuple("*" if isinstance(part, int) else str(part) for part in where), OBJECT)
    # A custom error's type is already a reason code (``choice``, the time window).
    null = kind != "missing" and first.get("input", 0) is None
    reason = Reason(kind) if kind in _CODES else role.reason(kind, null)
    if kind == "missing":
        detail = f"{role.label} is required"
    else:
        detail = f"{role.label}: {role.messages.get(kind, first['msg'])}"
        if reason is not Reason.MISSING_FIELD and "input" in first and not isinstance(first["input"], dict | list):
            detail += f", got {_short(first['input'])}"
    more = error.error_count() - 1
    return IntakeError(reason, detail + (f" (and {more} more)" if more else ""), path)


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= SHOWN_MAX else shown[: SHOWN_MAX - 3] + "..."


@dataclass(frozen=True)
class Parser:
    """A body's pydantic model, and what each JSON path of it is (for the refusal's reason)."""

    model: type[BaseModel]
    roles: Mapping[tuple[str, ...], Role]

    def parse(self, raw: bytes | str, context: Mapping[str, int] | None = None) -> dict[str, Any]:
        """The body as a dict of its fields (JSON names), or ``IntakeError``."""
        try:
            parsed = self.model.model_validate_json(raw, context=context)
        except ValidationError as exc:
            raise refusal(exc, self.roles) from None
        return parsed.model_dump(by_alias=True)


def flat_parser(name: str, roles: Mapping[str, Role], required: Collection[str],
                meanings: Mapping[str, str] | None = None, doc: str = "") -> Parser:  # fmt: skip
    """A parser for a flat JSON object whose keys are ``roles``' keys."""
    definitions: dict[str, Any] = {}
    for key, role in roles.items():
        meaning = (meanings or {}).get(key)
        if key in required:
            definitions[key] = (role.annotation, Field(alias=key, title=key, description=meaning))
        else:
            definitions[key] = (role.annotation | None, Field(None, alias=key, title=key, description=meaning))
    model: type[BaseModel] = create_model(name, __config__=BODY_CONFIG, __doc__=doc or None, **definitions)
    return Parser(model, {(key,): role for key, role in roles.items()})
