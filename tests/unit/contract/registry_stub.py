"""A PROTOCOL STUB of the Schema Registry REST API, for testing stockflow's client wiring only.

It is not a schema registry: it checks no compatibility, normalises nothing, stores nothing beyond
the test. It answers the two requests confluent-kafka's ``SchemaRegistryClient`` makes for stockflow
(``POST /subjects/{subject}/versions`` -> ``{"id": n}``; ``GET /schemas/ids/{id}`` -> ``{"schema":
text}`` or Confluent's 404 ``{"error_code": 40403}``), as Confluent documents them, and records every
request so a test can count round trips. No registry-compatible server installs from the package
registries this project reaches (Karapace is not on PyPI, Confluent's is not on Maven Central,
Apicurio's is published only as the library jar of a Quarkus application), so the wire format itself
is pinned by recorded vectors in ``test_wire_format.py``; this stub only lets those tests go through
the real client. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit


@dataclass
class StubState:
    schemas: dict[int, str] = field(default_factory=dict)  # id -> schema text
    ids: dict[tuple[str, str], int] = field(default_factory=dict)  # (subject, text) -> id
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    refuse_subjects: set[str] = field(default_factory=set)  # answered 409 (incompatible) when registered
    lookups_down: bool = False  # schema lookups by id answered 503, as by a registry restarting
    next_id: int = 100

    def add(self, subject: str, text: str) -> int:
        """Register ``text`` under ``subject`` as a producer elsewhere would have; its id."""
        known = next((i for i, t in self.schemas.items() if t == text), None)
        schema_id = known if known is not None else self.next_id
        if known is None:
            self.next_id += 1
            self.schemas[schema_id] = text
        self.ids[(subject, text)] = schema_id
        return schema_id

    def subjects(self) -> set[str]:
        return {subject for subject, _ in self.ids}


class _Handler(BaseHTTPRequestHandler):
    state: StubState  # set on the per-server subclass

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the tests count requests instead
        return

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        self.state.requests.append(("POST", path))
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
            subject = unquote(parts[1])
            if subject in self.state.refuse_subjects:
                self._answer(409, {"error_code": 409, "message": "Schema being registered is incompatible"})
                return
            self._answer(200, {"id": self.state.add(subject, body["schema"])})
            return
        self._answer(404, {"error_code": 404, "message": "no such endpoint in the stub"})

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        self.state.requests.append(("GET", path))
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[:2] == ["schemas", "ids"] and parts[2].isdigit():
            if self.state.lookups_down:
                self._answer(503, {"error_code": 50301, "message": "Service Unavailable"})
                return
            text = self.state.schemas.get(int(parts[2]))
            if text is None:
                self._answer(404, {"error_code": 40403, "message": "Schema not found"})
                return
            self._answer(200, {"schema": text})
            return
        self._answer(404, {"error_code": 404, "message": "no such endpoint in the stub"})


@contextmanager
def registry_stub() -> Iterator[tuple[str, StubState]]:
    """A running stub on a free 127.0.0.1 port: (its URL, its state)."""
    state = StubState()
    handler = type("StubHandler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="registry-stub", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
