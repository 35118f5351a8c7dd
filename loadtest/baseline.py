"""What this machine can do for this work without stockflow: a plain Kafka consume -> transform -> produce loop.

Same broker, same partition count, messages of the run's average size, as many messages as the
pipeline moved. The loop is confluent-kafka at its simplest: poll a batch, change a byte, produce
to an output topic, commit. The pipeline's events/s divided by this loop's is the ratio to read:
it stays comparable between noisy shared machines.

``clean_plain_loop_events_per_s`` runs the loop in fresh processes and takes the median: in the
process that drove a load run, beside everything the run left alive, the same loop read 196-216k
events/s, where fresh processes move 274-305k.

The loop is bimodal on two cores: most runs read ~280k events/s, about one in four 670-740k. Pinned
to one core (``taskset -c 0``) it reads 590-610k every time, so the fast runs are those whose Python
thread and librdkafka's threads happened to share a core, and the slow ones pay for handing every
message across cores. Five runs and their median keep one lucky run from setting the ratio; the
runs themselves are reported beside it.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams.kafkaconf import confluent_config
from streams.settings import Settings


def plain_loop_events_per_s(settings: Settings, messages: int, size: int, timeout_s: float = 300.0) -> float:
    tag = uuid.uuid4().hex[:8]
    source, sink = f"{settings.topic_prefix}baseline-in-{tag}", f"{settings.topic_prefix}baseline-out-{tag}"
    admin = AdminClient(confluent_config(settings))
    for fut in admin.create_topics([NewTopic(t, settings.partitions, 1) for t in (source, sink)]).values():
        fut.result()
    producer = Producer({**confluent_config(settings), "linger.ms": 5, "acks": "all",
                         "enable.idempotence": True, "compression.type": "lz4"})  # fmt: skip
    payload = bytes(size)
    for i in range(messages):
        while True:
            try:
                producer.produce(source, key=f"SKU-{i % 1000:05d}".encode(), value=payload)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)

    consumer = Consumer({**confluent_config(settings), "group.id": f"baseline-{tag}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([source])
    moved = 0
    started = None
    deadline = time.monotonic() + timeout_s
    while moved < messages and time.monotonic() < deadline:
        batch = consumer.consume(num_messages=5000, timeout=1.0)
        if not batch:
            continue
        started = started or time.perf_counter()
        for msg in batch:
            if msg.error():
                continue
            value = bytearray(msg.value() or b"")
            value[0] = (value[0] + 1) % 256  # the "transform"
            while True:
                try:
                    producer.produce(sink, key=msg.key(), value=bytes(value))
                    break
                except BufferError:
                    producer.poll(0.05)
            moved += 1
        producer.poll(0)
        consumer.commit(asynchronous=True)
    producer.flush(120)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    admin.delete_topics([source, sink])
    return moved / max(elapsed, 1e-3)


def plain_loop_runs(settings: Settings, messages: int, size: int, runs: int = 5) -> list[float]:
    """Events/s of ``runs`` loops, each in a fresh Python process with ``settings``."""
    env = {**os.environ, **settings.as_env()}
    figures = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-m", "loadtest.baseline", str(messages), str(size)], env=env,
                             capture_output=True, text=True, timeout=600, check=True)  # fmt: skip
        figures.append(round(float(out.stdout.split()[-1]), 1))
    return figures


def clean_plain_loop_events_per_s(settings: Settings, messages: int, size: int, runs: int = 5) -> float:
    """The median of ``plain_loop_runs``."""
    return statistics.median(plain_loop_runs(settings, messages, size, runs))


if __name__ == "__main__":
    print(plain_loop_events_per_s(Settings(), int(sys.argv[1]), int(sys.argv[2])))
