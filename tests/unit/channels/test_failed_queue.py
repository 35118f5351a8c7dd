"""The failed queues are kept until replayed, and a replay whose saved position the broker has deleted past
says how many records it never saw, instead of starting quietly at the queue's first record."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import OFFSET_INVALID, TopicPartition

from agents.channels import failed_queue
from agents.channels import platforms as pf
from agents.channels.calls import CallResult
from agents.channels.failed_queue import (
    GAP_ALERT,
    POSITIONS,
    IssuedRefunds,
    Replay,
    ReplaySummary,
    gap_alert,
    issued_refunds,
    position_value,
    read_position,
    replay_bounds,
)
from agents.channels.outbound import FailedCall, refund_issued
from agents.channels.platforms import canonical_json
from streams.contract.codec import default_codec
from streams.contract.reasons import Reason
from streams.contract.topics import ALL_TOPICS, CONNECTOR_FAILED, contract_rows, topic_configs
from streams.settings import Settings


def test_the_failed_queues_never_expire() -> None:
    """Changed on purpose: they were created with the broker's default retention (7 days), so an approved
    refund parked longer than that was deleted before anyone replayed it, and never paid."""
    settings = Settings()
    for spec in CONNECTOR_FAILED.values():
        assert topic_configs(settings, spec)["retention.ms"] == "-1", spec.name
    others = [spec for spec in ALL_TOPICS if spec not in CONNECTOR_FAILED.values()]
    assert all("retention.ms" not in topic_configs(settings, spec) for spec in others)
    rows = {row[0]: row[3] for row in contract_rows(settings)}
    assert rows["connector.failed.jd"] == "1 (never expires)"


def test_a_saved_position_inside_the_queue_loses_nothing() -> None:
    bounds = replay_bounds(low=0, high=9, committed=4)
    assert (bounds.start, bounds.end, bounds.lost) == (4, 9, 0)
    assert replay_bounds(low=3, high=9, committed=3).lost == 0
    assert replay_bounds(low=0, high=9, committed=OFFSET_INVALID).start == 0  # never replayed: from the start
    assert replay_bounds(low=5, high=5, committed=9).lost == 0


def test_a_saved_position_older_than_the_queue_counts_the_records_deleted_unreplayed() -> None:
    """Changed on purpose: a position the broker had deleted past was moved to the queue's first record
    without a word, so the replay reported a clean run over a queue that had lost refunds."""
    bounds = replay_bounds(low=7, high=12, committed=2)
    assert (bounds.start, bounds.end, bounds.lost_from, bounds.lost, bounds.position_saved) == (7, 12, 2, 5, True)
    unknown = replay_bounds(low=7, high=12, committed=OFFSET_INVALID)  # no position (never run, or it expired)
    assert (unknown.start, unknown.lost_from, unknown.lost, unknown.position_saved) == (7, 0, 7, False)


def test_a_gap_is_a_red_alert_naming_the_lost_offsets_and_fails_the_replay() -> None:
    bounds = replay_bounds(low=7, high=12, committed=2)
    record = gap_alert("jd", "connector.failed.jd", bounds, 5000)
    assert (record["kind"], record["severity"], record["subject"], record["cleared"]) == (GAP_ALERT, "RED", "jd",
                                                                                          False)  # fmt: skip
    assert "2" in record["message"] and "7" in record["message"] and "5 record(s)" in record["message"]
    assert record["details"] == {"channel": "jd", "topic": "connector.failed.jd", "lost_from": "2", "first_offset": "7",
                                 "lost": "5", "position_saved": "true"}  # fmt: skip
    assert record["event_id"] == gap_alert("jd", "connector.failed.jd", bounds, 9000)["event_id"]  # one gap, one row
    unknown = gap_alert("jd", "connector.failed.jd", replay_bounds(low=7, high=12, committed=OFFSET_INVALID), 5000)
    assert "no saved position" in unknown["message"]
    summary = ReplaySummary("jd", queued=5, sent=5, lost=5)
    assert not summary.clean and summary.to_json()["lost"] == 5 and summary.remaining == 0


# ---- where a replay starts, and what it never pays twice (a fake queue, no broker) -----------------


class FakeMessage:
    def __init__(self, offset: int, value: bytes) -> None:
        self._offset, self._value = offset, value

    def error(self) -> None:
        return None

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value


class FakeQueue:
    """What a replay uses of its consumer: one failed queue (records from offset ``low``) and the replay group's
    committed offset, which the broker may have expired (``OFFSET_INVALID``)."""

    def __init__(self, records: list[bytes], low: int = 0, committed: int = OFFSET_INVALID) -> None:
        self.records, self.low, self.committed_offset = records, low, committed
        self.at = low

    def get_watermark_offsets(self, _tp: TopicPartition, timeout: float = 0) -> tuple[int, int]:
        return self.low, self.low + len(self.records)

    def committed(self, tps: list[TopicPartition], timeout: float = 0) -> list[TopicPartition]:
        return [TopicPartition(tps[0].topic, 0, self.committed_offset)]

    def assign(self, tps: list[TopicPartition]) -> None:
        self.at = tps[0].offset

    def poll(self, _timeout: float = 0) -> FakeMessage | None:
        if self.at >= self.low + len(self.records):
            return None
        self.at += 1
        return FakeMessage(self.at - 1, self.records[self.at - 1 - self.low])

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> list[TopicPartition]:
        self.committed_offset = offsets[0].offset
        return offsets

    def close(self) -> None:
        pass


class FakeSink:
    """The replay's results, taken at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []
        self.parked: list[FailedCall] = []

    def send(self, topic: str, key: str, event: str, record: Any, on_done: Callable[[], None] | None = None) -> None:
        self.sent.append((topic, event, record))
        if on_done is not None:
            on_done()

    def park(self, failed: FailedCall, on_done: Callable[[], None] | None = None) -> None:
        self.parked.append(failed)
        if on_done is not None:
            on_done()

    def flush(self, timeout_s: float = 0) -> None:
        pass


