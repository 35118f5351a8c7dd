"""The engine's fault behaviour on the real broker: timers across a restart, several workers on one
host joining, dying and restarting under load. Each test ends with the independent audit."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

from loadtest import events as ev
from streams.contract.keys import order_key, partition_for
from streams.contract.topics import ORDER_EVENTS, STOCK_ADJUSTMENTS
from streams.devstack.workerproc import WorkerProcess
from streams.engine.changelog import changelog_topic
from streams.engine.producer import EventProducer
from streams.settings import Settings
from tests.helpers import (
    advance_clock,
    audit_problems,
    audit_until_ok,
    dead_letter_reasons,
    read_topic,
    reservation_decisions,
    stock,
    stock_up,
    wait_for,
)
from tests.integration.test_crash import SKUS as CRASH_SKUS
from tests.integration.test_crash import stream_orders

pytestmark = pytest.mark.broker
CHANNELS = ("tmall", "jd", "douyin", "pdd", "kuaishou", "own")


def last_states(settings: Settings) -> dict[str, str]:
    """Each order's newest state in ``order.states``."""
    return {r["order_id"]: r["state"] for t, r in read_topic(settings, "order.states") if t == "OrderStateChanged"}


def engine_status(worker: WorkerProcess) -> dict[str, Any]:
    return worker.get("/engine/status")


# ---- 1. timers due before a restart fire after it ---------------------------------------------------------
TIMER_SKUS = ("SKU-TR1", "SKU-TR2", "SKU-TR3")


@pytest.mark.parametrize("advance", ["after_restart", "while_down"])
def test_payment_timeouts_fire_after_kill_9(advance: str, make_settings, start_worker) -> None:
    """Reserved, never paid, the worker killed: once the pipeline clock passes the payment timeout
    (moved after the restart, or while the worker was down so the timers are due when it starts),
    every order times out and every hold is released."""
    settings = make_settings(clock_control=True, safety_threshold=0, payment_timeout_s=1800, hold_ttl_s=7200,
                             session_timeout_s=6)  # fmt: skip
    worker = start_worker(settings)
    producer = EventProducer(settings)
    for sku in TIMER_SKUS:
        stock_up(producer, worker, sku, 100)
    rng = random.Random(11)
    orders: dict[str, list[tuple[str, int]]] = {}
    for i in range(30):
        channel, number = CHANNELS[i % len(CHANNELS)], f"unpaid-{i}"
        skus = rng.sample(TIMER_SKUS, rng.randint(1, 2))
        lines = [(sku, rng.randint(1, 3)) for sku in skus]
        orders[order_key(channel, number)] = lines
        placed = ev.order_placed(channel, number, [ev.line(n + 1, s, q) for n, (s, q) in enumerate(lines)])
        producer.send(ORDER_EVENTS.name, order_key(channel, number), "OrderPlaced", placed)
    producer.flush()
    decided = wait_for(lambda: (d := reservation_decisions(settings)) and len(d) >= len(orders) and d,
                       what="30 reservations")  # fmt: skip
    assert {decided[o]["outcome"] for o in orders} == {"RESERVED"}
    locked = {sku: sum(q for lines in orders.values() for s, q in lines if s == sku) for sku in TIMER_SKUS}
    for sku, qty in locked.items():
        wait_for(lambda sku=sku, qty=qty: stock(worker, sku)["locked"] == qty, what=f"{sku} locked {qty}")

    worker.kill9()
    if advance == "while_down":
        advance_clock(producer, 31)  # the timers are due before the worker is back
    worker = start_worker(settings, name="restarted")
    if advance == "after_restart":
        advance_clock(producer, 31)

    def all_timed_out() -> dict[str, str] | None:
        states = last_states(settings)
        return states if all(states.get(o) == "payment_timeout" for o in orders) else None

    try:
        wait_for(all_timed_out, timeout_s=60, what="every order in payment_timeout")
    except AssertionError:
        states = last_states(settings)
        stuck = {o: states.get(o) for o in orders if states.get(o) != "payment_timeout"}
        raise AssertionError(f"{len(stuck)} orders not timed out: {dict(list(stuck.items())[:5])}; "
                             f"engine {engine_status(worker)}") from None  # fmt: skip
    for sku in TIMER_SKUS:
        wait_for(lambda sku=sku: stock(worker, sku)["locked"] == 0, timeout_s=30, what=f"{sku} released")
    report = audit_until_ok(settings, timeout_s=60)
    assert report.ok, audit_problems(report)
    assert report.overdue_timers == [] and report.summary()["orders_decided"] == len(orders)


