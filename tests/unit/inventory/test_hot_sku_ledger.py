"""A hot SKU's on-hand per warehouse equals a physical ledger of its shelves, whatever Kafka does to the traffic.

The property: after any interleaving of the (topic, partition) FIFOs, any records read twice, and any splits and
merges of the SKU, the pool's on-hand per warehouse - summed over the home record and every bucket - is what the
shelves hold: each receipt and correction once, each shipped line once (whatever the order's state: shipped units
leave the warehouse, so never phantom stock), and a count resets the shelf to what was counted, later movements on
top. Nothing here depends on the SKU being hot: a cold SKU under the same traffic must end the same.

Beyond ``test_hot_sku_traffic`` the world here also counts (rightly or not), corrects, ships lines the pool refused
or routing failed for, re-marks the SKU while counts settle, and the engine repeats itself: an outside record
delivered again later, a batch read again after it was applied (offsets not committed), and the pool's own
stock.buckets records twice. Most of the hot mixes' seeds below failed on the code before the five fixes of
"Pool: five ways a hot SKU's buckets lost or invented units" (a SHIP's marker giving way to a late RESERVE, a
cancelled line's SHIP at a bucket made anew, a count probing a bucket that had gone, transfer ids reused after a
merge, a shipment for a warehouse a bucket held none of) and its RELEASE sent round the buckets until refused;
the rest passed there too.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from streams.contract.topics import HOLD_COMMANDS, OPS_OVERRIDES, STOCK_ADJUSTMENTS, STOCK_BUCKETS

from .hot_traffic import WAREHOUSES, Event, Fifo, PartitionedPool, Traffic

OUTSIDE = (HOLD_COMMANDS.name, STOCK_ADJUSTMENTS.name, OPS_OVERRIDES.name)  # topics a replay reads again
# A world stuck in a loop (lines passed between buckets for ever) is reported after this many batches in a row.
LIVELOCK_BATCHES = 20_000


@dataclass(frozen=True)
class Mix:
    """One configuration of the traffic: per-step chances of what the world does, and of what the engine repeats."""

    buckets: int = 4  # the first split (0: the SKU stays cold unless re-marked)
    orders: int = 40
    steps: int = 4_000
    max_qty: int = 3  # an order's line is 1..max_qty units
    receipt: float = 0.01
    correct: float = 0.0  # a negative CORRECTION
    count: float = 0.0
    miscount: int = 0  # a count is off by up to this many units
    remark: float = 0.0  # the operator re-marks the SKU: cold, 2, 3 or 4 buckets
    ship_refused: float = 0.0  # a refused order the WMS ships all the same
    ship_unrouted: float = 0.0  # a paid order routing failed for that the WMS ships all the same
    duplicate_outside: float = 0.0  # a command, adjustment or mark delivered again up to 40 batches later
    duplicate_inside: float = 0.0  # a stock.buckets record delivered twice in a row
    replay: float = 0.0  # a batch read again right after it was applied
    replay_inside: bool = False  # ... stock.buckets batches too (at-least-once), not only outside topics
    ms_per_batch: int = 1  # the pool's clock per batch (0: many batches share one ms, only ticks move it)


class Redelivered(PartitionedPool):
    """Each batch is 1-4 records of one random partition, over its topics; outside records may come again later,
    a batch may be read again at once, and the pool's own stock.buckets records may come twice."""

    def __init__(self, rng: random.Random, mix: Mix) -> None:
        super().__init__(rng)
        self.mix = mix
        self.batches = 0
        self.late: list[tuple[int, Event]] = []  # duplicates and the batch they are due at

    def put(self, topic: str, key: str, event_type: str, record: dict[str, Any]) -> None:
        super().put(topic, key, event_type, record)
        if self.mix.duplicate_outside and self.rng.random() < self.mix.duplicate_outside:
            # The same bytes again, later on the same partition (the sender sent it twice).
            due = self.batches + self.rng.randint(0, 40)
            self.late.append((due, (topic, key, event_type, copy.deepcopy(record))))

    def pass_on(self, event: Event) -> None:
        super().pass_on(event)
        twice = self.mix.duplicate_inside
        if event[0] == STOCK_BUCKETS.name and twice and self.rng.random() < twice:
            # A batch replayed from the same state emits the same ids again at once, before the sender's next
            # batch (the producer is idempotent: nothing else comes between).
            self.enqueue(copy.deepcopy(event))

    def _release_late(self, everything: bool = False) -> None:
        due = [event for at, event in self.late if everything or at <= self.batches]
        self.late = [(at, event) for at, event in self.late if not (everything or at <= self.batches)]
        for event in due:
            self.enqueue(event)

    def step(self) -> bool:
        self.batches += 1
        self.now_ms += self.mix.ms_per_batch
        self._release_late()
        ready = [fifo for fifo, queue in self.queues.items() if queue]
        if not ready:
            if not self.late:
                return False
            self._release_late(everything=True)
            return True
        partition = self.rng.choice(sorted({p for _, p in ready}))
        mine = [fifo for fifo in ready if fifo[1] == partition]
        batch: list[tuple[Fifo, Event]] = []
        for _ in range(self.rng.randint(1, 4)):
            mine = [fifo for fifo in mine if self.queues[fifo]]
            if not mine:
                break
            fifo = self.rng.choice(mine)
            batch.append((fifo, self.queues[fifo].popleft()))
        self.apply([event for _, event in batch])
        if self.mix.replay and self.rng.random() < self.mix.replay:
            # The worker died before committing the batch's offsets: its next owner reads it again.
            for fifo, event in reversed(batch):
                if event[0] in OUTSIDE or self.mix.replay_inside:
                    self.queues[fifo].appendleft(copy.deepcopy(event))
        return True

    def drain(self) -> bool:
        """Read until nothing is left; False if that never comes (a livelock)."""
        return any(not self.step() for _ in range(LIVELOCK_BATCHES))


