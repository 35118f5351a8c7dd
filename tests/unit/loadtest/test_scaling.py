"""The bench's per-process figures, rebalance windows and latency split, from samples (no processes)."""

from __future__ import annotations

import pytest

from loadtest.bench import engine_cycle_figures, engine_figures, hot_orders
from loadtest.generator import build_schedule, hot_sku_name
from loadtest.scaling import (
    Sample,
    Window,
    decisions_from_metrics,
    hot_sku_figures,
    latency_split,
    process_figures,
    rebalance_windows,
    stamps,
    value_at,
)

T0 = 1_700_000_000_000


def series(*points: tuple[int, dict[str, float]]) -> list[Sample]:
    return [Sample(T0 + at, values) for at, values in points]


def test_value_at_interpolates_inside_and_holds_the_edge_outside() -> None:
    s = series((0, {"cpu_s": 10.0}), (1000, {"cpu_s": 12.0}), (2000, {"other": 1.0}), (3000, {"cpu_s": 16.0}))
    assert value_at(s, "cpu_s", T0 + 500) == pytest.approx(11.0)
    assert value_at(s, "cpu_s", T0 + 2000) == pytest.approx(14.0)  # the sample without the key is skipped
    assert value_at(s, "cpu_s", T0 - 5000) == 10.0
    assert value_at(s, "cpu_s", T0 + 9000) == 16.0
    assert value_at(s, "missing", T0) is None


def test_process_figures_per_worker_and_per_kind() -> None:
    samples = {
        # Ran the whole window: 2 CPU seconds, 100 decisions in 10 s.
        "worker-0": series((0, {"cpu_s": 1.0, "decisions": 0}), (10_000, {"cpu_s": 3.0, "decisions": 100})),
        # Joined half-way: 50 decisions in its 5 s.
        "worker-1": series((5_000, {"cpu_s": 0.0, "decisions": 0}), (10_000, {"cpu_s": 0.5, "decisions": 50})),
        "broker": series((0, {"cpu_s": 100.0}), (10_000, {"cpu_s": 103.0})),
        "sink": series((0, {"cpu_s": 5.0, "rows": 1000}), (10_000, {"cpu_s": 6.5, "rows": 4000})),
        "generator": series((0, {"cpu_s": 0.0}), (10_000, {"cpu_s": 0.15})),
    }
    kinds = {"worker-0": "worker", "worker-1": "worker", "broker": "broker", "sink": "sink", "generator": "other"}
    out = process_figures(samples, kinds, T0, T0 + 10_000, orders=150)
    w0, w1 = out["processes"]["worker-0"], out["processes"]["worker-1"]
    assert (w0["orders_decided"], w0["orders_per_s"], w0["cpu_us_per_own_order"]) == (100, 10.0, 20_000)
    assert (w1["orders_decided"], w1["active_s"], w1["orders_per_s"]) == (50, 5.0, 10.0)
    assert out["processes"]["broker"]["cpu_share_of_a_core"] == 0.3
    assert out["processes"]["sink"]["rows_per_order"] == 20.0
    assert out["cpu_us_per_order"] == {"broker": 20_000, "other": 1_000, "sink": 10_000, "worker": 16_667}
    # Orders/s until the last decision; CPU over the whole window.
    early = process_figures(samples, kinds, T0, T0 + 10_000, orders=150, decided_by_ms=T0 + 8_000)
    assert early["processes"]["worker-1"]["active_s"] == 3.0
    assert early["processes"]["worker-0"]["cpu_s"] == 2.0


def test_a_process_without_cpu_samples_is_reported_as_unknown() -> None:
    out = process_figures({"worker-0": series((0, {"decisions": 0}), (1000, {"decisions": 5}))},
                          {"worker-0": "worker"}, T0, T0 + 1000, orders=5)  # fmt: skip
    assert out["processes"]["worker-0"]["cpu_us_per_order"] is None
    assert out["processes"]["worker-0"]["orders_decided"] == 5
    assert out["cpu_us_per_order"] == {}


def test_stamps_collect_every_distinct_revocation_and_assignment_of_workers() -> None:
    samples = {
        "worker-0": series((0, {"engine.revoked_at_ms": 0, "engine.assigned_at_ms": T0 - 9000}),
                           (1000, {"engine.revoked_at_ms": T0 + 700, "engine.assigned_at_ms": T0 + 900})),
        "worker-1": series((1000, {"engine.revoked_at_ms": 0, "engine.assigned_at_ms": T0 + 950})),
        "broker": series((0, {"engine.revoked_at_ms": 1})),
    }  # fmt: skip
    kinds = {"worker-0": "worker", "worker-1": "worker", "broker": "broker"}
    assert stamps(samples, kinds) == ([T0 + 700], [T0 - 9000, T0 + 900, T0 + 950])


def test_a_join_pauses_from_the_first_revocation_to_the_last_assignment() -> None:
    revoked, assigned = [T0 + 6_000], [T0 - 30_000, T0 + 6_400, T0 + 7_100]
    [w] = rebalance_windows([("join", T0 + 1_000)], revoked, assigned)
    assert (w.cause, w.start_ms, w.end_ms, w.length_ms) == ("join", T0 + 6_000, T0 + 7_100, 1_100)


