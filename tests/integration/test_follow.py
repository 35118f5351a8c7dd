"""A view's follower on the real broker: it says it has caught up once it has read every partition to
where it ended when it started (transaction markers included), even while the topic is still being
written, so no poll ever comes back empty (which was the old test: a routing view at peak waited for ever)."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

from confluent_kafka import Producer

from streams.contract.topics import STOCK_LEVELS, ensure_topics
from streams.engine.follow import follow
from streams.kafkaconf import confluent_config


class CountingCodec:
    """Every record reads as one event: the test counts records, not what they say."""

    def decode(self, value: bytes) -> tuple[Any, dict[str, Any]]:
        return SimpleNamespace(short_name="StockLevel"), {}


def test_a_follower_catches_up_on_what_was_there_at_its_start_while_the_topic_is_still_written(make_settings) -> None:
    settings = make_settings()
    ensure_topics(settings)
    producer = Producer({**confluent_config(settings), "transactional.id": f"{settings.app_id}-follow",
                         "partitioner": "murmur2_random"})  # fmt: skip
    producer.init_transactions(30)
    for _ in range(20):  # committed transactions: each leaves a marker after its records
        producer.begin_transaction()
        for n in range(1_000):
            producer.produce(settings.topic(STOCK_LEVELS.name), b"level", f"SKU-{n}".encode())
        producer.commit_transaction(30)
    read_when_caught_up: list[int] = []
    writing = threading.Event()
    stop = threading.Event()

    def keep_writing() -> None:  # the pool publishing levels all the while
        writer = Producer(confluent_config(settings))
        while not stop.is_set():
            for n in range(4):
                writer.produce(settings.topic(STOCK_LEVELS.name), b"level", f"LIVE-{n}".encode())
            writer.flush(10)
            writing.set()
            stop.wait(0.02)
        writer.flush(10)

    live = threading.Thread(target=keep_writing, daemon=True)
    live.start()
    assert writing.wait(30)

    async def scenario() -> None:
        records = 0

        def apply(kind: str, record: dict[str, Any]) -> None:
            nonlocal records
            records += 1

        def polled(caught_up: bool) -> None:
            if caught_up and not read_when_caught_up:
                read_when_caught_up.append(records)

        task = asyncio.create_task(follow(settings, CountingCodec(), [STOCK_LEVELS.name], "probe", apply,  # type: ignore[arg-type]
                                          polled))  # fmt: skip
        for _ in range(300):
            if read_when_caught_up:
                break
            await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        stop.set()
        live.join(30)
    assert len(read_when_caught_up) == 1 and read_when_caught_up[0] >= 20_000
