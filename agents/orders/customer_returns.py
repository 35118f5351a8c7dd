"""What the health score knows of a customer's returns: completed return-and-refunds per customer.

Reads: ``refund.states`` (compacted; every refund's transitions, ``customer_id`` from its order),
every partition, from the beginning, with a plain consumer outside any group - every worker keeps
the whole view, as ``agents.routing.warehouse_view`` does for stock: refunds are keyed by refund id
and orders by order id, so a customer's refunds are on other partitions (and workers) than their
next order.
Writes: nothing. Owns: the in-memory ``CustomerReturns`` the order lifecycle scores paid orders with;
``/customers/{channel}/{customer_id}/returns`` shows what it counts for one customer (any worker answers).

What counts: a refund of kind RETURN_AND_REFUND that reached ``completed`` (paid back and settled),
once per refund id. Refund-only refunds do not count: before shipment they are the order being
called off, and after it they are compensation the shop agreed to (damaged, missing, price
protection) - about the shop's and the carrier's delivery more than the customer - and their
completed record does not say which of the two it was. Rejected and cancelled requests do not count.

Bounded memory: returns completed more than ``window_days`` ago no longer count; at most
``max_customers`` customers are remembered (the least recently used - by a return or a lookup -
is forgotten first) and ``max_per_customer`` returns each (the newest kept; past the point where the
factor is at 0 more would change nothing). A forgotten customer scores as one without returns.
A customer is ``<channel>:<customer id>``: channels name their buyers each in their own way.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import faust

from agents.orders.health import ReturnsRules, health_rules
from agents.refunds.rules import RETURN_AND_REFUND
from streams.contract.codec import Codec
from streams.contract.topics import REFUND_STATES
from streams.engine.follow import follow
from streams.engine.runtime import Runtime
from streams.settings import Settings

log = logging.getLogger(__name__)


def customer_key(channel: str, customer_id: str) -> str:
    return f"{channel}:{customer_id}"


@dataclass
class CustomerReturns:
    window_ms: int
    max_customers: int
    max_per_customer: int
    # customer -> refund id -> when it completed (ms); least recently used first
    _by_customer: OrderedDict[str, dict[str, int]] = field(default_factory=OrderedDict)
    # The engine's thread looks customers up while the Faust loop's task adds returns.
    _lock: threading.Lock = field(default_factory=threading.Lock)
    ready: bool = False  # read the topic up to where it was when the view started
    counted: int = 0
    evicted: int = 0

    @classmethod
    def from_rules(cls, rules: ReturnsRules, ready: bool = False) -> CustomerReturns:
        """An empty view; ``ready`` True for one nothing will feed (no history is the whole history)."""
        return cls(rules.window_ms, rules.max_customers, rules.max_per_customer, ready=ready)

    def __len__(self) -> int:
        return len(self._by_customer)

    def apply(self, record: Mapping[str, Any]) -> bool:
        """Take one ``RefundStateChanged``; True when it is a return not counted before."""
        if record.get("state") != "completed" or record.get("kind") != RETURN_AND_REFUND:
            return False
        customer_id = record.get("customer_id") or ""
        if not customer_id:
            return False  # written before refunds carried the customer, or for an order already purged
        stage_times = record.get("stage_times") or {}
        completed_ms = int(stage_times.get("completed") or record.get("event_time_ms") or 0)
        refund_id = str(record["refund_id"])
        key = customer_key(str(record["channel"]), str(customer_id))
        with self._lock:
            refunds = self._by_customer.get(key)
            if refunds is None:
                refunds = self._by_customer[key] = {}
            else:
                self._by_customer.move_to_end(key)
            if refund_id in refunds:
                return False  # the same refund again (compaction keeps it, a rewind reads it again)
            refunds[refund_id] = completed_ms
            if len(refunds) > self.max_per_customer:
                del refunds[min(refunds, key=refunds.__getitem__)]
            while len(self._by_customer) > self.max_customers:
                self._by_customer.popitem(last=False)
                self.evicted += 1
            self.counted += 1
        return True

    def count(self, channel: str, customer_id: str, now_ms: int) -> int:
        """The customer's completed returns within the window before ``now_ms``."""
        if not customer_id:
            return 0
        key = customer_key(channel, customer_id)
        with self._lock:
            refunds = self._by_customer.get(key)
            if not refunds:
                return 0
            self._by_customer.move_to_end(key)
            since = now_ms - self.window_ms
            return sum(1 for completed_ms in refunds.values() if completed_ms >= since)


def register(app: faust.App, rt: Runtime) -> CustomerReturns:
    settings = rt.settings
    view = CustomerReturns.from_rules(health_rules(settings).returns)

    @app.task
    async def follow_customer_returns() -> None:
        await _follow(view, settings, rt.codec)

    @app.page("/customers/{channel}/{customer_id}/returns")
    async def customer_returns_view(web: Any, request: Any, channel: str, customer_id: str) -> Any:
        return web.json({"channel": channel, "customer_id": customer_id,
                         "returns": view.count(channel, customer_id, rt.clock.now_ms()),
                         "window_days": view.window_ms / 86_400_000, "ready": view.ready,
                         "customers": len(view), "evicted": view.evicted})  # fmt: skip

    return view


async def _follow(view: CustomerReturns, settings: Settings, codec: Codec) -> None:
    def apply(kind: str, record: dict[str, Any]) -> None:
        if kind == "RefundStateChanged":
            view.apply(record)

    def polled(caught_up: bool) -> None:
        if caught_up:
            view.ready = True  # nothing more waiting: the history is complete

    await follow(settings, codec, [REFUND_STATES.name], "customer-returns", apply, polled)
