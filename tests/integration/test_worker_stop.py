"""A worker's clean stop is clean, and its views answer without tracebacks right from the start.

Real broker. The worker runs with the webhook notifier (its Faust tables exist) and clock control
(its own consumer), is asked its views as soon as it listens, then stopped with SIGTERM: its log
must hold no traceback and no "Unclosed AIOKafkaConsumer"."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from streams.contract.topics import ensure_topics
from streams.devstack.procs import free_ports
from streams.devstack.workerproc import WorkerProcess
from streams.settings import Settings

pytestmark = pytest.mark.broker

VIEWS = ("/stock/SKU-1", "/orders/tmall:T1", "/orders/tmall:T1/refunds/R1", "/customers/tmall/c1/returns",
         "/readyz", "/notify/status", "/router/notify_pending/abc/", "/table/notify_pending/abc/")  # fmt: skip


def test_views_asked_from_the_start_and_a_clean_stop_leave_no_traceback(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    (robot,) = free_ports(1)
    settings = make_settings(webhook_url=f"http://127.0.0.1:{robot}/hook", clock_control=True)
    ensure_topics(settings)
    log = tmp_path / "worker.log"
    worker = WorkerProcess(settings, log).start()
    answered: dict[str, set[int]] = {path: set() for path in VIEWS}
    try:
        deadline = time.monotonic() + 90
        ready = False
        while not ready and time.monotonic() < deadline:  # from before the worker holds its partitions
            assert worker.alive(), log.read_text()
            for path in VIEWS:
                try:
                    status = httpx.get(worker.base_url + path, timeout=5).status_code
                except httpx.HTTPError:
                    continue  # not listening yet
                answered[path].add(status)
                ready = ready or (path == "/readyz" and status == 200)
            time.sleep(0.2)
        assert ready, f"the worker was not ready within 90 s:\n{log.read_text()}"
    finally:
        worker.stop()
    assert worker.proc is not None and worker.proc.returncode is not None, "the worker did not stop"
    text = log.read_text(errors="replace")
    assert "Unclosed AIOKafkaConsumer" not in text, text
    assert "Traceback" not in text, text
    for path, statuses in answered.items():
        assert statuses and all(s < 500 or s == 503 for s in statuses), (path, statuses)
    # Faust's own table-routing views are off: stockflow's views route by the engine's partitions.
    assert answered["/router/notify_pending/abc/"] == {404}
