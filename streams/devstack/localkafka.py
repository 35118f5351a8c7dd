"""A single-node Apache Kafka broker in KRaft mode on 127.0.0.1, without Docker.

Maven resolves the broker jars from ``streams/broker/pom.xml`` into
``<cache_dir>/kafka/<version>/libs`` (shared by every stockflow home on the machine);
the storage is formatted once with a generated cluster id; ``kafka.Kafka`` runs detached with its
pid in ``<home>/kafka/broker.pid``. When ``STOCKFLOW_KAFKA_BOOTSTRAP`` names a broker, nothing here
is used.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from streams.devstack import procs
from streams.errors import StockflowError
from streams.settings import Settings

BROKER_DIR = Path(__file__).resolve().parent / "broker"


class MissingTool(StockflowError, RuntimeError):
    """Java or Maven is not installed; the message says what to do instead."""


@dataclass
class LocalKafka:
    settings: Settings

    @property
    def root(self) -> Path:
        return self.settings.home_dir / "kafka"

    @property
    def libs(self) -> Path:
        return self.settings.cache_dir.resolve() / "kafka" / self.settings.kafka_version / "libs"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def pid_file(self) -> Path:
        return self.root / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "broker.log"

    def check_tools(self) -> None:
        missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
        if missing:
            raise MissingTool(
                f"cannot start a local Kafka broker: {' and '.join(missing)} not found on PATH.\n"
                "Either install them (Debian: apt-get install openjdk-17-jre-headless maven),\n"
                "or run the stack with Docker: docker compose up -d,\n"
                "or point stockflow at a running broker: export STOCKFLOW_KAFKA_BOOTSTRAP=host:9092"
            )

    def fetch(self) -> Path:
        """Resolve the broker jars (once per version); return the folder."""
        marker = self.libs / ".complete"
        if marker.exists():
            return self.libs
        self.check_tools()
        self.libs.mkdir(parents=True, exist_ok=True)
        cmd = [
            "mvn", "-q", "-B", "-f", str(BROKER_DIR / "pom.xml"),
            f"-Dkafka.version={self.settings.kafka_version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={self.libs}", "-DincludeScope=runtime",
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"maven could not resolve Kafka jars:\n{result.stdout}{result.stderr}")
        marker.write_text(self.settings.kafka_version)
        return self.libs

    def config_text(self) -> str:
        s = self.settings
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{s.kafka_controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{s.kafka_port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={self.data_dir}",
                f"num.partitions={s.partitions}",
                "auto.create.topics.enable=true",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=8",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "transaction.state.log.num.partitions=4",
                "group.initial.rebalance.delay.ms=0",
                "log.retention.hours=168",
                "log.cleaner.min.compaction.lag.ms=0",
                "",
            ]
        )

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            "java", f"-Xmx{self.settings.kafka_heap}", f"-Xms{self.settings.kafka_heap}",
            f"-Dlog4j2.configurationFile={BROKER_DIR / 'log4j2.properties'}",
            "-cp", f"{self.libs}/*", main, *args,
        ]  # fmt: skip

    def running_pid(self) -> int | None:
        return procs.read_pid(self.pid_file)

    def up(self, timeout_s: float = 90.0) -> str:
        """Start the broker unless it runs; return a one-line description."""
        if self.settings.kafka_bootstrap:
            return f"using the broker at {self.settings.kafka_bootstrap} (nothing started)"
        if (pid := self.running_pid()) is not None:
            return f"Kafka already running (pid {pid}) on {self.settings.bootstrap}"
        if procs.port_open("127.0.0.1", self.settings.kafka_port):
            raise RuntimeError(
                f"port {self.settings.kafka_port} is taken by a process stockflow did not start; "
                "set STOCKFLOW_KAFKA_BOOTSTRAP to use it or STOCKFLOW_KAFKA_PORT to move"
            )
        self.fetch()
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "server.properties"
        config.write_text(self.config_text())
        if not (self.data_dir / "meta.properties").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            cluster_id = _kafka_cluster_id()
            # "--cluster-id=" form: a base64 id may start with "-", which the tool's parser would
            # take for an option (about one start in 64 failed that way).
            fmt = self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(config))
            result = subprocess.run(fmt, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"formatting Kafka storage failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        pid = procs.start(self._java("kafka.Kafka", str(config)), self.log_file, self.pid_file)
        if not procs.wait_for_port("127.0.0.1", self.settings.kafka_port, timeout_s, pid):
            tail = self.log_file.read_text(errors="replace")[-2000:]
            procs.stop(self.pid_file)
            raise RuntimeError(f"Kafka did not start within {timeout_s:.0f}s:\n{tail}")
        wait_for_metadata(self.settings.bootstrap, timeout_s)
        version, where = self.settings.kafka_version, self.settings.bootstrap
        return f"Kafka {version} (KRaft) started, pid {pid}, on {where}"

    def down(self) -> bool:
        return procs.stop(self.pid_file, timeout_s=30)


def _kafka_cluster_id() -> str:
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def broker_metadata(bootstrap: str, timeout_s: float = 5.0) -> dict[str, object]:
    """Ask the broker for cluster metadata (raises if it does not answer)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout_s * 1000), "log_level": 0})
    md = admin.list_topics(timeout=timeout_s)
    return {
        "cluster_id": md.cluster_id,
        "brokers": [f"{b.host}:{b.port}" for b in md.brokers.values()],
        "topics": len([t for t in md.topics if not t.startswith("__")]),
    }


def wait_for_metadata(bootstrap: str, timeout_s: float) -> dict[str, object]:
    import time

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            return broker_metadata(bootstrap, timeout_s=5)
        except Exception as exc:  # noqa: BLE001 - the broker is still starting, whatever it answers; ask until the deadline
            last = exc
            time.sleep(0.5)
    raise RuntimeError(f"broker at {bootstrap} did not answer metadata requests: {last}")
