"""The bench's events/s counts the records the broker stamped while orders were taken, not the drain after."""

from __future__ import annotations

import time

from confluent_kafka import Producer

from loadtest.run import count_records
from streams.contract.topics import ORDER_EVENTS, STOCK_LEVELS, ensure_topics
from streams.kafkaconf import confluent_config


def test_records_are_counted_within_the_window_and_in_all(make_settings) -> None:
    settings = make_settings()
    ensure_topics(settings)
    producer = Producer(confluent_config(settings))
    start = int(time.time() * 1000) - 60_000  # the broker refuses timestamps far ahead of its clock
    for topic, partition, at in [
        (ORDER_EVENTS.name, 0, start - 1_000),  # before the window
        (ORDER_EVENTS.name, 0, start),
        (ORDER_EVENTS.name, 1, start + 400),
        (STOCK_LEVELS.name, 2, start + 999),
        (STOCK_LEVELS.name, 2, start + 1_000),  # the window's end is not in it
        (ORDER_EVENTS.name, 3, start + 5_000),  # the drain after it
    ]:
        producer.produce(settings.topic(topic), b"x", b"k", partition, timestamp=at)
    producer.flush(10)

    assert count_records(settings, start, start + 1_000) == (6, 3)
