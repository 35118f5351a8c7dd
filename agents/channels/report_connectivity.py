"""``stockflow report connectivity --week 2026-W47``: the weekly connectivity report, read and delivered.

Reads ClickHouse's ``connector_calls`` through three dashboards (``connector_health``: each endpoint's
totals; ``connector_failed_calls``: failed calls by reason; ``connector_minutes``: calls per minute, where
the incidents are found), so it reads through the sink with embedded ClickHouse like ``stockflow dash``.
Builds the report with ``agents.channels.connectivity`` (pure). Writes: the report to stdout or a file,
and, when ``STOCKFLOW_WEBHOOK_URL`` is set, its summary to the ops chat through the notifier's own
delivery (``agents.alerting.notify.post``: the robot's retries and refusal handling, outside its queue).
"""

from __future__ import annotations

import asyncio

import aiohttp

from agents.alerting import notify
from agents.alerting.digest import Message
from agents.channels import connectivity as cn
from streams.settings import Settings


def read_report(settings: Settings, week: cn.Week, now_ms: int, zone: str,
                min_failures: int = cn.DEFAULT_MIN_FAILURES) -> cn.ConnectivityReport:  # fmt: skip
    """The week's report from ClickHouse (raises what ``queries.run`` raises: ClickHouse away, a bad range)."""
    from agents.analytics import queries

    span = {"from_ms": str(week.start_ms), "to_ms": str(week.end_ms)}
    _, health = queries.run(settings, "connector_health", {**span, "now_ms": str(now_ms)})
    _, failed = queries.run(settings, "connector_failed_calls", span)
    _, minutes = queries.run(settings, "connector_minutes", span)
    totals = [
        cn.EndpointTotals.of({**r, "failed": r["failed_calls"], "attempts": r["attempts_sent"],
                              "replayed": r["replayed_calls"]})
        for r in health
    ]  # fmt: skip
    return cn.build_report(week, now_ms, totals, (cn.Minute.of(r) for r in minutes),
                           (cn.FailedVolume.of(r) for r in failed), min_failures)  # fmt: skip


def post_summary(settings: Settings, text: str) -> str:
    """Post ``text`` to the webhook as one markdown message: '' when it was taken, else why not."""

    async def send() -> str:
        async with aiohttp.ClientSession() as session:
            return await notify.post(session, settings.webhook_url, Message(text, ()).body)

    return asyncio.run(send())
