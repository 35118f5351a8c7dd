"""The load test's channel figures: stock changes paired with the updates each channel accepted, refunds
paired with the marketplace's agreements; no network."""

from __future__ import annotations

from agents.channels import platforms as pf
from loadtest.market import (
    LevelSeen,
    StockAccepted,
    StockCalls,
    channel_push_latencies,
    refund_agreements,
    stock_accepted,
    stock_calls,
)

T0 = 1_000_000


def level(version: int, tmall: int, jd: int, source_ms: int = 0, sku: str = "S1") -> LevelSeen:
    return LevelSeen(sku, version, source_ms, {"tmall": tmall, "jd": jd})


def shown(channel: str, quantity: int, version: int, at_ms: int) -> StockAccepted:
    return StockAccepted(channel, "S1", quantity, version, at_ms)


def test_a_change_is_caught_up_when_an_update_with_its_version_or_a_newer_one_is_accepted() -> None:
    levels = [level(T0 - 500, 10, 10), level(T0 + 100, 9, 9), level(T0 + 150, 8, 8), level(T0 + 900, 7, 7)]
    accepted = [
        shown("tmall", 10, T0 - 500, T0 - 400),
        shown("jd", 10, T0 - 500, T0 - 400),
        # 9 and 8 coalesced into one push carrying 8's version: both caught up when it lands
        shown("tmall", 8, T0 + 150, T0 + 400),
        shown("tmall", 7, T0 + 900, T0 + 1000),
        shown("jd", 7, T0 + 900, T0 + 2000),
    ]
    out = channel_push_latencies(levels, accepted, ["tmall", "jd"], since_ms=T0)
    assert sorted(out.by_channel["tmall"]) == [100.0, 250.0, 300.0]
    # jd never got 9 or 8 on their own: the update carrying 7 covers them
    assert sorted(out.by_channel["jd"]) == [1100.0, 1850.0, 1900.0]
    assert out.missing == 0
    assert len(out.from_change_ms) == 6


def test_a_figure_back_to_what_the_channel_shows_catches_up_without_a_call() -> None:
    # tmall shows 10; the pool goes to 9 and back to 10 before the push: the connector sends nothing
    levels = [level(T0 - 500, 10, 10), level(T0 + 100, 9, 9), level(T0 + 300, 10, 9)]
    accepted = [shown("tmall", 10, T0 - 500, T0 - 400), shown("jd", 10, T0 - 500, T0 - 400),
                shown("jd", 9, T0 + 300, T0 + 450)]  # fmt: skip
    out = channel_push_latencies(levels, accepted, ["tmall", "jd"], since_ms=T0)
    assert sorted(out.by_channel["tmall"]) == [0.0, 200.0]
    assert out.by_channel["jd"] == [350.0]
    assert out.missing == 0


def test_an_unchanged_figure_is_no_change_and_the_changes_before_the_run_do_not_count() -> None:
    levels = [level(T0 - 10, 5, 5), level(T0 + 10, 5, 4), level(T0 + 20, 5, 4)]
    accepted = [shown("tmall", 5, T0 - 10, T0 - 5), shown("jd", 5, T0 - 10, T0 - 5), shown("jd", 4, T0 + 10, T0 + 60)]
    out = channel_push_latencies(levels, accepted, ["tmall", "jd"], since_ms=T0)
    assert out.from_change_ms == [50.0]
    assert out.missing == 0


def test_a_change_the_channel_never_catches_up_with_is_missing() -> None:
    levels = [level(T0 + 10, 3, 3), level(T0 + 20, 2, 2)]
    accepted = [shown("tmall", 3, T0 + 10, T0 + 30)]
    out = channel_push_latencies(levels, accepted, ["tmall", "jd"], since_ms=T0)
    assert out.from_change_ms == [20.0]
    assert out.missing == 3  # tmall's 2, jd's 3 and 2


def test_negative_sellable_is_shown_as_zero_and_a_level_published_twice_counts_once() -> None:
    levels = [level(T0 + 10, 0, 0), level(T0 + 20, -2, 0), level(T0 + 20, -2, 0)]
    accepted = [shown("tmall", 0, T0 + 10, T0 + 40), shown("jd", 0, T0 + 10, T0 + 40)]
    out = channel_push_latencies(levels, accepted, ["tmall", "jd"], since_ms=T0)
    assert sorted(out.from_change_ms) == [30.0, 30.0]


