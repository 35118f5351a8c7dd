"""A typed producer for connectors: send stockflow's input events the way the topic contract says.

A connector (a marketplace's order feed, a WMS, an ERP, a customer-service desk) builds the typed
record of ``streams.contract.records`` and calls the method named after it; the SDK picks the topic,
the key (the order id ``<channel>:<channel_order_id>`` or the SKU, as UTF-8 bytes), Kafka's murmur2
partitioner (so the event lands on the partition that owns its order's or SKU's state), the configured
wire format (``STOCKFLOW_WIRE_FORMAT``: single-object encoding, or Schema Registry framing with the
ids of ``STOCKFLOW_SCHEMA_REGISTRY_URL``), acks=all and idempotence. Every send returns a
``PendingDelivery``; ``result()`` waits for the broker's acknowledgement and says where the event
landed, ``flush()`` waits for all of them.

    from streams.contract.records import OrderPlaced
    from streams.sdk import StockflowProducer
    from streams.settings import Settings

    with StockflowProducer(Settings()) as producer:
        landed = producer.send_order_placed(order).result()   # Delivery(topic, partition, offset, ...)

It writes the input topics only (``order.events``, ``refund.events``, ``stock.adjustments``) and owns
nothing else; it reads no topic. Event ids are the caller's: give a repeat of the same fact the same
``event_id`` (e.g. ``placed:jd:1001``), since every consumer de-duplicates by it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, KafkaException

from streams.contract.codec import Codec, codec_for
from streams.contract.keys import order_key
from streams.contract.records import (
    OrderCancelled,
    OrderPlaced,
    PaymentConfirmed,
    PaymentFailed,
    RefundCancelled,
    RefundRequested,
    RefundReviewed,
    RefundSettled,
    ReturnReceived,
    ReturnShipped,
    ShipmentDelivered,
    ShipmentDispatched,
    StockAdjusted,
    WmsAcknowledged,
)
from streams.contract.topics import ORDER_EVENTS, REFUND_EVENTS, STOCK_ADJUSTMENTS, TopicSpec
from streams.engine.producer import EventProducer
from streams.errors import StockflowError
from streams.settings import Settings

# Past this many sent events, those already acknowledged or reported are forgotten (they stay the caller's).
KEEP_UNREPORTED = 10_000


class DeliveryFailed(StockflowError, RuntimeError):
    """The broker did not take an event (or did not answer in time); nothing says it was written."""


class Delivery(NamedTuple):
    """Where an acknowledged event landed."""

    topic: str  # as written, with STOCKFLOW_TOPIC_PREFIX
    partition: int
    offset: int
    key: str
    event_type: str
    event_id: str


@dataclass(frozen=True)
class InputEvent:
    """One input event type: the topic it travels on and how its key is read off the record."""

    name: str
    topic: TopicSpec
    key_of: Callable[[Mapping[str, Any]], str]


def _order_id(record: Mapping[str, Any]) -> str:
    return order_key(_text(record, "channel"), _text(record, "channel_order_id"))


def _sku(record: Mapping[str, Any]) -> str:
    return _text(record, "sku")


def _text(record: Mapping[str, Any], name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, not {value!r}: the event's key is made from it")
    return value


# Every event an outside producer writes, by its short name (the contract's input topics).
INPUT_EVENTS: dict[str, InputEvent] = {
    e.name: e
    for e in (
        *(InputEvent(name, ORDER_EVENTS, _order_id) for name in ORDER_EVENTS.events),
        *(InputEvent(name, REFUND_EVENTS, _order_id) for name in REFUND_EVENTS.events),
        InputEvent("StockAdjusted", STOCK_ADJUSTMENTS, _sku),
    )
}


@dataclass
class PendingDelivery:
    """One sent event until the broker answers; ``result()`` waits for that answer."""

    producer: EventProducer = field(repr=False)
    key: str
    event_type: str
    event_id: str
    delivery: Delivery | None = None  # set once the broker acknowledged it
    error: str | None = None  # set once the broker refused it
    reported: bool = False  # result() told the caller how it went, failure included

    def done(self) -> bool:
        """Whether the broker answered (answers are served by ``result``, ``StockflowProducer.poll`` or ``flush``)."""
        return self.delivery is not None or self.error is not None

    def result(self, timeout_s: float = 30.0) -> Delivery:
        """Wait up to ``timeout_s`` for the broker's acknowledgement; raise ``DeliveryFailed`` if it refused or
        did not answer (the event may then still be written later: send it again with the same event id)."""
        deadline = time.monotonic() + timeout_s
        self.reported = True
        while not self.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeliveryFailed(f"{self.event_type} {self.event_id}: no acknowledgement within {timeout_s:g}s")
            self.producer.poll(min(remaining, 0.1))
        if self.delivery is None:
            raise DeliveryFailed(f"{self.event_type} {self.event_id}: {self.error}")
        return self.delivery

    def on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        """confluent-kafka's delivery callback for this event."""
        if err is not None:
            self.error = str(err)
        else:
            self.delivery = Delivery(msg.topic(), msg.partition(), msg.offset(), self.key, self.event_type,
                                     self.event_id)  # fmt: skip


