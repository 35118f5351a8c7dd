"""A stock call whose answer was lost may still land, and the platforms keep no version: what the stock queue
(``outbound.PushQueue``) does about it with other lost calls, newer figures, a channel away and per-item refusals.
Found in review, each a sequence that left the channel on an older figure or a record open for good."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path

import httpx
import pytest

from agents.channels import platforms as pf
from agents.channels import push_stock
from agents.channels.calls import ChannelCaller
from agents.channels.credentials import CredentialStore, StoredKey
from agents.channels.outbound import RETRY_ALONE_MAX_FAILURES, PushQueue, Ticket
from agents.channels.push_stock import StockLane
from agents.channels.simulator import Answer, AppSpec, Marketplace
from streams.settings import Settings
from tests.unit.channels.test_connectors import Clock, FakeConnector, send_due, take, ticket


def own_lane(tmp_path: Path, handle: Callable[[httpx.Request], httpx.Response]) -> tuple[StockLane, FakeConnector]:
    """The own shop's stock lane (in-doubt time 30 s) whose calls ``handle`` answers, retried for up to 5 s."""
    store = CredentialStore(tmp_path / "credentials.json")
    store.set_key(StoredKey("own", pf.Credentials("lane-app", "lane-secret"), date(2030, 1, 1), 0))
    caller = ChannelCaller(Settings(marketplace_url="http://market.test"), store,
                           http=httpx.Client(transport=httpx.MockTransport(handle)), budget_s=5)
    connector = FakeConnector(caller)
    return StockLane("own", connector, window_ms=0, doubt_ms=30_000), connector  # type: ignore[arg-type]


def ask(market: Marketplace, request: httpx.Request) -> Answer:
    """``market``'s answer to a call of the own shop."""
    path = request.url.path.removeprefix("/own")
    return market.handle("own", path, dict(request.url.params), dict(request.headers), request.content)


def lane_whose_first_attempt_is_lost(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, second: Callable[[], httpx.Response]
) -> tuple[StockLane, FakeConnector, list[int], list[int]]:
    """The own shop's lane on a clock the test sets (``clock[0]``, ms) against a marketplace whose first request
    gets no answer and whose second is answered ``second()`` (unapplied); and the requests made so far."""
    clock, requests = [0], [0]
    monkeypatch.setattr(push_stock, "monotonic_ms", lambda: clock[0])
    market = Marketplace({"own": [AppSpec(app_key="lane-app", secret="lane-secret")]}, latency_ms=0, jitter_ms=0,
                         seed=3, clock=Clock())  # fmt: skip

    def handle(request: httpx.Request) -> httpx.Response:
        requests[0] += 1
        if requests[0] == 1:
            raise httpx.ReadTimeout("no answer", request=request)
        if requests[0] == 2:
            return second()
        answer = ask(market, request)
        return httpx.Response(answer.status, json=answer.body)

    lane, connector = own_lane(tmp_path, handle)
    return lane, connector, clock, requests


def settled_under_a_newer_figure(q: PushQueue) -> None:
    """v100's call lost at 1 s (it may land until 31 s), v200 taken at 2 s, v300 offered while it is under way, then
    v200 applied: it must go once more, and v300 is waiting."""
    q.offer("A", 10, 100, ticket(1), "s", 0)
    q.retry(take(q, 0), 1_000)  # type: ignore[arg-type]
    q.offer("A", 20, 200, ticket(2), "s", 1_500)
    v200 = take(q, 2_000)
    assert v200 is not None and v200.version == 200
    assert q.offer("A", 30, 300, ticket(3), "s", 2_050)
    assert not q.settle(v200, accepted=True, now_ms=2_100)


def test_a_newer_lost_call_does_not_hide_an_older_one_still_in_doubt() -> None:
    """Every lost call of a SKU is remembered: one kept (until, newest version) forgot the older one."""
    q = PushQueue(window_ms=0, doubt_ms=30_000)
    q.offer("A", 10, 100, ticket(1), "s", 0)
    p = take(q, 0)
    assert p is not None and q.retry(p, 1_000)  # v100 (q10) lost: may land until 31_000
    q.offer("A", 20, 200, ticket(2), "s", 1_500)  # replaces it in its backoff
    p = take(q, 2_000)
    assert p is not None and p.version == 200 and q.retry(p, 3_000)  # v200 lost too: doubt -> (33_000, 200)
    p = take(q, 5_000)
    assert p is not None and p.version == 200
    # Applied at 5_100; the v100 call may still land until 31_000 and set q10 over q20: it must go once more.
    assert not q.settle(p, accepted=True, now_ms=5_100), "v200 finished while the v100 (q10) call may still land"