def _traffic_step(world: Traffic, rng: random.Random, mix: Mix, step: int) -> bool:
    """One step of the world: place an order, move stock, re-mark, tick the clock, or let the pool read a batch.
    False once the pool has nothing to read and every order is done with."""
    roll = rng.random()
    if len(world.orders) < mix.orders:  # the world still trades; once all orders are placed, only the pool moves
        moves: list[tuple[float, Callable[[], None]]] = [
            (0.25, lambda: world.place(rng.randint(1, mix.max_qty))),
            (mix.receipt, lambda: world.adjust("RECEIPT", rng.randint(1, 5), rng.choice(WAREHOUSES))),
            (mix.correct, lambda: world.adjust("CORRECTION", -rng.randint(1, 4), rng.choice(WAREHOUSES))),
            (mix.count, lambda: world.count(rng, mix.miscount)),
            (mix.remark, lambda: world.mark(rng.choice([0, 0, 2, 3, 4]), str(step))),  # cold twice as often
        ]
        for share, move in moves:
            if roll < share:
                move()
                return True
            roll -= share
    if roll < 0.05:
        world.pool.tick(rng.choice([10, 100, 500, 1_000]))
        return True
    return world.pool.step() or len(world.orders) < mix.orders or bool(world.undecided())


def play(seed: int, mix: Mix) -> Traffic:
    rng = random.Random(seed)
    pool = Redelivered(rng, mix)
    world = Traffic(pool, ship_refused=mix.ship_refused, ship_unrouted=mix.ship_unrouted)
    for wh in WAREHOUSES:
        world.adjust("RECEIPT", rng.randint(5, 20), wh)
    pool.drain()
    if mix.buckets:
        world.mark(mix.buckets, "first")
        world.buckets = mix.buckets  # (the lifecycle hears it a poll later; till then the bucket passes lines home)
    for step in range(mix.steps):
        if not _traffic_step(world, rng, mix, step):
            break
        world.hear()
        world.act(rng)
    for _ in range(60):  # the traffic has stopped: timers expire holds, buckets send their units home
        if not pool.drain():
            world.problems.append(f"livelock: still reading after {LIVELOCK_BATCHES} batches")
            break
        pool.tick(1_000)
        world.hear()
        world.act(rng)
    return world


MIXES = {
    # Refused and unrouted lines shipped, big lines over 2 buckets, commands delivered twice.
    "ship-refused-unrouted": Mix(buckets=2, orders=80, max_qty=6, receipt=0.03, ship_refused=0.2,
                                 ship_unrouted=0.3, duplicate_outside=0.3),
    # ... with counts (some wrong), corrections and re-marks.
    "count-remark": Mix(count=0.02, miscount=3, correct=0.01, remark=0.02, ship_refused=0.2, ship_unrouted=0.3,
                        duplicate_outside=0.3),
    # ... and the engine repeating itself: batches read again, stock.buckets records twice.
    "count-remark-replay": Mix(count=0.02, miscount=3, correct=0.01, remark=0.02, ship_refused=0.2,
                               ship_unrouted=0.3, duplicate_outside=0.3, duplicate_inside=0.01, replay=0.02,
                               replay_inside=True),
    # Re-marks with a clock that only ticks move: many messages share a clock reading.
    "remark-still-clock": Mix(remark=0.02, ms_per_batch=0),
    # The same world on a cold SKU (re-marks aside): the ledger itself, without buckets.
    "cold-count": Mix(buckets=0, count=0.03, miscount=3, correct=0.01, ship_refused=0.2, ship_unrouted=0.3,
                      duplicate_outside=0.3),
}
# Per mix: seeds that failed on the code before the five fixes (on-hand off, or a RELEASE sent round the buckets
# until refused); 257 and 214, before a shipment came off the warehouse it named rather than the line's allocation;
# 160, before an exchange's transfer to a bucket kept the home from taking that bucket as merged (a count then left
# it out, and the exchange's units came home on top of the count); then seeds that passed there too.
SEEDS = {
    "ship-refused-unrouted": [30, 41, 51, 52, 53, 257, 0, 1, 2],
    "count-remark": [4, 6, 10, 13, 29, 33, 0, 1],
    "count-remark-replay": [1, 2, 17, 20, 52, 56, 214, 160, 0, 3],
    "remark-still-clock": [69, 72, 122, 0, 1],
    "cold-count": [0, 1, 2, 3],
}


def divergence(world: Traffic) -> str:
    pool, ledger = world.pool.on_hand(), world.ledger()
    return ", ".join(f"{wh}: pool {pool.get(wh, 0)}, ledger {ledger.get(wh, 0)}"
                     for wh in sorted({*pool, *ledger}) if pool.get(wh, 0) != ledger.get(wh, 0))  # fmt: skip


@pytest.mark.parametrize(("mix", "seed"), [(name, seed) for name, seeds in SEEDS.items() for seed in seeds])
def test_a_hot_sku_ends_with_its_shelves_on_hand(mix: str, seed: int) -> None:
    world = play(seed, MIXES[mix])
    where = f"mix {mix!r}, seed {seed}"
    assert not divergence(world), f"{where}: on-hand per warehouse diverged: {divergence(world)}"
    assert not world.problems, f"{where}: {world.problems[:5]}"
    assert not world.undecided(), f"{where}: orders left waiting: {world.undecided()}"
    assert not world.pool.open_lines(), f"{where}: lines left open: {world.pool.open_lines()}"
