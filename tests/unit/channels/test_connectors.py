"""The outbound connectors' pure parts, and one call made against a fake platform (no network): offsets
committed only past finished records, stock pushes coalesced and never older, the rate limit, the
failing alert, the records written, and the call path's signing, retries and classification."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import httpx
import pytest

from agents.channels import platforms as pf
from agents.channels.calls import CallResult, ChannelCaller, marketplace_url, rate_per_s
from agents.channels.credentials import CredentialStore, StoredKey
from agents.channels.failed_queue import ReplaySummary
from agents.channels.issue_refunds import RefundCall
from agents.channels.outbound import (
    FAILING_ALERT,
    FailingWatch,
    OffsetTracker,
    PushQueue,
    Ticket,
    TokenBucket,
    percentiles,
    refund_issued,
    stock_key,
)
from agents.channels.push_stock import MAX_CALLS_IN_FLIGHT, calls_in_flight, level_version
from streams.contract.reasons import Reason
from streams.engine.clock import wall_ms
from streams.settings import Settings

SECRET = "fake-platform-secret"


# ---- offsets -------------------------------------------------------------------------------------


def test_offsets_are_committed_only_up_to_the_oldest_unfinished_record() -> None:
    tracker = OffsetTracker()
    tp = ("t", 0)
    a, b, c = (tracker.begin("t", 0, offset) for offset in (10, 11, 12))
    assert tracker.commit_points({tp: 13}) == {tp: 10}
    tracker.finish(c)
    tracker.finish(b)
    assert tracker.commit_points({tp: 13}) == {tp: 10}  # 10 is still being worked on
    assert tracker.finish(a)
    assert tracker.commit_points({tp: 13}) == {tp: 13}  # nothing open: the consumer's position
    assert tracker.in_flight() == 0


def test_a_record_with_several_pieces_is_done_when_all_are() -> None:
    tracker = OffsetTracker()
    ticket = tracker.begin("t", 1, 5, parts=3)
    assert not tracker.finish(ticket)
    assert not tracker.finish(ticket)
    assert tracker.commit_points({("t", 1): 6}) == {("t", 1): 5}
    assert tracker.finish(ticket)
    assert tracker.commit_points({("t", 1): 6}) == {("t", 1): 6}
    done_at_once = tracker.begin("t", 1, 6, parts=0)
    assert tracker.commit_points({("t", 1): 7}) == {("t", 1): 7}
    assert not tracker.finish(done_at_once)


def test_revoked_partitions_are_forgotten_and_partitions_without_a_position_skipped() -> None:
    tracker = OffsetTracker()
    ticket = tracker.begin("t", 0, 3)
    tracker.begin("t", 1, 8)
    tracker.forget([("t", 0)])
    assert not tracker.finish(ticket)  # the next owner reads it again
    assert tracker.commit_points({("t", 0): 4, ("t", 1): 9, ("t", 2): -1001}) == {("t", 0): 4, ("t", 1): 8}


# ---- stock pushes --------------------------------------------------------------------------------


def ticket(offset: int) -> Ticket:
    return Ticket("stock.levels", 0, offset)


def test_pushes_wait_the_window_and_the_newest_figure_replaces_an_unsent_one() -> None:
    queue = PushQueue(window_ms=100)
    assert queue.offer("A", 10, 1000, ticket(1), "src1", now_ms=0)
    assert queue.offer("B", 4, 1000, ticket(2), "src2", now_ms=20)
    assert queue.offer("A", 7, 1200, ticket(3), "src3", now_ms=50)
    assert queue.take(99) is None
    push = queue.take(100)
    assert push is not None
    assert (push.sku, push.quantity, push.version, push.source) == ("A", 7, 1200, "src3")
    assert push.tickets == [ticket(1), ticket(3)]  # the replaced record is finished with its replacement
    assert push.idempotency_key == "A@1200" == stock_key("A", 1200)
    assert queue.take(119) is None and queue.next_due_ms() == 120
    assert queue.take(120).sku == "B"  # type: ignore[union-attr]


def test_an_unchanged_figure_is_not_sent_again_and_an_older_version_never_replaces_a_newer() -> None:
    queue = PushQueue(window_ms=0)
    queue.offer("A", 10, 1000, ticket(1), "s", 0)
    push = queue.take(0)
    assert push is not None
    queue.settle(push, accepted=True)
    assert not queue.offer("A", 10, 1100, ticket(2), "s", 1)  # the channel already shows 10
    assert not queue.offer("A", 3, 900, ticket(3), "s", 1)  # an older level read again
    assert not queue.offer("A", 3, 1000, ticket(4), "s", 1)
    assert queue.offer("A", 3, 1200, ticket(5), "s", 1)
    assert not queue.offer("A", 9, 1100, ticket(6), "s", 1)  # older than the one waiting
    assert queue.take(1).quantity == 3  # type: ignore[union-attr]


def test_a_stale_answer_forgets_the_figure_so_the_next_change_is_sent() -> None:
    queue = PushQueue(window_ms=0)
    queue.offer("A", 10, 1000, ticket(1), "s", 0)
    queue.settle(queue.take(0), accepted=True)  # type: ignore[arg-type]
    queue.offer("A", 5, 1100, ticket(2), "s", 0)
    queue.settle(queue.take(0), accepted=False)  # type: ignore[arg-type]
    assert queue.offer("A", 10, 1300, ticket(3), "s", 0)  # 10 again, but the platform may hold anything now


def test_one_call_per_sku_at_a_time_and_other_skus_go_past_it() -> None:
    queue = PushQueue(window_ms=0)
    queue.offer("A", 10, 1000, ticket(1), "s", 0)
    queue.offer("B", 5, 1000, ticket(2), "s", 0)
    first = queue.take(0)
    assert first is not None and first.sku == "A"
    assert queue.offer("A", 9, 1100, ticket(3), "s", 1)  # queued behind the call in flight
    assert queue.next_due_ms() == 0  # B's, not A's: A waits for its call
    second = queue.take(1)
    assert second is not None and second.sku == "B"
    assert queue.take(1) is None and queue.next_due_ms() is None and queue.in_flight() == 2
    queue.settle(first, accepted=True)
    third = queue.take(1)
    assert third is not None and (third.sku, third.quantity, third.tickets) == ("A", 9, [ticket(3)])
    assert not queue.shown(third)


def test_a_figure_reverting_while_a_call_is_in_flight_is_not_lost() -> None:
    queue = PushQueue(window_ms=0)
    queue.offer("A", 10, 1000, ticket(1), "s", 0)
    queue.settle(queue.take(0), accepted=True)  # type: ignore[arg-type]
    queue.offer("A", 9, 1100, ticket(2), "s", 0)
    nine = queue.take(0)
    # 10 again while 9 is on its way: the channel will show 9, so 10 must follow
    assert queue.offer("A", 10, 1200, ticket(3), "s", 0)
    queue.settle(nine, accepted=True)  # type: ignore[arg-type]
    ten = queue.take(0)
    assert ten is not None and ten.quantity == 10 and not queue.shown(ten)


def test_a_figure_a_call_in_flight_lands_needs_no_call_of_its_own() -> None:
    queue = PushQueue(window_ms=0)
    queue.offer("A", 9, 1100, ticket(1), "s", 0)
    nine = queue.take(0)
    assert queue.offer("A", 9, 1200, ticket(2), "s", 0)  # unknown yet whether the call in flight lands 9
    queue.settle(nine, accepted=True)  # type: ignore[arg-type]
    again = queue.take(0)
    assert again is not None and queue.shown(again)
    queue.settle(again, accepted=True)
    assert not queue.offer("A", 9, 1150, ticket(3), "s", 0)  # older than what the channel shows now


def test_a_failed_call_frees_its_sku_and_leaves_what_the_channel_shows() -> None:
    queue = PushQueue(window_ms=0)
    queue.offer("A", 10, 1000, ticket(1), "s", 0)
    queue.settle(queue.take(0), accepted=True)  # type: ignore[arg-type]
    queue.offer("A", 9, 1100, ticket(2), "s", 0)
    failed = queue.take(0)
    assert queue.offer("A", 10, 1200, ticket(3), "s", 0)
    queue.release(failed)  # type: ignore[arg-type]
    ten = queue.take(0)
    assert ten is not None and queue.shown(ten)  # the channel still shows 10: nothing to send


def test_a_lane_has_enough_calls_in_flight_for_its_rate_limit() -> None:
    assert calls_in_flight(18.0) == 2
    assert calls_in_flight(0.5) == 1
    assert calls_in_flight(90.0) == 9
    assert calls_in_flight(900.0) == MAX_CALLS_IN_FLIGHT


def test_level_version_is_the_newest_change_time() -> None:
    assert level_version({"newest_change_ms": 1_700_000_000_123}) == 1_700_000_000_123  # type: ignore[typeddict-item]
    assert level_version({"newest_change_ms": 0}) == 1  # type: ignore[typeddict-item]


# ---- rate limit, alerts, figures ----------------------------------------------------------------


def test_the_token_bucket_paces_calls_and_queues_reservations() -> None:
    bucket = TokenBucket(rate_per_s=10.0, capacity=2.0)
    assert [bucket.reserve(0.0) for _ in range(2)] == [0.0, 0.0]
    assert bucket.reserve(0.0) == pytest.approx(0.1)
    assert bucket.reserve(0.0) == pytest.approx(0.2)  # waits behind the one before it
    assert bucket.reserve(1.0) == 0.0  # a second later the bucket has refilled
    with pytest.raises(ValueError):
        TokenBucket(rate_per_s=0)


def test_the_client_rate_is_under_the_platforms_unless_configured() -> None:
    assert rate_per_s(Settings(), "jd") == pytest.approx(pf.platform("jd").default_qps * 0.9)
    assert rate_per_s(Settings(connector_qps={"jd": 3.0}), "jd") == 3.0
    assert marketplace_url(Settings(sim_port=18123), "pdd") == "http://127.0.0.1:18123/pdd"
    assert marketplace_url(Settings(marketplace_url="https://mk.example/"), "jd") == "https://mk.example/jd"


def test_connector_failing_is_raised_once_per_channel_and_cleared_by_a_success() -> None:
    watch = FailingWatch()
    raised = watch.failed("jd", "refund", Reason.CONNECTOR_CREDENTIALS, "HTTP 200 Invalid API Key", 1000)
    assert raised is not None
    assert (raised["kind"], raised["severity"], raised["subject"], raised["cleared"]) == (FAILING_ALERT, "RED", "jd",
                                                                                          False)  # fmt: skip
    assert "connector.failed.jd" in raised["message"] and "set-key jd" in raised["message"]
    assert watch.failed("jd", "stock", Reason.CONNECTOR_CREDENTIALS, "again", 2000) is None
    assert watch.succeeded("tmall", "refund", 2500) is None  # tmall was never failing
    cleared = watch.succeeded("jd", "refund", 3000)
    assert cleared is not None and cleared["cleared"] and cleared["subject"] == "jd"
    assert watch.succeeded("jd", "refund", 3100) is None


def test_percentiles() -> None:
    assert percentiles([]) == {"p50": None, "p99": None}
    assert percentiles([4.0]) == {"p50": 4.0, "p99": 4.0}
    figures = percentiles([float(v) for v in range(1, 101)])
    assert figures["p50"] == pytest.approx(50.5) and figures["p99"] == 99.0  # rounded to 0.1 ms


def test_records_have_one_id_per_refund_and_per_failed_call() -> None:
    first = refund_issued("jd:R1", "jd:O1", "jd", 500, "", 1, 1000)
    replayed = refund_issued("jd:R1", "jd:O1", "jd", 500, "", 3, 9000, replayed=True)
    assert first["event_id"] == replayed["event_id"] and replayed["replayed"] and not first["replayed"]
    result = CallResult(pf.Outcome(pf.OutcomeKind.CREDENTIAL), "HTTP 200 {...Invalid API Key}", 1)
    body = pf.refund_body("jd", "R1", 500, channel_order_id="O1")
    failed = result.failed_call("jd", "refund", "jd:R1", body, "refund.instructions/3/17", earlier_attempts=2)
    record = failed.record(5000)
    assert record["reason"] == Reason.CONNECTOR_CREDENTIALS and record["attempts"] == 3
    assert json.loads(record["request"]) == body
    assert record["event_id"] == failed.record(6000)["event_id"]


def test_a_failed_call_says_why_in_the_contracts_words() -> None:
    def reason(kind: pf.OutcomeKind) -> Reason:
        return CallResult(pf.Outcome(kind), "", 1).reason

    assert reason(pf.OutcomeKind.CREDENTIAL) is Reason.CONNECTOR_CREDENTIALS
    assert reason(pf.OutcomeKind.FATAL) is Reason.CONNECTOR_REFUSED
    assert reason(pf.OutcomeKind.RETRIABLE) is Reason.CONNECTOR_RETRIES_EXHAUSTED


@pytest.mark.parametrize("channel", pf.CHANNELS)
def test_a_refund_body_names_the_order_so_a_replay_can_key_its_result(channel: str) -> None:
    call = RefundCall.of({"channel": channel, "refund_id": f"{channel}:R9", "order_id": f"{channel}:O9",  # type: ignore[typeddict-item]
                          "channel_refund_id": "R9", "channel_order_id": "O9", "amount_fen": 1999}, "src")  # fmt: skip
    parsed = pf.parse_refund(channel, call.body)
    assert (parsed.refund_id, parsed.channel_order_id, parsed.amount_fen) == ("R9", "O9", 1999)


def test_replay_summary() -> None:
    summary = ReplaySummary("jd", queued=10, sent=4, already_applied=3, still_failing=1)
    assert (summary.replayed, summary.remaining, summary.clean) == (8, 2, False)
    assert summary.to_json()["remaining"] == 2
    assert ReplaySummary("jd", queued=2, sent=2).clean


# ---- one call, against a fake platform -----------------------------------------------------------


class FakePlatform:
    """Answers like ``channel``'s platform after checking the signature with the real verifier."""

    def __init__(self, channel: str, answers: list[str]) -> None:
        self.channel = channel
        self.answers = answers  # "ok", "busy" (5xx), "limit", "rotated", "already", "bad"
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        path = request.url.path.removeprefix(f"/{self.channel}")
        verdict = pf.verify_request(self.channel, lambda _key: SECRET, dict(request.url.params), dict(request.headers),
                                    request.content, wall_ms(), path=path)  # fmt: skip
        assert verdict.ok, verdict
        kinds = {"busy": pf.ErrorKind.SERVER_ERROR, "limit": pf.ErrorKind.RATE_LIMITED,
                 "rotated": pf.ErrorKind.INVALID_API_KEY, "already": pf.ErrorKind.ALREADY_APPLIED,
                 "bad": pf.ErrorKind.BAD_REQUEST}  # fmt: skip
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer == "ok":
            status, body = pf.ok_answer(self.channel, verdict.endpoint or "refund", {"status": "SUCCESS"})
        else:
            status, body = pf.error_answer(self.channel, kinds[answer])
        return httpx.Response(status, json=body)


