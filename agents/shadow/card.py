"""The shadow runs' card on the web page (``stockflow web``, ``/api/shadow``): ``stockflow shadow report``
for every shadow, one row per shadow and decision (routing, refunds).

``card_rows`` is pure, over ``report.ShadowReport``s. ``rows`` builds the reports the way ``shadow report``
does (reading the live and shadow topics whole), so the page asks for them at most every ``CACHE_S``
(``Cached``): a page refreshing every few seconds must not re-read the topics each time. Writes nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from agents.shadow.compare import Comparison
from agents.shadow.report import ShadowReport
from streams.settings import Settings

CACHE_S = 60.0
REPORT_TIMEOUT_S = 30.0


def chart_card() -> dict[str, Any]:
    """How the web page lists the card (the shape of a dashboard's ``describe()``)."""
    return {
        "name": "shadow",
        "title": "Shadow runs: where the candidate rule decides differently",
        "description": "Each shadow (stockflow shadow start) against the live pipeline on the same events, over what "
        "both decided: how many decisions differ and their share, the most common change, the business effect "
        "live and shadow (average km and split rate; refunds auto-approved and their amount) and the first "
        "differing example. The same figures as stockflow shadow report, refreshed at most once a minute.",
        "chart": {"kind": "table", "x": "", "y": [], "series": ""},
        "params": [],
        "source": "/api/shadow",
        "empty": "no shadow runs (stockflow shadow start NAME --routing-weights ... | --refund-rules FILE)",
    }


def _yuan(fen: int) -> str:
    return f"{fen / 100:,.2f}"


def _effect(area: str, effect: Any) -> str:
    if area == "routing":
        return f"{effect.avg_km:g} km avg, split {effect.split_rate:.1%}"
    return (
        f"{effect.auto_approved} auto-approved ({_yuan(effect.auto_approved_fen)} yuan), {effect.to_review} to review"
    )


def _example(area: str, cmp: Comparison[Any, Any]) -> str:
    if not cmp.examples:
        return ""
    live, shadow = cmp.examples[0]
    subject = live.order_id if area == "routing" else live.refund_id
    return f"{subject}: {live.label} -> {shadow.label}"


def card_rows(reports: Iterable[ShadowReport]) -> list[dict[str, Any]]:
    """One row per shadow and decision; a decision neither run made yet is left out."""
    out = []
    for report in sorted(reports, key=lambda r: r.name):
        for area, cmp in (("routing", report.routing), ("refunds", report.refunds)):
            if not (cmp.compared or cmp.only_live or cmp.only_shadow):
                continue
            top = next(iter(cmp.moves.items()), None)
            out.append({
                "shadow": report.name,
                "running": bool(report.status.get("running")),
                "candidate": report.candidate.describe(),
                "decision": area,
                "compared": cmp.compared,
                "differing": cmp.differing,
                "share": cmp.share,
                "only_live": cmp.only_live,
                "only_shadow": cmp.only_shadow,
                "most_common_change": f"{top[0]} ({top[1]})" if top else "",
                "live_effect": _effect(area, cmp.live_effect),
                "shadow_effect": _effect(area, cmp.shadow_effect),
                "first_example": _example(area, cmp),
            })  # fmt: skip
    return out


def rows(settings: Settings) -> list[dict[str, Any]]:
    """Every shadow's rows, read now (blocking: the topics are read whole)."""
    from agents.shadow.candidate import shadow_names
    from agents.shadow.report import build_report

    return card_rows(build_report(settings, name, examples=1, timeout_s=REPORT_TIMEOUT_S)
                     for name in shadow_names(settings))  # fmt: skip


class Cached:
    """``source(settings)`` at most once per ``max_age_s``; concurrent askers share one read."""

    def __init__(self, source: Callable[[Settings], list[dict[str, Any]]], max_age_s: float = CACHE_S) -> None:
        self.source = source
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._rows: list[dict[str, Any]] = []

    def get(self, settings: Settings) -> list[dict[str, Any]]:
        with self._lock:
            if time.monotonic() - self._at >= self.max_age_s:
                self._rows = self.source(settings)
                self._at = time.monotonic()
            return self._rows
