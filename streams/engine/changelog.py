"""Changelog topics: their names, their creation, and restoring a partition store from one.

Each store has a compacted changelog topic with as many partitions as the inputs; partition ``p``
of the changelog holds store partition ``p``. A batch writes one record per changed key (a
tombstone for a deleted one) inside the batch's Kafka transaction, so a restore reading committed
records only sees whole batches: never a hold without the totals it changed.
"""

from __future__ import annotations

import logging
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.engine.state import PartitionStore
from streams.kafkaconf import AuthWatch, confluent_config, topic_config
from streams.settings import Settings

log = logging.getLogger(__name__)


def changelog_topic(settings: Settings, store: str) -> str:
    return settings.topic(f"{settings.app_id}.{store}.changelog")


# How long a changelog keeps a delete (a tombstone) after compaction reached it: Kafka's default, set
# explicitly because a local folder is trusted only for half of it (``TRUSTED_FOR_MS``).
DELETES_KEPT_MS = 24 * 3_600_000
TRUSTED_FOR_MS = DELETES_KEPT_MS // 2


def ensure_changelogs(settings: Settings, stores: list[str]) -> None:
    """Create each store's changelog (compacted, one partition per input partition) if missing."""
    config = {**topic_config(settings), "min.compaction.lag.ms": "60000", "segment.ms": "3600000",
              "delete.retention.ms": str(DELETES_KEPT_MS)}  # fmt: skip
    ensure_compacted(settings, {changelog_topic(settings, store): config for store in stores})


def ensure_compacted(settings: Settings, topics: dict[str, dict[str, str]]) -> None:
    """Create the compacted ``topics`` (name -> topic config) that are missing, ``settings.partitions``
    partitions each, and return once the broker serves every partition of the new ones; an existing one
    with another partition count is refused."""
    watch = AuthWatch(settings)
    admin = AdminClient(confluent_config(settings, error_cb=watch))
    existing = watch.list_topics(admin, 15).topics
    wanted = []
    for name, config in topics.items():
        if name in existing:
            found = len(existing[name].partitions)
            if found != settings.partitions:
                raise RuntimeError(f"{name} has {found} partitions, the inputs {settings.partitions}")
            continue
        wanted.append(NewTopic(name, settings.partitions, settings.kafka_replication_factor,
                               config={**config, "cleanup.policy": "compact"}))  # fmt: skip
    for name, future in admin.create_topics(wanted, operation_timeout=30).items() if wanted else ():
        try:
            future.result()
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
            log.debug("changelog %s created by another worker", name)
    if wanted:
        _wait_until_served(admin, [t.topic for t in wanted], settings.partitions)


def _wait_until_served(admin: AdminClient, names: list[str], partitions: int, timeout_s: float = 30.0) -> None:
    """Until every partition of the new ``names`` has a leader: a restore that asks for a partition the
    broker does not serve yet fails with "Unknown partition"."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=10).topics
        served = [n for n in names if n in topics and len(topics[n].partitions) == partitions
                  and all(p.leader >= 0 for p in topics[n].partitions.values())]  # fmt: skip
        if len(served) == len(names):
            return
        time.sleep(0.1)
    log.warning("changelogs %s not served by every partition's leader after %.0fs", names, timeout_s)


def restore(
    stores: dict[tuple[str, int], PartitionStore], settings: Settings, timeout_s: float = 120.0
) -> tuple[dict[tuple[str, int], PartitionStore], int]:
    """Bring every store (keyed by its changelog topic and partition) up to the end of its changelog
    partition, with one consumer for all of them; return the stores (a store that had to be wiped is
    a new object) and the records applied.

    Reads committed records only, up to the high watermark taken at the start: with a previous
    owner's transaction still open, that waits for it to commit or abort (bounded by the
    transaction timeout) instead of stopping early and missing its batch.
    """
    consumer = Consumer({
        **confluent_config(settings),
        "group.id": f"restore-{uuid.uuid4()}",  # never committed: assign() only
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "fetch.max.bytes": 32 * 1024 * 1024,
    })  # fmt: skip
    # Watermarks from a read_uncommitted client: under read_committed the "high" watermark is the
    # last stable offset, which an open transaction holds back, and a healthy folder would look
    # ahead of its changelog and be wiped.
    watermarks = Consumer({**confluent_config(settings), "group.id": f"restore-{uuid.uuid4()}",
                           "enable.auto.commit": False, "isolation.level": "read_uncommitted"})  # fmt: skip
    out = dict(stores)
    try:
        try:
            ends, assignment = _restore_ranges(watermarks, stores, out)
        finally:
            watermarks.close()
        if not assignment:
            return out, 0
        consumer.assign(assignment)
        applied = 0
        deadline = time.monotonic() + timeout_s
        while ends:
            if time.monotonic() > deadline:
                raise TimeoutError(f"restoring {sorted(ends)} did not reach the changelog's end in {timeout_s:.0f}s")
            changes: dict[tuple[str, int], dict[bytes, bytes | None]] = {}
            newest: dict[tuple[str, int], int] = {}
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                error = msg.error()
                if error is not None:
                    raise RuntimeError(f"restoring {msg.topic()}[{msg.partition()}]: {error}")
                key = msg.key()
                if key is None:
                    continue
                where = (msg.topic() or "", msg.partition() or 0)
                changes.setdefault(where, {})[key if isinstance(key, bytes) else key.encode()] = msg.value()
                newest[where] = msg.offset() or 0
            for where, batch in changes.items():
                out[where].apply(batch, newest[where], remember=False)
                applied += len(batch)
            # Transaction markers occupy offsets no record has: the position says where a partition is.
            for tp in consumer.position([TopicPartition(t, p) for t, p in ends]):
                where = (tp.topic, tp.partition)
                if tp.offset >= ends[where]:
                    out[where].apply({}, ends.pop(where) - 1)
        return out, applied
    finally:
        consumer.close()


def _restore_ranges(
    consumer: Consumer, stores: dict[tuple[str, int], PartitionStore], out: dict[tuple[str, int], PartitionStore]
) -> tuple[dict[tuple[str, int], int], list[TopicPartition]]:
    """Where each store's restore ends (its changelog's high watermark now, read with ``consumer``, a
    read_uncommitted client) and the positions to read from; a store its changelog cannot vouch for
    is replaced in ``out`` by a wiped one, read from the start."""
    ends: dict[tuple[str, int], int] = {}
    assignment = []
    for (topic, partition), store in stores.items():
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)
        start = store.changelog_offset + 1
        idle_ms = int(time.time() * 1000) - store.written_ms
        if start > high or (start < low and start > 0) or (start > 0 and idle_ms > TRUSTED_FOR_MS):
            # Ahead of its changelog (the topic was recreated), behind what compaction kept, or left
            # so long that compaction may have removed deletes it never saw (a released hold would
            # come back held): the folder cannot be trusted; rebuild it from the changelog alone.
            log.warning("%s[%d]: local store at %d, last written %.1f h ago, changelog %d..%d: rebuilding", topic,
                        partition, start, idle_ms / 3.6e6, low, high)  # fmt: skip
            out[(topic, partition)] = store.wipe()
            start = 0
        if start < high:
            ends[(topic, partition)] = high
            assignment.append(TopicPartition(topic, partition, start if start > 0 else OFFSET_BEGINNING))
    return ends, assignment
