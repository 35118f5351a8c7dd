"""The capacity model: from measured CPU per order, how many workers, partitions, broker nodes, sinks and
ClickHouse shards a target peak needs, and how far one hot SKU can go with and without stock buckets.

Reads ``loadtest/capacity.toml`` (``load_constants``; the only place its figures live) and nothing
else; every other function is pure. ``stockflow plan`` prints ``plan``'s table, ``docs/capacity.md``
holds the same tables for its worked examples (a unit test compares them), and ``stockflow bench``
uses ``predict`` for what its measured CPU per order implies on more cores than the two it ran on.

It lives with the load test because its constants are what the benchmarks measure and only an
engineer planning a deployment runs it; the product never needs it.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from rich.table import Table

CONSTANTS_FILE = Path(__file__).with_name("capacity.toml")
# The [measured] keys: what `stockflow bench` prints as `capacity_constants` to paste into the file.
MEASURED_KEYS = (
    "worker_cpu_us_per_order", "broker_cpu_us_per_order", "sink_cpu_us_per_order", "records_per_order",
    "sink_rows_per_order", "hot_sku_decisions_per_s_per_partition",
)  # fmt: skip


class Constants(BaseModel):
    """``capacity.toml``'s [measured] and [assumed] figures, flattened."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(description="Where the measured figures come from.")
    worker_cpu_us_per_order: float = Field(gt=0)
    broker_cpu_us_per_order: float = Field(gt=0)
    sink_cpu_us_per_order: float = Field(gt=0)
    records_per_order: float = Field(gt=0)
    sink_rows_per_order: float = Field(gt=0)
    hot_sku_decisions_per_s_per_partition: float = Field(gt=0)
    bucket_cpu_factor: float = Field(ge=1, description="CPU per order of a bucketed SKU over a plain one.")
    target_utilisation: float = Field(gt=0, le=1)
    bucket_count: int = Field(ge=1)
    partitions_per_worker: int = Field(ge=1)
    min_partitions: int = Field(ge=1)
    partitioned_topics: int = Field(ge=1)
    replication_factor: int = Field(ge=1)
    replica_cpu_share: float = Field(ge=0)
    cores_per_broker_node: int = Field(ge=1)
    max_partition_replicas_per_broker: int = Field(ge=1)
    clickhouse_rows_per_s_per_shard: float = Field(gt=0)
    cores_per_clickhouse_shard: int = Field(ge=1)


def load_constants(path: Path | None = None) -> Constants:
    """The constants file (default: the one shipped beside this module)."""
    with open(path or CONSTANTS_FILE, "rb") as fh:
        data = tomllib.load(fh)
    return Constants(**data.get("measured", {}), **data.get("assumed", {}))


@dataclass(frozen=True)
class HotSku:
    """One SKU taking ``share`` of the orders: its decisions all land on the partitions its stock lives on."""

    share: float
    decisions_per_s: float
    ceiling_without_buckets: float  # one partition, one engine thread
    buckets: int  # the configured bucket count
    ceiling_with_buckets: float  # ``buckets`` partitions on as many workers
    buckets_needed: int  # at the target utilisation (1: no buckets needed)
    max_share_without_buckets: float  # the largest share one partition carries at the target utilisation


@dataclass(frozen=True)
class Plan:
    orders_per_s: float
    workers: int
    partitions: int
    broker_nodes: int
    broker_nodes_for_cpu: int
    broker_nodes_for_partitions: int
    sinks: int
    clickhouse_shards: int
    cores: dict[str, int]  # workers, broker, sink, clickhouse, total
    hot: HotSku

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def plan(orders_per_s: float, hot_share: float, c: Constants) -> Plan:
    """What ``orders_per_s`` at peak needs, every process planned at ``c.target_utilisation``."""
    if orders_per_s <= 0:
        raise ValueError("orders_per_s must be positive")
    if not 0 <= hot_share <= 1:
        raise ValueError("hot_share must be between 0 and 1")
    u = c.target_utilisation
    # A worker's engine is one thread: one core per worker, whatever the machine.
    workers = max(1, math.ceil(orders_per_s * c.worker_cpu_us_per_order / 1e6 / u))
    partitions = max(c.min_partitions, _next_power_of_two(workers * c.partitions_per_worker))
    replication = 1 + c.replica_cpu_share * (c.replication_factor - 1)
    broker_cores = orders_per_s * c.broker_cpu_us_per_order / 1e6 * replication
    for_cpu = math.ceil(broker_cores / (u * c.cores_per_broker_node))
    replicas = partitions * c.partitioned_topics * c.replication_factor
    for_partitions = math.ceil(replicas / c.max_partition_replicas_per_broker)
    broker_nodes = max(c.replication_factor, for_cpu, for_partitions)
    # The sink is one Python process, one core: more sinks share its consumer group.
    sinks = max(1, math.ceil(orders_per_s * c.sink_cpu_us_per_order / 1e6 / u))
    shards = max(1, math.ceil(orders_per_s * c.sink_rows_per_order / (c.clickhouse_rows_per_s_per_shard * u)))
    cores = {"workers": workers, "broker": broker_nodes * c.cores_per_broker_node, "sink": sinks,
             "clickhouse": shards * c.cores_per_clickhouse_shard}  # fmt: skip
    cores["total"] = sum(cores.values())
    return Plan(orders_per_s, workers, partitions, broker_nodes, for_cpu, for_partitions, sinks, shards, cores,
                hot_sku(orders_per_s, hot_share, workers, partitions, c))  # fmt: skip


