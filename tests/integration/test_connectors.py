"""The outbound connectors against the real broker and the marketplace simulator over real HTTP on
127.0.0.1: refunds agreed once, a rotated key parking calls and raising ``connector_failing``, a new
key taken without a restart, the failed queue replayed (twice, and killed with -9 half way), channel
stock pushed newest-first in the platforms' many-SKU calls and never overwritten by an older figure, stock
under a rotated key waiting uncommitted until the key is set, parked stock replayed in batches, the
failed queues kept for good and a replay reporting records deleted before it got to them, key expiry
alerts."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from typer.testing import CliRunner

from agents.channels import platforms as pf
from agents.channels.connector_process import ConnectorProcess
from agents.channels.credentials import CredentialStore, StoredKey
from agents.channels.failed_queue import Replay, replay_group
from agents.channels.sim_client import SimulatorClient
from agents.channels.simulator import AppSpec, Marketplace, SimulatorThread, generate_apps
from agents.cli import app as cli_app
from streams.contract.codec import Codec
from streams.contract.records import RefundInstruction, StockLevel
from streams.contract.schema_registry import SchemaRegistry
from streams.contract.topics import (
    CONNECTOR_FAILED,
    ORDER_STATES,
    REFUND_INSTRUCTIONS,
    REFUND_STATES,
    STOCK_LEVELS,
    ensure_topics,
)
from streams.devstack.connectorproc import ConnectorsProcess
from streams.engine.clock import wall_ms
from streams.engine.producer import EventProducer
from streams.settings import Settings
from tests.conftest import free_port
from tests.helpers import read_topic, wait_for
from tests.unit.contract.registry_stub import registry_stub

pytestmark = pytest.mark.broker
FAR = (datetime.now(pf.CHINA) + timedelta(days=365)).date()


@pytest.fixture
def sim() -> Iterator[tuple[SimulatorThread, dict[str, list[AppSpec]]]]:
    apps = generate_apps()
    thread = SimulatorThread(Marketplace(apps, latency_ms=1, jitter_ms=3, seed=7)).start()
    try:
        yield thread, apps
    finally:
        thread.stop()


@pytest.fixture
def settings(make_settings, sim, tmp_path: Path) -> Settings:
    thread, apps = sim
    made: Settings = make_settings(
        marketplace_url=thread.base_url,
        connector_credentials_file=tmp_path / "credentials.json",
        connectors_port=free_port(),
        connector_retry_budget_s=1.5,
        connector_push_window_ms=300,
    )
    store = CredentialStore.from_settings(made)
    for channel, specs in apps.items():
        store.set_key(StoredKey(channel, pf.Credentials(specs[0].app_key, specs[0].secret), FAR, wall_ms()))
    ensure_topics(made)
    return made


@contextlib.contextmanager
def connectors(settings: Settings) -> Iterator[ConnectorProcess]:
    """The connectors in this process (``ConnectorProcess.run`` on a thread), ready when yielded."""
    process = ConnectorProcess(settings)
    exit_codes: list[int] = []
    thread = threading.Thread(target=lambda: exit_codes.append(process.run()), daemon=True)
    thread.start()
    try:
        wait_for(lambda: process.ready, timeout_s=45, what="connectors holding their partitions")
        yield process
    finally:
        process.stop.set()
        thread.join(45)
    assert exit_codes == [0], process.fatal


def instruction(channel: str, n: int, order: str | None = None, amount_fen: int = 1_990) -> RefundInstruction:
    order_no = order or f"O{n}"
    return RefundInstruction(
        event_id=f"instr-{channel}-{n}", event_time_ms=wall_ms(), refund_id=f"{channel}:R{n}",
        order_id=f"{channel}:{order_no}", channel=channel, channel_order_id=order_no, channel_refund_id=f"R{n}",
        amount_fen=amount_fen + n, payment_path="original", idempotency_key=f"{channel}:R{n}", approved_by="auto",
    )  # fmt: skip


def send_refunds(settings: Settings, instructions: list[RefundInstruction]) -> None:
    producer = EventProducer(settings)
    for record in instructions:
        producer.send(REFUND_INSTRUCTIONS.name, record["order_id"], "RefundInstruction", record)
    producer.flush()


def issued(settings: Settings) -> list[dict[str, Any]]:
    return [r for t, r in read_topic(settings, "refund.issued") if t == "RefundIssued"]


def failed(settings: Settings, channel: str) -> list[dict[str, Any]]:
    return [r for _, r in read_topic(settings, CONNECTOR_FAILED[channel].name)]


def alerts(settings: Settings, kind: str) -> list[dict[str, Any]]:
    return [r for t, r in read_topic(settings, "alerts") if t == "Alert" and r["kind"] == kind]


def wait_issued(settings: Settings, refund_ids: set[str], timeout_s: float = 45) -> list[dict[str, Any]]:
    return wait_for(lambda: (found := issued(settings)) and refund_ids <= {r["refund_id"] for r in found} and found,
                    timeout_s=timeout_s, what=f"RefundIssued for {sorted(refund_ids)}")  # fmt: skip


def agreed(sim: SimulatorThread, channel: str) -> dict[str, dict[str, Any]]:
    """The simulator's refunds on ``channel`` by its refund id: ``agreed`` is 1 for each, by construction."""
    return {r["refund_id"]: r for r in sim.market.refunds_json(channel)}