# ---- 2. more than one worker on one host ------------------------------------------------------------------
WIDE_SKUS = [f"SKU-W{i:03d}" for i in range(200)]


def changelogs_exist(settings: Settings) -> bool:
    topics = AdminClient({"bootstrap.servers": settings.bootstrap}).list_topics(timeout=15).topics
    return any(changelog_topic(settings, store) in topics for store in ("stock_by_sku", "orders_by_id"))


def stocked_skus(settings: Settings) -> set[str]:
    """SKUs the pool has published a positive on-hand for (it applied their stock)."""
    return {r["sku"] for t, r in read_topic(settings, "stock.levels") if t == "StockLevel" and r["on_hand"] > 0}


def keys_on(partitions: set[int], count: int, make: Callable[[int], str], settings: Settings) -> list[str]:
    """The first ``count`` keys ``make(0), make(1), ...`` that land on one of ``partitions``."""
    out: list[str] = []
    n = 0
    while len(out) < count:
        key = make(n)
        if partition_for(key.encode(), settings.partitions) in partitions:
            out.append(key)
        n += 1
    return out


@pytest.mark.slow
def test_workers_sharing_a_host_keep_every_sku(make_settings, peer_settings, spawn_worker) -> None:
    """Workers started the way ``stockflow bench --workers N`` starts them (one home, one app id):
    the second starts before the first has created its changelogs and still serves; then stock for
    200 SKUs and orders flow while a third joins and the second is killed. No SKU loses its stock."""
    settings = make_settings(safety_threshold=0, session_timeout_s=6)
    first = spawn_worker(settings, name="first")
    second_settings = peer_settings(settings)
    second_started_before_changelogs = not changelogs_exist(settings)
    second = spawn_worker(second_settings, name="second")
    first.wait_ready()
    second.wait_ready()
    assert second_started_before_changelogs, "the first worker had created its changelogs already"
    owned = wait_for(lambda: (s := engine_status(second)).get("owned_partitions") and s, what="second owns some")
    slots = {engine_status(first)["slot"], owned["slot"]}
    assert slots == {0, 1}, f"two workers on one host must hold different slots: {slots}"

    # The second worker decides orders whose order and SKU both live on its partitions.
    producer = EventProducer(settings)
    theirs = set(owned["owned_partitions"])
    (own_sku,) = keys_on(theirs, 1, lambda n: f"SKU-SECOND-{n}", settings)
    stock_up(producer, second, own_sku, 10)
    own_orders = keys_on(theirs, 3, lambda n: order_key("jd", f"second-{n}"), settings)
    for key in own_orders:
        number = key.split(":", 1)[1]
        producer.send(ORDER_EVENTS.name, key, "OrderPlaced", ev.order_placed("jd", number, [ev.line(1, own_sku, 1)]))
    producer.flush()
    decided = wait_for(lambda: (d := reservation_decisions(settings)) and all(k in d for k in own_orders) and d,
                       what="the second worker's orders decided")  # fmt: skip
    assert [decided[k]["outcome"] for k in own_orders] == ["RESERVED"] * 3
    assert engine_status(second)["stats"]["commits"] > 0

    # Stock for 200 SKUs over ~12 s; orders only for SKUs the pool has published stock for.
    stop = threading.Event()
    sent_orders: list[str] = []
    errors: list[BaseException] = []

    def send_stock() -> None:
        stock_producer = EventProducer(settings)
        for i, sku in enumerate(WIDE_SKUS):
            stock_producer.send(STOCK_ADJUSTMENTS.name, sku, "StockAdjusted", ev.stock_adjusted(sku, "WH-SH", 20))
            if i % 10 == 9:
                stock_producer.flush()
                time.sleep(0.6)
        stock_producer.flush()

    def send_orders() -> None:
        order_producer = EventProducer(settings)
        rng = random.Random(8)
        n = 0
        while not stop.is_set():
            known = sorted(stocked_skus(settings) & set(WIDE_SKUS))
            for _ in range(min(len(known), 6)):
                channel, number = CHANNELS[n % len(CHANNELS)], f"wide-{n}"
                key = order_key(channel, number)
                order_producer.send(ORDER_EVENTS.name, key, "OrderPlaced",
                                    ev.order_placed(channel, number, [ev.line(1, rng.choice(known), 1)]))  # fmt: skip
                if n % 2:
                    paid = ev.payment_confirmed(channel, number)
                    order_producer.send(ORDER_EVENTS.name, key, "PaymentConfirmed", paid)
                sent_orders.append(key)
                n += 1
            order_producer.flush()
            time.sleep(0.5)

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                errors.append(exc)

        return run

    stock_thread = threading.Thread(target=guarded(send_stock))
    order_thread = threading.Thread(target=guarded(send_orders))
    stock_thread.start()
    order_thread.start()
    try:
        time.sleep(3)
        third = spawn_worker(peer_settings(settings), name="third")  # joins mid-load
        time.sleep(3)
        second.kill9()  # dies mid-load, while the third may still be joining
        third.wait_ready()
        stock_thread.join(60)
        wait_for(lambda: stocked_skus(settings) >= set(WIDE_SKUS), timeout_s=90, what="every SKU's stock applied")
    finally:
        stop.set()
        stock_thread.join(60)
        order_thread.join(60)
    assert not errors, errors
    assert sent_orders, "no order was sent during the load"

    # Every SKU has its stock in the live pool: one more unit-order per SKU is reserved.
    probes = [order_key("own", f"probe-{sku}") for sku in WIDE_SKUS]
    for sku, key in zip(WIDE_SKUS, probes, strict=True):
        probe = ev.order_placed("own", f"probe-{sku}", [ev.line(1, sku, 1)])
        producer.send(ORDER_EVENTS.name, key, "OrderPlaced", probe)
    producer.flush()
    decided = wait_for(lambda: (d := reservation_decisions(settings)) and all(k in d for k in probes) and d,
                       timeout_s=90, what="every probe order decided")  # fmt: skip
    refused = {k: decided[k]["lines"][0]["reason"] for k in probes if decided[k]["outcome"] != "RESERVED"}
    assert not refused, f"{len(refused)} SKUs lost their stock: {dict(list(refused.items())[:5])}"

    unknown = [r for t, r in read_topic(settings, "stock.hold-results")
               if r["reason"] == "unknown_sku" and r["sku"] in WIDE_SKUS]  # fmt: skip
    assert not unknown, f"{len(unknown)} unknown_sku answers for stocked SKUs: {unknown[:3]}"
    reasons = dead_letter_reasons(settings)
    assert "processing_error" not in reasons, reasons
    report = audit_until_ok(settings, timeout_s=120)
    assert report.ok, audit_problems(report)
    assert report.summary()["skus_drifted"] == 0
    assert first.alive() and third.alive(), "a worker exited on its own"
    slots = {engine_status(first)["slot"], engine_status(third)["slot"]}
    assert len(slots) == 2, f"the surviving workers share a slot: {slots}"
    print(f"two workers on one host: {len(sent_orders)} orders during the load, dead letters {reasons}, "
          f"{report.summary()}")