class StockflowProducer:
    """Sends stockflow's input events. ``settings`` names the broker, topic prefix, wire format and registry;
    ``codec`` and ``**config`` (librdkafka properties, e.g. ``linger.ms``) override for special cases.

    With ``STOCKFLOW_WIRE_FORMAT=confluent`` the schemas are registered when the first producer of the
    process is built, so a registry that is away or refuses a schema fails here
    (``SchemaRegistryUnavailable``, ``SchemaRegistryRefused``), never in the middle of sending."""

    def __init__(self, settings: Settings | None = None, codec: Codec | None = None, **config: Any) -> None:
        self.settings = settings or Settings()
        self.codec = codec or codec_for(self.settings)
        self._producer = EventProducer(self.settings, self.codec, **config)
        # Sent events whose outcome nobody has been told yet: a failure among them is raised by flush().
        self._unreported: list[PendingDelivery] = []

    # ---- orders, on order.events, keyed by order id ------------------------------------------------
    def send_order_placed(self, record: OrderPlaced) -> PendingDelivery:
        return self.send("OrderPlaced", record)

    def send_payment_confirmed(self, record: PaymentConfirmed) -> PendingDelivery:
        return self.send("PaymentConfirmed", record)

    def send_payment_failed(self, record: PaymentFailed) -> PendingDelivery:
        return self.send("PaymentFailed", record)

    def send_order_cancelled(self, record: OrderCancelled) -> PendingDelivery:
        return self.send("OrderCancelled", record)

    def send_shipment_dispatched(self, record: ShipmentDispatched) -> PendingDelivery:
        return self.send("ShipmentDispatched", record)

    def send_shipment_delivered(self, record: ShipmentDelivered) -> PendingDelivery:
        return self.send("ShipmentDelivered", record)

    def send_wms_acknowledged(self, record: WmsAcknowledged) -> PendingDelivery:
        return self.send("WmsAcknowledged", record)

    # ---- stock, on stock.adjustments, keyed by SKU ---------------------------------------------------
    def send_stock_adjusted(self, record: StockAdjusted) -> PendingDelivery:
        return self.send("StockAdjusted", record)

    # ---- refunds, on refund.events, keyed by their order's id ----------------------------------------
    def send_refund_requested(self, record: RefundRequested) -> PendingDelivery:
        return self.send("RefundRequested", record)

    def send_refund_reviewed(self, record: RefundReviewed) -> PendingDelivery:
        return self.send("RefundReviewed", record)

    def send_return_shipped(self, record: ReturnShipped) -> PendingDelivery:
        return self.send("ReturnShipped", record)

    def send_return_received(self, record: ReturnReceived) -> PendingDelivery:
        return self.send("ReturnReceived", record)

    def send_refund_settled(self, record: RefundSettled) -> PendingDelivery:
        return self.send("RefundSettled", record)

    def send_refund_cancelled(self, record: RefundCancelled) -> PendingDelivery:
        return self.send("RefundCancelled", record)

    # ---- the untyped way in, and waiting ---------------------------------------------------------------
    def send(self, event_type: str, record: Mapping[str, Any]) -> PendingDelivery:
        """Send ``record`` as input event ``event_type`` (a key of ``INPUT_EVENTS``). Raises ``ValueError``
        for an event stockflow does not take from outside, or a record its schema does not fit."""
        spec = INPUT_EVENTS.get(event_type)
        if spec is None:
            raise ValueError(f"{event_type!r} is no input event; outside producers send {sorted(INPUT_EVENTS)}")
        key = spec.key_of(record)
        pending = PendingDelivery(self._producer, key, event_type, str(record.get("event_id", "")))
        self._producer.send_with_callback(spec.topic.name, key, event_type, record, pending.on_delivery)
        self._unreported.append(pending)
        if len(self._unreported) > KEEP_UNREPORTED:  # bounded by what is in flight and what failed unseen
            self._unreported = [p for p in self._unreported if not p.reported and p.delivery is None]
        return pending

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve the broker's answers for up to ``timeout_s`` (``result`` and ``flush`` do this themselves)."""
        self._producer.poll(timeout_s)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every event sent so far is acknowledged. Raises ``DeliveryFailed`` naming the events the
        broker refused or did not acknowledge in time, except those whose ``result()`` already said so."""
        try:
            self._producer.flush(timeout_s)
        except KafkaException as exc:
            raise DeliveryFailed(str(exc)) from exc
        unreported, self._unreported = self._unreported, []
        failed = [p for p in unreported if p.delivery is None and not p.reported]
        if failed:
            names = ", ".join(f"{p.event_type} {p.event_id}: {p.error or 'no answer'}" for p in failed[:3])
            raise DeliveryFailed(f"{len(failed)} events not written ({names})")

    def close(self, timeout_s: float = 30.0) -> None:
        self.flush(timeout_s)

    def __enter__(self) -> StockflowProducer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._producer.poll(0)  # already failing: hand back what was answered, wait for nothing
