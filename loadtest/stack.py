"""The local stack a demo or benchmark needs, started only if nothing is running, stopped after."""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from streams.devstack import procs
from streams.devstack.localclickhouse import LocalClickHouseServer
from streams.devstack.localkafka import LocalKafka
from streams.settings import Settings


@contextlib.contextmanager
def local_stack(settings: Settings, console: Console, clickhouse_server: bool = False) -> Iterator[str]:
    """Kafka (and a ClickHouse server) for ``settings``; yields the server URL ('' without one)."""
    kafka = LocalKafka(settings)
    server = LocalClickHouseServer(settings)
    started: list[str] = []
    try:
        if not settings.kafka_bootstrap and kafka.running_pid() is None:
            with console.status("starting Kafka (the first run resolves the broker jars)..."):
                console.print(kafka.up())
            started.append("kafka")
        url = ""
        if clickhouse_server:
            if procs.read_pid(server.pid_file) is None:
                with console.status("starting the ClickHouse server..."):
                    server.up()
                started.append("clickhouse")
            url = server.url
        yield url
    finally:
        if "clickhouse" in started:
            server.down()
        if "kafka" in started:
            with console.status("stopping Kafka..."):
                kafka.down()


def isolated(settings: Settings, name: str, **extra: Any) -> tuple[str, Settings]:
    """(tag, settings) for one measurement of its own: fresh topics, consumer group and database,
    and a fresh folder when ClickHouse is embedded (a chdb folder belongs to one process)."""
    tag = uuid.uuid4().hex[:8]
    update: dict[str, Any] = {"topic_prefix": f"{name}-{tag}.", "app_id": f"{name}-{tag}",
                              "clickhouse_database": f"{name.replace('-', '_')}_{tag}"}  # fmt: skip
    if settings.clickhouse_url.startswith("chdb"):
        update["clickhouse_url"] = f"chdb://{tempfile.mkdtemp(prefix=f'stockflow-{name}-')}"
    return tag, settings.model_copy(update={**update, **extra})
