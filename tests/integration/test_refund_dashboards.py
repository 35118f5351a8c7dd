"""The refund dashboards and ``stockflow refunds exceptions|reconcile`` over the real sink: refund events on the
broker, through ``stockflow sink`` into embedded ClickHouse (chdb) and a ClickHouse server, checked against
figures worked out by hand; events sent twice are counted once."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agents.analytics import queries as dashboards
from agents.refunds import reports
from agents.refunds.run_refunds import STAGE
from streams.contract.reasons import Reason
from streams.contract.topics import DEADLETTERS
from streams.engine.deadletter import dead_letter
from streams.engine.producer import EventProducer
from streams.settings import Settings
from tests.helpers import wait_for

pytestmark = pytest.mark.broker

MIN = 60_000
H = 60 * MIN
DAY = 24 * H
SHOP = ZoneInfo("Asia/Shanghai")
STATES = ("requested", "reviewing", "awaiting_return", "received", "refunding", "completed", "rejected", "cancelled")
Event = tuple[str, str, str, dict[str, Any]]  # topic, key, event type, record


def shop_ms(text: str) -> int:
    """Epoch ms of a wall-clock time in the shop's zone."""
    return int(datetime.fromisoformat(text).replace(tzinfo=SHOP).timestamp() * 1000)


def _ids(refund_id: str, order_id: str) -> dict[str, str]:
    channel, channel_refund_id = refund_id.split(":", 1)
    return {"channel": channel, "channel_order_id": order_id.split(":", 1)[1], "channel_refund_id": channel_refund_id}


def refund(refund_id: str, order_id: str, kind: str, amount_fen: int, steps: list[tuple[str, int]]) -> list[Event]:
    """What ``run_refunds`` writes for one refund: a RefundStateChanged per state entered, each with every stage
    time so far. The other stage times (return_received, inspected, issued, settled) change no state: they show
    only in the refund's next transition."""
    times: dict[str, int] = {}
    previous = ""
    out: list[Event] = []
    for name, at in steps:
        times = {**times, name: at}
        if name not in STATES:
            continue
        out.append(("refund.states", refund_id, "RefundStateChanged", {
            "event_id": f"{refund_id}:{name}", "event_time_ms": at, "refund_id": refund_id, "order_id": order_id,
            "channel": refund_id.split(":")[0], "kind": kind, "state": name, "previous_state": previous,
            "reason": "", "amount_fen": amount_fen, "auto_approved": False, "warehouse_id": "",
            "stage_times": dict(times)}))  # fmt: skip
        previous = name
    return out


def issued(refund_id: str, order_id: str, at: int, amount_fen: int) -> Event:
    return ("refund.issued", order_id, "RefundIssued", {
        "event_id": f"refund-issued:{refund_id}", "event_time_ms": at, "refund_id": refund_id, "order_id": order_id,
        "channel": refund_id.split(":")[0], "amount_fen": amount_fen, "platform_ref": f"p-{refund_id}",
        "attempts": 1, "replayed": False})  # fmt: skip


def returned(refund_id: str, order_id: str, at: int, qc_done: bool) -> Event:
    step = "qc" if qc_done else "received"
    return ("refund.events", order_id, "ReturnReceived", {
        "event_id": f"return-{step}:{refund_id}", "event_time_ms": at, **_ids(refund_id, order_id),
        "warehouse_id": "WH-SH", "qc_done": qc_done, "resellable": True, "qc_note": ""})  # fmt: skip


def settled(refund_id: str, order_id: str, at: int, amount_fen: int, event_id: str = "") -> Event:
    return ("refund.events", order_id, "RefundSettled", {
        "event_id": event_id or f"settled:{refund_id}", "event_time_ms": at, **_ids(refund_id, order_id),
        "amount_fen": amount_fen, "settlement_id": f"st-{refund_id}"})  # fmt: skip


@dataclass(frozen=True)
class Refused:
    """An event the refund processor refuses: ``send_refunds`` sends it, then the dead letter the processor writes
    for it, naming where it landed."""

    event: Event
    reason: Reason
    detail: str


