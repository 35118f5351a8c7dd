"""The pipeline clock: wall time plus an offset that drills and tests can advance.

Every time-based rule (payment timeout, hold expiry, SLA) reads ``Clock.now_ms()``, so a test can
move 30 minutes ahead with one ``ClockAdvanced`` event instead of waiting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Clock:
    offset_ms: int = 0

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.offset_ms

    def advance_to(self, offset_ms: int) -> None:
        # Never backwards: expiries already decided stay decided.
        self.offset_ms = max(self.offset_ms, offset_ms)


def wall_ms() -> int:
    """Wall time in epoch milliseconds: event times stamped by producers outside the pipeline."""
    return int(time.time() * 1000)
