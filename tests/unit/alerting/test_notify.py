"""The notifier's sender against a local robot on 127.0.0.1 that enforces WeCom's limits: no broker
(the durable queue's Faust tables are replaced by the ``finish`` callback they stand behind)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
import pytest

from agents.alerting import digest
from agents.alerting.alerts import alert
from agents.alerting.notify import Outcome, Policy, Queued, Robot, deliver, redact
from streams.contract.records import Alert
from tests.unit.alerting.wecom_robot import WeComRobots

KEY = "robot-key-0001"


@pytest.fixture
def robots() -> Iterator[WeComRobots]:
    receiver = WeComRobots({KEY}, limit=20, window_s=1.0)
    yield receiver
    receiver.close()


def storm_alert(n: int) -> Alert:
    kind, severity = [("sla_breach", "RED"), ("invariant_breach", "RED"), ("unroutable", "WARNING")][n % 3]
    return alert(kind, severity, f"jd:storm-{n:04d}", f"alert {n} of the storm", 1_700_000_000_000 + n,
                 cleared=n % 10 == 9)  # fmt: skip


class Finished:
    def __init__(self) -> None:
        self.done: dict[str, str] = {}

    def __call__(self, item: Queued, error: str) -> None:
        assert item.id not in self.done, f"{item.id} finished twice"
        self.done[item.id] = error


def policy(**overrides: float) -> Policy:
    base = {"rate": 20, "window_s": 1.0, "max_bytes": 4096, "queue_max": 10_000, "retry_max_s": 1.0}
    return Policy(**{**base, **overrides})  # type: ignore[arg-type]


async def run_until(robot: Robot, done: Callable[[], bool], feed: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run the sender (and ``feed`` beside it) until ``done()``; at most a minute."""
    async with aiohttp.ClientSession() as session:
        sender = asyncio.create_task(robot.run(session))
        try:
            if feed is not None:
                await feed()
            for _ in range(3000):
                if done():
                    return
                await asyncio.sleep(0.02)
            raise AssertionError(f"not done after a minute: {robot.status(0.0)}")
        finally:
            sender.cancel()


def test_a_trickled_flood_of_500_is_delivered_whole_under_the_limit(robots: WeComRobots) -> None:
    finished = Finished()
    robot = Robot(robots.url(KEY), policy(), finished)
    robot.replace([])
    alerts = [storm_alert(n) for n in range(500)]

    async def feed() -> None:
        for start in range(0, 500, 5):  # a storm arrives in bursts, not all at once
            for a in alerts[start : start + 5]:
                robot.add(Queued(a, partition=0, queued_ms=0))
            await asyncio.sleep(0.005)

    asyncio.run(run_until(robot, lambda: not robot.queue and len(finished.done) == 500, feed))

    assert finished.done == {a["event_id"]: "" for a in alerts}
    contents = robots.contents()
    everything = "\n".join(contents)
    assert [a["subject"] for a in alerts if a["subject"] not in everything] == []
    assert robots.throttled == 0 and robots.refused == []
    assert robots.most_in_any_window(KEY) <= 20
    assert max(len(c.encode()) for c in contents) <= 4096
    assert robot.counts["digests"] >= 1 and robot.counts["messages"] == len(contents) < 500


def test_a_refused_robot_keeps_every_alert_and_a_fixed_url_drains_them(
    robots: WeComRobots, caplog: pytest.LogCaptureFixture
) -> None:
    finished = Finished()
    wrong = Robot(robots.url("revoked-key-9999"), policy(retry_max_s=60.0), finished)
    wrong.replace([])
    items = [Queued(storm_alert(n), partition=n % 4, queued_ms=n) for n in range(30)]
    for item in items:
        wrong.add(item)
    with caplog.at_level(logging.ERROR, logger="agents.alerting.notify"):
        asyncio.run(run_until(wrong, lambda: len(robots.refused) >= 1))
    assert finished.done == {} and len(wrong.queue) == 30 and wrong.failures == 1
    assert any(
        "refused a message" in r.getMessage() and "check STOCKFLOW_WEBHOOK_URL" in r.getMessage()
        and "revo…" in r.getMessage() and "revoked-key-9999" not in r.getMessage()
        for r in caplog.records
    )  # fmt: skip
    status = wrong.status(0.0)
    assert status["queued"] == 30 and status["last_error"].startswith("refused: HTTP 200: {'errcode': 93000")

    fixed = Robot(robots.url(KEY), policy(), finished)  # a restart with the right URL loads the durable queue
    fixed.replace(wrong.queue.values())
    asyncio.run(run_until(fixed, lambda: len(finished.done) == 30))
    assert set(finished.done) == {i.id for i in items} and set(finished.done.values()) == {""}
    assert all(i.alert["subject"] in "\n".join(robots.contents()) for i in items)


def test_a_robot_throttled_by_someone_else_is_waited_out(robots: WeComRobots) -> None:
    finished = Finished()
    robot = Robot(robots.url(KEY), policy(), finished)
    robot.replace([Queued(storm_alert(n), partition=0, queued_ms=n) for n in range(3)])
    robots.fill(KEY)
    asyncio.run(run_until(robot, lambda: len(finished.done) == 3))
    assert robots.throttled >= 1 and robot.counts["throttled"] == robots.throttled
    assert set(finished.done.values()) == {""}


