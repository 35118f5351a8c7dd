"""A hot SKU under random traffic, delivered as Kafka may deliver it: each (topic, partition) in order, the
partitions interleaved at random, hold commands and adjustments read again (a batch replayed without
transactions), the SKU split, merged and split again while lines are in flight. Whatever the interleaving, the
SKU's on-hand per warehouse over its home and buckets is what was received less what was shipped (each line once),
no line is open in two records, and no line stays open once its order is done with it.

The order lifecycle is played here as ``agents.orders`` plays it: later commands go to the record the answer
named; a hold answered after the order went by a refusal or a cancel is released; a line shipped after a cancel
is still shipped (the warehouse had packed it)."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from agents.inventory.hold_stock import HoldStock
from streams.contract.keys import bucket_for, bucket_key, partition_for
from streams.contract.topics import HOLD_COMMANDS, OPS_OVERRIDES, STOCK_ADJUSTMENTS
from streams.engine.local import LocalRunner, _Sent
from streams.engine.state import StoreTransaction
from streams.settings import Settings

SKU = "SKU-F"
P = 12
WAREHOUSES = ("WH-SH", "WH-GZ")
REPEATABLE = (HOLD_COMMANDS.name, STOCK_ADJUSTMENTS.name)  # read again by a replay; internal topics are the engine's
Event = tuple[str, str, str, dict[str, Any]]


class Interleaved(LocalRunner):
    """The pool on ``P`` partitions, one FIFO per (topic, partition), batches taken from a random one."""

    def __init__(self, rng: random.Random, repeat: float) -> None:
        settings = Settings(safety_threshold=0, threshold_hysteresis=0, partitions=P)
        super().__init__([HoldStock.from_settings(settings, frozenset(WAREHOUSES))], partitions=P)
        self.rng, self.repeat = rng, repeat
        self.queues: dict[tuple[str, int], deque[Event]] = {}
        self.answers: list[dict[str, Any]] = []

    def put(self, topic: str, key: str, event_type: str, record: dict[str, Any]) -> None:
        where = (topic, partition_for(key.encode(), P))
        self.queues.setdefault(where, deque()).append((topic, key, event_type, record))

    def step(self) -> bool:
        ready = [q for q in self.queues.values() if q]
        if not ready:
            return False
        queue = self.rng.choice(ready)
        events = [queue.popleft() for _ in range(self.rng.randint(1, min(4, len(queue))))]
        self._apply(events)
        for event in events:
            if event[0] in REPEATABLE and self.rng.random() < self.repeat:
                queue.appendleft(event)
        self._no_line_open_twice()
        return True

    def _apply(self, events: list[Event]) -> None:
        proc = self.processors[0]
        txns: dict[tuple[str, int], StoreTransaction[Any]] = {}
        contexts = {}
        for topic, key, event_type, record in events:
            partition = partition_for(key.encode(), P)
            ctx = contexts.get(partition) or contexts.setdefault(partition, self._context(proc, partition, txns))
            self._offset += 1
            ctx.message = _Sent(topic, partition, self._offset, key.encode())
            proc.handle(ctx, event_type, record)
        self._deliver(self._commit(list(contexts.values()), txns))

    def _deliver(self, produced: list[Event]) -> None:
        for topic, key, event_type, record in produced:
            if event_type == "HoldDecided":
                self.answers.append(record)
            if topic in self._reads:
                self.put(topic, key, event_type, record)

    def tick(self, ms: int) -> None:
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

    def records(self, kind: bytes) -> list[dict[str, Any]]:
        prefix = kind + b"\x00" + SKU.encode()
        return [orjson.loads(raw) for store in self.stores.values() for key, raw in store.items()
                if key.startswith(prefix)]  # fmt: skip

    def on_hand(self) -> dict[str, int]:
        per: dict[str, int] = {}
        for stock in self.records(b"s"):
            for wh, qty in stock["on_hand"].items():
                per[wh] = per.get(wh, 0) + qty
        return {wh: qty for wh, qty in per.items() if qty}

    def open_lines(self) -> dict[str, int]:
        lines: dict[str, int] = {}
        for hold in self.records(b"h"):
            if hold["status"] in ("held", "sold"):
                lines[hold["order_id"]] = lines.get(hold["order_id"], 0) + 1
        return lines

    def _no_line_open_twice(self) -> None:
        twice = {order: n for order, n in self.open_lines().items() if n > 1}
        assert not twice, f"lines open in two records: {twice}"


def command(action: str, order_id: str, qty: int, bucket: int, wh: str = "") -> dict[str, Any]:
    return {"event_id": f"{order_id}#1:{action}", "event_time_ms": 0, "action": action, "order_id": order_id,
            "line_no": 1, "sku": SKU, "qty": qty, "channel": "jd", "presale": False, "expires_at_ms": 0,
            "reason": "", "source_time_ms": 0, "warehouse_id": wh, "bucket": bucket, "tries": 0}  # fmt: skip


@dataclass
class Traffic:
    """The outside world: what it sent, and so what the shelf must hold."""

    pool: Interleaved
    expected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(WAREHOUSES, 0))
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    adjustments: int = 0

    def adjust(self, kind: str, qty: int, wh: str) -> None:
        self.adjustments += 1
        self.pool.put(STOCK_ADJUSTMENTS.name, SKU, "StockAdjusted", {
            "event_id": f"adj-{self.adjustments}", "event_time_ms": self.pool.now_ms, "sku": SKU,
            "warehouse_id": wh, "kind": kind, "qty": qty, "reason": ""})  # fmt: skip
        self.expected[wh] += qty

    def mark(self, buckets: int, tag: str) -> None:
        self.pool.put(OPS_OVERRIDES.name, SKU, "HotSku", {"event_id": f"hot-{tag}", "event_time_ms": self.pool.now_ms,
                                                         "sku": SKU, "buckets": buckets, "state": "", "operator": "ops",
                                                         "reason": "live"})  # fmt: skip

    def send(self, action: str, order_id: str, bucket: int, wh: str = "") -> None:
        qty = self.orders[order_id]["qty"]
        self.pool.put(HOLD_COMMANDS.name, bucket_key(SKU, bucket, P), "HoldCommand",
                      command(action, order_id, qty, bucket, wh))  # fmt: skip

    def hear(self) -> None:
        """The lifecycle reads the pool's answers."""
        for answer in self.pool.answers:
            order = self.orders[answer["order_id"]]
            action, outcome, state = answer["action"], answer["outcome"], order["state"]
            if action == "RESERVE" and outcome == "HELD":
                if state == "sent":
                    order["state"], order["bucket"] = "held", answer["bucket"]
                elif state in ("refused", "cancelled"):  # a second answer: the order went by the first
                    self.send("RELEASE", answer["order_id"], answer["bucket"])
            elif action == "RESERVE" and outcome == "REFUSED" and state == "sent":
                order["state"] = "refused"
            elif action == "ALLOCATE" and state == "paid":
                if outcome == "ALLOCATED":
                    order["state"], order["wh"], order["bucket"] = "routed", answer["reason"], answer["bucket"]
                else:
                    order["state"] = "unrouted"
                    self.send("RELEASE", answer["order_id"], order["bucket"])
        self.pool.answers.clear()

    def act(self, rng: random.Random, ship_after_cancel: float) -> None:
        """Some orders move on: cancelled in flight, paid and routed, cancelled, shipped."""
        for order_id, order in self.orders.items():
            if rng.random() > 0.05:  # how often an order moves a step
                continue
            state, bucket = order["state"], order["bucket"]
            if state == "sent" and rng.random() < 0.1:
                order["state"] = "cancelled"
                self.send("RELEASE", order_id, bucket)
            elif state == "held":
                paid = rng.random() < 0.7
                order["state"] = "paid" if paid else "cancelled"
                self.send("COMMIT" if paid else "RELEASE", order_id, bucket, rng.choice(WAREHOUSES) if paid else "")
            elif state == "routed":
                if rng.random() < ship_after_cancel:
                    self.send("RELEASE", order_id, bucket)  # cancelled after routing, shipped all the same
                order["state"] = "shipped"
                self.send("SHIP", order_id, bucket, order["wh"])
                self.expected[order["wh"]] -= order["qty"]


