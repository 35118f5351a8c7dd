"""The engine's Prometheus metrics, built on scrape from what the engine counts anyway.

Reads ``Engine.stats`` (``EngineStats``), its per-topic and per-reason counters, its per-batch
histograms, the partition stores it holds open and its lag sample; writes nothing. The consumer lag
is the engine thread's own once-a-second sample (``Engine.lag``): a scrape never calls into the
consumer from its thread, where a call waited on the client's group queue through a rebalance.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from streams.metrics import StatsCollector, counter, gauge

if TYPE_CHECKING:
    from streams.engine.loop import Engine

# EngineStats fields exported as counters: (field, metric name, help).
_COUNTERS = (
    ("batches", "engine_batches", "Batches committed"),
    ("aborts", "engine_aborts", "Transactions aborted"),
    ("changelog_records", "engine_changelog_records", "Changelog records written"),
    ("undecodable", "engine_undecodable_records", "Input records that could not be decoded"),
    ("timers_fired", "engine_timers_fired", "Timers fired"),
    ("restored_records", "engine_restored_records", "Changelog records restored into state"),
    ("local_events", "engine_local_records", "Records applied in the batch that wrote them"),
    ("superseded", "engine_superseded_records", "Records not published: a newer one of their batch has their key"),
)
_SECONDS = (
    ("poll_s", "engine_poll_seconds", "Time spent waiting on the consumer"),
    ("apply_s", "engine_apply_seconds", "Time spent applying records to processors"),
    ("commit_s", "engine_commit_seconds_spent", "Time spent committing batches"),
    ("cpu_s", "engine_cpu_seconds", "The engine thread's own CPU time in batches"),
)


def engine_collector(engine: Engine) -> StatsCollector:
    return StatsCollector(lambda: _families(engine))


def _families(engine: Engine) -> Iterator[Metric]:
    stats = engine.stats
    records_in = counter("engine_records_in", "Records read and applied, per input topic", ["topic"])
    for topic, n in sorted(engine.records_in.items()):
        records_in.add_metric([topic], n)
    yield records_in
    records_out = counter("engine_records_out", "Records published, per output topic", ["topic"])
    for topic, n in sorted(engine.records_out.items()):
        records_out.add_metric([topic], n)
    yield records_out
    refused = counter("engine_dead_letters", "Records refused to the dead-letter topic, per reason", ["reason"])
    for reason, n in sorted(engine.refused.items()):
        refused.add_metric([reason], n)
    yield refused
    for name, metric, doc in _COUNTERS:
        family = counter(metric, doc)
        family.add_metric([], getattr(stats, name))
        yield family
    for name, metric, doc in _SECONDS:
        family = counter(metric, doc)
        family.add_metric([], getattr(stats, name))
        yield family
    yield from engine.commit_seconds.collect()
    yield from engine.batch_events.collect()
    ready = gauge("engine_ready", "1 once every assigned partition's state is restored")
    ready.add_metric([], 1.0 if engine.ready.is_set() else 0.0)
    yield ready
    yield _state_keys(engine)
    yield _lag(engine)


def _state_keys(engine: Engine) -> Metric:
    family = gauge("engine_state_keys", "Approximate keys held per store partition (RocksDB estimate)",
                   ["store", "partition"])  # fmt: skip
    for (store, partition), held in sorted(engine.open_stores(), key=lambda item: item[0]):
        try:
            family.add_metric([store, str(partition)], held.approximate_keys())
        except Exception:  # noqa: BLE001 - closed under us by a rebalance: it is simply not held now
            continue
    return family


def _lag(engine: Engine) -> Metric:
    family = gauge("engine_consumer_lag", "Records behind the high watermark, per input partition",
                   ["topic", "partition"])  # fmt: skip
    for (topic, partition), behind in sorted(engine.lag.items()):
        family.add_metric([topic, str(partition)], behind)
    return family
