"""Sending a schedule open-loop, watching lag while it runs, and measuring what the pipeline did.

Two sender threads follow the schedule's clock, one for Kafka (Avro with confluent-kafka, as
marketplace connectors do) and one for the HTTP intake (the own shop); neither waits for the
pipeline. Orders carry their *intended* send time in ``sent_at_ms``, so latency is measured from
when the channel meant to send, and a pipeline that falls behind shows as latency.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import statistics
import threading
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import orjson
from confluent_kafka import Consumer, TopicPartition
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agents.audit.checker import audit
from agents.channels.platforms import sign_callback
from agents.intake.secrets import load_secrets
from loadtest import events as ev
from loadtest.arrivals import Arrival, Arrivals
from loadtest.generator import Planned, Schedule
from loadtest.market import LevelSeen, Marketplaces
from loadtest.stack import group_lag
from streams.contract.codec import Codec, default_codec
from streams.contract.keys import order_key, partition_for
from streams.contract.topics import (
    ALERTS,
    ALL_TOPICS,
    HOLD_COMMANDS,
    HOLD_RESULTS,
    ORDER_EVENTS,
    REFUND_EVENTS,
    REFUND_STATES,
    RESERVATION_RESULTS,
    STOCK_ADJUSTMENTS,
    STOCK_LEVELS,
    SUNK_TOPICS,
)
from streams.engine.loop import engine_group
from streams.engine.producer import EventProducer
from streams.engine.retry import Backoff, Retry, leader_moving
from streams.engine.topicreader import read_all
from streams.gcpolicy import pace_for_batches
from streams.kafkaconf import confluent_config
from streams.settings import Settings

ADDRESS = {"province": "浙江", "city": "杭州", "district": "西湖区", "detail": "文三路 90 号"}
AUDIT_SETTLE_S = 60.0
WATCHED = (ORDER_EVENTS, STOCK_ADJUSTMENTS, HOLD_COMMANDS, HOLD_RESULTS, REFUND_EVENTS)
# The sender sleeps this much past an event's time, then sends every event due by then: one sleep
# per event was thousands of wake-ups a second at 1,500 orders/s, the sender's own CPU on a box it
# shares with the pipeline. Latencies are timed from the intended send time, so this can only add to them.
SEND_SLACK_S = 0.001
INTAKE_CONNECTIONS = 4
DRAINED_AFTER_QUIET_S = 3  # no lag for this long: the pipeline has drained, not just paused


class KeepAlive:
    """One kept-alive HTTP/1.1 connection to intake, as a shop's backend posts its notifications.

    The standard library's client: httpx cost the load generator about 0.8 ms of CPU per post, which
    at 1,500 orders/s took CPU the pipeline under test needed."""

    def __init__(self, base_url: str) -> None:
        url = urlsplit(base_url)
        self._host, self._port = url.hostname or "127.0.0.1", url.port or 80
        self._conn = http.client.HTTPConnection(self._host, self._port, timeout=30)

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> int:
        self._conn.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
        response = self._conn.getresponse()
        response.read()
        return response.status

    def reconnect(self) -> None:
        self._conn.close()
        self._conn = http.client.HTTPConnection(self._host, self._port, timeout=30)

    def close(self) -> None:
        self._conn.close()


@dataclass
class Sent:
    started_epoch_ms: int = 0
    orders: dict[str, int] = field(default_factory=dict)  # order id -> intended send epoch ms
    refunds: dict[str, int] = field(default_factory=dict)  # refund id -> intended send epoch ms
    per_second: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    bad_kafka: set[tuple[str, int, int]] = field(default_factory=set)  # (topic, partition, offset)
    # Payments for orders that never come are kept, not refused: answered by a payment_without_order alert.
    orphan_payments: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # order id -> position
    bad_kafka_sent: int = 0
    bad_intake_sent: int = 0
    bad_intake_refused: int = 0
    intake_errors: int = 0
    behind_ms_by: dict[str, int] = field(default_factory=dict)  # per sender (kafka, intake): how late it ever was
    late_ms: dict[str, int] = field(default_factory=dict)  # order id -> how late its sender sent it

    @property
    def behind_ms(self) -> int:
        """How late the senders themselves ever were (it should stay near 0)."""
        return max(self.behind_ms_by.values(), default=0)


class LoadRun:
    def __init__(self, settings: Settings, schedule: Schedule, intake_url: str, console: Console) -> None:
        self.settings, self.schedule, self.intake_url, self.console = settings, schedule, intake_url, console
        self.own = load_secrets(settings.intake_secrets_file, settings.channels).channels.get("own")
        self.codec = default_codec()
        self.sent = Sent()
        # Latencies end where an outside consumer receives the answer, not where the worker stamped it.
        self.arrivals = Arrivals(settings, (RESERVATION_RESULTS.name, STOCK_LEVELS.name, REFUND_STATES.name))
        self.lag: list[tuple[float, int]] = []
        self.sink_lag = -1
        self.drained = False
        self._done = threading.Event()
        self._lock = threading.Lock()

    # ---- stock first -------------------------------------------------------------------------
    def load_stock(self) -> None:
        producer = EventProducer(self.settings)
        for sku, by_wh in self.schedule.initial_stock.items():
            for wh, qty in by_wh.items():
                producer.send(STOCK_ADJUSTMENTS.name, sku, "StockAdjusted", ev.stock_adjusted(sku, wh, qty))
            if sku in self.schedule.presale_caps:  # the warehouse is ignored: presale units are on no shelf yet
                cap = ev.stock_adjusted(sku, next(iter(by_wh)), self.schedule.presale_caps[sku], kind="PRESALE_CAP")
                producer.send(STOCK_ADJUSTMENTS.name, sku, "StockAdjusted", cap)
        producer.flush()

    # ---- sending ------------------------------------------------------------------------------
    def _wait_until(self, at_s: float, sender: str) -> None:
        due = self.sent.started_epoch_ms / 1000 + at_s
        ahead = due - time.time()
        if ahead > 0:
            time.sleep(ahead + SEND_SLACK_S)
        elif ahead < -SEND_SLACK_S:
            with self._lock:  # the intake senders are several threads
                late = self.sent.behind_ms_by
                late[sender] = max(late.get(sender, 0), int(-ahead * 1000))

    def _send_kafka(self, events: list[Planned], progress: Progress, task: Any) -> None:
        producer = EventProducer(self.settings, codec=self.codec)
        for e in events:
            self._wait_until(e.at_s, "kafka")
            intended = self.sent.started_epoch_ms + int(e.at_s * 1000)
            key = order_key(e.channel, e.order)
            if e.kind == "order":
                lines = [ev.line(n + 1, sku, qty) for n, (sku, qty) in enumerate(e.lines)]
                record = ev.order_placed(e.channel, e.order, lines, presale=e.presale, sent_at_ms=intended,
                                         event_time_ms=intended)  # fmt: skip
                producer.send(ORDER_EVENTS.name, key, "OrderPlaced", record)
                with self._lock:
                    self.sent.orders[key] = intended
                    self.sent.late_ms[key] = int(time.time() * 1000) - intended
                    self.sent.per_second[int(e.at_s)] += 1
                progress.advance(task)
            elif e.kind in ("payment", "balance"):
                pay = ev.payment_confirmed(e.channel, e.order, ev.payment_fen(e.lines, e.presale, e.kind == "balance"))
                if e.kind == "balance":
                    pay = {**pay, "event_id": f"balance:{key}", "balance": True}
                producer.send(ORDER_EVENTS.name, key, "PaymentConfirmed", pay)
            elif e.kind == "cancel":
                producer.send(ORDER_EVENTS.name, key, "OrderCancelled", ev.order_cancelled(e.channel, e.order))
            elif e.kind == "refund":
                amount = sum(qty * ev.DEFAULT_PRICE_FEN for _, qty in e.lines)
                refund = ev.refund_requested(e.channel, e.order, f"rf-{e.order}", amount, kind="REFUND_ONLY",
                                             event_time_ms=intended, sent_at_ms=intended)  # fmt: skip
                producer.send(REFUND_EVENTS.name, key, "RefundRequested", refund)
                with self._lock:
                    self.sent.refunds[f"{e.channel}:rf-{e.order}"] = intended
            elif e.kind == "receipt":
                adj = {**ev.stock_adjusted(e.sku, e.warehouse, e.qty), "event_id": e.order}
                producer.send(STOCK_ADJUSTMENTS.name, e.sku, "StockAdjusted", adj)
            elif e.kind == "bad":
                self._send_bad(producer, e)
        producer.flush(120)

    def _send_bad(self, producer: EventProducer, e: Planned) -> None:
        """One message of a class the pipeline must refuse; its position is kept to match the refusal."""
        key = order_key(e.channel, e.order)
        order = ev.order_placed(e.channel, e.order, [ev.line(1, e.sku, 1)])
        topic, msg_key, partition = ORDER_EVENTS.name, key, None
        if e.bad == "bad_header":
            value = b"<xml>not avro</xml>"
        elif e.bad == "unknown_fingerprint":
            value = b"\xc3\x01" + os.urandom(8) + b"\x02\x04"
        elif e.bad == "truncated":
            value = self.codec.encode("OrderPlaced", order)[:-9]
        elif e.bad == "invalid_qty":
            value = self.codec.encode("OrderPlaced", {**order, "lines": [ev.line(1, e.sku, 0)]})
        elif e.bad == "unknown_channel":
            msg_key = f"ebay:{e.order}"
            value = self.codec.encode("OrderPlaced", {**order, "channel": "ebay"})
        elif e.bad == "missing_field":
            value = self.codec.encode("OrderPlaced", {**order, "lines": []})
        elif e.bad == "unknown_warehouse":
            topic, msg_key = STOCK_ADJUSTMENTS.name, e.sku
            value = self.codec.encode("StockAdjusted", {**ev.stock_adjusted(e.sku, "WH-NOWHERE", 5),
                                                        "event_id": f"adj-{e.order}"})  # fmt: skip
        elif e.bad == "unknown_order":
            value = self.codec.encode("PaymentConfirmed", ev.payment_confirmed(e.channel, e.order))
        else:  # misrouted_partition: a valid order on a partition that does not own it
            value = self.codec.encode("OrderPlaced", order)
            partition = (partition_for(key.encode(), self.settings.partitions) + 1) % self.settings.partitions

        def delivered(err: Any, msg: Any) -> None:
            if err is None:
                with self._lock:
                    self.sent.bad_kafka.add((msg.topic(), msg.partition(), msg.offset()))
                    if e.bad == "unknown_order":
                        self.sent.orphan_payments[key] = (msg.topic(), msg.partition(), msg.offset())

        producer.send_raw(topic, msg_key, value, partition=partition, on_delivery=delivered)
        self.sent.bad_kafka_sent += 1

    def _send_intake(self, events: list[Planned], progress: Progress, task: Any) -> None:
        client = KeepAlive(self.intake_url)
        try:
            for e in events:
                self._wait_until(e.at_s, "intake")
                intended = self.sent.started_epoch_ms + int(e.at_s * 1000)
                try:
                    self._post(client, e, intended)
                except (OSError, http.client.HTTPException):
                    client.reconnect()
                    self._count("intake_errors")
                if e.kind == "order":
                    progress.advance(task)
        finally:
            client.close()

    def _count(self, counter: str) -> None:
        with self._lock:  # the intake senders are several threads
            setattr(self.sent, counter, getattr(self.sent, counter) + 1)

    def _post(self, client: KeepAlive, e: Planned, intended: int) -> None:
        if e.kind == "bad":
            self._count("bad_intake_sent")
            if e.bad == "intake_malformed_json":
                status = client.post("/v1/channels/own/order", b'{"order_id": "x", "lines": [')
            else:
                body = {"order_id": e.order, "amount_fen": 100, "lines": [{"sku": "NOT-IN-CATALOGUE", "qty": 1}],
                        "address": ADDRESS}  # fmt: skip
                status = self._post_json(client, "/v1/channels/own/order", body)
            if HTTPStatus.BAD_REQUEST <= status < HTTPStatus.INTERNAL_SERVER_ERROR:
                self._count("bad_intake_refused")
            return
        if e.kind == "order":
            # The order's amount is its lines' (a refund of the whole order asks exactly that much back).
            body = {"order_id": e.order, "amount_fen": ev.payment_fen(e.lines, False, False), "sent_at_ms": intended,
                    "placed_at_ms": intended, "presale": e.presale, "customer_id": f"c-{e.order}",
                    "lines": [{"line_no": n + 1, "sku": sku, "qty": qty, "unit_price_fen": ev.DEFAULT_PRICE_FEN}
                              for n, (sku, qty) in enumerate(e.lines)],
                    "address": ADDRESS}  # fmt: skip
            path = "/v1/channels/own/order"
            with self._lock:
                self.sent.orders[f"own:{e.order}"] = intended
                self.sent.late_ms[f"own:{e.order}"] = int(time.time() * 1000) - intended
                self.sent.per_second[int(e.at_s)] += 1
        elif e.kind in ("payment", "balance"):
            body, path = (
                {"order_id": e.order, "payment_id": f"pay-{e.order}",
                 "amount_fen": ev.payment_fen(e.lines, e.presale, e.kind == "balance"), "balance": e.kind == "balance"},
                "/v1/channels/own/payment",
            )
        else:
            body, path = {"order_id": e.order, "reason": "buyer"}, "/v1/channels/own/cancel"
        if self._post_json(client, path, body) != HTTPStatus.OK:
            self._count("intake_errors")

    def _post_json(self, client: KeepAlive, path: str, body: dict[str, Any]) -> int:
        """Post as the own shop's site does: signed with its secret when the intake has one for it."""
        if self.own is None:
            return client.post(path, orjson.dumps(body))
        signed = sign_callback("own", self.own, path.rsplit("/", 1)[-1], body, int(time.time() * 1000))
        return client.post(path, signed.body, dict(signed.headers))

    def _watch_lag(self) -> None:
        consumer = Consumer({**confluent_config(self.settings), "group.id": engine_group(self.settings),
                             "enable.auto.commit": False})  # fmt: skip
        sink = Consumer({**confluent_config(self.settings), "group.id": f"{self.settings.app_id}.sink",
                         "enable.auto.commit": False})  # fmt: skip
        try:
            while not self._done.is_set():
                with contextlib.suppress(Exception):  # a sample lost to a rebalance: a gap in the chart
                    self.lag.append((time.time(), group_lag(self.settings, consumer, WATCHED)))
                    self.sink_lag = group_lag(self.settings, sink, SUNK_TOPICS)
                self._done.wait(1.0)
        finally:
            consumer.close()
            sink.close()

    def send(self) -> None:
        kafka = [e for e in self.schedule.events if not e.via_intake]
        intake = [e for e in self.schedule.events if e.via_intake]
        # The schedule is hundreds of thousands of objects that live until the end: a full collection
        # scanning them held the GIL for 100-400 ms, and senders and watcher alike stood still (sends
        # late, arrivals stamped late, both counted as the pipeline's latency). Frozen, nothing scans them.
        pace_for_batches()
        watcher = threading.Thread(target=self._watch_lag, daemon=True)
        watcher.start()
        self.arrivals.start()
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]} orders/s  lag {task.fields[lag]}"), TimeElapsedColumn())  # fmt: skip
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task(self.schedule.profile, total=self.schedule.orders, rate="-", lag="-")
            self.sent.started_epoch_ms = int(time.time() * 1000) + 500
            # The own shop's site posts from several connections at once, as its web servers do: on one,
            # a slow answer would hold every later order back and its delay would count as the pipeline's.
            # An order's notifications all go through one connection, in order.
            shares: list[list[Planned]] = [[] for _ in range(INTAKE_CONNECTIONS)]
            for e in intake:
                shares[zlib.crc32(e.order.encode()) % INTAKE_CONNECTIONS].append(e)
            senders = [threading.Thread(target=self._send_kafka, args=(kafka, progress, task))]
            senders += [threading.Thread(target=self._send_intake, args=(share, progress, task)) for share in shares]
            for t in senders:
                t.start()
            while any(t.is_alive() for t in senders):
                elapsed = max(time.time() - self.sent.started_epoch_ms / 1000, 1e-3)
                lag = self.lag[-1][1] if self.lag else "-"
                progress.update(task, rate=f"{len(self.sent.orders) / elapsed:,.0f}", lag=lag)
                time.sleep(0.5)
            for t in senders:
                t.join()

    def drain(self, timeout_s: float) -> float:
        """Wait until the agents have caught up (the epoch seconds when they did) and the sink too."""
        deadline = time.monotonic() + timeout_s
        quiet_since = None
        while time.monotonic() < deadline:
            lag = self.lag[-1][1] if self.lag else 1
            if lag == 0 and quiet_since and self.sink_lag == 0 and time.time() - quiet_since >= DRAINED_AFTER_QUIET_S:
                self.drained = True
                break
            quiet_since = (quiet_since or time.time()) if lag == 0 else None
            time.sleep(0.5)
        self._done.set()
        self.arrivals.stop()
        return quiet_since or time.time()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


