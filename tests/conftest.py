"""Fixtures: one real Kafka broker and one real ClickHouse server per test session.

Each is started here unless named by the environment (``STOCKFLOW_TEST_KAFKA_BOOTSTRAP``,
``STOCKFLOW_TEST_CLICKHOUSE_URL``), which is how ``scripts/test.sh`` hands over the services it
started. Every test gets fresh topic names and a fresh consumer group, so tests never see each
other's events.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams.contract.topics import ensure_topics
from streams.devstack.localclickhouse import LocalClickHouseServer
from streams.devstack.localkafka import LocalKafka
from streams.devstack.workerproc import WorkerProcess
from streams.settings import Settings


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (each socket is held until all are picked)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="session")
def services_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def kafka_bootstrap(services_home: Path) -> Iterator[str]:
    given = os.environ.get("STOCKFLOW_TEST_KAFKA_BOOTSTRAP")
    if given:
        yield given
        return
    port, controller = free_ports(2)
    settings = Settings(home=services_home, kafka_port=port, kafka_controller_port=controller)
    kafka = LocalKafka(settings)
    kafka.up()
    try:
        yield settings.bootstrap
    finally:
        kafka.down()


@pytest.fixture(scope="session")
def clickhouse_server_url(services_home: Path) -> Iterator[str]:
    given = os.environ.get("STOCKFLOW_TEST_CLICKHOUSE_URL")
    if given:
        yield given
        return
    tcp, http = free_ports(2)
    server = LocalClickHouseServer(Settings(home=services_home), tcp_port=tcp, http_port=http)
    server.up()
    try:
        yield server.url
    finally:
        server.down()


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(kafka_bootstrap: str, tmp_path: Path) -> SettingsFactory:
    """Settings for one test: fresh topics, group, worker folder and ports."""
    tag = uuid.uuid4().hex[:10]

    def factory(**overrides: object) -> Settings:
        base: dict[str, object] = {
            "home": tmp_path / "home",
            "kafka_bootstrap": kafka_bootstrap,
            "topic_prefix": f"t{tag}.",
            "app_id": f"sf-{tag}",
            "partitions": 4,
            "web_port": free_port(),
            "clickhouse_database": f"sf_{tag}",
            "sink_flush_interval_s": 0.3,
            "log_level": "warn",
        }
        base.update(overrides)
        return Settings(**base)  # type: ignore[arg-type]

    return factory


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    """Start workers for a test; every one still running at the end is stopped."""
    workers: list[WorkerProcess] = []

    def start(settings: Settings, name: str = "worker") -> WorkerProcess:
        ensure_topics(settings)
        log = tmp_path / f"{name}-{len(workers)}.log"
        worker = WorkerProcess(settings, log).start()
        workers.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.kill9()
