"""A single-node Apache Kafka broker in KRaft mode on 127.0.0.1, without Docker.

Maven resolves the broker jars from ``streams/broker/pom.xml`` into
``<cache_dir>/kafka/<version>/libs`` (shared by every stockflow home on the machine);
the storage is formatted once with a generated cluster id; ``kafka.Kafka`` runs detached with its
pid in ``<home>/kafka/broker.pid``. When ``STOCKFLOW_KAFKA_BOOTSTRAP`` names a broker, nothing here
is used.

The client listener speaks ``STOCKFLOW_KAFKA_SECURITY_PROTOCOL``: with ``SASL_*`` the settings' user is
the broker's only user (a SCRAM user is written into the storage when it is formatted, listed in
``<home>/kafka/scram-users``); with TLS the broker's certificate comes from a CA made once in
``<home>/kafka/tls`` (``streams.devstack.devtls``), whose ``ca.pem`` clients trust. The broker talks to
itself over that listener too (transaction markers), as that user.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from streams.devstack import procs
from streams.errors import StockflowError
from streams.kafkaconf import AuthWatch, KafkaAuthError, confluent_config, describe
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

    @property
    def tls_dir(self) -> Path:
        """Where the local CA and the broker's certificate are made (``ca.pem``: what clients trust)."""
        return self.root / "tls"

    @property
    def scram_users_file(self) -> Path:
        return self.root / "scram-users"

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
        # The listener is named after its protocol: a PLAINTEXT broker's file stays what it always was.
        name = s.kafka_security_protocol
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{s.kafka_controller_port}",
                f"listeners={name}://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
                f"advertised.listeners={name}://127.0.0.1:{s.kafka_port}",
                "controller.listener.names=CONTROLLER",
                f"listener.security.protocol.map={name}:{name},CONTROLLER:PLAINTEXT",
                *self._security_lines(),
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
                # One broker has no other replica to hand its partitions to: a controlled shutdown leaves them
                # without a leader while its transaction coordinator still commits. A commit acknowledged then
                # was aborted on restart where the producer's next transaction also wrote, and kept elsewhere
                # (README, Guarantees; tests/integration/test_broker_outage.py). Stopped without it, the
                # coordinator finishes such a transaction when it starts again.
                "controlled.shutdown.enable=false",
                "",
            ]
        )

    def _security_lines(self) -> list[str]:
        """server.properties lines for a client listener that is not PLAINTEXT."""
        s = self.settings
        name = s.kafka_security_protocol
        if name == "PLAINTEXT":
            return []
        lines = [f"inter.broker.listener.name={name}"]
        prefix = f"listener.name.{name.lower()}"
        if name.startswith("SASL_"):
            mechanism, user, password = s.kafka_sasl_mechanism, s.kafka_sasl_username, s.kafka_sasl_password
            secret = _jaas_value(password.get_secret_value())
            if mechanism == "PLAIN":
                login = (f'org.apache.kafka.common.security.plain.PlainLoginModule required username="{user}" '
                         f'password="{secret}" user_{user}="{secret}";')  # fmt: skip
            else:
                login = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{user}" '
                         f'password="{secret}";')  # fmt: skip
            lines += [
                f"sasl.enabled.mechanisms={mechanism}",
                f"sasl.mechanism.inter.broker.protocol={mechanism}",
                f"{prefix}.{mechanism.lower()}.sasl.jaas.config={login}",
            ]
        if name.endswith("SSL"):
            from streams.devstack.devtls import DevTls

            tls = DevTls(self.tls_dir)
            lines += [
                "ssl.keystore.type=PEM",
                f"ssl.keystore.location={tls.broker_pem}",
                "ssl.truststore.type=PEM",
                f"ssl.truststore.location={tls.ca_file}",
                # Clients may bring a certificate of the local CA (mutual TLS) but need not.
                "ssl.client.auth=requested",
            ]
        return lines

    def _scram_users(self) -> list[str]:
        """``--add-scram`` arguments of the storage format: the settings' user, when SCRAM is configured."""
        s = self.settings
        if not s.kafka_security_protocol.startswith("SASL_") or not s.kafka_sasl_mechanism.startswith("SCRAM"):
            return []
        secret = _jaas_value(s.kafka_sasl_password.get_secret_value())
        return [f'--add-scram={s.kafka_sasl_mechanism}=[name={s.kafka_sasl_username},password="{secret}"]']

    def _check_scram_user(self) -> None:
        """A storage formatted without the configured SCRAM user would refuse it with a baffling error."""
        wanted = self._scram_users()
        if not wanted:
            return
        s = self.settings
        entry = f"{s.kafka_sasl_mechanism}:{s.kafka_sasl_username}"
        known = self.scram_users_file.read_text().split() if self.scram_users_file.exists() else []
        if entry not in known:
            raise RuntimeError(
                f"the local broker's storage ({self.data_dir}) was formatted without the {s.kafka_sasl_mechanism} "
                f"user {s.kafka_sasl_username!r}; stop it (stockflow dev down) and remove {self.data_dir} (its topics "
                "are lost) to start it with that user, or use another STOCKFLOW_HOME"
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
        if self.settings.kafka_security_protocol.endswith("SSL"):
            from streams.devstack.devtls import ensure_dev_tls

            ensure_dev_tls(self.tls_dir)
        config = self.root / "server.properties"
        # It may hold the SASL password (the broker's own login): readable by this user only.
        config.touch(mode=0o600)
        config.chmod(0o600)
        config.write_text(self.config_text())
        if not (self.data_dir / "meta.properties").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            cluster_id = _kafka_cluster_id()
            # "--cluster-id=" form: a base64 id may start with "-", which the tool's parser would
            # take for an option (about one start in 64 failed that way).
            fmt = self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(config),
                             *self._scram_users())  # fmt: skip
            result = subprocess.run(fmt, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"formatting Kafka storage failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
            if self._scram_users():
                s = self.settings
                self.scram_users_file.write_text(f"{s.kafka_sasl_mechanism}:{s.kafka_sasl_username}\n")
        self._check_scram_user()
        pid = procs.start(self._java("kafka.Kafka", str(config)), self.log_file, self.pid_file)
        if not procs.wait_for_port("127.0.0.1", self.settings.kafka_port, timeout_s, pid):
            tail = self.log_file.read_text(errors="replace")[-2000:]
            procs.stop(self.pid_file)
            raise RuntimeError(f"Kafka did not start within {timeout_s:.0f}s:\n{tail}")
        wait_for_metadata(self.settings, timeout_s)
        started = f"Kafka {self.settings.kafka_version} (KRaft) started, pid {pid}, on {describe(self.settings)}"
        if self.settings.kafka_security_protocol.endswith("SSL") and self.settings.kafka_ssl_ca_file is None:
            started += f"; clients trust its CA with STOCKFLOW_KAFKA_SSL_CA_FILE={self.tls_dir / 'ca.pem'}"
        return started

    def down(self) -> bool:
        return procs.stop(self.pid_file, timeout_s=30)


def _kafka_cluster_id() -> str:
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def broker_metadata(kafka: Settings | str, timeout_s: float = 5.0) -> dict[str, object]:
    """Ask the broker (``kafka``: settings, or a PLAINTEXT ``host:port``) for cluster metadata; raises if it
    does not answer, ``KafkaAuthError`` if it refuses the credentials."""
    from confluent_kafka.admin import AdminClient

    watch = AuthWatch(kafka)
    admin = AdminClient(confluent_config(kafka, **{"socket.timeout.ms": int(timeout_s * 1000), "log_level": 0,
                                                   "error_cb": watch}))  # fmt: skip
    md = watch.list_topics(admin, timeout_s)
    return {
        "cluster_id": md.cluster_id,
        "brokers": [f"{b.host}:{b.port}" for b in md.brokers.values()],
        "topics": len([t for t in md.topics if not t.startswith("__")]),
    }


def wait_for_metadata(kafka: Settings | str, timeout_s: float) -> dict[str, object]:
    """``broker_metadata`` once the broker answers, asked until ``timeout_s``; refused credentials end it at once."""
    import time

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            return broker_metadata(kafka, timeout_s=5)
        except KafkaAuthError:
            raise
        except Exception as exc:  # noqa: BLE001 - the broker is still starting, whatever it answers; ask until the deadline
            last = exc
            time.sleep(0.5)
    where = describe(kafka) if isinstance(kafka, Settings) else kafka
    raise RuntimeError(f"broker at {where} did not answer metadata requests: {last}")


def _jaas_value(secret: str) -> str:
    # The value sits in double quotes inside a properties line (and a --add-scram argument); the local
    # broker is for development, so such characters are refused rather than escaped twice over.
    if any(c in secret for c in '"\\\n\r'):
        raise ValueError("the local broker takes no SASL password with a quote, backslash or line break")
    return secret
