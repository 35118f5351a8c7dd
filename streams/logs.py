"""Logging that says a thing once per state change, not hundreds of times a second.

A broker outage makes every Kafka client in the worker report the same failure in a tight loop
(connect failed, metadata failed, fetch failed): thousands of lines a minute that bury the one line
an operator needs. ``RepeatFilter`` lets the first record of each (logger, level, message template)
through, drops the repeats for ``interval_s``, then lets one through again saying how many it
dropped. ``LeaderTopicFilter`` drops one false alarm of Faust's for good.
"""

from __future__ import annotations

import logging
import threading
import time

# Message templates are few; a flood of distinct ones is not remembered without end.
MAX_REMEMBERED = 10_000


class RepeatFilter(logging.Filter):
    def __init__(self, interval_s: float = 60.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}  # key -> (last let through, dropped)
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.CRITICAL:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        with self._lock:
            last, dropped = self._seen.get(key, (0.0, 0))
            if last and now - last < self.interval_s:
                self._seen[key] = (last, dropped + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > MAX_REMEMBERED:
                self._seen.clear()
        if dropped:
            record.msg = f"{record.msg} (and {dropped} more like it in the last {self.interval_s:.0f}s)"
        return True


def quiet_repeats(logger: logging.Logger | None = None, interval_s: float = 60.0) -> None:
    """Put a ``RepeatFilter`` and a ``LeaderTopicFilter`` on every handler of ``logger`` (default: the root
    logger)."""
    target = logger or logging.getLogger()
    shared = RepeatFilter(interval_s)
    for handler in target.handlers:
        if not any(isinstance(f, LeaderTopicFilter) for f in handler.filters):
            # First: the repeat filter counting a dropped record would hold back the next real one like it.
            handler.filters.insert(0, LeaderTopicFilter())
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            handler.addFilter(shared)


# Faust's own topic for electing the group's leader: it is never fetched from (nothing is written to it), and
# Faust's partition monitor says so as an ERROR every few minutes for the worker's whole life.
LEADER_TOPIC_SUFFIX = "__assignor-__leader"


class LeaderTopicFilter(logging.Filter):
    """Drops Faust's "has not sent fetch request" errors about its leader-election topic (``LEADER_TOPIC_SUFFIX``),
    which an on-call engineer would chase for nothing; the same error about any other partition goes through."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.ERROR or "fetch request" not in str(record.msg):
            return True
        return not any(LEADER_TOPIC_SUFFIX in str(arg) for arg in (record.args or ()))