def call_failed(refund_id: str, at: int, reason: str) -> Event:
    channel = refund_id.split(":")[0]
    return (f"connector.failed.{channel}", channel, "ConnectorCallFailed", {
        "event_id": f"call-failed:{channel}:refund:{refund_id}:refund.instructions/0/7", "event_time_ms": at,
        "channel": channel, "endpoint": "refund", "idempotency_key": refund_id, "request": "{}",
        "answer": "401 Invalid API Key", "reason": reason, "attempts": 1,
        "source": "refund.instructions/0/7"})  # fmt: skip


def refund_events(t0: int) -> list[Event | Refused]:
    """The refunds every figure below is worked out from, times relative to ``t0`` (2025-11-10 10:00 in the
    shop's zone for the monthly figures), with the duplicates a redelivery or a resend makes."""
    r = "RETURN_AND_REFUND"
    return [
        # jd:R1 approved at once, issued after 10 min, return received +30 h, QC +40 h, settled +50 h.
        *refund(
            "jd:R1",
            "jd:O1",
            r,
            9_900,
            [
                ("requested", t0),
                ("refunding", t0),
                ("issued", t0 + 10 * MIN),
                ("return_received", t0 + 30 * H),
                ("inspected", t0 + 40 * H),
                ("settled", t0 + 50 * H),
                ("completed", t0 + 50 * H),
            ],
        ),
        issued("jd:R1", "jd:O1", t0 + 10 * MIN, 9_900),
        issued("jd:R1", "jd:O1", t0 + 10 * MIN, 9_900),  # the connector wrote it again after a restart
        returned("jd:R1", "jd:O1", t0 + 30 * H, qc_done=False),
        returned("jd:R1", "jd:O1", t0 + 40 * H, qc_done=True),
        settled("jd:R1", "jd:O1", t0 + 50 * H, 9_900),
        # The same callback again in December, under the same id, stamped when it came (intake had restarted and
        # forgotten it): the first copy stands, and R1 stays settled in November.
        settled("jd:R1", "jd:O1", shop_ms("2025-12-02T09:00"), 9_900),
        # jd:R2 reviewed in 3 h (late), return +30 h, QC took 30 h (late), issued, never settled.
        *refund(
            "jd:R2",
            "jd:O2",
            r,
            15_000,
            [
                ("requested", t0 + H),
                ("reviewing", t0 + H),
                ("awaiting_return", t0 + 4 * H),
                ("return_received", t0 + 30 * H),
                ("received", t0 + 30 * H),
                ("inspected", t0 + 60 * H),
                ("refunding", t0 + 60 * H),
            ],
        ),
        *refund(
            "jd:R2", "jd:O2", r, 15_000, [("requested", t0 + H), ("reviewing", t0 + H), ("awaiting_return", t0 + 4 * H)]
        )[-1:],  # the awaiting_return transition delivered twice
        returned("jd:R2", "jd:O2", t0 + 30 * H, qc_done=False),
        returned("jd:R2", "jd:O2", t0 + 60 * H, qc_done=True),
        issued("jd:R2", "jd:O2", t0 + 60 * H + 5 * MIN, 15_000),
        # A settlement and a receipt of jd:R2 naming another order: the refund processor refused both. R2 stays
        # issued and unsettled, its receipt and QC where they were; the settlement is money the marketplace says
        # went back that stockflow never paid out: settled_unknown, as "jd:R2 (refused)".
        Refused(settled("jd:R2", "jd:O99", t0 + 62 * H, 15_000, event_id="settled:jd:R2:jd:O99"),
                Reason.UNKNOWN_REFUND, "a settlement of refund jd:R2 for order jd:O99; the refund is jd:O2's"),
        Refused(("refund.events", "jd:O99", "ReturnReceived", {**returned("jd:R2", "jd:O99", t0 + 20 * H, True)[3],
                                                               "event_id": "return-qc:jd:R2:jd:O99"}),
                Reason.UNKNOWN_REFUND, "a return of refund jd:R2 for order jd:O99"),
        # tmall:R3 refund only, with customer service since +2 h.
        *refund("tmall:R3", "tmall:O3", "REFUND_ONLY", 12_000, [("requested", t0 + 2 * H), ("reviewing", t0 + 2 * H)]),
        # tmall:R4 approved after 1 h; the marketplace refused the call (rotated key), never issued.
        *refund(
            "tmall:R4", "tmall:O4", "REFUND_ONLY", 20_000, [("requested", t0), ("reviewing", t0), ("refunding", t0 + H)]
        ),
        call_failed("tmall:R4", t0 + H + MIN, "connector_credentials"),
        # douyin:R5 requested 2025-11-30 23:00: its 2 h run out in December.
        *refund(
            "douyin:R5",
            "douyin:O5",
            r,
            8_000,
            [("requested", t0 + 20 * DAY + 13 * H), ("reviewing", t0 + 20 * DAY + 13 * H)],
        ),
        # douyin:R6 requested 2025-10-31 20:00, approved 2025-11-01 02:00: late in October and November.
        *refund(
            "douyin:R6",
            "douyin:O6",
            r,
            6_000,
            [
                ("requested", t0 - 9 * DAY - 14 * H),
                ("reviewing", t0 - 9 * DAY - 14 * H),
                ("awaiting_return", t0 - 9 * DAY - 8 * H),
            ],
        ),
        # pdd:R7 withdrawn after 30 min; pdd:R8 rejected after 90 min.
        *refund(
            "pdd:R7",
            "pdd:O7",
            r,
            3_000,
            [("requested", t0 + 3 * H), ("reviewing", t0 + 3 * H), ("cancelled", t0 + 3 * H + 30 * MIN)],
        ),
        *refund(
            "pdd:R8",
            "pdd:O8",
            "REFUND_ONLY",
            4_000,
            [("requested", t0), ("reviewing", t0), ("rejected", t0 + 90 * MIN)],
        ),
        # kuaishou:R13 waited 3 h for the buyer's tracking number, then customer service rejected it within 1 h:
        # not late (its answer limit runs from when it reached review).
        *refund(
            "kuaishou:R13",
            "kuaishou:O13",
            "RETURN_AND_REFUND",
            70_000,
            [("requested", t0 + 5 * H), ("reviewing", t0 + 8 * H), ("rejected", t0 + 9 * H)],
        ),
        # kuaishou:R9: a settlement for a refund stockflow never paid out.
        settled("kuaishou:R9", "kuaishou:O9", t0 + 6 * H, 5_500),
        # kuaishou:R12 the same, past the day the processor keeps it for its request: dead-lettered then, and
        # still a settlement stockflow never paid out.
        Refused(settled("kuaishou:R12", "kuaishou:O12", t0 + 7 * H, 2_500), Reason.UNKNOWN_REFUND,
                "RefundSettled for refund kuaishou:R12 (2500 fen), which was never requested"),
        # own:R10 paid out 50.00, settled 40.00 (and the marketplace notified twice).
        *refund(
            "own:R10",
            "own:O10",
            r,
            5_000,
            [
                ("requested", t0 + 5 * H),
                ("refunding", t0 + 5 * H),
                ("issued", t0 + 5 * H + MIN),
                ("settled", t0 + 20 * H),
                ("completed", t0 + 20 * H),
            ],
        ),
        issued("own:R10", "own:O10", t0 + 5 * H + MIN, 5_000),
        settled("own:R10", "own:O10", t0 + 20 * H, 4_000),
        settled("own:R10", "own:O10", t0 + 21 * H, 4_000, event_id="settled:own:R10:again"),
        # Its callback again, under the same id, naming another order: refused, it stands apart (settled_unknown)
        # and leaves R10's own settlement as it was.
        Refused(settled("own:R10", "own:O98", t0 + 22 * H, 5_000), Reason.UNKNOWN_REFUND,
                "a settlement of refund own:R10 for order own:O98; the refund is own:O10's"),
        # jd:R11 approved at once, issued +2 min, return received +2 h and never checked, settled 2025-12-02.
        *refund(
            "jd:R11",
            "jd:O11",
            r,
            7_000,
            [
                ("requested", t0),
                ("refunding", t0),
                ("issued", t0 + 2 * MIN),
                ("return_received", t0 + 2 * H),
                ("settled", t0 + 22 * DAY),
                ("completed", t0 + 22 * DAY),
            ],
        ),
        issued("jd:R11", "jd:O11", t0 + 2 * MIN, 7_000),
        returned("jd:R11", "jd:O11", t0 + 2 * H, qc_done=False),
        settled("jd:R11", "jd:O11", t0 + 22 * DAY, 7_000),
    ]


