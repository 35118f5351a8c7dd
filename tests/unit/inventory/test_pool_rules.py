"""Pure pool rules, no broker: availability, holds, thresholds, adjustments, VIP overrides.

The rules take one SKU's totals (``SkuStock``) and the records of the lines a command touches
(``LineHold``) and return the records to store; ``Pool`` below stores them the way the processor
does, so a test reads like the stream of commands it stands for.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import orjson
import pytest

from agents.inventory import rules as P
from agents.inventory.rules import Answer, LineHold, OverrideRequest, SkuStock
from streams.contract.reasons import Reason
from streams.contract.set_aside import SET_ASIDE_LINE, parse_reply

RULES = P.PoolRules(
    main_channel="tmall",
    channels=("tmall", "jd"),
    safety_threshold=0,
    hysteresis=0,
    hold_ttl_ms=7_200_000,
    tombstone_ttl_ms=86_400_000,
    adjustment_ttl_ms=86_400_000,
    max_line_qty=1000,
)


class Pool:
    """One SKU as the processor keeps it: the totals, and one record per order line."""

    def __init__(self, stock: SkuStock) -> None:
        self.stock = stock
        self.holds: dict[tuple[str, int], LineHold] = {}
        self.released: list[LineHold] = []  # holds VIP lines took over, as they were let go

    def store(self, order_id: str, holds: dict[int, LineHold | None]) -> None:
        for line_no, hold in holds.items():
            if hold is None:
                self.holds.pop((order_id, line_no), None)
            else:
                self.holds[(order_id, line_no)] = hold

    def reserve(self, order_id: str, line_no: int, qty: int, channel: str = "jd", presale: bool = False,
                now_ms: int = 1) -> Answer:  # fmt: skip
        # As the processor does: the set-aside is looked up only while the SKU has one.
        wants_vip = self.stock.set_asides > 0 and line_no != SET_ASIDE_LINE
        vip = self.holds.get((order_id, SET_ASIDE_LINE)) if wants_vip else None
        unpaid = self.unpaid() if vip is not None and vip.pledged else None
        step = P.reserve(self.stock, RULES, self.holds.get((order_id, line_no)), vip, order_id, line_no, qty,
                         channel, presale, now_ms, unpaid)  # fmt: skip
        self.store(order_id, step.holds)
        for hold in step.released:
            self.store(hold.order_id, {hold.line_no: hold})
        self.released += step.released
        assert step.answer is not None
        return step.answer

    def command(self, action: str, order_id: str, line_no: int, qty: int, now_ms: int = 1, warehouse_id: str = "",
                reason: str = "") -> Answer:  # fmt: skip
        step = P.line_command(self.stock, RULES, self.holds.get((order_id, line_no)), action, order_id, line_no, qty,
                              now_ms, warehouse_id, reason)  # fmt: skip
        self.store(order_id, step.holds)
        assert step.answer is not None
        return step.answer

    def due(self, now_ms: int) -> list[Answer]:
        """Fire every line's timer that is due by ``now_ms``, as the engine's timers would."""
        out = []
        for hold in sorted(self.holds.values(), key=lambda h: (h.expires_at_ms, h.order_id, h.line_no)):
            if 0 < hold.expires_at_ms <= now_ms:
                step = P.on_due(self.stock, RULES, hold, now_ms)
                self.store(hold.order_id, step.holds)
                if step.answer is not None:
                    out.append(step.answer)
        return out

    def approve(self, request: OverrideRequest | None, approver: str, now_ms: int) -> P.OverrideStep:
        """Approve, and claim the offer as the lifecycle of a VIP order not placed yet does."""
        result = self.offer(request, approver, now_ms)
        if result.outcome != "OFFERED" or request is None:
            return result
        return self.claim(request, now_ms)

    def offer(self, request: OverrideRequest | None, approver: str, now_ms: int) -> P.OverrideStep:
        return P.approve_override(self.stock, request, approver, self.unpaid(), now_ms)

    def claim(self, request: OverrideRequest, now_ms: int, order_id: str = "") -> P.OverrideStep:
        before = self.holds.get((request.vip_order_id, SET_ASIDE_LINE))
        result = P.claim_override(self.stock, RULES, request, order_id or request.vip_order_id, self.unpaid(), before,
                                  now_ms)  # fmt: skip
        for hold in result.released:
            self.store(hold.order_id, {hold.line_no: hold})
        if result.set_aside is not None:
            self.store(result.set_aside.order_id, {SET_ASIDE_LINE: result.set_aside})
        return result

    def unpaid(self) -> list[LineHold]:
        # The processor offers every open, unpaid, regular hold that is not itself a set-aside.
        return [h for h in self.holds.values() if h.status == P.HELD and not h.presale and h.line_no != SET_ASIDE_LINE]

    def hold(self, order_id: str, line_no: int) -> LineHold | None:
        return self.holds.get((order_id, line_no))


def stocked(qty: int, wh: str = "WH-SH") -> Pool:
    pool = Pool(SkuStock(sku="S"))
    P.adjust(pool.stock, "RECEIPT", wh, qty, 0)
    return pool


# ---- availability and holds -------------------------------------------------------------------------


def test_available_is_on_hand_minus_locked_minus_presale_and_never_negative() -> None:
    pool = stocked(10)
    P.adjust(pool.stock, "PRESALE_CAP", "", 4, 0)
    assert pool.reserve("o1", 1, 3).outcome == "HELD"
    assert pool.reserve("o2", 1, 2, presale=True).outcome == "HELD"
    s = pool.stock
    assert (s.on_hand_total(), s.locked, s.presale_reserved, s.available()) == (10, 3, 2, 5)
    P.adjust(s, "COUNT", "WH-SH", 1, 2)  # shrinkage found: on-hand below what is locked
    assert s.available() == 0 and s.breaches() and not s.healthy()


def test_a_negative_warehouse_does_not_cancel_another() -> None:
    pool = stocked(5, "WH-SH")
    P.adjust(pool.stock, "CORRECTION", "WH-GZ", -3, 0)
    assert pool.stock.on_hand_total() == 5 and pool.stock.available() == 5
    assert "negative on-hand" in " ".join(pool.stock.breaches()) and not pool.stock.healthy()


def test_same_line_twice_takes_stock_once_and_replay_after_release_takes_nothing() -> None:
    pool = stocked(5)
    assert pool.reserve("o1", 1, 4).outcome == "HELD"
    duplicate = P.reserve(pool.stock, RULES, pool.hold("o1", 1), None, "o1", 1, 4, "jd", False, 2)
    assert duplicate.answer is not None and duplicate.answer.outcome == "HELD" and duplicate.holds == {}
    assert (pool.stock.locked, pool.stock.open_lines) == (4, 1)
    assert pool.command("RELEASE", "o1", 1, 4, 3).outcome == "RELEASED"
    assert pool.reserve("o1", 1, 4, now_ms=4).outcome == "RELEASED"
    assert pool.stock.locked == 0 and pool.stock.available() == 5 and pool.stock.open_lines == 0


def test_release_before_reserve_leaves_a_tombstone() -> None:
    pool = stocked(5)
    answer = pool.command("RELEASE", "o1", 1, 2, now_ms=1)
    assert (answer.outcome, answer.reason) == ("RELEASED", "no_open_hold")
    tomb = pool.hold("o1", 1)
    assert tomb is not None and tomb.status == P.RELEASED and tomb.expires_at_ms == 1 + RULES.tombstone_ttl_ms
    assert pool.stock.locked == 0 and pool.stock.open_lines == 0  # a tombstone holds nothing
    assert pool.reserve("o1", 1, 2, now_ms=2).outcome == "RELEASED"
    assert pool.stock.locked == 0


def test_refusal_reasons() -> None:
    pool = stocked(2)
    assert pool.reserve("o1", 1, 3).reason == "insufficient_stock"
    assert Pool(SkuStock(sku="X")).reserve("o2", 1, 1).reason == "unknown_sku"
    assert pool.reserve("o3", 1, 0).reason == "invalid_qty"
    assert pool.reserve("o3b", 1, RULES.max_line_qty + 1).reason == "invalid_qty"
    assert pool.reserve("o4", 1, 1, presale=True).reason == "insufficient_presale_stock"
    pool.stock.paused = True
    assert pool.reserve("o5", 1, 1, channel="jd").reason == "channel_paused"
    assert pool.reserve("o6", 1, 1, channel="tmall").outcome == "HELD"  # the main channel still sells
    # A presale sale too while units are left (changed on purpose: presale lines skipped the pause and took
    # the main channel's last units); a SKU sold only on presale (nothing on hand) goes on selling it.
    pool.stock.presale_cap = 10
    assert pool.reserve("o7", 1, 1, channel="jd", presale=True).reason == "channel_paused"
    assert pool.reserve("o8", 1, 1, channel="tmall", presale=True).outcome == "HELD"
    presale_only = Pool(SkuStock(sku="P", known=True, presale_cap=500, paused=True))
    assert presale_only.reserve("o9", 1, 1, channel="jd", presale=True).outcome == "HELD"


def test_a_refused_attempt_stores_nothing() -> None:
    """Changed on purpose: the old pool kept a REFUSED record per attempt; now a refusal stores
    nothing, so a sold-out SKU's state does not grow with the traffic it turns away. A retry of the
    same line is decided afresh (and may succeed once stock arrives)."""
    pool = stocked(1)
    step = P.reserve(pool.stock, RULES, None, None, "o1", 1, 2, "jd", False, 1)
    assert step.answer is not None and step.answer.outcome == "REFUSED" and step.holds == {}
    assert (pool.stock.locked, pool.stock.open_lines, pool.stock.newest_change_ms) == (0, 0, 0)
    P.adjust(pool.stock, "RECEIPT", "WH-SH", 1, 2)
    assert pool.reserve("o1", 1, 2, now_ms=3).outcome == "HELD"


@pytest.mark.parametrize(
    ("paused", "available", "expected"),
    [(False, 10, False), (False, 9, True), (True, 14, True), (True, 15, True), (True, 16, False)],
)
def test_threshold_hysteresis(paused: bool, available: int, expected: bool) -> None:
    assert P.next_paused(paused, available, threshold=10, hysteresis=5) is expected


def test_commit_ship_expire() -> None:
    pool = stocked(10)
    pool.reserve("o1", 1, 2, now_ms=0)
    pool.reserve("o2", 1, 3, now_ms=0)
    assert pool.command("COMMIT", "o1", 1, 2, 1).outcome == "COMMITTED"
    committed = pool.hold("o1", 1)
    assert committed is not None and committed.expires_at_ms == 0  # a paid hold has no timer
    assert (pool.stock.locked, pool.stock.sold) == (5, 2)
    assert P.on_due(pool.stock, RULES, committed, RULES.hold_ttl_ms + 1).holds == {}
    answers = pool.due(RULES.hold_ttl_ms + 1)
    assert [(a.order_id, a.outcome, a.reason) for a in answers] == [("o2", "EXPIRED", "hold_expired")]
    assert (pool.stock.locked, pool.stock.sold, pool.stock.open_lines) == (2, 2, 1)
    assert pool.command("SHIP", "o1", 1, 2, 2, warehouse_id="WH-SH").outcome == "SHIPPED"
    assert pool.stock.on_hand == {"WH-SH": 8} and (pool.stock.locked, pool.stock.sold) == (0, 0)
    assert pool.command("SHIP", "o1", 1, 2, 3).outcome == "SHIPPED"
    assert pool.stock.on_hand == {"WH-SH": 8}  # shipping twice deducts once


def test_finished_lines_are_tombstones_purged_after_tombstone_ttl() -> None:
    """Changed on purpose: a finished line (released, expired, shipped) is kept only until
    ``tombstone_ttl_ms`` after it finished, then its timer deletes it."""
    pool = stocked(10)
    pool.reserve("o1", 1, 1, now_ms=0)
    pool.reserve("o2", 1, 1, now_ms=0)
    pool.reserve("o3", 1, 1, now_ms=0)
    pool.command("RELEASE", "o1", 1, 1, now_ms=5)
    pool.command("SHIP", "o2", 1, 1, now_ms=5)
    pool.due(RULES.hold_ttl_ms)  # o3 expires
    finished = {key: h.expires_at_ms for key, h in pool.holds.items()}
    assert finished == {("o1", 1): 5 + RULES.tombstone_ttl_ms, ("o2", 1): 5 + RULES.tombstone_ttl_ms,
                        ("o3", 1): RULES.hold_ttl_ms + RULES.tombstone_ttl_ms}  # fmt: skip
    tomb = pool.hold("o1", 1)
    assert tomb is not None
    assert P.on_due(pool.stock, RULES, tomb, 4 + RULES.tombstone_ttl_ms).holds == {}  # not yet
    assert pool.due(5 + RULES.tombstone_ttl_ms) == []  # a purge answers nothing
    assert set(pool.holds) == {("o3", 1)}
    pool.due(RULES.hold_ttl_ms + RULES.tombstone_ttl_ms)
    assert pool.holds == {} and pool.stock.locked == 0 and pool.stock.on_hand == {"WH-SH": 9}


@pytest.mark.parametrize("finish", ["RELEASE", "EXPIRE"])
def test_a_ship_after_release_or_expiry_still_deducts_on_hand(finish: str) -> None:
    """Changed on purpose: the old pool ignored a SHIP for a released or expired line; now the
    units left the warehouse all the same, so on-hand is deducted and the answer is SHIPPED."""
    pool = stocked(5)
    pool.reserve("o1", 1, 2)
    pool.command("ALLOCATE", "o1", 1, 2, warehouse_id="WH-SH")
    pool.command(finish, "o1", 1, 2, now_ms=2)
    assert (pool.stock.locked, pool.stock.allocated) == (0, {})
    answer = pool.command("SHIP", "o1", 1, 2, now_ms=3)
    status = P.RELEASED if finish == "RELEASE" else P.EXPIRED
    assert (answer.outcome, answer.reason) == ("SHIPPED", f"shipped_after_{status}")
    shipped = pool.hold("o1", 1)
    assert shipped is not None and shipped.status == P.SHIPPED
    assert pool.stock.on_hand == {"WH-SH": 3} and pool.stock.locked == 0 and pool.stock.open_lines == 0
    assert pool.command("SHIP", "o1", 1, 2, now_ms=4).outcome == "SHIPPED"
    assert pool.stock.on_hand == {"WH-SH": 3}  # and only once


def test_a_ship_with_no_hold_deducts_on_hand_from_the_named_or_fullest_warehouse() -> None:
    """Changed on purpose: the old pool ignored a SHIP for a line it had no hold for; now the
    shipped units are deducted (never phantom stock)."""
    pool = stocked(5, "WH-SH")
    P.adjust(pool.stock, "RECEIPT", "WH-GZ", 8, 0)
    step = P.line_command(pool.stock, RULES, None, "SHIP", "o1", 1, 2, 1, "WH-SH")
    assert step.answer == Answer("o1", 1, 2, "SHIP", "SHIPPED", "no_open_hold")
    assert pool.stock.on_hand == {"WH-SH": 3, "WH-GZ": 8}
    pool.command("SHIP", "o2", 1, 3, now_ms=2)  # the WMS did not say where from: the fullest
    assert pool.stock.on_hand == {"WH-SH": 3, "WH-GZ": 5} and pool.stock.locked == 0


@pytest.mark.parametrize("finish", ["", "RELEASE"])
def test_a_line_shipped_from_another_warehouse_than_its_allocation_comes_off_the_shelf_it_left(finish: str) -> None:
    """The warehouse a shipment names is where the units left. The lifecycle names the line's allocation when it has
    one, so the two differ only when it never heard of the allocation (routing refused, the order pushed to another
    warehouse by hand, and a COMMIT read again later allocated the line after all): taken off the allocated
    warehouse instead, one shelf kept phantom units and the other lost real ones."""
    pool = stocked(5, "WH-SH")
    P.adjust(pool.stock, "RECEIPT", "WH-GZ", 5, 0)
    pool.reserve("o1", 1, 2)
    pool.command("COMMIT", "o1", 1, 2, now_ms=1, warehouse_id="WH-SH")
    if finish:
        pool.command(finish, "o1", 1, 2, now_ms=2)
    assert pool.command("SHIP", "o1", 1, 2, now_ms=3, warehouse_id="WH-GZ").outcome == "SHIPPED"
    assert pool.stock.on_hand == {"WH-SH": 5, "WH-GZ": 3}
    assert (pool.stock.locked, pool.stock.allocated) == (0, {})
    pool.command("SHIP", "o1", 1, 2, now_ms=4)  # a repeat not naming it changes nothing
    assert pool.stock.on_hand == {"WH-SH": 5, "WH-GZ": 3}


def test_a_ship_with_no_hold_applied_twice_deducts_once() -> None:
    """Changed on purpose: a SHIP for a line the pool no longer knew (its record gone after a cancel)
    stored nothing, so the same SHIP again (a replay) took the units off a second time. It now leaves
    a shipped record for the tombstone time, which the repeat finds; then that record goes too."""
    pool = stocked(10, "WH-SH")
    assert pool.command("SHIP", "o1", 1, 2, now_ms=1, warehouse_id="WH-SH").reason == "no_open_hold"
    assert pool.command("SHIP", "o1", 1, 2, now_ms=2, warehouse_id="WH-SH").outcome == "SHIPPED"
    assert pool.stock.on_hand == {"WH-SH": 8} and pool.stock.open_lines == 0
    pool.due(1 + RULES.tombstone_ttl_ms)
    assert pool.holds == {}


def test_a_shipped_presale_line_leaves_the_shelf() -> None:
    """Changed on purpose: shipping a paid presale line gave its units back to what is available
    (``presale_reserved`` fell, on-hand did not), so regular orders could take units already gone."""
    pool = stocked(10, "WH-SH")
    P.adjust(pool.stock, "PRESALE_CAP", "", 10, 0)
    pool.reserve("pre", 1, 4, presale=True)
    pool.command("COMMIT", "pre", 1, 4, now_ms=1)
    assert pool.stock.available() == 6
    assert pool.command("SHIP", "pre", 1, 4, now_ms=2, warehouse_id="WH-SH").outcome == "SHIPPED"
    assert pool.stock.on_hand == {"WH-SH": 6} and pool.stock.presale_reserved == 0 and pool.stock.available() == 6
    assert pool.command("SHIP", "pre", 1, 4, now_ms=3, warehouse_id="WH-SH").outcome == "SHIPPED"
    assert pool.stock.on_hand == {"WH-SH": 6}  # and only once


def test_commands_for_a_line_in_the_wrong_state_are_ignored() -> None:
    pool = stocked(5)
    assert (pool.command("COMMIT", "o1", 1, 1).outcome, pool.command("EXPIRE", "o1", 1, 1).reason) == (
        "IGNORED", "no_hold")  # fmt: skip
    assert pool.holds == {}
    pool.reserve("o1", 1, 1)
    pool.command("COMMIT", "o1", 1, 1)
    assert (pool.command("EXPIRE", "o1", 1, 1).outcome, pool.command("EXPIRE", "o1", 1, 1).reason) == (
        "IGNORED", "hold_is_sold")  # fmt: skip
    pool.command("RELEASE", "o1", 1, 1)
    assert pool.command("COMMIT", "o1", 1, 1).reason == "hold_is_released"
    assert pool.stock.locked == 0


def test_allocate_ties_a_line_to_a_warehouse_with_the_units_free() -> None:
    pool = stocked(3, "WH-SH")
    pool.reserve("o1", 1, 2)
    pool.reserve("o2", 1, 1)
    assert pool.command("ALLOCATE", "o1", 1, 2, warehouse_id="WH-SH").outcome == "ALLOCATED"
    assert pool.command("ALLOCATE", "o1", 1, 2, warehouse_id="WH-SH").outcome == "ALLOCATED"  # idempotent
    assert pool.command("ALLOCATE", "o1", 1, 2, warehouse_id="WH-GZ").reason == "allocated_to_WH-SH"
    assert pool.command("ALLOCATE", "o2", 1, 1, warehouse_id="WH-GZ").reason == "warehouse_short"
    assert pool.command("ALLOCATE", "o9", 1, 1, warehouse_id="WH-SH").reason == "no_open_hold"
    assert pool.stock.allocated == {"WH-SH": 2}
    pool.command("SHIP", "o1", 1, 2)  # shipped from where it was allocated
    assert pool.stock.on_hand == {"WH-SH": 1} and pool.stock.allocated == {}


def test_a_routed_presale_line_counts_against_its_warehouse_like_a_regular_one() -> None:
    """Changed on purpose: a presale line was allocated without the free-units check and left out of the
    warehouse's allocated units, though the pool keeps on-hand units back for it. So the same 5 units of WH-SH
    went to a presale order and then to a regular one, while WH-GZ's 5 sat unallocated."""
    pool = stocked(5, "WH-SH")
    P.adjust(pool.stock, "RECEIPT", "WH-GZ", 5, 0)
    P.adjust(pool.stock, "PRESALE_CAP", "", 5, 0)
    pool.reserve("pre", 1, 5, presale=True)
    pool.command("COMMIT", "pre", 1, 5)  # the deposit
    assert pool.command("ALLOCATE", "pre", 1, 5, warehouse_id="WH-SH").outcome == "ALLOCATED"  # the balance
    assert pool.stock.allocated == {"WH-SH": 5}
    assert (pool.stock.warehouse_free("WH-SH"), pool.stock.warehouse_free("WH-GZ")) == (0, 5)
    pool.reserve("reg", 1, 5)
    pool.command("COMMIT", "reg", 1, 5)
    assert pool.command("ALLOCATE", "reg", 1, 5, warehouse_id="WH-SH").reason == "warehouse_short"
    assert pool.command("ALLOCATE", "reg", 1, 5, warehouse_id="WH-GZ").outcome == "ALLOCATED"
    assert pool.stock.allocated == {"WH-SH": 5, "WH-GZ": 5} and pool.stock.healthy()
    # Shipped, or let go, a presale line gives its warehouse's units back as a regular one does.
    pool.command("SHIP", "pre", 1, 5)
    assert pool.stock.on_hand == {"WH-SH": 0, "WH-GZ": 5} and pool.stock.allocated == {"WH-GZ": 5}
    assert pool.stock.presale_reserved == 0