MIN_LAG_SAMPLES = 3  # a line through fewer says nothing about a trend


def lag_slope(samples: list[tuple[float, int]], from_s: float, to_s: float) -> float | None:
    """Records of backlog gained per second over [from_s, to_s] (least squares): ~0 when the lag is flat,
    the shortfall in events/s when the worker falls behind; None when too few samples fell in it."""
    window = [(t, lag) for t, lag in samples if from_s <= t <= to_s]
    if len(window) < MIN_LAG_SAMPLES:
        return None
    return round(statistics.linear_regression([t for t, _ in window], [lag for _, lag in window]).slope, 1)


def count_records(settings: Settings, from_ms: int, to_ms: int) -> tuple[int, int]:
    """Records in the contract topics: all of them, and those the broker stamped within [from_ms, to_ms)."""
    probe = Consumer({**confluent_config(settings), "group.id": f"{settings.app_id}-count"})
    # A partition whose leader moves (or a topic just made) answers again in a moment.
    ask = Retry("counting the run's records", leader_moving, deadline_s=60, backoff=Backoff(0.2, 2.0)).call
    try:
        total = within = 0
        for spec in ALL_TOPICS:
            parts = [TopicPartition(settings.topic(spec.name), p) for p in range(spec.partitions(settings))]
            ends = [ask(partial(probe.get_watermark_offsets, tp, timeout=10))[1] for tp in parts]
            total += sum(ends)
            # One request per bound: the partitions of a topic at one time each.
            firsts, lasts = (ask(partial(probe.offsets_for_times, [TopicPartition(tp.topic, tp.partition, at)
                                                                  for tp in parts], timeout=10))
                             for at in (from_ms, to_ms))  # fmt: skip
            for end, first, last in zip(ends, firsts, lasts, strict=True):
                # -1: no record at or after that time, so the partition's end.
                within += (last.offset if last.offset >= 0 else end) - (first.offset if first.offset >= 0 else end)
        return total, within
    finally:
        probe.close()


