"""Which audit record answers an override action, and what the command says about it."""

from __future__ import annotations

from typing import Any

from agents.inventory.override_outcome import answers, latest_per_override, verdict


def audit(outcome: str, override_id: str = "ov-1", t: int = 1, **extra: Any) -> dict[str, Any]:
    record = {"override_id": override_id, "outcome": outcome, "event_time_ms": t, "sku": "SKU-V", "qty": 2,
              "vip_order_id": "own:vip-9", "requester": "alice", "approver": "", "detail": "",
              "released_holds": []}  # fmt: skip
    return record | extra


def test_a_request_is_answered_by_its_own_override_only() -> None:
    assert answers(audit("REQUESTED"), "ov-1", "REQUEST")
    assert answers(audit("REFUSED", detail="reason_required"), "ov-1", "REQUEST")
    assert not answers(audit("REQUESTED", override_id="ov-2"), "ov-1", "REQUEST")


def test_an_approval_is_not_answered_by_a_request_record_nor_by_its_offer() -> None:
    assert not answers(audit("REQUESTED"), "ov-1", "APPROVE")
    assert not answers(audit("OFFERED", approver="bob"), "ov-1", "APPROVE")  # the VIP order has not answered yet
    assert answers(audit("OFFERED", approver="bob"), "ov-1", "REQUEST")  # a request seen again: as it stands
    assert answers(audit("APPLIED", approver="bob"), "ov-1", "APPROVE")
    assert answers(audit("REFUSED", detail="unknown_override"), "ov-1", "APPROVE")


def test_a_refusal_is_not_ok_and_names_its_reason_code_and_meaning() -> None:
    result = verdict(audit("REFUSED", detail="approver_must_differ_from_requester", approver="alice"))
    assert not result.ok
    assert "REFUSED: approver_must_differ_from_requester (an override approved by its own requester" in result.line


def test_an_override_its_vip_order_refused_says_why() -> None:
    for detail in ("vip_order_ended", "vip_order_already_placed"):
        result = verdict(audit("REFUSED", detail=detail, approver="bob"))
        assert not result.ok and result.line.startswith(f"override ov-1 REFUSED: {detail} (an override whose VIP order")


def test_an_unknown_reason_code_is_still_shown() -> None:
    assert verdict(audit("REFUSED", detail="something_new")).line == "override ov-1 REFUSED: something_new"


def test_applied_and_requested_are_ok() -> None:
    applied = verdict(audit("APPLIED", approver="bob", released_holds=["douyin:live-1#1"]))
    assert applied.ok and "approved by bob" in applied.line and "douyin:live-1#1" in applied.line
    requested = verdict(audit("REQUESTED"))
    assert requested.ok and "by alice" in requested.line
    offered = verdict(audit("OFFERED", approver="bob"))
    assert offered.ok and "approved by bob" in offered.line and "waits for the VIP order" in offered.line


def test_list_keeps_the_newest_record_per_override_newest_first() -> None:
    records = [audit("REQUESTED", t=1), audit("REQUESTED", "ov-2", t=2), audit("APPLIED", t=3)]
    assert [(r["override_id"], r["outcome"]) for r in latest_per_override(records, 10)] == [
        ("ov-1", "APPLIED"),
        ("ov-2", "REQUESTED"),
    ]
    assert len(latest_per_override(records, 1)) == 1