T0 = shop_ms("2025-11-10T10:00")
NOVEMBER = (shop_ms("2025-11-01T00:00"), shop_ms("2025-12-01T00:00"))


def send_refunds(settings: Settings, t0: int = T0) -> int:
    producer = EventProducer(settings)
    items = refund_events(t0)
    landed: list[tuple[Refused, Any]] = []
    for item in items:
        if isinstance(item, Refused):
            topic, key, kind, record = item.event
            producer.send_with_callback(topic, key, kind, record,
                                        lambda _err, msg, item=item: landed.append((item, msg)))  # fmt: skip
        else:
            producer.send(*item)
    producer.flush()
    for item, msg in landed:  # each copy refused names where it landed, as the processor's dead letter does
        copy = SimpleNamespace(topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), key=msg.key(),
                               value=msg.value())  # fmt: skip
        letter = dead_letter(copy, STAGE, item.reason, item.detail, item.event[3]["event_time_ms"])
        producer.send(DEADLETTERS.name, item.event[0], "DeadLetter", dict(letter))
    producer.flush()
    return len(items) + len(landed)


def rows(settings: Settings, name: str, **given: Any) -> list[dict[str, Any]]:
    return dashboards.run(settings, name, {k: str(v) for k, v in given.items()})[1]


def month(start: int, end: int) -> dict[str, int]:
    return {"from_ms": start, "to_ms": end}


