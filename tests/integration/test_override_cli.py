"""``stockflow override request|approve|list`` against the real broker: the pool's answer, not just "sent"."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from agents.cli import app
from loadtest import events as ev
from streams.contract.topics import ORDER_EVENTS
from streams.engine.producer import EventProducer
from tests.helpers import stock_up, wait_for

pytestmark = pytest.mark.broker


def test_override_commands_print_the_outcome_and_fail_on_refusal(make_settings, start_worker) -> None:
    settings = make_settings(safety_threshold=0)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    stock_up(producer, worker, "SKU-V", 5)
    producer.send(
        ORDER_EVENTS.name, "douyin:live-1", "OrderPlaced", ev.order_placed("douyin", "live-1", [ev.line(1, "SKU-V", 5)])
    )
    producer.flush()
    wait_for(lambda: (worker.get("/orders/douyin:live-1") or {}).get("state") == "reserved", what="live-1 reserved")
    env = settings.as_env()

    def cli(*args: str) -> object:
        return CliRunner().invoke(app, ["override", *args], env=env)

    requested = cli("request", "--id", "ov-1", "--sku", "SKU-V", "--qty", "2", "--vip-order", "own:vip-9",
                    "--requester", "alice", "--reason", "key account launch")  # fmt: skip
    assert requested.exit_code == 0, requested.output
    assert "override ov-1 REQUESTED" in requested.output
    refused = cli("approve", "--id", "ov-1", "--sku", "SKU-V", "--approver", "alice")
    assert refused.exit_code == 1, refused.output
    assert "REFUSED: approver_must_differ_from_requester" in refused.output
    unknown = cli("approve", "--id", "ov-404", "--sku", "SKU-V", "--approver", "bob")
    assert unknown.exit_code == 1 and "REFUSED: unknown_override" in unknown.output
    applied = cli("approve", "--id", "ov-1", "--sku", "SKU-V", "--approver", "bob")
    assert applied.exit_code == 0, applied.output
    assert "override ov-1 APPLIED" in applied.output and "approved by bob" in applied.output
    assert applied.output.index("override ov-1 OFFERED") < applied.output.index("override ov-1 APPLIED")
    # own:vip-9 has placed no order (it may never): nothing is free, so the 2 units are pledged and live-1 keeps its
    # hold until a line of own:vip-9 asks for them.
    assert "holds released: none; 2 pledged" in applied.output
    assert worker.get("/orders/douyin:live-1")["state"] == "reserved"
    assert worker.get("/stock/SKU-V")["locked"] == 5
    listed = cli("list", "--json")
    assert listed.exit_code == 0, listed.output
    latest = {r["override_id"]: r["outcome"] for r in json.loads(listed.output)}
    assert latest == {"ov-1": "APPLIED", "ov-404": "REFUSED"}


def test_an_override_for_a_vip_order_already_rejected_fails_with_the_orders_reason(make_settings, start_worker
                                                                                    ) -> None:  # fmt: skip
    """The VIP order was rejected for stock: the approval is refused by the order's lifecycle (exit 1, the reason
    code), and the order holding the stock keeps it."""
    settings = make_settings(safety_threshold=0)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    stock_up(producer, worker, "SKU-W", 2)
    for order_id, qty in (("live-2", 2), ("vip-3", 1)):
        placed = ev.order_placed("douyin", order_id, [ev.line(1, "SKU-W", qty)], vip=order_id == "vip-3")
        producer.send(ORDER_EVENTS.name, f"douyin:{order_id}", "OrderPlaced", placed)
        producer.flush()
        wait_for(lambda o=order_id: (worker.get(f"/orders/douyin:{o}") or {}).get("state") in ("reserved", "rejected"),
                 what=f"douyin:{order_id} decided")  # fmt: skip
    assert worker.get("/orders/douyin:vip-3")["state"] == "rejected"
    env = settings.as_env()
    runner = CliRunner()
    requested = runner.invoke(app, ["override", "request", "--id", "ov-2", "--sku", "SKU-W", "--qty", "1",
                                    "--vip-order", "douyin:vip-3", "--requester", "alice", "--reason", "key account"],
                              env=env)  # fmt: skip
    assert requested.exit_code == 0, requested.output
    approved = runner.invoke(app, ["override", "approve", "--id", "ov-2", "--sku", "SKU-W", "--approver", "bob"],
                             env=env)  # fmt: skip
    assert approved.exit_code == 1, approved.output
    assert "override ov-2 OFFERED" in approved.output and "override ov-2 REFUSED: vip_order_ended" in approved.output
    assert worker.get("/orders/douyin:live-2")["state"] == "reserved"
    assert worker.get("/stock/SKU-W")["locked"] == 2  # live-2's units, nothing set aside


def test_no_answer_within_the_wait_is_a_timeout(make_settings) -> None:
    from streams.contract.topics import ensure_topics

    settings = make_settings()
    ensure_topics(settings)  # topics but no worker: nobody answers
    result = CliRunner().invoke(
        app,
        ["override", "approve", "--id", "ov-1", "--sku", "SKU-V", "--approver", "bob", "--wait", "1"],
        env=settings.as_env(),
    )
    assert result.exit_code == 1
    assert "no answer on audit.overrides within 1s (timeout)" in result.output
