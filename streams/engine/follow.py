"""Following topics from the beginning, every partition, outside any consumer group.

What a per-worker in-memory view is built from (the routing view of ``stock.levels``, the customers'
return history from ``refund.states``): every worker reads the whole topic itself, so no view is
partitioned and nothing is committed. Only committed records are read: a batch the engine aborted
(and did again) is seen once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.contract.codec import Codec, DecodeError
from streams.engine.retry import Backoff, Retry, kafka_transient
from streams.kafkaconf import aiokafka_kwargs
from streams.settings import Settings

log = logging.getLogger(__name__)
# A view that has not read its topics to their ends by then goes on with what it has: a reader
# (routing) waits for it, and must not wait for ever on a topic too large to read at start.
CATCH_UP_LIMIT_S = 60.0


async def follow(settings: Settings, codec: Codec, topics: list[str], client: str,
                 apply: Callable[[str, dict[str, Any]], None], polled: Callable[[bool], None]) -> None:  # fmt: skip
    """Read ``topics`` (contract names) forever: ``apply(event type, record)`` for each readable record,
    then ``polled(caught_up)`` after each poll. ``caught_up`` turns true once every partition has been
    read up to where it ended when the follower started, and stays true (a topic written all the time
    never gives an empty poll, so "a poll found nothing" cannot be the test). Unreadable bytes are
    skipped: the sink dead-letters them."""
    consumer = AIOKafkaConsumer(
        *[settings.topic(t) for t in topics], **aiokafka_kwargs(settings), group_id=None,
        auto_offset_reset="earliest", enable_auto_commit=False, client_id=f"{settings.app_id}-{client}",
        isolation_level="read_committed",
    )  # fmt: skip
    # Stopped in the finally even when the worker stops while this still waits to connect: a consumer
    # never stopped is logged "Unclosed AIOKafkaConsumer" when it is collected.
    try:
        # No bound: the view waits for the broker; a refusal or a bad setting fails the worker at once.
        await Retry(f"{client}: connecting to the broker", kafka_transient, backoff=Backoff(first_s=1.0, max_s=1.0),
                    log=log).acall(consumer.start)  # fmt: skip
        started = time.monotonic()
        ends: dict[TopicPartition, int] | None = None
        caught_up = False
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                for rec in records:
                    try:
                        kind, record = codec.decode(rec.value)
                    except DecodeError:
                        continue
                    apply(kind.short_name, record)
            if not caught_up:
                if ends is None and consumer.assignment():
                    ends = await consumer.end_offsets(list(consumer.assignment()))
                # The ends when known; before the partitions are assigned, only a poll that found nothing.
                caught_up = await _reached(consumer, ends) if ends is not None else not batch
                if not caught_up and time.monotonic() - started > CATCH_UP_LIMIT_S:
                    log.warning("%s: still reading %s after %.0f s; going on with what it has read", client,
                                ", ".join(topics), CATCH_UP_LIMIT_S)  # fmt: skip
                    caught_up = True
            polled(caught_up)
    finally:
        await consumer.stop()


async def _reached(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True
