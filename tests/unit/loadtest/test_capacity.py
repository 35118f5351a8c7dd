"""The capacity model (``loadtest.capacity``): the plan's arithmetic, the hot-SKU ceiling, the bench's
prediction, and docs/capacity.md's worked examples equal to what ``stockflow plan`` prints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loadtest.capacity import (
    MEASURED_KEYS,
    Constants,
    load_constants,
    plan,
    plan_markdown,
    predict,
    render_doc,
)
from streams.contract.topics import ALL_TOPICS

DOC = Path(__file__).resolve().parents[3] / "docs" / "capacity.md"
EXAMPLE = re.compile(r"<!-- plan (\S+) (\S+):start -->\n(.*?)<!-- plan \1 \2:end -->", re.S)


def constants(**changes: float) -> Constants:
    base = {
        "source": "test", "worker_cpu_us_per_order": 1000, "broker_cpu_us_per_order": 1000,
        "sink_cpu_us_per_order": 500, "records_per_order": 30, "sink_rows_per_order": 20,
        "hot_sku_decisions_per_s_per_partition": 5000, "bucket_cpu_factor": 1.0, "target_utilisation": 0.5,
        "bucket_count": 4,
        "partitions_per_worker": 2, "min_partitions": 8, "partitioned_topics": 10, "replication_factor": 3,
        "replica_cpu_share": 0.5, "cores_per_broker_node": 10, "max_partition_replicas_per_broker": 1000,
        "clickhouse_rows_per_s_per_shard": 100_000, "cores_per_clickhouse_shard": 8,
    }  # fmt: skip
    return Constants(**{**base, **changes})


def test_the_shipped_constants_load_and_cover_the_contract() -> None:
    c = load_constants()
    assert c.target_utilisation <= 1
    partitioned = sum(1 for spec in ALL_TOPICS if not spec.single_partition)
    assert c.partitioned_topics >= partitioned, "capacity.toml's partitioned_topics is below the topic contract's"


def test_workers_partitions_and_sinks_follow_cpu_per_order() -> None:
    p = plan(10_000, 0.0, constants())
    # 10,000/s x 1 ms = 10 cores of worker CPU, at 50%: 20 workers, 40 partitions -> 64.
    assert (p.workers, p.partitions) == (20, 64)
    assert p.sinks == 10  # 5 cores of sink CPU at 50%
    # 20 rows x 10,000/s = 200k rows/s over 100k x 50% a shard.
    assert p.clickhouse_shards == 4
    assert p.cores == {"workers": 20, "broker": p.broker_nodes * 10, "sink": 10, "clickhouse": 32,
                       "total": 62 + p.broker_nodes * 10}  # fmt: skip


def test_broker_nodes_take_the_largest_of_cpu_partition_replicas_and_replication() -> None:
    # 10 cores of leader CPU x 2 for two followers at half = 20 cores, at 50% of 10-core nodes: 4.
    p = plan(10_000, 0.0, constants())
    assert p.broker_nodes_for_cpu == 4
    assert p.broker_nodes_for_partitions == 2  # 64 x 10 topics x 3 replicas = 1,920 over 1,000
    assert p.broker_nodes == 4
    small = plan(10, 0.0, constants())
    assert (small.broker_nodes_for_cpu, small.broker_nodes) == (1, 3)  # never fewer nodes than replicas
    many = plan(10_000, 0.0, constants(max_partition_replicas_per_broker=100))
    assert many.broker_nodes == many.broker_nodes_for_partitions == 20


def test_at_least_the_minimum_partitions_and_one_of_everything() -> None:
    p = plan(1, 0.0, constants())
    assert (p.workers, p.partitions, p.sinks, p.clickhouse_shards) == (1, 8, 1, 1)


def test_the_hot_sku_against_one_partition_and_against_buckets() -> None:
    c = constants()
    p = plan(100_000, 0.06, c)  # 6,000 decisions/s for one SKU; one partition carries 2,500 at 50%
    assert p.hot.decisions_per_s == pytest.approx(6_000)
    assert p.hot.ceiling_without_buckets == 5_000
    assert p.hot.buckets_needed == 3
    assert p.hot.ceiling_with_buckets == 20_000
    assert p.hot.max_share_without_buckets == pytest.approx(0.025)
    # Buckets scale only as far as there are workers to hold their partitions.
    few = plan(1_000, 0.5, c)
    assert few.workers == 2 and few.hot.ceiling_with_buckets == 10_000
    assert plan(1_000, 0.0, c).hot.buckets_needed == 1
    # A bucketed order costs more: each bucket carries less than an unsplit partition.
    dearer = plan(100_000, 0.06, constants(bucket_cpu_factor=1.25))  # a bucket: 4,000/s, 2,000 at 50%
    assert dearer.hot.ceiling_with_buckets == 16_000 and dearer.hot.buckets_needed == 3


def test_a_plan_refuses_what_is_not_a_target() -> None:
    with pytest.raises(ValueError, match="orders_per_s"):
        plan(0, 0.1, constants())
    with pytest.raises(ValueError, match="hot_share"):
        plan(10, 1.5, constants())


def test_the_prediction_takes_the_first_limit_reached() -> None:
    # On 2 cores, 2,500 µs of CPU an order in all: 800 orders/s, where the broker takes the most.
    p = predict({"worker": 800, "broker": 1100, "sink": 400, "other": 200}, cores=2, workers=2)
    assert p.predicted_orders_per_s == 800.0 and p.binds == "broker"
    assert p.limits["workers"] == 2500.0 and p.limits["sinks"] == 2500.0
    # On 64 cores the one sink process (one core) binds first.
    wide = predict({"worker": 800, "broker": 1100, "sink": 400, "other": 200}, cores=64, workers=32)
    assert (wide.binds, wide.predicted_orders_per_s) == ("sink", 2500.0)
    # One worker on many cores: the worker binds.
    assert predict({"worker": 800, "broker": 100, "sink": 100}, cores=16, workers=1).binds == "worker"


def test_the_bench_reports_every_measured_constant() -> None:
    assert set(MEASURED_KEYS) <= set(Constants.model_fields)


def test_the_docs_worked_examples_are_what_plan_prints() -> None:
    text = DOC.read_text(encoding="utf-8")
    c = load_constants()
    examples = EXAMPLE.findall(text)
    assert len(examples) == 3, "docs/capacity.md lost a worked example's markers"
    for orders, share, table in examples:
        assert table == plan_markdown(plan(float(orders), float(share), c), c), (
            f"docs/capacity.md's table for {orders} orders/s differs from `stockflow plan --orders-per-s {orders} "
            f"--hot-sku-share {share} --markdown`: run `python -m loadtest.capacity docs/capacity.md`"
        )
    assert render_doc(text, c) == text, "docs/capacity.md's assumptions differ: run `python -m loadtest.capacity "
    "docs/capacity.md`"


def test_render_doc_fills_only_between_the_markers() -> None:
    c = constants()
    text = "intro\n<!-- plan 1000 0.1:start -->\nold\n<!-- plan 1000 0.1:end -->\nafter\n"
    out = render_doc(text, c)
    assert out.startswith("intro\n<!-- plan 1000 0.1:start -->\n| figure | value | from |")
    assert out.endswith("<!-- plan 1000 0.1:end -->\nafter\n") and "old" not in out
    assert render_doc(out, c) == out
