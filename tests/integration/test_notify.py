"""The ops-chat notifier on the real broker: alerts through the ``alerts`` topic into a worker, out to a
local WeCom robot on 127.0.0.1 that enforces the real limits (20 messages per window per robot, 4096
bytes of content, unknown keys refused). The window is shrunk to 3 s to keep the tests short."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from agents.alerting.alerts import alert
from agents.worker import create_app
from streams.contract.records import Alert
from streams.contract.topics import ALERTS
from streams.engine.producer import EventProducer
from streams.engine.tables import ensure_table_changelogs
from streams.kafkaconf import confluent_config
from tests.helpers import wait_for
from tests.unit.alerting.wecom_robot import MAX_CONTENT_BYTES, WeComRobots

pytestmark = pytest.mark.broker

KEY = "ops-robot-key"
WINDOW_S = 3.0
KINDS = ("sla_breach", "invariant_breach", "connector_failing", "refund_sop_breach")


@pytest.fixture
def robots() -> Iterator[WeComRobots]:
    receiver = WeComRobots({KEY}, limit=20, window_s=WINDOW_S)
    yield receiver
    receiver.close()


def storm(count: int, tag: str) -> list[Alert]:
    """Mixed kinds and severities, a tenth of them clearings, one subject per alert."""
    severities = {"sla_breach": "RED", "invariant_breach": "RED", "connector_failing": "RED",
                  "refund_sop_breach": "WARNING"}  # fmt: skip
    now = int(time.time() * 1000)
    alerts = []
    for n in range(count):
        kind = KINDS[n % len(KINDS)]
        text = f"{kind.replace('_', ' ')} #{n}: 库存/订单 needs a look"
        alerts.append(alert(kind, severities[kind], f"{tag}:{n:04d}", text, now + n, cleared=n % 10 == 9))
    return alerts


def send_alerts(producer: EventProducer, alerts: list[Alert], per_burst: int = 1, pause_s: float = 0.0) -> None:
    for start in range(0, len(alerts), per_burst):
        for a in alerts[start : start + per_burst]:
            producer.send(ALERTS.name, a["subject"], "Alert", a)
        producer.flush()
        if pause_s:
            time.sleep(pause_s)


def delivered(robots: WeComRobots, alerts: list[Alert]) -> list[str]:
    """The subjects of ``alerts`` not yet in any message the robot took."""
    everything = "\n".join(robots.contents())
    return [a["subject"] for a in alerts if f"{a['subject']}" not in everything]


def test_a_storm_of_500_alerts_reaches_the_robot_whole_folded_within_its_limits(
    make_settings, start_worker, robots
) -> None:
    settings = make_settings(webhook_url=robots.url(KEY), notify_window_s=WINDOW_S, notify_rate=20, notify_kinds=KINDS)
    worker = start_worker(settings)
    producer = EventProducer(settings)
    alerts = storm(500, "storm")
    # An incident's shape: a ramp (about 20 a second for four seconds: they go out one by one until the
    # budget is spent, then wait for free slots), then the storm (420 within a second or two: folded).
    send_alerts(producer, alerts[:80], per_burst=2, pause_s=0.1)
    send_alerts(producer, alerts[80:], per_burst=60, pause_s=0.2)
    wait_for(lambda: not delivered(robots, alerts), timeout_s=60, what="every alert in a message the robot took")

    contents = robots.contents()
    assert robots.throttled == 0 and robots.refused == [], "the notifier went past the robot's limits"
    assert robots.most_in_any_window(KEY) <= 20
    assert max(len(c.encode()) for c in contents) <= MAX_CONTENT_BYTES
    assert len(contents) < 100 and any("alerts at once" in c for c in contents)  # folded
    everything = "\n".join(contents)
    assert all(everything.count(f"{a['subject']}") == 1 for a in alerts)  # each once, none twice
    status = wait_for(lambda: (s := worker.get("/notify/status")).get("queued") == 0 and s, what="queue empty")
    assert status["alerts_sent"] == 500 and status["throttled"] == 0 and status["dropped"] == 0
    assert status["robot"].endswith("key=ops-…")
    print(f"500 alerts in {len(contents)} messages, {status['digests']} of them digests; at most "
          f"{robots.most_in_any_window(KEY)} in any {WINDOW_S:g} s")  # fmt: skip


def test_an_alert_of_a_transaction_that_aborted_never_reaches_the_chat(make_settings, start_worker, robots) -> None:
    """Changed on purpose: the worker's Faust shell read uncommitted records, so an alert the engine wrote in
    a batch that then aborted (an outage, a fencing) was sent, and sent again when the batch was redone."""
    from confluent_kafka import Producer

    from streams.contract.codec import codec_for

    settings = make_settings(webhook_url=robots.url(KEY), notify_window_s=WINDOW_S, notify_rate=20, notify_kinds=KINDS)
    start_worker(settings)
    aborted, committed = storm(2, "txn")
    codec = codec_for(settings)
    txn = Producer({**confluent_config(settings), "transactional.id": f"test-abort-{settings.app_id}"})
    txn.init_transactions(30)
    txn.begin_transaction()
    txn.produce(settings.topic(ALERTS.name), codec.encode("Alert", aborted), aborted["subject"].encode())
    txn.flush(30)
    txn.abort_transaction(30)
    send_alerts(EventProducer(settings), [committed])
    wait_for(lambda: not delivered(robots, [committed]), timeout_s=60, what="the committed alert in a message")
    time.sleep(2 * WINDOW_S)  # any message the aborted one could have gone in has had its turn
    assert delivered(robots, [aborted]) == [aborted["subject"]]


def test_a_refused_robot_keeps_the_alerts_across_a_crash_and_the_fixed_url_drains_them(
    make_settings, start_worker, robots
) -> None:
    common = {"notify_window_s": WINDOW_S, "notify_kinds": KINDS, "session_timeout_s": 6, "notify_retry_max_s": 2.0}
    wrong = make_settings(webhook_url=robots.url("a-rotated-key"), **common)
    worker = start_worker(wrong)
    alerts = storm(60, "kept")
    send_alerts(EventProducer(wrong), alerts)
    # Generous: with the rest of the suite beside it, the worker's shell can take a while to get its partitions.
    wait_for(lambda: worker.get("/notify/status").get("queued") == 60, timeout_s=120, what="60 alerts queued")
    wait_for(lambda: len(robots.refused) >= 2, what="the robot refusing, tried again")
    assert robots.contents() == [] and worker.get("/notify/status")["failures_in_a_row"] >= 1
    log = worker.log_tail(20_000)
    assert "refused a message" in log and "check STOCKFLOW_WEBHOOK_URL" in log and "a-rotated-key" not in log

    worker.kill9()  # a crash: the queue lives only in notify_pending's changelog now
    fixed = make_settings(webhook_url=robots.url(KEY), **common)
    restarted = start_worker(fixed, name="fixed")
    wait_for(lambda: not delivered(robots, alerts), timeout_s=90, what="the kept alerts delivered")
    everything = "\n".join(robots.contents())
    assert all(everything.count(a["subject"]) == 1 for a in alerts)
    assert robots.throttled == 0 and all(key != KEY for key, _ in robots.refused)
    status = wait_for(lambda: (s := restarted.get("/notify/status")).get("queued") == 0 and s, what="queue empty")
    assert status["alerts_sent"] == 60

    # The same alerts again (a replay upstream): each was sent once, so none goes out twice. The last
    # one shares a subject (so a partition, read in order) with a replayed one: once it is out, the
    # replays before it were read.
    before = len(robots.contents())
    last = alert("sla_breach", "RED", alerts[4]["subject"], "after the replay", int(time.time() * 1000))
    send_alerts(EventProducer(fixed), [*alerts[:5], last])
    wait_for(lambda: "after the replay" in "\n".join(robots.contents()), what="the alert after the replay")
    assert len(robots.contents()) == before + 1


def test_the_notifiers_changelogs_exist_before_the_shell_starts(make_settings) -> None:
    """Faust declared the notifier's changelogs as it started, and a shell whose first metadata came
    before the broker served them saw 0 partitions: the notifier's first write raised
    ``PartitionsMismatch`` and no alert went out (CI, `test_paid_and_unrouted_order_raises_one_red_alert_…`).
    The worker now makes them first, with the inputs' partitions, compacted."""
    settings = make_settings(webhook_url="http://127.0.0.1:9/robot")
    app = create_app(settings)
    names = sorted(table.changelog_topic.get_topic_name() for table in app.tables.values())
    assert names == [f"{settings.app_id}-notified_by_alert-changelog", f"{settings.app_id}-notify_pending-changelog"]
    ensure_table_changelogs(app, settings)
    ensure_table_changelogs(app, settings)  # a second worker finds them made
    admin = AdminClient(confluent_config(settings))
    topics = admin.list_topics(timeout=10).topics
    for name in names:
        assert len(topics[name].partitions) == settings.partitions
        assert all(p.leader >= 0 for p in topics[name].partitions.values())
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)
        assert admin.describe_configs([resource])[resource].result(timeout=15)["cleanup.policy"].value == "compact"


