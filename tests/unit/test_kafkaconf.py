"""The Kafka client configuration every client is built from: each protocol and mechanism gives the keys
its library expects, bad combinations are refused at start, and the password is never shown."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import faust
import pytest
from confluent_kafka import KafkaError
from pydantic import ValidationError

from streams.devstack.devtls import ensure_dev_tls
from streams.devstack.localkafka import LocalKafka
from streams.kafkaconf import (
    AuthWatch,
    KafkaAuthError,
    aiokafka_kwargs,
    confluent_config,
    describe,
    faust_broker,
    refused_credentials,
    topic_config,
)
from streams.settings import Settings

SECRET = "s3cr3t-pa55"


def sasl(protocol: str = "SASL_PLAINTEXT", mechanism: str = "SCRAM-SHA-512", **more: object) -> Settings:
    return Settings(kafka_bootstrap="k1:9093,k2:9093", kafka_security_protocol=protocol, kafka_sasl_mechanism=mechanism,
                    kafka_sasl_username="alice", kafka_sasl_password=SECRET, **more)  # type: ignore[arg-type]  # fmt: skip


def test_plaintext_is_the_address_alone() -> None:
    settings = Settings(kafka_bootstrap="k1:9092")
    assert confluent_config(settings) == {"bootstrap.servers": "k1:9092", "security.protocol": "PLAINTEXT"}
    assert aiokafka_kwargs(settings) == {"bootstrap_servers": ["k1:9092"], "security_protocol": "PLAINTEXT"}
    assert faust_broker(settings) == {"broker": "stockflow://k1:9092", "broker_credentials": None}
    assert confluent_config("127.0.0.1:1", **{"group.id": "g"}) == {"bootstrap.servers": "127.0.0.1:1", "group.id": "g"}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_gives_each_library_the_user_and_mechanism(mechanism: str) -> None:
    settings = sasl(mechanism=mechanism)
    assert confluent_config(settings, **{"acks": "all"}) == {
        "bootstrap.servers": "k1:9093,k2:9093",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": "alice",
        "sasl.password": SECRET,
        "acks": "all",
    }
    assert aiokafka_kwargs(settings) == {
        "bootstrap_servers": ["k1:9093", "k2:9093"],
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "alice",
        "sasl_plain_password": SECRET,
    }
    broker = faust_broker(settings)
    assert broker["broker"] == "stockflow://k1:9093;stockflow://k2:9093"
    credentials = broker["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.protocol.value, credentials.mechanism.value) == ("SASL_PLAINTEXT", mechanism)
    assert (credentials.username, credentials.password, credentials.ssl_context) == ("alice", SECRET, None)


def test_sasl_ssl_adds_the_ca_and_a_context_that_checks_the_broker(tmp_path: Path) -> None:
    tls = ensure_dev_tls(tmp_path)
    settings = sasl("SASL_SSL", kafka_ssl_ca_file=tls.ca_file)
    config = confluent_config(settings)
    assert config["security.protocol"] == "SASL_SSL"
    assert config["ssl.ca.location"] == str(tls.ca_file)
    assert "ssl.certificate.location" not in config
    kwargs = aiokafka_kwargs(settings)
    assert kwargs["security_protocol"] == "SASL_SSL"
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    credentials = faust_broker(settings)["broker_credentials"]
    # Faust takes SASL_SSL from the context being there.
    assert credentials.protocol.value == "SASL_SSL" and isinstance(credentials.ssl_context, ssl.SSLContext)


def test_ssl_with_a_client_certificate_is_mutual_tls(tmp_path: Path) -> None:
    tls = ensure_dev_tls(tmp_path)
    settings = Settings(kafka_bootstrap="k1:9093", kafka_security_protocol="SSL", kafka_ssl_ca_file=tls.ca_file,
                        kafka_ssl_cert_file=tls.client_cert, kafka_ssl_key_file=tls.client_key)  # fmt: skip
    assert confluent_config(settings) == {
        "bootstrap.servers": "k1:9093",
        "security.protocol": "SSL",
        "ssl.ca.location": str(tls.ca_file),
        "ssl.certificate.location": str(tls.client_cert),
        "ssl.key.location": str(tls.client_key),
    }
    kwargs = aiokafka_kwargs(settings)
    assert kwargs["security_protocol"] == "SSL" and "sasl_mechanism" not in kwargs
    credentials = faust_broker(settings)["broker_credentials"]
    assert isinstance(credentials, faust.SSLCredentials) and credentials.protocol.value == "SSL"


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "needs STOCKFLOW_KAFKA_SASL_USERNAME"),
        ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "alice"}, "SASL_PASSWORD"),
        ({"kafka_ssl_ca_file": "/ca.pem"}, "STOCKFLOW_KAFKA_SSL_CA_FILE set, but"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cert_file": "/c.pem"}, "go together"),
        ({"kafka_replication_factor": 2, "kafka_min_insync_replicas": 3}, "no write would ever succeed"),
    ],
)
def test_settings_that_cannot_work_are_refused_at_start(fields: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        Settings(**fields)  # type: ignore[arg-type]


def test_created_topics_carry_min_insync_replicas() -> None:
    settings = Settings(kafka_replication_factor=3, kafka_min_insync_replicas=2)
    assert topic_config(settings) == {"min.insync.replicas": "2"}
    assert topic_config(Settings()) == {"min.insync.replicas": "1"}


def test_the_password_is_never_shown(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = sasl("SASL_PLAINTEXT", kafka_ssl_key_password="key-pa55")
    shown = [repr(settings), str(settings), describe(settings), repr(faust_broker(settings)["broker_credentials"]),
             settings.model_dump_json()]  # fmt: skip
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("stockflow.test").info("settings: %s", settings)
    shown.append(caplog.text)
    for text in shown:
        assert SECRET not in text and "key-pa55" not in text
    assert describe(settings) == "k1:9093,k2:9093 (SASL_PLAINTEXT, SCRAM-SHA-512 as alice)"
    # A child process gets the secret itself, not its mask.
    env = settings.as_env()
    assert env["STOCKFLOW_KAFKA_SASL_PASSWORD"] == SECRET
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().kafka_sasl_password.get_secret_value() == SECRET


def test_a_refusal_is_told_from_an_absent_broker() -> None:
    watch = AuthWatch(sasl())
    watch(KafkaError(KafkaError._TRANSPORT, "sasl_plaintext://k1:9093/bootstrap: Connect failed: Connection refused"))
    watch.check()  # a broker away is not a refusal
    assert refused_credentials(KafkaError(KafkaError._AUTHENTICATION, "bad"))  # noqa: SLF001
    watch(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: invalid credentials"))  # noqa: SLF001
    with pytest.raises(KafkaAuthError, match=r"k1:9093,k2:9093 \(SASL_PLAINTEXT.*invalid credentials"):
        watch.check()


@pytest.mark.parametrize(
    ("protocol", "mechanism"), [("SASL_PLAINTEXT", "SCRAM-SHA-512"), ("SASL_SSL", "PLAIN"), ("SSL", "")]
)
def test_the_local_broker_listens_with_the_configured_protocol(tmp_path: Path, protocol: str, mechanism: str) -> None:
    # Ports given, not defaulted: scripts/test.sh moves the defaults with STOCKFLOW_KAFKA_*_PORT.
    fields: dict[str, object] = {"home": tmp_path, "kafka_port": 29092, "kafka_controller_port": 19093,
                                 "kafka_security_protocol": protocol}  # fmt: skip
    if mechanism:
        fields |= {"kafka_sasl_mechanism": mechanism, "kafka_sasl_username": "alice", "kafka_sasl_password": SECRET}
    kafka = LocalKafka(Settings(**fields))  # type: ignore[arg-type]
    lines = set(kafka.config_text().splitlines())
    assert f"listeners={protocol}://127.0.0.1:29092,CONTROLLER://127.0.0.1:19093" in lines
    assert f"listener.security.protocol.map={protocol}:{protocol},CONTROLLER:PLAINTEXT" in lines
    assert f"inter.broker.listener.name={protocol}" in lines
    assert ("ssl.keystore.type=PEM" in lines) == protocol.endswith("SSL")
    if mechanism:
        assert f"sasl.enabled.mechanisms={mechanism}" in lines
        jaas = next(line for line in lines if line.startswith(f"listener.name.{protocol.lower()}.{mechanism.lower()}."))
        assert 'username="alice"' in jaas
    assert kafka._scram_users() == (  # noqa: SLF001 - what the storage format is given
        [f'--add-scram=SCRAM-SHA-512=[name=alice,password="{SECRET}"]'] if mechanism.startswith("SCRAM") else []
    )


def test_a_plaintext_local_broker_keeps_its_old_configuration(tmp_path: Path) -> None:
    text = LocalKafka(Settings(home=tmp_path, kafka_port=19092, kafka_controller_port=19093)).config_text()
    assert "listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093" in text
    assert "sasl" not in text and "ssl" not in text and "inter.broker" not in text
