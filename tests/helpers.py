"""Test helpers: reading topics back with a plain consumer, and waiting for conditions."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from streams.codec import default_codec
from streams.settings import Settings
from streams.topicreader import read_all

T = TypeVar("T")


def read_topic(settings: Settings, name: str, timeout_s: float = 10.0) -> list[tuple[str, dict[str, Any]]]:
    """Every (event type, record) now in a topic, from the beginning, in order per partition."""
    codec = default_codec()
    out = []
    for rec in read_all(settings.bootstrap, settings.topic(name), timeout_s):
        event_type, record = codec.decode(rec.value)
        out.append((event_type.short_name, record))
    return out


def wait_for(check: Callable[[], T | None], timeout_s: float = 60.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after the timeout."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last={last!r}")
