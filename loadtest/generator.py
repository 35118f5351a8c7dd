"""The Double-11 traffic schedule: what each channel sends, when. Seeded, so a run repeats exactly.

``build_schedule`` returns every message the run will send with its intended send time; the
sender (``loadtest.run``) sends each on schedule whatever the pipeline does (open loop) and stamps
orders with that intended time, so a slow pipeline shows up as latency, not as a slower generator.

Shape of the traffic:
- orders of 1-5 lines over SKUs with Zipf popularity (a few hot SKUs take 20-30% of demand), from
  six channels with marketplace-like shares;
- the profile's rate curve: ``steady``; ``double11`` - quiet, then a step to the peak within one
  second at "midnight" (10% into the run), decaying towards 40%, with flash-sale bursts;
  ``flash-sale`` - a base rate with short bursts at three times the rate on the hottest SKUs;
- payments after a realistic delay (log-normal, a few seconds here), a share cancelled, a share
  never paid (payment timeout), presale orders (deposit, later the balance);
- stock receipts for hot SKUs during the run;
- refund-only requests for a share of paid orders a few seconds after payment (the Double-11 refund:
  the buyer changes their mind before the parcel leaves), each approved at once and its order
  cancelled;
- about 1% bad input of every class the pipeline must refuse, each recorded so the run can check
  that every one was refused;
- optionally (``hot_share``) a live-stream item: that share of orders are single-line, one unit of
  one SKU (``hot_sku``), so one partition carries that share of the decisions (the hot-SKU ceiling).
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

CHANNEL_SHARES = {"tmall": 0.35, "jd": 0.2, "douyin": 0.2, "pdd": 0.15, "kuaishou": 0.05, "own": 0.05}
LINES = (1, 2, 3, 4, 5)
LINE_WEIGHTS = (0.6, 0.2, 0.1, 0.06, 0.04)
WAREHOUSES = ("WH-SH", "WH-GZ", "WH-BJ", "WH-CD")
BAD_CLASSES = (
    "bad_header", "unknown_fingerprint", "truncated", "invalid_qty", "unknown_channel", "missing_field",
    "unknown_warehouse", "unknown_order", "misrouted_partition", "intake_malformed_json", "intake_unknown_sku",
)  # fmt: skip
INTAKE_BAD = ("intake_malformed_json", "intake_unknown_sku")
# Double-11: "midnight" comes a tenth into the run; before it the rate is a tenth of the peak.
MIDNIGHT = 0.1
BEFORE_MIDNIGHT = 0.1
HOT_PICK_IN_BURST = 0.5  # in a flash-sale burst, the share of lines that go to the hottest SKUs
PRESALE_SHARE = 0.05
# An order's fate, one uniform draw: paid below PAID_BELOW, cancelled below CANCELLED_BELOW, the
# rest never paid.
PAID_BELOW = 0.85
CANCELLED_BELOW = 0.92
REFUND_SHARE = 0.04  # of paid orders: a refund-only request before shipment


def _double11(f: float, burst: Callable[[float], bool]) -> float:
    if f < MIDNIGHT:
        return BEFORE_MIDNIGHT
    return max(0.4, math.exp(-(f - MIDNIGHT) * 2.5)) * (2.0 if burst(f) else 1.0)


PROFILES: dict[str, Callable[[float, Callable[[float], bool]], float]] = {
    "steady": lambda f, burst: 1.0,
    "double11": _double11,
    "flash-sale": lambda f, burst: 3.0 if burst(f) else 0.6,
}


@dataclass(frozen=True)
class Planned:
    at_s: float  # intended send time, seconds after the start
    kind: str  # "order" | "payment" | "balance" | "cancel" | "refund" | "receipt" | "bad"
    order: str = ""  # channel order id
    channel: str = ""
    lines: tuple[tuple[str, int], ...] = ()
    presale: bool = False
    sku: str = ""
    warehouse: str = ""
    qty: int = 0
    bad: str = ""  # the bad-input class
    via_intake: bool = False


@dataclass
class Schedule:
    profile: str
    rate: float
    duration_s: float
    skus: list[str]
    initial_stock: dict[str, dict[str, int]]
    events: list[Planned] = field(default_factory=list)
    # Each SKU's presale pool (a PRESALE_CAP adjustment): without one every presale order is refused, and the
    # run would never take a deposit, its balance or the presale reserve through the pipeline.
    presale_caps: dict[str, int] = field(default_factory=dict)

    @property
    def orders(self) -> int:
        return sum(1 for e in self.events if e.kind == "order")

    @property
    def refunds(self) -> int:
        return sum(1 for e in self.events if e.kind == "refund")

    @property
    def bad_inputs(self) -> int:
        return sum(1 for e in self.events if e.kind == "bad")


class Zipf:
    """SKU popularity: rank r drawn with weight 1 / r^s."""

    def __init__(self, n: int, s: float, rng: random.Random) -> None:
        weights = [1.0 / (r**s) for r in range(1, n + 1)]
        total = sum(weights)
        self.cumulative = []
        acc = 0.0
        for w in weights:
            acc += w / total
            self.cumulative.append(acc)
        self.rng = rng

    def draw(self) -> int:
        return min(bisect.bisect_left(self.cumulative, self.rng.random()), len(self.cumulative) - 1)

    def top_share(self, k: int) -> float:
        return self.cumulative[k - 1]


def hot_sku_name(seed: int) -> str:
    """The hot SKU when none is named: in the intake's sample catalogue (``LOAD-*``), apart from the Zipf ones."""
    return f"LOAD-{seed}-HOT"


