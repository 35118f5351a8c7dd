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
    "print(grouped, os.getpriority(os.PRIO_PROCESS, 0), (open('/proc/self/autogroup').read().split() or ['root'])[-1])"
)


def own_group_nice() -> str:
    """This process's scheduling group's nice, or "root": a process that never left the first session
    of a container (as a CI runner may not) sits in the root group, whose file reads empty."""
    return (Path("/proc/self/autogroup").read_text().split() or ["root"])[-1]


def _run(niceness: int, own_session: bool) -> list[str]:
    done = subprocess.run([sys.executable, "-c", REPORT, str(niceness)], capture_output=True, text=True, check=True,
                          start_new_session=own_session, timeout=60)  # fmt: skip
    return done.stdout.split()


def test_a_session_leader_lowers_its_scheduling_group_with_itself() -> None:
    before = own_group_nice()
    grouped, nice, group_nice = _run(7, own_session=True)
    assert grouped == "True" and int(nice) >= 7 and group_nice == "7"
    assert own_group_nice() == before  # another session: untouched


def test_a_process_in_someone_elses_session_leaves_the_group_alone() -> None:
    before = own_group_nice()
    grouped, nice, group_nice = _run(7, own_session=False)
    assert grouped == "False" and int(nice) >= 7 and group_nice == before


def test_zero_changes_nothing() -> None:
    grouped, _, _ = _run(0, own_session=True)
    assert grouped == "False"


def test_a_process_in_the_root_group_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the root group (an empty /proc/self/autogroup, as on a CI runner) there is no group to lower."""
    from streams import priority

    root_group = tmp_path / "autogroup"
    root_group.write_text("")
    monkeypatch.setattr(priority, "AUTOGROUP", root_group)
    monkeypatch.setattr(priority.os, "getsid", lambda _pid: priority.os.getpid())
    monkeypatch.setattr(priority.os, "nice", lambda _inc: 0)
    assert priority.lower_priority(7) is False and root_group.read_text() == ""