def set_key_cli(settings: Settings, tmp_path: Path, channel: str, app_key: str, secret: str, expires: str) -> None:
    secret_file = tmp_path / f"{channel}-secret-{wall_ms()}"
    secret_file.write_text(secret + "\n")
    env = {"STOCKFLOW_CONNECTOR_CREDENTIALS_FILE": str(settings.connector_credentials_file),
           "STOCKFLOW_HOME": str(settings.home)}  # fmt: skip
    result = CliRunner().invoke(cli_app, ["connectors", "set-key", channel, "--app-key", app_key, "--secret-file",
                                          str(secret_file), "--expires", expires], env=env)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert secret not in result.output


def committed_to_end(settings: Settings, group: str, topic: str) -> bool:
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        name = settings.topic(topic)
        partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
        tps = [TopicPartition(name, p) for p in partitions]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        return all(tp.offset == ends[tp.partition] for tp in consumer.committed(tps, timeout=10) if ends[tp.partition])
    finally:
        consumer.close()


# ---- refunds -------------------------------------------------------------------------------------


def test_a_refund_instruction_is_agreed_once_and_issued(settings: Settings, sim, tmp_path: Path) -> None:
    thread, _ = sim
    child = ConnectorsProcess(settings, tmp_path / "connectors.log").start()
    try:
        child.wait_ready(60)
        batch = [instruction("jd", n) for n in range(3)] + [instruction("tmall", n) for n in range(2)]
        send_refunds(settings, batch)
        records = {r["refund_id"]: r for r in wait_issued(settings, {i["refund_id"] for i in batch})}
        for instr in batch:
            record = records[instr["refund_id"]]
            assert (record["order_id"], record["channel"], record["amount_fen"], record["replayed"]) == (
                instr["order_id"], instr["channel"], instr["amount_fen"], False)  # fmt: skip
            at_market = agreed(thread, instr["channel"])[instr["channel_refund_id"]]
            assert (at_market["agreed"], at_market["duplicate_attempts"], at_market["amount_fen"]) == (
                1, 0, instr["amount_fen"])  # fmt: skip
            assert at_market["channel_order_id"] == instr["channel_order_id"]
        status = child.get("/connectors/status")
        jd = status["channels"]["jd"]
        assert jd["endpoints"]["refund"]["ok"] == 3 and jd["endpoints"]["refund"]["latency_ms"]["p99"] is not None
        assert jd["credentials"]["fingerprint"].startswith("sha256:") and not jd["failing"]
        assert "secret" not in json.dumps(status).lower()
        child.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert child.proc.wait(30) == 0  # type: ignore[union-attr]
        # A clean stop committed everything it finished: a restart sends nothing again.
        assert committed_to_end(settings, f"{settings.app_id}.connectors.refunds", REFUND_INSTRUCTIONS.name)
    finally:
        child.kill9()


def test_refund_instructions_whose_schema_the_registry_cannot_give_yet_wait_and_are_sent_once(
    settings: Settings, sim, tmp_path: Path
) -> None:
    # Before, the lookup's failure killed the input loop and its way out committed the consumer's position:
    # every instruction of that fetch was committed unsent, for good.
    thread, _ = sim
    with registry_stub() as (url, state):
        framed = settings.model_copy(update={"wire_format": "confluent", "schema_registry_url": url})
        batch = [instruction("jd", 40 + n) for n in range(3)]
        # Written by a newer producer: a later version of the schema (the same fields, a new doc), whose id the
        # connectors, registering their own on start, do not know and must look up.
        codec = Codec(wire_format="confluent", registry=SchemaRegistry(url))
        first = codec.encode("RefundInstruction", batch[0])
        schema = json.loads(state.schemas[int.from_bytes(first[1:5], "big")])
        newer = state.add("stockflow.RefundInstruction", json.dumps({**schema, "doc": "version 2"}))
        producer = Producer({"bootstrap.servers": settings.bootstrap})
        for record in batch:
            raw = codec.encode("RefundInstruction", record)
            producer.produce(settings.topic(REFUND_INSTRUCTIONS.name), raw[:1] + newer.to_bytes(4, "big") + raw[5:],
                             record["order_id"].encode())  # fmt: skip
        producer.flush(10)
        state.lookups_down = True
        child = ConnectorsProcess(framed, tmp_path / "connectors.log").start()
        try:
            child.wait_ready(60)
            lookup = ("GET", f"/schemas/ids/{newer}")
            wait_for(lambda: lookup in state.requests, timeout_s=30, what="a lookup of the newer schema")
            time.sleep(2)  # lookups keep failing a while
            assert child.proc.poll() is None, "the connectors stopped"  # type: ignore[union-attr]
            assert not issued(framed) and not agreed(thread, "jd")
            state.lookups_down = False
            wait_issued(framed, {i["refund_id"] for i in batch})
            assert {r: v["agreed"] for r, v in agreed(thread, "jd").items()} == {f"R{40 + n}": 1 for n in range(3)}
        finally:
            child.kill9()