class FakePositions:
    """Replay positions kept where they do not expire (the broker keeps them on a compacted topic)."""

    def __init__(self, **saved: int) -> None:
        self.saved = dict(saved)

    def load(self, channel: str) -> int | None:
        return self.saved.get(channel)

    def save(self, channel: str, next_offset: int) -> None:
        self.saved[channel] = next_offset


class AgreeingCaller:
    """A marketplace that agrees every call; ``calls`` names each."""

    budget_s = 5.0

    def __init__(self) -> None:
        self.calls: list[str] = []

    def call(self, channel: str, endpoint: str, body: dict[str, Any], what: str = "") -> CallResult:
        self.calls.append(what)
        return CallResult(pf.Outcome(pf.OutcomeKind.OK, result={"status": "SUCCESS"}), "HTTP 200", 1)


CODEC = default_codec()
QUEUE = CONNECTOR_FAILED["jd"].name


def refund_record(n: int, source: str = "") -> bytes:
    body = pf.refund_body("jd", f"R{n}", 100 + n, channel_order_id=f"O{n}")
    failed = FailedCall("jd", "refund", f"jd:R{n}", canonical_json(body), "Invalid API Key",
                        Reason.CONNECTOR_CREDENTIALS, 1, source or f"refund.instructions/0/{n}")  # fmt: skip
    return CODEC.encode("ConnectorCallFailed", failed.record(1000 + n))


def issued(refund_ids: tuple[str, ...] = (), replayed: int = 0) -> Callable[[], IssuedRefunds]:
    return lambda: IssuedRefunds(frozenset(refund_ids), replayed)


def stock_record(n: int, sku: str, quantity: int, version: int) -> bytes:
    body = pf.stock_body("jd", sku, quantity, version)
    failed = FailedCall("jd", "stock", f"jd:{sku}@{version}", canonical_json(body), "503",
                        Reason.CONNECTOR_RETRIES_EXHAUSTED, 3, f"stock.levels/0/{n}")  # fmt: skip
    return CODEC.encode("ConnectorCallFailed", failed.record(1000 + n))


def replay_over(queue: FakeQueue, positions: FakePositions, caller: AgreeingCaller, *,
                paid: Callable[[], IssuedRefunds] | None = None, from_offset: int | None = None,
                levels: dict[str, int] | None = None) -> tuple[ReplaySummary, FakeSink]:  # fmt: skip
    sink = FakeSink()
    replay = Replay(Settings(), "jd", caller=caller, codec=CODEC, positions=positions,  # type: ignore[arg-type]
                    issued=paid or issued(), from_offset=from_offset,
                    levels=lambda: dict(levels or {}))  # fmt: skip
    return replay.run_with(queue, sink), sink  # type: ignore[arg-type]


def test_a_replay_starts_where_it_left_off_after_the_groups_offsets_expired() -> None:
    """Changed on purpose: the position was the replay group's committed offset alone, which the broker deletes
    after offsets.retention.minutes (7 days) idle; the next replay then started at 0 and called every refund ever
    parked again. The position is kept on a compacted topic too, which nothing expires."""
    queue = FakeQueue([refund_record(n) for n in range(5)], committed=OFFSET_INVALID)
    positions, caller = FakePositions(jd=3), AgreeingCaller()
    summary, sink = replay_over(queue, positions, caller)
    assert caller.calls == ["jd:R3 (replay)", "jd:R4 (replay)"]
    assert (summary.first_offset, summary.queued, summary.sent, summary.lost, summary.clean) == (3, 2, 2, 0, True)
    assert positions.saved == {"jd": 5} and queue.committed_offset == 5
    assert [r["refund_id"] for _, e, r in sink.sent if e == "RefundIssued"] == ["jd:R3", "jd:R4"]


