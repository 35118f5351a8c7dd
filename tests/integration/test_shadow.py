"""Shadow runs on the real broker: a candidate rule beside the live worker on the same events.

Each test starts a live worker and a shadow (``stockflow shadow start``, a background process of its own),
sends orders and refunds to the live inputs, waits until both runs decided them, and compares with
``stockflow shadow report``. The routing cases use the example warehouses of ``test_lifecycle.py`` (the
hand-computed case of ``tests/unit/routing/test_scoring.py``: for a customer in Hangzhou, Nanjing wins
over nearer Shanghai on the live weights).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from agents.shadow import control
from agents.shadow.candidate import (
    DEFAULT_REFUND_RULES,
    ShadowHome,
    ShadowSettings,
    shadow_settings,
    shadow_topic_prefix,
)
from agents.shadow.report import build_report
from loadtest import events as ev
from streams.contract.keys import order_key
from streams.contract.records import Address
from streams.contract.topics import ORDER_EVENTS, REFUND_EVENTS
from streams.engine.producer import EventProducer
from streams.settings import Settings
from tests.helpers import read_topic, stock_up, wait_for
from tests.integration.test_lifecycle import EXAMPLE_WAREHOUSES
from tests.unit.routing.test_scoring import EXAMPLE_SCORES

pytestmark = pytest.mark.broker

GUANGZHOU = Address(province="广东省", city="广州市", district="天河区", detail="体育西路 1 号 2 栋 301")
# Hand-computed (see tests/unit/shadow/test_compare.py): with these weights Shanghai scores 0.828 for
# a Hangzhou customer against Nanjing's 0.793, so an order the live rule sends to Nanjing goes to Shanghai.
DISTANCE_FIRST = {"distance": 0.9, "sufficiency": 0.0, "on_time": 0.1, "cost": 0.0}
# Refund orders, by order amount in yuan: the live limit is "below 500", the candidate's "below 1000".
REFUND_AMOUNTS = {"r300": 30_000, "r500": 50_000, "r900": 90_000, "r1000": 100_000, "r1200": 120_000}


@pytest.fixture
def example_warehouses(tmp_path: Path) -> Path:
    path = tmp_path / "warehouses.toml"
    path.write_text(EXAMPLE_WAREHOUSES, encoding="utf-8")
    return path


def shadow_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.as_env(), "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "agents.cli", "shadow", *args], env=env, capture_output=True,
                          text=True, timeout=240, check=False)  # fmt: skip


@pytest.fixture
def start_shadow() -> Iterator[Callable[..., Settings]]:
    """Start a shadow with ``stockflow shadow start``; return its settings (its topic names). Every shadow
    still running at the end is stopped (its topics go with the test's)."""
    started: list[tuple[Settings, str]] = []

    def start(settings: Settings, name: str, *candidate: str) -> Settings:
        started.append((settings, name))
        done = shadow_cli(settings, "start", name, *candidate)
        assert done.returncode == 0, done.stdout + done.stderr
        home = ShadowHome(settings, name)
        return shadow_settings(settings, home.load(), home)

    yield start
    for settings, name in started:
        if ShadowHome(settings, name).exists():
            control.stop(settings, name)


def newest(settings: Settings, topic: str, key: str, field: str) -> dict[str, Any]:
    """The newest value of ``field`` per ``key`` in ``topic``."""
    return {r[key]: r[field] for _, r in read_topic(settings, topic)}


def wait_both(runs: list[Settings], check: Callable[[Settings], bool], what: str) -> None:
    for run in runs:
        where = "the shadow" if isinstance(run, ShadowSettings) else "the live pipeline"
        wait_for(lambda run=run: check(run), timeout_s=90, what=f"{what} in {where}")  # type: ignore[misc]


def wait_levels(runs: list[Settings], sku: str, on_hand: dict[str, int]) -> None:
    """Until ``sku``'s published level shows ``on_hand``, in the live topic and the shadow's: what each routes by."""

    def seen(run: Settings) -> bool:
        levels = [r for _, r in read_topic(run, "stock.levels") if r["sku"] == sku]
        return bool(levels) and all(levels[-1]["on_hand_by_warehouse"].get(w) == q for w, q in on_hand.items())

    wait_both(runs, seen, f"{sku} at {on_hand}")


def stock(producer: EventProducer, worker: Any, runs: list[Settings], sku: str, **by_warehouse: int) -> None:
    for wh, qty in by_warehouse.items():
        stock_up(producer, worker, sku, qty, wh)
    wait_levels(runs, sku, by_warehouse)


def place_and_pay(producer: EventProducer, number: str, lines: list[Any], address: Address = ev.DEFAULT_ADDRESS) -> str:
    key = order_key("jd", number)
    producer.send(ORDER_EVENTS.name, key, "OrderPlaced", ev.order_placed("jd", number, lines, address=address))
    producer.send(ORDER_EVENTS.name, key, "PaymentConfirmed", ev.payment_confirmed("jd", number))
    return key


def wait_states(runs: list[Settings], orders: list[str], state: str) -> None:
    wait_both(runs, lambda run: all(newest(run, "order.states", "order_id", "state").get(o) == state for o in orders),
              f"{len(orders)} orders {state}")  # fmt: skip


def refunds_after_delivery(producer: EventProducer, worker: Any, runs: list[Settings]) -> list[str]:
    """One delivered order per amount of ``REFUND_AMOUNTS``, each returned within 7 days (no custom line):
    only the amount decides whether the refund is approved automatically. Returns the refund ids."""
    stock(producer, worker, runs, "SKU-RF", **{"WH-SH": 100})
    orders = [place_and_pay(producer, name, [ev.line(1, "SKU-RF", 1, price_fen=fen)])
              for name, fen in REFUND_AMOUNTS.items()]  # fmt: skip
    producer.flush()
    wait_states(runs, orders, "routed")
    for name in REFUND_AMOUNTS:
        key = order_key("jd", name)
        producer.send(ORDER_EVENTS.name, key, "ShipmentDispatched", ev.shipment_dispatched("jd", name, "WH-SH"))
        producer.send(ORDER_EVENTS.name, key, "ShipmentDelivered", ev.shipment_delivered("jd", name))
    producer.flush()
    wait_states(runs, orders, "delivered")
    for name, fen in REFUND_AMOUNTS.items():
        request = ev.refund_requested("jd", name, f"R-{name}", fen)
        producer.send(REFUND_EVENTS.name, order_key("jd", name), "RefundRequested", request)
    producer.flush()
    refund_ids = [f"jd:R-{name}" for name in REFUND_AMOUNTS]
    wait_both(runs, lambda run: all(newest(run, "refund.states", "refund_id", "state").get(r, "requested")
                                    != "requested" for r in refund_ids), "refunds decided")  # fmt: skip
    return refund_ids


def end_offsets(settings: Settings, prefixes: tuple[str, ...], but: str | None = None) -> dict[str, int]:
    """Records ever written per topic whose name starts with one of ``prefixes`` (and not with ``but``)."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": "shadow-test-offsets"})
    try:
        out = {}
        for name, meta in admin.list_topics(timeout=15).topics.items():
            if name.startswith(prefixes) and not (but and name.startswith(but)):
                try:
                    out[name] = sum(consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1]
                                    for p in meta.partitions)  # fmt: skip
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                        raise
                    # Deleted a moment ago: the broker's metadata can list it a little longer.
        return out
    finally:
        consumer.close()


def test_a_candidate_identical_to_the_live_rule_differs_nowhere_and_touches_no_live_topic(
    make_settings: Any, start_worker: Any, start_shadow: Any, example_warehouses: Path
) -> None:
    settings = make_settings(safety_threshold=0, warehouses_file=example_warehouses)
    worker = start_worker(settings)
    shadow = start_shadow(settings, "same", "--routing-weights", json.dumps(settings.routing_weights),
                          "--refund-rules", str(DEFAULT_REFUND_RULES))  # fmt: skip
    runs = [settings, shadow]
    producer = EventProducer(settings)
    stock(producer, worker, runs, "SKU-A", **{"WH-SH": 2, "WH-NJ": 40, "WH-GZ": 200})
    stock(producer, worker, runs, "SKU-G", **{"WH-SH": 50, "WH-NJ": 50, "WH-GZ": 50})
    stock(producer, worker, runs, "SKU-B", **{"WH-NJ": 30, "WH-GZ": 30})
    stock(producer, worker, runs, "SKU-S1", **{"WH-SH": 5})
    stock(producer, worker, runs, "SKU-S2", **{"WH-GZ": 5})
    orders = [place_and_pay(producer, f"a{i}", [ev.line(1, "SKU-A", 2)]) for i in range(8)]
    orders += [place_and_pay(producer, f"g{i}", [ev.line(1, "SKU-G", 1)], GUANGZHOU) for i in range(8)]
    orders += [place_and_pay(producer, f"b{i}", [ev.line(1, "SKU-B", 1)]) for i in range(4)]
    orders += [place_and_pay(producer, f"s{i}", [ev.line(1, "SKU-S1", 1), ev.line(2, "SKU-S2", 1)]) for i in range(2)]
    producer.flush()
    wait_states(runs, orders, "routed")
    refund_ids = refunds_after_delivery(producer, worker, runs)

    done = shadow_cli(settings, "report", "same", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    routing, refunds = report["routing"], report["refunds"]
    assert (routing["compared"], routing["differing"], routing["only_live"], routing["only_shadow"]) == (27, 0, 0, 0)
    assert routing["effect"]["live"] == routing["effect"]["shadow"]
    assert routing["effect"]["live"]["split_rate"] == round(2 / 27, 4)
    assert (refunds["compared"], refunds["differing"]) == (len(refund_ids), 0)
    assert refunds["effect"]["live"] == refunds["effect"]["shadow"]
    assert report["status"]["ready"] and report["status"]["running"]
    listed = shadow_cli(settings, "list", "--json")
    assert [s["name"] for s in json.loads(listed.stdout)] == ["same"]

    # Nothing the shadow does reaches a live topic: with the live worker stopped, the shadow alone
    # decides three more orders, and every live topic but the input they came on stays as it was.
    worker.stop()
    live_prefixes = (settings.topic_prefix, settings.app_id)
    shadow_prefix = shadow_topic_prefix(settings, "same")
    before = end_offsets(settings, live_prefixes, shadow_prefix)
    more = [place_and_pay(producer, f"late{i}", [ev.line(1, "SKU-G", 1)], GUANGZHOU) for i in range(3)]
    producer.flush()
    wait_states([shadow], more, "routed")
    after = end_offsets(settings, live_prefixes, shadow_prefix)
    grown = {topic: after[topic] - before.get(topic, 0) for topic in after if after[topic] != before.get(topic)}
    assert grown == {settings.topic("order.events"): 6}, grown  # placed and paid, three times: ours
    assert set(after) == set(before)  # and no live-named topic appeared
    assert any(r["order_id"] in more for _, r in read_topic(shadow, "warehouse.dispatch"))

    done = shadow_cli(settings, "stop", "same", "--delete-topics")
    assert done.returncode == 0, done.stdout + done.stderr
    # Deleting is asynchronous on the broker: a topic can still be listed, and read, for a moment.
    wait_for(lambda: not end_offsets(settings, (shadow_prefix,)), timeout_s=30, what="the shadow's topics gone")
    assert json.loads(shadow_cli(settings, "list", "--json").stdout) == []


def test_distance_first_differs_exactly_on_the_orders_the_hand_computed_case_flips(
    make_settings: Any, start_worker: Any, start_shadow: Any, example_warehouses: Path
) -> None:
    settings = make_settings(safety_threshold=0, warehouses_file=example_warehouses)
    worker = start_worker(settings)
    shadow = start_shadow(settings, "dist", "--routing-weights", json.dumps(DISTANCE_FIRST))
    runs = [settings, shadow]
    producer = EventProducer(settings)
    for i in range(4):  # the hand-computed case, each on its own SKU: Nanjing live, Shanghai in the shadow
        stock(producer, worker, runs, f"SKU-F{i}", **{"WH-SH": 2, "WH-NJ": 40, "WH-GZ": 200})
    stock(producer, worker, runs, "SKU-G", **{"WH-SH": 50, "WH-NJ": 50, "WH-GZ": 50})
    stock(producer, worker, runs, "SKU-B", **{"WH-NJ": 30, "WH-GZ": 30})
    flips = [place_and_pay(producer, f"flip{i}", [ev.line(1, f"SKU-F{i}", 2)]) for i in range(4)]
    # Guangzhou ships to Guangzhou on either weights; Hangzhou without Shanghai stock gets Nanjing on both.
    stays = [place_and_pay(producer, f"g{i}", [ev.line(1, "SKU-G", 1)], GUANGZHOU) for i in range(4)]
    stays += [place_and_pay(producer, f"b{i}", [ev.line(1, "SKU-B", 1)]) for i in range(4)]
    producer.flush()
    wait_states(runs, flips + stays, "routed")

    report = build_report(settings, "dist", examples=10)
    routing = report.routing
    assert (routing.compared, routing.differing, routing.only_live, routing.only_shadow) == (12, 4, 0, 0)
    assert sorted(live.order_id for live, _ in routing.examples) == sorted(flips)
    assert routing.moves == {"WH-NJ -> WH-SH": 4}
    for live, shadow_choice in routing.examples:
        assert {c["warehouse_id"]: round(c["score"], 3) for c in live.candidates} == EXAMPLE_SCORES
        assert {c["warehouse_id"]: round(c["score"], 3) for c in shadow_choice.candidates} == {
            "WH-SH": 0.828, "WH-NJ": 0.793, "WH-GZ": 0.099}  # fmt: skip
        assert dict(shadow_choice.weights) == DISTANCE_FIRST
    live_fx, shadow_fx = routing.live_effect, routing.shadow_effect
    assert (live_fx.parcels_by_warehouse, shadow_fx.parcels_by_warehouse) == (
        {"WH-GZ": 4, "WH-NJ": 8}, {"WH-GZ": 4, "WH-NJ": 4, "WH-SH": 4})  # fmt: skip
    # Four parcels travel 164.9 km from Shanghai instead of 236.9 km from Nanjing.
    assert live_fx.avg_km - shadow_fx.avg_km == pytest.approx(4 * (236.9 - 164.9) / 12, abs=0.2)
    # The candidate's warehouse pushes went to the shadow's topic only; the live WMS saw the live choice.
    live_dispatch = {r["order_id"]: r["warehouse_id"] for _, r in read_topic(settings, "warehouse.dispatch")}
    shadow_dispatch = {r["order_id"]: r["warehouse_id"] for _, r in read_topic(shadow, "warehouse.dispatch")}
    assert {live_dispatch[o] for o in flips} == {"WH-NJ"} and {shadow_dispatch[o] for o in flips} == {"WH-SH"}

    done = shadow_cli(settings, "report", "dist", "--examples", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 of 12 differ (33.3%)" in done.stdout and "WH-NJ -> WH-SH" in done.stdout


def test_a_higher_auto_approval_limit_approves_exactly_the_refunds_between_the_limits(
    make_settings: Any, start_worker: Any, start_shadow: Any, tmp_path: Path
) -> None:
    settings = make_settings(safety_threshold=0)
    worker = start_worker(settings)
    rules = tmp_path / "refund_rules_1000.toml"
    rules.write_text(DEFAULT_REFUND_RULES.read_text(encoding="utf-8").replace(
        "auto_approve_below_fen = 50000", "auto_approve_below_fen = 100000"), encoding="utf-8")  # fmt: skip
    shadow = start_shadow(settings, "limit", "--refund-rules", str(rules))
    runs = [settings, shadow]
    producer = EventProducer(settings)
    refund_ids = refunds_after_delivery(producer, worker, runs)

    report = build_report(settings, "limit")
    refunds = report.refunds
    assert (refunds.compared, refunds.differing, refunds.only_live, refunds.only_shadow) == (5, 2, 0, 0)
    assert sorted(live.refund_id for live, _ in refunds.examples) == ["jd:R-r500", "jd:R-r900"]
    assert all((live.reason, shadow_choice.label) == ("amount_over_auto_limit", "auto_approved")
               for live, shadow_choice in refunds.examples)  # fmt: skip
    assert refunds.moves == {"reviewing -> auto_approved": 2}
    assert (refunds.live_effect.auto_approved, refunds.live_effect.auto_approved_fen) == (1, 30_000)
    assert (refunds.shadow_effect.auto_approved, refunds.shadow_effect.auto_approved_fen) == (3, 170_000)
    assert (refunds.live_effect.to_review, refunds.shadow_effect.to_review) == (4, 2)
    assert report.routing.differing == 0 and report.routing.compared == len(refund_ids)
    # Only the live decision reached the connectors' topic; the shadow's instructions stayed in its own.
    assert [r["refund_id"] for _, r in read_topic(settings, "refund.instructions")] == ["jd:R-r300"]
    assert sorted(r["refund_id"] for _, r in read_topic(shadow, "refund.instructions")) == [
        "jd:R-r300", "jd:R-r500", "jd:R-r900"]  # fmt: skip