def test_a_rotated_key_parks_calls_alerts_and_a_new_key_and_replay_recover(
    settings: Settings, sim, tmp_path: Path
) -> None:
    thread, apps = sim
    app_key = apps["jd"][0].app_key
    with connectors(settings):
        send_refunds(settings, [instruction("jd", 0)])
        wait_issued(settings, {"jd:R0"})
        # The seed's incident: the platform rotates the key at a set time; calls signed with the old one fail.
        thread.market.rotate("jd", thread.market.now_ms() + 500, "rotated-secret-1")
        time.sleep(0.6)
        rotated = [instruction("jd", n, order="O-rot") for n in range(1, 6)]  # one order: one partition, in order
        send_refunds(settings, [*rotated, instruction("tmall", 7)])
        parked = wait_for(lambda: len(found := failed(settings, "jd")) >= 5 and found, timeout_s=45,
                          what="five parked jd refunds")  # fmt: skip
        assert [r["idempotency_key"] for r in parked] == [i["refund_id"] for i in rotated]  # in order
        assert {r["reason"] for r in parked} == {"connector_credentials"}
        assert all("Invalid API Key" in r["answer"] and "rotated-secret-1" not in r["request"] for r in parked)
        # The other channel is not held up.
        wait_issued(settings, {"tmall:R7"})
        raised = wait_for(lambda: alerts(settings, "connector_failing"), timeout_s=30, what="connector_failing")
        assert [(a["subject"], a["severity"], a["cleared"]) for a in raised] == [("jd/refund", "RED", False)]
        assert raised[0]["event_time_ms"] - parked[0]["event_time_ms"] < 60_000
        assert set(agreed(thread, "jd")) == {"R0"}

        # The operator sets the new key; the running connectors use it from the next call.
        set_key_cli(settings, tmp_path, "jd", app_key, "rotated-secret-1", FAR.isoformat())
        send_refunds(settings, [instruction("jd", 8)])
        wait_issued(settings, {"jd:R8"})
        cleared = wait_for(lambda: [a for a in alerts(settings, "connector_failing") if a["cleared"]], timeout_s=30,
                           what="connector_failing cleared")  # fmt: skip
        assert [a["subject"] for a in cleared] == ["jd/refund"]

    # The queue replayed: every parked refund agreed once, issued as replayed.
    first = Replay(settings, "jd").run()
    assert (first.queued, first.sent, first.already_applied, first.still_failing, first.stopped) == (5, 5, 0, 0, "")
    replayed = {r["refund_id"]: r for r in issued(settings) if r["replayed"]}
    assert set(replayed) == {i["refund_id"] for i in rotated}
    assert all(replayed[i["refund_id"]]["order_id"] == "jd:O-rot" for i in rotated)
    market = agreed(thread, "jd")
    assert set(market) == {"R0", "R1", "R2", "R3", "R4", "R5", "R8"}
    assert all(r["agreed"] == 1 and r["duplicate_attempts"] == 0 for r in market.values())

    # Run again: nothing left. The group's offsets rewound (as the broker's expiry of an idle group's leaves
    # them): the saved position still stands. Run from the start of the queue on purpose: every refund is
    # already recorded as paid on refund.issued, so none is even called again.
    assert Replay(settings, "jd").run().queued == 0
    rewind(settings, "jd")
    assert Replay(settings, "jd").run().queued == 0
    again = Replay(settings, "jd", from_offset=0).run()
    assert (again.queued, again.sent, again.already_applied) == (5, 0, 5)
    market = agreed(thread, "jd")
    assert all(market[f"R{n}"]["agreed"] == 1 and market[f"R{n}"]["duplicate_attempts"] == 0 for n in range(1, 6))


