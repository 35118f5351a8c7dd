"""A stockflow worker as a child process: start, wait until it is ready, stop or kill -9.

``StockflowProcess`` is any long-running ``stockflow`` command that serves ``/readyz``; the sink
process (``streams.devstack.sinkproc``) is one too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any, Self

import httpx

from streams.settings import Settings


class StockflowProcess:
    """``stockflow <command>`` as a child process with its HTTP views on ``port``."""

    command = ""

    def __init__(self, settings: Settings, log_file: Path, args: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.log_file = log_file
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        env = {**os.environ, **self.settings.as_env(), "PYTHONUNBUFFERED": "1"}
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agents.cli", self.command, *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str, timeout_s: float = 5.0) -> Any:
        """GET a view as JSON; a non-JSON answer (e.g. mid-rebalance) becomes {"error": ...}."""
        response = httpx.get(self.base_url + path, timeout=timeout_s)
        try:
            return response.json()
        except ValueError:
            return {"error": f"{response.status_code} {response.text[:200]}"}

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Wait until ``/readyz`` answers 200 (a worker: its engine holds its partitions)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.command} exited early; see {self.log_file}:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + "/readyz", timeout=1).status_code == HTTPStatus.OK:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.command} not ready after {timeout_s}s; see {self.log_file}:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def kill9(self) -> None:
        """What a crash looks like: no shutdown code runs."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Graceful stop (commits offsets, closes tables); kill -9 if it does not finish."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill9()


class WorkerProcess(StockflowProcess):
    """``stockflow worker``: the engine and the Faust shell, views on ``STOCKFLOW_WEB_PORT``."""

    command = "worker"

    @property
    def port(self) -> int:
        return self.settings.web_port
