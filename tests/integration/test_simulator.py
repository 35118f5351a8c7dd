"""The marketplace simulator over real HTTP on 127.0.0.1 (no broker): every channel's signed calls,
its refusals in the platform's own answers, rate limits, key rotation at a set time, expiry,
exactly-once refunds, stock version ordering, settlements a shop can verify, and ``stockflow sim up``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from agents.channels import platforms as P
from agents.channels import push_stock
from agents.channels.calls import ChannelCaller
from agents.channels.credentials import CredentialStore, StoredKey
from agents.channels.outbound import RETRY_FIRST_MS
from agents.channels.platforms import CHANNELS, Credentials, Endpoint, ErrorKind, OutcomeKind
from agents.channels.push_stock import StockLane
from agents.channels.sim_client import SimulatorClient
from agents.channels.simulator import AppSpec, Marketplace, SimulatorThread
from streams.devstack import procs
from streams.engine.retry import Backoff
from streams.settings import Settings
from tests.conftest import free_port
from tests.helpers import REPO_ROOT, wait_for
from tests.unit.channels.test_connectors import FakeConnector, send_due, ticket

MINUTE = 60_000


def creds(channel: str, generation: int = 1) -> Credentials:
    return Credentials(f"{channel}-app", f"{channel}-secret-{generation}")


def market(**kwargs: Any) -> Marketplace:
    apps = {c: [AppSpec(app_key=creds(c).app_key, secret=creds(c).secret)] for c in CHANNELS}
    return Marketplace(apps, latency_ms=0, jitter_ms=0, seed=7, **kwargs)


@dataclass
class Receiver:
    """The shop's callback URL: records each POST; answers 500 to the first ``fail_first`` of them."""

    fail_first: int = 0
    got: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    failing = receiver.refused < receiver.fail_first
                    if failing:
                        receiver.refused += 1
                    else:
                        url = urlsplit(self.path)
                        receiver.got.append({"path": url.path, "query": dict(parse_qsl(url.query)),
                                             "headers": dict(self.headers.items()), "body": body})  # fmt: skip
                self.send_response(500 if failing else 200)
                self.end_headers()
                self.wfile.write(b"busy" if failing else b"ok")

            def log_message(self, *_: object) -> None:
                pass

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/callbacks/settlement"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(market(), settle_backoff=Backoff(0.05, 0.2)) as running:
        yield running


@pytest.fixture
def admin(sim: SimulatorThread) -> Iterator[SimulatorClient]:
    with SimulatorClient(sim.base_url) as client:
        yield client


def call(
    sim: SimulatorThread,
    channel: str,
    endpoint: Endpoint,
    body: dict[str, Any],
    who: Credentials | None = None,
    now_ms: int | None = None,
    timeout_s: float = 10.0,
) -> tuple[int, dict[str, Any], P.Outcome]:
    """Sign and send one call as a connector would; the answer, and what ``classify`` makes of it."""
    signed = P.sign_request(
        channel, who or creds(channel), endpoint, body, sim.market.now_ms() if now_ms is None else now_ms
    )
    response = httpx.post(
        signed.url(sim.url(channel)), content=signed.body, headers=dict(signed.headers), timeout=timeout_s
    )
    return response.status_code, response.json(), P.classify(channel, response.status_code, response.content)


def refund(channel: str, refund_id: str = "R-1", amount_fen: int = 12_345) -> dict[str, Any]:
    return P.refund_body(channel, refund_id, amount_fen)


def stock(channel: str, version: int, quantity: int, sku: str = "SKU-1") -> dict[str, Any]:
    return P.stock_body(channel, sku, quantity, version)


