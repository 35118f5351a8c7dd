"""The outbound connectors (``stockflow connectors run``) as a child process: start, wait until ready, stop, kill -9."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Self

from streams.devstack.workerproc import StockflowProcess


class ConnectorsProcess(StockflowProcess):
    """``stockflow connectors run``: ``/readyz`` once both connectors hold their partitions, status at
    ``/connectors/status``, on ``STOCKFLOW_CONNECTORS_PORT``."""

    command = "connectors run"

    @property
    def port(self) -> int:
        return self.settings.connectors_port

    def start(self) -> Self:
        env = {**os.environ, **self.settings.as_env(), "PYTHONUNBUFFERED": "1"}
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agents.cli", *self.command.split()],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        return self