def rewind(settings: Settings, channel: str) -> None:
    """Move the replay group back to the start of the queue (what an operator does to replay all again)."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": replay_group(settings, channel),
                         "enable.auto.commit": False})  # fmt: skip
    try:
        consumer.commit(offsets=[TopicPartition(settings.topic(CONNECTOR_FAILED[channel].name), 0, 0)],
                        asynchronous=False)  # fmt: skip
    finally:
        consumer.close()


def test_replay_stops_at_a_key_still_wrong_and_goes_on_after_the_fix(settings: Settings, sim) -> None:
    thread, apps = sim
    thread.market.rotate("pdd", thread.market.now_ms(), "pdd-new")
    with connectors(settings):
        send_refunds(settings, [instruction("pdd", n, order="O-p") for n in range(3)])
        wait_for(lambda: len(failed(settings, "pdd")) >= 3, timeout_s=45, what="three parked pdd refunds")
    stopped = Replay(settings, "pdd").run()
    assert (stopped.queued, stopped.sent, stopped.remaining) == (3, 0, 3)
    assert "set-key pdd" in stopped.stopped
    CredentialStore.from_settings(settings).set_key(
        StoredKey("pdd", pf.Credentials(apps["pdd"][0].app_key, "pdd-new"), FAR, wall_ms())
    )
    done = Replay(settings, "pdd").run()
    assert (done.queued, done.sent, done.clean) == (3, 3, True)


def test_a_replay_killed_half_way_and_run_again_refunds_each_once(settings: Settings, sim, tmp_path: Path) -> None:
    thread, apps = sim
    count = 40
    thread.market.rotate("jd", thread.market.now_ms(), "jd-after-rotation")
    with connectors(settings):
        send_refunds(settings, [instruction("jd", n, order=f"O-k{n % 4}") for n in range(count)])
        wait_for(lambda: len(failed(settings, "jd")) >= count, timeout_s=60, what=f"{count} parked jd refunds")
    CredentialStore.from_settings(settings).set_key(
        StoredKey("jd", pf.Credentials(apps["jd"][0].app_key, "jd-after-rotation"), FAR, wall_ms())
    )
    thread.market.configure("jd", latency_ms=80, jitter_ms=0)  # slow enough to be killed in the middle
    env = {**os.environ, **settings.as_env(), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "agents.cli", "connectors", "replay", "jd", "--json"]
    with open(tmp_path / "replay-1.log", "wb") as log:
        first = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: len(agreed(thread, "jd")) >= 10, timeout_s=60, what="ten replayed refunds agreed")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
    assert first.returncode == -signal.SIGKILL
    assert len(agreed(thread, "jd")) < count, "the replay finished before it was killed"
    second = subprocess.run(argv, env=env, capture_output=True, timeout=120, check=False)
    assert second.returncode == 0, second.stdout.decode() + second.stderr.decode()
    summary = json.loads(second.stdout)
    assert summary["stopped"] == "" and summary["sent"] + summary["already_applied"] == summary["queued"]
    assert summary["already_applied"] <= 1  # at most the one in hand at the kill
    market = agreed(thread, "jd")
    assert set(market) == {f"R{n}" for n in range(count)}  # none lost
    assert all(r["agreed"] == 1 for r in market.values())  # none twice
    assert {r["refund_id"] for r in issued(settings) if r["replayed"]} == {f"jd:R{n}" for n in range(count)}


# ---- channel stock -------------------------------------------------------------------------------


def level(sku: str, version: int, **sellable: int) -> StockLevel:
    return StockLevel(
        event_id=f"level:{sku}:{version}", event_time_ms=wall_ms(), sku=sku, on_hand=20, locked=0, presale_reserved=0,
        presale_cap=0, sold=0, available=20, paused=False, sellable=sellable, on_hand_by_warehouse={"WH-SH": 20},
        allocated_by_warehouse={}, newest_change_ms=version, newest_source_ms=0,
    )  # fmt: skip


def send_levels(settings: Settings, *levels: StockLevel) -> None:
    producer = EventProducer(settings)
    for record in levels:
        producer.send(STOCK_LEVELS.name, record["sku"], "StockLevel", record)
    producer.flush()


def shown(sim: SimulatorThread, channel: str, sku: str) -> tuple[int, int] | None:
    rows = sim.market.stock_json(channel, sku)
    return (rows[0]["quantity"], rows[0]["version"]) if rows else None


def test_channel_stock_is_pushed_newest_first_and_never_set_older(settings: Settings, sim) -> None:
    thread, _ = sim
    with connectors(settings) as process:
        # A burst of three levels inside the push window: one call per channel, with the newest figure.
        send_levels(settings, level("S1", 1000, jd=10, tmall=10), level("S1", 1100, jd=7, tmall=10),
                    level("S1", 1200, jd=5, tmall=10))  # fmt: skip
        wait_for(lambda: shown(thread, "jd", "S1") == (5, 1200) and shown(thread, "tmall", "S1") == (10, 1200),
                 timeout_s=30, what="S1 on jd and tmall")  # fmt: skip
        # An older level read again, then an unchanged figure: nothing to send; then a real change.
        send_levels(settings, level("S1", 1100, jd=7, tmall=10), level("S1", 1300, jd=5, tmall=10))
        send_levels(settings, level("S1", 1400, jd=3, tmall=10))
        wait_for(lambda: shown(thread, "jd", "S1") == (3, 1400), timeout_s=30, what="S1 at 3 on jd")
        wait_for(lambda: committed_to_end(settings, f"{settings.app_id}.connectors.stock", STOCK_LEVELS.name),
                 timeout_s=30, what="every level pushed and committed")  # fmt: skip
        jd = thread.market.stock_json("jd", "S1")[0]
        assert [h["version"] for h in jd["history"]] == [1200, 1400]  # 1100 and the unchanged 1300 never went
        assert thread.market.stock_json("tmall", "S1")[0]["changes"] == 1
        assert process.caller.endpoint_stats("jd", "stock").ok == 2

    # A stale push replayed from the failed queue: the platform keeps the newer figure; it counts as done.
    producer = EventProducer(settings)
    body = pf.stock_body("jd", "S1", 99, 1100)
    producer.send(CONNECTOR_FAILED["jd"].name, "jd", "ConnectorCallFailed", {
        "event_id": "f1", "event_time_ms": wall_ms(), "channel": "jd", "endpoint": "stock",
        "idempotency_key": "S1@1100", "request": pf.canonical_json(body), "answer": "HTTP 503", "reason":
        "connector_retries_exhausted", "attempts": 3, "source": "stock.levels/0/1"})  # fmt: skip
    producer.flush()
    summary = Replay(settings, "jd").run()
    assert (summary.sent, summary.already_applied) == (0, 1)
    assert shown(thread, "jd", "S1") == (3, 1400)


def test_a_level_read_again_at_start_goes_once_more_when_an_earlier_lifes_call_can_no_longer_land(
    settings: Settings, sim
) -> None:
    """A level left open by the connector's earlier life (``kill -9``: it may have had a call of it lost, which the
    platforms, keeping no version, would apply whenever it lands) is read again at start and sent, then once more
    when ``STOCKFLOW_CONNECTOR_IN_DOUBT_MS`` is over; a level written after the start goes once."""
    thread, _ = sim
    doubting = settings.model_copy(update={"connector_in_doubt_ms": 3_000})
    send_levels(doubting, level("S7", 1000, jd=5))  # before the start: below the partition's end at assignment
    with connectors(doubting):
        send_levels(doubting, level("S8", 1000, jd=6))
        wait_for(lambda: shown(thread, "jd", "S7") == (5, 1000) and shown(thread, "jd", "S8") == (6, 1000),
                 timeout_s=30, what="S7 and S8 on jd")  # fmt: skip
        def calls(sku: str) -> list[str]:
            rows = thread.market.calls_json("jd", "stock")
            return [c["result"] for c in rows if c["idempotency_key"] == f"{sku}:1000"]

        wait_for(lambda: calls("S7") == ["applied", "stale"], timeout_s=30, what="S7 sent once more")
        wait_for(lambda: committed_to_end(doubting, f"{doubting.app_id}.connectors.stock", STOCK_LEVELS.name),
                 timeout_s=30, what="both levels committed")  # fmt: skip
        assert calls("S8") == ["applied"]


def stock_calls(admin: SimulatorClient, channel: str) -> tuple[int, list[dict[str, Any]]]:
    """(calls, figures) the simulator took for ``channel``'s stock: a many-SKU call's figures share a number. Read
    through its admin API, on the simulator's own loop: a busy simulator's state is not to be read from here."""
    rows = admin.calls(channel, "stock")
    return len({r["batch"] for r in rows if r["batch"]} | {-r["seq"] for r in rows if not r["batch"]}), rows


def test_a_burst_over_200_skus_reaches_every_channel_in_few_calls_newest_figure_each(settings: Settings, sim) -> None:
    thread, _ = sim
    admin = SimulatorClient(thread.base_url)
    skus = [f"B{n:03d}" for n in range(200)]
    channels = ("tmall", "jd", "pdd", "own")

    def figures(n: int, step: int) -> dict[str, int]:
        return {c: 100 + n - step + i for i, c in enumerate(channels)}

    with connectors(settings):
        # Three levels per SKU, as fast as the producer goes: within the push window each SKU is one figure.
        send_levels(settings, *(level(sku, 10_000 + step, **figures(n, step)) for step in range(3)
                                for n, sku in enumerate(skus)))  # fmt: skip

        def newest_everywhere() -> bool:
            shown = {c: admin.stock(c) for c in channels}
            return all(len(rows) == 200 and all((r["quantity"], r["version"]) == (figures(int(r["sku"][1:]), 2)[c],
                                                                                 10_002) for r in rows)
                       for c, rows in shown.items())  # fmt: skip

        wait_for(newest_everywhere, timeout_s=60, what="the newest figure of 200 SKUs on four channels")
        changes = {}
        for channel in channels:
            calls, rows = stock_calls(admin, channel)
            # One SKU a call would be 200 calls or more; a call carries up to the platform's limit (20 to 100).
            assert -(-200 // pf.platform(channel).stock_batch.max_items) <= calls <= 200 // 5, (channel, calls)
            assert all(r["batch"] for r in rows), channel  # every figure came in a many-SKU call
            assert all(r["result"] == "applied" for r in rows), channel  # the connector never sent an older figure
            changes[channel] = sum(r["changes"] for r in admin.stock(channel))
        # Older levels read again (a rewind, a rebalance) and one real change: only the change goes.
        send_levels(settings, *(level(sku, 10_001, **figures(n, 1)) for n, sku in enumerate(skus)),
                    level("B007", 10_050, tmall=1, jd=1, pdd=1, own=1))  # fmt: skip
        wait_for(lambda: [(r["quantity"], r["version"]) for r in admin.stock("jd", "B007")] == [(1, 10_050)],
                 timeout_s=30, what="B007's change on jd")  # fmt: skip
        wait_for(lambda: committed_to_end(settings, f"{settings.app_id}.connectors.stock", STOCK_LEVELS.name),
                 timeout_s=30, what="every level pushed and committed")  # fmt: skip
    for channel in channels:
        rows = admin.stock(channel)
        assert all(r["version"] == (10_050 if r["sku"] == "B007" else 10_002) for r in rows), channel
        assert all(r["stale_attempts"] == 0 for r in rows), channel
        assert sum(r["changes"] for r in rows) == changes[channel] + 1, channel  # the older levels never went


def test_two_connector_processes_together_stay_within_the_platforms_rate_limit(settings: Settings, sim) -> None:
    """Both processes call as the same app, and the platform limits the app: each paces itself to the share of
    the partitions it holds. Failed before: each took the whole limit, and the pair offered twice it."""
    thread, _ = sim
    admin = SimulatorClient(thread.base_url)
    admin.configure("tmall", qps=4.0, burst=4.0)  # a platform's window of a second
    paced = settings.model_copy(update={"connector_qps": {"tmall": 3.6}})
    second = paced.model_copy(update={"connectors_port": free_port()})
    skus = [f"Q{n:03d}" for n in range(400)]
    with connectors(paced) as one, connectors(second) as other:
        wait_for(lambda: one.rate_share() == other.rate_share() == 0.5, timeout_s=45,
                 what="the two members holding half the partitions each")  # fmt: skip
        assert one.caller.rate_share == other.caller.rate_share == 0.5
        send_levels(paced, *(level(sku, 20_000 + n, tmall=n % 50) for n, sku in enumerate(skus)))
        wait_for(lambda: len(admin.stock("tmall")) == len(skus), timeout_s=90, what="400 SKUs on tmall")
        calls, _ = stock_calls(admin, "tmall")
    assert calls >= 20  # 20 figures a call: the pair had to pace itself for seconds
    refused = [r for r in admin.rejections("tmall") if r["kind"] == pf.ErrorKind.RATE_LIMITED.value]
    assert refused == []


def test_stock_under_a_rotated_key_waits_in_the_connector_and_reaches_the_channel_once_the_key_is_set(
    settings: Settings, sim
) -> None:
    """Changed on purpose: stock figures refused for the key were parked and their records committed, so the
    channel kept the old figures until someone replayed the queue. They now wait in the connector, their
    records uncommitted (a crash meanwhile reads them again), and reach the channel once the key is set."""
    thread, apps = sim
    admin = SimulatorClient(thread.base_url)
    thread.market.rotate("pdd", thread.market.now_ms(), "pdd-rotated")
    skus = [f"R{n:02d}" for n in range(30)]
    group = f"{settings.app_id}.connectors.stock"
    with connectors(settings) as process:
        send_levels(settings, *(level(sku, 20_000 + n, pdd=n, jd=n) for n, sku in enumerate(skus)))
        wait_for(lambda: len(admin.stock("jd")) == 30, timeout_s=30, what="30 figures on jd")
        raised = wait_for(lambda: [a for a in alerts(settings, "connector_failing") if a["subject"] == "pdd/stock"],
                          timeout_s=30, what="connector_failing for pdd stock")  # fmt: skip
        assert [(a["details"]["endpoint"], a["cleared"]) for a in raised] == [("stock", False)]
        time.sleep(3)  # a few retries, all refused
        assert admin.stock("pdd") == [] and failed(settings, "pdd") == []  # nothing parked, nothing to replay
        wait_for(lambda: process.stock.retrying()["pdd"] == 30, timeout_s=10, what="30 pdd figures backing off")
        assert not committed_to_end(settings, group, STOCK_LEVELS.name)  # jd has them, pdd not yet
        CredentialStore.from_settings(settings).set_key(
            StoredKey("pdd", pf.Credentials(apps["pdd"][0].app_key, "pdd-rotated"), FAR, wall_ms())
        )
        wait_for(lambda: {r["sku"]: (r["quantity"], r["version"]) for r in admin.stock("pdd")} == {
            sku: (n, 20_000 + n) for n, sku in enumerate(skus)}, timeout_s=60, what="30 figures on pdd")  # fmt: skip
        wait_for(lambda: committed_to_end(settings, group, STOCK_LEVELS.name), timeout_s=30,
                 what="every level pushed and committed")  # fmt: skip
        cleared = wait_for(lambda: [a for a in alerts(settings, "connector_failing") if a["cleared"]],
                           timeout_s=30, what="connector_failing cleared")  # fmt: skip
        assert [(a["subject"], a["details"]["endpoint"]) for a in cleared] == [("pdd/stock", "stock")]
    assert failed(settings, "pdd") == []


def park_stock(settings: Settings, channel: str, updates: list[pf.StockUpdate]) -> None:
    """Write stock figures to ``channel``'s failed queue as the connector parks a refused one."""
    producer = EventProducer(settings)
    for update in updates:
        body = pf.stock_body(channel, update.sku, update.quantity, update.version)
        producer.send(CONNECTOR_FAILED[channel].name, channel, "ConnectorCallFailed", {
            "event_id": f"f-{update.sku}", "event_time_ms": wall_ms(), "channel": channel, "endpoint": "stock",
            "idempotency_key": f"{update.sku}@{update.version}", "request": pf.canonical_json(body),
            "answer": "HTTP 400", "reason": "connector_refused", "attempts": 1,
            "source": "stock.levels/0/1"})  # fmt: skip
    producer.flush()