def test_signed_calls_are_accepted_on_every_channel(sim: SimulatorThread, admin: SimulatorClient) -> None:
    for channel in CHANNELS:
        _, answer, outcome = call(sim, channel, "stock", stock(channel, 1, 40))
        assert outcome.kind is OutcomeKind.OK, (channel, answer)
        _, answer, outcome = call(sim, channel, "refund", refund(channel))
        assert outcome.kind is OutcomeKind.OK, (channel, answer)
    calls = admin.calls()
    assert sorted((c["channel"], c["endpoint"], c["result"]) for c in calls) == sorted(
        (c, e, "applied") for c in CHANNELS for e in ("stock", "refund")
    )
    assert {c["idempotency_key"] for c in calls} == {"SKU-1:1", "R-1"}
    assert [(s["channel"], s["quantity"], s["version"]) for s in admin.stock(sku="SKU-1")] == [
        (c, 40, 1) for c in CHANNELS
    ]
    assert [(r["channel"], r["agreed"], r["amount_fen"]) for r in admin.refunds()] == [(c, 1, 12_345) for c in CHANNELS]
    assert admin.status()["channels"]["jd"]["counters"] == {"stock:applied": 1, "refund:applied": 1}


def test_refusals_come_in_each_platforms_own_answer(sim: SimulatorThread, admin: SimulatorClient) -> None:
    now = sim.market.now_ms()
    for channel in CHANNELS:
        wrong = Credentials(creds(channel).app_key, "not-the-secret")
        status, answer, outcome = call(sim, channel, "refund", refund(channel), wrong)
        expected_status, expected = P.error_answer(channel, ErrorKind.BAD_SIGNATURE)
        assert status == expected_status and (outcome.kind, outcome.error) == (
            OutcomeKind.CREDENTIAL,
            ErrorKind.BAD_SIGNATURE,
        )
        assert {k: v for k, v in (answer.get("error_response") or answer).items() if k != "request_id"} == (
            expected.get("error_response") or expected
        )
        _, _, outcome = call(sim, channel, "refund", refund(channel), Credentials("stranger", "x"))
        assert outcome.error is ErrorKind.INVALID_API_KEY and "Invalid API Key" in outcome.message
        # Signed 10 minutes and 1 s ago: outside every platform's window (tmall's is the widest).
        _, _, outcome = call(sim, channel, "refund", refund(channel), now_ms=now - 10 * MINUTE - 1000)
        assert (outcome.kind, outcome.error) == (OutcomeKind.RETRIABLE, ErrorKind.STALE_TIMESTAMP)
        _, _, outcome = call(sim, channel, "stock", {"nonsense": True})
        assert (outcome.kind, outcome.error) == (OutcomeKind.FATAL, ErrorKind.BAD_REQUEST)
    assert admin.calls() == [] and admin.refunds() == []
    assert len(admin.rejections("pdd")) == 4


def test_the_rate_limit_answers_the_platforms_error_and_is_retriable(
    sim: SimulatorThread, admin: SimulatorClient
) -> None:
    admin.configure("jd", qps=0.001, burst=2)  # two calls now, the next token in 1000 s: no race with refill
    outcomes = [call(sim, "jd", "stock", stock("jd", v, 10))[2] for v in (1, 2, 3)]
    assert [o.kind for o in outcomes] == [OutcomeKind.OK, OutcomeKind.OK, OutcomeKind.RETRIABLE]
    assert outcomes[2].error is ErrorKind.RATE_LIMITED and outcomes[2].code == "61"
    assert call(sim, "pdd", "stock", stock("pdd", 3, 10))[2].kind is OutcomeKind.OK  # per app, per channel
    admin.configure("jd", qps=1000, burst=1000)
    assert call(sim, "jd", "stock", stock("jd", 3, 10))[2].kind is OutcomeKind.OK
    assert admin.status()["channels"]["jd"]["counters"]["refused:rate_limited"] == 1