def test_a_full_queue_drops_the_least_urgent_and_says_so_in_the_next_message(
    robots: WeComRobots, caplog: pytest.LogCaptureFixture
) -> None:
    finished = Finished()
    robot = Robot(robots.url(KEY), policy(queue_max=10), finished)
    robot.replace([])
    alerts = [storm_alert(n) for n in range(15)]
    with caplog.at_level(logging.ERROR, logger="agents.alerting.notify"):
        for a in alerts:
            robot.add(Queued(a, partition=0, queued_ms=0))
    # Each add past the cap drops one; the log says so once, not once per alert.
    (line,) = [r.getMessage() for r in caplog.records if "over its cap" in r.getMessage()]
    assert "over its cap of 10 (STOCKFLOW_NOTIFY_QUEUE_MAX): dropped 1 alerts" in line
    dropped = {k for k, v in finished.done.items() if v == "dropped: queue full"}
    assert len(dropped) == 5 and len(robot.queue) == 10
    assert dropped == {a["event_id"] for a in digest.overflow(alerts, 10)[1]}
    asyncio.run(run_until(robot, lambda: not robot.queue))
    first = robots.contents()[0]
    assert first.startswith('<font color="warning">**5 alerts dropped**</font>: more than 10 were waiting')
    assert robot.unreported_drops == 0 and not any("alerts dropped" in c for c in robots.contents()[1:])


def test_a_partition_moving_away_takes_its_alerts_and_pauses_until_the_queue_is_loaded() -> None:
    robot = Robot("http://127.0.0.1:9/unused", policy(), Finished())
    robot.replace([Queued(storm_alert(n), partition=n % 2, queued_ms=n) for n in range(6)])
    robot.release({1})
    assert not robot.ready and sorted(i.partition for i in robot.queue.values()) == [0, 0, 0]


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        ((200, {"errcode": 0}), Outcome.SENT),
        ((200, {"errcode": 45009, "errmsg": "api freq out of limit"}), Outcome.THROTTLED),
        ((429, {}), Outcome.THROTTLED),
        ((502, {}), Outcome.BUSY),
        ((404, {}), Outcome.REFUSED),
        ((200, {"errcode": 93000, "errmsg": "invalid webhook url"}), Outcome.REFUSED),
    ],
)
def test_each_answer_is_classified(reply: tuple[int, dict[str, object]], outcome: Outcome) -> None:
    from aiohttp import web

    async def run() -> Outcome:
        async def answer(request: web.Request) -> web.Response:
            return web.json_response(reply[1], status=reply[0])

        app = web.Application()
        app.router.add_post("/send", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            async with aiohttp.ClientSession() as session:
                got, _ = await deliver(session, f"http://127.0.0.1:{runner.addresses[0][1]}/send", {})
                return got
        finally:
            await runner.cleanup()

    assert asyncio.run(run()) is outcome


def test_a_refused_connection_is_busy_and_a_bad_url_refused() -> None:
    async def run() -> tuple[Outcome, Outcome]:
        async with aiohttp.ClientSession() as session:
            closed, _ = await deliver(session, "http://127.0.0.1:9/send", {})
            bad, _ = await deliver(session, "not a url", {})
            return closed, bad

    assert asyncio.run(run()) == (Outcome.BUSY, Outcome.REFUSED)


def test_the_robot_key_never_reaches_a_log() -> None:
    assert redact("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-7xxx") == (
        "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a…"
    )
    assert redact("http://127.0.0.1:8/hook") == "http://127.0.0.1:8/hook"


def test_a_refunds_limit_cleared_is_not_dropped_for_another_limit_of_the_refund_raised() -> None:
    """Failed before: the same alert was the same kind and subject, so a waiting "return: cleared" was dropped when
    the refund's QC limit was breached a day later, and the chat never heard the return had arrived."""
    finished = Finished()
    robot = Robot("http://127.0.0.1:9/unused", policy(), finished)
    cleared = alert("refund_sop_breach", "INFO", "jd:R1", "refund jd:R1 moved on (received)", 10, cleared=True,
                    event_id="jd:R1:return:cleared", details={"limit": "return"})
    qc = alert("refund_sop_breach", "RED", "jd:R1", "the warehouse has not finished QC", 20, event_id="jd:R1:qc",
               details={"limit": "qc"})
    robot.replace([Queued(cleared, 0, 1)])
    robot.add(Queued(qc, 0, 2))
    assert sorted(robot.queue) == sorted([cleared["event_id"], qc["event_id"]]) and not finished.done


def test_a_clearing_older_than_a_raise_of_the_same_alert_is_never_the_last_word() -> None:
    """Changed on purpose: clearings are sent after raises, so a breach cleared at t=10 and raised again at
    t=20, both waiting, reached the chat as raise then "cleared" while the breach stood."""
    finished = Finished()
    robot = Robot("http://127.0.0.1:9/unused", policy(), finished)
    cleared = alert("invariant_breach", "INFO", "SKU-1", "holds again", 10, cleared=True)
    raised = alert("invariant_breach", "RED", "SKU-1", "locked > on hand", 20)
    other = alert("invariant_breach", "INFO", "SKU-2", "holds again", 10, cleared=True)
    robot.replace([Queued(cleared, 0, 1), Queued(other, 0, 2)])
    robot.add(Queued(raised, 0, 3))
    assert sorted(robot.queue) == sorted([raised["event_id"], other["event_id"]])
    assert finished.done == {cleared["event_id"]: "superseded: raised again"}
    late = alert("invariant_breach", "INFO", "SKU-1", "holds again", 15, cleared=True)  # arrives after the raise
    robot.add(Queued(late, 0, 4))
    assert late["event_id"] not in robot.queue and finished.done[late["event_id"]] == "superseded: raised again"
    restarted = Robot("http://127.0.0.1:9/unused", policy(), Finished())
    restarted.replace([Queued(raised, 0, 3), Queued(cleared, 0, 1)])  # a durable queue holding both, loaded
    assert list(restarted.queue) == [raised["event_id"]]