def test_a_presale_line_is_allocated_only_where_its_units_are_free() -> None:
    """A presale cap may run ahead of the shelf: a line is not tied to a warehouse without the units (routing
    tries again, as for a regular line), and is once a receipt brings them."""
    pool = stocked(2, "WH-SH")
    P.adjust(pool.stock, "PRESALE_CAP", "", 6, 0)
    pool.reserve("pre", 1, 4, presale=True)
    pool.command("COMMIT", "pre", 1, 4)
    assert pool.command("ALLOCATE", "pre", 1, 4, warehouse_id="WH-SH").reason == "warehouse_short"
    assert pool.stock.allocated == {} and pool.hold("pre", 1).warehouse_id == ""  # type: ignore[union-attr]
    P.adjust(pool.stock, "RECEIPT", "WH-SH", 2, 1)
    assert pool.command("ALLOCATE", "pre", 1, 4, warehouse_id="WH-SH").outcome == "ALLOCATED"
    assert pool.stock.allocated == {"WH-SH": 4} and pool.stock.healthy()
    pool.command("RELEASE", "pre", 1, 4)
    assert (pool.stock.allocated, pool.stock.presale_reserved) == ({}, 0)


# ---- adjustments --------------------------------------------------------------------------------------


SKEW = 500  # STOCKFLOW_COUNT_CLOCK_SKEW_MS's default