def h(minutes: float) -> float:
    """Hours as the dashboards round them (3 places)."""
    return round(minutes / 60, 3)


# The November list, worked out by hand (hours to the month's end, 2025-12-01 00:00, for what still hangs).
NOVEMBER_EXCEPTIONS = [
    # refund, exception, stage, entered at, left at, hours spent, limit hours, state at the month's end
    ("douyin:R6", "respond_late", "reviewing", "2025-10-31 20:00:00", "2025-11-01 02:00:00", 6.0, 2.0,
     "awaiting_return"),
    # approved, and its return has not come in 7 days (29 days 22 h to the month's end)
    ("douyin:R6", "return_hanging", "awaiting_return", "2025-11-01 02:00:00", "", 29 * 24 + 22.0, 168.0,
     "awaiting_return"),
    ("jd:R11", "issued_not_settled", "issued", "2025-11-10 10:00:00", "", 20 * 24 + 14.0, 72.0, "refunding"),
    ("jd:R2", "respond_late", "reviewing", "2025-11-10 11:00:00", "2025-11-10 14:00:00", 3.0, 2.0, "refunding"),
    ("tmall:R4", "not_issued", "refunding", "2025-11-10 11:00:00", "", 20 * 24 + 13.0, 72.0, "refunding"),
    ("jd:R11", "qc_hanging", "return_received", "2025-11-10 12:00:00", "", 20 * 24 + 12.0, 24.0, "refunding"),
    ("tmall:R3", "respond_hanging", "reviewing", "2025-11-10 12:00:00", "", 20 * 24 + 12.0, 2.0, "reviewing"),
    ("jd:R2", "qc_late", "return_received", "2025-11-11 16:00:00", "2025-11-12 22:00:00", 30.0, 24.0, "refunding"),
    ("jd:R2", "issued_not_settled", "issued", "2025-11-12 22:00:00", "", 18 * 24 + 2.0, 72.0, "refunding"),
]  # fmt: skip

