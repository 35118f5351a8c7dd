"""The inspection's pure logic: thresholds from TOML, a measurement judged ok / warn / breach.

Reads the thresholds file (``config/inspect.toml`` unless told otherwise); no network. What is
measured, and how, is ``agents.inspect.probe``; this module only judges the figures, and decides
(``breach_alerts``) which alerts a scan after scan raises: one when a check enters breach, one
clearing it when it leaves, none while it stays (the worker's scheduled scan, ``scan_checks``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from agents.alerting.alerts import alert
from streams.contract.records import Alert

DEFAULT_CONFIG = Path(__file__).parent / "config" / "inspect.toml"
CHECKS = ("engine_lag", "sink_lag", "dead_letter_rate", "sink_insert_lag", "connector_latency_p99",
          "connector_failing", "failed_queue_depth", "disk_free", "credential_expiry")  # fmt: skip


# Checks whose source raises an alert of its own (the connectors' ``connector_failing``): the scheduled scan does
# not raise a second one for the same trouble; ``stockflow inspect`` still judges them.
ALERTED_AT_SOURCE = frozenset({"connector_failing"})


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    BREACH = "breach"
    UNKNOWN = "unknown"  # the figure could not be measured (its process or the broker did not answer)


class Threshold(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    unit: str
    warn: float
    breach: float
    direction: Literal["above", "below"] = "above"
    window_minutes: int = 15

    @model_validator(mode="after")
    def _ordered(self) -> Threshold:
        worse = self.breach >= self.warn if self.direction == "above" else self.breach <= self.warn
        if not worse:
            raise ValueError(f"breach {self.breach} must be past warn {self.warn} ({self.direction})")
        return self


class InspectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    checks: dict[str, Threshold]

    @model_validator(mode="after")
    def _known(self) -> InspectConfig:
        unknown = set(self.checks) - set(CHECKS)
        missing = set(CHECKS) - set(self.checks)
        if unknown or missing:
            raise ValueError(f"checks unknown: {sorted(unknown)}, missing: {sorted(missing)}")
        return self


def load_config(path: Path = DEFAULT_CONFIG) -> InspectConfig:
    """The thresholds in ``path`` (pydantic's ``ValidationError`` names what is wrong)."""
    return InspectConfig.model_validate(tomllib.loads(path.read_text()))


@dataclass(frozen=True)
class Measurement:
    """One figure of one check: ``subject`` names what it is about (a channel; "" for the whole pipeline)."""

    check: str
    subject: str
    value: float | None
    detail: str = ""


@dataclass(frozen=True)
class Result:
    check: str
    subject: str
    status: Status
    value: float | None
    threshold: Threshold
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "subject": self.subject, "status": self.status.value, "value": self.value,
                "unit": self.threshold.unit, "warn": self.threshold.warn, "breach": self.threshold.breach,
                "direction": self.threshold.direction, "detail": self.detail}  # fmt: skip


def judge(value: float | None, threshold: Threshold) -> Status:
    """Where ``value`` stands against ``threshold``: a value at a level counts as reaching it."""
    if value is None:
        return Status.UNKNOWN
    # "below" checks (disk free, days to expiry) are judged as "above" on the negated figures.
    sign = 1 if threshold.direction == "above" else -1
    if sign * value >= sign * threshold.breach:
        return Status.BREACH
    if sign * value >= sign * threshold.warn:
        return Status.WARN
    return Status.OK


def evaluate(measurements: Iterable[Measurement], config: InspectConfig) -> list[Result]:
    return [
        Result(m.check, m.subject, judge(m.value, config.checks[m.check]), m.value, config.checks[m.check], m.detail)
        for m in measurements
    ]


def worst(results: Iterable[Result]) -> Status:
    """The report's overall status: a breach anywhere is a breach; unknown counts as a warning."""
    statuses = {r.status for r in results}
    if Status.BREACH in statuses:
        return Status.BREACH
    if statuses & {Status.WARN, Status.UNKNOWN}:
        return Status.WARN
    return Status.OK


def dead_letter_rate(counts_in_window: Mapping[int, int], window_minutes: int) -> float:
    """Dead letters per minute: the records each partition gained in the window, over the window."""
    return sum(max(n, 0) for n in counts_in_window.values()) / window_minutes


def group_lag(committed: Mapping[tuple[str, int], int], high: Mapping[tuple[str, int], int]) -> int:
    """Records a consumer group has not committed: per partition its high watermark minus its committed
    offset (a partition with no commit counts from its start, ``committed`` -1 is read as 0)."""
    return sum(max(hi - max(committed.get(tp, 0), 0), 0) for tp, hi in high.items() if hi >= 0)


def sink_insert_lag_s(lag: int, last_insert_ms: int, started_ms: int, now_ms: int) -> float:
    """Seconds the sink's backlog has gone without an insert (0 with nothing waiting)."""
    if lag <= 0:
        return 0.0
    return max(now_ms - (last_insert_ms or started_ms), 0) / 1000


BREACH_ALERT = "inspection_breach"
# (check, subject) -> when its breach was raised: the open breaches a scan compares the next one with.
OpenBreaches = dict[tuple[str, str], int]


def _label(check: str, subject: str) -> str:
    return f"{check} {subject}".strip()


def breach_alerts(open_breaches: Mapping[tuple[str, str], int], results: Iterable[Result],
                  now_ms: int) -> tuple[OpenBreaches, list[Alert]]:  # fmt: skip
    """The breaches open after a scan, and the alerts that scan raises: a RED ``inspection_breach`` for a
    check (per subject) newly in breach, its clearing once it is back to ok or warn. A check still in breach
    raises nothing again; an unknown figure (its source did not answer) neither raises nor clears, and a
    breach whose subject a scan does not report stays open until one does. The alert ids name the check
    and when its breach was raised, so a repeated publish is one alert."""
    still: OpenBreaches = dict(open_breaches)
    out: list[Alert] = []
    for r in results:
        key = (r.check, r.subject)
        name, since = _label(r.check, r.subject), still.get(key)
        value = "no value" if r.value is None else f"{r.value:g} {r.threshold.unit}"
        if r.status is Status.BREACH and since is None:
            still[key] = now_ms
            mark = "≤" if r.threshold.direction == "below" else "≥"
            message = f"{name}: {value} (breach {mark} {r.threshold.breach:g})" + (f"; {r.detail}" if r.detail else "")
            out.append(alert(BREACH_ALERT, "RED", name, message, now_ms,
                             details={"check": r.check, "subject": r.subject, "value": value},
                             event_id=f"{BREACH_ALERT}:{name}:{now_ms}"))  # fmt: skip
        elif r.status in (Status.OK, Status.WARN) and since is not None:
            del still[key]
            out.append(alert(BREACH_ALERT, "INFO", name, f"{name}: back to {r.status.value} ({value})", now_ms,
                             cleared=True, details={"check": r.check, "subject": r.subject, "value": value},
                             event_id=f"{BREACH_ALERT}:{name}:{since}:cleared"))  # fmt: skip
    return still, out