def test_a_key_rotated_at_a_set_time_fails_old_calls_with_invalid_api_key(
    sim: SimulatorThread, admin: SimulatorClient
) -> None:
    old, new = creds("jd", 1), creds("jd", 2)
    rotation_at = admin.now_ms() + MINUTE
    described = admin.rotate("jd", rotation_at, new.secret)
    assert described["rotations_pending"] == [{"at_ms": rotation_at, "fingerprint": P.fingerprint(new.secret)}]
    assert new.secret not in json.dumps(admin.status())
    assert call(sim, "jd", "refund", refund("jd", "R-before"), old)[2].kind is OutcomeKind.OK
    assert call(sim, "jd", "refund", refund("jd", "R-early"), new)[2].error is ErrorKind.BAD_SIGNATURE  # not yet valid

    admin.advance_clock(2 * MINUTE)  # past the rotation; calls are signed with the simulator's clock
    status, answer, outcome = call(sim, "jd", "refund", refund("jd", "R-after"), old)
    assert (status, outcome.kind, outcome.error) == (200, OutcomeKind.CREDENTIAL, ErrorKind.INVALID_API_KEY)
    assert answer["error_response"]["en_desc"] == "Invalid API Key"
    assert call(sim, "jd", "refund", refund("jd", "R-after"), new)[2].kind is OutcomeKind.OK
    assert (
        call(sim, "tmall", "refund", refund("tmall", "R-after"))[2].kind is OutcomeKind.OK
    )  # other channels untouched
    assert [r["refund_id"] for r in admin.refunds("jd")] == ["R-before", "R-after"]
    app = admin.status()["channels"]["jd"]["apps"][0]
    assert (app["fingerprint"], app["rotated_away"], app["rotations_pending"]) == (P.fingerprint(new.secret), 1, [])


def test_expired_credentials_get_the_expired_answer(sim: SimulatorThread, admin: SimulatorClient) -> None:
    expires_at = admin.now_ms() + MINUTE
    for channel in CHANNELS:
        admin.set_expiry(channel, expires_at)
        assert call(sim, channel, "stock", stock(channel, 1, 5))[2].kind is OutcomeKind.OK
    admin.advance_clock(MINUTE)
    for channel in CHANNELS:
        _, _, outcome = call(sim, channel, "stock", stock(channel, 2, 5))
        assert (outcome.kind, outcome.error) == (OutcomeKind.CREDENTIAL, ErrorKind.EXPIRED_CREDENTIALS), channel
    assert all(s["version"] == 1 for s in admin.stock())
    admin.set_expiry("own", None)
    assert call(sim, "own", "stock", stock("own", 2, 5))[2].kind is OutcomeKind.OK


def test_a_refund_is_agreed_once_however_often_and_concurrently_it_is_sent(
    sim: SimulatorThread, admin: SimulatorClient
) -> None:
    for channel in CHANNELS:
        first, second = (call(sim, channel, "refund", refund(channel, "R-7"))[2] for _ in range(2))
        assert (first.kind, second.kind) == (OutcomeKind.OK, OutcomeKind.ALREADY_APPLIED) and second.done
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda _: call(sim, "kuaishou", "refund", refund("kuaishou", "R-race"))[2], range(16)))
    assert sorted(o.kind.value for o in outcomes) == ["already_applied"] * 15 + ["ok"]
    race = admin.refund("kuaishou", "R-race")
    assert race is not None and (race["agreed"], race["duplicate_attempts"]) == (1, 15)
    assert all(r["agreed"] == 1 for r in admin.refunds())
    assert admin.refund("jd", "R-never") is None
    assert len(admin.calls("kuaishou", "refund", result="applied")) == 2
    assert len(admin.calls("kuaishou", "refund", result="duplicate")) == 16


def test_a_call_that_times_out_may_have_applied_and_its_replay_says_so(
    sim: SimulatorThread, admin: SimulatorClient
) -> None:
    admin.configure("douyin", extra_latency_ms=3000)
    with pytest.raises(httpx.TimeoutException):
        call(sim, "douyin", "refund", refund("douyin", "R-slow"), timeout_s=0.3)
    admin.configure("douyin", extra_latency_ms=0)
    assert call(sim, "douyin", "refund", refund("douyin", "R-slow"))[2].kind is OutcomeKind.ALREADY_APPLIED
    assert admin.refund("douyin", "R-slow")["agreed"] == 1  # type: ignore[index]


