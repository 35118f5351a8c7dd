"""The single writer of the ``deadletters`` topic.

A refused message keeps its original bytes, its source topic/partition/offset, the module that
refused it and why (a ``Reason``). The dead letter's event id is derived from the source
position and stage, so a replay after a crash writes the same id and ClickHouse keeps one row.
"""

from __future__ import annotations

from typing import Any

from streams.contract.reasons import Reason
from streams.contract.records import DeadLetter


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
