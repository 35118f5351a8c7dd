"""What became of a VIP override: the pool's answer on ``audit.overrides``, for the ``override`` commands.

Reads: ``audit.overrides`` (read_committed: the pool writes it in its transactions). Writes: nothing.
The pure functions (``answers``, ``progress``, ``verdict``, ``latest_per_override``) decide which audit record answers
an operator's action and what it means; ``wait_for_outcome`` and ``read_audits`` talk to the broker.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from streams.contract.codec import DecodeError, codec_for
from streams.contract.reasons import Reason
from streams.contract.set_aside import parse_pledge
from streams.contract.topics import AUDIT_OVERRIDES
from streams.engine.retry import Backoff, Retry
from streams.engine.topicreader import read_all, watermark
from streams.kafkaconf import confluent_config
from streams.settings import Settings

TOPIC_APPEARS_S = 5.0  # how long a topic may take to show in metadata after its creation
# The outcomes that answer each action: a REQUEST seen again answers with the recorded outcome. An approval is
# answered once its VIP order has answered the offer; OFFERED is on the way (``PROGRESS``): reported, waited past.
ANSWERS = {"REQUEST": ("REQUESTED", "OFFERED", "APPLIED", "REFUSED"), "APPROVE": ("APPLIED", "REFUSED")}
PROGRESS = {"REQUEST": (), "APPROVE": ("OFFERED",)}


@dataclass(frozen=True)
class Verdict:
    ok: bool
    line: str


def answers(record: dict[str, Any], override_id: str, action: str) -> bool:
    """Whether an ``OverrideAudited`` record, seen after the action was sent, is the pool's answer to it.

    Matched by override id and by the outcomes the action can have. Who acted is not compared: an
    approval of an override already decided answers with the recorded decision, naming its approver.
    """
    return record.get("override_id") == override_id and record.get("outcome") in ANSWERS[action]


def progress(record: dict[str, Any], override_id: str, action: str) -> bool:
    """Whether an ``OverrideAudited`` record is a step towards the action's answer, not the answer: an approval
    offered to its VIP order, which has yet to claim it (APPLIED) or refuse it (REFUSED)."""
    return record.get("override_id") == override_id and record.get("outcome") in PROGRESS[action]


def verdict(record: dict[str, Any]) -> Verdict:
    """One line saying what the pool decided; ``ok`` is False for a refusal."""
    oid, outcome, detail = record["override_id"], record["outcome"], record.get("detail") or ""
    what = f"{record.get('qty', 0)} x {record.get('sku', '')} for {record.get('vip_order_id', '')}"
    if outcome == "REFUSED":
        try:
            why = f"{detail} ({Reason(detail).description})"
        except ValueError:
            why = detail or "no reason given"
        return Verdict(False, f"override {oid} REFUSED: {why}")
    if outcome == "APPLIED":
        pledged, taken_by = parse_pledge(detail)
        released = ", ".join(record.get("released_holds") or []) or "none"
        pledge = f"; {pledged} pledged from unpaid holds, taken as its lines need them" if pledged else ""
        by = f" (taken over by line {taken_by})" if taken_by else ""
        return Verdict(True, f"override {oid} APPLIED: {what}, approved by {record.get('approver')}; "
                             f"holds released: {released}{by}{pledge}")  # fmt: skip
    if outcome == "OFFERED":
        return Verdict(True, f"override {oid} OFFERED: {what}, approved by {record.get('approver')}; waits for the "
                             "VIP order to claim it (nothing moves before)")  # fmt: skip
    return Verdict(True, f"override {oid} REQUESTED: {what}, by {record.get('requester')}; waits for another "
                         "operator's approval")  # fmt: skip


def latest_per_override(records: Iterable[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The newest audit record of each override, newest first, at most ``limit`` of them."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        current = latest.get(record["override_id"])
        if current is None or record["event_time_ms"] >= current["event_time_ms"]:
            latest[record["override_id"]] = record
    return sorted(latest.values(), key=lambda r: (r["event_time_ms"], r["override_id"]), reverse=True)[:limit]


class OutcomeWatch:
    """Positioned at the end of ``audit.overrides`` before the action is sent, so its answer cannot be missed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic(AUDIT_OVERRIDES.name)
        self.codec = codec_for(settings)
        self.consumer = Consumer({
            **confluent_config(settings), "group.id": f"stockflow-override-{uuid.uuid4().hex}",
            "enable.auto.commit": False, "isolation.level": "read_committed", "log_level": 3,
        })  # fmt: skip
        try:
            # A topic created a moment ago can be missing from a busy broker's metadata for a while.
            appears = Retry(f"metadata of {self.topic}", (LookupError,), deadline_s=TOPIC_APPEARS_S,
                            backoff=Backoff(0.25, 1.0), level=logging.DEBUG)  # fmt: skip
            meta = appears.call(self._metadata)
            self.consumer.assign([self._end(p) for p in meta.partitions])
        except BaseException:
            self.consumer.close()
            raise

    def _metadata(self) -> Any:
        meta = self.consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if meta is None or meta.error is not None:
            raise LookupError(f"topic {self.topic} does not exist (run `stockflow topics create`)")
        return meta

    def _end(self, partition: int) -> TopicPartition:
        _, high = watermark(self.consumer, TopicPartition(self.topic, partition), 15)  # waits for a new leader
        return TopicPartition(self.topic, partition, high if high >= 0 else OFFSET_END)

    def wait(self, override_id: str, action: str, timeout_s: float,
             on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:  # fmt: skip
        """The pool's answer, or None if none came within ``timeout_s``; each step seen on the way (an approval's
        offer) is given to ``on_progress``, and the wait goes on within the same bound."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            for msg in self.consumer.consume(num_messages=500, timeout=min(0.5, left)):
                if msg.error() or msg.value() is None:
                    continue
                try:
                    _, record = self.codec.decode(msg.value())
                except DecodeError:
                    continue
                if answers(record, override_id, action):
                    return record
                if on_progress is not None and progress(record, override_id, action):
                    on_progress(record)
        return None

    def close(self) -> None:
        self.consumer.close()


def read_audits(settings: Settings) -> Sequence[dict[str, Any]]:
    """Every readable ``OverrideAudited`` record now on ``audit.overrides``."""
    codec = codec_for(settings)
    out = []
    for rec in read_all(settings, settings.topic(AUDIT_OVERRIDES.name)):
        if rec.value is None:
            continue
        try:
            _, record = codec.decode(rec.value)
        except DecodeError:
            continue
        out.append(record)
    return out
