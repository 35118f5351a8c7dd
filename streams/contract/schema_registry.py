"""stockflow's use of a Confluent-compatible Schema Registry: register a schema, look one up by id.

Reads and writes nothing but the registry's REST API (``POST /subjects/{subject}/versions``,
``GET /schemas/ids/{id}``), through confluent-kafka's ``SchemaRegistryClient``, which retries
network errors and 5xx answers with backoff and caches every answer. The codec asks here only
once per event type (registering) and once per unknown schema id (reading); the messages in
between never wait on the registry.

Subjects follow RecordNameStrategy: the record's full name (``stockflow.OrderPlaced``), not
TopicNameStrategy's ``<topic>-value``, because several event types share one topic
(``order.events`` carries seven) and each evolves on its own.
"""

from __future__ import annotations

from typing import Any

from streams.errors import StockflowError

# Confluent's error code for "schema not found" (HTTP 404): the id is unknown, not the registry away.
SCHEMA_NOT_FOUND = 40403
SUBJECT_NOT_FOUND = 40401
HTTP_NOT_FOUND = 404
# A 4xx answer is the request's fault (incompatible schema, bad credentials): asking again changes nothing.
CLIENT_ERRORS = range(400, 500)


class SchemaRegistryUnavailable(StockflowError, RuntimeError):
    """The registry did not answer (after the client's retries) or answered with a server error: try again later."""


class SchemaRegistryRefused(StockflowError, RuntimeError):
    """The registry refused a request for good: a schema incompatible with the subject's history, bad credentials."""


class SchemaRegistry:
    """A Schema Registry at ``url``; ``client`` replaces confluent-kafka's (for tests that count calls)."""

    def __init__(self, url: str, client: Any = None, timeout_s: float = 10.0, max_retries: int = 5) -> None:
        self.url = url
        if client is None:
            # Imported here: its HTTP and OAuth stack costs import time no registry-less process should pay.
            from confluent_kafka.schema_registry import SchemaRegistryClient

            client = SchemaRegistryClient(
                {
                    "url": url,
                    "timeout": timeout_s,
                    "max.retries": max_retries,
                    "retries.wait.ms": 200,
                    "retries.max.wait.ms": 5000,
                }
            )
        self._client = client

    def register(self, subject: str, schema_text: str) -> int:
        """The id of ``schema_text`` under ``subject``, registering it if the subject lacks it (cached)."""
        from confluent_kafka.schema_registry import Schema

        try:
            return int(self._client.register_schema(subject, Schema(schema_text, "AVRO")))
        except _client_errors() as exc:
            raise self._error(f"registering {subject}", exc) from exc

    def schema_text(self, schema_id: int) -> str | None:
        """The schema registered with ``schema_id`` (cached), or None when the registry knows no such id."""
        try:
            schema = self._client.get_schema(schema_id)
        except _client_errors() as exc:
            if _not_found(exc):
                return None
            raise self._error(f"looking up schema id {schema_id}", exc) from exc
        return str(schema.schema_str)

    def _error(self, what: str, exc: Exception) -> StockflowError:
        status = getattr(exc, "http_status_code", None)
        if status in CLIENT_ERRORS:
            return SchemaRegistryRefused(f"schema registry {self.url} refused {what}: {exc}")
        return SchemaRegistryUnavailable(f"schema registry {self.url} failed {what}: {exc!r}")


def _client_errors() -> tuple[type[Exception], ...]:
    """What the client raises for an answer it did not like, and for no answer at all."""
    from confluent_kafka.schema_registry.common._httpx_compat import httpx  # httpx2 where installed, else httpx
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    return (SchemaRegistryError, httpx.TransportError)


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "http_status_code", None) == HTTP_NOT_FOUND and getattr(exc, "error_code", None) in (
        SCHEMA_NOT_FOUND,
        SUBJECT_NOT_FOUND,
    )
