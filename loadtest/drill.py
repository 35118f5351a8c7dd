"""`stockflow drill key-rotation`: the seed's incident, end to end on the local stack.

The seed: a marketplace rotated its API key at 14:00; from 14:23 every "issue refund" call failed with
"Invalid API Key"; 317 refunds piled up and took two hours to reissue. The drill runs it on fresh topics:

1. Kafka (started if none runs), a worker, the outbound connectors, the intake (it receives the
   simulator's signed settlement notifications) and the marketplace simulator;
2. ``refunds`` jd orders delivered (one unit, 99 yuan: each refund qualifies for the 7-day
   no-reason return, so stockflow approves it and instructs the refund at once);
3. the refund requests, spread over ``spread_s`` seconds; jd rotates its key ``rotate_after_s`` seconds
   in: from then on every refund call fails "Invalid API Key" and lands on ``connector.failed.jd``;
4. the ``connector_failing`` alert is waited for (seconds from the rotation);
5. once every instruction has been tried, the operator's part: the new key is stored (what
   ``stockflow connectors set-key jd`` does; the intake's callback secret too) and jd's failed queue is
   replayed (what ``stockflow connectors replay jd`` does);
6. the verdict from the simulator's own records: refunds agreed once, twice, never.

Everything started is stopped at the end; the figures are returned for ``--json`` and BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from rich.console import Console

from agents.channels.credentials import CredentialStore, StoredKey
from agents.channels.failed_queue import Replay, ReplaySummary, pending
from agents.channels.outbound import FAILING_ALERT, failing_subject
from agents.channels.platforms import Credentials
from agents.channels.sim_client import SimulatorClient
from agents.channels.simulator import AppSpec, Marketplace, SimulatorThread, generate_apps
from agents.intake.secrets import write_secrets
from loadtest import events as ev
from loadtest.bench import start_intake
from loadtest.stack import isolated, local_stack
from streams.contract.codec import codec_for
from streams.contract.keys import order_key
from streams.contract.topics import ORDER_EVENTS, REFUND_EVENTS, STOCK_ADJUSTMENTS, ensure_topics
from streams.devstack.connectorproc import ConnectorsProcess
from streams.devstack.procs import free_ports
from streams.devstack.workerproc import WorkerProcess
from streams.engine.clock import wall_ms
from streams.engine.producer import EventProducer
from streams.engine.topicreader import read_all
from streams.settings import Settings

CHANNEL = "jd"
APP_KEY = "jd-drill-app"
SKU = "DRILL-SKU"
WAREHOUSE = "WH-SH"
PRICE_FEN = 9_900


@dataclass
class DrillResult:
    refunds: int
    failed: int = 0  # refund calls parked on the failed queue after the rotation
    replayed: int = 0
    refunded_once: int = 0
    refunded_twice: int = 0
    lost: int = 0
    duplicate_attempts: int = 0  # repeats the marketplace answered "already refunded"
    seconds_from_rotation_to_alert: float | None = None
    seconds_to_recover: float | None = None  # new key stored -> every refund agreed
    settled: int = 0  # settlement notifications stockflow received and completed the refund with
    replay: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.refunded_once == self.refunds and not self.refunded_twice and not self.lost

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


def _wait(check: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"drill: no {what} within {timeout_s:.0f}s")
        time.sleep(poll_s)


class KeyRotationDrill:
    def __init__(self, settings: Settings, refunds: int, spread_s: float, rotate_after_s: float,
                 console: Console) -> None:  # fmt: skip
        self.refunds, self.spread_s, self.rotate_after_s, self.console = refunds, spread_s, rotate_after_s, console
        self.tag, base = isolated(settings, "drill")
        web, intake, connectors = free_ports(3)
        self.logs = base.home_dir / "logs" / f"drill-{self.tag}"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.intake_port = intake
        self.old = Credentials(APP_KEY, secrets.token_hex(16))
        self.new = Credentials(APP_KEY, secrets.token_hex(16))
        self.settings = base.model_copy(update={
            "web_port": web, "connectors_port": connectors, "safety_threshold": 0,
            "connector_credentials_file": self.logs / "credentials.json",
            "intake_secrets_file": write_secrets(self.logs / "intake-secrets.toml", {CHANNEL: self.old}),
        })  # fmt: skip
        self.codec = codec_for(self.settings)
        self.orders = [f"drill-{self.tag}-{n}" for n in range(refunds)]

    # ---- the run ------------------------------------------------------------------------------------------
    def run(self) -> DrillResult:
        apps = {**generate_apps(), CHANNEL: [AppSpec(app_key=APP_KEY, secret=self.old.secret)]}
        settle_url = f"http://127.0.0.1:{self.intake_port}/v1/channels/{CHANNEL}/refund_settled"
        simulator = SimulatorThread(Marketplace(apps), settle_url=settle_url, settle_delay_ms=500)
        with local_stack(self.settings, self.console), simulator as sim, SimulatorClient(sim.base_url) as client:
            self.settings = self.settings.model_copy(update={"marketplace_url": sim.base_url})
            CredentialStore.from_settings(self.settings).set_key(
                StoredKey(CHANNEL, self.old, date.today() + timedelta(days=365), wall_ms()))
            with self._processes():
                result = self._incident(client)
        return result

    @contextlib.contextmanager
    def _processes(self) -> Iterator[None]:
        ensure_topics(self.settings)
        worker = self.worker = WorkerProcess(self.settings, self.logs / "worker.log")
        connectors = ConnectorsProcess(self.settings, self.logs / "connectors.log")
        intake = None
        try:
            with self.console.status("starting a worker, the connectors and the intake..."):
                worker.start()
                connectors.start()
                intake = start_intake(self.settings, self.intake_port, self.logs / "intake.log")
                worker.wait_ready()
                connectors.wait_ready()
            yield
        finally:
            connectors.stop()
            worker.stop()
            if intake is not None:
                intake.terminate()
                intake.wait(30)

    def _incident(self, market: SimulatorClient) -> DrillResult:
        result = DrillResult(self.refunds)
        producer = EventProducer(self.settings)
        with self.console.status(f"delivering {self.refunds} jd orders..."):
            self._deliver_orders(producer)
        rotation_ms = self._send_refunds(producer, market)
        with self.console.status("waiting for the connector_failing alert..."):
            alert_ms = self._alert_after(rotation_ms)
        result.seconds_from_rotation_to_alert = round((alert_ms - rotation_ms) / 1000, 2)
        with self.console.status("waiting until every refund instruction has been tried..."):
            _wait(lambda: self._agreed(market) + self._parked() >= self.refunds, 120, "end of the failing calls")
        result.failed = self._parked()
        alert_s = result.seconds_from_rotation_to_alert
        self.console.print(f"key rotated: {result.failed} refund calls failed, parked in order on "
                           f"connector.failed.{CHANNEL}; alert {alert_s}s after")  # fmt: skip
        fixed_at = time.monotonic()
        CredentialStore.from_settings(self.settings).set_key(
            StoredKey(CHANNEL, self.new, date.today() + timedelta(days=365), wall_ms()))
        write_secrets(self.logs / "intake-secrets.toml", {CHANNEL: self.new})
        summary = self._replay()
        result.replay = summary.to_json()
        result.replayed = summary.replayed
        _wait(lambda: self._agreed(market) >= self.refunds, 60, "every refund agreed after the replay")
        result.seconds_to_recover = round(time.monotonic() - fixed_at, 2)
        self._verdict(market, result)
        with contextlib.suppress(TimeoutError):
            _wait(lambda: self._completed() >= self.refunds, 30, "settlements")
        result.settled = self._completed()
        return result

    # ---- steps --------------------------------------------------------------------------------------------
    def _deliver_orders(self, producer: EventProducer) -> None:
        stock = ev.stock_adjusted(SKU, WAREHOUSE, self.refunds + 10, adjustment_id=f"drill-{self.tag}-stock")
        producer.send(STOCK_ADJUSTMENTS.name, SKU, "StockAdjusted", stock)
        producer.flush()
        # Stock and orders travel different topics: the pool must know the SKU before the first order asks.
        _wait(lambda: self.worker.get(f"/stock/{SKU}").get("on_hand", 0) >= self.refunds + 10, 60, "stock in the pool")
        for number in self.orders:
            key = order_key(CHANNEL, number)
            for kind, record in (
                ("OrderPlaced", ev.order_placed(CHANNEL, number, [ev.line(1, SKU, 1, PRICE_FEN)])),
                ("PaymentConfirmed", ev.payment_confirmed(CHANNEL, number)),
                ("ShipmentDispatched", ev.shipment_dispatched(CHANNEL, number, WAREHOUSE)),
                ("ShipmentDelivered", ev.shipment_delivered(CHANNEL, number)),
            ):
                producer.send(ORDER_EVENTS.name, key, kind, record)
        producer.flush()
        wanted = {order_key(CHANNEL, n) for n in self.orders}
        _wait(lambda: wanted <= self._in_state("order.states", "order_id", "delivered"), 120, "delivered orders")

    def _send_refunds(self, producer: EventProducer, market: SimulatorClient) -> int:
        """Send the requests over ``spread_s``; rotate jd's key ``rotate_after_s`` in. Returns the rotation time."""
        started = time.monotonic()
        rotation_ms = wall_ms() + int(self.rotate_after_s * 1000)
        market.rotate(CHANNEL, rotation_ms, self.new.secret, app_key=APP_KEY)
        self.console.print(f"sending {self.refunds} refund requests over {self.spread_s:.0f}s; jd rotates its key "
                           f"after {self.rotate_after_s:.0f}s")  # fmt: skip
        for n, number in enumerate(self.orders):
            due = started + self.spread_s * n / self.refunds
            time.sleep(max(0.0, due - time.monotonic()))
            request = ev.refund_requested(CHANNEL, number, f"DR-{number}", PRICE_FEN)
            producer.send(REFUND_EVENTS.name, order_key(CHANNEL, number), "RefundRequested", request)
            producer.poll(0)
        producer.flush()
        return rotation_ms

    def _alert_after(self, rotation_ms: int) -> int:
        found: list[int] = []

        def raised() -> bool:
            for rec in read_all(self.settings, self.settings.topic("alerts"), 10):
                _, alert = self.codec.decode(rec.value)
                refunds_failing = alert["subject"] == failing_subject(CHANNEL, "refund")
                if alert["kind"] == FAILING_ALERT and refunds_failing and not alert["cleared"]:
                    found.append(int(alert["event_time_ms"]))
                    return True
            return False

        _wait(raised, 120, "connector_failing alert", poll_s=1.0)
        return max(found[0], rotation_ms)

    def _replay(self) -> ReplaySummary:
        with self.console.status(f"replaying connector.failed.{CHANNEL}..."):
            summary = Replay(self.settings, CHANNEL).run()
        self.console.print(f"replay: {summary.sent} sent, {summary.already_applied} already applied, "
                           f"{summary.still_failing} still failing")  # fmt: skip
        return summary

    def _verdict(self, market: SimulatorClient, result: DrillResult) -> None:
        """From the marketplace's own records: how often each of the drill's refunds was paid."""
        agreed = self._ours(market)
        result.refunded_once = sum(1 for r in agreed.values() if r["agreed"] == 1)
        result.refunded_twice = sum(1 for r in agreed.values() if r["agreed"] > 1)
        result.duplicate_attempts = sum(int(r["duplicate_attempts"]) for r in agreed.values())
        result.lost = self.refunds - len(agreed)

    # ---- reads --------------------------------------------------------------------------------------------
    def _ours(self, market: SimulatorClient) -> dict[str, dict[str, Any]]:
        ours = {f"DR-{n}" for n in self.orders}
        return {r["refund_id"]: r for r in market.refunds(CHANNEL) if r["refund_id"] in ours}

    def _agreed(self, market: SimulatorClient) -> int:
        return len(self._ours(market))

    def _parked(self) -> int:
        start, end = pending(self.settings, CHANNEL)
        return end - start

    def _in_state(self, topic: str, id_field: str, state: str) -> set[str]:
        out = set()
        for rec in read_all(self.settings, self.settings.topic(topic), 10):
            _, record = self.codec.decode(rec.value)
            if record["state"] == state:
                out.add(record[id_field])
        return out

    def _completed(self) -> int:
        return len(self._in_state("refund.states", "refund_id", "completed"))


def key_rotation(settings: Settings, refunds: int, spread_s: float, rotate_after_s: float,
                 console: Console) -> DrillResult:  # fmt: skip
    return KeyRotationDrill(settings, refunds, spread_s, rotate_after_s, console).run()
