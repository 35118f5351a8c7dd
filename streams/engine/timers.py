"""Per-partition timers: one due time per key, in a heap, for the timers due soon.

Timers are not kept anywhere durable of their own: the state they derive from is. Each stored key's
next due time (``Processor.due_ms``) is indexed in the store's folder beside it
(``PartitionStore.due_between``), so a payment timeout due during a restart fires right after it,
and a partition that moves to another worker takes its timers with it. In memory are only the timers
due by ``until_ms``, loaded from the index as time moves on: a shop keeps a month of finished orders,
each with its purge timer, and holding them all in a heap would cost gigabytes and a parse of every
stored value at each assignment.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

# Replaced entries stay in the heap until popped; past this size, and once they dominate it, the
# heap is rebuilt from the live timers.
COMPACT_ABOVE = 64


@dataclass
class Timers:
    """The timers of one processor on one partition."""

    _due: dict[bytes, int] = field(default_factory=dict)
    _heap: list[tuple[int, bytes]] = field(default_factory=list)
    # Every timer due by this is here; a later one lives in the store's index until loaded. None: all are.
    until_ms: int | None = None

    def set(self, key: bytes, due_ms: int) -> None:
        """Due at ``due_ms`` (replacing any earlier timer of the key); 0 cancels."""
        if due_ms <= 0 or (self.until_ms is not None and due_ms > self.until_ms):
            self._due.pop(key, None)  # none, or not yet: the index has it once the batch commits
            return
        if self._due.get(key) == due_ms:
            return
        self._due[key] = due_ms
        heapq.heappush(self._heap, (due_ms, key))
        if len(self._heap) > COMPACT_ABOVE and len(self._heap) > 4 * len(self._due):
            self._heap = [(due, k) for k, due in self._due.items()]
            heapq.heapify(self._heap)

    def load(self, due: Iterable[tuple[int, bytes]], until_ms: int) -> None:
        """Add the index's timers due up to ``until_ms`` (those after the previous ``until_ms``); a key
        already here keeps its time, set by a batch since."""
        for due_ms, key in due:
            if key not in self._due:
                self._due[key] = due_ms
                heapq.heappush(self._heap, (due_ms, key))
        self.until_ms = until_ms

    def pop_due(self, now_ms: int, limit: int = 10_000) -> list[bytes]:
        """Keys due by ``now_ms`` (at most ``limit``, earliest first), removed from the timers."""
        out: list[bytes] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms and len(out) < limit:
            due, key = heapq.heappop(heap)
            if self._due.get(key) == due:
                del self._due[key]
                out.append(key)
        return out

    def next_due_ms(self) -> int:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else 0

    def __len__(self) -> int:
        return len(self._due)
