"""Test helpers: reading topics back with a plain consumer, and waiting for conditions."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from loadtest import events as ev
from streams.contract.codec import codec_for
from streams.contract.topics import STOCK_ADJUSTMENTS
from streams.devstack.localkafka import LocalKafka
from streams.engine.producer import EventProducer
from streams.engine.topicreader import read_all
from streams.settings import Settings

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parent.parent


def read_topic(settings: Settings, name: str, timeout_s: float = 10.0) -> list[tuple[str, dict[str, Any]]]:
    """Every (event type, record) now in a topic, from the beginning, in order per partition."""
    codec = codec_for(settings)
    out = []
    for rec in read_all(settings, settings.topic(name), timeout_s):
        event_type, record = codec.decode(rec.value)
        out.append((event_type.short_name, record))
    return out


def wait_for(check: Callable[[], T | None], timeout_s: float = 60.0, what: str = "condition",
             explain: Callable[[], object] | None = None) -> T:  # fmt: skip
    """Poll ``check`` until it returns something truthy; fail with ``what`` after the timeout, and with
    what ``explain`` returns then (the state that says which step stalled)."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    context = f"; {explain()!r}" if explain is not None else ""
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last={last!r}{context}")


def stock(worker, sku: str) -> dict[str, Any]:
    level = worker.get(f"/stock/{sku}")
    if "locked" not in level:  # not seen yet, or the worker is rebalancing: match no expectation
        return {"locked": -1, "sold": -1, "available": -1, "on_hand": -1, "presale_reserved": -1, "paused": None}
    return level


def wait_stock(worker, sku: str, timeout_s: float = 60, **expected: Any) -> dict[str, Any]:
    """Wait until the SKU's figures match ``expected``; the error shows the last figures seen."""
    seen: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        seen.update(stock(worker, sku))
        return dict(seen) if all(seen.get(k) == v for k, v in expected.items()) else None

    try:
        return wait_for(check, timeout_s=timeout_s, what=f"{sku} {expected}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last figures {seen}") from None


def stock_up(producer: EventProducer, worker, sku: str, qty: int, warehouse: str = "WH-SH") -> None:
    """Receive stock and wait until the pool knows it (stock and orders travel different topics)."""
    before = max(stock(worker, sku)["on_hand"], 0)
    producer.send(STOCK_ADJUSTMENTS.name, sku, "StockAdjusted", ev.stock_adjusted(sku, warehouse, qty))
    producer.flush()
    wait_stock(worker, sku, on_hand=before + qty)


def advance_clock(producer: EventProducer, minutes: float) -> None:
    producer.send(
        "ops.clock",
        "clock",
        "ClockAdvanced",
        {"event_id": f"clock-{minutes}", "event_time_ms": ev.now_ms(), "offset_ms": int(minutes * 60_000)},
    )
    producer.flush()


class AppServer:
    """An aiohttp application served on a real 127.0.0.1 port from a thread of the test process."""

    def __init__(self, app: web.Application, port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        self.url = f"http://127.0.0.1:{port}"
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", port).start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def reservation_decisions(settings: Settings) -> dict[str, dict[str, Any]]:
    """The last ``ReservationDecided`` per order id in ``reservation.results``."""
    return {r["order_id"]: r for t, r in read_topic(settings, "reservation.results") if t == "ReservationDecided"}


def dead_letter_reasons(settings: Settings) -> dict[str, int]:
    """How many dead letters there are per reason."""
    counts: dict[str, int] = {}
    for _, record in read_topic(settings, "deadletters"):
        counts[record["reason"]] = counts.get(record["reason"], 0) + 1
    return counts


def audit_until_ok(settings: Settings, timeout_s: float = 180.0) -> Any:
    """Audit until the report is ok (the pipeline may still be draining) or the time is up; return the
    last report either way, so the caller asserts on it and shows what was wrong."""
    from agents.audit.checker import audit

    deadline = time.monotonic() + timeout_s
    report = audit(settings)
    while not report.ok and time.monotonic() < deadline:
        time.sleep(2)
        report = audit(settings)
    return report


def audit_problems(report: Any) -> dict[str, Any]:
    """The first few findings of each kind in an audit report, for an assertion message."""
    return {
        "summary": report.summary(),
        "drift": [
            (
                a.sku,
                a.table_on_hand,
                a.expected_on_hand,
                a.table_open,
                a.expected_open,
                a.totals_disagree,
                a.open_keys_missing_in_table[:3],
                a.open_keys_only_in_table[:3],
            )
            for a in report.drifted[:5]
        ],
        "lost": report.lost_orders[:5],
        "double": report.double_holds[:5],
        "rejected_held": report.rejected_but_held[:5],
        "incomplete": report.reserved_incomplete[:5],
        "paid_without_hold": report.paid_without_hold[:5],
        "shipped_not_deducted": report.shipped_not_deducted[:5],
        "warehouse_overbooked": report.warehouse_overbooked[:5],
        "paid_but_timed_out": report.paid_but_timed_out[:5],
        "overdue": report.overdue_timers[:5],
    }


def stop_broker(kafka: LocalKafka) -> None:
    """Stop a test's own broker once the clients the test left behind are gone: a client caught in an
    exception's traceback lives until the collector runs, and until then it reconnects to the stopped
    broker and fills the test run's output with connection errors."""
    gc.collect()
    kafka.down()