# ---- 5. kill -9 five times under steady load, two workers -------------------------------------------------
@pytest.mark.slow
def test_two_workers_killed_in_turn_five_times(make_settings, peer_settings, spawn_worker) -> None:
    """test_crash's stream (48 orders/s, one to three lines, half paid, some cancelled, some placed
    twice) against two workers; five times, one of them is killed while both hold partitions, the
    survivor takes over, the killed one is restarted (it claims its slot and transactional id again)
    and rejoins; then the other one. Orders flow until the fifth restart is back, and the audit finds
    nothing wrong."""
    settings = make_settings(safety_threshold=0, session_timeout_s=6)
    own_settings = [settings, peer_settings(settings)]
    workers = [spawn_worker(own_settings[0], name="a"), spawn_worker(own_settings[1], name="b")]
    for worker in workers:
        worker.wait_ready()
    producer = EventProducer(settings)
    for sku in CRASH_SKUS:  # enough that orders are still reserved, not only rejected, at the end
        producer.send(STOCK_ADJUSTMENTS.name, sku, "StockAdjusted", ev.stock_adjusted(sku, "WH-SH", 500))
    producer.flush()
    wait_for(lambda: all(workers[0].get(f"/stock/{sku}").get("on_hand") == 500 for sku in CRASH_SKUS), what="stock")

    def both_hold_partitions() -> bool:
        return all(engine_status(w).get("owned_partitions") for w in workers)

    stop = threading.Event()
    result: dict[str, int] = {}
    # Open-loop at test_crash's rate (1,200 orders in 25 s) until the kills are over.
    sender = threading.Thread(target=lambda: result.update(sent=stream_orders(settings, 4800, 100.0, 5, stop)))
    started = time.monotonic()
    sender.start()
    kills: list[tuple[float, str]] = []
    try:
        for n in range(5):
            wait_for(both_hold_partitions, timeout_s=60, what="both workers holding partitions")
            time.sleep(1.5)
            victim = n % 2
            workers[victim].kill9()
            kills.append((round(time.monotonic() - started, 1), "ab"[victim]))
            workers[victim] = spawn_worker(own_settings[victim], name=f"restart{n}-{'ab'[victim]}")
            workers[victim].wait_ready()
        time.sleep(1.5)
    finally:
        stop.set()
        sender.join()
    sent, sent_s = result["sent"], time.monotonic() - started
    assert len(kills) == 5 and all(when < sent_s for when, _ in kills), (kills, sent_s)

    report = audit_until_ok(settings, timeout_s=180)
    assert report.ok, audit_problems(report)
    summary = report.summary()
    assert summary["orders_placed"] == sent
    assert summary["orders_decided"] + summary["orders_cancelled_before_decision"] == sent
    assert "processing_error" not in dead_letter_reasons(settings)
    assert all(w.alive() for w in workers), "a worker exited on its own"
    assert {engine_status(w)["slot"] for w in workers} == {0, 1}
    outcomes = [r["outcome"] for r in reservation_decisions(settings).values()]
    print(f"two workers, kills (s, worker) {kills}, {sent} orders over {sent_s:.1f} s, "
          f"{outcomes.count('RESERVED')} reserved: {summary}")  # fmt: skip


