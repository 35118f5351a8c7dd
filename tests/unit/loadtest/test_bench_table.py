"""The bench's summary table: the channel figures when the marketplaces ran, none when they did not."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from loadtest.bench import CHANNEL_KEYS, MARKETPLACES, PIPELINE_KEYS, summary_table
from loadtest.market import BENCH_QPS


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
