"""Sends alerts to the ops chat: a WeCom group robot webhook, markdown messages, through an incident.

Reads: ``alerts`` (keyed by subject, so every alert about one order or SKU is on one partition).
Writes: HTTP POSTs to ``STOCKFLOW_WEBHOOK_URL`` for the kinds in ``STOCKFLOW_NOTIFY_KINDS``.
Owns: table ``notify_pending`` (alert id -> the alert waiting to be sent, with its partition) and
table ``notified_by_alert`` (alert id -> when it went out, or why it was given up), both backed by
compacted changelog topics; ``/notify/status`` on the worker's web port.

What is guaranteed:

- The robot's limit (``STOCKFLOW_NOTIFY_RATE`` messages per ``STOCKFLOW_NOTIFY_WINDOW_S``, WeCom:
  20 a minute) is kept client-side with a sliding window, one message in flight at a time, so the
  robot is not throttled by this worker. The budget is per worker process: with several workers
  running the notifier, divide the rate among them. A throttled answer (errcode 45009: something
  else is using the robot) is waited out.
- A storm is folded: while more alerts wait than the budget has room for, they go out as digests
  (``agents.alerting.digest``), every message within ``STOCKFLOW_NOTIFY_MAX_BYTES``.
- Nothing is given up while the robot is busy, away or refusing: an alert stays in
  ``notify_pending`` until a message carrying it was taken, and is tried again with backoff (1 s,
  doubling, at most ``STOCKFLOW_NOTIFY_RETRY_MAX_S``). The table is restored from its changelog on a
  restart or rebalance, so a crashed worker's successor, or a worker restarted with a fixed URL,
  sends what was waiting. A refusal (a bad URL or key: 4xx, errcode 93000) is logged as an error
  saying so. Delivery is at least once: a crash between the robot's answer and the table writes
  sends those alerts again.
- Each alert once: an id in ``notified_by_alert`` is not queued again (a replay, a duplicate) for
  ``STOCKFLOW_NOTIFY_REMEMBER_H``; an hourly sweep then deletes the row, so the table holds about
  that many hours of alerts whatever the traffic.
- The queue is bounded (``STOCKFLOW_NOTIFY_QUEUE_MAX``): beyond it the least urgent alerts are
  dropped (``digest.expendability``), logged as an error, recorded as dropped, and the next message
  starts with how many.

The queue is a table of its own rather than the ``alerts`` offsets left uncommitted: an alert may
wait for minutes behind others of its partition, and Faust's out-of-order acks can commit past an
unacked offset; a row is kept until it is explicitly finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus
from typing import Any, cast

import aiohttp
import faust
import orjson
from yarl import URL

from agents.alerting import digest
from agents.alerting.waiting import Queued, Waiting
from streams.contract.codec import DecodeError
from streams.contract.records import Alert
from streams.contract.topics import ALERTS
from streams.engine import tables
from streams.engine.retry import Backoff, Retry
from streams.engine.runtime import Runtime
from streams.kafkaconf import topic_config
from streams.settings import Settings

log = logging.getLogger(__name__)
ATTEMPTS = 5
# WeCom's errcode for "too many messages" (a group robot takes 20 a minute): it passes if we wait.
WECOM_RATE_LIMITED = 45009
CALL_TIMEOUT_S = 10.0
FIRST_RETRY_S = 1.0
# After an idle spell the sender waits this long before planning: a storm arrives as a burst of
# batches, and what arrives together folds together instead of spending the budget one by one.
GATHER_S = 0.3
DROP_LOG_EVERY_S = 60.0
# notified_by_alert is swept this often (at most: a short memory is swept a few times within it),
# a chunk of rows at a time so the worker's loop (its heartbeats among it) never waits long.
SWEEP_EVERY_S = 3600.0
SWEEP_CHUNK = 2000


class WebhookRefused(Exception):
    """The webhook answered, and not with success."""

    def __init__(self, status: int, reply: Any) -> None:
        super().__init__(f"HTTP {status}: {reply}")
        self.status, self.reply = status, reply

    @property
    def errcode(self) -> Any:
        return self.reply.get("errcode") if isinstance(self.reply, dict) else None

    @property
    def throttled(self) -> bool:
        return self.status == HTTPStatus.TOO_MANY_REQUESTS or self.errcode == WECOM_RATE_LIMITED

    @property
    def retriable(self) -> bool:
        return self.status >= HTTPStatus.INTERNAL_SERVER_ERROR or self.throttled


def webhook_retriable(exc: BaseException) -> bool:
    """Busy or away (5xx, 429, WeCom's rate limit, a timeout, a dropped connection, a garbled reply):
    retriable. Refused (any other 4xx or errcode, a malformed URL): fatal, the next try gets the same."""
    if isinstance(exc, WebhookRefused):
        return exc.retriable
    if isinstance(exc, aiohttp.InvalidURL):
        return False
    return isinstance(exc, (TimeoutError, aiohttp.ClientError, json.JSONDecodeError))


async def _post_once(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> None:
    async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)) as resp:
        reply = await resp.json(content_type=None) if resp.status == HTTPStatus.OK else (await resp.text())[:500]
        # WeCom answers 200 with {"errcode": 0} on success and a non-zero errcode otherwise.
        if resp.status != HTTPStatus.OK or (isinstance(reply, dict) and reply.get("errcode", 0) != 0):
            raise WebhookRefused(resp.status, reply)


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    """One message outside the notifier's queue, retried a few times: '' when the webhook took it,
    else the last error. It does not count against the notifier's budget: alerts go through ``alerts``."""
    retry = Retry("WeCom webhook", webhook_retriable, attempts=ATTEMPTS, backoff=Backoff(first_s=0.5, max_s=10.0),
                  log=log)  # fmt: skip
    try:
        await retry.acall(lambda: _post_once(session, url, body))
    except WebhookRefused as exc:
        return str(exc)
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        return repr(exc)
    return ""


class Outcome(StrEnum):
    SENT = "sent"
    THROTTLED = "throttled"  # the robot's rate limit: wait for the window
    BUSY = "busy"  # 5xx, timeout, connection: try again later
    REFUSED = "refused"  # a bad URL or key, another 4xx: the same call fails until someone fixes it


async def deliver(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[Outcome, str]:
    """One attempt at one message: how it went and, unless sent, why."""
    try:
        await _post_once(session, url, body)
    except WebhookRefused as exc:
        if exc.throttled:
            return Outcome.THROTTLED, str(exc)
        return (Outcome.BUSY if exc.retriable else Outcome.REFUSED), str(exc)
    except aiohttp.InvalidURL as exc:
        return Outcome.REFUSED, f"invalid URL: {exc}"
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        return Outcome.BUSY, repr(exc)
    return Outcome.SENT, ""


def redact(url: str) -> str:
    """The webhook URL for logs: its ``key`` is the robot's secret, so only its first characters show."""
    try:
        parsed = URL(url)
    except ValueError:
        return "<unparseable URL>"
    key = parsed.query.get("key")
    if key is None:
        return parsed.with_query(None).human_repr()
    return parsed.with_query({"key": key[:4] + "…"}).human_repr()


@dataclass(frozen=True)
class Policy:
    """How the notifier treats one robot; from settings."""

    rate: int
    window_s: float
    max_bytes: int
    queue_max: int
    retry_max_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            rate=settings.notify_rate,
            window_s=settings.notify_window_s,
            max_bytes=settings.notify_max_bytes,
            queue_max=settings.notify_queue_max,
            retry_max_s=settings.notify_retry_max_s,
        )


# finish(item, error): the alert is done with - sent ("") or given up (why) - and leaves the durable queue.
Finish = Callable[[Queued, str], None]


class Robot:
    """One WeCom group robot (one webhook URL): the alerts waiting for it, its budget, its failures.

    ``run`` is the only sender; ``add``, ``replace`` and ``release`` change the queue between its
    awaits (one event loop), so a plan always sees the queue whole.
    """

    def __init__(self, url: str, policy: Policy, finish: Finish) -> None:
        self.url = url
        self.policy = policy
        self.finish = finish
        self.queue = Waiting()
        self.window = digest.SlidingWindow(policy.rate, policy.window_s)
        self.ready = False  # the durable queue is loaded (false during a rebalance)
        self.failures = 0
        self.retry_at = 0.0
        self.last_error = ""
        self.unreported_drops = 0
        self.counts = {"messages": 0, "digests": 0, "alerts_sent": 0, "throttled": 0, "failed_calls": 0, "dropped": 0}
        self._wake = asyncio.Event()
        self._drop_logged_at = -DROP_LOG_EVERY_S
        self._drops_unlogged = 0
        self._kinds_unlogged: set[str] = set()

    # --- the queue -------------------------------------------------------------------------------

    def add(self, item: Queued) -> None:
        if self._queue(item):
            self._bound()
        self._wake.set()

    def replace(self, items: Iterable[Queued]) -> None:
        """The queue as the durable table holds it, after a restart or a rebalance."""
        self.queue = Waiting()
        for item in sorted(items, key=lambda i: (i.alert["event_time_ms"], i.queued_ms, i.id)):
            self._queue(item)
        self._bound()
        self.ready = True
        self._wake.set()

    def _queue(self, item: Queued) -> bool:
        """Queue ``item`` unless a newer raise of its alert waits already; drop a waiting clearing it
        supersedes. Clearings are sent after raises, so a clearing older than a raise of the same alert
        would otherwise be the last word the chat got while the alert stands. False: not queued."""
        new = item.alert
        for queued in self.queue.of(new):
            old = queued.alert
            if old["cleared"] == new["cleared"]:
                continue
            if old["cleared"] and old["event_time_ms"] <= new["event_time_ms"]:
                self.queue.pop(queued.id)
                self.finish(queued, "superseded: raised again")
            elif new["cleared"] and new["event_time_ms"] < old["event_time_ms"]:
                self.finish(item, "superseded: raised again")
                return False
        self.queue.put(item)
        return True

    def release(self, partitions: set[int]) -> None:
        """Partitions moving away: their alerts are now their new owner's to send. Sending pauses
        until the durable queue is loaded again."""
        self.ready = False
        self.queue.keep(lambda item: item.partition not in partitions)

    def _bound(self) -> None:
        if len(self.queue) <= self.policy.queue_max:
            return
        over = self.queue.over(self.policy.queue_max)
        for item in over:
            self.finish(item, "dropped: queue full")
        dropped = [item.alert for item in over]
        self.unreported_drops += len(dropped)
        self.counts["dropped"] += len(dropped)
        self._drops_unlogged += len(dropped)
        self._kinds_unlogged.update(f"{a['severity']} {a['kind']}" for a in dropped)
        # At the cap every new alert drops one: one line a minute says it without flooding the log.
        now = time.monotonic()
        if now - self._drop_logged_at >= DROP_LOG_EVERY_S:
            log.error(
                "notifier queue for %s is over its cap of %d (STOCKFLOW_NOTIFY_QUEUE_MAX): dropped %d alerts (%s), "
                "the least urgent and oldest; the robot's last error: %s",
                redact(self.url), self.policy.queue_max, self._drops_unlogged, ", ".join(sorted(self._kinds_unlogged)),
                self.last_error or "(none)",
            )  # fmt: skip
            self._drop_logged_at, self._drops_unlogged = now, 0
            self._kinds_unlogged.clear()

    # --- sending ---------------------------------------------------------------------------------

    def status(self, now: float) -> dict[str, Any]:
        return {
            "robot": redact(self.url),
            "ready": self.ready,
            "queued": len(self.queue),
            "free_now": self.window.free(now),
            "rate": f"{self.policy.rate} per {self.policy.window_s:g} s",
            "failures_in_a_row": self.failures,
            "next_try_in_s": round(max(self.retry_at - now, 0.0), 1),
            "last_error": self.last_error,
            **self.counts,
        }

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Send until cancelled: wait for alerts, for the budget and for the backoff, then one message."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._step(session, loop)
            except Exception:  # a bug here must not silence the ops chat for good: logged, backed off
                self.failures += 1
                self.retry_at = loop.time() + digest.retry_delay(self.failures, FIRST_RETRY_S, self.policy.retry_max_s)
                log.exception("notifier for %s failed; %d alerts kept, trying again", redact(self.url), len(self.queue))

    async def _step(self, session: aiohttp.ClientSession, loop: asyncio.AbstractEventLoop) -> None:
        if not (self.ready and self.queue):
            self._wake.clear()
            await self._wake.wait()
            await asyncio.sleep(GATHER_S)
            return
        now = loop.time()
        due = max(self.retry_at, self.window.next_free_at(now))
        if due > now:
            await asyncio.sleep(due - now)
            return
        # One message per plan: the queue may change while it is in flight (new alerts, a rebalance).
        notice = digest.dropped_notice(self.unreported_drops, self.policy.queue_max)
        alerts = [i.alert for i in self.queue.values()]
        messages = digest.plan(alerts, self.window.free(now), self.policy.max_bytes, notice)
        await self.send(session, messages[0], noticed=self.unreported_drops if notice else 0)

    async def send(self, session: aiohttp.ClientSession, message: digest.Message, noticed: int = 0) -> Outcome:
        loop = asyncio.get_running_loop()
        outcome, error = await deliver(session, self.url, message.body)
        self.window.record(loop.time())
        if outcome is Outcome.SENT:
            self.failures, self.retry_at, self.last_error = 0, 0.0, ""
            self.unreported_drops -= noticed
            self.counts["messages"] += 1
            self.counts["digests"] += message.digest
            for alert_id in message.alert_ids:
                # Gone when its partition moved away meanwhile: its new owner sends it again (at least once).
                item = self.queue.pop(alert_id, None)
                if item is not None:
                    self.counts["alerts_sent"] += 1
                    self.finish(item, "")
            return outcome
        self.failures += 1
        self.counts["failed_calls"] += 1
        self.last_error = f"{outcome}: {error}"
        delay = digest.retry_delay(self.failures, FIRST_RETRY_S, self.policy.retry_max_s)
        if outcome is Outcome.THROTTLED:
            self.counts["throttled"] += 1
            delay = max(delay, self.policy.window_s / self.policy.rate)
        self.retry_at = loop.time() + delay
        if outcome is Outcome.REFUSED:
            log.error(
                "WeCom robot %s refused a message (%s): check STOCKFLOW_WEBHOOK_URL and the robot; %d alerts are "
                "kept and tried again in %.0f s (a fixed URL drains them after a worker restart)",
                redact(self.url), error, len(self.queue), delay,
            )  # fmt: skip
        else:
            log.warning(
                "WeCom robot %s did not take a message (%s): %d alerts kept, trying again in %.1f s",
                redact(self.url), f"{outcome}: {error}", len(self.queue), delay,
            )  # fmt: skip
        return outcome


# --- the Faust agent -------------------------------------------------------------------------------


class OpsChat:
    """The notifier on a worker: the tables, the robot, and what the Faust agent does with an alert."""

    def __init__(self, app: faust.App, rt: Runtime) -> None:
        settings = rt.settings
        self.rt = rt
        self.topic = settings.topic(ALERTS.name)
        self.kinds = set(settings.notify_kinds)
        # Faust makes these tables' changelogs: the same durability as every topic stockflow creates.
        changelog = topic_config(settings)
        self.notified = app.Table("notified_by_alert", partitions=settings.partitions, key_type=bytes,
                                  value_type=bytes, extra_topic_configs=changelog)  # fmt: skip
        self.pending = app.Table("notify_pending", partitions=settings.partitions, key_type=bytes, value_type=bytes,
                                 extra_topic_configs=changelog)  # fmt: skip
        self.robot = Robot(settings.webhook_url, Policy.from_settings(settings), self.finish)
        self.remember_ms = int(settings.notify_remember_h * 3_600_000)
        self.sweep_every_s = min(SWEEP_EVERY_S, max(settings.notify_remember_h * 3600 / 4, 1.0))
        self.forgotten = 0

    def finish(self, item: Queued, error: str) -> None:
        key = item.id.encode()
        event = tables.PartitionEvent(self.topic, item.partition)
        tables.write(self.notified, event, key, {"at_ms": self.rt.clock.now_ms(), "error": error})
        tables.delete(self.pending, event, key)

    async def forget_old(self) -> int:
        """Delete the ``notified_by_alert`` rows older than the memory (a tombstone each in the changelog),
        partition by partition, a chunk at a time; a partition that moves away meanwhile is left to its
        new owner's sweep. Returns how many were deleted."""
        cutoff = self.rt.clock.now_ms() - self.remember_ms
        forgotten = 0
        for partition in tables.owned_partitions(self.notified):
            event = tables.PartitionEvent(self.topic, partition)
            after = None
            while rows := tables.owned_rows(self.notified, partition, after, SWEEP_CHUNK):
                after = rows[-1][0]
                for key, raw in rows:
                    if _sent_at_ms(raw) < cutoff:
                        tables.delete(self.notified, event, key)
                        forgotten += 1
                await asyncio.sleep(0)
        self.forgotten += forgotten
        if forgotten:
            log.info("notifier forgot %d alerts sent over %g h ago", forgotten, self.remember_ms / 3_600_000)
        return forgotten

    async def load_pending(self) -> None:
        """Every partition this worker now owns, as restored from the changelog, becomes the robot's queue.
        A row whose alert is in notified_by_alert too outlived a crash between the two writes: it went out."""
        items = []
        for key, raw in list(self.pending.items()):
            try:
                item = Queued.from_row(raw)
            except (ValueError, KeyError, TypeError) as exc:  # orjson's decode error is a ValueError
                log.error("notify_pending row %r unreadable (%s): left in the table, not sent", key, exc)
                continue
            event = tables.PartitionEvent(self.topic, item.partition)
            if tables.read_raw(self.notified, event, key) is not None:
                tables.delete(self.pending, event, key)
            else:
                items.append(item)
        self.robot.replace(items)

    def take(self, event: Any) -> None:
        """One record of ``alerts``: queued, durably, unless it is not for the chat or already seen."""
        try:
            _, record = self.rt.codec.decode(event.message.value)
        except DecodeError:
            return  # the sink dead-letters unreadable bytes
        alert = cast(Alert, record)
        if alert["kind"] not in self.kinds:
            return
        key = alert["event_id"].encode()
        if tables.read_raw(self.notified, event, key) or tables.read_raw(self.pending, event, key):
            return
        item = Queued(alert=alert, partition=event.message.partition, queued_ms=self.rt.clock.now_ms())
        # Durable before the offset moves on: Faust flushes table writes before it commits offsets.
        tables.write_raw(self.pending, event, key, item.row())
        self.robot.add(item)


def _sent_at_ms(raw: bytes) -> float:
    """When a ``notified_by_alert`` row was written; an unreadable row counts as old (it is only a memory)."""
    try:
        return float(orjson.loads(raw)["at_ms"])
    except (ValueError, KeyError, TypeError):
        return float("-inf")


def register(app: faust.App, rt: Runtime) -> None:
    if not rt.settings.webhook_url:
        return
    chat = OpsChat(app, rt)
    chat.pending.on_recover(chat.load_pending)
    source = tables.raw_topic(app, rt.settings, ALERTS)

    async def release_pending(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        revoked: set[Any] = args[0]
        chat.robot.release({tp.partition for tp in revoked if tp.topic == chat.topic})

    # mode's SignalHandlerT (a Union of two mypy_extensions callables) matches no function mypy is given.
    app.on_partitions_revoked.connect(release_pending)  # type: ignore[arg-type]

    @app.page("/notify/status")
    async def notify_status(web: Any, request: Any) -> Any:
        return web.json({**chat.robot.status(asyncio.get_running_loop().time()), "forgotten": chat.forgotten})

    @app.timer(chat.sweep_every_s, name="notify_forget_old")
    async def forget_old() -> None:
        if not app.rebalancing:
            await chat.forget_old()

    @app.agent(source, name="notify_ops_chat")
    async def notify_ops_chat(stream: Any) -> None:
        async with aiohttp.ClientSession() as session:
            sender = asyncio.create_task(chat.robot.run(session), name="notify_ops_chat.sender")
            try:
                async for event in stream.events():
                    chat.take(event)
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