def test_sent_alerts_are_forgotten_after_the_memory_and_the_table_stays_bounded(
    make_settings, start_worker, robots
) -> None:
    """``notified_by_alert`` kept a row for every alert ever sent (10-200 MB a day on disk and in its
    changelog, restored in full at every rebalance). Rows older than STOCKFLOW_NOTIFY_REMEMBER_H are now
    deleted, with a tombstone in the changelog; a row within the memory still stops a duplicate."""
    from streams.engine.topicreader import read_all

    memory_s = 15.0
    settings = make_settings(webhook_url=robots.url(KEY), notify_window_s=WINDOW_S, notify_kinds=KINDS,
                             notify_remember_h=memory_s / 3600)  # fmt: skip
    worker = start_worker(settings)
    alerts = storm(5, "memory")
    send_alerts(EventProducer(settings), alerts)
    wait_for(lambda: not delivered(robots, alerts), timeout_s=60, what="the five alerts in a message")
    sent = len(robots.contents())

    # Within the memory: a duplicate is not sent again. The alert after it shares its subject (its partition,
    # read in order): once that one is out, the duplicate was read.
    after = alert("sla_breach", "RED", alerts[0]["subject"], "within the memory", int(time.time() * 1000))
    send_alerts(EventProducer(settings), [alerts[0], after])
    wait_for(lambda: "within the memory" in "\n".join(robots.contents()), timeout_s=30, what="the alert after it")
    assert len(robots.contents()) == sent + 1 and worker.get("/notify/status")["forgotten"] == 0

    wait_for(lambda: worker.get("/notify/status")["forgotten"] >= 5, timeout_s=60, what="the five rows forgotten")
    changelog = read_all(settings, f"{settings.app_id}-notified_by_alert-changelog")
    tombstones = {r.key for r in changelog if r.value is None}
    assert tombstones >= {a["event_id"].encode() for a in alerts}

    # Beyond it, the same alert is news again: the memory is what bounds the table.
    send_alerts(EventProducer(settings), alerts[:1])
    wait_for(lambda: len(robots.contents()) == sent + 2, timeout_s=60, what="the forgotten alert sent again")
