"""The foundation against the real broker and real ClickHouse (embedded and server)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clickhouse_driver import Client
from confluent_kafka import Producer
from fastavro import parse_schema, schemaless_writer

from streams.contract.codec import schema_fingerprint
from streams.contract.registry import SCHEMA_DIR
from streams.contract.topics import ORDER_EVENTS, STOCK_ADJUSTMENTS, PartitionCountMismatch, ensure_topics
from streams.devstack.localkafka import LocalKafka, broker_metadata
from streams.devstack.procs import is_alive, port_open
from streams.engine.producer import EventProducer
from streams.settings import Settings
from tests.conftest import free_port, free_ports
from tests.helpers import read_topic, wait_for

pytestmark = pytest.mark.broker


def outside_producer_sends_stock_adjustment(bootstrap: str, topic: str, adjustment_id: str) -> None:
    """Only confluent-kafka, fastavro, a schema file and the README's contract."""
    schema = parse_schema(json.loads((SCHEMA_DIR / "stock_adjusted.avsc").read_text()))
    body = io.BytesIO()
    body.write(b"\xc3\x01" + schema_fingerprint(schema))
    schemaless_writer(
        body,
        schema,
        {"event_id": adjustment_id, "event_time_ms": int(time.time() * 1000), "sku": "SKU-EXT",
         "warehouse_id": "WH-GZ", "kind": "RECEIPT", "qty": 12, "reason": "inbound"},
    )  # fmt: skip
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "partitioner": "murmur2_random"})
    producer.produce(topic, key=b"SKU-EXT", value=body.getvalue())
    assert producer.flush(30) == 0


