"""The sink's and a shadow's lower CPU priority reaches the scheduler on a kernel that groups by session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no autogroup on this kernel")

REPORT = (
    "import os, sys; from streams.priority import lower_priority; "
    "grouped = lower_priority(int(sys.argv[1])); "
    "print(grouped, os.getpriority(os.PRIO_PROCESS, 0), open('/proc/self/autogroup').read().split()[-1])"
)


def _run(niceness: int, own_session: bool) -> list[str]:
    done = subprocess.run([sys.executable, "-c", REPORT, str(niceness)], capture_output=True, text=True, check=True,
                          start_new_session=own_session, timeout=60)  # fmt: skip
    return done.stdout.split()


def test_a_session_leader_lowers_its_scheduling_group_with_itself() -> None:
    before = int(Path("/proc/self/autogroup").read_text().split()[-1])
    grouped, nice, group_nice = _run(7, own_session=True)
    assert grouped == "True" and int(nice) >= 7 and group_nice == "7"
    assert int(Path("/proc/self/autogroup").read_text().split()[-1]) == before  # another session: untouched


def test_a_process_in_someone_elses_session_leaves_the_group_alone() -> None:
    before = Path("/proc/self/autogroup").read_text().split()[-1]
    grouped, nice, group_nice = _run(7, own_session=False)
    assert grouped == "False" and int(nice) >= 7 and group_nice == before


def test_zero_changes_nothing() -> None:
    grouped, _, _ = _run(0, own_session=True)
    assert grouped == "False"
