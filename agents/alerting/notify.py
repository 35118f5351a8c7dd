"""Sends alerts to the ops chat: a WeCom group robot webhook, markdown messages.

Reads: ``alerts`` (keyed by subject, so every alert about one order or SKU is on one partition).
Writes: HTTP POSTs to ``STOCKFLOW_WEBHOOK_URL`` for the kinds in ``STOCKFLOW_NOTIFY_KINDS``.
Owns: table ``notified_by_alert`` (alert id -> when it was sent), so a replayed or duplicated
alert is not sent twice: one red message per order, one clearing message when it moves on.

A webhook that fails is retried with backoff; after the last attempt the alert is recorded as
failed (and logged) so one broken endpoint cannot stop the stream.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import faust

from streams.contract.codec import DecodeError
from streams.contract.topics import ALERTS
from streams.engine import keyed, tables
from streams.engine.runtime import Runtime

log = logging.getLogger(__name__)
ATTEMPTS = 5
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


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    """'' when the webhook took it, else the last error."""
    delay, error = 0.5, ""
    for attempt in range(ATTEMPTS):
        try:
            async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                reply = await resp.json(content_type=None)
                # WeCom answers 200 with {"errcode": 0} on success and a non-zero errcode otherwise.
                if resp.status == 200 and (not isinstance(reply, dict) or reply.get("errcode", 0) == 0):
                    return ""
                error = f"HTTP {resp.status}: {reply}"
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            error = repr(exc)
        if attempt < ATTEMPTS - 1:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
    return error


def register(app: faust.App, rt: Runtime) -> None:
    settings = rt.settings
    if not settings.webhook_url:
        return
    notified = app.Table("notified_by_alert", partitions=settings.partitions, key_type=bytes, value_type=bytes)
    source = keyed.raw_topic(app, settings, ALERTS)
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
                    log.error("webhook refused alert %s after %d attempts: %s", alert["event_id"], ATTEMPTS, error)
                sent = {"at_ms": rt.clock.now_ms(), "error": error}
                tables.write(notified, event, key, sent)