def hot_sku(orders_per_s: float, share: float, workers: int, partitions: int, c: Constants) -> HotSku:
    """The hottest SKU against one partition's ceiling, and against ``c.bucket_count`` buckets (each on a
    partition of its own; they scale only as far as there are workers to hold those partitions)."""
    per_partition = c.hot_sku_decisions_per_s_per_partition
    decisions = orders_per_s * share
    usable = per_partition * c.target_utilisation
    spread = min(c.bucket_count, workers, partitions)
    per_bucket = per_partition / c.bucket_cpu_factor  # routing, reports and transfers cost each order more
    return HotSku(
        share=share,
        decisions_per_s=decisions,
        ceiling_without_buckets=per_partition,
        buckets=c.bucket_count,
        ceiling_with_buckets=per_bucket * spread,
        buckets_needed=1 if decisions <= usable else math.ceil(decisions / (per_bucket * c.target_utilisation)),
        max_share_without_buckets=min(1.0, usable / orders_per_s),
    )


def _n(value: float) -> str:
    return f"{value:,.0f}"


def plan_rows(p: Plan, c: Constants) -> list[tuple[str, str, str]]:
    """(figure, value, how it follows from the constants): the table ``stockflow plan`` prints."""
    u = f"{c.target_utilisation:.0%}"
    h = p.hot
    fits = "fits" if h.buckets_needed == 1 else f"too few, {h.buckets_needed} buckets needed"
    fits_buckets = "fits" if h.decisions_per_s <= h.ceiling_with_buckets * c.target_utilisation else "does not fit"
    return [
        ("peak orders/s", _n(p.orders_per_s), "the target"),
        ("workers", _n(p.workers), f"{c.worker_cpu_us_per_order:,g} µs of worker CPU an order, one core each, at {u}"),
        ("partitions per keyed topic", _n(p.partitions),
         f"{c.partitions_per_worker} per worker, a power of two, at least {c.min_partitions}"),
        ("broker nodes", _n(p.broker_nodes),
         f"CPU {p.broker_nodes_for_cpu} ({c.broker_cpu_us_per_order:,g} µs an order, replication "
         f"{c.replication_factor}, {c.cores_per_broker_node} cores a node, at {u}); partition replicas "
         f"{p.broker_nodes_for_partitions}; at least {c.replication_factor}"),
        ("sink processes", _n(p.sinks), f"{c.sink_cpu_us_per_order:,g} µs an order, one core each, at {u}"),
        ("ClickHouse shards", _n(p.clickhouse_shards),
         f"{c.sink_rows_per_order:,g} rows an order, {_n(c.clickhouse_rows_per_s_per_shard)} rows/s a shard, at {u}"),
        ("cores: workers / broker / sink / ClickHouse", " / ".join(_n(p.cores[k]) for k in
                                                                   ("workers", "broker", "sink", "clickhouse")), ""),
        ("cores in all", _n(p.cores["total"]), ""),
        ("hot SKU decisions/s", _n(h.decisions_per_s), f"{h.share:.1%} of the orders on one SKU"),
        ("hot-SKU ceiling without buckets", _n(h.ceiling_without_buckets),
         f"one partition, one engine thread: {fits} at {u}"),
        (f"hot-SKU ceiling with {h.buckets} buckets", _n(h.ceiling_with_buckets),
         f"{h.buckets} partitions on as many workers: {fits_buckets} at {u}"),
        ("largest hot-SKU share without buckets", f"{h.max_share_without_buckets:.1%}", ""),
    ]  # fmt: skip


def plan_table(p: Plan, c: Constants) -> Table:
    table = Table("figure", "value", "from", title=f"capacity for {_n(p.orders_per_s)} orders/s at peak")
    for row in plan_rows(p, c):
        table.add_row(*row)
    return table


def plan_markdown(p: Plan, c: Constants) -> str:
    """The same table as ``plan_table``, in Markdown (docs/capacity.md's worked examples)."""
    lines = ["| figure | value | from |", "|---|---|---|"]
    lines += [f"| {figure} | {value} | {how} |" for figure, value, how in plan_rows(p, c)]
    return "\n".join(lines) + "\n"


