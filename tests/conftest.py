"""Fixtures: one real Kafka broker and one real ClickHouse server per test session.

Each is started here unless named by the environment (``STOCKFLOW_TEST_KAFKA_BOOTSTRAP``,
``STOCKFLOW_TEST_CLICKHOUSE_URL``), which is how ``scripts/test.sh`` hands over the services it
started. Every test gets fresh topic names and a fresh consumer group, so tests never see each
other's events.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from streams.contract.topics import delete_topics, ensure_topics
from streams.devstack.localclickhouse import LocalClickHouseServer
from streams.devstack.localkafka import LocalKafka
from streams.devstack.procs import free_ports
from streams.devstack.sinkproc import SinkProcess
from streams.devstack.workerproc import WorkerProcess
from streams.settings import Settings
from tests.helpers import stop_broker


def free_port() -> int:
    return free_ports(1)[0]


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
        stop_broker(kafka)  # a client some test left to the collector would reconnect while it stops


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
def make_settings(kafka_bootstrap: str, tmp_path: Path) -> Iterator[SettingsFactory]:
    """Settings for one test: fresh topics, group, worker folder and ports; the topics are deleted after."""
    tag = uuid.uuid4().hex[:10]

    def factory(**overrides: object) -> Settings:
        web_port, sink_port = free_ports(2)
        base: dict[str, object] = {
            "home": tmp_path / "home",
            "kafka_bootstrap": kafka_bootstrap,
            "topic_prefix": f"t{tag}.",
            "app_id": f"sf-{tag}",
            "partitions": 4,
            "web_port": web_port,
            "sink_port": sink_port,
            "clickhouse_database": f"sf_{tag}",
            "sink_flush_interval_s": 0.3,
            "log_level": "warn",
            # A test asks for the scheduled inspection when it is what it tests: the scan's own alerts
            # and queries would otherwise land in every worker test.
            "inspect_interval_s": 0,
        }
        base.update(overrides)
        return Settings(**base)  # type: ignore[arg-type]

    yield factory
    delete_topics(kafka_bootstrap, (f"t{tag}.", f"sf-{tag}"))


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


@pytest.fixture
def start_sink(tmp_path: Path) -> Iterator[Callable[..., SinkProcess]]:
    """Start ClickHouse sink processes (``stockflow sink``) for a test; every one still running at the end is
    stopped. With embedded ClickHouse the sink owns the chdb folder: read it through ``/dash`` or after it stops."""
    sinks: list[SinkProcess] = []

    def start(settings: Settings, name: str = "sink", args: tuple[str, ...] = ()) -> SinkProcess:
        ensure_topics(settings)
        sink = SinkProcess(settings, tmp_path / f"{name}-{len(sinks)}.log", args).start()
        sinks.append(sink)
        sink.wait_ready()
        return sink

    yield start
    for sink in sinks:
        sink.kill9()


@pytest.fixture
def peer_settings() -> Callable[[Settings], Settings]:
    """Settings of another worker of the same group on this host, as ``stockflow bench --workers N``
    starts them: same home, app id and topics; its own web and sink ports."""

    def peer(settings: Settings) -> Settings:
        web_port, sink_port = free_ports(2)
        return settings.model_copy(update={"web_port": web_port, "sink_port": sink_port})

    return peer


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers without waiting for them (the test calls ``wait_ready``); every one still
    running at the end is stopped."""
    workers: list[WorkerProcess] = []

    def spawn(settings: Settings, name: str = "spawned") -> WorkerProcess:
        ensure_topics(settings)
        worker = WorkerProcess(settings, tmp_path / f"{name}-{len(workers)}.log").start()
        workers.append(worker)
        return worker

    yield spawn
    for worker in workers:
        worker.kill9()


@pytest.fixture
def dedicated_kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    """A broker of the test's own (home under tmp_path, free ports), for tests that stop and start
    it; the shared one must stay up for everybody else. Stopped at the end."""
    port, controller = free_ports(2)
    settings = Settings(home=tmp_path / "broker", kafka_bootstrap="", kafka_port=port,
                        kafka_controller_port=controller, kafka_heap="512m")  # fmt: skip
    kafka = LocalKafka(settings)
    kafka.up()
    try:
        yield kafka
    finally:
        stop_broker(kafka)


LOG_TAIL_LINES = 60


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that started workers or sinks shows the tail of each one's log: CI keeps only the
    test output, and a timeout in the test says little without what the process said meanwhile."""
    report = yield
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if report.failed and isinstance(tmp_path, Path):
        for log in sorted(tmp_path.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            if lines:
                report.sections.append((f"{log.name} (last {len(lines)} lines)", "\n".join(lines)))
    return report
