"""CPU priority for the processes that must yield to the workers on a shared box (the sink, a shadow).

``nice`` alone does not do it on a kernel that groups processes by session (``autogroup``, on by
default in most Linux kernels): the scheduler first shares the CPU fairly between sessions, and a
process's nice value only ranks it against the rest of its own session. The sink is started in a
session of its own (``stockflow bench``, the dev stack, a supervisor), so its ``nice 10`` ranked it
against nothing, and at 1,500 orders/s it took as much CPU as the engine thread could not get: the
engine thread waited 21-27% of its time for a core. An autogroup has its own nice value; a process
that leads its session sets it too, so the whole group yields. A process inside someone else's
session (a shell) leaves the group alone: its nice would lower the shell's other commands too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
AUTOGROUP = Path("/proc/self/autogroup")


def lower_priority(niceness: int) -> bool:
    """Lower this process's CPU priority by ``niceness`` (0-19), and its session's scheduling group's
    when it leads that session; True when the group's priority was lowered as well."""
    if niceness <= 0:
        return False
    os.nice(niceness)
    if os.getsid(0) != os.getpid():
        return False
    try:
        if not AUTOGROUP.read_text().strip():
            return False  # this process is in the root group, which autogroup does not rank
        AUTOGROUP.write_text(f"{niceness}\n")
    except OSError as exc:  # a kernel without autogroup has no such file, or refuses the write
        log.info("the session's scheduling group keeps its priority (%s): nice %d applies within it", exc, niceness)
        return False
    return True
