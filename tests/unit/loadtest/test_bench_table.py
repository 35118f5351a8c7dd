"""The bench's summary table: the channel figures when the marketplaces ran, none when they did not."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from loadtest.bench import CHANNEL_KEYS, MARKETPLACES, REQUIRED_KEYS, summary_table
from loadtest.market import BENCH_QPS

PIPELINE_KEYS = (
    *REQUIRED_KEYS, "hold_agent_events_per_s", "orders_sent", "orders_decided", "events_per_order", "drained",
    "drain_s", "max_lag", "skus_drifted", "intake_errors", "sender_behind_ms", "changelog_records_per_order",
    "engine_events_per_batch", "engine_local_share", "engine_cpu_us_per_order", "refunds_sent", "refunds_decided",
    "p50_refund_decision_ms", "p99_refund_decision_ms", "refunds_paid_twice", "refunds_lost",
)  # fmt: skip


def rendered(figures: dict[str, Any]) -> str:
    console = Console(width=200, record=True)
    console.print(summary_table(figures))
    return console.export_text()


def test_the_table_shows_the_channel_figures_when_the_marketplaces_ran() -> None:
    base: dict[str, Any] = {"profile": "steady", "workers": 1, **dict.fromkeys(PIPELINE_KEYS, 0)}
    without = rendered(base)
    assert "p99_decision_ms" in without and "p99_channel_push_ms" not in without
    text = rendered({**base, **dict.fromkeys(CHANNEL_KEYS, 0), "p99_channel_push_ms": 812.5})
    assert all(key in text for key in CHANNEL_KEYS)
    assert "812.5" in text


def test_marketplace_modes() -> None:
    assert MARKETPLACES == {"high-limits": BENCH_QPS, "platform-limits": 0.0, "off": None}