def test_a_figure_to_confirm_while_a_newer_one_waits_hands_its_records_to_it() -> None:
    """A newer figure offered while the call was under way goes, and confirms: the older one's records go with it."""
    q = PushQueue(window_ms=0, doubt_ms=30_000)
    settled_under_a_newer_figure(q)
    done: list[Ticket] = [*q.take_superseded()]
    now = 2_100
    for _ in range(10):  # play the queue out, every call applied
        p = take(q, now)
        if p is not None and q.settle(p, accepted=True, now_ms=now + 50):
            done += p.tickets
        done += q.take_superseded()
        now += 30_000
    assert q.waiting() == 0 and q.in_flight() == 0
    # ticket 2 finished or superseded, or partition 0's commit stops at offset 2 for good
    assert ticket(2) in done, f"finished/superseded: {done}"


def test_the_newest_figure_is_the_one_sent_last_when_its_call_fails_while_an_older_waits_to_confirm() -> None:
    """A figure waiting to go once more never outlives a newer one: the newer call failing for now sends the newer."""
    q = PushQueue(window_ms=0, doubt_ms=30_000)
    settled_under_a_newer_figure(q)
    v300 = take(q, 2_100)
    assert v300 is not None and v300.version == 300  # in flight (a slow call)
    assert take(q, 31_000) is None  # promotes v200 into _pending; A is in flight
    assert q.retry(v300, 31_100)  # v300's call: no answer in time
    ready = q.ready_at_ms()
    assert ready is not None
    nxt = take(q, ready)  # after its backoff
    assert nxt is not None
    assert (nxt.quantity, nxt.version) == (30, 300), f"sends {nxt.quantity}@{nxt.version} carrying {nxt.tickets}"


def test_a_channel_away_parks_unsent_figures_not_one_applied_and_waiting_to_confirm() -> None:
    """Parked as unsent, a figure applied and waiting to go once more would leave the lost call to land after it."""
    q = PushQueue(window_ms=0, doubt_ms=30_000)
    q.offer("A", 10, 100, ticket(1), "s", 0)
    q.retry(take(q, 0), 1_000)  # type: ignore[arg-type]
    q.offer("A", 20, 200, ticket(2), "s", 1_500)
    v200 = take(q, 2_000)
    assert v200 is not None and not q.settle(v200, accepted=True, now_ms=2_100)  # confirming
    q.offer("B", 5, 100, Ticket("stock.levels", 1, 1), "s", 2_200)  # unsent
    parked = q.overflow(1)
    assert [p.sku for p in parked] == ["B"], f"parked {[(p.sku, p.confirming) for p in parked]}"


def test_a_confirmation_starts_its_own_count_of_refusals_alone() -> None:
    """The figure's refusals before it was applied do not count against its confirmation."""
    q = PushQueue(window_ms=0, doubt_ms=300_000)
    q.offer("A", 10, 100, ticket(1), "s", 0)
    q.retry(take(q, 0), 1_000)  # type: ignore[arg-type]  # lost: doubt until 301_000
    q.offer("A", 20, 200, ticket(2), "s", 1_500)
    now = 2_000
    for _ in range(9):  # refused alone 9 times (bound: 10)
        p = take(q, now)
        assert p is not None and q.retry(p, now + 10, alone=True)
        now = p.due_ms
    p = take(q, now)
    assert p is not None and not q.settle(p, accepted=True, now_ms=now + 10)  # applied: confirming
    p = take(q, 301_000)
    assert p is not None and p.confirming is False
    assert q.retry(p, 301_010, alone=True), "its first refusal as a confirmation parks it (retries exhausted)"


