"""The connector process's Prometheus metrics, built on scrape from its ``/connectors/status`` document.

Reads what ``ConnectorProcess.status()`` reports (per channel and endpoint the call outcomes and
latency percentiles, the failed queues, the loops) and the credentials' expiry times; writes
nothing. Call latency is exported as the status view keeps it, p50 and p99 over the recent calls
(a summary's quantiles), since the callers keep a window of latencies rather than buckets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import Metric

from streams.metrics import StatsCollector, counter, gauge

OUTCOMES = ("ok", "already_applied", "stale", "retried", "failed")


def connector_collector(status: Callable[[], Mapping[str, Any]],
                        expiries: Callable[[], Mapping[str, int | None]],
                        now_ms: Callable[[], int]) -> StatsCollector:  # fmt: skip
    """``expiries``: per channel, when its key expires (epoch ms; None: never)."""
    return StatsCollector(lambda: families(status(), expiries(), now_ms()))


def families(status: Mapping[str, Any], expiries: Mapping[str, int | None], now_ms: int) -> Iterator[Metric]:
    calls = counter("connector_calls", "Marketplace API calls, per channel, endpoint and outcome",
                    ["channel", "endpoint", "outcome"])  # fmt: skip
    latency = gauge("connector_call_latency_seconds", "Call latency quantiles over the recent calls",
                    ["channel", "endpoint", "quantile"])  # fmt: skip
    queued = gauge("connector_failed_queue_depth", "Records waiting in a channel's failed queue", ["channel", "queue"])
    failing = gauge("connector_channel_failing", "1 while the channel is marked failing", ["channel"])
    for channel, info in sorted(status.get("channels", {}).items()):
        for endpoint, stats in sorted(info.get("endpoints", {}).items()):
            for outcome in OUTCOMES:
                calls.add_metric([channel, endpoint, outcome], stats.get(outcome, 0))
            for name, quantile in (("p50", "0.5"), ("p99", "0.99")):
                value = (stats.get("latency_ms") or {}).get(name)
                if value is not None:
                    latency.add_metric([channel, endpoint, quantile], value / 1000)
        queued.add_metric([channel, "refunds"], info.get("refunds_queued", 0))
        queued.add_metric([channel, "stock"], info.get("stock_pending", 0))
        failing.add_metric([channel], 1.0 if info.get("failing") else 0.0)
    share = gauge("connector_rate_share", "This process's share of each platform's rate limit (of the partitions held)")
    share.add_metric([], status.get("rate_share", 1.0))
    yield from (calls, latency, queued, failing, share)
    expiry = gauge("connector_credential_expiry_seconds", "Seconds until the channel's key expires (negative: expired)",
                   ["channel"])  # fmt: skip
    for channel, ends in sorted(expiries.items()):
        if ends is not None:
            expiry.add_metric([channel], (ends - now_ms) / 1000)
    yield expiry
    received = counter("connector_records_received", "Records the connector's input loops read", ["loop"])
    undecodable = counter("connector_records_undecodable", "Records the input loops skipped as unreadable (the sink "
                          "dead-letters them)", ["loop"])  # fmt: skip
    for loop in ("refunds", "stock"):
        if isinstance(status.get(loop), Mapping):
            received.add_metric([loop], status[loop].get("received", 0))
            undecodable.add_metric([loop], status[loop].get("undecodable", 0))
    yield from (received, undecodable)
    ready = gauge("connector_ready", "1 once both input loops hold their partitions")
    ready.add_metric([], 1.0 if status.get("ready") else 0.0)
    yield ready
