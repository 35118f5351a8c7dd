"""Posting a signed marketplace push through the intake's own route handler, without a socket or a broker:
the request is built in memory, and the broker acknowledges every write at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import orjson
from aiohttp import streams
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from agents.channels.platforms import CHANNELS, Credentials, SignedRequest
from agents.intake.secrets import write_secrets
from agents.intake.service import Intake
from streams.contract.topics import DEADLETTERS
from streams.settings import Settings

CREDS = {channel: Credentials(f"key-{channel}", f"secret-{channel}") for channel in CHANNELS}


class Broker:
    """Acknowledges every event as soon as it is produced, and keeps what was written."""

    def __init__(self) -> None:
        self.written: list[tuple[str, str, str, dict[str, Any]]] = []  # to the business topics
        self.dead_letters: list[dict[str, Any]] = []  # what intake refused from an authenticated caller

    def poll(self, _: float) -> int:
        return 0

    def flush(self, *_: Any) -> int:
        return 0

    def send_with_callback(self, topic: str, key: str, event_type: str, record: dict[str, Any], callback: Any, *,
                           wait: bool = True) -> None:  # fmt: skip
        if topic == DEADLETTERS.name:
            self.dead_letters.append(record)
            offset = len(self.dead_letters) - 1
        else:
            self.written.append((topic, key, event_type, record))
            offset = len(self.written) - 1
        callback(None, SimpleNamespace(partition=lambda: 0, offset=lambda: offset))


def intake(tmp_path: Path, **settings: Any) -> tuple[Intake, Broker]:
    path = write_secrets(tmp_path / "secrets.toml", CREDS, "wms-token", "service-token")
    broker = Broker()
    return Intake(Settings(intake_secrets_file=path, **settings), producer=broker), broker  # type: ignore[arg-type]


def now_ms() -> int:
    return int(time.time() * 1000)


def post(service: Intake, route: str, signed: SignedRequest) -> tuple[int, dict[str, Any]]:
    """The intake's answer to ``signed`` posted to ``route`` (``/v1/channels/<channel>/<kind>``)."""
    handler = next(r.handler for r in service.routes() if r.method == "POST" and r.path == route)
    url = signed.url(route)

    async def call() -> tuple[int, dict[str, Any]]:
        payload = streams.StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())
        payload.feed_data(signed.body)
        payload.feed_eof()
        request = make_mocked_request("POST", url, headers=CIMultiDict(signed.headers), payload=payload)
        response = await handler(request)
        return response.status, orjson.loads(response.body)  # type: ignore[attr-defined]

    return asyncio.run(call())
