"""How every Kafka client stockflow makes reaches the brokers: address, TLS and SASL, in one place.

Reads: the ``STOCKFLOW_KAFKA_*`` settings (protocol, SASL user and password, CA, client cert and key,
replication factor, ``min.insync.replicas``). Writes and owns nothing. One builder per client library:

- ``confluent_config``: the confluent-kafka dict (producers, consumers, admin clients);
- ``aiokafka_kwargs``: aiokafka's keyword arguments, TLS as an ``ssl.SSLContext`` (the views that follow
  topics, the clock control);
- ``faust_broker``: the Faust app's ``broker`` and ``broker_credentials`` (Faust's own aiokafka clients).

Plus ``topic_config``, what every topic stockflow creates carries, and ``refused_credentials``, which tells
a broker refusing the user from one that is away. The password leaves here only inside a client's
configuration; ``describe`` is what messages show.
"""

from __future__ import annotations

import ssl
from typing import Any

from streams.errors import StockflowError
from streams.settings import Settings


class KafkaAuthError(StockflowError, RuntimeError):
    """The broker refused the configured SASL credentials or the TLS handshake: retrying will not help."""


def describe(settings: Settings) -> str:
    """The brokers and how they are reached, fit for messages: ``127.0.0.1:9092 (SASL_SSL, SCRAM-SHA-512 as
    alice)``; never the password."""
    protocol = settings.kafka_security_protocol
    if protocol.startswith("SASL_"):
        how = f"{protocol}, {settings.kafka_sasl_mechanism} as {settings.kafka_sasl_username}"
    else:
        how = protocol
    return f"{settings.bootstrap} ({how})"


def confluent_config(kafka: Settings | str, **extra: Any) -> dict[str, Any]:
    """The confluent-kafka configuration reaching the brokers of ``kafka``, with ``extra`` keys added
    (``group.id``, ``acks``, ...). A bare ``host:port`` string is a PLAINTEXT broker: for the test fixtures
    and tools that only know an address."""
    if isinstance(kafka, str):
        return {"bootstrap.servers": kafka, **extra}
    s = kafka
    config: dict[str, Any] = {"bootstrap.servers": s.bootstrap, "security.protocol": s.kafka_security_protocol}
    if s.kafka_security_protocol.startswith("SASL_"):
        config["sasl.mechanism"] = s.kafka_sasl_mechanism
        config["sasl.username"] = s.kafka_sasl_username
        config["sasl.password"] = s.kafka_sasl_password.get_secret_value()
    if s.kafka_security_protocol.endswith("SSL"):
        if s.kafka_ssl_ca_file is not None:
            config["ssl.ca.location"] = str(s.kafka_ssl_ca_file)
        if s.kafka_ssl_cert_file is not None and s.kafka_ssl_key_file is not None:
            config["ssl.certificate.location"] = str(s.kafka_ssl_cert_file)
            config["ssl.key.location"] = str(s.kafka_ssl_key_file)
            if key_password := s.kafka_ssl_key_password.get_secret_value():
                config["ssl.key.password"] = key_password
    config.update(extra)
    return config


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context Python clients use (None: the protocol has no TLS). Checks the broker's certificate
    and name, as librdkafka does by default, so both client libraries accept the same brokers."""
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    from aiokafka.helpers import create_ssl_context

    key_password = settings.kafka_ssl_key_password.get_secret_value() or None
    context: ssl.SSLContext = create_ssl_context(
        cafile=settings.kafka_ssl_ca_file,
        certfile=settings.kafka_ssl_cert_file,
        keyfile=settings.kafka_ssl_key_file,
        password=key_password,
    )
    return context


def aiokafka_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for an aiokafka consumer, producer or admin client reaching the brokers."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap.split(","),
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol.startswith("SASL_"):
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        kwargs["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    if (context := ssl_context(settings)) is not None:
        kwargs["ssl_context"] = context
    return kwargs


def faust_broker(settings: Settings) -> dict[str, Any]:
    """``broker`` and ``broker_credentials`` for ``faust.App``: the same brokers, TLS and SASL user."""
    import faust

    from streams.engine import shell_transport  # registers its scheme with Faust

    broker = ";".join(f"{shell_transport.SCHEME}://{host.strip()}" for host in settings.bootstrap.split(","))
    protocol = settings.kafka_security_protocol
    credentials: Any = None
    if protocol.startswith("SASL_"):
        # Faust reads SASL_SSL from the context's presence, so a SASL_SSL context is never None here.
        credentials = faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            ssl_context=ssl_context(settings),
            mechanism=settings.kafka_sasl_mechanism,
        )
    elif protocol == "SSL":
        credentials = faust.SSLCredentials(ssl_context(settings))
    return {"broker": broker, "broker_credentials": credentials}


def topic_config(settings: Settings) -> dict[str, str]:
    """Topic-level configuration every topic stockflow creates carries (beside its own, e.g. compaction)."""
    return {"min.insync.replicas": str(settings.kafka_min_insync_replicas)}


def refused_credentials(error: object) -> bool:
    """Whether a client error (a confluent ``KafkaError``, an exception, or its text) is the broker refusing
    the credentials or the TLS handshake rather than being away."""
    from confluent_kafka import KafkaError

    # librdkafka's local error codes are spelled with a leading underscore; they are public API.
    if isinstance(error, KafkaError):
        return bool(error.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL))  # noqa: SLF001
    # Not merely "sasl": a SASL listener's address (sasl_ssl://...) starts every error about it.
    text = str(error).lower()
    return any(marker in text for marker in ("authentication failed", "sasl authentication", "ssl handshake",
                                             "certificate verify"))  # fmt: skip


class AuthWatch:
    """An ``error_cb`` for confluent-kafka clients that remembers a refusal, so a call that then times out
    can say why (librdkafka reports refused credentials to the callback, and the call only as a timeout)."""

    def __init__(self, settings: Settings | str) -> None:
        self.where = describe(settings) if isinstance(settings, Settings) else settings
        self.refusal: str | None = None

    def __call__(self, error: Any) -> None:
        if refused_credentials(error):
            self.refusal = error.str() if hasattr(error, "str") else str(error)

    def check(self) -> None:
        """Raise ``KafkaAuthError`` if the broker refused this client."""
        if self.refusal is not None:
            raise KafkaAuthError(f"the broker at {self.where} refused the connection: {self.refusal}")

    def list_topics(self, client: Any, timeout_s: float) -> Any:
        """``client.list_topics`` (an admin client made with this watch as its ``error_cb``); refused
        credentials raise ``KafkaAuthError`` instead of a bare timeout."""
        from confluent_kafka import KafkaException

        try:
            return client.list_topics(timeout=timeout_s)
        except KafkaException:
            client.poll(0)  # serves the error callback, which heard why
            self.check()
            raise
