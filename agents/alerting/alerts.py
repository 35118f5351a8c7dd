"""The single writer of the ``alerts`` topic.

An alert's id is derived from what it is about and when that changed, so the same alert raised
again by a replay is one row on the dashboards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from streams.contract.records import Alert
from streams.contract.topics import ALERTS

if TYPE_CHECKING:  # at run time only send_* need an outbox; pure rules import AlertSpec without Kafka
    from streams.engine.outbox import Outbox


@dataclass(frozen=True)
class AlertSpec:
    """An alert a pure rule decided on; the agent sends it (``send_alert_spec``) with the batch's outputs."""

    kind: str
    severity: str  # INFO | WARNING | RED
    subject: str
    message: str
    event_id: str = ""
    at_ms: int | None = None  # None: the time the agent publishes it
    cleared: bool = False
    details: dict[str, str] = field(default_factory=dict)


def send_alert(
    outbox: Outbox,
    kind: str,
    severity: str,
    subject: str,
    message: str,
    at_ms: int,
    cleared: bool = False,
    details: dict[str, str] | None = None,
    event_id: str = "",
) -> Alert:
    record = Alert(
        event_id=event_id or f"{kind}:{subject}:{at_ms}",
        event_time_ms=at_ms,
        kind=kind,
        severity=severity,
        subject=subject,
        message=message,
        cleared=cleared,
        details=details or {},
    )
    outbox.add(ALERTS.name, subject, "Alert", record)
    return record


def send_alert_spec(outbox: Outbox, spec: AlertSpec, now_ms: int) -> Alert:
    return send_alert(
        outbox, spec.kind, spec.severity, spec.subject, spec.message,
        now_ms if spec.at_ms is None else spec.at_ms,
        cleared=spec.cleared, details=dict(spec.details), event_id=spec.event_id,
    )  # fmt: skip


def alert(
    kind: str,
    severity: str,
    subject: str,
    message: str,
    at_ms: int,
    cleared: bool = False,
    details: dict[str, str] | None = None,
    event_id: str = "",
) -> Alert:
    """The ``Alert`` record an engine processor emits (``ctx.emit(ALERTS, subject, "Alert", ...)``)."""
    return Alert(
        event_id=event_id or f"{kind}:{subject}:{at_ms}",
        event_time_ms=at_ms,
        kind=kind,
        severity=severity,
        subject=subject,
        message=message,
        cleared=cleared,
        details=details or {},
    )