@pytest.mark.parametrize("backend", ["embedded", "server"])
def test_outside_event_lands_in_clickhouse(
    backend: str, make_settings, start_worker, start_sink, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    overrides: dict[str, object] = {}
    if backend == "server":
        overrides["clickhouse_url"] = request.getfixturevalue("clickhouse_server_url")
    else:
        overrides["clickhouse_url"] = f"chdb://{tmp_path / 'chdb'}"
    settings = make_settings(**overrides)
    start_worker(settings)
    sink = start_sink(settings)
    outside_producer_sends_stock_adjustment(settings.bootstrap, settings.topic(STOCK_ADJUSTMENTS.name), "ext-adj-1")

    def landed() -> list[dict]:
        rows = sink.get("/sink/query/events-by-type")
        return [r for r in rows if r["event_type"] == "StockAdjusted"]

    rows = wait_for(landed, what="the outside event in ClickHouse")
    assert rows[0]["n"] == 1
    if backend == "server":
        url = overrides["clickhouse_url"]
        assert isinstance(url, str)
        host_port = url.split("//")[1].split("/")[0]
        client = Client(
            host_port.split(":")[0],
            port=int(host_port.split(":")[1]),
            database=settings.clickhouse_database,
        )
        found = client.execute("SELECT event_id, key FROM events FINAL WHERE event_type = 'StockAdjusted'")
        assert found == [("ext-adj-1", "SKU-EXT")]


def test_malformed_bytes_become_dead_letters_and_the_worker_keeps_going(
    make_settings, start_worker, start_sink
) -> None:
    settings = make_settings()
    worker = start_worker(settings)
    sink = start_sink(settings)  # it reads every topic, so it is the one that dead-letters unreadable bytes
    producer = EventProducer(settings)
    garbage = {
        "bad_header": b"not avro at all",
        "unknown_fingerprint": b"\xc3\x01" + b"\x11" * 8 + b"\x02",
        "truncated": producer.codec.encode(
            "OrderCancelled",
            {
                "event_id": "x",
                "event_time_ms": 1,
                "channel": "jd",
                "channel_order_id": "1",
                "reason": "r",
            },
        )[:-4],
    }
    for i, value in enumerate(garbage.values()):
        producer.send_raw(ORDER_EVENTS.name, f"jd:bad{i}", value)
    from loadtest import events as ev

    producer.send(STOCK_ADJUSTMENTS.name, "SKU-OK", "StockAdjusted", ev.stock_adjusted("SKU-OK", "WH-SH", 1))
    producer.flush()

    def dead_letters() -> list[dict]:
        found = [r for t, r in read_topic(settings, "deadletters") if t == "DeadLetter"]
        return found if len(found) >= 3 else []

    letters = wait_for(dead_letters, what="three dead letters")
    by_reason = {r["reason"]: r for r in letters}
    assert set(by_reason) == set(garbage)
    for reason, value in garbage.items():
        letter = by_reason[reason]
        assert letter["original_value"] == value
        assert letter["source_topic"] == settings.topic(ORDER_EVENTS.name)
        assert letter["source_offset"] >= 0 and letter["detail"]
    # The valid event after the garbage still lands: the stream did not stop.
    wait_for(
        lambda: [r for r in sink.get("/sink/query/events-by-type") if r["event_type"] == "StockAdjusted"],
        what="the valid event after the bad ones",
    )
    assert worker.alive() and sink.alive()
    assert sink.get("/sink/status")["unreadable"] == 3


def test_dev_up_status_down_leaves_nothing_running(tmp_path: Path) -> None:
    port, controller = free_ports(2)
    env = {
        "STOCKFLOW_HOME": str(tmp_path / "dev"),
        "STOCKFLOW_KAFKA_PORT": str(port),
        "STOCKFLOW_KAFKA_CONTROLLER_PORT": str(controller),
        "PATH": __import__("os").environ["PATH"],
        "HOME": __import__("os").environ.get("HOME", "/root"),
    }
    cli = [sys.executable, "-m", "agents.cli", "dev"]
    up = subprocess.run([*cli, "up"], env=env, capture_output=True, text=True, timeout=240)
    assert up.returncode == 0, up.stdout + up.stderr
    pid = int((tmp_path / "dev" / "kafka" / "broker.pid").read_text())
    try:
        status = subprocess.run(
            [*cli, "status"],
            env={**env, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "answers metadata" in status.stdout, status.stdout
        assert broker_metadata(f"127.0.0.1:{port}")["brokers"] == [f"127.0.0.1:{port}"]
    finally:
        down = subprocess.run([*cli, "down"], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not is_alive(pid)
    assert not port_open("127.0.0.1", port)


def test_dev_up_without_java_says_what_is_missing(tmp_path: Path) -> None:
    env = {
        "STOCKFLOW_HOME": str(tmp_path),
        "PATH": str(Path(sys.executable).parent),
        "HOME": str(tmp_path),
        "STOCKFLOW_CACHE_DIR": str(tmp_path / "cache"),
        "STOCKFLOW_KAFKA_PORT": str(free_port()),
    }
    result = subprocess.run(
        [sys.executable, "-m", "agents.cli", "dev", "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "java and mvn not found" in result.stdout
    assert "docker compose up" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_aiokafka_transactions_work_against_this_broker(make_settings) -> None:
    """Faust's exactly_once mode rests on aiokafka transactions; prove this broker serves them."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    settings = make_settings()
    topic = settings.topic("txn.probe")

    async def run() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, transactional_id=f"{settings.app_id}-txn")
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send_and_wait(topic, b"committed")
            await producer.begin_transaction()
            await producer.send_and_wait(topic, b"aborted")
            await producer.abort_transaction()
            async with producer.transaction():
                await producer.send_and_wait(topic, b"end")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=settings.bootstrap,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            group_id=None,
        )
        await consumer.start()
        seen: list[bytes] = []
        try:
            while b"end" not in seen:
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=500), 30)
                seen += [m.value for msgs in batch.values() for m in msgs if m.value]
        finally:
            await consumer.stop()
        return seen

    assert sorted(asyncio.run(run())) == [b"committed", b"end"]


def test_librdkafka_murmur2_random_lands_where_the_worker_looks(make_settings) -> None:
    """The contract's partitioner setting, checked on the broker: confluent-kafka agrees with partition_for."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from streams.contract.keys import partition_for

    settings = make_settings()
    topic = settings.topic("partition.probe")
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    admin.create_topics([NewTopic(topic, 8, 1)])[topic].result()
    landed: dict[bytes, int] = {}
    producer = Producer({"bootstrap.servers": settings.bootstrap, "partitioner": "murmur2_random"})
    keys = [f"SKU-{i}".encode() for i in range(40)] + [b"jd:1001", b"tmall:x-9"]
    for key in keys:
        producer.produce(
            topic, key=key, value=b"x", on_delivery=lambda err, msg: landed.update({msg.key(): msg.partition()})
        )
    assert producer.flush(30) == 0
    assert landed == {key: partition_for(key, 8) for key in keys}


def test_dev_up_formats_storage_whatever_the_cluster_id_looks_like(tmp_path: Path) -> None:
    """About one random cluster id in 64 starts with '-', which once made `dev up` fail."""
    import base64
    import os
    from unittest import mock

    from streams.devstack import localkafka

    dash_id = base64.urlsafe_b64encode(b"\xf8" + os.urandom(15)).decode().rstrip("=")
    assert dash_id.startswith("-")
    port, controller = free_ports(2)
    settings = Settings(home=tmp_path / "dev", kafka_port=port, kafka_controller_port=controller)
    kafka = LocalKafka(settings)
    with mock.patch.object(localkafka, "_kafka_cluster_id", return_value=dash_id):
        try:
            kafka.up()
            assert broker_metadata(settings.bootstrap)["brokers"] == [f"127.0.0.1:{port}"]
        finally:
            kafka.down()


def test_topics_made_with_another_partition_count_are_refused_with_the_count_to_set(make_settings) -> None:
    """A worker whose settings disagree with the topics' partition count would look for a key's state on
    the wrong partition: it must refuse to start and say which count the topics have."""
    ensure_topics(make_settings(partitions=2), (ORDER_EVENTS, STOCK_ADJUSTMENTS))
    with pytest.raises(
        PartitionCountMismatch, match="has 2 partitions but the settings say 4; set STOCKFLOW_PARTITIONS=2"
    ):
        ensure_topics(make_settings(partitions=4), (ORDER_EVENTS, STOCK_ADJUSTMENTS))
    assert ensure_topics(make_settings(partitions=2), (ORDER_EVENTS, STOCK_ADJUSTMENTS)) == []
    # The command line says so in one line, without a traceback, and fails.
    four = make_settings(partitions=4)
    env = {**os.environ, "STOCKFLOW_HOME": str(four.home), "STOCKFLOW_KAFKA_BOOTSTRAP": four.bootstrap,
           "STOCKFLOW_TOPIC_PREFIX": four.topic_prefix, "STOCKFLOW_PARTITIONS": "4"}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "agents.cli", "topics", "create"], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1 and "set STOCKFLOW_PARTITIONS=2" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
