"""Follows the pipeline clock.

Reads: ``ops.clock`` (every worker reads the whole single-partition topic, outside the consumer
group, so each one moves its clock). Writes: nothing. Owns: ``Runtime.clock``'s offset.
Ignored unless ``STOCKFLOW_CLOCK_CONTROL=1``: production clocks are wall clocks.
"""

from __future__ import annotations

import asyncio
import logging

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.contract.codec import DecodeError
from streams.contract.topics import OPS_CLOCK
from streams.engine.runtime import Runtime
from streams.kafkaconf import aiokafka_kwargs

log = logging.getLogger(__name__)


def register(app: faust.App, rt: Runtime) -> None:
    if not rt.settings.clock_control:
        return

    @app.task  # type: ignore[untyped-decorator]  # faust types a task as returning a bare Awaitable
    async def follow_clock() -> None:
        topic = rt.settings.topic(OPS_CLOCK.name)
        consumer = AIOKafkaConsumer(**aiokafka_kwargs(rt.settings), enable_auto_commit=False)
        try:  # stopped even if the worker stops while it connects (else: "Unclosed AIOKafkaConsumer")
            await consumer.start()
            consumer.assign([TopicPartition(topic, 0)])
            await consumer.seek_to_beginning(TopicPartition(topic, 0))
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                for messages in batch.values():
                    for msg in messages:
                        try:
                            _, record = rt.codec.decode(msg.value)
                        except DecodeError as exc:
                            log.warning("ignoring unreadable clock event: %s", exc)
                            continue
                        rt.clock.advance_to(int(record["offset_ms"]))
                await asyncio.sleep(0)
        finally:
            await consumer.stop()