# (channel, stage) -> (refunds, p50, p90, avg hours) for refunds requested in November. quantileExact(q) of n
# values is the sorted value at index floor(q * n).
NOVEMBER_FLOW = {
    ("douyin", "1 requested"): (1, 0.0, 0.0, 0.0),  # R5 (still with customer service)
    ("jd", "1 requested"): (3, 0.0, 0.0, 0.0),  # R1, R2, R11
    ("jd", "2 reviewing"): (1, 3.0, 3.0, 3.0),  # R2
    ("jd", "3 awaiting_return"): (1, 26.0, 26.0, 26.0),  # R2: +4 h to +30 h
    ("jd", "4 received→inspected"): (2, 30.0, 30.0, 20.0),  # R1 10 h, R2 30 h (R11 never checked)
    ("jd", "5 refunding→issued"): (3, h(5), h(10), h(17 / 3)),  # R11 2 min, R2 5 min, R1 10 min
    ("jd", "6 issued→settled"): (2, h(22 * 24 * 60 - 2), h(22 * 24 * 60 - 2), h((50 * 60 - 10 + 22 * 24 * 60 - 2) / 2)),
    ("jd", "7 requested→finished"): (2, 528.0, 528.0, 289.0),  # R1 50 h, R11 22 days
    ("own", "1 requested"): (1, 0.0, 0.0, 0.0),
    ("own", "5 refunding→issued"): (1, h(1), h(1), h(1)),
    ("own", "6 issued→settled"): (1, h(15 * 60 - 1), h(15 * 60 - 1), h(15 * 60 - 1)),
    ("own", "7 requested→finished"): (1, 15.0, 15.0, 15.0),
    ("kuaishou", "1 requested"): (1, 3.0, 3.0, 3.0),  # R13, waiting for its tracking number
    ("kuaishou", "2 reviewing"): (1, 1.0, 1.0, 1.0),
    ("kuaishou", "7 requested→finished"): (1, 4.0, 4.0, 4.0),
    ("pdd", "1 requested"): (2, 0.0, 0.0, 0.0),
    ("pdd", "2 reviewing"): (2, 1.5, 1.5, 1.0),  # R7 30 min to its cancellation, R8 90 min to its rejection
    ("pdd", "7 requested→finished"): (2, 1.5, 1.5, 1.0),
    ("tmall", "1 requested"): (2, 0.0, 0.0, 0.0),
    ("tmall", "2 reviewing"): (1, 1.0, 1.0, 1.0),  # R4 (R3 is still in review)
}

NOVEMBER_RECONCILIATION = {
    # channel: instructed, issued, settled, instructed_yuan, issued_yuan, settled_yuan, not_issued, issue_failed,
    #          unsettled, unsettled_overdue, amount_mismatch, settled_unknown
    # R11's settlement came in December; R2's refused one stands apart, never paid out by stockflow.
    "jd": (3, 3, 2, 319.0, 319.0, 249.0, 0, 0, 2, 2, 0, 1),
    "kuaishou": (0, 0, 2, 0.0, 0.0, 80.0, 0, 0, 0, 0, 0, 2),
    "own": (1, 1, 2, 50.0, 50.0, 90.0, 0, 0, 0, 0, 1, 1),
    "tmall": (1, 0, 0, 200.0, 0.0, 0.0, 1, 1, 0, 0, 0, 0),
}
NOVEMBER_MISMATCHES = [
    ("jd:R11", "issued_not_settled", ""),
    ("jd:R2", "issued_not_settled", ""),
    ("jd:R2 (refused)", "settled_unknown", ""),
    ("kuaishou:R12 (refused)", "settled_unknown", ""),
    ("kuaishou:R9", "settled_unknown", ""),
    ("own:R10", "amount_mismatch", ""),
    ("own:R10 (refused)", "settled_unknown", ""),
    ("tmall:R4", "issue_failed", "connector_credentials"),
]
RECONCILIATION_COLUMNS = ("instructed", "issued", "settled", "instructed_yuan", "issued_yuan", "settled_yuan",
                          "not_issued", "issue_failed", "unsettled", "unsettled_overdue", "amount_mismatch",
                          "settled_unknown")  # fmt: skip


