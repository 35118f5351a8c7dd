"""Prometheus metrics for every long-running process: naming, registries, the collector shape, rendering.

Each process owns a ``CollectorRegistry`` of its own (never the library's global one, so two services
in one test process do not collide) and serves it on ``/metrics``. The hot paths count in plain
attributes they already keep (``EngineStats``, ``SinkStatus``, the connectors' endpoint stats); a
``StatsCollector`` turns those into metric families when Prometheus scrapes, so scraping costs the
scrape and nothing per event.

Names follow the Prometheus conventions: the ``stockflow_`` prefix, base units (seconds, bytes),
``_total`` on counters (the client library appends it when rendering a counter family), ``_seconds``
on durations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

PREFIX = "stockflow_"
# What ``generate_latest`` writes is the classic text format; 0.0.4 is the version every Prometheus (2.x too)
# parses, where the library's default 1.0.0 is known to 3.x only.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# Batch and call durations: from a millisecond to half a minute (a transaction that waits on a slow broker).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 5, 10, 50, 100, 500, 1000, 5000, 10000)

__all__ = [
    "CONTENT_TYPE", "DURATION_BUCKETS", "PREFIX", "SIZE_BUCKETS", "StatsCollector", "counter", "gauge",
    "histogram", "metric_name", "new_registry", "render",
]  # fmt: skip


def metric_name(name: str) -> str:
    """``name`` with the ``stockflow_`` prefix (once); a counter's ``_total`` is left to the library."""
    if name.endswith("_total"):
        raise ValueError(f"{name}: give a counter's name without _total, the client library appends it")
    return name if name.startswith(PREFIX) else PREFIX + name


def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
    """A counter family to fill with ``add_metric(label_values, value)`` (rendered as ``<name>_total``)."""
    return CounterMetricFamily(metric_name(name), documentation, labels=list(labels))


def gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(metric_name(name), documentation, labels=list(labels))


def histogram(
    name: str,
    documentation: str,
    labels: Sequence[str] = (),
    buckets: Sequence[float] = DURATION_BUCKETS,
    registry: CollectorRegistry | None = None,
) -> Histogram:
    """A histogram observed where the thing it measures ends (once per batch or call, never per event)."""
    if not name.endswith("_seconds") and buckets is DURATION_BUCKETS:
        raise ValueError(f"{name}: a duration histogram is named in seconds (…_seconds)")
    return Histogram(metric_name(name), documentation, list(labels), buckets=tuple(buckets), registry=registry)


class StatsCollector(Collector):
    """Metric families built on scrape by ``build`` from counts the process keeps anyway."""

    def __init__(self, build: Callable[[], Iterable[Metric]]) -> None:
        self._build = build

    def collect(self) -> Iterator[Metric]:
        yield from self._build()

    def describe(self) -> list[Metric]:
        # Nothing up front: registering must not run ``build`` (its process may not be running yet).
        return []


def new_registry(*collectors: Collector) -> CollectorRegistry:
    """A registry of the process's own, with ``collectors`` registered."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format of everything in ``registry`` (serve it with ``CONTENT_TYPE``)."""
    return generate_latest(registry)
