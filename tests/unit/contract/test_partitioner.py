"""Partitioning, no broker: our partitioner places a key where Kafka's Java client would."""

from __future__ import annotations

import pytest

from streams.contract.keys import partition_for


@pytest.mark.parametrize(
    ("key", "java_murmur2"),
    # Kafka's own test vectors for org.apache.kafka.common.utils.Utils.murmur2
    [(b"21", -973932308), (b"foobar", -790332482), (b"a-little-bit-long-string", -985981536), (b"abc", 479470107)],
)
def test_partition_for_is_javas_default_partitioner(key: bytes, java_murmur2: int) -> None:
    assert partition_for(key, 1000) == (java_murmur2 & 0x7FFFFFFF) % 1000
