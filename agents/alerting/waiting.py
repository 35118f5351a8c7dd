"""The alerts waiting for one robot, indexed for an incident: the queue at its cap and still filling.

While the robot is away the queue reaches ``STOCKFLOW_NOTIFY_QUEUE_MAX`` (10,000 by default) and every
new alert drops one. Looking through the whole queue for the alert a new one supersedes, and sorting it
to find the one to drop, cost 7-23 ms an alert at 10,000 - on the worker's event loop, in the very storm
the queue exists for. Here both are looked up: the alerts by what they are about, and a heap ordered
by ``digest.expendability`` whose entries for alerts already gone are skipped when they come up.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, ValuesView
from dataclasses import dataclass

import orjson

from agents.alerting import digest
from streams.contract.records import Alert

Which = tuple[str, str, str]


@dataclass(frozen=True)
class Queued:
    """An alert waiting for the robot, and the partition of ``alerts`` it came from (its row in
    ``notify_pending`` lives there)."""

    alert: Alert
    partition: int
    queued_ms: int

    @property
    def id(self) -> str:
        return self.alert["event_id"]

    def row(self) -> bytes:
        return orjson.dumps({"alert": self.alert, "partition": self.partition, "queued_ms": self.queued_ms})

    @classmethod
    def from_row(cls, raw: bytes) -> Queued:
        doc = orjson.loads(raw)
        return cls(alert=doc["alert"], partition=int(doc["partition"]), queued_ms=int(doc["queued_ms"]))


def which(alert: Alert) -> Which:
    """Which alert a raise or clearing is of: its kind and subject, and the limit it is about (a refund has one
    alert per SOP limit, each raised and cleared on its own)."""
    return alert["kind"], alert["subject"], (alert.get("details") or {}).get("limit", "")


class Waiting:
    """Alert id -> waiting alert, in the order they were queued (the order plans read them in)."""

    def __init__(self) -> None:
        self._items: dict[str, Queued] = {}
        self._by_which: dict[Which, dict[str, Queued]] = {}
        self._expendable: list[tuple[digest.Expendability, str]] = []

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __contains__(self, alert_id: object) -> bool:
        return alert_id in self._items

    @property
    def drop_order_size(self) -> int:
        """Entries in the drop order, of alerts waiting and of alerts gone but not yet passed over."""
        return len(self._expendable)

    def values(self) -> ValuesView[Queued]:
        return self._items.values()

    def of(self, alert: Alert) -> list[Queued]:
        """The waiting raises and clearings of the same alert as ``alert``."""
        return list(self._by_which.get(which(alert), {}).values())

    def put(self, item: Queued) -> None:
        old = self._items.get(item.id)
        if old is not None and which(old.alert) != which(item.alert):
            self.pop(item.id)
        self._items[item.id] = item
        self._by_which.setdefault(which(item.alert), {})[item.id] = item
        heapq.heappush(self._expendable, (digest.expendability(item.alert), item.id))

    def pop(self, alert_id: str, default: Queued | None = None) -> Queued | None:
        item = self._items.pop(alert_id, None)
        if item is None:
            return default
        key = which(item.alert)
        same = self._by_which[key]
        del same[alert_id]
        if not same:
            del self._by_which[key]
        return item

    def keep(self, wanted: Callable[[Queued], bool]) -> None:
        """Only the alerts ``wanted`` stay."""
        for alert_id in [i for i, item in self._items.items() if not wanted(item)]:
            self.pop(alert_id)
        self._compact()

    def over(self, cap: int) -> list[Queued]:
        """Take out and return the alerts beyond ``cap``: the most expendable first, as ``digest.overflow``
        picks them."""
        dropped: list[Queued] = []
        while len(self._items) > cap:
            key, alert_id = heapq.heappop(self._expendable)
            item = self._items.get(alert_id)
            if item is not None and digest.expendability(item.alert) == key:
                self.pop(alert_id)
                dropped.append(item)
        self._compact()
        return dropped

    def _compact(self) -> None:
        # Entries of alerts sent or superseded stay in the heap until they come up; rebuilt before they
        # outnumber the live ones, so the heap stays within twice the queue.
        if len(self._expendable) > 2 * len(self._items) + 64:
            self._expendable = [(digest.expendability(i.alert), i.id) for i in self._items.values()]
            heapq.heapify(self._expendable)
