"""The ClickHouse sink (``stockflow sink``) as a child process: start, wait until it is ready, stop or kill -9."""

from __future__ import annotations

from streams.devstack.workerproc import StockflowProcess


class SinkProcess(StockflowProcess):
    """``stockflow sink``: views (``/readyz``, ``/sink/status``, ``/dash``) on ``STOCKFLOW_SINK_PORT``."""

    command = "sink"

    @property
    def port(self) -> int:
        return self.settings.sink_port