def play(seed: int, orders: int, repeat: float, remark: float, correct: float) -> Traffic:
    rng = random.Random(seed)
    pool = Interleaved(rng, repeat)
    world = Traffic(pool)
    for wh in WAREHOUSES:
        world.adjust("RECEIPT", rng.randint(5, 20), wh)
    while pool.step():
        pass
    world.mark(4, "first")
    placed = 0
    for step in range(5_000):
        roll, taking = rng.random(), placed < orders
        if taking and roll < 0.25:  # the mix of the traffic
            order_id = f"jd:o{placed}"
            placed += 1
            bucket = bucket_for(order_id, 4)  # the lifecycle's view of the split may be a step behind
            world.orders[order_id] = {"qty": rng.randint(1, 3), "bucket": bucket, "state": "sent"}
            world.send("RESERVE", order_id, bucket)
        elif taking and roll < 0.26:
            world.adjust("RECEIPT", rng.randint(1, 5), rng.choice(WAREHOUSES))
        elif taking and roll < 0.26 + correct:
            world.adjust("CORRECTION", -rng.randint(1, 4), rng.choice(WAREHOUSES))
        elif taking and roll < 0.26 + correct + remark:
            world.mark(rng.choice([0, 0, 2, 3, 4]), str(step))
        elif roll < 0.31 + correct + remark:
            pool.tick(rng.choice([10, 100, 500, 1_000]))
        elif not pool.step() and not taking and all(o["state"] not in ("held", "paid", "routed")
                                                    for o in world.orders.values()):  # fmt: skip
            break
        world.hear()
        world.act(rng, ship_after_cancel=0.3)
    for _ in range(100):
        while pool.step():
            pass
        pool.tick(1_000)
        world.hear()
    return world


@pytest.mark.parametrize("seed", range(12))
def test_a_hot_sku_split_and_merged_under_repeated_commands_keeps_its_shelf(seed: int) -> None:
    """Changed on purpose: a SHIP read again at a bucket merged since was taken off the home's shelf a second
    time (on the code before, 4 of these 12 seeds ended 1-3 units short)."""
    world = play(seed, orders=40, repeat=0.3, remark=0.02, correct=0.005)
    assert world.pool.on_hand() == {wh: q for wh, q in world.expected.items() if q}
    done = {o for o, order in world.orders.items() if order["state"] not in ("held", "paid", "routed")}
    assert set(world.pool.open_lines()) & done == set()
    assert done == set(world.orders)  # every order was answered and went its way


@pytest.mark.parametrize("seed", range(6))
def test_a_hot_sku_with_many_orders_and_few_units_keeps_its_shelf(seed: int) -> None:
    world = play(seed + 100, orders=120, repeat=0.1, remark=0.0, correct=0.0)
    assert world.pool.on_hand() == {wh: q for wh, q in world.expected.items() if q}
    assert not any(o["state"] in ("held", "paid", "routed") for o in world.orders.values())
