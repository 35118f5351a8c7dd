"""A VIP override's set-aside on the pool's topics: part of the topic contract (``HoldCommand``, ``HoldDecided``).

A set-aside has a line of its own, ``SET_ASIDE_LINE`` (0; an order's lines are numbered from 1): no line of the
order, one per SKU. Its reason names the override, ``vip_override:<id>`` (``override_reason``): the set-aside's,
the offer's, the claim's, and the answer of a line that took it over. A VIP order refusing the offer answers
``<why>:vip_override:<id>`` (``refusal_reason``); the pool reads back ``why`` and the id (``parse_reply``). A
RELEASE on the line naming no override lets go of what is set aside for the order.

An applied override sets aside only free units at its claim and pledges the rest: its order's lines take that from
other orders' unpaid holds when they arrive. Its audit's detail (``audit.overrides``) says how many units are still
pledged, and at a takeover which line took holds over (``pledge_detail``, ``parse_pledge``).
"""

from __future__ import annotations

SET_ASIDE_LINE = 0
OVERRIDE_REASON = "vip_override:"  # followed by the override id
PLEDGED = "pledged:"  # an applied override's audit detail: ``pledged:<units>[ taken_by:<order>#<line>]``
TAKEN_BY = " taken_by:"


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


def pledge_detail(pledged: int, taken_by: str = "") -> str:
    """An applied override's audit detail: units still pledged; at a takeover, the VIP line that took holds over."""
    return f"{PLEDGED}{pledged}" + (f"{TAKEN_BY}{taken_by}" if taken_by else "")


def parse_pledge(detail: str) -> tuple[int, str]:
    """(units pledged, the line that took holds over or "") of an applied override's audit detail; (0, "") for a
    claim that pledged nothing (an empty detail) or a record written before pledges."""
    if not detail.startswith(PLEDGED):
        return 0, ""
    units, _, taken_by = detail.removeprefix(PLEDGED).partition(TAKEN_BY)
    return int(units), taken_by
