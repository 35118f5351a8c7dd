"""A shadow's candidate and settings, without a broker: what it reads live, what it writes under its prefix."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.refunds.run_refunds import refund_rules
from agents.routing.warehouse_view import WarehouseView
from agents.shadow.candidate import (
    LIVE_INPUTS,
    CandidateError,
    ShadowHome,
    check_name,
    make_candidate,
    shadow_settings,
    shadow_topic_prefix,
)
from agents.shadow.control import ShadowError, adopt
from streams.contract.topics import ALL_TOPICS
from streams.engine.changelog import changelog_topic
from streams.settings import Settings

DISTANCE_FIRST = '{"distance": 0.9, "sufficiency": 0, "on_time": 0.1, "cost": 0}'


@pytest.fixture
def live(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", topic_prefix="p.", app_id="shop", partitions=4)


def test_the_shadow_reads_the_live_inputs_and_writes_everything_else_under_its_prefix(live: Settings) -> None:
    candidate = make_candidate(live, "w09", DISTANCE_FIRST, None)
    shadow = shadow_settings(live, candidate, ShadowHome(live, "w09"))
    assert {"order.events", "stock.adjustments", "ops.overrides", "ops.clock", "refund.events"} == LIVE_INPUTS
    for spec in ALL_TOPICS:
        expected = f"p.{spec.name}" if spec.direction == "input" else f"p.shadow.w09.{spec.name}"
        assert shadow.topic(spec.name) == expected
    assert shadow_topic_prefix(live, "w09") == "p.shadow.w09."
    assert changelog_topic(shadow, "orders_by_id").startswith("p.shadow.w09.")
    assert changelog_topic(live, "orders_by_id") == "p.shop.orders_by_id.changelog"  # the live one unchanged
    assert (shadow.app_id, shadow.partitions, shadow.home) == ("shop.shadow.w09", 4, live.home)
    assert shadow.routing_weights == {"distance": 0.9, "sufficiency": 0.0, "on_time": 0.1, "cost": 0.0}
    assert WarehouseView.from_settings(shadow).weights == shadow.routing_weights
    assert live.routing_weights == {"distance": 0.4, "sufficiency": 0.3, "on_time": 0.2, "cost": 0.1}
    assert shadow.model_copy(update={"web_port": 1}).topic("alerts") == "p.shadow.w09.alerts"  # copies keep it


def test_a_candidate_refund_rule_file_is_kept_in_the_shadow_folder(live: Settings, tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text("[default]\nauto_approve_below_fen = 100000\n", encoding="utf-8")
    candidate = make_candidate(live, "limit-1000", None, rules)
    home = ShadowHome(live, "limit-1000")
    adopt(home, candidate)
    rules.write_text("[default]\nauto_approve_below_fen = 1\n", encoding="utf-8")  # edited after the start
    shadow = shadow_settings(live, home.load(), home)
    assert shadow.refund_rules_file == home.rules_file
    assert refund_rules(shadow).default.auto_approve_below_fen == 100_000
    assert refund_rules(live).default.auto_approve_below_fen == 50_000
    assert shadow.routing_weights == live.routing_weights  # not a routing candidate: the live weights
    assert "refund rules from" in home.load().describe()


@pytest.mark.parametrize(
    ("weights", "rules", "message"),
    [
        (None, None, "give a candidate"),
        ('{"distance": 0.9, "sufficiency": 0.3, "on_time": 0.2, "cost": 0.1}', None, "sum to 1"),
        ('{"distance": 1.0}', None, "exactly"),
        ("[0.9]", None, "JSON object"),
        ("distance=0.9", None, "--routing-weights"),
        (None, "[default]\nauto_approve_below = 1\n", "--refund-rules"),
        (None, "[channels.jd]\nauto_approve_limit = 1\n", "unknown refund rules"),
    ],
)
def test_a_candidate_the_live_pipeline_would_refuse_is_refused_at_start(
    live: Settings, tmp_path: Path, weights: str | None, rules: str | None, message: str
) -> None:
    path = None
    if rules is not None:
        path = tmp_path / "bad.toml"
        path.write_text(rules, encoding="utf-8")
    with pytest.raises(CandidateError, match=message):
        make_candidate(live, "bad", weights, path)


@pytest.mark.parametrize("name", ["", "Upper", "with.dot", "-dash-first", "x" * 41, "a b"])
def test_a_name_must_fit_in_topic_names_and_never_be_another_shadows_prefix(name: str) -> None:
    with pytest.raises(CandidateError):
        check_name(name)


def test_a_stopped_shadow_carries_on_only_with_its_own_rule(live: Settings) -> None:
    home = ShadowHome(live, "w09")
    first, resumed = adopt(home, make_candidate(live, "w09", DISTANCE_FIRST, None))
    assert not resumed
    again, resumed = adopt(home, make_candidate(live, "w09", DISTANCE_FIRST, None))
    assert resumed and again.created_ms == first.created_ms
    with pytest.raises(ShadowError, match=r"another candidate.*--delete-topics"):
        adopt(home, make_candidate(live, "w09", '{"distance": 1, "sufficiency": 0, "on_time": 0, "cost": 0}', None))
