"""The set-aside's line and the reasons naming an override: one definition the pool, the lifecycle and the audit
share, so a reply the lifecycle builds is one the pool reads back."""

from __future__ import annotations

from agents.audit import checker
from agents.inventory import hold_stock
from agents.inventory import rules as pool_rules
from agents.orders import rules as order_rules
from agents.orders import run_lifecycle
from streams.contract import set_aside as contract
from streams.contract.reasons import Reason


def test_a_refusal_the_lifecycle_builds_is_read_back_by_the_pool() -> None:
    offer = contract.override_reason("OV:7")
    assert offer == "vip_override:OV:7" and contract.override_of(offer) == "OV:7"
    assert contract.parse_reply(contract.refusal_reason(Reason.VIP_ORDER_ENDED, offer)) == ("vip_order_ended", "OV:7")
    assert contract.parse_reply("order_reserved") == ("order_reserved", "")  # no override: what the lines left
    assert contract.override_of("order_reserved") == ""


def test_the_set_aside_line_and_the_override_reason_are_defined_once() -> None:
    for module in (pool_rules, hold_stock, order_rules, run_lifecycle, checker):
        assert getattr(module, "SET_ASIDE_LINE", contract.SET_ASIDE_LINE) is contract.SET_ASIDE_LINE
        for restated in ("VIP_LINE", "SET_ASIDE_REASON", "VIP_OVERRIDE_REASON", "set_aside_reply"):
            assert not hasattr(module, restated), (module.__name__, restated)
