"""Test helpers: reading topics back with a plain consumer, and waiting for conditions."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import Consumer, TopicPartition

from streams.codec import default_codec
from streams.settings import Settings

T = TypeVar("T")


def read_topic(
    settings: Settings, name: str, timeout_s: float = 5.0
) -> list[tuple[str, dict[str, Any]]]:
    """Every (event type, record) now in a topic, from the beginning, in order per partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    topic = settings.topic(name)
    try:
        md = consumer.list_topics(topic, timeout=timeout_s)
        partitions = list(md.topics[topic].partitions)
        ends = {}
        for p in partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out: list[tuple[str, dict[str, Any]]] = []
        pending = {p for p, high in ends.items() if high > 0}
        deadline = time.monotonic() + timeout_s
        codec = default_codec()
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            event_type, record = codec.decode(msg.value())
            out.append((event_type.short_name, record))
            if msg.offset() + 1 >= ends[msg.partition()]:
                pending.discard(msg.partition())
        return out
    finally:
        consumer.close()


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
