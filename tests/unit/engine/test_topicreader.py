"""Reading a topic whose partition has no leader for a moment (just created, or a leader moving) waits for it
instead of failing the whole read (a replay's read of ``refund.issued`` failed CI that way)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams.engine.topicreader import watermarks


class LeaderComingConsumer:
    """Answers metadata for a two-partition topic; partition 1's leader answers after ``refusals`` refusals."""

    def __init__(self, refusals: int, code: int = KafkaError.NOT_LEADER_FOR_PARTITION) -> None:
        self.refusals, self.code = refusals, code

    def list_topics(self, topic: str, timeout: float) -> SimpleNamespace:
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: None, 1: None})})

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        if tp.partition == 1 and self.refusals > 0:
            self.refusals -= 1
            raise KafkaException(KafkaError(self.code, "Failed to get watermark offsets"))
        return (0, 10 + tp.partition)


def test_a_partition_without_its_leader_yet_is_asked_again() -> None:
    consumer = LeaderComingConsumer(refusals=2)
    assert watermarks(consumer, "t.refund.issued", timeout_s=5.0) == {0: (0, 10), 1: (0, 11)}  # type: ignore[arg-type]
    assert consumer.refusals == 0


def test_a_fault_that_does_not_pass_is_raised_at_once() -> None:
    consumer = LeaderComingConsumer(refusals=1, code=KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaException):
        watermarks(consumer, "t.refund.issued", timeout_s=5.0)  # type: ignore[arg-type]