def test_adjustments_apply_by_kind() -> None:
    stock = SkuStock(sku="S")
    P.adjust(stock, "RECEIPT", "WH-SH", 5, 1_000)
    P.adjust(stock, "CORRECTION", "WH-SH", -2, 2_000)
    P.adjust(stock, "COUNT", "WH-GZ", 4, 3_000)
    P.adjust(stock, "PRESALE_CAP", "", 6, 4_000)
    assert stock.known and stock.on_hand == {"WH-SH": 3, "WH-GZ": 4} and stock.presale_cap == 6
    assert stock.newest_change_ms == 4_000
    P.adjust(stock, "COUNT", "WH-SH", 1, 10_000)  # a count replaces, it does not add
    assert stock.on_hand == {"WH-SH": 1, "WH-GZ": 4}


def test_a_count_stands_as_of_when_it_was_taken() -> None:
    """Changed on purpose: a count replaced the figure when it reached the pool, so a shipment booked after it was
    taken came back on the shelf (a phantom unit, sold again) and a receipt booked meanwhile was lost."""
    pool = Pool(SkuStock(sku="S"))
    P.adjust(pool.stock, "RECEIPT", "WH-SH", 10, 1_000_000)
    pool.reserve("o1", 1, 3, now_ms=1_100_000)
    pool.command("COMMIT", "o1", 1, 3, now_ms=1_100_000)
    taken_ms = 1_200_000  # the stock-take: 10 on the shelf, o1 packed but not gone
    pool.command("SHIP", "o1", 1, 3, now_ms=1_300_000, warehouse_id="WH-SH")  # it leaves: 7 on the shelf
    P.adjust(pool.stock, "RECEIPT", "WH-SH", 5, 1_350_000, dated_ms=1_350_000)  # 12
    assert P.count_refusal(pool.stock, "WH-SH", taken_ms, SKEW) is None
    P.adjust(pool.stock, "COUNT", "WH-SH", 10, 1_400_000, dated_ms=taken_ms, skew_ms=SKEW)  # keyed in now
    assert pool.stock.on_hand == {"WH-SH": 12}
    # Movements no later count can need are let go; an older count is older news.
    assert [m[0] for m in pool.stock.shelf_moves["WH-SH"]] == [1_300_000, 1_350_000]
    refusal = P.count_refusal(pool.stock, "WH-SH", taken_ms - 1, SKEW)
    assert refusal is not None and refusal[0] == "count_superseded"


