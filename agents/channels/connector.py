"""What the refund and the stock connector share: their collaborators, one lane per channel, and the
loop reading their input topic.

Reads: one input topic through ``kafka_io.InputLoop`` (the subclass names it and handles each record).
Writes: nothing itself; its lanes call the marketplaces and write results through the ``ResultSink``.
Owns: the lanes' lifetime (start, join) and the rule that a lane dying stops the process (``run_lane``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from agents.channels.calls import ChannelCaller
from agents.channels.kafka_io import ConnectorAlerts, InputLoop, Received, ResultSink
from agents.channels.outbound import TopicPartitionKey
from streams.contract.codec import Codec
from streams.contract.registry import EventType
from streams.settings import Settings

log = logging.getLogger(__name__)


class Lane(Protocol):
    def start(self) -> None: ...

    def join(self, timeout_s: float) -> None: ...


LaneT = TypeVar("LaneT", bound=Lane)


class Connector(Generic[LaneT]):
    """A subclass names its input (``TOPIC``, consumer group suffix ``GROUP``, dead-letter ``STAGE``, how
    many records may be read and unfinished, ``MAX_IN_FLIGHT``), makes its lanes (``make_lanes``) and
    handles each record of its topic (``handle``)."""

    TOPIC: ClassVar[str]
    GROUP: ClassVar[str]
    STAGE: ClassVar[str]
    MAX_IN_FLIGHT: ClassVar[int]
    READS_ENDS: ClassVar[bool] = False  # told each assigned partition's end offset (``partitions_assigned``)

    def __init__(self, settings: Settings, codec: Codec, caller: ChannelCaller, sink: ResultSink,
                 alerts: ConnectorAlerts, stop: threading.Event, on_error: Callable[[str], None]) -> None:  # fmt: skip
        self.settings = settings
        self.caller = caller
        self.sink = sink
        self.alerts = alerts
        self.stop = stop
        self.on_error = on_error  # stops the process
        self.lanes: dict[str, LaneT] = self.make_lanes()
        self.loop = InputLoop(settings, codec, sink, group_id=f"{settings.app_id}.connectors.{self.GROUP}",
                              topic=self.TOPIC, stage=self.STAGE, handle=self.handle, stop=stop,
                              max_in_flight=self.MAX_IN_FLIGHT, on_revoked=self.partitions_revoked,
                              on_assigned=self.partitions_assigned if self.READS_ENDS else None)  # fmt: skip

    def make_lanes(self) -> dict[str, LaneT]:
        raise NotImplementedError

    def handle(self, msg: Received, event_type: EventType, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def partitions_revoked(self, partitions: set[TopicPartitionKey]) -> None:
        """``partitions`` of the input went to another member (maybe this one again, at once): their records'
        work still queued is the new owner's, and what a subclass remembers of them may now be stale."""

    def partitions_assigned(self, ends: dict[TopicPartitionKey, int]) -> None:
        """Partitions of the input came to this member, with their end offsets then (only if ``READS_ENDS``):
        records below were maybe read by an earlier owner, which may have left work of them half done."""

    def start_lanes(self) -> None:
        for lane in self.lanes.values():
            lane.start()

    def join(self, timeout_s: float) -> None:
        for lane in self.lanes.values():
            lane.join(timeout_s)


def run_lane(serve: Callable[[], None], on_error: Callable[[str], None]) -> None:
    """Run a lane's ``serve`` in the calling thread; if it raises, ``on_error`` stops the process."""
    try:
        serve()
    except Exception as exc:
        # A lane that died quietly would leave its channel unserved while the process looks healthy.
        name = threading.current_thread().name
        log.exception("%s failed", name)
        on_error(f"{name}: {type(exc).__name__}: {exc}")
