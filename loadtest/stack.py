"""The local stack a demo or benchmark needs, started only if nothing is running, stopped after."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console

from streams import procs
from streams.localclickhouse import LocalClickHouseServer
from streams.localkafka import LocalKafka
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
