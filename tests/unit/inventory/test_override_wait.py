"""``stockflow override approve --wait``: an approval's offer is reported, and the wait goes on for the VIP order's
answer (no broker: the audit records the command reads are given, through the watch's own loop)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from agents.cli import app
from agents.inventory import override_outcome
from agents.inventory.override_outcome import OutcomeWatch
from streams.engine import producer as producer_module


def audit(outcome: str, detail: str = "") -> dict[str, Any]:
    return {"override_id": "ov-1", "outcome": outcome, "event_time_ms": 1, "sku": "SKU-V", "qty": 2,
            "vip_order_id": "own:vip-9", "requester": "alice", "approver": "bob", "detail": detail,
            "released_holds": []}  # fmt: skip


class Message:
    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def error(self) -> None:
        return None

    def value(self) -> dict[str, Any]:
        return self.record


class Watch(OutcomeWatch):
    """The real ``wait`` over the given records, handed out one per poll, then nothing."""

    records: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, settings: Any) -> None:
        queued = [Message(r) for r in self.records]
        self.consumer: Any = type("Consumer", (), {
            "consume": lambda _self, num_messages, timeout: [queued.pop(0)] if queued else [],
            "close": lambda _self: None,
        })()  # fmt: skip
        self.codec: Any = type("Codec", (), {"decode": lambda _self, value: ("OverrideAudited", value)})()


class Producer:
    def __init__(self, settings: Any) -> None:
        pass

    def send(self, *args: Any) -> None:
        pass

    def flush(self) -> None:
        pass


def approve(monkeypatch: pytest.MonkeyPatch, *records: dict[str, Any]) -> Any:
    monkeypatch.setattr(Watch, "records", list(records))
    monkeypatch.setattr(override_outcome, "OutcomeWatch", Watch)
    monkeypatch.setattr(producer_module, "EventProducer", Producer)
    return CliRunner().invoke(app, ["override", "approve", "--id", "ov-1", "--sku", "SKU-V", "--approver", "bob",
                                    "--wait", "0.3"])  # fmt: skip


def test_an_offer_is_a_step_of_an_approval_not_its_answer() -> None:
    from agents.inventory.override_outcome import progress

    assert progress(audit("OFFERED"), "ov-1", "APPROVE")
    assert not progress(audit("OFFERED"), "ov-2", "APPROVE")
    assert not progress(audit("APPLIED"), "ov-1", "APPROVE")
    assert not progress(audit("OFFERED"), "ov-1", "REQUEST")  # a request seen again: OFFERED is its answer


@pytest.mark.parametrize(("outcome", "detail", "code"), [("APPLIED", "", 0), ("REFUSED", "vip_order_ended", 1)])
def test_an_approval_reports_the_offer_and_waits_for_the_vip_orders_answer(
    monkeypatch: pytest.MonkeyPatch, outcome: str, detail: str, code: int
) -> None:
    """The defect: the offer went by unseen, and an approval waited for APPLIED or REFUSED without saying it had
    been offered."""
    result = approve(monkeypatch, audit("OFFERED"), audit(outcome, detail))
    assert result.exit_code == code, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("override ov-1 OFFERED: 2 x SKU-V for own:vip-9, approved by bob")
    assert f"override ov-1 {outcome}" in lines[1]


def test_an_offer_its_vip_order_has_not_answered_in_time_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defect: it said "is a worker running?" though the pool had answered; the VIP order had not yet."""
    result = approve(monkeypatch, audit("OFFERED"))
    assert result.exit_code == 1, result.output
    assert "override ov-1 OFFERED" in result.output
    assert "its VIP order has not answered yet within 0.3s" in result.output
    assert "is a worker running" not in result.output


def test_no_record_at_all_is_still_a_timeout_asking_for_a_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    result = approve(monkeypatch)
    assert result.exit_code == 1 and "is a worker running?" in result.output


def test_an_applied_verdict_says_what_is_pledged_and_which_line_took_holds_over() -> None:
    claimed = override_outcome.verdict(audit("APPLIED", "pledged:2"))
    assert claimed.ok and claimed.line.endswith("holds released: none; 2 pledged from unpaid holds, taken as its "
                                                "lines need them")  # fmt: skip
    taken = override_outcome.verdict({**audit("APPLIED", "pledged:0 taken_by:own:vip-9#1"),
                                      "released_holds": ["jd:1#1"]})  # fmt: skip
    assert taken.line.endswith("holds released: jd:1#1 (taken over by line own:vip-9#1)")
    assert override_outcome.verdict(audit("APPLIED")).line.endswith("holds released: none")