def test_order_to_channel_counts_levels_holding_stock_for_a_newer_order() -> None:
    levels = [level(T0 + 100, 9, 9, source_ms=T0 + 20), level(T0 + 300, 10, 10, source_ms=T0 + 20)]  # a release
    accepted = [shown("tmall", 9, T0 + 100, T0 + 200), shown("tmall", 10, T0 + 300, T0 + 400)]
    out = channel_push_latencies(levels, accepted, ["tmall"], since_ms=T0)
    assert sorted(out.from_change_ms) == [100.0, 100.0]
    assert out.from_order_ms == [180.0]


def test_only_applied_stock_calls_are_accepted_updates() -> None:
    body = pf.stock_body("jd", "LOAD-11-00001", 7, 1700000000123)
    row = {"seq": 3, "channel": "jd", "endpoint": "stock", "idempotency_key": "LOAD-11-00001:1700000000123",
           "result": "applied", "accepted_at_ms": 1700000000456, "body": body}  # fmt: skip
    assert stock_accepted(row) == StockAccepted("jd", "LOAD-11-00001", 7, 1700000000123, 1700000000456)
    assert stock_accepted({**row, "result": "stale"}) is None
    assert stock_accepted({**row, "endpoint": "refund"}) is None


def test_refunds_agreed_once_twice_or_not_at_all() -> None:
    sent = ["jd:rf-1", "jd:rf-2", "tmall:rf-3", "pdd:rf-4"]
    instructed = ["jd:rf-1", "jd:rf-2", "tmall:rf-3", "pdd:rf-4", "jd:other"]
    agreed = [
        {"channel": "jd", "refund_id": "rf-1", "channel_order_id": "1", "agreed": 1, "duplicate_attempts": 2},
        {"channel": "jd", "refund_id": "rf-2", "channel_order_id": "2", "agreed": 1, "duplicate_attempts": 0},
        # one order refunded under a second refund id is refunded twice
        {"channel": "tmall", "refund_id": "rf-3", "channel_order_id": "3", "agreed": 1, "duplicate_attempts": 0},
        {"channel": "tmall", "refund_id": "rf-3b", "channel_order_id": "3", "agreed": 1, "duplicate_attempts": 0},
        {"channel": "own", "refund_id": "not-ours", "channel_order_id": "9", "agreed": 1, "duplicate_attempts": 0},
    ]
    assert refund_agreements(sent, instructed, agreed) == {
        "refunds_instructed": 4, "refunds_agreed": 3, "refunds_agreed_twice": 1, "refunds_not_agreed": 1,
        "refund_agree_repeats": 2,
    }  # fmt: skip


def test_a_figure_of_a_many_sku_call_is_an_accepted_update_and_its_call_is_counted_once() -> None:
    body = pf.stock_batch_body("pdd", [pf.StockUpdate("S1", 4, 1700000000100)])["sku_quantity_list"][0]
    row = {"seq": 9, "channel": "pdd", "endpoint": "stock", "idempotency_key": "S1:1700000000100", "result": "applied",
           "accepted_at_ms": 1700000000300, "body": body, "batch": 4}  # fmt: skip
    assert stock_accepted(row) == StockAccepted("pdd", "S1", 4, 1700000000100, 1700000000300)
    rows = [("pdd", T0 - 10, 1), ("pdd", T0 + 100, 2), ("pdd", T0 + 100, 2), ("pdd", T0 + 100, 2),
            ("jd", T0 + 500, 3), ("jd", T0 + 2000, 0), ("jd", T0 + 2000, 0)]  # fmt: skip
    calls = stock_calls(rows, since_ms=T0)
    assert calls == {"jd": StockCalls(3, 3, 2.0), "pdd": StockCalls(1, 3, 0.1)}  # one-SKU calls count one each
    assert calls["jd"].per_s == 1.5 and StockCalls(0, 0, 0.0).per_s == 0.0