def test_a_replay_saves_its_position_record_by_record() -> None:
    queue = FakeQueue([refund_record(n) for n in range(3)])
    positions = FakePositions()
    seen: list[int | None] = []
    caller = AgreeingCaller()
    original = caller.call

    def call(channel: str, endpoint: str, body: dict[str, Any], what: str = "") -> CallResult:
        seen.append(positions.load("jd"))
        return original(channel, endpoint, body, what)

    caller.call = call  # type: ignore[method-assign]
    summary, _ = replay_over(queue, positions, caller)
    assert summary.sent == 3 and seen == [None, 1, 2] and positions.saved == {"jd": 3}


def test_the_replay_positions_topic_is_compacted_and_one_partition_keyed_by_channel() -> None:
    assert (POSITIONS.compacted, POSITIONS.single_partition, POSITIONS.retention_ms) == (True, True, None)
    assert "retention.ms" not in topic_configs(Settings(), POSITIONS)  # compaction keeps each channel's newest
    value = position_value("jd", "connector.failed.jd", 42, 5000)
    assert read_position(value, "connector.failed.jd") == 42
    assert read_position(value, "x.connector.failed.jd") is None  # another prefix's queue
    assert read_position(b"not json", "connector.failed.jd") is None


def test_with_no_position_saved_a_queue_replayed_before_is_not_replayed_from_the_start() -> None:
    """Changed on purpose: with the group's offsets expired the replay started at offset 0 without a word. With
    no position saved anywhere while the queue shows an earlier replay, it now stops and says where to start."""
    # Offset 3: a refund a replay wrote back (refused again) from offset 1: that replay had got past 1.
    records = [refund_record(0), refund_record(1), refund_record(2), refund_record(1, source=f"{QUEUE}/0/1")]
    caller = AgreeingCaller()
    summary, sink = replay_over(FakeQueue(records), FakePositions(), caller)
    assert caller.calls == [] and sink.sent == [] and not summary.clean
    assert "--from-offset 2" in summary.stopped and "no saved position" in summary.stopped
    # RefundIssued records a replay wrote say so too.
    summary, _ = replay_over(FakeQueue(records[:3]), FakePositions(), caller, paid=issued(("jd:R0",), replayed=1))
    assert caller.calls == [] and "--from-offset" in summary.stopped and "refund.issued" in summary.stopped
    # Told where to start, it starts there (and saves it).
    positions = FakePositions()
    summary, _ = replay_over(FakeQueue(records), positions, caller, from_offset=2)
    assert caller.calls == ["jd:R2 (replay)", "jd:R1 (replay)"] and summary.clean and positions.saved == {"jd": 4}
    # A queue never replayed starts at its first record, as before.
    caller = AgreeingCaller()
    summary, _ = replay_over(FakeQueue(records[:3]), FakePositions(), caller)
    assert len(caller.calls) == 3 and summary.clean


def test_a_saved_position_past_the_queues_end_stops_the_replay() -> None:
    """The queue was deleted and created again: where to start in the new one is not known."""
    caller = AgreeingCaller()
    summary, _ = replay_over(FakeQueue([refund_record(0)]), FakePositions(jd=9), caller)
    assert caller.calls == [] and "past the queue's end" in summary.stopped and not summary.clean


def test_a_refund_refund_issued_records_as_paid_is_never_called_again() -> None:
    """Changed on purpose: only the marketplace's idempotency window stood between a replay and a second
    payment of a refund stockflow had already recorded as paid. The replay reads refund.issued first."""
    caller = AgreeingCaller()
    summary, sink = replay_over(FakeQueue([refund_record(n) for n in range(3)]), FakePositions(), caller,
                                paid=issued(("jd:R0", "jd:R2")))  # fmt: skip
    assert caller.calls == ["jd:R1 (replay)"]
    assert (summary.sent, summary.already_applied, summary.clean, summary.next_offset) == (1, 2, True, 3)
    assert [r["refund_id"] for _, e, r in sink.sent if e == "RefundIssued"] == ["jd:R1"]


