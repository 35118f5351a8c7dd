"""No body gets a 500: hostile values at every field of every channel's notifications, and hostile
bytes, end in an ``IntakeError`` with a 4xx status (or are accepted), never in another exception."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from agents.intake.mapping import Catalogue, IntakeError, OrderLimits, load_channels, service_map, wms_map
from agents.intake.stock import build_adjustment
from streams.settings import Settings

CHANNELS = load_channels(None, ("tmall", "jd", "douyin", "pdd", "kuaishou", "own"))
MAPS = {**CHANNELS, "wms": wms_map(CHANNELS), "service": service_map(CHANNELS)}
CATALOGUE = Catalogue(("SKU-*",))
LIMITS = OrderLimits.from_settings(Settings())
NOW = 1794326460000
HOSTILE: list[Any] = [
    None, True, False, 0, -1, 1.5, 1e308, -1e308, 10**20, -(10**25), "", " ", "\t\n", "yesterday", "NaN",
    "Infinity", "-Infinity", "-0", "²", "٣", "1e3", "0x10", "+2", "1_000", "9" * 50, "x" * 5000, "\x00", "🙂",
    "2026-13-45 25:61:61", "false", "0", [], [None], [{"x": 1}], {}, {"a": {"b": None}}, "SKU-1", 1794326400,
]  # fmt: skip
HOSTILE_BYTES = [
    b"", b"null", b"[]", b"0", b'"order"', b"{", b"}", b'{"order_id": NaN}', b"\xff\xfe\x00", b"[" * 5000,
    b'{"a":' * 3000, b'{"amount_fen": 1' + b"0" * 5000 + b"}", b'{"lines": [' + b"{}," * 500 + b"{}]}",
    "{\"order_id\": \"\ud800\"}".encode("utf-8", "surrogatepass"), b'{"order_id": "x", "order_id": 7}',
]  # fmt: skip


def leaf_paths(channel: str, kind: str) -> list[tuple[str, ...]]:
    roles = MAPS[channel].parser(kind, LIMITS).roles
    return [loc for loc in roles if not any(other[: len(loc)] == loc and other != loc for other in roles)]


def body_with(paths: list[tuple[str, ...]], pick: Any) -> dict[str, Any]:
    """A body holding ``pick(path)`` at every path (lists of lines as one-element lists)."""
    body: dict[str, Any] = {}
    for loc in paths:
        node = body
        for i, part in enumerate(loc[:-1]):
            if part == "*":
                continue
            if loc[i + 1] == "*":
                node = node.setdefault(part, [{}])[0]
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    break
        else:
            node[loc[-1]] = pick(loc)
    return body


def outcome(channel: str, kind: str, body: Any) -> int:
    try:
        MAPS[channel].build(kind, body, CATALOGUE, LIMITS, NOW)
    except IntakeError as err:
        assert 400 <= err.status < 500 and err.reason and err.detail, (body, err.body())
        return err.status
    return 200


KINDS = [(channel, kind) for channel, m in MAPS.items() for kind in m.fields]


@pytest.mark.parametrize(("channel", "kind"), KINDS)
def test_every_hostile_value_at_every_field_is_a_4xx(channel: str, kind: str) -> None:
    paths = leaf_paths(channel, kind)
    for value in HOSTILE:
        for target in paths:
            outcome(channel, kind, body_with(paths, lambda loc, t=target, v=value: v if loc == t else "SKU-1"))
        outcome(channel, kind, body_with(paths, lambda _, v=value: v))


@pytest.mark.parametrize(("channel", "kind"), KINDS)
def test_random_mixtures_are_4xx(channel: str, kind: str) -> None:
    rng = random.Random(f"{channel}/{kind}")
    paths = leaf_paths(channel, kind)
    for _ in range(200):
        outcome(channel, kind, body_with(paths, lambda _: rng.choice(HOSTILE)))


@pytest.mark.parametrize("raw", HOSTILE_BYTES, ids=range(len(HOSTILE_BYTES)))
def test_hostile_bytes_are_4xx(raw: bytes) -> None:
    assert outcome("own", "order", raw) in (400, 422)
    try:
        build_adjustment(raw, ("WH-SH",), CATALOGUE, LIMITS, NOW)
    except IntakeError as err:
        assert 400 <= err.status < 500


def test_hostile_stock_documents_are_4xx() -> None:
    fields = ("document_id", "kind", "sku", "warehouse_id", "qty", "reason", "event_time_ms")
    good = {"document_id": "D", "kind": "receipt", "sku": "SKU-1", "warehouse_id": "WH-SH", "qty": 1}
    for value in HOSTILE:
        for name in fields:
            try:
                build_adjustment(json.dumps({**good, name: value}).encode(), ("WH-SH",), CATALOGUE, LIMITS, NOW)
            except IntakeError as err:
                assert 400 <= err.status < 500, err.body()