def first_received(arrivals: list[Arrival]) -> dict[str, int]:
    """Per record key: when the first record with it reached the outside watch (epoch ms). Keys only:
    the records themselves are read from the topic once, by ``measure``."""
    first: dict[str, int] = {}
    for arrival in arrivals:
        if arrival.key is not None:
            first.setdefault(arrival.key.decode(), arrival.received_ms)
    return first


def _refund_decision_ms(codec: Codec, arrivals: list[Arrival], sent: Sent) -> list[float]:
    """Per refund sent: intended send time -> its first decision (paying, or handed to customer service)
    received outside."""
    decided: dict[str, float] = {}
    for arrival in arrivals:
        _, r = codec.decode(arrival.value)
        sent_at = sent.refunds.get(r["refund_id"])
        if sent_at is not None and r["refund_id"] not in decided and r["state"] != "requested":
            decided[r["refund_id"]] = arrival.received_ms - sent_at
    return list(decided.values())


def _refused_bad_inputs(settings: Settings, codec: Codec, sent: Sent) -> set[tuple[str, int, int]]:
    """The positions of the bad inputs sent to Kafka that the pipeline answered: dead-lettered, or (a
    payment for an order that never comes, which is kept) raised as a ``payment_without_order`` alert."""
    refused = set()
    for rec in read_all(settings, settings.topic("deadletters"), 30):
        _, dl = codec.decode(rec.value)
        position = (dl["source_topic"], dl["source_partition"], dl["source_offset"])
        if position in sent.bad_kafka:
            refused.add(position)
    if sent.orphan_payments:
        for rec in read_all(settings, settings.topic(ALERTS.name), 30):
            _, al = codec.decode(rec.value)
            if al["kind"] == "payment_without_order" and al["subject"] in sent.orphan_payments:
                refused.add(sent.orphan_payments[al["subject"]])
    return refused