def test_stock_keeps_the_newest_version(sim: SimulatorThread, admin: SimulatorClient) -> None:
    for channel in CHANNELS:
        kinds = [
            call(sim, channel, "stock", stock(channel, v, q))[2].kind for v, q in ((2, 20), (1, 10), (2, 99), (3, 30))
        ]
        assert kinds == [OutcomeKind.OK, OutcomeKind.STALE, OutcomeKind.STALE, OutcomeKind.OK], channel
        (level,) = admin.stock(channel, "SKU-1")
        assert (level["quantity"], level["version"], level["changes"], level["stale_attempts"]) == (30, 3, 2, 2)
        assert [(h["version"], h["quantity"]) for h in level["history"]] == [(2, 20), (3, 30)]
    since = admin.calls("own")[-1]["accepted_at_ms"]
    assert [c["idempotency_key"] for c in admin.calls("own", since_ms=since)][-1] == "SKU-1:3"


def test_calls_are_kept_bounded_but_summaries_whole() -> None:
    with SimulatorThread(market(calls_kept=3)) as sim:
        for version in range(1, 6):
            assert call(sim, "own", "stock", stock("own", version, version))[2].kind is OutcomeKind.OK
        with SimulatorClient(sim.base_url) as admin:
            assert [c["idempotency_key"] for c in admin.calls()] == ["SKU-1:3", "SKU-1:4", "SKU-1:5"]
            assert admin.stock("own")[0]["changes"] == 5


def test_injected_faults_answer_5xx_and_classify_as_retriable(sim: SimulatorThread, admin: SimulatorClient) -> None:
    now = admin.now_ms()
    admin.configure("pdd", outages=[(now - 1000, now + 10 * MINUTE)])
    status, _, outcome = call(sim, "pdd", "refund", refund("pdd"))
    assert status == 503 and (outcome.kind, outcome.error) == (OutcomeKind.RETRIABLE, ErrorKind.SERVER_ERROR)
    admin.configure("pdd", outages=[])
    admin.configure(error_rate=1.0)  # every channel
    assert all(call(sim, c, "stock", stock(c, 1, 1))[0] >= 500 for c in CHANNELS)
    admin.configure(error_rate=0.0)
    assert call(sim, "pdd", "refund", refund("pdd"))[2].kind is OutcomeKind.OK
    assert admin.refund("pdd", "R-1")["agreed"] == 1  # type: ignore[index]


def test_settlements_arrive_signed_and_verify_at_the_shop(sim: SimulatorThread, admin: SimulatorClient) -> None:
    """Each at its channel's own route (``{channel}`` in the URL), as the intake takes them: one URL for all sent
    every channel's settlement to one channel's route, which refused the others (found trying the README)."""
    receiver = Receiver(fail_first=1)  # the shop is busy once: the simulator tries again
    try:
        admin.set_settlement(receiver.url.replace("/settlement", "/{channel}/settlement"), delay_ms=0)
        for channel in CHANNELS:
            body = P.refund_body(channel, f"R-{channel}", 4_990, channel_order_id=f"O-{channel}")
            assert call(sim, channel, "refund", body)[2].kind is OutcomeKind.OK
        wait_for(lambda: len(receiver.got) == len(CHANNELS), 30, "a settlement from every channel")
        for got in receiver.got:
            channel = next(c for c in CHANNELS if f"R-{c}".encode() in got["body"])
            assert got["path"] == f"/callbacks/{channel}/settlement"
            verdict = P.verify_callback(channel, creds(channel).secret, got["query"], got["headers"], got["body"],
                                        sim.market.now_ms(), app_key=creds(channel).app_key)  # fmt: skip
            assert verdict.ok, (channel, verdict)
            assert verdict.operation == P.SETTLEMENT_EVENTS[channel] and verdict.payload is not None
            settled = P.parse_settlement(channel, verdict.payload)
            assert (settled.refund_id, settled.amount_fen, settled.channel_order_id) == (f"R-{channel}", 4_990,
                                                                                        f"O-{channel}")  # fmt: skip
            forged = P.verify_callback(channel, "guess", got["query"], got["headers"], got["body"], sim.market.now_ms())
            assert not forged.ok
        settlements = wait_for(
            # A pending settlement is not listed: the shop may hold the last one while the simulator has yet
            # to read its answer, so wait for all of them, not for every listed one.
            lambda: (rows := admin.settlements()) and len(rows) == len(CHANNELS)
            and all(r["settlement"] == "delivered" for r in rows) and rows,
            10, "every settlement marked delivered",
        )  # fmt: skip
        assert len(settlements) == len(CHANNELS)
        assert sum(r["settlement_attempts"] for r in settlements) == len(CHANNELS) + 1
    finally:
        receiver.close()