def assumptions(c: Constants) -> list[str]:
    """What the plan takes for granted, from the constants."""
    u = f"{c.target_utilisation:.0%}"
    return [
        f"Measured: {c.source}.",
        f"Every process planned at {u} of what it can do; the rest is for a rebalance's catch-up, a burst "
        "above the forecast peak and a lost node.",
        "CPU per order is linear in orders: measured at one load on one box where the broker, the worker, the "
        "sink and the load generator shared two cores; fixed costs (idle polls, timers) are counted as per-order "
        "cost, which errs high at scale.",
        f"The broker's CPU was measured at replication factor 1 with small batches; each of the "
        f"{c.replication_factor - 1} follower replicas is taken to cost {c.replica_cpu_share:.0%} of the leader's "
        "work. Larger batches on a busier broker cost less per record (1.3 µs bulk against 22-50 µs at 8-16 "
        "partitions, measured on the same machine), so the broker count errs high.",
        f"A worker is one engine thread (one core); a sink is one Python process (one core). A ClickHouse shard "
        f"takes {_n(c.clickhouse_rows_per_s_per_shard)} rows/s ({c.cores_per_clickhouse_shard} cores): assumed, "
        "not measured here.",
        f"Orders spread evenly over partitions by key, apart from the hot SKU; {c.partitioned_topics} partitioned "
        f"topics, at most {_n(c.max_partition_replicas_per_broker)} partition replicas a broker.",
        f"A hot SKU's decisions run on the partition its stock lives on: one partition is one engine thread, "
        f"{_n(c.hot_sku_decisions_per_s_per_partition)} decisions/s measured. Its {c.bucket_count} buckets sit on "
        f"as many partitions and scale only while each is on a different worker; an order on a bucketed SKU "
        f"costs {c.bucket_cpu_factor:.2f}x an unsplit one (routing, reports, transfers; measured on one thread).",
    ]


def assumptions_markdown(c: Constants) -> str:
    return "".join(f"- {line}\n" for line in assumptions(c))


# ---- the bench's prediction -----------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """What a run's CPU per order implies: orders/s each limit allows, the least of them, what binds."""

    cores: int
    workers: int
    limits: dict[str, float]  # limit -> orders/s it allows
    predicted_orders_per_s: float
    binds: str  # worker, broker or sink

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def predict(cpu_us_per_order: Mapping[str, float], cores: int, workers: int, sinks: int = 1) -> Prediction:
    """Orders/s on ``cores`` cores from measured CPU µs per order per process kind (``worker`` for all the
    workers together, ``broker``, ``sink``, and any others sharing the box): the box's cores over the CPU of
    everything on it, the workers at one core each, the sinks at one core each. What binds is the limit
    reached first; when it is the box's cores, the process kind taking most of them."""
    total = sum(v for v in cpu_us_per_order.values() if v > 0)
    worker = cpu_us_per_order.get("worker", 0.0)
    sink = cpu_us_per_order.get("sink", 0.0)
    limits = {"cores": cores * 1e6 / total if total else math.inf}
    if worker > 0:
        limits["workers"] = min(workers, cores) * 1e6 / worker
    if sink > 0:
        limits["sinks"] = min(sinks, cores) * 1e6 / sink
    least = min(limits, key=lambda k: limits[k])
    if least == "cores":
        kinds = {k: cpu_us_per_order.get(k, 0.0) for k in ("worker", "broker", "sink")}
        binds = max(kinds, key=lambda k: kinds[k])
    else:
        binds = least.removesuffix("s")
    return Prediction(cores, workers, {k: round(v, 1) for k, v in limits.items()},
                      round(limits[least], 1), binds)  # fmt: skip


# ---- docs/capacity.md -------------------------------------------------------------------------------

_EXAMPLE = re.compile(r"(<!-- plan (\S+) (\S+):start -->\n)(.*?)(<!-- plan \2 \3:end -->)", re.S)
_ASSUMPTIONS = re.compile(r"(<!-- capacity-assumptions:start -->\n)(.*?)(<!-- capacity-assumptions:end -->)", re.S)


def render_doc(text: str, c: Constants) -> str:
    """``text`` (docs/capacity.md) with every worked example's table (between ``<!-- plan N X:start -->``
    and its end marker) and the assumptions list regenerated from ``c``."""
    text = _EXAMPLE.sub(lambda m: m[1] + plan_markdown(plan(float(m[2]), float(m[3]), c), c) + m[5], text)
    return _ASSUMPTIONS.sub(lambda m: m[1] + assumptions_markdown(c) + m[3], text)


if __name__ == "__main__":  # python -m loadtest.capacity docs/capacity.md: rewrite its generated parts
    import sys

    doc = Path(sys.argv[1])
    doc.write_text(render_doc(doc.read_text(encoding="utf-8"), load_constants()), encoding="utf-8")