def exception_tuples(found: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["refund_id"], r["exception"], r["stage"], r["entered_at"], r["left_at"], r["hours_spent"],
             r["limit_hours"], r["current_state"]) for r in found]  # fmt: skip


def monthly_figures(settings: Settings) -> dict[str, Any]:
    nov = month(*NOVEMBER)
    return {
        "exceptions": rows(settings, "refund_exceptions", **nov),
        "flow": rows(settings, "refund_flow_time", **nov),
        "reconciliation": rows(settings, "refund_reconciliation", **nov),
        "mismatches": rows(settings, "refund_mismatches", **nov),
        "october": rows(settings, "refund_exceptions", from_ms=shop_ms("2025-10-01T00:00"), to_ms=NOVEMBER[0]),
        "december": rows(settings, "refund_exceptions", from_ms=NOVEMBER[1], to_ms=shop_ms("2026-01-01T00:00")),
    }


def start_chdb_sink(make_settings: Any, start_sink: Any, tmp_path: Path) -> tuple[Settings, Any]:
    settings = make_settings(clickhouse_url=f"chdb://{tmp_path / 'ch'}")
    return settings, start_sink(settings)  # the sink owns the chdb folder: dashboards are read through it


def wait_all_sunk(sink: Any, count: int) -> None:
    wait_for(lambda: sink.get("/sink/status")["rows"] >= count, timeout_s=90, what=f"{count} refund events sunk")


