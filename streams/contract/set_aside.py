"""A VIP override's set-aside on the pool's topics: part of the topic contract (``HoldCommand``, ``HoldDecided``).

A set-aside has a line of its own, ``SET_ASIDE_LINE`` (0; an order's lines are numbered from 1): no line of the
order, one per SKU. Its reason names the override, ``vip_override:<id>`` (``override_reason``): the set-aside's,
the offer's, the claim's, and the answer of a line that took it over. A VIP order refusing the offer answers
``<why>:vip_override:<id>`` (``refusal_reason``); the pool reads back ``why`` and the id (``parse_reply``). A
RELEASE on the line naming no override lets go of what is set aside for the order.
"""

from __future__ import annotations

SET_ASIDE_LINE = 0
OVERRIDE_REASON = "vip_override:"  # followed by the override id


def override_reason(override_id: str) -> str:
    """The reason naming an override: ``vip_override:<id>``."""
    return f"{OVERRIDE_REASON}{override_id}"


def override_of(reason: str) -> str:
    """The override id a reason names (``vip_override:<id>``), or ""."""
    return reason.removeprefix(OVERRIDE_REASON) if reason.startswith(OVERRIDE_REASON) else ""


def refusal_reason(why: str, offer_reason: str) -> str:
    """A VIP order's refusal of the offer whose reason is ``offer_reason`` (``vip_override:<id>``): ``<why>:<it>``."""
    return f"{why}:{offer_reason}"


def parse_reply(reason: str) -> tuple[str, str]:
    """(why, override id) of a RELEASE on the set-aside's line: ``<why>:vip_override:<id>`` refuses that override;
    any other reason names none (id "")."""
    why, named, override_id = reason.partition(f":{OVERRIDE_REASON}")
    return (why, override_id) if named else (reason, "")
