"""The refund connector: pays approved refunds back through each marketplace's refund-agree API.

Reads: ``refund.instructions`` (``RefundInstruction``, key order id) as consumer group
``<app id>.connectors.refunds``, read_committed. Writes: ``refund.issued`` (``RefundIssued``; this
module is its single writer) when the marketplace agreed the refund or answers that it had already;
``connector.failed.<channel>`` (``ConnectorCallFailed``) for a call that failed for good - a rejected or
expired key, a refused request, or retries spent; ``alerts`` (``connector_failing``, once per change of
a channel's state); ``deadletters`` for an instruction it cannot read or route. Owns: its group's offsets.

Every instruction goes to its channel's lane, a thread that calls that channel in instruction order,
so one channel's retries or rotated key never hold up another channel, and the channel's failed queue
keeps the order the instructions came in. The call carries the platform's own refund id (the
instruction's ``channel_refund_id``, 1:1 with the refund id, the idempotency key) and the order, so
sending it again - after a crash, or from ``stockflow connectors replay`` - never refunds twice: the
marketplace answers "already agreed" and that counts as issued. An input record is finished, and its
offset may be committed, only when its result (``RefundIssued`` or the failed-call record) is
acknowledged by the broker. When its partition is revoked, the instructions of that partition still
queued are taken off their lanes: the partition's new owner sends them, and a lane never starts a
call for an instruction read before its partition went (``InputLoop.holds``).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from agents.channels import platforms as pf
from agents.channels.calls import CallResult, Stopping
from agents.channels.connector import Connector, run_lane
from agents.channels.kafka_io import Received, ResultSink
from agents.channels.outbound import Ticket, TopicPartitionKey, refund_issued
from streams.contract.reasons import Reason
from streams.contract.records import RefundInstruction
from streams.contract.registry import EventType
from streams.contract.topics import CONNECTOR_FAILED, REFUND_INSTRUCTIONS, REFUND_ISSUED
from streams.engine.clock import wall_ms

log = logging.getLogger(__name__)
STAGE = "agents.channels.issue_refunds"
ENDPOINT: pf.Endpoint = "refund"
MAX_IN_FLIGHT = 20_000  # instructions read and not yet finished before reading pauses


def refund_request(channel: str, channel_refund_id: str, channel_order_id: str, amount_fen: int) -> dict[str, Any]:
    """The refund-agree body in the platform's field names: its refund id, the amount, and the order."""
    return pf.refund_body(channel, channel_refund_id, amount_fen, channel_order_id=channel_order_id)


@dataclass(frozen=True)
class RefundCall:
    """One refund-agree call: for which refund and order, the body sent, the record that asked for it."""

    channel: str
    refund_id: str
    order_id: str
    body: dict[str, Any]
    source: str

    @classmethod
    def of(cls, instruction: RefundInstruction, source: str) -> RefundCall:
        channel = instruction["channel"]
        body = refund_request(channel, instruction["channel_refund_id"], instruction["channel_order_id"],
                              instruction["amount_fen"])  # fmt: skip
        return cls(channel, instruction["refund_id"], instruction["order_id"], body, source)


def write_result(
    sink: ResultSink,
    call: RefundCall,
    result: CallResult,
    on_done: Callable[[], None] | None,
    *,
    earlier_attempts: int = 0,
    replayed: bool = False,
) -> None:
    """Write what a refund call came to: ``RefundIssued`` if it is done, else its failed-call record.

    The live lanes and the replay alike; ``on_done`` runs when the record is acknowledged.
    """
    if result.done:
        amount = pf.parse_refund(call.channel, call.body).amount_fen
        issued = refund_issued(call.refund_id, call.order_id, call.channel, amount, result.platform_ref(call.channel),
                               earlier_attempts + result.attempts, wall_ms(), replayed=replayed)  # fmt: skip
        sink.send(REFUND_ISSUED.name, call.order_id, "RefundIssued", issued, on_done)
    else:
        failed = result.failed_call(call.channel, ENDPOINT, call.refund_id, call.body, call.source, earlier_attempts)
        sink.park(failed, on_done)


Queued = tuple[RefundInstruction, Ticket, str]


