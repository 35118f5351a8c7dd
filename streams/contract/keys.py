"""How messages on keyed topics are keyed and partitioned: part of the topic contract.

Every event of one order is keyed by its order id, ``<channel>:<channel_order_id>`` (``order_key``);
every event of one SKU by the SKU; a hot SKU's stock buckets by ``<sku>#<bucket>`` (``bucket_key``), so a
SKU itself never contains ``#`` (``BUCKET_MARK``): ``CUP#2`` would be the store record of ``CUP``'s bucket 2.
Keyed topics are partitioned by Kafka's default (Java) partitioner,
murmur2 of the key bytes (``partition_for``), so a producer in any language places an event on the
partition whose owner keeps that order's or SKU's state.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

from aiokafka.partitioner import murmur2

BUCKET_MARK = "#"


def order_key(channel: str, channel_order_id: str) -> str:
    """The order id an order's events are keyed by: ``<channel>:<channel_order_id>``."""
    return f"{channel}:{channel_order_id}"


def refund_key(channel: str, channel_refund_id: str) -> str:
    """The refund id: ``<channel>:<channel_refund_id>`` (its events are keyed by its order's id)."""
    return f"{channel}:{channel_refund_id}"


# Every consumed message is checked against its key's partition; murmur2 is pure Python (a few µs),
# and a hot SKU or an order's handful of events repeat the same key, so recent answers are kept.
@lru_cache(maxsize=16_384)
def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default (Java) partitioner picks for ``key``."""
    hashed: int = murmur2(key)  # aiokafka ships no type information
    return (hashed & 0x7FFFFFFF) % partitions


@lru_cache(maxsize=16_384)
def bucket_key(sku: str, bucket: int, partitions: int) -> str:
    """The key of bucket ``bucket`` of a hot SKU on topics of ``partitions`` partitions; -1: the SKU itself.

    Bucket k is ``<sku>#k`` when that key lands on a partition neither the SKU nor a lower bucket uses,
    else the first of ``<sku>#k.1``, ``<sku>#k.2``, ... that does: by hash alone, 4 buckets over 8
    partitions share one in 6 SKUs of 10, and two buckets on one partition are decided by one worker.
    With ``partitions`` buckets the last shares the home's partition; beyond that, buckets share. Only
    placement depends on ``partitions``: every key is routed by its own hash, so a wrong count costs
    spread, never correctness.
    """
    if bucket < 0:
        return sku
    plain = f"{sku}{BUCKET_MARK}{bucket}"
    taken = {partition_for(bucket_key(sku, b, partitions).encode(), partitions) for b in range(bucket)}
    if len(taken) >= partitions:
        return plain
    if len(taken) < partitions - 1:  # room to keep off the home's partition too
        taken.add(partition_for(sku.encode(), partitions))
    key, salt = plain, 0
    while partition_for(key.encode(), partitions) in taken:
        salt += 1
        key = f"{plain}.{salt}"
    return key


def bucket_for(order_id: str, buckets: int) -> int:
    """The bucket of a hot SKU an order's lines try first: the same in every process (crc32, not ``hash``)."""
    return zlib.crc32(order_id.encode()) % buckets