def test_parked_stock_is_replayed_in_few_calls_and_never_twice(settings: Settings, sim) -> None:
    thread, _ = sim
    admin = SimulatorClient(thread.base_url)
    skus = [f"R{n:02d}" for n in range(30)]
    park_stock(settings, "pdd", [pf.StockUpdate(sku, n, 20_000 + n) for n, sku in enumerate(skus)])
    first = Replay(settings, "pdd").run()
    assert (first.queued, first.sent, first.already_applied, first.clean) == (30, 30, 0, True)
    calls, _ = stock_calls(admin, "pdd")
    assert 2 <= calls <= 5  # 30 figures in a row, 20 a call (one SKU a call would be 30)
    assert {r["sku"]: (r["quantity"], r["version"]) for r in admin.stock("pdd")} == {
        sku: (n, 20_000 + n) for n, sku in enumerate(skus)}  # fmt: skip
    # From the start of the queue again, on purpose: every figure is there already (stale), none set twice.
    again = Replay(settings, "pdd", from_offset=0).run()
    assert (again.queued, again.sent, again.already_applied) == (30, 0, 30)
    assert all(r["changes"] == 1 for r in admin.stock("pdd"))


# ---- the failed queues' retention ----------------------------------------------------------------


def retention_ms(admin: AdminClient, topic: str, key: str = "retention.ms") -> str:
    # A topic just created may not be described yet (UNKNOWN_TOPIC_OR_PART while its metadata spreads).
    deadline = time.monotonic() + 15
    while True:
        [future] = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
        try:
            return str(future.result(timeout=15)[key].value)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_the_failed_queues_keep_their_records_for_good(settings: Settings) -> None:
    """Changed on purpose: they had the broker's 7 days, after which a parked refund was gone unpaid."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    names = [settings.topic(spec.name) for spec in CONNECTOR_FAILED.values()]
    assert {name: retention_ms(admin, name) for name in names} == dict.fromkeys(names, "-1")
    # A queue created before this (the broker's default) is given the contract's retention at the next start.
    jd = settings.topic(CONNECTOR_FAILED["jd"].name)
    week = ConfigEntry("retention.ms", "604800000", incremental_operation=AlterConfigOpType.SET)
    for future in admin.incremental_alter_configs([ConfigResource(ResourceType.TOPIC, jd,
                                                                  incremental_configs=[week])]).values():  # fmt: skip
        future.result(timeout=15)
    # The broker answers an alter before its metadata shows it: describing at once can read the old value.
    wait_for(lambda: retention_ms(admin, jd) == "604800000", timeout_s=15, what="the queue back at 7 days")
    ensure_topics(settings)
    wait_for(lambda: retention_ms(admin, jd) == "-1", timeout_s=15, what="the queue kept for good again")


def test_the_states_the_dashboards_count_are_kept_a_week_before_compaction(settings: Settings) -> None:
    """Changed on purpose: compaction could drop an order's routing or a refund's payout record before a
    sink that had waited out a ClickHouse outage read it, and those dashboards then lost the order."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    lag = "min.compaction.lag.ms"
    names = [settings.topic(spec.name) for spec in (ORDER_STATES, REFUND_STATES)]
    assert {name: retention_ms(admin, name, lag) for name in names} == dict.fromkeys(names, "604800000")
    states = names[0]
    none = ConfigEntry(lag, "0", incremental_operation=AlterConfigOpType.SET)
    for future in admin.incremental_alter_configs([ConfigResource(ResourceType.TOPIC, states,
                                                                  incremental_configs=[none])]).values():  # fmt: skip
        future.result(timeout=15)
    wait_for(lambda: retention_ms(admin, states, lag) == "0", timeout_s=15, what="the lag gone")
    ensure_topics(settings)  # a topic made before the contract said it gets it at the next start
    wait_for(lambda: retention_ms(admin, states, lag) == "604800000", timeout_s=15, what="a week's lag again")


