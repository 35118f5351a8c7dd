"""The broker stops for ~15 s mid-load and comes back: the worker rides it out without losing or
repeating anything and without flooding its log. Runs on a broker of its own (``dedicated_kafka``)
so the shared one stays up for every other test."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from agents.audit.checker import audit
from loadtest import events as ev
from streams.contract.topics import STOCK_ADJUSTMENTS
from streams.devstack.localkafka import LocalKafka
from streams.devstack.workerproc import WorkerProcess
from streams.engine.producer import EventProducer
from tests.helpers import audit_problems, dead_letter_reasons, wait_for
from tests.integration.test_crash import SKUS, stream_orders

pytestmark = [pytest.mark.broker, pytest.mark.slow]
OUTAGE_S = 15.0
COMMITTERS = 6  # transactional producers committing at once: some commit in the broker's last moments
SETTLE_S = 90  # how long after the stream the audit may wait for the pipeline to settle
# Python logging's WARNING and worse, and librdkafka's own lines at severity 4 (warning) or worse.
NOISY_LINE = re.compile(r"\[(WARNING|ERROR|CRITICAL)\]|^%[0-4]\||Traceback")


def noisy_lines(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if NOISY_LINE.search(line)]


def test_broker_stopped_and_restarted_mid_load(dedicated_kafka: LocalKafka, make_settings, start_worker) -> None:
    settings = make_settings(kafka_bootstrap=dedicated_kafka.settings.bootstrap, safety_threshold=0,
                             session_timeout_s=6)  # fmt: skip
    worker = start_worker(settings)
    producer = EventProducer(settings)
    for sku in SKUS:
        producer.send(STOCK_ADJUSTMENTS.name, sku, "StockAdjusted", ev.stock_adjusted(sku, "WH-SH", 200))
    producer.flush()
    producer.close()  # not left to the collector: it would reconnect to this broker for ever after it stops
    wait_for(lambda: all(worker.get(f"/stock/{sku}").get("on_hand") == 200 for sku in SKUS), what="stock")
    noisy_before = len(noisy_lines(worker.log_file))

    readiness: list[tuple[float, str]] = []  # (seconds since the stream started, /readyz answer)
    outage: dict[str, float] = {}
    watching = threading.Event()

    def watch_readiness() -> None:
        while not watching.is_set():
            try:
                answer = str(httpx.get(worker.base_url + "/readyz", timeout=2).status_code)
            except httpx.HTTPError as exc:
                answer = type(exc).__name__
            readiness.append((round(time.monotonic() - started, 1), answer))
            time.sleep(0.5)

    stop = threading.Event()
    result: dict[str, int] = {}
    # ~10 orders/s for 30 s: the stream goes on into the producer's buffer while the broker is away.
    # The sender's client reports the outage through logging (kept with the test's report) rather
    # than on stderr, where it reached the run's output whatever the test's outcome.
    quiet = {"logger": logging.getLogger(f"{__name__}.sender")}
    sender = threading.Thread(target=lambda: result.update(sent=stream_orders(settings, 300, 30.0, 9, stop, **quiet)))
    started = time.monotonic()
    sender.start()
    watcher = threading.Thread(target=watch_readiness, daemon=True)
    watcher.start()
    try:
        time.sleep(5)
        outage["down_from"] = round(time.monotonic() - started, 1)
        assert dedicated_kafka.down(), "the broker did not stop"
        outage["down_at"] = round(time.monotonic() - started, 1)
        time.sleep(OUTAGE_S)
        outage["up_from"] = round(time.monotonic() - started, 1)
        dedicated_kafka.up()
        outage["up_at"] = round(time.monotonic() - started, 1)
    finally:
        sender.join()
    watching.set()
    watcher.join(5)
    assert result["sent"] == 300

    # Everything is collected first: an outage can break several things at once, and the report
    # should show all of them. A worker that exits is started again, as its supervisor would
    # (host.ENGINE_FAILED_EXIT), so the audit still says whether the outage cost any data.
    findings: list[str] = []
    outage_log = worker.log_file
    # Settling can take most of a minute after the broker is back: a transaction the old producer left open over
    # the outage keeps the group's offsets pending until the transaction timeout and the broker's sweep end it
    # (22 s), and then the engine ends it itself (a fresh clone's run: the broker back at 22:03:17, the offsets
    # free at 22:04:11). The test asks that nothing is lost, not how fast the box is.
    deadline = time.monotonic() + SETTLE_S
    while True:
        if not worker.alive() and worker.proc is not None:
            findings.append(f"the worker exited with code {worker.proc.returncode}: {fatal_lines(worker.log_file)}")
            if len(findings) > 2:
                break
            worker = start_worker(settings, name=f"after-exit{len(findings)}")
        report = audit(settings)
        if report.ok or time.monotonic() > deadline:
            break
        time.sleep(2)
    if not report.ok:
        findings.append(f"not settled {SETTLE_S} s after the stream: {audit_problems(report)}; "
                        f"engine {engine_status(worker)}")  # fmt: skip
    noisy = noisy_lines(outage_log)
    if len(noisy) > 40:
        findings.append(f"{len(noisy)} warning/error lines about a {OUTAGE_S:.0f} s outage "
                        f"({noisy_before} before it), most common: {line_kinds(noisy)}")  # fmt: skip
    during = sorted({answer for t, answer in readiness if outage["down_at"] <= t <= outage["up_at"]})
    # Readiness under an outage is reported, not asserted: whether a worker that cannot reach the
    # broker should answer 503 is the lead's call.
    print(f"settled {round(time.monotonic() - started, 1)} s after the stream started; "
          f"broker outage {outage}: /readyz answers during it {during}, {len(noisy)} warning/error lines, "
          f"dead letters {dead_letter_reasons(settings)}, {report.summary()}")  # fmt: skip
    assert not findings, "\n".join(findings)
    summary = report.summary()
    assert summary["orders_placed"] == 300 and summary["lost_orders"] == 0
    assert summary["oversold_units"] == 0 and summary["double_holds"] == 0


def engine_status(worker: WorkerProcess) -> object:
    try:
        return worker.get("/engine/status")
    except httpx.HTTPError as exc:
        return repr(exc)


def fatal_lines(log: Path) -> list[str]:
    return [line[:300] for line in log.read_text(errors="replace").splitlines() if "atal" in line][-3:]


def line_kinds(lines: list[str], top: int = 6) -> list[tuple[int, str]]:
    """The most frequent kinds of line, with timestamps, pids, ports and ids blanked out."""
    kinds = Counter(re.sub(r"\d+", "#", re.sub(r"^\[[^]]*\] \[\d+\] ", "", line))[:110] for line in lines)
    return [(n, kind) for kind, n in kinds.most_common(top)]


def test_a_transaction_is_whole_or_absent_after_the_broker_stops_during_commits(dedicated_kafka: LocalKafka) -> None:
    """What the engine's guarantee rests on: a transaction the broker acknowledged stands on every partition it
    wrote, or on none, across a broker stop and start. Producers commit transactions of two records (partitions 0
    and 1) back to back while the broker stops. A single broker's controlled shutdown takes the leader of every
    partition away before its transaction coordinator stops: a commit acknowledged in that window was later
    aborted on the partitions the producer's next transaction also wrote, and stood on the others (the broker
    outage test's drift). The local broker therefore runs without controlled shutdown. A race: with it, this
    failed in 2 of 8 runs on a busy machine, without it in 0 of 28."""
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    bootstrap = dedicated_kafka.settings.bootstrap
    topic = "atomicity.check"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
    acknowledged: list[str] = []
    stop = threading.Event()

    def new_producer(name: str) -> Producer:
        while not stop.is_set():
            producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": name,
                                 "transaction.timeout.ms": 10_000, "log_level": 0})  # fmt: skip
            try:
                producer.init_transactions(10)
                return producer
            except KafkaException:
                time.sleep(0.2)
        raise RuntimeError("stopped")

    def commit_back_to_back(name: str) -> None:
        producer, n = new_producer(name), 0
        while not stop.is_set():
            n += 1
            value = f"{name}:{n}".encode()
            try:
                producer.begin_transaction()
                for partition in (0, 1):
                    producer.produce(topic, value, value, partition)
                producer.commit_transaction(10)
                acknowledged.append(value.decode())
            except KafkaException:
                with contextlib.suppress(KafkaException, RuntimeError):
                    producer.purge()
                try:
                    producer = new_producer(name)
                except RuntimeError:
                    return

    committers = [threading.Thread(target=commit_back_to_back, args=(f"atomicity-{k}",), daemon=True)
                  for k in range(COMMITTERS)]  # fmt: skip
    for committer in committers:
        committer.start()
    try:
        wait_for(lambda: len(acknowledged) > 500, timeout_s=60, what="transactions before the stop")
        assert dedicated_kafka.down(), "the broker did not stop"
        time.sleep(3)
        dedicated_kafka.up()
        seen = len(acknowledged)
        wait_for(lambda: len(acknowledged) > seen + 500, timeout_s=90, what="transactions after the restart")
    finally:  # never left committing (and making producers) after the test, whatever failed
        stop.set()
        for committer in committers:
            committer.join(30)

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "atomicity-reader",
                         "isolation.level": "read_committed", "enable.auto.commit": False})  # fmt: skip
    found: dict[int, set[str]] = {0: set(), 1: set()}
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in (0, 1)}
    consumer.assign([TopicPartition(topic, p, 0) for p in (0, 1)])
    deadline = time.monotonic() + 60  # a partition whose transaction never ends keeps a read_committed reader back
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=1):
                if msg.error() is None:
                    found[msg.partition() or 0].add(bytes(msg.value() or b"").decode())
            at = {tp.partition: tp.offset for tp in consumer.position([TopicPartition(topic, p) for p in (0, 1)])}
            if all(at[p] >= ends[p] for p in (0, 1)):
                break
    finally:
        consumer.close()
    halves = sorted(found[0] ^ found[1])
    lost = sorted(set(acknowledged) - found[0] - found[1])
    assert not halves, f"{len(halves)} transactions stand on one partition only, e.g. {halves[:5]}"
    assert not lost, f"{len(lost)} acknowledged transactions are gone, e.g. {lost[:5]}"
