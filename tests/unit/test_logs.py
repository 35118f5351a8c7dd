"""The worker's log filters: repeats said once per interval, and Faust's false alarm about its leader topic gone."""

from __future__ import annotations

import logging
from typing import NamedTuple

from streams.logs import LeaderTopicFilter, RepeatFilter, quiet_repeats

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


def test_the_leader_topic_error_does_not_hold_back_a_real_one_as_its_repeat() -> None:
    """Found in review: behind the repeat filter, the dropped leader-topic error counted as the one let through this
    minute, and a real stalled partition's error right after it was dropped as a repeat."""
    handler = logging.Handler()
    seen: list[logging.LogRecord] = []
    handler.emit = seen.append  # type: ignore[method-assign]
    logger = logging.getLogger("test_logs.quiet")
    logger.handlers, logger.propagate = [handler], False
    quiet_repeats(logger)
    logger.handle(record(NO_FETCH, TP("shop-__assignor-__leader", 0), "9 minutes ago"))
    logger.handle(record(NO_FETCH, TP("shop-order.events", 3), "9 minutes ago"))
    assert [r.args[0].topic for r in seen] == ["shop-order.events"]  # type: ignore[index]
