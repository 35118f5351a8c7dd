"""Logging that says a thing once per state change, not hundreds of times a second.

A broker outage makes every Kafka client in the worker report the same failure in a tight loop
(connect failed, metadata failed, fetch failed): thousands of lines a minute that bury the one line
an operator needs. ``RepeatFilter`` lets the first record of each (logger, level, message template)
through, drops the repeats for ``interval_s``, then lets one through again saying how many it
dropped.
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
    """Put a ``RepeatFilter`` on every handler of ``logger`` (default: the root logger)."""
    target = logger or logging.getLogger()
    shared = RepeatFilter(interval_s)
    for handler in target.handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            handler.addFilter(shared)
