"""The engine inside the Faust worker shell: its thread, its stop, its HTTP status and key routing.

Faust stays the worker's shell (web server, low-rate agents such as the notifier and clock
control); the hot processors run on the engine in a thread of the same process. confluent-kafka
releases the GIL while it waits on the network, so the two share the process without a queue.
A fatal engine error (its producer fenced by a newer worker, for one) ends the process: every
committed batch is safe, and a restarted worker carries on from the changelogs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import faust
import httpx

from streams import metrics
from streams.engine.loop import Engine
from streams.engine.metrics import engine_collector

log = logging.getLogger(__name__)
FORWARDED = "X-Stockflow-Forwarded"
# A supervisor restarts a worker that exits with this: the engine stopped on an error it cannot
# recover from in-process (e.g. a newer worker fenced its transactional producer).
ENGINE_FAILED_EXIT = 3
# /readyz says not ready when the engine's loop has not come round for this long.
READY_HEARTBEAT_S = 30.0


def host(app: faust.App, engine: Engine, stall_s: float = 180.0) -> None:
    """Run ``engine`` in a thread of ``app``'s worker; stop it before the app stops. If its loop does
    not come round for ``stall_s`` (a client call that ignores its own timeout), the process exits
    so a supervisor restarts it: every committed batch is safe, and nothing else could unstick it."""
    stop = threading.Event()

    def run() -> None:
        try:
            engine.run(stop)
        except BaseException:
            log.exception("the engine stopped on an error; the worker exits so it can be restarted")
            os._exit(ENGINE_FAILED_EXIT)

    thread = threading.Thread(target=run, name="engine", daemon=True)

    def watch() -> None:
        while not stop.wait(5.0):
            stalled = time.monotonic() - engine.heartbeat
            if thread.is_alive() and stalled > stall_s:
                log.critical("the engine has not come round for %.0fs (stuck in a Kafka client call); the worker "
                             "exits so it can be restarted", stalled)  # fmt: skip
                os._exit(ENGINE_FAILED_EXIT)

    watchdog = threading.Thread(target=watch, name="engine-watchdog", daemon=True)

    @app.task  # type: ignore[untyped-decorator]  # faust types a task as returning a bare Awaitable
    async def start_engine() -> None:
        engine.heartbeat = time.monotonic()
        thread.start()
        watchdog.start()

    async def stop_engine(sender: Any, *args: Any, **kwargs: Any) -> None:
        stop.set()
        await asyncio.to_thread(_join_if_started, thread, 60)

    app.on_before_shutdown.connect(cast(Any, stop_engine))

    @app.page("/engine/status")
    async def engine_status(web: Any, request: Any) -> Any:
        return web.json({
            "ready": engine.ready.is_set(), "slot": engine.slot, "group": engine.group_id,
            "owned_partitions": sorted(engine.owned), "processing_guarantee": engine.settings.processing_guarantee,
            "stats": engine.stats.as_dict(), "lag_by_topic": _lag_by_topic(engine.lag), "unread": engine.unread,
        })  # fmt: skip

    registry = metrics.new_registry(engine_collector(engine))

    @app.page("/metrics")
    async def prometheus(web: Any, request: Any) -> Any:
        body = await asyncio.to_thread(metrics.render, registry)
        # In a header: aiohttp refuses a content_type argument that carries a charset.
        return web.bytes(body, headers={"Content-Type": metrics.CONTENT_TYPE})

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"ok": True, "engine_alive": thread.is_alive()})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        checks = {
            "restored": engine.ready.is_set(),
            # The shell's tables (views, the notifier's queue) restored once: until then its agents
            # read nothing, and an alert raised meanwhile waits for the shell's first assignment.
            "shell_restored": cast(Any, app.tables).recovery.completed.is_set(),  # not on TableManagerT
            "engine_running": thread.is_alive() and time.monotonic() - engine.heartbeat < READY_HEARTBEAT_S,
            "broker_reachable": not engine.broker_down,
        }
        ready = all(checks.values())
        return web.json({"ready": ready, **checks}, status=200 if ready else 503)


def _join_if_started(thread: threading.Thread, timeout_s: float) -> None:
    if thread.ident is not None:  # a worker stopped in its first seconds never started the engine
        thread.join(timeout_s)


async def answer_for_key(web: Any, request: Any, engine: Engine, partition_key: str,
                         local: Callable[[], dict[str, Any] | None], what: str) -> Any:  # fmt: skip
    """Answer from this worker's state if its engine owns the key, else from the worker that does."""
    if engine.owns(partition_key):
        data = local()
        if data is None:
            return web.json({what: partition_key, "known": False}, status=404)
        return web.json(data)
    if request.headers.get(FORWARDED):
        return web.json({"error": f"{partition_key} moved while the request was forwarded; ask again"}, status=503)
    try:
        address = await asyncio.to_thread(engine.owner_address, partition_key)
    except Exception as exc:  # noqa: BLE001 - the broker is down or the group is rebalancing
        return web.json({"error": f"cannot find the worker owning {partition_key}: {exc}"}, status=503)
    if address is None:
        return web.json({"error": f"no worker owns {partition_key} yet (rebalancing)"}, status=503)
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(forward_url(address, request), headers={FORWARDED: "1"})
    return web.json(response.json(), status=response.status_code)


def forward_url(address: str, request: Any) -> str:
    """The same request at ``address``, its path as it was sent: decoded, a key with ``?``, ``#`` or ``/`` in it
    (intake takes them) would ask the owner for another key."""
    return f"http://{address}{request.raw_path}"


def _lag_by_topic(lag: dict[tuple[str, int], int]) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for (topic, _), behind in lag.items():
        totals[topic] += behind
    return dict(totals)
