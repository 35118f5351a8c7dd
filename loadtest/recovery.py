"""`stockflow bench-recovery`: how long a worker takes to come back with a large `stock_by_sku` store.

Fills the pool with one stock receipt for each of N SKUs (2N store keys: totals and adjustment ids),
waits until the worker has applied them, kills it with ``kill -9`` and starts it again twice:
once with its RocksDB folder intact (the usual restart) and once with the folder deleted (a new
machine: the table is rebuilt from the changelog topic). Recovery is timed from the start of the
new process until the worker answers ``/stock/{sku}`` for a SKU with the right figures.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from loadtest import events as ev
from loadtest.stack import isolated
from streams.contract.topics import STOCK_ADJUSTMENTS, ensure_topics
from streams.devstack.workerproc import WorkerProcess
from streams.engine.producer import EventProducer
from streams.settings import Settings


def _until_answers(worker: WorkerProcess, sku: str, on_hand: int, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if worker.get(f"/stock/{sku}", timeout_s=2).get("on_hand") == on_hand:
                return time.monotonic() - started
        except Exception:  # noqa: BLE001 - not serving yet: refused, reset or half-started, ask again
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the worker did not answer for {sku} within {timeout_s:.0f}s")


def run(settings: Settings, skus: int, log_dir: Path) -> dict[str, Any]:
    tag, s = isolated(settings, "bench-rec")
    ensure_topics(s)
    producer = EventProducer(s)
    names = [f"REC-{i:06d}" for i in range(skus)]
    for sku in names:
        producer.send(STOCK_ADJUSTMENTS.name, sku, "StockAdjusted", ev.stock_adjusted(sku, "WH-SH", 7))
    producer.flush(300)
    probe = names[-1]
    worker = WorkerProcess(s, log_dir / f"bench-rec-{tag}.log").start()
    started = time.monotonic()
    worker.wait_ready(300)
    _until_answers(worker, probe, 7, 1800)
    fill_s = time.monotonic() - started
    time.sleep(3)  # let the last changelog writes and offsets commit
    results: dict[str, Any] = {"skus": skus, "fill_s": round(fill_s, 1)}
    for case in ("restart", "rebuild_from_changelog"):
        worker.kill9()
        if case == "rebuild_from_changelog":
            shutil.rmtree(s.home_dir / "state" / s.app_id, ignore_errors=True)  # the engine's stores
            shutil.rmtree(s.home_dir / "worker" / s.app_id, ignore_errors=True)  # Faust's tables
        worker = WorkerProcess(s, log_dir / f"bench-rec-{tag}-{case}.log").start()
        results[f"{case}_s"] = round(_until_answers(worker, probe, 7, 600), 2)
    worker.stop()
    return results
