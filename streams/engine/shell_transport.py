"""Faust's Kafka transport for the worker shell, its consumer reading committed records only.

Faust reads with ``read_committed`` only when its own agents run in transactions
(``processing_guarantee="exactly_once"``), which the shell's low-rate agents do not. But what they read
(the ``alerts`` the notifier sends to the ops chat, say) the engine writes inside its transactions, and a
batch that aborts (a broker outage, a worker fenced after a rebalance) is applied again: read
uncommitted, its alerts reached the chat twice, or once for a batch that never counted. This transport
is Faust's aiokafka one with that single difference; the worker's app names it by its URL scheme
(``streams.kafkaconf.faust_broker``).
"""

from __future__ import annotations

from typing import Any

import aiokafka
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka

SCHEME = "stockflow"


class _CommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka hands this to its fetcher when the consumer starts, which is after this returns.
        if getattr(consumer, "_isolation_level", None) is None:
            raise RuntimeError("aiokafka's consumer no longer keeps _isolation_level: read_committed not set")
        consumer._isolation_level = "read_committed"  # noqa: SLF001 - no public way short of transactions
        return consumer


class _CommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _CommittedConsumerThread:
        return _CommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = _CommittedConsumer


drivers.TRANSPORTS[SCHEME] = f"{__name__}:Transport"