def test_a_replay_whose_position_the_broker_deleted_past_says_what_was_lost(settings: Settings, sim) -> None:
    """Changed on purpose: the replay moved a position older than the queue's first record to that record
    without a word, and reported a clean run over a queue that had lost records."""
    thread, _ = sim
    topic = settings.topic(CONNECTOR_FAILED["jd"].name)
    park_stock(settings, "jd", [pf.StockUpdate(f"G{n}", n, 30_000 + n) for n in range(6)])
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": replay_group(settings, "jd"),
                         "enable.auto.commit": False})  # fmt: skip
    try:  # the replay got through the first record, then the broker deleted the next three
        consumer.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    finally:
        consumer.close()
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    for future in admin.delete_records([TopicPartition(topic, 0, 4)]).values():
        future.result(timeout=15)
    summary = Replay(settings, "jd").run()
    assert (summary.lost, summary.queued, summary.sent, summary.first_offset, summary.clean) == (3, 2, 2, 4, False)
    assert "offsets 1 to 3" in summary.gap
    assert {r["sku"] for r in SimulatorClient(thread.base_url).stock("jd")} == {"G4", "G5"}
    gap = wait_for(lambda: alerts(settings, "failed_queue_gap"), timeout_s=30, what="failed_queue_gap")
    assert [(a["subject"], a["severity"], a["details"]["lost"], a["details"]["lost_from"]) for a in gap] == [
        ("jd", "RED", "3", "1")]  # fmt: skip
    assert Replay(settings, "jd").run().lost == 0  # reported once: the position has moved past the gap


