"""Sends alerts to the ops chat: a WeCom group robot webhook, markdown messages.

Reads: ``alerts`` (keyed by subject, so every alert about one order or SKU is on one partition).
Writes: HTTP POSTs to ``STOCKFLOW_WEBHOOK_URL`` for the kinds in ``STOCKFLOW_NOTIFY_KINDS``.
Owns: table ``notified_by_alert`` (alert id -> when it was sent), so a replayed or duplicated
alert is not sent twice: one red message per order, one clearing message when it moves on.

A webhook that is busy or away (5xx, 429, rate limit, timeout) is retried with backoff, up to
``ATTEMPTS`` tries; one that refuses (other 4xx, a bad URL) is not. Either way the alert is then
recorded as failed (and logged), so one broken endpoint cannot stop the stream.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

import aiohttp
import faust

from streams.contract.codec import DecodeError
from streams.contract.topics import ALERTS
from streams.engine import tables
from streams.engine.retry import Backoff, Retry
from streams.engine.runtime import Runtime

log = logging.getLogger(__name__)
ATTEMPTS = 5
# WeCom's errcode for "too many messages" (a group robot takes 20 a minute): it passes if we wait.
WECOM_RATE_LIMITED = 45009
COLOURS = {"RED": "warning", "WARNING": "warning", "INFO": "info"}


def wecom_markdown(alert: dict[str, Any]) -> dict[str, Any]:
    """The WeCom group-robot body for one alert."""
    title = alert["kind"].replace("_", " ")
    if alert["cleared"]:
        head = f'<font color="info">**cleared: {title}**</font>'
    else:
        head = f'<font color="{COLOURS.get(alert["severity"], "comment")}">**{alert["severity"]}: {title}**</font>'
    lines = [head, alert["message"], f'> subject: <font color="comment">{alert["subject"]}</font>']
    lines += [f'> {k}: <font color="comment">{v}</font>' for k, v in sorted(alert["details"].items())]
    return {"msgtype": "markdown", "markdown": {"content": "\n".join(lines)}}


class WebhookRefused(Exception):
    """The webhook answered, and not with success."""

    def __init__(self, status: int, reply: Any) -> None:
        super().__init__(f"HTTP {status}: {reply}")
        self.status, self.reply = status, reply

    @property
    def retriable(self) -> bool:
        errcode = self.reply.get("errcode") if isinstance(self.reply, dict) else None
        return (self.status >= HTTPStatus.INTERNAL_SERVER_ERROR or self.status == HTTPStatus.TOO_MANY_REQUESTS
                or errcode == WECOM_RATE_LIMITED)  # fmt: skip


def webhook_retriable(exc: BaseException) -> bool:
    """Busy or away (5xx, 429, WeCom's rate limit, a timeout, a dropped connection, a garbled reply):
    retriable. Refused (any other 4xx or errcode, a malformed URL): fatal, the next try gets the same."""
    if isinstance(exc, WebhookRefused):
        return exc.retriable
    if isinstance(exc, aiohttp.InvalidURL):
        return False
    return isinstance(exc, (TimeoutError, aiohttp.ClientError, json.JSONDecodeError))


async def _post_once(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> None:
    async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        reply = await resp.json(content_type=None) if resp.status == HTTPStatus.OK else (await resp.text())[:500]
        # WeCom answers 200 with {"errcode": 0} on success and a non-zero errcode otherwise.
        if resp.status != HTTPStatus.OK or (isinstance(reply, dict) and reply.get("errcode", 0) != 0):
            raise WebhookRefused(resp.status, reply)


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    """'' when the webhook took it, else the last error."""
    retry = Retry("WeCom webhook", webhook_retriable, attempts=ATTEMPTS, backoff=Backoff(first_s=0.5, max_s=10.0),
                  log=log)  # fmt: skip
    try:
        await retry.acall(lambda: _post_once(session, url, body))
    except WebhookRefused as exc:
        return str(exc)
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        return repr(exc)
    return ""


def register(app: faust.App, rt: Runtime) -> None:
    settings = rt.settings
    if not settings.webhook_url:
        return
    notified = app.Table("notified_by_alert", partitions=settings.partitions, key_type=bytes, value_type=bytes)
    source = tables.raw_topic(app, settings, ALERTS)
    kinds = set(settings.notify_kinds)

    @app.agent(source, name="notify_ops_chat")
    async def notify_ops_chat(stream: Any) -> None:
        async with aiohttp.ClientSession() as session:
            async for event in stream.events():
                try:
                    _, alert = rt.codec.decode(event.message.value)
                except DecodeError:
                    continue  # the sink dead-letters unreadable bytes
                if alert["kind"] not in kinds:
                    continue
                key = alert["event_id"].encode()
                if tables.read(notified, event, key):
                    continue
                error = await post(session, settings.webhook_url, wecom_markdown(alert))
                if error:
                    log.error("webhook did not take alert %s: %s", alert["event_id"], error)
                sent = {"at_ms": rt.clock.now_ms(), "error": error}
                tables.write(notified, event, key, sent)