def build_schedule(profile: str, rate: float, duration_s: float, seed: int, sku_count: int = 1000,  # noqa: PLR0917
                   bad_share: float = 0.01, hot_sku: str = "", hot_share: float = 0.0) -> Schedule:  # fmt: skip
    """``hot_share`` of the orders are one unit of ``hot_sku`` alone (default ``hot_sku_name(seed)``); the
    other draws are unchanged only when it is 0 (the hot draw takes numbers from the same generator)."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}")
    rng = random.Random(seed)
    skus = [f"LOAD-{seed}-{i:05d}" for i in range(sku_count)]
    zipf = Zipf(sku_count, 0.9, rng)
    hot = skus[:5]
    bursts = [(rng.uniform(0.15, 0.95), rng.uniform(0.02, 0.04)) for _ in range(3)]

    def burst(f: float) -> bool:
        return any(start <= f < start + length for start, length in bursts)

    shape = PROFILES[profile]
    peak = max(shape(i / 1000, burst) for i in range(1000))
    # Stock: roughly what the run will ask for each SKU, so hot SKUs can sell out and get refused.
    expected_orders = rate * duration_s * sum(shape(i / 200, burst) for i in range(200)) / 200
    initial = _initial_stock(skus, zipf, expected_orders, rng)
    sched = Schedule(profile, rate, duration_s, skus, initial, presale_caps=_presale_caps(initial))
    live = _live_stream(sched, hot_sku or hot_sku_name(seed), hot_share, expected_orders)
    channels, shares = zip(*CHANNEL_SHARES.items(), strict=True)
    t, n = 0.0, 0
    # Non-homogeneous Poisson arrivals by thinning against the peak rate.
    while True:
        t += rng.expovariate(rate * peak)
        if t >= duration_s:
            break
        if rng.random() > shape(t / duration_s, burst) / peak:
            continue
        n += 1
        if rng.random() < bad_share:
            bad = BAD_CLASSES[n % len(BAD_CLASSES)]
            sched.events.append(Planned(t, "bad", order=f"bad-{seed}-{n}", channel="jd", bad=bad,
                                        sku=rng.choice(skus), via_intake=bad in INTAKE_BAD))  # fmt: skip
            continue
        channel = rng.choices(channels, shares)[0]
        order = f"{seed}-{n}"
        flash = profile != "steady" and burst(t / duration_s)
        lines = live if live and rng.random() < hot_share else _order_lines(rng, skus, hot, zipf, flash)
        presale = rng.random() < PRESALE_SHARE
        intake = channel == "own"  # the own shop posts to stockflow intake; marketplaces' connectors write Avro
        sched.events.append(Planned(t, "order", order, channel, lines, presale, via_intake=intake))
        fate = rng.random()
        delay = min(rng.lognormvariate(0.3, 0.8), 20.0)
        if fate < PAID_BELOW:
            # A payment carries its order's lines and kind: what it pays is the order's price (a presale: its deposit).
            sched.events.append(Planned(t + delay, "payment", order, channel, lines, presale, via_intake=intake))
            if presale:
                sched.events.append(Planned(t + delay + rng.uniform(2, 8), "balance", order, channel, lines, presale))
            elif rng.random() < REFUND_SHARE:
                sched.events.append(Planned(t + delay + rng.uniform(1, 5), "refund", order, channel, lines))
        elif fate < CANCELLED_BELOW:
            sched.events.append(Planned(t + delay, "cancel", order, channel, via_intake=intake))
        # else: never paid - the payment timeout releases its holds
    receipts = int(duration_s)
    for i in range(receipts):
        sku = hot[i % len(hot)]
        sched.events.append(Planned(i + 0.5, "receipt", sku=sku, warehouse=rng.choice(WAREHOUSES), qty=20,
                                    order=f"rcpt-{seed}-{i}"))  # fmt: skip
    sched.events.sort(key=lambda e: e.at_s)
    return sched


def _live_stream(sched: Schedule, sku: str, share: float, expected_orders: float) -> tuple[tuple[str, int], ...]:
    """The lines of a live-stream item's order (none when ``share`` is 0), its SKU stocked in ``sched``."""
    if not 0.0 <= share <= 1.0:
        raise ValueError("hot_share must be between 0 and 1")
    if share == 0:
        return ()
    if sku not in sched.initial_stock:
        # About what its orders ask for: it sells out near the end, as a live-stream item does; a refusal
        # is a decision too, so the ceiling is measured either way.
        sched.skus = [*sched.skus, sku]  # a new list: the one the run draws the other orders' lines from stays
        sched.initial_stock[sku] = {WAREHOUSES[0]: max(40, int(expected_orders * share))}
    return ((sku, 1),)