def test_a_settlement_nobody_takes_is_marked_failed(sim: SimulatorThread, admin: SimulatorClient) -> None:
    receiver = Receiver(fail_first=100)
    try:
        admin.set_settlement(receiver.url, delay_ms=0)
        assert call(sim, "own", "refund", refund("own", "R-lost"))[2].kind is OutcomeKind.OK
        (row,) = wait_for(
            lambda: [r for r in admin.settlements() if r["settlement"] == "failed"], 30, "a failed settlement"
        )
        assert row["settlement_attempts"] == 5 and "500" in row["settlement_error"]
    finally:
        receiver.close()


def test_the_admin_api_refuses_what_it_cannot_read(sim: SimulatorThread) -> None:
    base = sim.base_url + "/_sim"
    assert httpx.post(f"{base}/config", json={"channel": "jd", "qps": 0}).status_code == 400
    assert httpx.post(f"{base}/rotate", json={"channel": "ebay", "at_ms": 1, "new_secret": "x"}).status_code == 404
    assert httpx.post(f"{base}/rotate", content=b"[]").status_code == 400
    assert httpx.get(f"{base}/calls", params={"since_ms": "soon"}).status_code == 400
    assert (
        httpx.post(f"{base}/expiry", json={"channel": "jd", "expires_at_ms": 1, "app_key": "nobody"}).status_code == 404
    )
    assert httpx.post(sim.base_url + "/jd/nowhere", content=b"{}").status_code == 404
    assert httpx.get(f"{base}/healthz").json()["ok"] is True


