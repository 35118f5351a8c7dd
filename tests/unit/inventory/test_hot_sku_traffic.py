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

import pytest

from streams.contract.topics import HOLD_COMMANDS, STOCK_ADJUSTMENTS

from .hot_traffic import WAREHOUSES, Event, PartitionedPool, Traffic

REPEATABLE = (HOLD_COMMANDS.name, STOCK_ADJUSTMENTS.name)  # read again by a replay; internal topics are the engine's


class Interleaved(PartitionedPool):
    """Batches taken from one random FIFO; hold commands and adjustments read again (``repeat``) at once."""

    def __init__(self, rng: random.Random, repeat: float) -> None:
        super().__init__(rng)
        self.repeat = repeat

    def step(self) -> bool:
        ready = [q for q in self.queues.values() if q]
        if not ready:
            return False
        queue = self.rng.choice(ready)
        events: list[Event] = [queue.popleft() for _ in range(self.rng.randint(1, min(4, len(queue))))]
        self.apply(events)
        for event in events:
            if event[0] in REPEATABLE and self.rng.random() < self.repeat:
                queue.appendleft(event)
        self._no_line_open_twice()
        return True

    def _no_line_open_twice(self) -> None:
        twice = {order: n for order, n in self.open_lines().items() if n > 1}
        assert not twice, f"lines open in two records: {twice}"


def play(seed: int, orders: int, repeat: float, remark: float, correct: float) -> Traffic:
    rng = random.Random(seed)
    pool = Interleaved(rng, repeat)
    # The lifecycle's view of the split may be a step behind: it keeps routing orders over the first split's buckets.
    world = Traffic(pool, buckets=4, hears_hot_news=False)
    for wh in WAREHOUSES:
        world.adjust("RECEIPT", rng.randint(5, 20), wh)
    while pool.step():
        pass
    world.mark(4, "first")
    for step in range(5_000):
        roll, taking = rng.random(), len(world.orders) < orders
        if taking and roll < 0.25:  # the mix of the traffic
            world.place(rng.randint(1, 3))
        elif taking and roll < 0.26:
            world.adjust("RECEIPT", rng.randint(1, 5), rng.choice(WAREHOUSES))
        elif taking and roll < 0.26 + correct:
            world.adjust("CORRECTION", -rng.randint(1, 4), rng.choice(WAREHOUSES))
        elif taking and roll < 0.26 + correct + remark:
            world.mark(rng.choice([0, 0, 2, 3, 4]), str(step))
        elif roll < 0.31 + correct + remark:
            pool.tick(rng.choice([10, 100, 500, 1_000]))
        elif not pool.step() and not taking and not world.undecided():
            break
        world.hear()
        world.act(rng)
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
    assert world.pool.on_hand() == world.ledger()
    assert set(world.pool.open_lines()) & (set(world.orders) - set(world.undecided())) == set()
    assert not world.undecided()  # every order was answered and went its way


@pytest.mark.parametrize("seed", range(6))
def test_a_hot_sku_with_many_orders_and_few_units_keeps_its_shelf(seed: int) -> None:
    world = play(seed + 100, orders=120, repeat=0.1, remark=0.0, correct=0.0)
    assert world.pool.on_hand() == world.ledger()
    assert not world.undecided()
