"""The optional parts (pip extras): a missing one is one line naming the extra, never a traceback, and
what does not need it keeps working. A "core-only install" is simulated in a child process by
making the extras' packages unimportable (``sys.modules[name] = None``)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agents.analytics import sink
from streams import extras
from streams.settings import Settings
from streams.stores.clickhouse import backend_extra, backend_missing

CHECKOUT = Path(__file__).resolve().parents[2]
NOWHERE = extras.Extra("nowhere", ("stockflow_no_such_package",), "the nowhere part")


def test_a_missing_package_is_one_line_naming_the_extra() -> None:
    problem = extras.missing(NOWHERE)
    assert problem is not None and "\n" not in problem
    assert "'stockflow_no_such_package'" in problem and "pip install 'stockflow[nowhere]'" in problem
    with pytest.raises(extras.MissingExtra, match=r"stockflow\[nowhere\]"):
        extras.ensure(NOWHERE)


def test_the_dev_install_has_every_extra() -> None:
    assert [e.name for e in extras.EXTRAS if extras.missing(e)] == []


def test_the_extras_are_the_ones_pyproject_declares_and_all_brings_them_all() -> None:
    declared = tomllib.loads((CHECKOUT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    optional = declared["optional-dependencies"]
    assert {e.name for e in extras.EXTRAS} <= set(optional)
    assert optional["all"] == [f"stockflow[{','.join(e.name for e in extras.EXTRAS)}]"]
    core = " ".join(declared["dependencies"])
    for banned in ("chdb", "clickhouse-driver", "plotly", "pyarrow"):
        assert banned not in core, f"{banned} is an extra's, not a core dependency"


def test_each_clickhouse_url_names_its_backend_extra() -> None:
    assert backend_extra(Settings(clickhouse_url="chdb://")) is extras.CHDB
    assert backend_extra(Settings(clickhouse_url="clickhouse://127.0.0.1:9000")) is extras.CLICKHOUSE_SERVER
    assert backend_missing(Settings(clickhouse_url="chdb://")) is None


def test_the_sink_knows_the_server_error_codes_without_the_driver() -> None:
    from clickhouse_driver.errors import ErrorCodes as DriverCodes

    for code in sink.ErrorCodes:
        assert getattr(DriverCodes, code.name) == code.value, code.name


# Run in a child with the extras' packages unimportable, from outside the checkout's root.
CORE_ONLY = """
import sys
for name in ("chdb", "clickhouse_driver", "plotly", "pyarrow"):
    sys.modules[name] = None
{body}
"""


def core_only(body: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKFLOW_")}
    env.update(STOCKFLOW_HOME=str(tmp_path / "home"), STOCKFLOW_SINK_PORT="1", COLUMNS="300",
               PYTHONPATH=str(CHECKOUT))  # fmt: skip
    return subprocess.run([sys.executable, "-c", CORE_ONLY.format(body=body), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_the_sink_classifies_embedded_errors_without_the_server_driver(tmp_path: Path) -> None:
    body = """
from agents.analytics.sink import clickhouse_retriable, refused_for_content
assert not clickhouse_retriable(RuntimeError("Code: 6. DB::Exception: Cannot parse text"))
assert refused_for_content(RuntimeError("Code: 6. DB::Exception: Cannot parse text"))
assert not refused_for_content(RuntimeError("Code: 62. DB::Exception: Syntax error"))
assert clickhouse_retriable(ConnectionRefusedError())
print("classified")
"""
    done = core_only(body, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "classified" in done.stdout


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["sink"], "chdb"),
        (["web", "--port", "0"], "charts"),
        (["dash", "flow_time"], "chdb"),
    ],
)
def test_a_command_needing_a_missing_extra_says_which_in_one_line(tmp_path: Path, argv: list[str], extra: str) -> None:
    body = "import sys\nfrom agents.cli import main\nsys.argv = ['stockflow', *sys.argv[1:]]\nmain()"
    done = core_only(body, tmp_path, *argv)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stdout
    assert f"pip install 'stockflow[{extra}]'" in lines[0]


def test_what_needs_no_extra_still_runs_without_them(tmp_path: Path) -> None:
    body = "import sys\nfrom agents.cli import main\nsys.argv = ['stockflow', 'settings']\nmain()"
    done = core_only(body, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "STOCKFLOW_CLICKHOUSE_URL" in done.stdout