def test_a_shipment_within_the_clocks_skew_before_a_count_comes_off_it_again() -> None:
    """The warehouse's clock may run ahead: a shipment the pool dated just before the count may have left after it.
    In doubt, fewer units: it comes off the count too, a unit a later count gives back, never a phantom one."""
    for booked_ms, on_hand in ((1_999_700, 8), (1_999_200, 9)):
        stock = SkuStock(sku="S")
        P.adjust(stock, "RECEIPT", "WH-SH", 10, 1_000_000, dated_ms=1_000_000)
        P.note_shelf_move(stock, "WH-SH", -1, booked_ms)
        P.adjust(stock, "COUNT", "WH-SH", 9, 2_100_000, dated_ms=2_000_000, skew_ms=SKEW)
        assert stock.on_hand == {"WH-SH": on_hand}, booked_ms


def test_a_count_older_than_the_movements_kept_is_refused() -> None:
    stock = SkuStock(sku="S")
    for n in range(P.SHELF_MOVES_KEPT + 5):
        P.note_shelf_move(stock, "WH-SH", -1, 10_000_000 + n * 1_000)
    assert len(stock.shelf_moves["WH-SH"]) == P.SHELF_MOVES_KEPT
    refusal = P.count_refusal(stock, "WH-SH", 10_000_000, SKEW)
    assert refusal is not None and refusal[0] == "count_too_old"
    assert P.count_refusal(stock, "WH-SH", 10_000_000 + 5_000 + SKEW, SKEW) is None


@pytest.mark.parametrize(
    ("kind", "qty", "warehouse", "expected"),
    [
        ("RECEIPT", 3, "WH-X", "unknown_warehouse"),
        ("RECEIPT", -3, "WH-SH", "invalid_qty"),
        ("RECEIPT", 0, "WH-SH", "invalid_qty"),
        ("RECEIPT", P.MAX_ADJUSTMENT_QTY, "WH-SH", None),
        ("RECEIPT", P.MAX_ADJUSTMENT_QTY + 1, "WH-SH", "invalid_qty"),
        ("COUNT", 0, "WH-SH", None),
        ("COUNT", -1, "WH-SH", "invalid_qty"),
        ("CORRECTION", 0, "WH-SH", "invalid_qty"),
        ("CORRECTION", -2, "WH-SH", None),
        ("CORRECTION", -P.MAX_ADJUSTMENT_QTY - 1, "WH-SH", "invalid_qty"),
        ("PRESALE_CAP", 5, "", None),
        ("PRESALE_CAP", -1, "", "invalid_qty"),
        ("THEFT", 1, "WH-SH", "invalid_kind"),
    ],
)
def test_adjustments_validated(kind: str, qty: int, warehouse: str, expected: str | None) -> None:
    """Idempotency by adjustment id is the processor's job now: see
    test_hold_stock.py::test_an_adjustment_document_sent_twice_counts_once (and ..._in_one_batch)."""
    assert P.check_adjustment(kind, qty, warehouse, frozenset({"WH-SH"})) == expected


# ---- VIP overrides ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("qty", "vip_order", "requester", "reason", "detail"),
    [
        (2, "vip:1", "alice", " ", "reason_required"),
        (2, "vip:1", "", "launch", "requester_required"),
        (0, "vip:1", "alice", "launch", "invalid_qty"),
        (2, " ", "alice", "launch", "vip_order_required"),
    ],
)
def test_an_override_request_needs_a_reason_a_requester_units_and_a_vip_order(
    qty: int, vip_order: str, requester: str, reason: str, detail: str
) -> None:
    step = P.request_override(None, "v1", qty, vip_order, requester, reason, 1)
    assert (step.outcome, step.detail) == ("REFUSED", detail)
    assert step.request is not None and (step.request.status, step.request.detail) == ("refused", detail)
    again = P.request_override(step.request, "v1", 2, "vip:1", "alice", "launch", 2)  # recorded: refused again
    assert (again.outcome, again.request) == ("REFUSED", step.request)


def test_vip_override_needs_a_second_approver_and_is_audited() -> None:
    pool = stocked(5)
    pool.reserve("o1", 1, 2, now_ms=1)
    pool.reserve("o2", 1, 2, now_ms=2)
    requested = P.request_override(None, "v1", 2, "vip:1", "alice", "launch", 3)
    assert requested.outcome == "REQUESTED" and requested.request is not None
    request = requested.request
    assert P.request_override(request, "v1", 2, "vip:1", "alice", "launch", 4).outcome == "REQUESTED"
    assert pool.approve(None, "bob", 4).detail == "unknown_override"
    for approver in ("alice", "  "):
        refused = pool.approve(request, approver, 5)
        assert (refused.outcome, refused.detail) == ("REFUSED", "approver_must_differ_from_requester")
    assert request.status == "pending" and pool.stock.locked == 4  # not a decision: bob may still approve
    result = pool.approve(request, "bob", 6)
    assert (result.outcome, result.detail) == ("APPLIED", "pledged:1")
    # Free stock (1 unit) set aside; the other pledged, no hold let go before the VIP order's line comes.
    assert result.released == [] and request.released == []
    assert (request.status, request.requester, request.approver, request.approved_ms, request.reason) == (
        "applied", "alice", "bob", 6, "launch")  # fmt: skip
    assert result.set_aside == LineHold("vip:1", SET_ASIDE_LINE, 1, "vip", False, P.HELD, "vip_override:v1",
                                        6 + RULES.hold_ttl_ms, 6, pledged=1)  # fmt: skip
    s = pool.stock
    assert (s.locked, s.available(), s.open_lines, s.set_asides, s.pledged) == (5, 0, 3, 1, 1)
    assert P.request_override(request, "v1", 2, "vip:1", "alice", "launch", 7).outcome == "APPLIED"
    # The VIP order's line takes the set-aside unit and, through the pledge, the newest unpaid hold.
    assert pool.reserve("vip:1", 1, 2, now_ms=8).outcome == "HELD"
    assert [(h.order_id, h.status, h.reason) for h in pool.released] == [("o2", P.RELEASED, "vip_override:v1")]
    assert (s.locked, s.available(), s.open_lines, s.set_asides, s.pledged) == (4, 1, 2, 0, 0)


