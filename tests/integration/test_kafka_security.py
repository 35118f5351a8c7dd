"""Every kind of Kafka client stockflow makes, against a real broker that demands SASL/SCRAM (and TLS).

Each test starts its own broker (``LocalKafka`` with a ``SASL_*`` listener, its SCRAM user written into the
storage when it is formatted) on free 127.0.0.1 ports under the test's tmp folder; the shared broker is not
touched. Through the project's own factories: topics created (with the settings' replication and
``min.insync.replicas``), events produced (confluent-kafka) and read back (confluent-kafka and aiokafka), a
worker (Faust shell, engine, follow views) applying them; a wrong password is refused with a clear error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError as AIOKafkaError
from confluent_kafka.admin import AdminClient, ConfigResource
from pydantic import SecretStr

from loadtest import events as ev
from streams.contract.codec import default_codec
from streams.contract.topics import STOCK_ADJUSTMENTS, ensure_topics
from streams.devstack.localkafka import LocalKafka, broker_metadata
from streams.devstack.procs import free_ports
from streams.engine.changelog import changelog_topic, ensure_changelogs
from streams.engine.producer import EventProducer
from streams.engine.topicreader import read_all
from streams.kafkaconf import KafkaAuthError, aiokafka_kwargs, confluent_config
from streams.settings import Settings
from tests.helpers import stop_broker, wait_stock

pytestmark = pytest.mark.broker

PASSWORD = "scram-secret-1"


def secure_broker(home: Path, protocol: str, mechanism: str) -> Iterator[Settings]:
    """Settings reaching a broker of the test's own that demands ``protocol`` and ``mechanism``."""
    port, controller, web_port, sink_port = free_ports(4)
    fields: dict[str, Any] = {
        "home": home, "kafka_port": port, "kafka_controller_port": controller, "kafka_heap": "512m",
        "kafka_security_protocol": protocol, "kafka_sasl_mechanism": mechanism,
        "kafka_sasl_username": "stockflow", "kafka_sasl_password": PASSWORD,
        "partitions": 2, "web_port": web_port, "sink_port": sink_port, "log_level": "warn",
    }  # fmt: skip
    if protocol.endswith("SSL"):
        fields["kafka_ssl_ca_file"] = home / "kafka" / "tls" / "ca.pem"  # the CA the broker's launcher makes
    settings = Settings(**fields)
    kafka = LocalKafka(settings)
    kafka.up(timeout_s=45)
    try:
        # From here on the broker is "external": what a worker or a user's CLI would be given.
        yield settings.model_copy(update={"kafka_bootstrap": settings.bootstrap})
    finally:
        stop_broker(kafka)


@pytest.fixture
def scram_broker(tmp_path: Path) -> Iterator[Settings]:
    yield from secure_broker(tmp_path / "broker", "SASL_PLAINTEXT", "SCRAM-SHA-512")


@pytest.fixture
def scram_tls_broker(tmp_path: Path) -> Iterator[Settings]:
    yield from secure_broker(tmp_path / "broker", "SASL_SSL", "SCRAM-SHA-256")


def wrong_password(settings: Settings) -> Settings:
    return settings.model_copy(update={"kafka_sasl_password": SecretStr("not-the-password")})


def topic_setting(settings: Settings, topic: str, name: str) -> str:
    admin = AdminClient(confluent_config(settings))
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    described = admin.describe_configs([resource])[resource].result(timeout=15)
    return str(described[name].value)


async def read_with_aiokafka(settings: Settings, topic: str, expected: int) -> list[bytes]:
    """What a follow view's consumer (aiokafka, the settings' SASL and TLS) reads from ``topic``."""
    consumer = AIOKafkaConsumer(topic, **aiokafka_kwargs(settings), group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    try:
        seen: list[bytes] = []
        async with asyncio.timeout(30):
            while len(seen) < expected:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    seen += [r.value for r in records if r.value is not None]
        return seen
    finally:
        await consumer.stop()


def produce_and_read_back(settings: Settings, skus: list[str]) -> None:
    producer = EventProducer(settings)
    for sku in skus:
        producer.send(STOCK_ADJUSTMENTS.name, sku, "StockAdjusted", ev.stock_adjusted(sku, "WH-SH", 10))
    producer.flush()
    producer.close()
    topic = settings.topic(STOCK_ADJUSTMENTS.name)
    codec = default_codec()
    read = [codec.decode(r.value or b"")[1]["sku"] for r in read_all(settings, topic)]
    assert sorted(read) == sorted(skus)
    followed = asyncio.run(read_with_aiokafka(settings, topic, len(skus)))
    assert sorted(codec.decode(v)[1]["sku"] for v in followed) == sorted(skus)


def test_every_client_works_over_sasl_scram_and_a_wrong_password_is_refused(
    scram_broker: Settings, start_worker: Any
) -> None:
    settings = scram_broker
    assert broker_metadata(settings)["brokers"] == [settings.bootstrap]

    refused = wrong_password(settings)
    with pytest.raises(KafkaAuthError, match=r"refused the connection: .*(SCRAM-SHA-512|[Aa]uthentication)") as err:
        ensure_topics(refused)
    assert PASSWORD not in str(err.value) and "not-the-password" not in str(err.value)
    with pytest.raises(AIOKafkaError):  # aiokafka refuses too, at start (a view would fail the worker at once)
        asyncio.run(read_with_aiokafka(refused, settings.topic(STOCK_ADJUSTMENTS.name), 1))

    created = ensure_topics(settings)
    assert settings.topic(STOCK_ADJUSTMENTS.name) in created
    assert topic_setting(settings, settings.topic(STOCK_ADJUSTMENTS.name), "min.insync.replicas") == "1"
    ensure_changelogs(settings, ["stock_by_sku"])
    assert topic_setting(settings, changelog_topic(settings, "stock_by_sku"), "min.insync.replicas") == "1"

    skus = ["SKU-SASL-1", "SKU-SASL-2"]
    produce_and_read_back(settings, skus)

    # The worker: Faust's clients, the engine's transactional producer and consumer, the follow views.
    worker = start_worker(settings)
    for sku in skus:
        wait_stock(worker, sku, on_hand=10)


def test_clients_work_over_sasl_ssl_against_the_brokers_certificate(scram_tls_broker: Settings) -> None:
    settings = scram_tls_broker
    ensure_topics(settings, (STOCK_ADJUSTMENTS,))
    produce_and_read_back(settings, ["SKU-TLS-1"])
    with pytest.raises(KafkaAuthError, match="SCRAM-SHA-256"):
        broker_metadata(wrong_password(settings))
    # A client that does not trust the broker's CA is refused by TLS, before any password is sent.
    untrusting = settings.model_copy(update={"kafka_ssl_ca_file": None})
    with pytest.raises(KafkaAuthError, match=r"(?i)ssl|certificate"):
        broker_metadata(untrusting)