def caller_for(tmp_path: Path, fake: FakePlatform, budget_s: float = 5.0, with_key: bool = True) -> ChannelCaller:
    store = CredentialStore(tmp_path / "credentials.json")
    if with_key:
        store.set_key(StoredKey(fake.channel, pf.Credentials("app", SECRET), date(2030, 1, 1), 0))
    http = httpx.Client(transport=httpx.MockTransport(fake))
    return ChannelCaller(Settings(marketplace_url="http://market.test"), store, http=http, budget_s=budget_s)


@pytest.mark.parametrize("channel", pf.CHANNELS)
def test_a_call_is_signed_the_platforms_way_and_retried_through_busy_answers(tmp_path: Path, channel: str) -> None:
    fake = FakePlatform(channel, ["busy", "limit", "ok"])
    caller = caller_for(tmp_path, fake)
    result = caller.call(channel, "refund", pf.refund_body(channel, "R1", 100, channel_order_id="O1"))
    assert result.outcome.kind is pf.OutcomeKind.OK and result.attempts == 3
    stats = caller.endpoint_stats(channel, "refund")
    assert (stats.ok, stats.retried, stats.failed) == (1, 2, 0)
    assert all(SECRET not in str(r.url) and SECRET.encode() not in r.content for r in fake.seen)


