"""Read a whole topic as it is now, from the beginning to the current end of every partition, and where each
partition starts now (what a topic kept by time still holds)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from streams.engine.retry import Backoff, Retry, leader_moving
from streams.kafkaconf import confluent_config
from streams.settings import Settings


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def _reader(kafka: Settings | str) -> Consumer:
    return Consumer(
        {
            **confluent_config(kafka),
            "group.id": f"stockflow-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # What a transaction wrote counts once it committed; an aborted batch never happened.
            "isolation.level": "read_committed",
            "log_level": 3,
        }
    )


MISSING = (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC)  # noqa: SLF001 - librdkafka's own code


def watermarks(consumer: Consumer, topic: str, timeout_s: float) -> dict[int, tuple[int, int]]:
    """Per partition of ``topic``, (low, high): the earliest offset still held and the end ({} if it is missing).
    Metadata with any other error (a leader not there yet, a broker busy) is asked again for up to ``timeout_s``,
    then TimeoutError: read as missing, a topic would look empty, and a checker would find nothing wrong in it."""
    deadline = time.monotonic() + timeout_s
    while True:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or (meta.error is not None and meta.error.code() in MISSING):
            return {}
        if meta.error is None and meta.partitions:
            return {p: watermark(consumer, TopicPartition(topic, p), timeout_s) for p in meta.partitions}
        if time.monotonic() > deadline:
            raise TimeoutError(f"{topic}: no metadata in {timeout_s:g} s ({meta.error})")
        time.sleep(0.2)


def watermark(consumer: Consumer, tp: TopicPartition, timeout_s: float) -> tuple[int, int]:
    """(low, high) of one partition, asked again while its leader is not there yet (a topic just created)
    or moving, for up to ``timeout_s``."""
    retry = Retry(f"watermarks of {tp.topic}[{tp.partition}]", leader_moving, deadline_s=timeout_s,
                  backoff=Backoff(0.2, 1.0))  # fmt: skip
    low, high = retry.call(partial(consumer.get_watermark_offsets, tp, timeout=timeout_s))
    return int(low), int(high)


def earliest_offsets(kafka: Settings | str, topic: str, timeout_s: float = 30.0) -> dict[int, int]:
    """Per partition of ``topic``, the earliest offset the brokers still hold: above 0, the records before it
    were deleted by the topic's retention ({} if the topic is missing)."""
    consumer = _reader(kafka)
    try:
        return {p: int(low) for p, (low, _) in watermarks(consumer, topic, timeout_s).items()}
    finally:
        consumer.close()


def scan(kafka: Settings | str, topic: str, timeout_s: float = 30.0) -> Iterator[Record]:
    """Every record now in ``topic`` on the brokers of ``kafka`` (settings, or a PLAINTEXT ``host:port``), in
    offset order within each partition, one at a time (nothing if it is missing). TimeoutError when no record
    comes for ``timeout_s``: a long topic is read whole however long it takes, a stuck one is not waited on."""
    consumer = _reader(kafka)
    try:
        ends = {p: high for p, (low, high) in watermarks(consumer, topic, timeout_s).items() if high > low}
        if not ends:
            return
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        pending = set(ends)
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: partitions {sorted(pending)} not read to the end (nothing came "
                                   f"in {timeout_s:g} s)")  # fmt: skip
            for msg in consumer.consume(num_messages=5000, timeout=0.2):
                if msg.error():
                    continue
                deadline = time.monotonic() + timeout_s
                partition, offset = msg.partition() or 0, msg.offset() or 0
                yield Record(partition, offset, msg.key(), msg.value())
                if offset + 1 >= ends[partition]:
                    pending.discard(partition)
            # Transactional topics end in commit markers that are never delivered: the position,
            # not the last record, says a partition is read to its end.
            for tp in consumer.position([TopicPartition(topic, p) for p in pending]) if pending else ():
                if tp.offset >= ends[tp.partition]:
                    pending.discard(tp.partition)
    finally:
        consumer.close()


def read_all(kafka: Settings | str, topic: str, timeout_s: float = 30.0) -> list[Record]:
    """``scan`` of ``topic``, as one list."""
    return list(scan(kafka, topic, timeout_s))