def _presale_caps(initial: dict[str, dict[str, int]]) -> dict[str, int]:
    """About twice what the presale share of each SKU's stock asks for: most presale orders are held, and a
    hot SKU's presale pool still runs out and refuses some (``insufficient_presale_stock``)."""
    return {sku: max(4, round(sum(by_wh.values()) * PRESALE_SHARE * 2)) for sku, by_wh in initial.items()}


def _initial_stock(skus: list[str], zipf: Zipf, expected_orders: float,
                   rng: random.Random) -> dict[str, dict[str, int]]:  # fmt: skip
    """Stock per SKU and warehouse: about what the run will ask of each SKU, over one to three warehouses."""
    initial: dict[str, dict[str, int]] = {}
    for rank, sku in enumerate(skus):
        demand = expected_orders * 1.8 * (zipf.cumulative[rank] - (zipf.cumulative[rank - 1] if rank else 0))
        # Above the default safety threshold (10) with room to sell: the long tail stays sellable
        # on every channel; the hot SKUs run out and show the pause and the refusals.
        units = max(40, int(demand * rng.uniform(0.6, 1.3)))
        split = rng.sample(WAREHOUSES, rng.randint(1, 3))
        initial[sku] = {wh: max(1, units // len(split)) for wh in split}
    return initial


def _order_lines(rng: random.Random, skus: list[str], hot: list[str], zipf: Zipf,
                 flash: bool) -> tuple[tuple[str, int], ...]:  # fmt: skip
    """One order's (SKU, qty) lines: distinct SKUs by popularity, the hottest ones more often in a burst."""
    count = rng.choices(LINES, LINE_WEIGHTS)[0]
    chosen: list[str] = []
    while len(chosen) < count:
        sku = rng.choice(hot) if flash and rng.random() < HOT_PICK_IN_BURST else skus[zipf.draw()]
        if sku not in chosen:
            chosen.append(sku)
    return tuple((sku, rng.choices((1, 2, 3), (0.8, 0.15, 0.05))[0]) for sku in chosen)


def describe(sched: Schedule) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for e in sched.events:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    return {"profile": sched.profile, "rate": sched.rate, "duration_s": sched.duration_s, "orders": sched.orders,
            "by_kind": kinds, "skus": len(sched.skus)}  # fmt: skip