def test_a_leave_starts_at_its_sigterm_and_windows_stop_at_the_next_change() -> None:
    revoked = [T0 + 6_000, T0 + 20_300]
    assigned = [T0 + 7_100, T0 + 21_000, T0 + 22_500]
    join, leave = rebalance_windows([("leave", T0 + 20_000), ("join", T0 + 1_000)], revoked, assigned)
    assert (join.start_ms, join.end_ms) == (T0 + 6_000, T0 + 7_100)
    assert (leave.cause, leave.start_ms, leave.end_ms) == ("leave", T0 + 20_000, T0 + 22_500)


def test_a_change_whose_rebalance_was_never_seen_has_no_window_length() -> None:
    [w] = rebalance_windows([("join", T0)], [], [])
    assert w.end_ms == 0 and w.length_ms == 0


def test_orders_in_flight_during_a_window_are_split_from_the_rest() -> None:
    window = Window("join", T0, T0 + 1_000, T0 + 2_000)
    sent = {"a": T0, "b": T0 + 1_500, "c": T0 + 5_000, "d": T0 - 500, "lost": T0}
    decided = {"a": T0 + 1_200, "b": T0 + 2_300, "c": T0 + 5_050, "d": T0 - 400}
    out = latency_split(sent, decided, [window])
    assert out["orders_in_rebalance"] == 2  # a (decided inside), b (sent inside); d done before, c after
    assert out["max_decision_ms_in_rebalance"] == 1_200
    assert out["orders_outside_rebalance"] == 2
    assert out["p99_decision_ms_outside_rebalance"] == 100


def test_decisions_are_read_from_the_workers_prometheus_text() -> None:
    text = (
        "# HELP stockflow_engine_records_out_total Records published, per output topic\n"
        "# TYPE stockflow_engine_records_out_total counter\n"
        'stockflow_engine_records_out_total{topic="reservation.results"} 42.0\n'
        'stockflow_engine_records_out_total{topic="order.states"} 99.0\n'
    )
    assert decisions_from_metrics(text) == 42.0
    assert decisions_from_metrics("") == 0.0


def test_engine_figures_sum_every_workers_last_stats() -> None:
    stats = [{"batches": 10, "events": 80, "local_events": 20, "changelog_records": 30, "cpu_s": 0.5},
             {"batches": 10, "events": 100, "local_events": 0, "changelog_records": 10, "cpu_s": 0.3}]  # fmt: skip
    out = engine_figures(stats, orders=100)
    assert out["engine_batches"] == 20
    assert out["changelog_records_per_order"] == 0.4
    assert out["engine_events_per_batch"] == 10.0
    assert out["engine_cpu_us_per_order"] == 8_000


def test_engine_cycles_are_read_over_the_window_not_the_workers_lifetime() -> None:
    def engine(at_ms: int, commits: float, events: float, poll: float, apply: float, commit: float) -> Sample:
        return Sample(at_ms, {"engine.commits": commits, "engine.events": events, "engine.local_events": events,
                              "engine.poll_s": poll, "engine.apply_s": apply, "engine.commit_s": commit})  # fmt: skip

    # Stocking up: 500 small commits in 10 s. Under load, from 10 s to 20 s: 20 commits of 1,000 events
    # (500 read, 500 applied where they were written), 4 s of them committing.
    samples = {"worker-0": [engine(0, 0, 0, 0, 0, 0), engine(10_000, 500, 500, 5, 2, 3),
                            engine(20_000, 520, 10_500, 5.5, 7.5, 7)],
               "sink": [Sample(0, {"cpu_s": 0.0}), Sample(20_000, {"cpu_s": 3.0})]}  # fmt: skip
    kinds = {"worker-0": "worker", "sink": "sink"}
    out = engine_cycle_figures(samples, kinds, 10_000, 20_000)
    assert out == {"engine_commits_per_s": 2.0, "engine_events_per_commit": 1_000.0, "engine_commit_ms": 200.0,
                   "engine_time_split": {"poll": 0.05, "apply": 0.55, "commit": 0.4}}  # fmt: skip
    # No worker answered: nothing is made up.
    assert engine_cycle_figures({}, {"worker-0": "worker"}, 10_000, 20_000)["engine_commits_per_s"] is None


def test_the_hot_share_sends_that_share_of_orders_to_one_sku_alone() -> None:
    plain = build_schedule("steady", 200, 30, seed=3)
    sched = build_schedule("steady", 200, 30, seed=3, hot_share=0.25)
    sku = hot_sku_name(3)
    hot = hot_orders(sched, sku)
    assert 0.2 < len(hot) / sched.orders < 0.3
    assert sku in sched.skus and sku in sched.initial_stock and sku not in plain.skus
    assert len(sched.skus) == len(plain.skus) + 1
    assert hot_orders(plain, sku) == set()
    # No hot share: the same traffic as before the option existed.
    assert build_schedule("steady", 200, 30, seed=3, hot_share=0.0).events == plain.events
    with pytest.raises(ValueError, match="hot_share"):
        build_schedule("steady", 200, 30, seed=3, hot_share=1.5)


def test_hot_sku_figures() -> None:
    sent = {"h1": T0, "h2": T0 + 100, "o1": T0}
    decided = {"h1": T0 + 50, "h2": T0 + 400, "o1": T0 + 20}
    out = hot_sku_figures({"h1", "h2", "h3"}, sent, decided, window_s=1.0)
    assert (out["hot_sku_orders"], out["hot_sku_decided"], out["hot_sku_decisions_per_s"]) == (3, 2, 2.0)
    assert (out["p99_decision_ms_hot_sku"], out["p99_decision_ms_other_orders"]) == (300, 20)
