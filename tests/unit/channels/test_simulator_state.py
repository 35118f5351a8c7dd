"""The simulator's state without a server: apps over time, the token bucket, the apps file, and the
order in which a call is judged (fault, signature, rotated key, expiry, rate limit, body)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.channels import platforms as P
from agents.channels.platforms import CHANNELS, Credentials, ErrorKind, OutcomeKind
from agents.channels.simulator import (
    AppSpec,
    AppState,
    Marketplace,
    SimulatorError,
    TokenBucket,
    ensure_apps_file,
    load_apps,
)
from streams.engine.clock import Clock

KEY, OLD, NEW = "jd-app", "old-secret", "new-secret"


def test_an_app_rotates_at_its_time_and_remembers_the_secret_it_retired() -> None:
    app = AppState("jd", KEY, [(0, OLD)])
    app.rotate(1000, NEW)
    assert (app.current(999), app.retired(999)) == (OLD, [])
    assert (app.current(1000), app.retired(1000)) == (NEW, [OLD])
    app.rotate(500, "sooner")  # a rotation scheduled earlier drops the later one
    assert app.current(2000) == "sooner" and app.retired(2000) == [OLD]
    assert AppState("jd", KEY, [(5000, OLD)]).current(4999) is None  # not valid yet
    expiring = AppState("jd", KEY, [(0, OLD)], expires_at_ms=100)
    assert not expiring.expired(99) and expiring.expired(100)
    assert OLD not in json.dumps(expiring.describe(0)) and expiring.describe(0)["fingerprint"] == P.fingerprint(OLD)


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, capacity=3.0)
    assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(10.25) is False and bucket.take(10.5) is True  # one token per half second
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # never more than the capacity


def test_apps_files_in_json_and_toml_and_their_errors(tmp_path: Path) -> None:
    toml = tmp_path / "apps.toml"
    toml.write_text('[[jd]]\napp_key = "a"\nsecret = "s"\nexpires_at_ms = 5\n')
    assert load_apps(toml) == {"jd": [AppSpec(app_key="a", secret="s", expires_at_ms=5)]}
    for text, problem in [('{"ebay": []}', "unknown channels"), ('{"jd": [{"app_key": "a"}]}', "secret"),
                          ("{", "cannot read")]:  # fmt: skip
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(SimulatorError, match=problem):
            load_apps(bad)
    generated = tmp_path / "home" / "sim" / "apps.json"
    apps = ensure_apps_file(generated)
    assert sorted(apps) == sorted(CHANNELS) and ensure_apps_file(generated) == apps
    assert generated.stat().st_mode & 0o777 == 0o600
    assert "hunter2" not in repr(AppSpec(app_key="k", secret="hunter2"))


def market() -> Marketplace:
    return Marketplace({"jd": [AppSpec(app_key=KEY, secret=OLD)]}, latency_ms=0, jitter_ms=0, seed=1, clock=Clock())


def answer(m: Marketplace, body: dict[str, object], secret: str = OLD, shift_ms: int = 0) -> P.Outcome:
    signed = P.sign_request("jd", Credentials(KEY, secret), "refund", body, m.now_ms() + shift_ms)
    result = m.handle("jd", signed.path, signed.query, signed.headers, signed.body)
    return P.classify("jd", result.status, result.body)


def test_a_call_is_judged_in_the_platforms_order() -> None:
    m = market()
    body = P.refund_body("jd", "R-1", 100)
    m.configure("jd", error_rate=1.0)
    assert answer(m, body, secret="wrong").error is ErrorKind.SERVER_ERROR  # the gateway is down before all else
    m.configure("jd", error_rate=0.0)
    m.rotate("jd", m.now_ms() - 1, NEW)
    assert answer(m, body).error is ErrorKind.INVALID_API_KEY  # signed with the retired secret
    assert answer(m, body, secret="never-was").error is ErrorKind.BAD_SIGNATURE
    m.set_expiry("jd", m.now_ms() - 1)
    assert answer(m, body, secret=NEW).error is ErrorKind.EXPIRED_CREDENTIALS
    m.set_expiry("jd", None)
    m.configure("jd", qps=0.001, burst=1)
    assert answer(m, body, secret=NEW).kind is OutcomeKind.OK
    assert answer(m, body, secret=NEW).error is ErrorKind.RATE_LIMITED
    assert [r.refund_id for r in m.refunds.values()] == ["R-1"]
    assert m.counters["jd"]["refused:invalid_api_key"] == 1


def test_replacing_an_app_drops_its_rotations_and_reset_forgets_effects() -> None:
    m = market()
    m.rotate("jd", 0, NEW)
    m.add_app("jd", AppSpec(app_key=KEY, secret=OLD))
    assert answer(m, P.refund_body("jd", "R-1", 100)).kind is OutcomeKind.OK
    assert m.refunds and m.calls
    m.reset()
    assert not m.refunds and not m.calls and m.apps["jd"]
    m.reset(keep_apps=False)
    assert answer(m, P.refund_body("jd", "R-1", 100)).error is ErrorKind.INVALID_API_KEY
    with pytest.raises(KeyError, match="no app"):
        m.rotate("jd", 0, NEW, app_key="nobody")


def batch_answer(m: Marketplace, channel: str, figures: list[P.StockUpdate], body: dict[str, object] | None = None
                 ) -> P.Outcome:  # fmt: skip
    payload = body if body is not None else P.stock_batch_body(channel, figures)
    signed = P.sign_request(channel, Credentials(KEY, OLD), "stock_batch", payload, m.now_ms())
    result = m.handle(channel, signed.path, signed.query, signed.headers, signed.body)
    return P.classify(channel, result.status, result.body)


@pytest.mark.parametrize("channel", CHANNELS)
def test_a_stock_batch_applies_each_figure_by_the_version_rule_for_one_token(channel: str) -> None:
    m = Marketplace({channel: [AppSpec(app_key=KEY, secret=OLD)]}, latency_ms=0, jitter_ms=0, seed=1, clock=Clock())
    m.configure(channel, qps=0.001, burst=2)  # two calls, whatever they carry
    first = batch_answer(m, channel, [P.StockUpdate("A", 10, 5), P.StockUpdate("B", 3, 5)])
    assert first.kind is OutcomeKind.OK and [i.kind for i in first.items or ()] == [OutcomeKind.OK] * 2
    second = batch_answer(m, channel, [P.StockUpdate("A", 99, 5), P.StockUpdate("B", 2, 6), P.StockUpdate("C", 7, 1),
                                       P.StockUpdate("D", 1, 4)])  # fmt: skip
    assert second.kind is OutcomeKind.OK  # a stale figure does not fail the call
    assert [(i.sku, i.kind) for i in second.items or ()] == [
        ("A", OutcomeKind.STALE), ("B", OutcomeKind.OK), ("C", OutcomeKind.OK), ("D", OutcomeKind.OK)]  # fmt: skip
    assert {r["sku"]: (r["quantity"], r["version"]) for r in m.stock_json(channel)} == {
        "A": (10, 5), "B": (2, 6), "C": (7, 1), "D": (1, 4)}  # fmt: skip
    # One record per figure, numbered by its call, readable like a one-SKU update's body.
    records = m.calls_json(channel, "stock")
    assert [(r["batch"], r["result"], r["idempotency_key"]) for r in records] == [
        (1, "applied", "A:5"), (1, "applied", "B:5"), (2, "stale", "A:5"), (2, "applied", "B:6"),
        (2, "applied", "C:1"), (2, "applied", "D:4")]  # fmt: skip
    assert [P.parse_stock(channel, r["body"]).quantity for r in records] == [10, 3, 99, 2, 7, 1]
    counters = m.counters[channel]
    assert (counters["stock_batch:calls"], counters["stock_batch:items"], counters["stock:applied"],
            counters["stock:stale"]) == (2, 6, 5, 1)  # fmt: skip
    # The third call is over the limit, however many figures it carries: nothing of it applied.
    third = batch_answer(m, channel, [P.StockUpdate("E", 1, 1), P.StockUpdate("F", 1, 1)])
    assert third.error is ErrorKind.RATE_LIMITED and len(m.stock_json(channel)) == 4


def test_a_stock_batch_the_platform_cannot_take_is_refused_whole() -> None:
    m = market()
    good = P.stock_batch_body("jd", [P.StockUpdate("A", 1, 1), P.StockUpdate("B", 2, 1)])
    items = good["skuStockList"]
    assert isinstance(items, list)
    for body in (
        {**good, "skuStockList": [*items, items[0]]},  # a SKU twice
        {**good, "skuStockList": [items[0], {**items[1], "stockNum": -2}]},
        {**good, "skuStockList": [{"skuId": f"S{n}", "stockNum": 1, "version": 1} for n in range(51)]},
    ):
        assert batch_answer(m, "jd", [], body).error is ErrorKind.BAD_REQUEST
    assert m.stock_json("jd") == [] and m.calls_json("jd") == [] and not m.counters["jd"]["stock_batch:calls"]


def test_a_refund_id_agreed_again_for_another_amount_or_order_is_refused_not_taken_as_done() -> None:
    """Found in review: "already agreed" came back for a refund id reused with 99,999 fen on another order, the
    connector took it as done and recorded a payment that was never made."""
    m = market()
    assert answer(m, P.refund_body("jd", "R-1", 100, channel_order_id="O1")).kind is OutcomeKind.OK
    assert answer(m, P.refund_body("jd", "R-1", 100, channel_order_id="O1")).kind is OutcomeKind.ALREADY_APPLIED
    assert answer(m, P.refund_body("jd", "R-1", 99_999, channel_order_id="O1")).kind is OutcomeKind.FATAL
    assert answer(m, P.refund_body("jd", "R-1", 100, channel_order_id="O2")).kind is OutcomeKind.FATAL
    assert m.refunds[("jd", "R-1")].duplicate_amount_mismatches == 2