# ---- restore while a transaction is open on the changelog -------------------------------------------------
def test_restart_while_a_zombie_transaction_is_open_on_the_changelog(make_settings, start_worker) -> None:
    """A previous owner that stalled mid-batch (not dead, so not fenced) leaves a transaction open on
    a changelog partition until the transaction timeout (the engine's is 10 s). A worker restarted
    meanwhile waits for it to end, then restores everything committed there, its own later batches
    included, and loses no stock."""
    settings = make_settings(safety_threshold=0)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    sku = "SKU-ZOMBIE"
    stock_up(producer, worker, sku, 10)

    zombie = Producer({"bootstrap.servers": settings.bootstrap, "transactional.id": f"{settings.app_id}.zombie",
                       "transaction.timeout.ms": 10_000, "log_level": 3})  # fmt: skip
    zombie.init_transactions(30)
    zombie.begin_transaction()
    # A tombstone for a key nobody uses: harmless whether it is ever committed or not.
    zombie.produce(changelog_topic(settings, "stock_by_sku"), None, b"\x00zombie",
                   partition_for(sku.encode(), settings.partitions))  # fmt: skip
    zombie.flush(10)
    try:
        stock_up(producer, worker, sku, 5)  # committed after the zombie's open record
        worker.kill9()
        worker = start_worker(settings, name="restarted")
        restored = wait_for(lambda: (s := stock(worker, sku))["on_hand"] >= 0 and s, what=f"{sku} restored")
    finally:
        with contextlib.suppress(KafkaException):  # the broker has most likely aborted it already
            zombie.abort_transaction(30)
    # One order for the SKU after the zombie is gone: its batch writes the SKU's totals again.
    producer.send(ORDER_EVENTS.name, "jd:after-zombie", "OrderPlaced",
                  ev.order_placed("jd", "after-zombie", [ev.line(1, sku, 1)]))  # fmt: skip
    producer.flush()
    wait_for(lambda: "jd:after-zombie" in reservation_decisions(settings), what="the order decided")
    report = audit_until_ok(settings, timeout_s=10)
    assert restored["on_hand"] == 15 and report.ok, (
        f"the restart lost a committed receipt: on_hand {restored['on_hand']} after it, "
        f"{stock(worker, sku)['on_hand']} now; audit {audit_problems(report)}"
    )
