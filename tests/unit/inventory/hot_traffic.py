"""A hot SKU's pool under random traffic, for the traffic tests (``test_hot_sku_traffic``, ``test_hot_sku_ledger``).

``PartitionedPool`` runs the pool (HoldStock) on ``P`` partitions in-process, each (topic, partition) a FIFO of its
own: Kafka keeps order within one partition of one topic and nothing across them, so a subclass's ``step`` picks
which FIFOs the next batch is read from. ``Traffic`` is the world outside it: the order lifecycle as
``agents.orders`` plays it (``rules.on_hold_decided``), the WMS that ships, counts and corrects, the operator who
marks the SKU hot, and the ledger of what physically moved on each warehouse's shelf, which the pool's on-hand must
end equal to.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from agents.inventory.hold_stock import HoldStock
from streams.contract.keys import bucket_for, bucket_key, partition_for
from streams.contract.topics import HOLD_COMMANDS, OPS_OVERRIDES, STOCK_ADJUSTMENTS
from streams.engine.local import LocalRunner, _Sent
from streams.engine.processor import Context, Refusal
from streams.engine.state import StoreTransaction
from streams.settings import Settings

SKU = "SKU-F"
P = 12
WAREHOUSES = ("WH-SH", "WH-GZ")
Event = tuple[str, str, str, dict[str, Any]]  # topic, key, event type, record
Fifo = tuple[str, int]  # (topic, partition)
# Order states, as the lifecycle sees its one line.
SENT, HELD, REFUSED, CANCELLED, PAID, ROUTED, UNROUTED, SHIPPED = (
    "sent", "held", "refused", "cancelled", "paid", "routed", "unrouted", "shipped")  # fmt: skip
# An order in one of these still expects the pool to answer it, or will send it another command.
UNDECIDED = frozenset({SENT, HELD, PAID, ROUTED, UNROUTED})


def fifo_of(event: Event) -> Fifo:
    return event[0], partition_for(event[1].encode(), P)


class PartitionedPool(LocalRunner):
    """The pool on ``P`` partitions; what it answers and what it refused are kept for the world to read."""

    def __init__(self, rng: random.Random) -> None:
        settings = Settings(safety_threshold=0, threshold_hysteresis=0, partitions=P)
        super().__init__([HoldStock.from_settings(settings, frozenset(WAREHOUSES))], partitions=P)
        self.rng = rng
        self.queues: dict[Fifo, deque[Event]] = {}
        self.answers: list[dict[str, Any]] = []  # HoldDecided records, for the lifecycle
        self.hot_news: list[dict[str, Any]] = []  # HotSku records (stock.hot-skus), for the lifecycle
        self.refused: list[tuple[dict[str, Any], Refusal]] = []  # each record the pool dead-lettered, and why

    def step(self) -> bool:
        """Read one batch; False once nothing is left to read."""
        raise NotImplementedError

    def put(self, topic: str, key: str, event_type: str, record: dict[str, Any]) -> None:
        """A record from outside the pool (a hold command, an adjustment, a mark)."""
        self.enqueue((topic, key, event_type, record))

    def pass_on(self, event: Event) -> None:
        """A record the pool produced on a topic it reads itself."""
        self.enqueue(event)

    def enqueue(self, event: Event) -> None:
        self.queues.setdefault(fifo_of(event), deque()).append(event)

    def apply(self, events: list[Event]) -> None:
        """One batch, committed as the engine commits it (each partition's stores at once, then the outputs)."""
        proc = self.processors[0]
        txns: dict[tuple[str, int], StoreTransaction[Any]] = {}
        contexts: dict[int, Context] = {}
        for topic, key, event_type, record in events:
            partition = partition_for(key.encode(), P)
            ctx = contexts.get(partition) or contexts.setdefault(partition, self._context(proc, partition, txns))
            self._offset += 1
            ctx.message = _Sent(topic, partition, self._offset, key.encode())
            refused_before = len(ctx.refusals)
            proc.handle(ctx, event_type, record)
            self.refused += [(record, refusal) for _, refusal in ctx.refusals[refused_before:]]
        self._deliver(self._commit(list(contexts.values()), txns))

    def tick(self, ms: int) -> None:
        """Move the pool's clock on: due timers fire and every partition flushes."""
        self.now_ms += ms
        proc = self.processors[0]
        txns: dict[tuple[str, int], StoreTransaction[Any]] = {}
        contexts = []
        for partition in range(P):
            ctx = self._context(proc, partition, txns)
            for key in self.timers[(proc.name, partition)].pop_due(self.now_ms):
                proc.on_timer(ctx, key)
            proc.flush(ctx)
            contexts.append(ctx)
        self._deliver(self._commit(contexts, txns))

    def _deliver(self, produced: list[Event]) -> None:
        for event in produced:
            _, _, event_type, record = event
            if event_type == "HoldDecided":
                self.answers.append(record)
            elif event_type == "HotSku":
                self.hot_news.append(record)
            if event[0] in self._reads:
                self.pass_on(event)

    def records(self, kind: bytes) -> list[dict[str, Any]]:
        """The SKU's records of one kind (b"s": stock, b"h": line holds) over every partition."""
        prefix = kind + b"\x00" + SKU.encode()
        return [orjson.loads(raw) for store in self.stores.values() for key, raw in store.items()
                if key.startswith(prefix)]  # fmt: skip

    def on_hand(self) -> dict[str, int]:
        """The SKU's on-hand per warehouse over its home and every bucket (warehouses at 0 left out)."""
        per: dict[str, int] = {}
        for stock in self.records(b"s"):
            for wh, qty in stock["on_hand"].items():
                per[wh] = per.get(wh, 0) + qty
        return {wh: qty for wh, qty in per.items() if qty}

    def open_lines(self) -> dict[str, int]:
        """Per order, how many records hold its line open (held or sold)."""
        lines: dict[str, int] = {}
        for hold in self.records(b"h"):
            if hold["status"] in ("held", "sold"):
                lines[hold["order_id"]] = lines.get(hold["order_id"], 0) + 1
        return lines


def command(action: str, order_id: str, qty: int, bucket: int, wh: str = "") -> dict[str, Any]:
    return {"event_id": f"{order_id}#1:{action}", "event_time_ms": 0, "action": action, "order_id": order_id,
            "line_no": 1, "sku": SKU, "qty": qty, "channel": "jd", "presale": False, "expires_at_ms": 0,
            "reason": "", "source_time_ms": 0, "warehouse_id": wh, "bucket": bucket, "tries": 0}  # fmt: skip


@dataclass
class Order:
    """An order of one line of the SKU, as its lifecycle knows it."""

    qty: int
    bucket: int  # the record its next command goes to: the one that answered (-1: the home)
    state: str = SENT
    warehouse: str = ""  # where routing sent it
    went_by: str = ""  # the first RESERVE answer the order acted on: HELD or REFUSED
    looked_at: bool = False  # the WMS has decided whether to ship it although refused


class Move(NamedTuple):
    """A physical change of a warehouse's shelf, in the order the world made it."""

    kind: str  # RECEIPT, CORRECTION, COUNT (sets the shelf to qty) or SHIP
    warehouse: str
    qty: int
    ref: str  # the adjustment's event id, or the shipped order's id


@dataclass
class Traffic:
    """The world outside the pool: what it sent, and so what each warehouse's shelf holds.

    The lifecycle sends later commands to the record the answer named; a hold answered after the order went by a
    refusal or a cancel is released; a line shipped after a cancel is still shipped (the warehouse had packed it).
    The WMS may also ship a refused order (``ship_refused``) or a paid one routing failed for (``ship_unrouted``);
    without that, an order routing failed for is released at once.
    """

    pool: PartitionedPool
    ship_after_cancel: float = 0.3
    ship_refused: float = 0.0
    ship_unrouted: float = 0.0
    hears_hot_news: bool = True  # else it keeps routing orders over the first split's buckets
    buckets: int = 0  # the lifecycle's view of the split (stock.hot-skus), a poll behind the pool
    orders: dict[str, Order] = field(default_factory=dict)
    moves: list[Move] = field(default_factory=list)
    adjustments: int = 0
    unbooked: set[str] = field(default_factory=set)  # orders shipped whose SHIP the pool has not answered yet
    problems: list[str] = field(default_factory=list)  # answers no correct pool gives

    def ledger(self) -> dict[str, int]:
        """Each warehouse's shelf: receipts and corrections add once, a shipped line leaves once whatever the
        order's state, and a count sets the shelf to what was counted (movements after it stay on top). A count
        the pool refused (superseded, too old) is as if never taken."""
        refused = {record["event_id"] for record, _ in self.pool.refused}
        shelf = dict.fromkeys(WAREHOUSES, 0)
        for move in self.moves:
            if move.kind != "COUNT":
                shelf[move.warehouse] += move.qty
            elif move.ref not in refused:
                shelf[move.warehouse] = move.qty
        return {wh: qty for wh, qty in shelf.items() if qty}

    def adjust(self, kind: str, qty: int, wh: str) -> None:
        self.adjustments += 1
        event_id = f"adj-{self.adjustments}"
        self.pool.put(STOCK_ADJUSTMENTS.name, SKU, "StockAdjusted", {
            "event_id": event_id, "event_time_ms": self.pool.now_ms, "sku": SKU, "warehouse_id": wh, "kind": kind,
            "qty": qty, "reason": ""})  # fmt: skip
        self.moves.append(Move(kind, wh, qty, event_id))

    def mark(self, buckets: int, tag: str) -> None:
        """The operator marks the SKU hot with ``buckets`` buckets (0: cold again)."""
        self.pool.put(OPS_OVERRIDES.name, SKU, "HotSku", {
            "event_id": f"hot-{tag}", "event_time_ms": self.pool.now_ms, "sku": SKU, "buckets": buckets, "state": "",
            "operator": "ops", "reason": "live"})  # fmt: skip

    def place(self, qty: int) -> None:
        order_id = f"jd:o{len(self.orders)}"
        bucket = bucket_for(order_id, self.buckets) if self.buckets > 1 else -1
        self.orders[order_id] = Order(qty, bucket)
        self.send("RESERVE", order_id, bucket)

    def send(self, action: str, order_id: str, bucket: int, wh: str = "") -> None:
        qty = self.orders[order_id].qty
        self.pool.put(HOLD_COMMANDS.name, bucket_key(SKU, bucket, P), "HoldCommand",
                      command(action, order_id, qty, bucket, wh))  # fmt: skip

    def ship(self, order_id: str, wh: str) -> None:
        order = self.orders[order_id]
        order.state = SHIPPED
        self.send("SHIP", order_id, order.bucket, wh)
        self.moves.append(Move("SHIP", wh, -order.qty, order_id))
        self.unbooked.add(order_id)

    def count(self, rng: random.Random, miscount: int) -> None:
        """The WMS counts a warehouse; off by up to ``miscount`` units (the count is the authority all the same).

        The pool dates a count and takes movements within its clock skew (or one 250 ms slot) of it as before it,
        erring to fewer units; so that the ledger's answer stays exact, the world counts only while no line it
        shipped is unbooked, and leaves a second of the pool's clock between the count and any other movement."""
        if self.unbooked:
            return
        self.pool.tick(1_000)
        wh = rng.choice(WAREHOUSES)
        counted = max(0, self.ledger().get(wh, 0) + rng.randint(-miscount, miscount))
        self.adjust("COUNT", counted, wh)
        self.pool.tick(1_000)

    def hear(self) -> None:
        """The lifecycle reads the pool's answers (and the SKU's marks, a poll behind)."""
        if self.hears_hot_news:
            for news in self.pool.hot_news:
                self.buckets = news["buckets"]
        self.pool.hot_news.clear()
        for answer in self.pool.answers:
            self._heard(answer, self.orders[answer["order_id"]])
        self.pool.answers.clear()

    def _heard(self, answer: dict[str, Any], order: Order) -> None:
        action, outcome, order_id = answer["action"], answer["outcome"], answer["order_id"]
        if answer["reason"] == "passed_on_too_often":
            self.problems.append(f"{action} of {order_id} went round the buckets until refused")
        if action == "SHIP":
            self.unbooked.discard(order_id)
            if outcome != "SHIPPED":
                self.problems.append(f"SHIP of {order_id} answered {outcome} {answer['reason']}")
        elif action == "RESERVE" and outcome in ("HELD", "COMMITTED", "SHIPPED"):  # a replay answers what it is now
            if order.state == SENT:
                order.state, order.bucket, order.went_by = HELD, answer["bucket"], HELD
            elif outcome == "HELD" and (order.state == CANCELLED or order.went_by == REFUSED):
                self.send("RELEASE", order_id, answer["bucket"])  # a late hold goes back at once
        elif action == "RESERVE" and outcome in ("REFUSED", "RELEASED", "EXPIRED") and order.state == SENT:
            order.state, order.bucket, order.went_by = REFUSED, answer["bucket"], REFUSED
        elif action == "ALLOCATE" and outcome == "ALLOCATED" and order.state in (PAID, UNROUTED):
            # (a late ALLOCATED - a COMMIT read twice - routes an order the first answer left unrouted)
            order.state, order.warehouse, order.bucket = ROUTED, answer["reason"], answer["bucket"]
        elif action == "ALLOCATE" and order.state == PAID:
            order.state = UNROUTED
            if not self.ship_unrouted:
                order.state = CANCELLED
                self.send("RELEASE", order_id, order.bucket)

    def act(self, rng: random.Random) -> None:
        """Some orders move a step on: cancelled in flight, paid and routed, cancelled, shipped."""
        for order_id, order in self.orders.items():
            if rng.random() > 0.05:  # how often an order moves a step
                continue
            if order.state == SENT and rng.random() < 0.1:
                order.state = CANCELLED
                self.send("RELEASE", order_id, order.bucket)
            elif order.state == HELD:
                paid = rng.random() < 0.7
                order.state = PAID if paid else CANCELLED
                self.send("COMMIT" if paid else "RELEASE", order_id, order.bucket,
                          rng.choice(WAREHOUSES) if paid else "")  # fmt: skip
            elif order.state == ROUTED:
                if rng.random() < self.ship_after_cancel:
                    self.send("RELEASE", order_id, order.bucket)  # cancelled after routing, shipped all the same
                self.ship(order_id, order.warehouse)
            elif order.state == UNROUTED:
                if rng.random() < self.ship_unrouted:
                    self.ship(order_id, rng.choice(WAREHOUSES))  # packed from wherever it was
                else:
                    order.state = CANCELLED
                    self.send("RELEASE", order_id, order.bucket)
            elif order.state == REFUSED and self.ship_refused and not order.looked_at:
                order.looked_at = True
                if rng.random() < self.ship_refused:
                    self.ship(order_id, rng.choice(WAREHOUSES))

    def undecided(self) -> dict[str, str]:
        return {order_id: order.state for order_id, order in self.orders.items() if order.state in UNDECIDED}
