"""The single writer of the ``alerts`` topic.

An alert's id is derived from what it is about and when that changed, so the same alert raised
again by a replay is one row on the dashboards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streams.contract.records import Alert


@dataclass(frozen=True)
class AlertSpec:
    """An alert a pure rule decided on; its processor emits it with the batch's outputs."""

    kind: str
    severity: str  # INFO | WARNING | RED
    subject: str
    message: str
    event_id: str = ""
    at_ms: int | None = None  # None: the time the agent publishes it
    cleared: bool = False
    details: dict[str, str] = field(default_factory=dict)


def alert_id(kind: str, subject: str, at_ms: int, *, cleared: bool = False) -> str:
    """An alert's id from its kind, subject and time: a clearing's differs from its raise's, which may share the
    time."""
    return f"{kind}:{subject}:{at_ms}{':cleared' if cleared else ''}"


def alert(
    kind: str,
    severity: str,
    subject: str,
    message: str,
    at_ms: int,
    *,
    cleared: bool = False,
    details: dict[str, str] | None = None,
    event_id: str = "",
) -> Alert:
    """The ``Alert`` record an engine processor emits (``ctx.emit(ALERTS, subject, "Alert", ...)``); without an
    ``event_id``, ``alert_id``'s."""
    return Alert(
        event_id=event_id or alert_id(kind, subject, at_ms, cleared=cleared),
        event_time_ms=at_ms,
        kind=kind,
        severity=severity,
        subject=subject,
        message=message,
        cleared=cleared,
        details=details or {},
    )
