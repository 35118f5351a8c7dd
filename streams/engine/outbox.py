"""Outputs of one batch, published only after the state that implies them is durable.

The rule that keeps stockflow correct under at-least-once delivery and ``kill -9``: an agent
applies a batch to its tables, waits until the table changelog is acknowledged by the broker, and
only then publishes what the batch decided, and waits for that too before its input offsets can be
committed. A crash at any point either loses the whole batch (it is replayed from the input) or
leaves state that makes the replay a duplicate, whose recorded outcome is published again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

import faust

from streams.contract.codec import Codec
from streams.settings import Settings


@dataclass
class Outbox:
    app: faust.App
    codec: Codec
    settings: Settings
    _pending: list[tuple[str, bytes | None, bytes, int | None]] = field(default_factory=list)

    def add(
        self,
        topic: str,
        key: str | bytes | None,
        event: str,
        record: Any,
        partition: int | None = None,
    ) -> None:
        """Queue ``record`` (event type ``event``) for ``topic`` (contract name, unprefixed)."""
        raw_key = key.encode() if isinstance(key, str) else key
        self._pending.append((topic, raw_key, self.codec.encode(event, record), partition))

    def __len__(self) -> int:
        return len(self._pending)

    async def publish(self, state_written: bool = True) -> int:
        """Flush state writes, then send every queued output and wait for the broker's acks.

        Outputs go straight to the producer (one future each, one flush for all) rather than
        through Faust's per-message topic machinery, which cost more than the rules themselves.
        """
        producer = self.app.producer
        if state_written:
            await producer.flush()
        pending, self._pending = self._pending, []
        futures = [
            cast(asyncio.Future, await producer.send(self.settings.topic(name), key, value, partition, None, None))
            for name, key, value, partition in pending
        ]
        if pending:
            await producer.flush()
        for future in futures:
            error = future.exception() if future.done() else None
            if error is not None:
                raise error  # the batch is not acknowledged: it is replayed
        return len(pending)
