"""The single writer of the ``alerts`` topic.

An alert's id is derived from what it is about and when that changed, so the same alert raised
again by a replay is one row on the dashboards.
"""

from __future__ import annotations

from streams.contract.records import Alert
from streams.contract.topics import ALERTS
from streams.engine.outbox import Outbox


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