class RefundLane(threading.Thread):
    """One channel's refund calls, one at a time, in the order the instructions were read."""

    def __init__(self, channel: str, connector: RefundConnector) -> None:
        super().__init__(name=f"refunds-{channel}", daemon=True)
        self.channel = channel
        self.connector = connector
        self._waiting: deque[Queued] = deque()
        self._cond = threading.Condition()

    def put(self, instruction: RefundInstruction, ticket: Ticket, source: str) -> None:
        with self._cond:
            self._waiting.append((instruction, ticket, source))
            self._cond.notify()

    def queued(self) -> int:
        with self._cond:
            return len(self._waiting)

    def forget_partitions(self, partitions: Collection[TopicPartitionKey]) -> int:
        """Take the instructions read from ``partitions`` off the lane (their new owner sends them); how many."""
        with self._cond:
            kept = deque(item for item in self._waiting if item[1].tp not in partitions)
            dropped = len(self._waiting) - len(kept)
            self._waiting = kept
        return dropped

    def _next(self, timeout_s: float) -> Queued | None:
        with self._cond:
            if not self._waiting:
                self._cond.wait(timeout_s)
            return self._waiting.popleft() if self._waiting else None

    def run(self) -> None:
        run_lane(self._serve, self.connector.on_error)

    def _serve(self) -> None:
        stop, loop = self.connector.stop, self.connector.loop
        while not stop.is_set():
            item = self._next(0.2)
            if item is None:
                continue
            if stop.is_set():
                return  # what is queued stays unfinished and is read again at the next start
            instruction, ticket, source = item
            if not loop.holds(ticket):
                continue  # taken by the lane just as its partition was revoked: the new owner sends it
            self._send(instruction, ticket, source)

    def _send(self, instruction: RefundInstruction, ticket: Ticket, source: str) -> None:
        c = self.connector
        call = RefundCall.of(instruction, source)
        try:
            result = c.caller.call(self.channel, ENDPOINT, call.body, what=call.refund_id)
        except Stopping:
            log.info("%s: stopped while retrying refund %s; it is sent again at the next start", self.channel,
                     call.refund_id)  # fmt: skip
            return
        write_result(c.sink, call, result, lambda: c.loop.finish(ticket))
        if result.done:
            c.alerts.succeeded(self.channel, ENDPOINT)
        else:
            log.warning("%s refund %s failed (%s): %s", self.channel, call.refund_id, result.reason,
                        result.answer[:200])  # fmt: skip
            c.alerts.failed(self.channel, ENDPOINT, result.reason, result.answer)


class RefundConnector(Connector[RefundLane]):
    """``refund.instructions`` to the marketplaces; ``start`` its lanes, then ``loop.run`` (blocking)."""

    TOPIC = REFUND_INSTRUCTIONS.name
    GROUP = "refunds"
    STAGE = STAGE
    MAX_IN_FLIGHT = MAX_IN_FLIGHT

    def make_lanes(self) -> dict[str, RefundLane]:
        return {channel: RefundLane(channel, self) for channel in CONNECTOR_FAILED}

    def handle(self, msg: Received, event_type: EventType, record: dict[str, Any]) -> None:
        if event_type.short_name != "RefundInstruction":
            self.loop.refuse(msg, Reason.UNEXPECTED_EVENT_TYPE, f"{event_type.short_name} on {msg.topic}")
            return
        instruction: RefundInstruction = record  # type: ignore[assignment]
        lane = self.lanes.get(instruction["channel"])
        if lane is None:
            # No marketplace to call and no failed queue to park it on: kept as a dead letter instead.
            self.loop.refuse(msg, Reason.UNKNOWN_CHANNEL, f"refund {instruction['refund_id']} for channel "
                             f"{instruction['channel']!r}, which has no connector")  # fmt: skip
            return
        lane.put(instruction, self.loop.begin(msg, 1), msg.source)

    def partitions_revoked(self, partitions: set[TopicPartitionKey]) -> None:
        dropped = sum(lane.forget_partitions(partitions) for lane in self.lanes.values())
        if dropped:
            log.info("refunds: %d queued instruction(s) of revoked partitions %s left to their new owner", dropped,
                     sorted(p for _, p in partitions))  # fmt: skip

    def queued(self) -> dict[str, int]:
        return {channel: lane.queued() for channel, lane in self.lanes.items()}