def test_an_attempt_answered_429_is_not_lost_and_its_next_figure_goes_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A rate-limited attempt had an answer: nothing of it can land later, so no figure waits to confirm."""
    clock = [0]
    monkeypatch.setattr(push_stock, "monotonic_ms", lambda: clock[0])
    market = Marketplace({"own": [AppSpec(app_key="lane-app", secret="lane-secret")]}, latency_ms=0, jitter_ms=0,
                         seed=3, clock=Clock())
    limited = [1]  # the first attempt is answered 429 by the platform

    def handle(request: httpx.Request) -> httpx.Response:
        if limited[0]:
            limited[0] -= 1
            market.configure("own", qps=0.001, burst=1.0)
            market.buckets.clear()
            ask(market, request)  # takes the only token
            answer = ask(market, request)
            market.configure("own", qps=100.0, burst=100.0)
            market.buckets.clear()
            market.stock.clear()
        else:
            answer = ask(market, request)
        return httpx.Response(answer.status, json=answer.body)

    lane, connector = own_lane(tmp_path, handle)
    caller = connector.caller
    lane.offer("A", 10, 100, ticket(1), "s")
    assert send_due(lane, 0) == 1 and caller.endpoint_stats("own", "stock").retried == 1  # a 429, then applied
    lane.offer("A", 20, 200, ticket(2), "s")
    clock[0] = 1_000
    assert send_due(lane, clock[0]) == 1
    assert connector.finished == [ticket(1), ticket(2)], (connector.finished, lane.pending())


def test_a_figure_read_again_after_an_assignment_goes_once_more_when_an_earlier_owners_call_cannot_land() -> None:
    """After a ``kill -9`` (or a rebalance) the earlier owner's lost calls are not known here, but their records were
    left open and are read again: a figure read from below the partition's end at its assignment may follow one, and
    goes once more when it can no longer land. A record written after the assignment is no such figure."""
    q = PushQueue(window_ms=0, doubt_ms=30_000)
    q.replayed({("stock.levels", 0): 5}, 1_000)  # assigned at 1 s, its end offset 5: lost calls may land until 31 s
    q.offer("A", 20, 200, ticket(4), "s", 1_100)
    q.offer("B", 7, 300, ticket(6), "s", 1_100)
    a, b = take(q, 1_200), take(q, 1_200)
    assert a is not None and b is not None and {a.sku, b.sku} == {"A", "B"}
    a, b = (a, b) if a.sku == "A" else (b, a)
    assert not q.settle(a, accepted=True, now_ms=1_300), "A finished while its earlier owner's call may still land"
    assert q.settle(b, accepted=True, now_ms=1_300)
    assert take(q, 30_000) is None
    again = take(q, 31_000)
    assert again is not None and again.sku == "A" and again.version == 200
    assert q.settle(again, accepted=True, now_ms=31_100) and again.tickets == [ticket(4)]
    late = PushQueue(window_ms=0, doubt_ms=30_000)
    late.replayed({("stock.levels", 0): 5}, 1_000)
    late.offer("A", 20, 200, ticket(4), "s", 40_000)  # read after every earlier call's time: nothing to confirm
    p = take(late, 40_000)
    assert p is not None and late.settle(p, accepted=True, now_ms=40_100)


def test_a_figure_parked_while_its_sku_is_in_doubt_keeps_its_record_open_until_the_lost_call_cannot_land() -> None:
    """Finished when parked, its record is committed: a process started again within the lost call's time does not
    read it again, knows nothing of that call, and finishes the SKU's next figure while the call can land after it."""
    q = PushQueue(window_ms=0, doubt_ms=300_000)
    q.offer("A", 10, 100, ticket(1), "s", 0)
    q.retry(take(q, 0), 1_000)  # type: ignore[arg-type]  # lost: may land until 301 s
    q.offer("A", 20, 200, ticket(2), "s", 1_500)
    assert q.take_superseded() == [ticket(1)]  # ticket 2's record stands for it
    now, parked = 2_000, None
    for _ in range(RETRY_ALONE_MAX_FAILURES):  # refused alone until given up on: the caller parks it
        p = take(q, now)
        assert p is not None and p.version == 200
        if not q.retry(p, now + 10, alone=True):
            parked = p
            break
        now = p.due_ms
    assert parked is not None
    assert q.keep_open(parked, now + 20), "its record finished while the v100 call may still land"
    assert q.take_closed(300_999) == []
    assert q.take_closed(301_000) == [ticket(2)]
    assert q.take_closed(400_000) == []
    other = PushQueue(window_ms=0, doubt_ms=30_000)  # no lost call: the record finishes once the broker has it
    other.offer("B", 5, 100, ticket(7), "s", 0)
    p = take(other, 0)
    assert p is not None
    other.release(p)
    assert not other.keep_open(p, 100)


