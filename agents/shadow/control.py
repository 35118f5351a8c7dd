"""Starting, stopping, listing and deleting shadows: what the ``stockflow shadow`` commands do, apart
from printing it.

A shadow runs as ``stockflow shadow run NAME`` in the background (``streams.devstack.procs``: its own
process group, pid and log under ``<home>/shadow/<name>/``); ``start`` returns once its engine holds its
partitions. A stopped shadow keeps its topics, group and state: ``report`` still reads it, and ``start``
with the same candidate carries on where it stopped. ``stop --delete-topics`` removes the shadow
entirely - every topic under ``shadow.<name>.``, its consumer groups, its engine state and its folder -
and never touches a live topic, group or folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from agents.shadow.candidate import Candidate, ShadowHome, shadow_app_id, shadow_names, shadow_topic_prefix
from streams.devstack import procs
from streams.engine.retry import Backoff, Retry
from streams.kafkaconf import confluent_config
from streams.settings import Settings


class ShadowError(Exception):
    """Something ``stockflow shadow`` refuses or could not do; the message says what to do."""


@dataclass(frozen=True)
class Started:
    pid: int
    candidate: Candidate
    resumed: bool  # the shadow existed (stopped) and carries on with its state


def adopt(home: ShadowHome, candidate: Candidate) -> tuple[Candidate, bool]:
    """The candidate to run under ``home``'s name: a new shadow's, or the stored one of a stopped shadow
    with the same rule (its state was built by that rule; another rule under the name would mix the two)."""
    if not home.exists():
        home.save(candidate)
        return candidate, False
    known = home.load()
    if not known.same_rule(candidate):
        raise ShadowError(
            f"shadow {home.name!r} was started with another candidate ({known.describe()}); "
            f"`stockflow shadow stop {home.name} --delete-topics` first, or pick another name"
        )
    return known, True


def running(home: ShadowHome) -> tuple[int | None, bool]:
    """The pid of the shadow's process if it runs, and whether ``start`` put it in the background (a
    ``--foreground`` one has no pid file, only its status)."""
    pid = procs.read_pid(home.pid_file)
    if pid is not None:
        return pid, True
    status = home.status()
    pid = status.get("pid")
    if status.get("running") and isinstance(pid, int) and procs.is_alive(pid):
        return pid, False
    return None, False


def refuse_if_running(home: ShadowHome) -> None:
    pid, background = running(home)
    if pid is not None:
        where = "" if background else ", in a terminal"
        raise ShadowError(f"shadow {home.name!r} is running (pid {pid}{where})")


def check_can_start(live: Settings, home: ShadowHome) -> None:
    """Not running already, and the live inputs are there to read."""
    from agents.shadow.run_shadow import missing_live_inputs

    refuse_if_running(home)
    missing = missing_live_inputs(live)
    if missing:
        raise ShadowError(f"the live input topics {missing} do not exist: is STOCKFLOW_TOPIC_PREFIX the live "
                          "pipeline's? (`stockflow topics create` makes them)")  # fmt: skip


def start(live: Settings, candidate: Candidate, niceness: int = 10, timeout_s: float = 120.0) -> Started:
    """Start ``candidate`` in the background; return once it is ready (its engine holds its partitions)."""
    home = ShadowHome(live, candidate.name)
    check_can_start(live, home)
    candidate, resumed = adopt(home, candidate)
    home.status_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "agents.cli", "shadow", "run", candidate.name, "--niceness", str(niceness)]
    env = {**os.environ, **live.as_env(), "PYTHONUNBUFFERED": "1"}
    pid = procs.start(cmd, home.log_file, home.pid_file, env=env)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = home.status()
        if status.get("pid") == pid and status.get("ready"):
            return Started(pid, candidate, resumed)
        if not procs.is_alive(pid):
            home.pid_file.unlink(missing_ok=True)
            raise ShadowError(f"shadow {candidate.name!r} exited while starting; {home.log_file}:\n{_tail(home)}")
        time.sleep(0.3)
    procs.stop(home.pid_file)
    raise ShadowError(f"shadow {candidate.name!r} not ready after {timeout_s:.0f}s; {home.log_file}:\n{_tail(home)}")


def _tail(home: ShadowHome, chars: int = 2000) -> str:
    try:
        return home.log_file.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return ""


def stop(live: Settings, name: str, delete_topics: bool = False) -> tuple[bool, list[str]]:
    """Stop shadow ``name`` (TERM, then KILL after 30 s); with ``delete_topics`` also remove it entirely.
    Return whether it was running and the topics deleted."""
    home = ShadowHome(live, name)
    if not home.exists():
        raise ShadowError(f"no shadow named {name!r}")
    pid, background = running(home)
    if pid is not None and not background:
        raise ShadowError(f"shadow {name!r} runs in a terminal (pid {pid}, --foreground): stop it there with Ctrl-C")
    was_running = procs.stop(home.pid_file, timeout_s=30)
    if not delete_topics:
        return was_running, []
    deleted = delete(live, name)
    return was_running, deleted


def delete(live: Settings, name: str) -> list[str]:
    """Every topic under the shadow's prefix, its consumer groups, engine state and folder."""
    home = ShadowHome(live, name)
    admin = AdminClient(confluent_config(live))
    prefix = shadow_topic_prefix(live, name)
    topics = sorted(t for t in admin.list_topics(timeout=15).topics if t.startswith(prefix))
    for future in (admin.delete_topics(topics, operation_timeout=30) if topics else {}).values():
        future.result()
    _delete_group(admin, f"{shadow_app_id(live, name)}.engine", live.session_timeout_s)
    shutil.rmtree(home.state_dir, ignore_errors=True)
    shutil.rmtree(home.root, ignore_errors=True)
    return topics


def _delete_group(admin: AdminClient, group: str, session_timeout_s: float) -> None:
    """Without its committed offsets a shadow started again under the name reads from the beginning, as
    its new (empty) state needs. A member killed without leaving holds the group for a session timeout."""

    def once() -> None:
        try:
            admin.delete_consumer_groups([group], request_timeout=15)[group].result()
        except KafkaException as exc:
            if "GROUP_ID_NOT_FOUND" not in str(exc):  # never committed: nothing to delete
                raise

    Retry(f"deleting consumer group {group}", lambda exc: "NON_EMPTY_GROUP" in str(exc),
          deadline_s=3 * session_timeout_s, backoff=Backoff(0.5, 2.0)).call(once)  # fmt: skip


def list_shadows(live: Settings) -> list[dict[str, Any]]:
    """Every shadow under ``<home>/shadow/``: its candidate, whether it runs, and its last status."""
    out = []
    for name in shadow_names(live):
        home = ShadowHome(live, name)
        with contextlib.suppress(ValueError, TypeError):
            candidate = home.load()
            out.append({"name": name, "pid": running(home)[0], "candidate": candidate.describe(),
                        "created_ms": candidate.created_ms, "status": home.status()})  # fmt: skip
    return out
