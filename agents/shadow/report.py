"""``stockflow shadow report``: a shadow's decisions against the live ones.

Reads: the live ``routing.decisions`` and ``refund.states`` and the shadow's (``shadow.<name>.``), each
whole as it is now (``streams.engine.topicreader.read_all``, read_committed), and the shadow's
``candidate.json`` and ``status.json``. Writes nothing. The comparison itself is
``agents.shadow.compare``; this module reads, and renders the result as JSON or rich tables.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table

from agents.shadow.candidate import Candidate, ShadowHome, shadow_settings
from agents.shadow.compare import (
    DEFAULT_EXAMPLES,
    Comparison,
    RefundChoice,
    RefundEffect,
    RouteChoice,
    RoutingEffect,
    compare_refunds,
    compare_routing,
    first_route_choices,
    refund_choices,
)
from agents.shadow.control import running
from streams.contract.codec import Codec, DecodeError, codec_for
from streams.contract.topics import REFUND_STATES, ROUTING_DECISIONS
from streams.engine.topicreader import read_all
from streams.settings import Settings

FACTOR_COLUMNS = ("distance", "sufficiency", "on_time", "cost", "score")
NOTES = (
    "Only orders and refunds both runs decided are compared; 'only live' counts what the shadow has not "
    "decided (yet), 'only shadow' the reverse.",
    "Routing compares each order's first decision; refunds the decision on the request (auto-approved or not).",
    "Replaying, the shadow can read a refund request before its order (two topics read side by side): it then "
    "decides it as order_unknown where the live run knew the order. Such refunds are not judged: a gap of the "
    "replay, not of the candidate.",
    "A shadow never pays a refund: refund.issued is written by the live connectors only, so shadow refunds "
    "never record a payment. Decisions are compared, not payments.",
)


@dataclass
class ShadowReport:
    name: str
    candidate: Candidate
    status: dict[str, Any]
    routing: Comparison[RouteChoice, RoutingEffect]
    refunds: Comparison[RefundChoice, RefundEffect]

    def to_dict(self) -> dict[str, Any]:
        c = self.candidate
        return {
            "name": self.name,
            "candidate": {"routing_weights": c.routing_weights, "refund_rules": c.refund_rules_source or None},
            "live": {"routing_weights": c.live_routing_weights, "refund_rules": c.live_refund_rules_source},
            "status": self.status,
            "routing": self.routing.to_dict(),
            "refunds": self.refunds.to_dict(),
            "notes": list(NOTES),
        }


def _records(live: Settings, topic: str, codec: Codec, event_type: str, timeout_s: float) -> list[Any]:
    out = []
    for rec in read_all(live, topic, timeout_s):
        try:
            kind, record = codec.decode(rec.value or b"")
        except DecodeError:
            continue  # the live sink dead-letters unreadable bytes; they are no decision
        if kind.short_name == event_type:
            out.append(record)
    return out


def build_report(live: Settings, name: str, examples: int = DEFAULT_EXAMPLES, timeout_s: float = 120.0) -> ShadowReport:
    home = ShadowHome(live, name)
    candidate = home.load()
    shadow = shadow_settings(live, candidate, home)
    codec = codec_for(live)

    def read(settings: Settings, topic: str, event_type: str) -> list[Any]:
        return _records(live, settings.topic(topic), codec, event_type, timeout_s)

    routing = compare_routing(
        first_route_choices(read(live, ROUTING_DECISIONS.name, "RoutingDecision")),
        first_route_choices(read(shadow, ROUTING_DECISIONS.name, "RoutingDecision")),
        examples,
    )
    refunds = compare_refunds(
        refund_choices(read(live, REFUND_STATES.name, "RefundStateChanged")),
        refund_choices(read(shadow, REFUND_STATES.name, "RefundStateChanged")),
        examples,
    )
    status = home.status()
    status["running"] = running(home)[0] is not None  # the file of a process killed -9 still says it runs
    return ShadowReport(name, candidate, status, routing, refunds)


# ---- rendering ---------------------------------------------------------------------------------------
def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _yuan(fen: int) -> str:
    return f"{fen / 100:,.2f}"


def _pct(share: float) -> str:
    return f"{100 * share:.1f}%"


def _summary(title: str, cmp: Comparison[Any, Any]) -> str:
    text = f"[bold]{title}[/bold]: {cmp.differing} of {cmp.compared} differ ({_pct(cmp.share)})"
    text += f"; only live {cmp.only_live}, only shadow {cmp.only_shadow}"
    if cmp.unjudged:
        text += f"; not judged {cmp.unjudged} (decided by the shadow before its replay reached their order)"
    if cmp.moves:
        text += "\nlive -> shadow: " + ", ".join(f"{escape(move)} ({count})" for move, count in cmp.moves.items())
    return text


def _weights(weights: dict[str, float] | None) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in (weights or {}).items()) or "-"


def render(report: ShadowReport, console: Console) -> None:
    c, status = report.candidate, report.status
    running = "running" if status.get("running") else "stopped"
    started = status.get("started_ms") or c.created_ms
    console.print(f"[bold]shadow {report.name}[/bold] ({running}; started {_when(started)}, caught up "
                  f"{_when(status.get('caught_up_ms'))}, lag {status.get('lag', '-')})")  # fmt: skip
    if c.routing_weights is not None:
        console.print(
            f"routing weights: live {_weights(c.live_routing_weights)} | shadow {_weights(c.routing_weights)}"
        )
    if c.refund_rules is not None:
        console.print(f"refund rules: live {c.live_refund_rules_source} | shadow {c.refund_rules_source}")
    console.print()
    console.print(_summary("Routing", report.routing))
    console.print(_routing_effect(report.routing))
    for live, shadow in report.routing.examples:
        console.print(_route_example(live, shadow))
    console.print()
    console.print(_summary("Refunds", report.refunds))
    console.print(_refund_effect(report.refunds))
    if report.refunds.examples:
        console.print(_refund_examples(report.refunds.examples))
    console.print()
    for note in NOTES:
        console.print(f"[dim]{note}[/dim]")


def _routing_effect(cmp: Comparison[RouteChoice, RoutingEffect]) -> Table:
    table = Table("", "live", "shadow", title="business effect (orders both decided)", title_justify="left")
    live, shadow = cmp.live_effect, cmp.shadow_effect
    table.add_row("orders", str(live.orders), str(shadow.orders))
    table.add_row("average km per parcel", f"{live.avg_km:.1f}", f"{shadow.avg_km:.1f}")
    table.add_row("split rate", _pct(live.split_rate), _pct(shadow.split_rate))
    for wh in sorted(live.parcels_by_warehouse.keys() | shadow.parcels_by_warehouse.keys()):
        table.add_row(f"parcels from {wh}", str(live.parcels_by_warehouse.get(wh, 0)),
                      str(shadow.parcels_by_warehouse.get(wh, 0)))  # fmt: skip
    return table


def _route_example(live: RouteChoice, shadow: RouteChoice) -> RenderableType:
    def chosen(choice: RouteChoice) -> str:
        return ", ".join(f"{wh} {list(nos)}" for wh, nos in choice.assignments)

    table = Table("run", "warehouse", "km", "distance", "sufficiency", "on_time", "cost", "score", "chosen")
    for side, choice in (("live", live), ("shadow", shadow)):
        for cand in sorted(choice.candidates, key=lambda x: x["warehouse_id"]):
            wh = cand["warehouse_id"]
            table.add_row(side, wh, f"{cand['distance_km']:.1f}",
                          *(f"{cand[f]:.3f}" for f in FACTOR_COLUMNS),  # type: ignore[literal-required]
                          "*" if wh in choice.warehouses else "")  # fmt: skip
    head = f"[bold]{escape(live.order_id)}[/bold]: live {escape(chosen(live))}, shadow {escape(chosen(shadow))}"
    return Group(head, table)


def _refund_effect(cmp: Comparison[RefundChoice, RefundEffect]) -> Table:
    table = Table("", "live", "shadow", title="business effect (refunds both decided)", title_justify="left")
    live, shadow = cmp.live_effect, cmp.shadow_effect
    table.add_row("refunds", str(live.refunds), str(shadow.refunds))
    table.add_row("approved automatically", str(live.auto_approved), str(shadow.auto_approved))
    table.add_row(
        "amount approved automatically (yuan)", _yuan(live.auto_approved_fen), _yuan(shadow.auto_approved_fen)
    )
    table.add_row("sent to customer service", str(live.to_review), str(shadow.to_review))
    return table


def _refund_examples(examples: list[tuple[RefundChoice, RefundChoice]]) -> Table:
    table = Table("refund", "order", "amount (yuan)", "live", "live reason", "shadow", "shadow reason",
                  title="first differences", title_justify="left")  # fmt: skip
    for live, shadow in examples:
        table.add_row(live.refund_id, live.order_id, _yuan(live.amount_fen), live.label, live.reason or "-",
                      shadow.label, shadow.reason or "-")  # fmt: skip
    return table
