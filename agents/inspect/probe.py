"""What ``stockflow inspect`` measures: the figures of each named check, read now.

Reads the broker (the committed offsets of the engine's and the sink's consumer groups, the high
watermarks, the dead-letter topic's offsets by time), the sink's ``/sink/status`` and the
connectors' ``/connectors/status`` views, and the file system of ``STOCKFLOW_HOME``. Writes
nothing. A source that does not answer gives its checks no value (judged ``unknown``), never an
exception: the report still shows everything else.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from agents.inspect.checks import InspectConfig, Measurement, dead_letter_rate, group_lag, sink_insert_lag_s
from streams.contract.topics import DEADLETTERS
from streams.engine.loop import engine_group
from streams.kafkaconf import confluent_config
from streams.settings import Settings

TIMEOUT_S = 5.0
GIB = 1 << 30


def measure(settings: Settings, config: InspectConfig) -> list[Measurement]:
    """Every check's figures, now."""
    out = list(_broker(settings, config))
    out += _sink(settings)
    out += _connectors(settings)
    out.append(disk_free(settings.home))
    return out


def _get(url: str) -> dict[str, Any]:
    response = httpx.get(url, timeout=TIMEOUT_S)
    data: dict[str, Any] = response.json()
    return data


def _broker(settings: Settings, config: InspectConfig) -> Iterator[Measurement]:
    common: dict[str, Any] = confluent_config(settings, **{"socket.timeout.ms": int(TIMEOUT_S * 1000)})
    groups = (("engine_lag", engine_group(settings)), ("sink_lag", f"{settings.app_id}.sink"))
    consumer = Consumer({**common, "group.id": f"{settings.app_id}.inspect", "enable.auto.commit": False})
    try:
        admin = AdminClient(common)
        for check, group in groups:
            try:
                committed = _committed(admin, group)
                high = {tp: _high(consumer, *tp) for tp in committed}
            except (KafkaException, TimeoutError) as exc:
                yield Measurement(check, group, None, f"broker: {exc}")
                continue
            detail = "" if committed else "the group has committed nothing yet"
            yield Measurement(check, group, float(group_lag(committed, high)), detail)
        window = config.checks["dead_letter_rate"].window_minutes
        try:
            counts = _dead_letters_since(consumer, settings.topic(DEADLETTERS.name), window)
        except (KafkaException, TimeoutError) as exc:
            yield Measurement("dead_letter_rate", "", None, f"broker: {exc}")
        else:
            yield Measurement("dead_letter_rate", "", dead_letter_rate(counts, window),
                              f"{sum(counts.values())} in the last {window} min")  # fmt: skip
    finally:
        consumer.close()


def _committed(admin: AdminClient, group: str) -> dict[tuple[str, int], int]:
    future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
    result = future.result(timeout=TIMEOUT_S)
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions or []}


def _high(consumer: Consumer, topic: str, partition: int) -> int:
    _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=TIMEOUT_S)
    return int(high)


def _dead_letters_since(consumer: Consumer, topic: str, minutes: int) -> dict[int, int]:
    """Per partition of ``topic``, the records written in the last ``minutes``."""
    meta = consumer.list_topics(topic, timeout=TIMEOUT_S).topics[topic]
    if meta.error is not None:
        raise KafkaException(meta.error)
    since_ms = int(time.time() * 1000) - minutes * 60_000
    wanted = [TopicPartition(topic, p, since_ms) for p in meta.partitions]
    counts = {}
    for tp in consumer.offsets_for_times(wanted, timeout=TIMEOUT_S):
        # No record at or after the time: offset -1, nothing in the window.
        counts[tp.partition] = _high(consumer, topic, tp.partition) - tp.offset if tp.offset >= 0 else 0
    return counts


def _sink(settings: Settings) -> list[Measurement]:
    try:
        status = _get(f"{settings.sink_base_url}/sink/status")
    except (httpx.HTTPError, ValueError) as exc:
        return [Measurement("sink_insert_lag", "", None, f"sink unreachable: {exc}")]
    now_ms = int(time.time() * 1000)
    lag = int(status.get("lag", -1))
    last = int(status.get("last_insert_ms") or 0)
    detail = f"{lag} records waiting" if lag > 0 else "nothing waiting"
    return [Measurement("sink_insert_lag", "", sink_insert_lag_s(lag, last, now_ms, now_ms), detail)]


def _connectors(settings: Settings) -> list[Measurement]:
    try:
        status = _get(f"{settings.connectors_base_url}/connectors/status")
    except (httpx.HTTPError, ValueError) as exc:
        why = f"connectors unreachable: {exc}"
        checks = ("connector_latency_p99", "connector_failing", "failed_queue_depth", "credential_expiry")
        return [Measurement(check, "", None, why) for check in checks]
    out = []
    for channel, info in sorted(status.get("channels", {}).items()):
        p99s = {e: (s.get("latency_ms") or {}).get("p99") for e, s in info.get("endpoints", {}).items()}
        known = {e: v for e, v in p99s.items() if v is not None}
        if known:  # a channel nobody called yet has no latency to judge
            slowest = max(known, key=lambda e: known[e])
            out.append(Measurement("connector_latency_p99", channel, known[slowest] / 1000, f"slowest: {slowest}"))
        failing = sorted(e for e, s in info.get("endpoints", {}).items() if s.get("failing"))
        out.append(Measurement("connector_failing", channel, float(len(failing)), ", ".join(failing)))
        depth = int(info.get("refunds_queued", 0)) + int(info.get("stock_pending", 0))
        out.append(Measurement("failed_queue_depth", channel, float(depth)))
        days = (info.get("credentials") or {}).get("days_left")
        if days is not None:
            out.append(Measurement("credential_expiry", channel, float(days), info["credentials"].get("expires", "")))
    return out


def disk_free(home: Path) -> Measurement:
    """Free GiB on the file system holding ``home`` (its nearest existing parent when not created yet)."""
    where = home.resolve()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    return Measurement("disk_free", str(where), round(free / GIB, 2))
