"""A view's follower stopped while it still waits for the broker closes its consumer: nothing is left
for aiokafka to report as "Unclosed AIOKafkaConsumer" when it is collected. No broker: the follower
is pointed at a 127.0.0.1 port nobody listens on, so it is retrying its connection when stopped."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from streams.contract.codec import default_codec
from streams.devstack.procs import free_ports
from streams.engine.follow import follow
from streams.settings import Settings


def test_a_follower_stopped_while_connecting_closes_its_consumer() -> None:
    (port,) = free_ports(1)
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{port}", topic_prefix="follow-stop.")
    reported: list[dict[str, Any]] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reported.append(context))
        task = asyncio.create_task(follow(settings, default_codec(), ["stock.levels"], "probe",
                                          lambda kind, record: None, lambda caught_up: None))  # fmt: skip
        # Long enough for the first connection attempt to fail and the retry to wait; the follower
        # is stopped in that wait, as a worker stopping during a broker outage at start stops it.
        await asyncio.sleep(1.5)
        assert not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        del task
        gc.collect()
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert [c.get("message") for c in reported] == []