def test_a_parked_figure_kept_open_goes_with_its_partition() -> None:
    """A revoked partition's records are the next owner's: nothing of them is finished here later."""
    q = PushQueue(window_ms=0, doubt_ms=30_000)
    q.offer("A", 10, 100, ticket(1), "s", 0)
    p = take(q, 0)
    assert p is not None
    q.release(p, 500, lost=True)  # refused for good after an attempt without an answer
    assert q.keep_open(p, 600)
    q.forget_partitions({("stock.levels", 0)})
    assert q.take_closed(31_000) == []


def test_a_figure_refused_for_good_after_a_lost_attempt_keeps_its_record_open_and_its_next_figure_confirms(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The first attempt got no answer and may still land; the second was refused for good (its answer had no result
    for the figure), so the figure is parked. Its record stays open until the first attempt can no longer land, and
    the SKU's next figure, applied meanwhile, goes once more after that."""
    lane, connector, clock, _ = lane_whose_first_attempt_is_lost(
        monkeypatch, tmp_path, lambda: httpx.Response(200, json={"data": {"results": []}}))  # no result for it
    lane.offer("A", 10, 1, ticket(1), "s")
    assert send_due(lane, 0) == 1
    assert [f.reason for f in connector.parked] == ["connector_refused"], connector.parked
    assert connector.finished == [], "parked while its lost attempt may land: its record must stay open"
    clock[0] = 1_000
    lane.offer("A", 20, 2, ticket(2), "s")
    assert send_due(lane, clock[0]) == 1
    assert connector.finished == [] and lane.pending() == 1, "applied while the lost attempt may land: goes again"
    clock[0] = 29_000
    lane.close_kept(clock[0])
    assert connector.finished == []
    clock[0] = 31_000
    lane.close_kept(clock[0])
    assert connector.finished == [ticket(1)]
    assert send_due(lane, clock[0]) == 1
    assert connector.finished == [ticket(1), ticket(2)]


def test_figures_of_a_call_refused_whole_after_a_lost_attempt_wait_for_that_attempt(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Found in review: refused whole, a many-SKU call's figures go again alone, and those calls did not know the
    first attempt may still land: applied alone, their records finished while it could set the older figures."""
    status, refused = pf.error_answer("own", pf.ErrorKind.BAD_REQUEST)  # the two figures' call, refused whole
    lane, connector, clock, requests = lane_whose_first_attempt_is_lost(
        monkeypatch, tmp_path, lambda: httpx.Response(status, json=refused))
    lane.offer("A", 10, 1, ticket(1), "s")
    lane.offer("B", 5, 1, ticket(2), "s")
    assert send_due(lane, 0) == 1 and requests[0] == 4  # the call, then each figure alone, applied
    assert connector.parked == [] and connector.finished == [], "finished while the first attempt may still land"
    clock[0] = 31_000
    send_due(lane, clock[0])
    assert sorted(t.offset for t in connector.finished) == [1, 2]


def test_a_sku_parked_again_keeps_one_record_open() -> None:
    """Found in review: each parked figure of a SKU kept its own entry, so a backlog read again after a restart
    (every SKU in doubt) kept a record open per level read: the records open grew with the levels, not the SKUs."""
    q = PushQueue(window_ms=0, doubt_ms=30_000)
    q.replayed({("stock.levels", 0): 100}, 0)
    for offset in (1, 2, 3):
        q.offer("A", offset, offset, ticket(offset), "s", 10)
        p = take(q, 10)
        assert p is not None
        q.release(p)
        assert q.keep_open(p, 20)
    assert q.kept() == 1 and q.take_superseded() == [ticket(1), ticket(2)]
    q.offer("B", 1, 1, Ticket("stock.levels", 1, 5), "s", 10)  # another partition: not read again, not in doubt
    p = take(q, 10)
    assert p is not None and not q.keep_open(p, 20)
    assert q.take_closed(29_999) == [] and q.take_closed(30_000) == [ticket(3)] and q.kept() == 0
