"""The failed queues are kept until replayed, and a replay whose saved position the broker has deleted past
says how many records it never saw, instead of starting quietly at the queue's first record."""

from __future__ import annotations

from confluent_kafka import OFFSET_INVALID

from agents.channels.failed_queue import GAP_ALERT, ReplaySummary, gap_alert, replay_bounds
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