@pytest.mark.parametrize("backend", ["embedded", "server"])
def test_refund_dashboards_give_the_hand_worked_figures_and_count_a_resent_event_once(
    backend: str, make_settings: Any, start_sink: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if backend == "server":  # the same SQL on a ClickHouse server (the 18.x Debian ships, too)
        settings = make_settings(clickhouse_url=request.getfixturevalue("clickhouse_server_url"))
        sink = start_sink(settings)
    else:
        settings, sink = start_chdb_sink(make_settings, start_sink, tmp_path)
    sent = send_refunds(settings)
    wait_all_sunk(sink, sent)
    found = monthly_figures(settings)

    assert exception_tuples(found["exceptions"]) == NOVEMBER_EXCEPTIONS
    first = found["exceptions"][0]
    assert (first["channel"], first["order_id"], first["amount_yuan"]) == ("douyin", "douyin:O6", 60.0)
    # October's end: R6 was still with customer service, 4 h in; December: what still hangs, R11 settled late,
    # R5 past its 2 h from 01:00 on the 1st; R2's late review and QC ended in November.
    assert exception_tuples(found["october"]) == [
        ("douyin:R6", "respond_hanging", "reviewing", "2025-10-31 20:00:00", "", 4.0, 2.0, "reviewing")
    ]
    december = {(r["refund_id"], r["exception"]): r["hours_spent"] for r in found["december"]}
    assert december == {
        ("jd:R11", "settle_late"): 22 * 24.0, ("jd:R11", "qc_hanging"): 51 * 24 + 12.0,
        ("jd:R2", "issued_not_settled"): 49 * 24 + 2.0, ("tmall:R3", "respond_hanging"): 51 * 24 + 12.0,
        ("tmall:R4", "not_issued"): 51 * 24 + 13.0, ("douyin:R5", "respond_hanging"): 31 * 24 + 1.0,
        ("douyin:R6", "return_hanging"): 60 * 24 + 22.0,
    }  # fmt: skip

    flow = {(r["channel"], r["stage"]): (r["refunds"], r["p50_h"], r["p90_h"], r["avg_h"]) for r in found["flow"]}
    assert flow == NOVEMBER_FLOW
    assert {r["stage"] for r in rows(settings, "refund_flow_time", channel="pdd", **month(*NOVEMBER))} == {
        "1 requested", "2 reviewing", "7 requested→finished"}  # fmt: skip

    reconciliation = {r["channel"]: tuple(r[c] for c in RECONCILIATION_COLUMNS) for r in found["reconciliation"]}
    assert reconciliation == NOVEMBER_RECONCILIATION
    assert [(r["refund_id"], r["mismatch"], r["detail"]) for r in found["mismatches"]] == NOVEMBER_MISMATCHES
    wrong = next(r for r in found["mismatches"] if r["mismatch"] == "amount_mismatch")
    assert (wrong["instructed_yuan"], wrong["issued_yuan"], wrong["settled_yuan"]) == (50.0, 50.0, 40.0)

    # Everything sent again (a producer retrying it all): not one figure moves.
    send_refunds(settings)
    wait_all_sunk(sink, 2 * sent)
    assert monthly_figures(settings) == found


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.as_env(), "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "agents.cli", "refunds", *args], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_refunds_exceptions_and_reconcile_commands_print_csv_xlsx_and_tables(
    make_settings: Any, start_sink: Any, tmp_path: Path
) -> None:
    from openpyxl import load_workbook

    settings, sink = start_chdb_sink(make_settings, start_sink, tmp_path)
    wait_all_sunk(sink, send_refunds(settings))

    listed = run_cli(settings, "exceptions", "--month", "2025-11", "--format", "csv")
    assert listed.returncode == 0, listed.stderr
    table = list(csv.DictReader(io.StringIO(listed.stdout)))
    assert list(table[0]) == list(reports.EXCEPTION_COLUMNS)
    assert [(r["refund_id"], r["exception"], float(r["hours_spent"])) for r in table] == [
        (e[0], e[1], e[5]) for e in NOVEMBER_EXCEPTIONS]  # fmt: skip

    book = tmp_path / "exceptions.xlsx"
    saved = run_cli(settings, "exceptions", "--month", "2025-11", "--channel", "jd", "--format", "xlsx",
                    "--output", str(book))  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    sheet = load_workbook(book).active
    values = [list(row) for row in sheet.iter_rows(values_only=True)]
    assert values[0] == list(reports.EXCEPTION_COLUMNS)
    jd = [e for e in NOVEMBER_EXCEPTIONS if e[0].startswith("jd:")]
    assert [(v[0], v[3], v[7]) for v in values[1:]] == [(e[0], e[1], e[5]) for e in jd]
    assert isinstance(values[1][7], (int, float))  # hours are numbers in the sheet, not text

    printed = run_cli(settings, "exceptions", "--month", "2025-11")
    assert printed.returncode == 0, printed.stderr
    assert "tmall:R3" in printed.stdout and "9 exceptions" in printed.stdout

    reconciled = run_cli(settings, "reconcile", "--month", "2025-11", "--format", "json")
    assert reconciled.returncode == 0, reconciled.stderr
    answer = json.loads(reconciled.stdout)
    assert {r["channel"]: r["settled_unknown"] for r in answer["channels"]} == {
        "jd": 1, "kuaishou": 2, "own": 1, "tmall": 0}  # fmt: skip
    assert [(r["refund_id"], r["mismatch"]) for r in answer["mismatches"]] == [
        (m[0], m[1]) for m in NOVEMBER_MISMATCHES]  # fmt: skip

    for args, message in (
        (["exceptions", "--month", "2025-13"], "not a month"),
        (["exceptions", "--month", "2999-01"], "has not begun"),
        (["exceptions", "--month", "2025-11", "--format", "pdf"], "--format must be"),
        (["exceptions", "--month", "2025-11", "--channel", "ebay"], "channel must be one of"),
        (["reconcile", "--month", "2025-11", "--format", "xlsx", "--output", "/proc/no/such.xlsx"], "cannot write"),
    ):
        bad = run_cli(settings, *args)
        assert bad.returncode == 1 and message in bad.stdout + bad.stderr, (args, bad.stdout, bad.stderr)
        assert "Traceback" not in bad.stdout + bad.stderr, args