def test_an_approved_override_is_offered_to_its_vip_order_and_moves_nothing_until_it_claims_it() -> None:
    """Changed on purpose: an approval released holds and set units aside at once, for an order the pool knows
    nothing of; one already rejected, cancelled or timed out never took them (see test_vip_set_asides)."""
    pool = stocked(3)
    pool.reserve("o1", 1, 3, now_ms=1)
    request = P.request_override(None, "v1", 2, "vip:1", "alice", "launch", 2).request
    assert request is not None
    offered = pool.offer(request, "bob", 3)
    assert (offered.outcome, offered.released, offered.set_aside) == ("OFFERED", [], None)
    assert (request.status, request.approver, request.approved_ms) == ("offered", "bob", 3)
    assert pool.offer(request, "carol", 4).outcome == "OFFERED"  # seen again: offered again, still bob's
    assert P.request_override(request, "v1", 2, "vip:1", "alice", "launch", 4).outcome == "OFFERED"
    assert (pool.stock.locked, pool.stock.set_asides) == (3, 0) and pool.hold("o1", 1) == pool.holds[("o1", 1)]
    assert pool.holds[("o1", 1)].status == P.HELD
    assert pool.claim(request, 5, order_id="vip:2").detail == Reason.UNKNOWN_OVERRIDE  # not the order it names
    assert request.status == "offered"
    claimed = pool.claim(request, 6)
    assert (claimed.outcome, claimed.released) == ("APPLIED", [])  # no free unit: all pledged, nothing let go yet
    assert (request.status, request.approver, request.approved_ms, request.released) == ("applied", "bob", 3, [])
    assert claimed.set_aside is not None and claimed.set_aside.expires_at_ms == 6 + RULES.hold_ttl_ms
    assert (claimed.set_aside.qty, claimed.set_aside.pledged) == (0, 2)
    again = pool.claim(request, 7)  # a claim seen again: the recorded outcome, nothing set aside twice
    assert (again.outcome, again.released, again.set_aside) == ("APPLIED", [], None)
    assert (pool.stock.locked, pool.stock.set_asides, pool.stock.pledged, pool.stock.available()) == (3, 1, 2, 0)
    assert pool.reserve("vip:1", 1, 2, now_ms=8).outcome == "HELD"
    assert [h.order_id for h in pool.released] == ["o1"]
    assert (pool.stock.locked, pool.stock.set_asides, pool.stock.available()) == (2, 0, 1)


def test_an_override_its_vip_order_refuses_is_refused_with_its_reason_and_moves_nothing() -> None:
    pool = stocked(2)
    pool.reserve("o1", 1, 2, now_ms=1)
    request = P.request_override(None, "v1", 1, "vip:1", "alice", "launch", 2).request
    assert request is not None and pool.offer(request, "bob", 3).outcome == "OFFERED"
    assert P.decline_override(request, "vip:2", Reason.VIP_ORDER_ENDED).detail == Reason.UNKNOWN_OVERRIDE
    refused = P.decline_override(request, "vip:1", Reason.VIP_ORDER_ENDED)
    assert (refused.outcome, refused.detail) == ("REFUSED", Reason.VIP_ORDER_ENDED)
    assert (request.status, request.approver, request.detail) == ("refused", "bob", Reason.VIP_ORDER_ENDED)
    # The decision stands, whatever comes after: a late claim, an approval or a request seen again.
    for step in (pool.claim(request, 4), pool.offer(request, "carol", 5),
                 P.request_override(request, "v1", 1, "vip:1", "alice", "launch", 6),
                 P.decline_override(request, "vip:1", Reason.VIP_ORDER_ALREADY_PLACED)):  # fmt: skip
        assert (step.outcome, step.detail, step.released, step.set_aside) == ("REFUSED", Reason.VIP_ORDER_ENDED, [],
                                                                              None)  # fmt: skip
    assert (pool.stock.locked, pool.stock.set_asides, pool.stock.open_lines) == (2, 0, 1)
    assert pool.hold("vip:1", SET_ASIDE_LINE) is None


def test_a_claim_is_judged_on_the_stock_when_it_comes() -> None:
    pool = stocked(2)
    pool.reserve("o1", 1, 2, now_ms=1)
    request = P.request_override(None, "v1", 2, "vip:1", "alice", "launch", 2).request
    assert request is not None and pool.offer(request, "bob", 3).outcome == "OFFERED"
    pool.command("COMMIT", "o1", 1, 2, now_ms=4)  # paid while the offer travelled: never released for a VIP
    result = pool.claim(request, 5)
    assert (result.outcome, result.detail, result.released) == ("REFUSED", Reason.INSUFFICIENT_LOCKED_STOCK, [])
    assert (request.status, request.approver) == ("refused", "bob")
    assert (pool.stock.locked, pool.stock.sold, pool.stock.set_asides) == (2, 2, 0)


def test_an_override_never_releases_a_hold_of_the_vip_order_it_is_for() -> None:
    """Changed on purpose: the newest unpaid hold could be the VIP order's own, and released to it, it cancelled
    the VIP order (reason vip_override) and set its units aside for an order that was over."""
    pool = stocked(3)
    pool.reserve("o1", 1, 2, now_ms=1)
    pool.reserve("vip:1", 1, 1, now_ms=2)  # the newest
    request = P.request_override(None, "v1", 1, "vip:1", "alice", "launch", 3).request
    assert request is not None and pool.offer(request, "bob", 4).outcome == "OFFERED"
    assert pool.claim(request, 5).released == []
    assert pool.reserve("vip:1", 2, 1, now_ms=6).outcome == "HELD"
    assert [h.order_id for h in pool.released] == ["o1"]
    assert pool.holds[("vip:1", 1)].status == P.HELD
    big = P.request_override(None, "v2", 3, "vip:1", "alice", "launch", 6).request
    assert big is not None and pool.offer(big, "bob", 7).detail == Reason.INSUFFICIENT_LOCKED_STOCK


def test_a_release_on_the_set_aside_line_names_the_override_it_refuses() -> None:
    assert parse_reply("vip_order_ended:vip_override:OV-1") == ("vip_order_ended", "OV-1")
    assert parse_reply("vip_order_already_placed:vip_override:a:b") == ("vip_order_already_placed", "a:b")
    assert parse_reply("order_reserved") == ("order_reserved", "")  # what the order's lines left: no override


def test_vip_override_refused_when_free_and_unpaid_stock_fall_short() -> None:
    pool = stocked(3)
    pool.reserve("o1", 1, 1)
    pool.command("COMMIT", "o1", 1, 1)  # paid: never released for a VIP
    pool.reserve("o2", 1, 1)
    pool.reserve("o3", 1, 1)
    P.adjust(pool.stock, "PRESALE_CAP", "", 5, 1)
    pool.reserve("o4", 1, 5, presale=True)  # presale: never released for a VIP either
    request = P.request_override(None, "v1", 3, "vip:1", "alice", "launch", 1).request
    result = pool.approve(request, "bob", 2)
    assert (result.outcome, result.detail) == ("REFUSED", "insufficient_locked_stock")
    assert request is not None and (request.status, request.approver) == ("refused", "bob")
    assert result.released == [] and result.set_aside is None
    assert (pool.stock.locked, pool.stock.presale_reserved, pool.stock.set_asides) == (3, 5, 0)
    assert pool.approve(request, "carol", 3).detail == "insufficient_locked_stock"  # the decision stands


def test_the_set_aside_is_taken_over_by_the_vip_orders_lines() -> None:
    pool = stocked(4)
    pool.reserve("o1", 1, 4, now_ms=1)
    request = P.request_override(None, "v1", 3, "vip:1", "alice", "launch", 2).request
    assert pool.approve(request, "bob", 3).outcome == "APPLIED"
    # Nothing free: all 3 pledged, o1 keeps its hold until a line of the VIP order comes.
    assert (pool.stock.locked, pool.stock.available(), pool.stock.set_asides, pool.stock.pledged) == (4, 0, 1, 3)
    taken = pool.reserve("vip:1", 1, 2, channel="tmall", now_ms=4)
    assert (taken.outcome, taken.reason) == ("HELD", "vip_override:v1")
    assert [h.order_id for h in pool.released] == ["o1"]
    # o1's 4 units: 2 to the line, 1 set aside (the pledge's rest), 1 free.
    rest = pool.hold("vip:1", SET_ASIDE_LINE)
    assert rest is not None and (rest.qty, rest.pledged) == (1, 0)
    assert (pool.stock.locked, pool.stock.available(), pool.stock.open_lines) == (3, 1, 2)  # moved, not added
    assert pool.reserve("vip:1", 2, 3, now_ms=5).reason == "insufficient_stock"  # beyond set-aside and free stock
    # More than is set aside: the rest of the set-aside and a free unit.
    assert pool.reserve("vip:1", 3, 2, now_ms=6).reason == "vip_override:v1"
    assert pool.hold("vip:1", SET_ASIDE_LINE) is None and pool.stock.set_asides == 0
    assert (pool.stock.locked, pool.stock.available()) == (4, 0)