def test_the_refunds_refund_issued_records_as_paid_are_read_per_channel() -> None:
    def record(channel: str, n: int, replayed: bool) -> tuple[bytes, bytes]:
        event = refund_issued(f"{channel}:R{n}", f"{channel}:O{n}", channel, 100, "ref", 1, 1000, replayed=replayed)
        return f"{channel}:O{n}".encode(), CODEC.encode("RefundIssued", event)

    records = [record("jd", 1, False), record("tmall", 2, True), record("jd", 3, True), (b"jd:O4", b"garbage")]
    found = issued_refunds(records, "jd", CODEC)
    assert found == IssuedRefunds(frozenset({"jd:R1", "jd:R3"}), 1)


def test_a_refund_parked_twice_is_called_once_in_a_run() -> None:
    """A connector that crashed after parking a refund parks it again when it reads the instruction again: the
    replay's own RefundIssued counts as paid for the copy further on."""
    caller = AgreeingCaller()
    records = [refund_record(0), refund_record(0, source="refund.instructions/0/9")]
    summary, _ = replay_over(FakeQueue(records), FakePositions(), caller)
    assert caller.calls == ["jd:R0 (replay)"] and (summary.sent, summary.already_applied) == (1, 1)


def test_a_replay_beside_running_connectors_takes_a_tenth_of_their_pace() -> None:
    """Changed on purpose: a replay paced itself to 90% of the platform's per-app limit like the running
    connectors, so the two together offered the platform 1.8 times its limit, and the replay stopped when
    one call's retry budget ran out on rate-limit refusals."""
    import http.server
    import threading

    from agents.channels.calls import ChannelCaller, rate_per_s
    from agents.channels.credentials import CredentialStore
    from agents.channels.failed_queue import replay_rate_share
    from tests.conftest import free_port

    class Status(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/connectors/status" else 404)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    idle = Settings(connectors_port=free_port())
    assert replay_rate_share(idle) == 1.0  # the connectors stopped: the replay has the limit to itself
    server = http.server.HTTPServer(("127.0.0.1", 0), Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        live = Settings(connectors_port=server.server_address[1])
        share = replay_rate_share(live)
        assert share == 0.1
        caller = ChannelCaller(live, CredentialStore.from_settings(live), rate_share=share)
        assert caller.rate_share * rate_per_s(live, "jd") + rate_per_s(live, "jd") <= rate_per_s(live, "jd") / 0.9
    finally:
        server.shutdown()


def test_a_parked_stock_figure_a_newer_level_overtook_is_not_sent_again() -> None:
    """Changed on purpose: the replay sent every parked figure, and the platforms keep no version of their own: a
    figure parked while the channel was away (10 units), replayed after the connector had set the channel to a
    newer, lower one (3), set it back to 10 - 7 units oversold. A figure older than its SKU's newest level is
    counted as overtaken; the connector sends (or sent) that level."""
    caller = AgreeingCaller()
    records = [stock_record(0, "SKU-X", 10, 1_000), stock_record(1, "SKU-Y", 4, 1_000)]
    summary, _ = replay_over(FakeQueue(records), FakePositions(), caller, levels={"SKU-X": 2_000, "SKU-Y": 1_000})
    assert caller.calls == ["of 1 SKU(s) (replay)"]
    assert (summary.sent, summary.already_applied, summary.clean) == (1, 1, True)


def test_a_long_replay_checks_each_figure_against_levels_read_again_as_it_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Failed before: the newest levels were read once, at the first stock figure. A replay paced beside the
    connectors runs for minutes: a SKU that sold out meanwhile (its level pushed live) had its older, higher
    parked figure sent over it."""
    clock = [0.0]
    monkeypatch.setattr(failed_queue, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    levels = {"SKU-X": 1_000, "SKU-Y": 1_000}
    reads: list[dict[str, int]] = []

    class SellingMeanwhile(AgreeingCaller):
        def call(self, channel: str, endpoint: str, body: dict[str, Any], what: str = "") -> CallResult:
            clock[0] += 60.0  # each call waits a minute for its share of the rate limit
            levels["SKU-Y"] = 2_000  # and SKU-Y sells out meanwhile
            return super().call(channel, endpoint, body, what)

    caller = SellingMeanwhile()
    replay = Replay(Settings(), "jd", caller=caller, codec=CODEC, positions=FakePositions(),  # type: ignore[arg-type]
                    issued=issued(), levels=lambda: reads.append(dict(levels)) or dict(levels))  # type: ignore[func-returns-value]
    records = [stock_record(0, "SKU-X", 10, 1_000), refund_record(1), stock_record(2, "SKU-Y", 4, 1_000)]
    summary = replay.run_with(FakeQueue(records), FakeSink())  # type: ignore[arg-type]
    assert (summary.sent, summary.already_applied) == (2, 1)  # SKU-X and the refund; SKU-Y's figure overtaken
    assert "of 1 SKU(s) (replay)" in caller.calls and len(reads) >= 2