def test_a_rotated_key_fails_at_once_and_a_refusal_is_not_retried(tmp_path: Path) -> None:
    fake = FakePlatform("jd", ["rotated"])
    caller = caller_for(tmp_path, fake)
    result = caller.call("jd", "refund", pf.refund_body("jd", "R1", 100))
    assert (result.outcome.kind, result.attempts, result.reason) == (pf.OutcomeKind.CREDENTIAL, 1,
                                                                     Reason.CONNECTOR_CREDENTIALS)  # fmt: skip
    assert "Invalid API Key" in result.answer and caller.endpoint_stats("jd", "refund").failed == 1
    fake.answers = ["bad"]
    assert caller.call("jd", "refund", pf.refund_body("jd", "R2", 100)).reason is Reason.CONNECTOR_REFUSED
    fake.answers = ["already"]
    assert caller.call("jd", "refund", pf.refund_body("jd", "R3", 100)).outcome.kind is pf.OutcomeKind.ALREADY_APPLIED


def test_retries_end_with_the_budget(tmp_path: Path) -> None:
    fake = FakePlatform("pdd", ["busy"])
    result = caller_for(tmp_path, fake, budget_s=0).call("pdd", "stock", pf.stock_body("pdd", "A", 1, 5))
    assert (result.reason, result.attempts) == (Reason.CONNECTOR_RETRIES_EXHAUSTED, 1)


def test_no_key_is_a_credential_failure_without_a_call(tmp_path: Path) -> None:
    fake = FakePlatform("own", ["ok"])
    result = caller_for(tmp_path, fake, with_key=False).call("own", "refund", pf.refund_body("own", "R1", 100))
    assert result.reason is Reason.CONNECTOR_CREDENTIALS and "set-key own" in result.answer and fake.seen == []


def test_no_answer_is_retriable(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    store = CredentialStore(tmp_path / "credentials.json")
    store.set_key(StoredKey("jd", pf.Credentials("app", SECRET), None, 0))
    caller = ChannelCaller(Settings(), store, http=httpx.Client(transport=httpx.MockTransport(refuse)), budget_s=0)
    result = caller.call("jd", "refund", pf.refund_body("jd", "R1", 100))
    assert result.reason is Reason.CONNECTOR_RETRIES_EXHAUSTED and result.answer.startswith("no answer: ConnectError")
