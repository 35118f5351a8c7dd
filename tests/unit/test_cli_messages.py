"""What the command line says instead of a traceback: a busy port, clock control off, the version."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agents.cli import app
from streams.ports import port_problem


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port with a listener on 127.0.0.1, for as long as the test runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "STOCKFLOW_HOME": str(tmp_path / "home"), "STOCKFLOW_WEB_HOST": "127.0.0.1",
            "STOCKFLOW_INTAKE_HOST": "127.0.0.1", **env}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "agents.cli", *args], env=full, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


def test_port_problem_tells_a_busy_port_from_a_free_one(busy_port: int) -> None:
    assert port_problem("127.0.0.1", busy_port) == "is already in use"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    assert port_problem("127.0.0.1", free) is None


@pytest.mark.parametrize(
    ("command", "env_name", "moved_by"),
    [
        (["worker"], "STOCKFLOW_WEB_PORT", "STOCKFLOW_WEB_PORT"),
        (["intake"], "STOCKFLOW_INTAKE_PORT", "--port or STOCKFLOW_INTAKE_PORT"),
        (["web", "--port", "{port}"], "", "--port"),
    ],
)
def test_a_busy_port_is_one_line_naming_the_port_and_what_moves_it(
    tmp_path: Path, busy_port: int, command: list[str], env_name: str, moved_by: str
) -> None:
    args = [a.format(port=busy_port) for a in command]
    done = run(tmp_path, *args, **({env_name: str(busy_port)} if env_name else {}))
    assert done.returncode == 1
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert lines == [
        f"error: {command[0]} cannot listen on 127.0.0.1:{busy_port}: the port is already in use; "
        f"choose another with {moved_by}"
    ]


def test_clock_set_refuses_when_clock_control_is_off(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["clock", "set", "30"], env={"STOCKFLOW_CLOCK_CONTROL": "0", "STOCKFLOW_HOME": str(tmp_path)}
    )
    assert result.exit_code == 1
    assert "clock control is off" in result.output and "nothing sent" in result.output


def test_version_prints_the_installed_package_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"stockflow {version('stockflow')}"


def test_the_simulators_keys_are_given_to_the_connectors_in_one_command(tmp_path: Path) -> None:
    """Found trying the README: a local run needed six `set-key` calls with secrets read out of the simulator's apps
    file. Without that file the command says how to get one."""
    missing = run(tmp_path, "connectors", "sim-keys")
    assert missing.returncode == 1 and "stockflow sim up" in missing.stderr + missing.stdout
    apps = tmp_path / "apps.json"
    apps.write_text('{"jd": [{"app_key": "jd-app", "secret": "jd-secret"}], '
                    '"own": [{"app_key": "own-app", "secret": "own-secret"}]}', encoding="utf-8")  # fmt: skip
    done = run(tmp_path, "connectors", "sim-keys", "--apps", str(apps), STOCKFLOW_CHANNELS='["jd", "own", "tmall"]')
    assert done.returncode == 0, done.stderr
    stored = (tmp_path / "home" / "connectors" / "credentials.json").read_text(encoding="utf-8")
    assert "jd-app" in stored and "own-app" in stored and "tmall" not in stored
    assert "no app valid now for tmall" in " ".join(done.stdout.split())  # said, not skipped in silence
    expired = tmp_path / "expired.json"
    expired.write_text('{"jd": [{"app_key": "jd-old", "secret": "s", "expires_at_ms": 1000}]}', encoding="utf-8")
    none = run(tmp_path, "connectors", "sim-keys", "--apps", str(expired), STOCKFLOW_CHANNELS='["jd"]')
    assert none.returncode == 1 and "no app valid now" in " ".join((none.stdout + none.stderr).split())