def test_stockflow_sim_up_status_down(tmp_path: Path) -> None:
    port = free_port()
    apps = tmp_path / "apps.toml"
    apps.write_text('[[jd]]\napp_key = "jd-app"\nsecret = "jd-secret-1"\nexpires_at_ms = 4102444800000\n')
    env = {**os.environ, "STOCKFLOW_HOME": str(tmp_path / "home"), "STOCKFLOW_SIM_PORT": str(port),
           "STOCKFLOW_SIM_LATENCY_MS": "0", "STOCKFLOW_SIM_JITTER_MS": "0", "COLUMNS": "200"}  # fmt: skip

    def stockflow(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "agents.cli", "sim", *args]
        return subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)

    up = stockflow("up", "--apps", str(apps))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"127.0.0.1:{port}" in up.stdout
        assert "already running" in stockflow("up").stdout
        with SimulatorClient(f"http://127.0.0.1:{port}") as admin:
            assert admin.healthy()
            signed = P.sign_request("jd", creds("jd"), "refund", refund("jd"), admin.now_ms())
            answer = httpx.post(signed.url(admin.channel_url("jd")), content=signed.body, headers=dict(signed.headers))
            assert P.classify("jd", answer.status_code, answer.content).kind is OutcomeKind.OK
            assert admin.refund("jd", "R-1")["agreed"] == 1  # type: ignore[index]
        status = stockflow("status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "jd-app" in status.stdout and P.fingerprint("jd-secret-1") in status.stdout
        assert "jd-secret-1" not in status.stdout and "refund:applied 1" in status.stdout
    finally:
        down = stockflow("down")
    assert "stopped" in down.stdout and not procs.port_open("127.0.0.1", port)
    after = stockflow("status")
    assert after.returncode == 1 and "not started" in after.stdout


def test_sim_up_generates_apps_once_and_keeps_them(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "STOCKFLOW_HOME": str(tmp_path / "home"), "STOCKFLOW_SIM_PORT": str(port)}
    cmd = [sys.executable, "-m", "agents.cli", "sim"]
    try:
        up = subprocess.run([*cmd, "up"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert up.returncode == 0, up.stdout + up.stderr
        apps_file = tmp_path / "home" / "sim" / "apps.json"
        assert oct(apps_file.stat().st_mode & 0o777) == "0o600"
        apps = json.loads(apps_file.read_text())
        assert sorted(apps) == sorted(CHANNELS)
        app = apps["pdd"][0]
        with SimulatorClient(f"http://127.0.0.1:{port}") as admin:
            signed = P.sign_request("pdd", Credentials(app["app_key"], app["secret"]), "stock", stock("pdd", 1, 3),
                                    admin.now_ms())  # fmt: skip
            answer = httpx.post(signed.url(admin.channel_url("pdd")), content=signed.body, headers=dict(signed.headers))
            assert P.classify("pdd", answer.status_code, answer.content).kind is OutcomeKind.OK
    finally:
        subprocess.run([*cmd, "down"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert json.loads(apps_file.read_text()) == apps


def test_a_platform_keeping_no_version_sets_whatever_lands_last(sim: SimulatorThread, admin: SimulatorClient) -> None:
    """As the platforms' own stock APIs do: a call a gateway held lands after a newer one and sets its older figure."""
    admin.configure("own", honors_versions=False, late_calls=1, late_apply_ms=600)
    with pytest.raises(httpx.TimeoutException):
        call(sim, "own", "stock", stock("own", 100, 10), timeout_s=0.2)
    assert call(sim, "own", "stock", stock("own", 200, 20))[2].kind is OutcomeKind.OK
    wait_for(lambda: admin.stock("own", "SKU-1")[0]["quantity"] == 10, timeout_s=5, what="the held call landing")
    assert [(h["version"], h["quantity"]) for h in admin.stock("own", "SKU-1")[0]["history"]] == [(200, 20), (100, 10)]


def own_lane(sim: SimulatorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             doubt_ms: int) -> tuple[list[int], FakeConnector, StockLane]:  # fmt: skip
    """The own shop's stock lane against the simulator over HTTP, calls timing out after 0.2 s, not retried; its
    clock (``clock[0]``, ms) set by the test."""
    clock = [0]
    monkeypatch.setattr(push_stock, "monotonic_ms", lambda: clock[0])
    store = CredentialStore(tmp_path / "credentials.json")
    store.set_key(StoredKey("own", creds("own"), date(2030, 1, 1), 0))
    settings = Settings(marketplace_url=sim.base_url, connector_call_timeout_s=0.2)
    connector = FakeConnector(ChannelCaller(settings, store, budget_s=0))
    return clock, connector, StockLane("own", connector, window_ms=0, doubt_ms=doubt_ms)  # type: ignore[arg-type]


@pytest.mark.parametrize("doubt_ms", [0, 5_000])
def test_a_figure_sent_after_a_lost_call_goes_once_more_when_that_call_can_no_longer_land(
    sim: SimulatorThread, admin: SimulatorClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, doubt_ms: int
) -> None:
    """A stock call times out at the connector while the platform's gateway holds it; the SKU's next figure goes
    through; then the held call lands and the channel shows the older figure - stock since sold, on a platform
    that keeps no version. With ``STOCKFLOW_CONNECTOR_IN_DOUBT_MS`` (``doubt_ms``) the newer figure goes once more
    when the held call can no longer land, and its record stays open until then; without it, the channel keeps
    the older figure."""
    clock, connector, lane = own_lane(sim, tmp_path, monkeypatch, doubt_ms)
    admin.configure("own", honors_versions=False, late_calls=1, late_apply_ms=600)
    lane.offer("SKU-1", 10, 100, ticket(1), "stock.levels/0/1")
    assert send_due(lane, 0) == 1 and connector.finished == []  # no answer: it goes again after a backoff
    lane.offer("SKU-1", 20, 200, ticket(2), "stock.levels/0/2")  # the pool moved on meanwhile
    clock[0] = RETRY_FIRST_MS
    assert send_due(lane, clock[0]) == 1
    wait_for(lambda: admin.stock("own", "SKU-1")[0]["quantity"] == 10, timeout_s=5, what="the held call landing")
    assert connector.finished == ([ticket(1)] if doubt_ms else [ticket(1), ticket(2)])
    clock[0] = doubt_ms + 1
    send_due(lane, clock[0])
    (shown,) = admin.stock("own", "SKU-1")
    if doubt_ms:
        assert (shown["quantity"], shown["version"]) == (20, 200)
        assert connector.finished == [ticket(1), ticket(2)] and lane.pending() == 0
    else:
        assert (shown["quantity"], shown["version"]) == (10, 100)  # what the setting is for


def test_two_lost_calls_in_a_row_still_end_with_the_newest_figure(
    sim: SimulatorThread, admin: SimulatorClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the older of two lost calls was forgotten when the newer one was lost too."""
    clock, connector, lane = own_lane(sim, tmp_path, monkeypatch, 30_000)
    admin.configure("own", honors_versions=False, late_calls=1, late_apply_ms=2_000)  # v100 held 2 s
    lane.offer("SKU-1", 10, 100, ticket(1), "stock.levels/0/1")
    assert send_due(lane, 0) == 1 and connector.finished == []  # v100: no answer
    lane.offer("SKU-1", 20, 200, ticket(2), "stock.levels/0/2")
    admin.configure("own", late_calls=1, late_apply_ms=300)  # the next call held 0.3 s
    clock[0] = 1_000
    assert send_due(lane, clock[0]) == 1 and ticket(2) not in connector.finished  # v200: no answer either
    clock[0] = 3_000
    assert send_due(lane, clock[0]) == 1  # v200 again: applied
    wait_for(lambda: admin.stock("own", "SKU-1")[0]["quantity"] == 10, timeout_s=5, what="held v100 landing")
    time.sleep(0.3)
    clock[0] = 60_000  # long past every lost call's time to land
    send_due(lane, clock[0])
    (shown,) = admin.stock("own", "SKU-1")
    assert (shown["quantity"], shown["version"]) == (20, 200), "the channel ends on the older figure"


@pytest.mark.parametrize("replayed", [False, True])
def test_a_connector_started_again_ends_on_the_newest_figure_after_its_earlier_lifes_lost_call(
    sim: SimulatorThread, admin: SimulatorClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replayed: bool
) -> None:
    """The connector's earlier life sent v100, lost its answer (the gateway holds it) and died (``kill -9``): its
    record stayed open. The next life reads the SKU's records again from there, v200 among them, and sends v200;
    then the held v100 lands. Told the partition's end at its assignment (``PushQueue.replayed``), it sends v200
    once more when v100 can no longer land; without it, the channel keeps v100."""
    _, connector, earlier = own_lane(sim, tmp_path, monkeypatch, 5_000)
    admin.configure("own", honors_versions=False, late_calls=1, late_apply_ms=600)
    earlier.offer("SKU-1", 10, 100, ticket(1), "stock.levels/0/1")
    assert send_due(earlier, 0) == 1 and connector.finished == []  # no answer; then the process is killed
    clock, connector, lane = own_lane(sim, tmp_path, monkeypatch, 5_000)
    if replayed:
        lane.pushes.replayed({("stock.levels", 0): 3}, clock[0])
    lane.offer("SKU-1", 10, 100, ticket(1), "stock.levels/0/1")
    lane.offer("SKU-1", 20, 200, ticket(2), "stock.levels/0/2")
    assert send_due(lane, clock[0]) == 1
    wait_for(lambda: admin.stock("own", "SKU-1")[0]["quantity"] == 10, timeout_s=5, what="the held call landing")
    clock[0] = 5_001
    send_due(lane, clock[0])
    (shown,) = admin.stock("own", "SKU-1")
    if replayed:
        assert (shown["quantity"], shown["version"]) == (20, 200)
        assert connector.finished == [ticket(1), ticket(2)] and lane.pending() == 0
    else:
        assert (shown["quantity"], shown["version"]) == (10, 100)  # what it is for