def test_an_override_claimed_for_an_order_that_never_comes_lets_no_hold_go() -> None:
    """Fixed: the lifecycle claims an offer for an order id it has never seen (the VIP may order later), so a
    mistyped id claimed it too, and the claim released other customers' unpaid holds for an order that never came;
    the set-aside then just expired. Now only free units are set aside; the rest is a pledge, taken from unpaid holds
    only when a line of the VIP order asks."""
    pool = stocked(5)
    for n, order_id in enumerate(("o1", "o2", "o3")):
        pool.reserve(order_id, 1, 1 + n % 2, now_ms=1 + n)  # 1 + 2 + 1 units: 1 free
    holds_before = dict(pool.holds)
    totals_before = actual_totals(pool.stock)
    request = P.request_override(None, "v1", 4, "vip:typo", "alice", "launch", 10).request
    claimed = pool.approve(request, "bob", 11)
    assert (claimed.outcome, claimed.released) == ("APPLIED", [])
    assert {k: h for k, h in pool.holds.items() if k[0] != "vip:typo"} == holds_before  # every hold still held
    assert request is not None and request.released == []
    set_aside = pool.hold("vip:typo", SET_ASIDE_LINE)
    assert set_aside is not None and (set_aside.qty, set_aside.pledged) == (1, 3)
    assert (pool.stock.locked, pool.stock.available(), pool.stock.pledged) == (5, 0, 3)
    # Its expiry lets the free unit go back, tells no order anything, and releases nothing of others.
    expired = P.on_due(pool.stock, RULES, set_aside, 11 + RULES.hold_ttl_ms)
    pool.store("vip:typo", expired.holds)
    assert (expired.answer, expired.released) == (None, [])
    assert pool.holds[("vip:typo", SET_ASIDE_LINE)].status == P.EXPIRED
    assert {k: h for k, h in pool.holds.items() if k[0] != "vip:typo"} == holds_before
    assert actual_totals(pool.stock) == totals_before and pool.released == []


def test_a_vip_line_takes_from_unpaid_holds_only_what_it_needs_within_the_pledge() -> None:
    pool = stocked(5)
    for n in range(1, 5):
        pool.reserve(f"o{n}", 1, 1, now_ms=n)  # o4 the newest unpaid
    pool.reserve("o5", 1, 1, now_ms=5)
    pool.command("COMMIT", "o5", 1, 1, now_ms=5)  # the newest, but paid: never taken
    request = P.request_override(None, "v1", 2, "vip:1", "alice", "launch", 6).request
    assert request is not None and pool.approve(request, "bob", 6).detail == "pledged:2"
    assert pool.reserve("vip:1", 9, 3, now_ms=7).reason == Reason.INSUFFICIENT_STOCK  # beyond the pledge
    assert pool.released == [] and pool.stock.pledged == 2  # refused: nothing let go
    assert pool.reserve("vip:1", 1, 1, now_ms=8).reason == "vip_override:v1"
    assert [(h.order_id, h.status, h.reason) for h in pool.released] == [("o4", P.RELEASED, "vip_override:v1")]
    rest = pool.hold("vip:1", SET_ASIDE_LINE)
    assert rest is not None and (rest.qty, rest.pledged) == (0, 1)
    took = P.took_over(request, pool.released, rest.pledged, "vip:1#1")
    assert (took.outcome, took.detail, request.released) == ("APPLIED", "pledged:1 taken_by:vip:1#1", [["o4", 1, 1]])
    # The second line takes the rest of the pledge: o3, not the VIP order's own line 1 (newer) nor o5 (paid).
    assert pool.reserve("vip:1", 2, 1, now_ms=9).outcome == "HELD"
    assert [h.order_id for h in pool.released] == ["o4", "o3"]
    assert pool.hold("vip:1", SET_ASIDE_LINE) is None and (pool.stock.set_asides, pool.stock.pledged) == (0, 0)
    assert pool.reserve("vip:1", 3, 1, now_ms=10).reason == Reason.INSUFFICIENT_STOCK  # the pledge is spent
    assert [pool.holds[(o, 1)].status for o in ("o1", "o2", "vip:1", "o5")] == [P.HELD, P.HELD, P.HELD, P.SOLD]
    assert actual_totals(pool.stock) == expected_totals(pool.holds)


def test_a_pledge_no_other_override_may_count_on_the_same_unpaid_holds() -> None:
    pool = stocked(2)
    pool.reserve("o1", 1, 2, now_ms=1)
    first = P.request_override(None, "v1", 2, "vip:1", "alice", "launch", 2).request
    assert pool.approve(first, "bob", 3).outcome == "APPLIED"
    second = P.request_override(None, "v2", 1, "vip:2", "alice", "launch", 4).request
    assert pool.offer(second, "bob", 5).detail == Reason.INSUFFICIENT_LOCKED_STOCK  # o1's units are pledged


def test_a_second_override_adds_to_the_set_aside_and_its_remainder_returns_to_the_pool() -> None:
    pool = stocked(5)
    for n, override_id in enumerate(("v1", "v2")):
        request = P.request_override(None, override_id, 2, "vip:1", "alice", "launch", n).request
        assert pool.approve(request, "bob", 10 + n).outcome == "APPLIED"
    set_aside = pool.hold("vip:1", SET_ASIDE_LINE)
    assert set_aside is not None and (set_aside.qty, set_aside.reason) == (4, "vip_override:v2")
    assert (pool.stock.locked, pool.stock.set_asides, pool.stock.open_lines) == (4, 1, 1)
    pool.reserve("vip:1", 1, 1, now_ms=20)
    # What no line took expires with no answer: no order line holds it, so no order is cancelled.
    assert [a.order_id for a in pool.due(11 + RULES.hold_ttl_ms)] == []
    assert (pool.stock.locked, pool.stock.set_asides) == (1, 0)


def test_a_duplicate_approval_answers_the_recorded_outcome_and_released_holds() -> None:
    pool = stocked(3)
    pool.reserve("o1", 1, 3, now_ms=0)
    request = P.request_override(None, "v2", 2, "vip:1", "alice", "launch", 1).request
    assert request is not None and pool.approve(request, "bob", 3).outcome == "APPLIED"
    before = (pool.stock.locked, dict(pool.holds))
    again = pool.approve(request, "bob", 4)
    assert again.outcome == "APPLIED" and again.request is request
    assert request.released == [] and request.detail == "pledged:2"
    assert again.released == [] and again.set_aside is None  # nothing released or set aside twice
    assert (pool.stock.locked, pool.holds) == before
    assert pool.reserve("vip:1", 1, 2, channel="own", now_ms=5).outcome == "HELD"
    assert [h.order_id for h in pool.released] == ["o1"]
    assert pool.stock.locked == 2 and pool.stock.available() == 1


def test_a_presale_line_does_not_take_over_a_set_aside() -> None:
    """A set-aside is on-hand stock; a presale line of the VIP order draws on the presale pool as any
    presale line does (here empty, so it is refused), and the set-aside stays regular and whole."""
    pool = stocked(2)
    request = P.request_override(None, "v1", 2, "vip:1", "alice", "launch", 1).request
    pool.approve(request, "bob", 2)
    answer = pool.reserve("vip:1", 1, 2, presale=True, now_ms=3)
    assert (answer.outcome, answer.reason) == ("REFUSED", "insufficient_presale_stock")
    assert pool.stock.healthy(), pool.stock.breaches()
    assert (pool.stock.locked, pool.stock.presale_reserved) == (2, 0)


# ---- the totals always add up -----------------------------------------------------------------------

WAREHOUSES = ("WH-A", "WH-B")
LINES = [(order, line) for order in ("o1", "o2", "o3") for line in (1, 2)]


def expected_totals(holds: dict[tuple[str, int], LineHold]) -> dict[str, object]:
    """What the line records add up to, summed here without ``account``."""
    open_ = [h for h in holds.values() if h.status in P.OPEN]
    allocated: Counter[str] = Counter()
    for h in open_:
        if h.warehouse_id:  # a routed presale line too: it is sent the warehouse's units
            allocated[h.warehouse_id] += h.qty
    return {
        "locked": sum(h.qty for h in open_ if not h.presale),
        "sold": sum(h.qty for h in open_ if not h.presale and h.status == P.SOLD),
        "presale_reserved": sum(h.qty for h in open_ if h.presale),
        "allocated": {wh: q for wh, q in allocated.items() if q},
        "open_lines": len(open_),
        "set_asides": sum(1 for h in open_ if h.line_no == SET_ASIDE_LINE),
        "pledged": sum(h.pledged for h in open_),
    }