def measure(run: LoadRun, drained_at: float, market: Marketplaces | None = None) -> dict[str, Any]:
    """Figures of the run, from the topics (latencies, counts) and the independent checker (invariants);
    with ``market``, also what reached the marketplaces (channel pushes, refunds agreed)."""
    settings, codec, sent = run.settings, run.codec, run.sent
    seen = run.arrivals.seen
    received = first_received(seen[RESERVATION_RESULTS.name])  # the topic is keyed by order id
    decisions: dict[str, int] = {}
    unseen = 0  # decided (the topic holds it) but never reached the outside watch: left out of latencies
    decided_per_second: dict[int, int] = defaultdict(int)
    latency_by_second: dict[int, list[float]] = defaultdict(list)
    # Where a decision's time went: before the worker's batch took it (sender, broker, fetch, the batch in
    # hand), and from there to the outside consumer (apply, commit, fetch); and by sender.
    split: dict[str, list[float]] = defaultdict(list)
    for rec in read_all(settings, settings.topic("reservation.results"), 30):
        _, r = codec.decode(rec.value)
        order = r["order_id"]
        if order not in sent.orders or order in decisions:
            continue
        if order not in received:
            unseen += 1
            continue
        decisions[order] = received[order]
        second = (sent.orders[order] - sent.started_epoch_ms) // 1000
        latency_by_second[second].append(received[order] - sent.orders[order])
        split["to_batch"].append(r["event_time_ms"] - sent.orders[order])
        if order in sent.late_ms:
            split["sender_late"].append(sent.late_ms[order])
        split["batch_to_outside"].append(received[order] - r["event_time_ms"])
        split["intake" if order.startswith("own:") else "kafka"].append(received[order] - sent.orders[order])
        decided_per_second[(received[order] - sent.started_epoch_ms) // 1000] += 1
    decision_ms = [ms for v in latency_by_second.values() for ms in v]
    refund_ms = _refund_decision_ms(codec, seen[REFUND_STATES.name], sent)
    refresh_ms = []
    seen_sources: set[tuple[str, int]] = set()
    levels: list[LevelSeen] = []
    for rec in read_all(settings, settings.topic(STOCK_LEVELS.name), 30):
        _, lv = codec.decode(rec.value)
        levels.append(LevelSeen(lv["sku"], lv["newest_change_ms"], lv["newest_source_ms"], lv["sellable"]))
    for arrival in seen[STOCK_LEVELS.name]:
        _, lv = codec.decode(arrival.value)
        source = (lv["sku"], lv["newest_source_ms"])
        if lv["newest_source_ms"] >= sent.started_epoch_ms and source not in seen_sources:
            seen_sources.add(source)
            refresh_ms.append(arrival.received_ms - lv["newest_source_ms"])
    refused = _refused_bad_inputs(settings, codec, sent)
    # Timers still fire after the inputs are drained (payment timeouts, expiries), and the audit reads
    # topic after topic: a change landing in between is not drift. Ask again until it settles.
    report = audit(settings)
    settle_by = time.monotonic() + AUDIT_SETTLE_S
    while not report.ok and time.monotonic() < settle_by:
        time.sleep(2)
        report = audit(settings)
    summary = report.summary()
    started = sent.started_epoch_ms / 1000
    send_window = run.schedule.duration_s
    # Achieved orders/s and events/s: over the time until the last decision (at least the send window).
    last_decision_s = (max(decisions.values()) / 1000 - started) if decisions else send_window
    active_s = max(last_decision_s, send_window)
    total_records, active_records = count_records(settings, sent.started_epoch_ms, int((started + active_s) * 1000))
    channels = {} if market is None else market.figures(levels, sent.refunds, sent.started_epoch_ms, codec)
    return {
        "orders_sent": len(sent.orders),
        "orders_decided": len(decisions) + unseen,
        "decisions_unseen_live": unseen,
        "offered_orders_per_s": round(len(sent.orders) / send_window, 1),
        "achieved_orders_per_s": round((len(decisions) + unseen) / active_s, 1),
        "events": total_records,
        # Over the time orders were taken, as achieved orders/s: the drain after it (payment timeouts
        # still to fire) is the pipeline waiting, not working.
        "events_per_s": round(active_records / active_s, 1),
        "events_per_order": round(total_records / max(len(sent.orders), 1), 2),
        "drain_s": round(drained_at - started - send_window, 1),
        "p50_decision_ms": round(percentile(decision_ms, 0.5), 1),
        "p99_decision_ms": round(percentile(decision_ms, 0.99), 1),
        "p999_decision_ms": round(percentile(decision_ms, 0.999), 1),
        "decision_ms_split": {part: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99)}
                              for part, v in sorted(split.items())},
        "refunds_sent": len(sent.refunds),
        "refunds_decided": len(refund_ms),
        "p50_refund_decision_ms": round(percentile(refund_ms, 0.5), 1),
        "p99_refund_decision_ms": round(percentile(refund_ms, 0.99), 1),
        "refunds_paid_twice": summary["refunds_paid_twice"],
        "refunds_lost": summary["refunds_lost"],
        "p50_stock_refresh_ms": round(percentile(refresh_ms, 0.5), 1),
        "p99_stock_refresh_ms": round(percentile(refresh_ms, 0.99), 1),
        "p999_stock_refresh_ms": round(percentile(refresh_ms, 0.999), 1),
        "oversold_units": summary["oversold_units"],
        "lost_orders": summary["lost_orders"],
        "double_holds": summary["double_holds"],
        "skus_drifted": summary["skus_drifted"],
        # Everything else the checker can find (a refund above its order's price, a paid order with no hold...):
        # a run is not green while any of it is found.
        "audit_other_failures": sum(summary["other_failures"].values()),
        "audit_other_failure_kinds": summary["other_failures"],
        # A run's topics are its own and start at 0: anything the checker could not judge is a hole in the proof.
        "audit_unjudged": summary["unjudged"],
        "bad_inputs_sent": sent.bad_kafka_sent + sent.bad_intake_sent,
        "bad_inputs_refused": len(refused) + sent.bad_intake_refused,
        "intake_errors": sent.intake_errors,
        "sender_behind_ms": sent.behind_ms,
        "sender_behind_ms_by": dict(sent.behind_ms_by),
        "max_lag": max((lag for _, lag in run.lag), default=0),
        "lag_slope_per_s": lag_slope(run.lag, started + send_window / 2, started + send_window),
        "p50_decision_ms_last_10s": round(percentile(
            [ms for s, v in latency_by_second.items() if s >= send_window - 10 for ms in v], 0.5), 1),
        **channels,
        "series": {
            "second": sorted(set(sent.per_second) | set(decided_per_second)),
            "sent": dict(sent.per_second),
            "decided": dict(decided_per_second),
            "p99_ms": {s: percentile(v, 0.99) for s, v in latency_by_second.items()},
            "lag": [(round(t - started, 1), lag) for t, lag in run.lag],
            "decided_ms": decisions,  # order id -> epoch ms of its first decision (rebalance and hot-SKU figures)
        },
    }