# ---- key expiry ----------------------------------------------------------------------------------


def test_credential_expiry_alerts_warning_then_red_then_cleared(settings: Settings, sim, tmp_path: Path) -> None:
    _, apps = sim
    app_key, secret = apps["kuaishou"][0].app_key, apps["kuaishou"][0].secret
    today = datetime.now(pf.CHINA).date()

    def expiry_alerts() -> list[tuple[str, bool]]:
        return [(a["severity"], a["cleared"]) for a in alerts(settings, "credential_expiring")
                if a["subject"] == "kuaishou"]  # fmt: skip

    with connectors(settings):
        set_key_cli(settings, tmp_path, "kuaishou", app_key, secret, (today + timedelta(days=3)).isoformat())
        wait_for(lambda: expiry_alerts() == [("WARNING", False)], timeout_s=30, what="expiry warning")
        set_key_cli(settings, tmp_path, "kuaishou", app_key, secret, today.isoformat())  # expired since midnight
        wait_for(lambda: expiry_alerts()[1:] == [("WARNING", True), ("RED", False)], timeout_s=30,
                 what="the warning cleared and the key red")  # fmt: skip
        set_key_cli(settings, tmp_path, "kuaishou", app_key, secret, FAR.isoformat())
        wait_for(lambda: expiry_alerts()[3:] == [("RED", True)], timeout_s=30, what="expiry cleared")
        status = cli_status(settings)
        assert status["channels"]["kuaishou"]["credentials"]["state"] == "ok"
        assert status["channels"]["kuaishou"]["failed_queue_waiting"] == 0
        assert secret not in json.dumps(status)


def cli_status(settings: Settings) -> dict[str, Any]:
    """``stockflow connectors status --json`` (the in-process connectors serve no views: ``run`` does)."""
    result = CliRunner().invoke(cli_app, ["connectors", "status", "--json"], env={
        "STOCKFLOW_CONNECTOR_CREDENTIALS_FILE": str(settings.connector_credentials_file),
        "STOCKFLOW_KAFKA_BOOTSTRAP": settings.bootstrap, "STOCKFLOW_TOPIC_PREFIX": settings.topic_prefix,
        "STOCKFLOW_APP_ID": settings.app_id, "STOCKFLOW_CONNECTORS_PORT": str(settings.connectors_port)})  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.output)