def actual_totals(stock: SkuStock) -> dict[str, object]:
    return {"locked": stock.locked, "sold": stock.sold, "presale_reserved": stock.presale_reserved,
            "allocated": dict(stock.allocated), "open_lines": stock.open_lines,
            "set_asides": stock.set_asides, "pledged": stock.pledged}  # fmt: skip


def random_step(pool: Pool, rng: random.Random, now_ms: int, n: int, regular_only: bool) -> None:
    """One random command, as the stream might bring it: duplicates, late ones, stray ones included."""
    order, line = rng.choice([*LINES, ("vip:1", 1), ("vip:1", 2)])
    qty = rng.randint(1, 4)
    warehouse = "WH-A" if regular_only else rng.choice(["", *WAREHOUSES, "WH-X"])
    op = rng.choice(["reserve", "reserve", "COMMIT", "ALLOCATE", "SHIP", "RELEASE", "EXPIRE", "due", "adjust",
                     "override", "let_go"])  # fmt: skip
    if op == "reserve":
        pool.reserve(order, line, qty, rng.choice(RULES.channels), not regular_only and rng.random() < 0.3, now_ms)
    elif op == "due":
        pool.due(now_ms)
    elif op == "adjust":
        kind = "RECEIPT" if regular_only else rng.choice(["RECEIPT", "RECEIPT", *P.ADJUSTMENT_KINDS])
        adj_qty = {"RECEIPT": rng.randint(1, 8), "COUNT": rng.randint(0, 8), "CORRECTION": rng.choice([-2, -1, 1, 2]),
                   "PRESALE_CAP": rng.randint(0, 6)}[kind]  # fmt: skip
        wh = "" if kind == "PRESALE_CAP" else rng.choice(WAREHOUSES) if not regular_only else "WH-A"
        P.adjust(pool.stock, kind, wh, adj_qty, now_ms)
    elif op == "override":
        request = P.request_override(None, f"v{n}", qty, "vip:1", "alice", "launch", now_ms).request
        assert request is not None
        pool.offer(request, "bob", now_ms)
        answer = rng.choice(["claim", "claim", "decline", "none"])  # "none": the order's answer never came
        if answer == "claim":
            pool.claim(request, now_ms)
        elif answer == "decline":
            P.decline_override(request, "vip:1", "vip_order_ended")
    elif op == "let_go":  # the VIP order's lines have all asked: what they left of the set-aside goes back
        hold = pool.hold("vip:1", SET_ASIDE_LINE)
        if hold is not None and hold.is_open:
            pool.command("RELEASE", "vip:1", SET_ASIDE_LINE, hold.qty, now_ms, reason="order_reserved")
    else:
        hold = pool.hold(order, line)
        if regular_only and op == "SHIP" and (hold is None or not hold.is_open):
            return  # only stray shipments can make the stock unhealthy: leave them out here
        if op == "ALLOCATE" and not regular_only:
            warehouse = rng.choice(WAREHOUSES)
        pool.command(op, order, line, hold.qty if hold is not None else qty, now_ms, warehouse)


