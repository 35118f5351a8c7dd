"""The README's example intake payloads are accepted: each block after a "`POST /v1/channels/C/K`" line
is parsed by that channel's generated pydantic model (the shipped mapping and sample catalogue, the
settings' time window) and becomes the event the README says; Douyin's goes through Doudian's
envelope as the intake receives it. So the examples stay true when a mapping changes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agents.intake.mapping import Catalogue, OrderLimits, load_channels
from agents.intake.service import _one_doudian_message
from streams.settings import Settings

README = Path(__file__).resolve().parents[3] / "README.md"
EXAMPLE = re.compile(r"^`POST /v1/channels/(\w+)/(\w+)`[^\n]*\n+```json\n(.*?)\n```", re.MULTILINE | re.DOTALL)
SETTINGS = Settings()
CHANNELS = load_channels(None, SETTINGS.channels)
CATALOGUE = Catalogue.load(None)
LIMITS = OrderLimits.from_settings(SETTINGS)
NOW = 1794326700000  # 2026-11-11 00:05:00 in China, just after the examples' times


def examples() -> list[tuple[str, str, str]]:
    return EXAMPLE.findall(README.read_text(encoding="utf-8"))


def test_the_readme_has_an_order_example_for_every_channel() -> None:
    assert {channel for channel, kind, _ in examples() if kind == "order"} == set(SETTINGS.channels)


@pytest.mark.parametrize(("channel", "kind", "text"), examples(), ids=lambda v: v if len(v) < 20 else "")
def test_each_readme_example_is_accepted(channel: str, kind: str, text: str) -> None:
    body = json.loads(text)
    raw = json.dumps(body, ensure_ascii=False).encode()
    if channel == "douyin":  # the example is the event; the push wraps it as Doudian does
        push = [{"tag": "100", "msg_id": "7301", "data": raw.decode()}]
        raw = _one_doudian_message(json.dumps(push, ensure_ascii=False).encode())
    mapped = CHANNELS[channel].build(kind, raw, CATALOGUE, LIMITS, now_ms=NOW)
    assert mapped.record["channel"] == channel
    assert mapped.key.startswith(f"{channel}:")


def test_a_time_without_an_offset_is_read_as_china_time() -> None:
    (text,) = [t for channel, kind, t in examples() if (channel, kind) == ("tmall", "order")]
    body = json.loads(text)
    assert body["created"] == "2026-11-11 00:00:01"
    record = CHANNELS["tmall"].build("order", body, CATALOGUE, LIMITS, now_ms=NOW).record
    assert record["event_time_ms"] == 1794326401000  # 2026-11-10T16:00:01Z: UTC+8, as the README says
