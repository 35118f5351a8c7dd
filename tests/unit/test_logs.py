"""The worker's log filters: repeats said once per interval, and Faust's false alarm about its leader topic gone."""

from __future__ import annotations

import logging
from typing import NamedTuple

from streams.logs import LeaderTopicFilter, RepeatFilter

NO_FETCH = "Aiokafka has not sent fetch request for %r since start (started %s)"


class TP(NamedTuple):  # Faust's topic-partition, as its monitor passes it
    topic: str
    partition: int


def record(msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("faust.transport.drivers.aiokafka", level, __file__, 1, msg, args, None)


def test_fausts_no_fetch_error_about_its_leader_topic_is_dropped_and_about_a_real_partition_kept() -> None:
    """Found by an on-call trial: an ERROR every few minutes about ``<app>-__assignor-__leader``, a topic nothing is
    written to, sent them looking for a stalled partition."""
    keep = LeaderTopicFilter()
    assert not keep.filter(record(NO_FETCH, TP("shop-__assignor-__leader", 0), "9.38 minutes ago"))
    assert keep.filter(record(NO_FETCH, TP("shop-notify_pending-changelog", 3), "9.38 minutes ago"))
    assert keep.filter(record("leader %s elected", TP("shop-__assignor-__leader", 0), level=logging.INFO))


def test_a_repeated_message_is_let_through_once_per_interval() -> None:
    repeats = RepeatFilter(interval_s=60)
    assert repeats.filter(record("connect to %s failed", "127.0.0.1:19092"))
    assert not repeats.filter(record("connect to %s failed", "127.0.0.1:19092"))
