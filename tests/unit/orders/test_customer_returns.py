"""The customers' returns the health score counts, from synthetic ``RefundStateChanged`` records: what counts,
once; per channel; the window; the memory bounds; records written before refunds carried the customer."""

from __future__ import annotations

from typing import Any

from agents.orders.customer_returns import CustomerReturns
from streams.contract.codec import default_codec
from streams.contract.registry import SCHEMA_DIR

DAY = 86_400_000
NOW = 1_794_326_400_000


def state(refund_id: str, customer_id: str = "buyer-1", *, state: str = "completed", kind: str = "RETURN_AND_REFUND",
          channel: str = "jd", completed_ms: int = NOW - DAY) -> dict[str, Any]:  # fmt: skip
    times = {"requested": completed_ms - 3 * DAY, "refunding": completed_ms - 2 * DAY}
    if state == "completed":
        times["completed"] = completed_ms
    return {"event_id": f"{channel}:{refund_id}:{state}", "event_time_ms": times.get(state, completed_ms - DAY),
            "refund_id": f"{channel}:{refund_id}", "order_id": f"{channel}:o-{refund_id}", "channel": channel,
            "kind": kind, "state": state, "previous_state": "refunding", "reason": "settled", "amount_fen": 9_900,
            "auto_approved": True, "warehouse_id": "", "stage_times": times, "customer_id": customer_id}  # fmt: skip


def view(**bounds: int) -> CustomerReturns:
    return CustomerReturns(window_ms=bounds.get("window_days", 180) * DAY,
                           max_customers=bounds.get("max_customers", 1000),
                           max_per_customer=bounds.get("max_per_customer", 16))  # fmt: skip


def test_completed_returns_count_once_each() -> None:
    v = view()
    assert v.apply(state("r1")) and v.apply(state("r2"))
    assert not v.apply(state("r1"))  # the same refund read again (compaction keeps it; a rewind)
    assert v.count("jd", "buyer-1", NOW) == 2
    assert v.count("jd", "buyer-2", NOW) == 0 and v.count("jd", "", NOW) == 0


def test_only_completed_return_and_refunds_of_a_known_customer_count() -> None:
    v = view()
    for not_counted in (
        state("r1", state="refunding"),  # paid out, not settled yet
        state("r2", state="rejected"),
        state("r3", state="cancelled"),
        state("r4", kind="REFUND_ONLY"),  # the order called off, or compensation: not a return
        state("r5", customer_id=""),  # a refund whose order was already purged
    ):
        assert not v.apply(not_counted)
    assert v.count("jd", "buyer-1", NOW) == 0 and len(v) == 0


def test_a_customer_is_a_customer_of_one_channel() -> None:
    v = view()
    v.apply(state("r1", channel="jd"))
    v.apply(state("r2", channel="tmall"))
    v.apply(state("r3", channel="tmall"))
    assert (v.count("jd", "buyer-1", NOW), v.count("tmall", "buyer-1", NOW), v.count("pdd", "buyer-1", NOW)) == (
        1,
        2,
        0,
    )


def test_returns_older_than_the_window_no_longer_count() -> None:
    v = view(window_days=180)
    v.apply(state("old", completed_ms=NOW - 181 * DAY))
    v.apply(state("edge", completed_ms=NOW - 180 * DAY))  # exactly at the window's start: counts
    v.apply(state("new", completed_ms=NOW - DAY))
    assert v.count("jd", "buyer-1", NOW) == 2
    assert v.count("jd", "buyer-1", NOW + DAY) == 1  # a day later the edge one has left the window


def test_a_refund_without_a_completion_time_counts_from_its_event_time() -> None:
    v = view()
    record = state("r1")
    record["stage_times"] = {}
    record["event_time_ms"] = NOW - 2 * DAY
    assert v.apply(record) and v.count("jd", "buyer-1", NOW) == 1


def test_the_least_recently_used_customer_is_forgotten_first() -> None:
    v = view(max_customers=2)
    v.apply(state("r1", "a"))
    v.apply(state("r2", "b"))
    assert v.count("jd", "a", NOW) == 1  # looked up: now the most recently used
    v.apply(state("r3", "c"))  # over the cap: b goes, not a
    assert (v.count("jd", "a", NOW), v.count("jd", "b", NOW), v.count("jd", "c", NOW)) == (1, 0, 1)
    assert len(v) == 2 and v.evicted == 1


def test_a_customer_keeps_only_the_newest_returns() -> None:
    v = view(max_per_customer=3)
    for n in range(5):
        v.apply(state(f"r{n}", completed_ms=NOW - (10 - n) * DAY))  # r4 the newest
    assert v.count("jd", "buyer-1", NOW) == 3
    assert v.count("jd", "buyer-1", NOW + (180 - 7) * DAY) == 2  # r2 (10 - 2 = 8 days before NOW) has left


def test_a_refund_state_written_before_refunds_carried_the_customer_reads_and_counts_nothing() -> None:
    codec = default_codec()
    record = state("r1")
    del record["customer_id"]
    old = codec.encode_with(SCHEMA_DIR / "history" / "refund_state_changed.v1.avsc", record)
    event_type, back = codec.decode(old)
    assert event_type.short_name == "RefundStateChanged" and back["customer_id"] == ""
    v = view()
    assert not v.apply(back) and v.count("jd", "", NOW) == 0
    # The current version carries it.
    _, current = codec.decode(codec.encode("RefundStateChanged", state("r1")))
    assert current["customer_id"] == "buyer-1" and v.apply(current)
