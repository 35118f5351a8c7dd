"""When each output became visible outside the pipeline: the bench's latency clock.

A read_committed consumer outside any group, started before the first send at the topics' current
ends, notes the wall-clock time every record of the timed topics reaches it. A decision counts from
then, as a channel connector or a buyer's app would see it: a record the worker stamped but whose
transaction has not committed yet is not visible, so a time taken inside the worker would leave the
commit and the fetch out. The thread only stores bytes and times; decoding waits for the run's end,
so the watch takes as little CPU as it can from the box it measures.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition

from streams.engine.topicreader import watermarks
from streams.kafkaconf import confluent_config
from streams.settings import Settings

POLL_S = 0.05


@dataclass
class Arrival:
    received_ms: int
    key: bytes | None
    value: bytes


@dataclass
class Arrivals:
    """Records of ``topics`` (contract names) as they reached an outside consumer, per topic, in order."""

    settings: Settings
    topics: tuple[str, ...]
    seen: dict[str, list[Arrival]] = field(default_factory=lambda: defaultdict(list))
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Assign every partition at its current end (so nothing sent after this returns is missed) and
        start reading in a thread."""
        consumer = Consumer({
            **confluent_config(self.settings),
            "group.id": f"stockflow-arrivals-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 100,
            "log_level": 3,
        })  # fmt: skip
        names = {self.settings.topic(t): t for t in self.topics}
        assignment = []
        for topic in names:
            for p, (_, high) in sorted(watermarks(consumer, topic, 30).items()):
                assignment.append(TopicPartition(topic, p, max(high, 0)))
        consumer.assign(assignment)
        self._thread = threading.Thread(target=self._read, args=(consumer, names), name="arrivals", daemon=True)
        self._thread.start()

    def _read(self, consumer: Consumer, names: dict[str, str]) -> None:
        try:
            while not self._stop.is_set():
                # consume(n, timeout) waits until it has n records or the timeout passes, so records
                # stamped after it would carry up to the whole wait: take what has arrived without
                # waiting, and when nothing has, wait for the first record alone.
                messages = consumer.consume(1000, timeout=0)
                if not messages:
                    first = consumer.poll(POLL_S)
                    messages = [first] if first is not None else []
                now_ms = int(time.time() * 1000)
                for msg in messages:
                    value = msg.value()
                    if msg.error() is None and value is not None:
                        self.seen[names[msg.topic() or ""]].append(Arrival(now_ms, msg.key(), value))
        finally:
            consumer.close()

    def stop(self) -> None:
        """Stop reading (the pipeline has drained); what was seen stays readable."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
