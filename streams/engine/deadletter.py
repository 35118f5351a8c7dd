"""The single writer of the ``deadletters`` topic.

A refused message keeps its original bytes, its source topic/partition/offset, the module that
refused it and why (a ``Reason``). The dead letter's event id is derived from the source
position and stage, so a replay after a crash writes the same id and ClickHouse keeps one row.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

from streams.contract.reasons import Reason
from streams.contract.records import DeadLetter


@dataclass(frozen=True)
class KeptMessage:
    """A message a processor keeps in its state to dead-letter later, with its original bytes, if what
    it waits for never comes (an event parked for its order, a settlement waiting for its refund's
    request). ``keep`` gives the JSON-able form a store holds."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @staticmethod
    def keep(message: Any) -> dict[str, Any]:
        """``message`` (a confluent-kafka ``Message``) as a store holds it."""

        def b64(raw: bytes | str | None) -> str:
            return base64.b64encode(raw.encode() if isinstance(raw, str) else raw or b"").decode()

        return {"topic": message.topic(), "partition": message.partition(), "offset": message.offset(),
                "key": b64(message.key()), "value": b64(message.value())}  # fmt: skip

    @classmethod
    def load(cls, kept: dict[str, Any]) -> KeptMessage:
        return cls(kept["topic"], kept["partition"], kept["offset"],
                   base64.b64decode(kept["key"]) or None, base64.b64decode(kept["value"]) or None)  # fmt: skip


def dead_letter(message: Any, stage: str, reason: Reason, detail: str, now_ms: int) -> DeadLetter:
    """Build the record for a faust ``Message`` (anything with topic/partition/offset/key/value)."""
    return DeadLetter(
        event_id=f"{message.topic}:{message.partition}:{message.offset}:{stage}",
        event_time_ms=now_ms,
        source_topic=message.topic,
        source_partition=message.partition,
        source_offset=message.offset,
        stage=stage,
        reason=reason,
        detail=detail[:2000],
        original_key=message.key if isinstance(message.key, bytes) else None,
        original_value=message.value if isinstance(message.value, bytes) else None,
    )


def refused_request(path: str, body: bytes, caller: str, stage: str, reason: Reason, detail: str,
                    now_ms: int) -> DeadLetter:  # fmt: skip
    """The record for an HTTP request refused before it became a message (stockflow intake): its route
    stands for the topic (``http:<path>``), with partition 0 and offset -1 (no message), and the body as it came. Its
    id is the route, the body's digest and the reason, so a caller's retries of one body make one row."""
    digest = hashlib.sha256(body).hexdigest()[:32]
    return DeadLetter(
        event_id=f"http:{path}:{digest}:{reason}",
        event_time_ms=now_ms,
        source_topic=f"http:{path}",
        source_partition=0,  # the dashboards' table holds partitions unsigned
        source_offset=-1,
        stage=stage,
        reason=reason,
        detail=detail[:2000],
        original_key=caller.encode() or None,
        original_value=body,
    )
