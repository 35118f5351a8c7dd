"""Where each partition of a topic starts on the brokers now: the audit's horizon.

A topic kept by time (the broker's 7 days unless its contract says otherwise) loses its oldest records; a
partition's low watermark is the earliest offset it still holds, and above 0 means records before it were
deleted. ``stockflow check`` reads it after a topic's records (``streams.engine.topicreader.read_all``), so
nothing deleted while it read is taken for a partition read whole.
"""

from __future__ import annotations

import uuid
from functools import partial

from confluent_kafka import Consumer, TopicPartition

from streams.engine.retry import Backoff, Retry, leader_moving
from streams.kafkaconf import confluent_config
from streams.settings import Settings


def earliest_offsets(kafka: Settings | str, topic: str, timeout_s: float = 30.0) -> dict[int, int]:
    """Per partition of ``topic`` on the brokers of ``kafka``, the earliest offset they still hold ({} if the
    topic is missing)."""
    consumer = Consumer(
        {
            **confluent_config(kafka),
            "group.id": f"stockflow-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "log_level": 3,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            return {}
        # A topic just created may not have its leaders yet: that passes.
        retry = Retry(f"start of {topic}", leader_moving, deadline_s=timeout_s, backoff=Backoff(0.2, 1.0))
        starts = {}
        for p in meta.partitions:
            low, _ = retry.call(partial(consumer.get_watermark_offsets, TopicPartition(topic, p), timeout=timeout_s))
            starts[p] = int(low)
        return starts
    finally:
        consumer.close()