@pytest.mark.parametrize("seed", range(40))
def test_totals_always_equal_what_the_line_records_add_up_to(seed: int) -> None:
    rng = random.Random(seed)
    pool = Pool(SkuStock(sku="S"))
    P.adjust(pool.stock, "RECEIPT", "WH-A", rng.randint(0, 8), 0)
    P.adjust(pool.stock, "PRESALE_CAP", "", rng.randint(0, 4), 0)
    now_ms = 0
    for n in range(300):
        now_ms += rng.choice([0, 1, 1_000, RULES.hold_ttl_ms // 3, RULES.tombstone_ttl_ms // 2])
        random_step(pool, rng, now_ms, n, regular_only=False)
        s = pool.stock
        assert actual_totals(s) == expected_totals(pool.holds), f"step {n}"
        assert min(s.locked, s.sold, s.presale_reserved, s.open_lines, s.set_asides) >= 0
        assert all(q > 0 for q in s.allocated.values())
        # A set-aside of nothing but a pledge holds no unit, yet is open: its VIP order's lines may take it.
        assert all(h.qty > 0 or (h.line_no == SET_ASIDE_LINE and h.pledged > 0) for h in pool.holds.values()
                   if h.is_open)  # fmt: skip
        assert s.available() >= 0
        assert s.healthy() is (not s.breaches()), s.breaches()


@pytest.mark.parametrize("seed", range(20))
def test_without_miscounts_or_stray_shipments_the_stock_stays_healthy(seed: int) -> None:
    """Receipts into one warehouse, regular lines, shipments only of open lines: whatever the order
    of commands, the rules alone never over-commit the stock."""
    rng = random.Random(seed)
    pool = Pool(SkuStock(sku="S"))
    P.adjust(pool.stock, "RECEIPT", "WH-A", rng.randint(1, 8), 0)
    now_ms = 0
    for n in range(300):
        now_ms += rng.choice([0, 1, 1_000, RULES.hold_ttl_ms // 3])
        random_step(pool, rng, now_ms, n, regular_only=True)
        assert pool.stock.healthy(), (n, pool.stock.breaches())
        assert actual_totals(pool.stock) == expected_totals(pool.holds)


def test_account_moves_a_lines_contribution_between_records() -> None:
    stock = SkuStock(sku="S", on_hand={"WH-A": 9})
    held = LineHold("o1", 1, 3, "jd", False, P.HELD, "", 100, 0)
    P.account(stock, None, held)
    sold = replace(held, status=P.SOLD, warehouse_id="WH-A")
    P.account(stock, held, sold)
    assert actual_totals(stock) == {"locked": 3, "sold": 3, "presale_reserved": 0, "allocated": {"WH-A": 3},
                                    "open_lines": 1, "set_asides": 0, "pledged": 0}  # fmt: skip
    P.account(stock, sold, replace(sold, status=P.SHIPPED))
    assert actual_totals(stock) == expected_totals({})


def test_a_change_on_a_clock_behind_the_version_still_moves_the_version_on() -> None:
    """Changed on purpose: the version channels take a level by was max(version, clock), so after the
    partition moved to a worker whose clock is slower two different figures carried the same version
    and the channels dropped the second (showing 10 units with none left). Within one moment the
    version stays put, so it does not run ahead of the clock with the number of changes."""
    pool = stocked(10)
    pool.reserve("o1", 1, 1, now_ms=5_000)
    assert pool.stock.newest_change_ms == 5_000
    pool.reserve("o2", 1, 1, now_ms=3_500)  # the clock of the worker it moved to
    pool.reserve("o3", 1, 1, now_ms=3_500)
    assert pool.stock.newest_change_ms == 5_001
    pool.reserve("o4", 1, 1, now_ms=3_600)
    assert pool.stock.newest_change_ms == 5_002
    pool.reserve("o5", 1, 1, now_ms=6_000)
    assert pool.stock.newest_change_ms == 6_000


def test_stored_records_load_ignoring_fields_they_do_not_know_and_defaulting_missing_ones() -> None:
    """Changed on purpose: a record written by a newer worker (a field added) could not be loaded by an older one
    during a rolling deploy, and every event of its SKU was dead-lettered; one written before a field was added
    must load too."""
    stock = SkuStock("S", known=True, on_hand={"WH-A": 3}, locked=2, hot=P.Buckets(bucket=1, count=4, state="hot"))
    data = orjson.loads(orjson.dumps(stock))  # as the store keeps it
    data["added_later"] = {"x": 1}
    data["hot"]["also_added_later"] = 7
    del data["set_asides"], data["hot"]["lent"]
    loaded = SkuStock.load(data)
    assert loaded == stock and loaded.hot is not None and loaded.hot.lent == {}
    # Written before routed presale lines counted in ``allocated``: loaded as such, to be brought up to date.
    assert SkuStock.load({"sku": "S", "hot": None}) == SkuStock("S", presale_allocated=False)
    hold = LineHold("o1", 1, 3, "jd", False, P.SOLD, "", 0, 5, "WH-A")
    line = orjson.loads(orjson.dumps(hold))
    line["added_later"] = "x"
    del line["wants"]
    assert LineHold.load(line) == hold
    assert LineHold.load(hold.dump()) == hold
    # A set-aside written before pledges: it pledged nothing.
    aside = LineHold("vip:1", SET_ASIDE_LINE, 2, "vip", False, P.HELD, "vip_override:v1", 9, 5, pledged=3)
    old_aside = orjson.loads(orjson.dumps(aside))
    del old_aside["pledged"]
    assert LineHold.load(old_aside) == replace(aside, pledged=0)
    assert LineHold.load(orjson.loads(orjson.dumps(aside))) == aside
    assert SkuStock.load({"sku": "S", "set_asides": 1}).pledged == 0


def test_a_record_written_before_presale_lines_counted_in_allocated_is_brought_up_to_date_once() -> None:
    """A record stored by a version that left routed presale lines out of ``allocated``: its open presale lines
    tied to a warehouse are added, once, so shipping or letting one go later takes off what was added, and the
    warehouse's units it was sent are not free for the next order. Units it and a regular line both took (the
    old double booking) show as a breach."""
    old = SkuStock("S", known=True, on_hand={"WH-A": 5, "WH-B": 5}, locked=5, sold=5, presale_reserved=5,
                   presale_cap=5, allocated={"WH-A": 5}, open_lines=2)  # fmt: skip
    data = orjson.loads(orjson.dumps(old))
    del data["presale_allocated"]
    stock = SkuStock.load(data)
    pre = LineHold("pre", 1, 5, "tmall", True, P.SOLD, "", 0, 5, "WH-A")
    reg = LineHold("reg", 1, 5, "tmall", False, P.SOLD, "", 0, 5, "WH-A")
    gone = LineHold("pre2", 1, 3, "tmall", True, P.SHIPPED, "", 9, 5, "WH-B")
    assert not stock.presale_allocated and stock.healthy()  # as it was stored: the overbooking hidden
    P.count_presale_allocations(stock, [pre, reg, gone])
    assert stock.allocated == {"WH-A": 10} and stock.presale_allocated
    assert stock.breaches() == ["WH-A: allocated 10 exceeds its on-hand 5"]
    P.count_presale_allocations(stock, [pre, reg, gone])  # once
    assert stock.allocated == {"WH-A": 10}
    assert actual_totals(stock) == expected_totals({("pre", 1): pre, ("reg", 1): reg, ("pre2", 1): gone})
    P.account(stock, pre, replace(pre, status=P.SHIPPED))
    assert stock.allocated == {"WH-A": 5}


def test_a_count_dated_ahead_of_the_pools_clock_is_taken_as_of_now() -> None:
    """Found by review: a count dated minutes ahead stood over every honest count taken before that moment."""
    assert P.count_time(9_999_000, 1_000_000, SKEW) == 1_000_000 + SKEW
    assert P.count_time(900_000, 1_000_000, SKEW) == 900_000
    assert P.count_time(0, 1_000_000, SKEW) == 1_000_000


def test_a_record_stored_before_the_shelf_was_journaled_refuses_counts_older_than_its_last_change() -> None:
    """Found by review: none of its movements could be put back, so a count taken before them brought them back."""
    stored = {"sku": "S", "known": True, "on_hand": {"WH-SH": 7}, "newest_change_ms": 5_000_000}
    stock = SkuStock.load(stored)
    refusal = P.count_refusal(stock, "WH-SH", 4_000_000, SKEW)
    assert refusal is not None and refusal[0] == "count_too_old"
    assert P.count_refusal(stock, "WH-SH", 5_000_000 + SKEW, SKEW) is None
    assert SkuStock.load({**stored, "shelf_moves": {}}).moves_from == {}


def test_an_override_refused_on_a_hot_sku_stays_refused_and_its_reason_says_a_new_one_is_needed() -> None:
    """The reason's text said to set the SKU cold, then approve again: an approval of a refused override answers
    with its refusal, so only a new override (a new id) can be approved."""
    request = OverrideRequest("OV", 1, "tmall:vip", "alice", "r", 0, status="refused",
                              detail=Reason.OVERRIDE_ON_HOT_SKU)  # fmt: skip
    step = P.approve_override(SkuStock("S", known=True, on_hand={"w": 5}), request, "bob", [], 1)
    assert (step.outcome, step.detail) == ("REFUSED", Reason.OVERRIDE_ON_HOT_SKU)
    assert "approve again" not in Reason.OVERRIDE_ON_HOT_SKU.description
    assert "new override" in Reason.OVERRIDE_ON_HOT_SKU.description


def test_vip_order_ended_claims_no_more_than_the_lifecycle_knows() -> None:
    """An order whose record was purged after the retention time is not known as ended: it claims an offer."""
    assert "purged" in Reason.VIP_ORDER_ENDED.description


def pledged_for(pool: Pool, vip_order_id: str, qty: int, override_id: str = "v1", now_ms: int = 10) -> None:
    request = P.request_override(None, override_id, qty, vip_order_id, "alice", "launch", now_ms).request
    assert pool.approve(request, "bob", now_ms + 1).outcome == "APPLIED"


def test_a_vip_line_its_pledge_covers_is_not_refused_for_a_channel_paused_by_low_stock() -> None:
    """Found in review: a pledge exists only when nothing is free, which is when the SKU's other channels are paused;
    the VIP order's own-shop line was refused channel_paused and the customer's hold kept."""
    pool = Pool(SkuStock(sku="S"))
    P.adjust(pool.stock, "RECEIPT", "WH-SH", 5, 0)
    pool.stock.paused = True  # below the safety threshold
    pool.reserve("jd:a", 1, 5, channel=RULES.main_channel, now_ms=1)
    pledged_for(pool, "own:vip", 3)
    assert pool.reserve("own:vip", 1, 3, channel="own", now_ms=20).outcome == "HELD"
    assert [h.order_id for h in pool.released] == ["jd:a"]


def test_a_pledge_takes_no_line_another_vip_order_holds_through_its_override() -> None:
    pool = stocked(4)
    pledged_for(pool, "own:vipA", 3, "ov-a")
    pool.reserve("jd:b", 1, 1, now_ms=12)
    pool.reserve("own:vipA", 1, 3, now_ms=13)  # takes its set-aside: the newest unpaid hold
    pledged_for(pool, "own:vipB", 1, "ov-b", now_ms=14)  # pledged: jd:b's unit only
    assert pool.reserve("own:vipB", 1, 1, now_ms=20).outcome == "HELD"
    assert [h.order_id for h in pool.released] == ["jd:b"]
    assert pool.hold("own:vipA", 1) is not None and pool.hold("own:vipA", 1).status == P.HELD  # type: ignore[union-attr]


def test_a_set_aside_at_its_expiry_takes_over_nothing() -> None:
    """Found in review: the engine applies a batch's commands before its due timers, so a VIP line read at the
    set-aside's expiry released a customer's hold the override no longer stood for."""
    pool = stocked(2)
    pool.reserve("jd:b", 1, 2, now_ms=1)
    pledged_for(pool, "own:vip", 2)
    expiry = pool.hold("own:vip", SET_ASIDE_LINE).expires_at_ms  # type: ignore[union-attr]
    assert pool.reserve("own:vip", 1, 2, now_ms=expiry).reason == "insufficient_stock"
    assert pool.released == []


def test_free_stock_a_vip_line_takes_counts_against_its_override() -> None:
    """Found in review: a line took a free unit and a pledged one; the rest of the released hold stayed set aside
    for the order's next line, which the checker then saw as more units than the override was approved for."""
    pool = stocked(5)
    pool.reserve("jd:1", 1, 4, now_ms=1)
    pledged_for(pool, "own:vip", 3)  # 1 free unit set aside, 2 pledged
    P.adjust(pool.stock, "RECEIPT", "WH-SH", 1, 12)
    assert pool.reserve("own:vip", 1, 3, now_ms=20).reason == "vip_override:v1"  # set-aside, free unit, jd:1's
    assert pool.hold("own:vip", SET_ASIDE_LINE) is None  # the override's 3 units are all the order's now
    assert pool.reserve("own:vip", 2, 1, now_ms=21).reason == ""  # a regular hold of free stock
    assert (pool.stock.locked, pool.stock.available(), pool.stock.pledged) == (4, 2, 0)


def test_pledged_totals_never_go_below_zero() -> None:
    # An older release rewrote the totals without ``pledged``; the set-aside's record kept its pledge.
    pool = stocked(3)
    pool.reserve("jd:a", 1, 3, now_ms=1)
    pledged_for(pool, "own:vip", 3)
    pool.stock.pledged = 0
    pool.due(10**12)
    assert pool.stock.pledged == 0
