"""The local stack a demo or benchmark needs, started only if nothing is running, stopped after; the
run's isolated settings, free ports, and how far a consumer group is behind."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from rich.console import Console

from streams.contract.topics import TopicSpec, delete_topics
from streams.devstack import procs
from streams.devstack.localclickhouse import LocalClickHouseServer
from streams.devstack.localkafka import LocalKafka
from streams.settings import Settings

# The runs ``isolated`` handed out in this process: their topics and folders are deleted when the
# stack around them closes, so a broker that serves many benchmarks does not pile up partitions
# until it runs out of file descriptors (a run creates some 35 topics), and a machine that runs
# them all week before the peak does not fill its disk (a run leaves ~170 MB of embedded
# ClickHouse and up to 100 MB of worker state).
_RUNS: list[Settings] = []
# The embedded ClickHouse folders ``isolated`` made: only these are removed, never a folder a user
# pointed a run at.
_SCRATCH: set[Path] = set()


def delete_run_topics(settings: Settings, runs: list[Settings]) -> int:
    """Delete every topic of ``runs`` (their prefix, and the Faust and changelog topics named by app id)."""
    prefixes = tuple(r.topic_prefix for r in runs if r.topic_prefix) + tuple(f"{r.app_id}-" for r in runs)
    return delete_topics(settings, prefixes)


@contextlib.contextmanager
def local_stack(settings: Settings, console: Console, clickhouse_server: bool = False) -> Iterator[str]:
    """Kafka (and a ClickHouse server) for ``settings``; yields the server URL ('' without one). On the
    way out, the topics of every run ``isolated`` made in this process are deleted."""
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
        runs, _RUNS[:] = list(_RUNS), []
        if runs:
            with console.status("deleting this run's topics and scratch folders..."):
                delete_run_topics(settings, runs)
                remove_run_folders(runs)
        if "clickhouse" in started:
            server.down()
        if "kafka" in started:
            with console.status("stopping Kafka..."):
                kafka.down()


def scratch_folder(name: str) -> Path:
    """A new folder for one run's embedded ClickHouse, removed when the stack around it closes."""
    folder = Path(tempfile.mkdtemp(prefix=f"stockflow-{name}-"))
    _SCRATCH.add(folder)
    return folder


def remove_run_folders(runs: list[Settings]) -> None:
    """Remove the folders runs wrote and nothing reads after them: the engine's and Faust's stores
    (named by each run's own app id) and every scratch folder made in this process."""
    folders = [f for run in runs for f in (run.home_dir / "state" / run.app_id, run.home_dir / "worker" / run.app_id)]
    scratch = sorted(_SCRATCH)
    _SCRATCH.clear()
    for folder in folders + scratch:
        shutil.rmtree(folder, ignore_errors=True)


def isolated(settings: Settings, name: str, **extra: Any) -> tuple[str, Settings]:
    """(tag, settings) for one measurement of its own: fresh topics, consumer group and database,
    and a fresh folder when ClickHouse is embedded (a chdb folder belongs to one process)."""
    tag = uuid.uuid4().hex[:8]
    update: dict[str, Any] = {"topic_prefix": f"{name}-{tag}.", "app_id": f"{name}-{tag}",
                              "clickhouse_database": f"{name.replace('-', '_')}_{tag}"}  # fmt: skip
    if settings.clickhouse_url.startswith("chdb"):
        update["clickhouse_url"] = f"chdb://{scratch_folder(name)}"
    run = settings.model_copy(update={**update, **extra})
    _RUNS.append(run)
    return tag, run


def group_lag(settings: Settings, consumer: Consumer, watched: tuple[TopicSpec, ...]) -> int:
    """Messages the consumer's group has not committed yet on ``watched`` topics."""
    tps = [TopicPartition(settings.topic(t.name), p) for t in watched for p in range(t.partitions(settings))]
    # One ListOffsets request for every partition (timestamp -1 asks for the end): a request per
    # partition each second was a sixth of the broker's requests during a benchmark.
    ends = consumer.offsets_for_times([TopicPartition(tp.topic, tp.partition, -1) for tp in tps], timeout=10)
    high = {(tp.topic, tp.partition): tp.offset for tp in ends}
    return sum(max(0, high[(tp.topic, tp.partition)] - max(tp.offset, 0)) for tp in consumer.committed(tps, timeout=10))
