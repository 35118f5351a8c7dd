"""Producing stockflow events from outside the worker (CLI, intake, load generator, tests).

confluent-kafka with acks=all and idempotence, and the murmur2 partitioner the topic contract
requires, so an event lands on the partition that owns its SKU's or order's state.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaException, Producer

from streams.contract.codec import Codec, codec_for
from streams.contract.topics import PRODUCER_MAX_MESSAGE_BYTES
from streams.errors import StockflowError
from streams.kafkaconf import confluent_config
from streams.settings import Settings

PRODUCER_CONFIG = {
    "acks": "all",
    "enable.idempotence": True,
    "partitioner": "murmur2_random",  # Java's default: agrees with the Faust worker
    "linger.ms": 5,
    "compression.type": "lz4",
    # A dead letter of the largest message a broker takes must leave too (the sink's, the connectors').
    "message.max.bytes": PRODUCER_MAX_MESSAGE_BYTES,
}


class QueueFull(StockflowError):
    """The producer's local queue is full: the broker has been out of reach for a while."""


class EventProducer:
    def __init__(self, settings: Settings, codec: Codec | None = None, **overrides: Any) -> None:
        self.settings = settings
        self.codec = codec or codec_for(settings)
        self._errors: list[str] = []
        self._producer = Producer({**confluent_config(settings), **PRODUCER_CONFIG, **overrides})

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err}")

    def send(self, topic: str, key: str | None, event: str, record: Any) -> None:
        """Queue one event for ``topic`` (contract name, unprefixed)."""
        self.send_raw(topic, key, self.codec.encode(event, record))

    def send_raw(self, topic: str, key: str | bytes | None, value: bytes, partition: int | None = None,
                 on_delivery: Any = None) -> None:  # fmt: skip
        """Queue raw bytes (``partition`` only to produce somewhere the partitioner would not)."""
        raw_key = key.encode() if isinstance(key, str) else key
        while True:
            try:
                if partition is None:
                    self._producer.produce(self.settings.topic(topic), value=value, key=raw_key,
                                           on_delivery=on_delivery or self._on_delivery)  # fmt: skip
                else:
                    self._producer.produce(self.settings.topic(topic), value=value, key=raw_key, partition=partition,
                                           on_delivery=on_delivery or self._on_delivery)  # fmt: skip
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.05)
        self._producer.poll(0)

    def send_with_callback(self, topic: str, key: str, event: str, record: Any, callback: Any, *,
                           wait: bool = True) -> None:  # fmt: skip
        """Queue one event; ``callback(err, msg)`` runs from ``poll`` once the broker answered. With the local queue
        full (the broker away for a while), wait for room, or with ``wait`` False raise ``QueueFull`` at once:
        what must answer its callers meanwhile (intake's event loop) cannot stand still until the broker is back."""
        value = self.codec.encode(event, record)
        while True:
            try:
                self._producer.produce(self.settings.topic(topic), value=value, key=key.encode(), on_delivery=callback)
                return
            except BufferError as exc:
                if not wait:
                    raise QueueFull(f"the queue to Kafka is full ({len(self._producer)} records waiting)") from exc
                self._producer.poll(0.05)

    def reachable(self, timeout_s: float = 2.0) -> bool:
        """Whether a broker answers a metadata request within ``timeout_s`` (for readiness checks)."""
        try:
            self._producer.list_topics(timeout=timeout_s)
        except KafkaException:
            return False
        return True

    def poll(self, timeout_s: float) -> int:
        """Serve delivery callbacks for up to ``timeout_s``."""
        return int(self._producer.poll(timeout_s))

    def close(self) -> None:
        """Flush what is queued and release the client's connections and threads now, not whenever the
        garbage collector gets to it (until then it keeps reconnecting to a broker that went away)."""
        self._producer.close()

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued event is acknowledged by the broker; raise on any failure."""
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise KafkaException(f"{remaining} events not acknowledged within {timeout_s}s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise KafkaException(f"{len(errors)} events failed: {errors[:3]}")
