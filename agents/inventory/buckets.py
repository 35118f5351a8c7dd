"""A hot SKU's stock buckets: pure rules, no Kafka.

One SKU is one key on one partition, so one worker decides all of its orders. A SKU marked hot with K
buckets keeps its *home* record (the SKU's own key) and hands its free units to K *bucket* records,
keys ``<sku>#0`` .. ``<sku>#K-1``, which land on other partitions: each bucket is an ordinary pool
record (``SkuStock`` and ``LineHold``s) and decides the order lines routed to it with the pool's own
rules, so K workers sell the SKU at once.

- Units only move as a TRANSFER: the sender debits itself and the credit travels in the same Kafka
  transaction (``stock.buckets``), credited once per transfer id, so no unit is made or lost.
- A RESERVE goes to bucket ``bucket_for(order id)``; a bucket that cannot fill it passes it to the next
  bucket (``next_hop``) and leaves a FORWARDED marker, so the line's later commands (and a duplicate
  RESERVE) follow the same path; after all K: refused, with the pool's usual reason.
- Sold out: once no unit of the SKU is free anywhere (the home's own, every bucket's last figures, none in
  transit: ``sku_sold_out``), the home tells every bucket (``sold_out_news``: a CONFIG; from then on every
  message from the home carries the state ``sold_out``, ``told_state``), and a bucket that cannot fill a
  line refuses it at once, with the pool's usual reason and no marker (``refuses_unfilled``): in a flash
  sale nearly every order is refused, and each then costs one bucket's work instead of K. A bucket whose
  last free unit goes reports at once rather than at its next report (``ran_dry``), so the home knows as
  soon as the last bucket is dry. The flag is lifted as soon as a unit is free again: at the home in the
  same transaction (a receipt, a correction, units sent home; a TRANSFER never says sold out); in a
  bucket (a release, an expiry, or a word from the home older than the bucket's own figures) by the
  bucket, which reports at once and stops believing it (``found_units``). So a bucket that believes the
  SKU sold out has no free unit of its own, and a freed unit waits while other buckets refuse for no
  longer than one report's trip to the home and the CONFIG's back, sooner than the bucket's next regular
  report (at most a refresh interval away) would have told the home.
- Buckets report their figures to the home (``figures``); the home alone publishes the SKU's level,
  from its own record plus the reports plus what is in transit (``aggregate``): one number per SKU.
- Rebalancing goes through the home: a bucket below the low-water mark makes the home ask the richer
  ones for their surplus (REBALANCE), which it hands to the poorest (``distribute``). When the buckets
  together hold no more than ``low_water`` per bucket, they gather everything into one bucket, so the
  last units are never stranded in pieces too small for a line.
- Stock arrives at the home: receipts are handed out at once. An absolute COUNT (and a negative
  CORRECTION) is settled like a snapshot: the home stops handing out units, asks each bucket to send
  home that warehouse's free units and say what is left (PROBE / COUNTED; every channel between home
  and a bucket is in order), then applies the difference once every bucket answered (``finish_settle``).
  A loss takes first the units buckets keep there behind lines not tied to a warehouse: the home takes
  them off those buckets, with units of its other warehouses in their place where it has them
  (``relabel_phantoms``), and keeps back what a bucket's lines are left short of (``bucket_short``). Such a
  bucket ties no line there, and gives none of its units there away, until the home says the count is
  settled (``on_settled``; ``rules.awaits_count``), or ``PROBE_HOLD_MS`` passed. From its answer until the
  count is settled, every bucket also keeps back the most the count can take from the SKU (``loss_bound``,
  as a ``DEBT``: a correction's amount, a count's every unit), so none sells a unit the count did not find
  while a slower bucket's answer is on its way.
- What the SKU as a whole lacks once settled (or after a shipment from a warehouse with no units) is a debt
  asked of every bucket at once (``rebalance``): each keeps it back and sends it home as units free up.
- Un-marking merges: the buckets stop taking new lines, send every free unit home, finish their open
  lines, and report empty; when all did, the SKU is cold.
- A paid line is allocated where it is held, but routing chooses its warehouse from the SKU's whole stock, so
  the record holding it may have fewer of that warehouse's units than the line (a bucket's share, or the
  units a home kept behind its own lines). That record exchanges units for them (``want``): transfers that
  carry the line (``ref``), the warehouse and how many it lacks go from it to the home, from bucket to bucket
  in turn through the home (``swap_at_home``, ``swap_ask``), and back; each record on the way gives the
  warehouse's free units one for one for the units offered, and the line is allocated when they arrive
  (``swap_arrived``), or refused if no record had them. Units only move as transfers, so nothing is made or
  lost; no record on the way changes its totals, and the units the asking record offered (the ones behind
  the line) count as its own while they travel (``lent``: in its available and its figures, not in the home's
  units in transit), so every line stays backed. A record whose own line waits for a warehouse gives its units
  of it only to an exchange that comes first (``spares``), and an exchange asks again at most once
  (``MAX_ASKS``): two lines waiting for the same units end with answers instead of trading them for ever.

Every function takes the records and returns the messages to send (``Sync``); the processor turns them
into ``BucketSync`` records and stores the changed records in the same batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from agents.inventory.rules import (
    MOST_SOLD,
    Answer,
    Buckets,
    LineHold,
    SkuStock,
    Step,
    allocate,
    awaits_count,
    counted,
    moved_since,
    note_shelf_move,
    taken_after,
)
from streams.contract.keys import bucket_for, bucket_key
from streams.contract.reasons import Reason

__all__ = ["bucket_for", "bucket_key"]  # the contract's, here beside the rules that use them

HOME = -1
MAX_BUCKETS = 64
# Longest a bucket keeps a counted warehouse's units behind untied lines from being tied or exchanged, waiting for the
# home's word that the count is settled: the slowest bucket's answer and the word back (seconds, even with a flash
# sale's backlog), unless the home runs a release that does not send it (a rolling deploy). Past it, the bucket goes
# on as before this wait was kept: a line it ties there then may be left on units the count did not find, so the
# wait is long enough that only a partition minutes behind, or an older home, ends it.
PROBE_HOLD_MS = 300_000
SETTLED = "settled:"  # the ref prefix of a home's word to a bucket that a count it answered is settled
LACK = "lack"  # the ref of a transfer of units a bucket's lines lack (``distribute``): kept for them (``for_lack``)
LACK_LIFTED = "lack-lifted"  # the ref of a home's word that the SKU owes nothing: units kept for a lack are free
# The ref of a home's REBALANCE for units the SKU as a whole lacks (``owed``), or that no bucket had free when asked:
# every bucket sends home that many of its free units, and of the units its lines free later (``pay_debt``), selling
# none of them, until the home has them (``DEBT_LIFTED``). A bucket selling them meanwhile would sell units the SKU
# as a whole no longer has.
DEBT, DEBT_LIFTED = "debt", "debt-lifted"
WHOLE = 1 << 30  # a debt of every unit a bucket has or frees (``loss_bound``): it sells none until the debt is lifted
MIN_BUCKETS = 2  # fewer is no split: the SKU is decided at its home
HOT, MERGING, COLD = "hot", "merging", ""
SOLD_OUT = "sold_out"  # only as the home's word to a bucket: hot, and no unit of the SKU is free anywhere
TRANSFER, REPORT, CONFIG, REBALANCE, PROBE, COUNTED = "TRANSFER", "REPORT", "CONFIG", "REBALANCE", "PROBE", "COUNTED"


@dataclass(frozen=True)
class Sync:
    """One message from a home or bucket record to another record of the same SKU."""

    kind: str
    to_bucket: int
    units: dict[str, int] = field(default_factory=dict)
    qty: int = 0
    warehouse_id: str = ""
    ref: str = ""
    as_of_ms: int = 0  # PROBE: when the count was taken
    skew_ms: int = 0  # PROBE: how far the warehouse's clock may run ahead
    allocated: dict[str, int] = field(default_factory=dict)  # COUNTED: the warehouse's units tied to lines


def home_sku(key: str, bucket: int) -> str:
    return key if bucket < 0 else key.rpartition("#")[0]


def next_hop(bucket: int, tries: int, count: int) -> int | None:
    """Where a RESERVE a bucket cannot fill goes next; None: every bucket has tried."""
    if tries + 1 >= count:
        return None
    return (bucket + 1) % count


def total(units: dict[str, int]) -> int:
    return sum(units.values())


def _unallocated(stock: SkuStock) -> dict[str, int]:
    free = {}
    for wh, qty in stock.on_hand.items():
        left = max(0, qty) - stock.allocated.get(wh, 0)
        if left > 0:
            free[wh] = left
    return free


def _backing(stock: SkuStock) -> int:
    """Units ``stock`` keeps behind its open lines not tied to a warehouse. Lent units are behind such lines,
    and are not here: the lines they back need no more."""
    return stock.locked + stock.presale_reserved - sum(stock.allocated.values()) - stock.lent()


def movable(stock: SkuStock, owed: int = 0) -> dict[str, int]:
    """Units per warehouse that may leave ``stock`` with every open line still backed: a line tied to a
    warehouse by its own warehouse's units, the other lines by any (the fullest warehouses keep them);
    ``owed`` more units are kept back too."""
    free = _unallocated(stock)
    keep = _backing(stock) + owed
    for wh in sorted(free, key=lambda w: (-free[w], w)):
        if keep <= 0:
            break
        kept = min(keep, free[wh])
        free[wh] -= kept
        keep -= kept
    return {wh: q for wh, q in sorted(free.items()) if q > 0}


def take(stock: SkuStock, units: dict[str, int]) -> None:
    for wh, qty in units.items():
        stock.on_hand[wh] = stock.on_hand.get(wh, 0) - qty


def give(stock: SkuStock, units: dict[str, int]) -> None:
    for wh, qty in units.items():
        stock.on_hand[wh] = stock.on_hand.get(wh, 0) + qty


def apportion(units: dict[str, int], amounts: list[int]) -> list[dict[str, int]]:
    """Cut ``units`` (per warehouse) into parts of ``amounts`` units, each part drawing on every warehouse
    in proportion to what is left (so every bucket can serve every warehouse routing may choose)."""
    left = {wh: q for wh, q in sorted(units.items()) if q > 0}
    parts = []
    for amount in amounts:
        remaining = sum(left.values())
        amount = min(amount, remaining)
        part: dict[str, int] = {}
        if amount > 0:
            for wh, qty in left.items():
                share = amount * qty // remaining
                if share:
                    part[wh] = share
            short = amount - total(part)
            for wh in sorted(left, key=lambda w: (part.get(w, 0) - left[w], w)):
                if short <= 0:
                    break
                extra = min(short, left[wh] - part.get(wh, 0))
                if extra > 0:
                    part[wh] = part.get(wh, 0) + extra
                    short -= extra
            for wh, qty in part.items():
                left[wh] -= qty
        parts.append(part)
    return parts


def water_fill(free: int, levels: list[int]) -> list[int]:
    """How many of ``free`` units each bucket gets so the lowest ``levels`` rise first, as evenly as can be."""
    count = len(levels)
    order = sorted(range(count), key=lambda k: (max(0, levels[k]), k))
    vals = [max(0, levels[k]) for k in order]
    level, n = vals[0], 1
    while n < count and (vals[n] - level) * n <= free:
        free -= (vals[n] - level) * n
        level, n = vals[n], n + 1
    level += free // n
    extra = free % n
    amounts = [0] * count
    for j in range(n):
        amounts[order[j]] = level + (1 if j < extra else 0) - vals[j]
    return amounts


# ---- the home -------------------------------------------------------------------------------------


def reported_available(hot: Buckets) -> list[int]:
    """Each bucket's available units as it last reported them, plus what is on its way to it."""
    levels = [int(hot.reports.get(str(k), {}).get("available", 0)) for k in range(hot.count)]
    for _, bucket, units in hot.in_flight:
        if 0 <= bucket < hot.count:
            levels[bucket] += total(units)
    return levels


def gathering(levels: list[int], low_water: int) -> bool:
    """So few units left that they belong in one bucket: a line then finds them all in one place."""
    return len(levels) > 1 and sum(levels) <= len(levels) * low_water


def distribute(home: SkuStock, low_water: int) -> list[Sync]:
    """Hand the home's free units to its buckets: first what a bucket left short by a count lacks (the home kept
    them back for it: ``owed``), then the rest to the poorest first, or all to the richest when gathering.
    Not while a count is being settled (the buckets' figures are being taken)."""
    hot = home.hot
    if hot is None or hot.state != HOT or hot.settles or hot.count < 1:
        return []
    # Units a VIP override pledged stay home too: the home decides the VIP order's lines (its set-aside is there).
    kept = owed(home) + home.pledged
    out: list[Sync] = lifts(home)

    def hand(buckets: list[int], parts: list[dict[str, int]], ref: str = "") -> None:
        for bucket, part in zip(buckets, parts, strict=True):
            if part:
                take(home, part)
                out.append(Sync(TRANSFER, bucket, part, ref=ref))

    shorts = {k: lack for k in hot.short if 0 <= k < hot.count and (lack := bucket_short(hot, k)) > 0}
    if shorts:
        # A short bucket's paid lines can be tied to a warehouse only with units there: kept at the home, they would
        # be sold to no one, and those lines refused wherever routing sends them. They go before what the home keeps
        # for a warehouse below zero, marked as a lack: a bucket that sold them as its lines end would sell units
        # the SKU as a whole is short of, where a cold SKU's ended line frees nothing.
        kept -= sum(shorts.values())
        hand(list(shorts), apportion(movable(home), list(shorts.values())), LACK)
        hot.lacked = sorted({*hot.lacked, *(sync.to_bucket for sync in out if sync.ref == LACK)})
    free = movable(home, owed=kept)
    units = total(free)
    if units <= 0:
        return out
    levels = reported_available(hot)
    for sync in out:
        if sync.kind == TRANSFER:
            levels[sync.to_bucket] += total(sync.units)
    if hot.count > 1 and sum(levels) + units <= hot.count * low_water:
        target = max(range(hot.count), key=lambda k: (levels[k], -k))
        amounts = [units if k == target else 0 for k in range(hot.count)]
    else:
        amounts = water_fill(units, levels)
    hand(list(range(hot.count)), apportion(free, amounts))
    return out


def mark(home: SkuStock, count: int, low_water: int) -> list[Sync]:
    """Split the SKU into ``count`` buckets (2 or more), or merge them back (fewer). A different K while hot
    merges first and splits again once the merge is done."""
    if count < MIN_BUCKETS:
        return unmark(home)
    hot = home.hot = home.hot or Buckets()
    if hot.state == HOT and hot.count == count:
        hot.next_count = 0
        return []
    if hot.state != COLD:
        hot.next_count = count
        return unmark(home, keep_next=True) if hot.state == HOT else []
    hot.state, hot.count, hot.reports, hot.merged, hot.next_count = HOT, count, {}, [], 0
    return [Sync(CONFIG, b) for b in range(count)] + distribute(home, low_water)


def unmark(home: SkuStock, keep_next: bool = False) -> list[Sync]:
    """Stop the buckets taking new lines; they send their free units home and finish their open lines."""
    hot = home.hot
    if hot is None:
        return []
    if not keep_next:
        hot.next_count = 0
    if hot.state != HOT:
        return []
    hot.state, hot.merged = MERGING, []
    return [Sync(CONFIG, b) for b in range(hot.count)]


def short_as_a_whole(home: SkuStock, qty: int) -> bool:
    """Whether a line the home of a split SKU decides (its buckets merging, or a VIP set-aside open) would take
    units the SKU as a whole lacks: a bucket's lines may hold more than its units (a count, a shipment), which the
    SKU's figure shows and the home's own does not, while the units the home keeps back for them look free. Units
    out on an exchange are left out: a bucket's last report may count them while they are already home."""
    hot = home.hot
    if hot is None or hot.bucket >= 0 or hot.state == COLD:
        return False
    whole = aggregate(home)
    return whole.available() - whole.lent() < qty


def taking_reservations(home: SkuStock) -> int:
    """K while the buckets take new lines; 0 when the home decides them (cold, or merging)."""
    hot = home.hot
    return hot.count if hot is not None and hot.state == HOT else 0


def on_report(home: SkuStock, bucket: int, figures: dict[str, Any], low_water: int) -> list[Sync]:
    """A bucket's figures. While merging, a bucket that reports empty is done; when all are, the SKU is cold
    (and split again if a new K is waiting)."""
    hot = home.hot
    if hot is None or not 0 <= bucket < hot.count:
        return []
    if int(figures.get("seq", 0)) >= int(hot.reports.get(str(bucket), {}).get("seq", -1)):
        hot.reports[str(bucket)] = figures
    acked = int(figures.get("acked", 0))
    hot.in_flight = [f for f in hot.in_flight if f[1] != bucket or f[0] > acked]
    _note_short(hot, bucket)
    lifted = lifts(home)
    if lifted:
        return lifted
    if hot.state != MERGING or not empty(figures) or bucket in hot.merged:
        return []
    if any(f[1] == bucket for f in hot.in_flight):
        return []  # a report older than a transfer to the bucket: it will hold those units when it gets it
    hot.merged.append(bucket)
    # The bucket goes, its shipment journal with it: a count taken before now could not have them put back.
    for wh in {*home.on_hand, *figures.get("on_hand", {})}:
        home.moves_from[wh] = max(home.moves_from.get(wh, 0), home.touched_ms)
    if len(hot.merged) < hot.count:
        return []
    hot.state, hot.count, hot.reports, hot.merged, hot.in_flight, hot.short = COLD, 0, {}, [], [], []
    hot.indebted, hot.debt_asked, hot.lacked = [], 0, []  # those buckets are gone, and what they kept back with them
    for settle in hot.settles:
        settle.pop("untied", None)  # those buckets are gone: a next split's of the same numbers kept none of it
    if hot.next_count >= MIN_BUCKETS:
        return mark(home, hot.next_count, low_water)
    if not hot.setting and not hot.settles:
        home.hot = None  # a cold SKU's record is as small as it always was
    return []


def _note_short(hot: Buckets, bucket: int) -> None:
    """Whether a bucket's lines hold units it lacks (a count took them, or a line let go shipped off units behind
    another): as many stay home (``owed``) and go to it first (``distribute``) while it does."""
    if bucket in hot.short and not bucket_short(hot, bucket):
        hot.short.remove(bucket)
    elif hot.state == HOT and bucket not in hot.short and bucket_short(hot, bucket):
        hot.short.append(bucket)


def lifts(home: SkuStock) -> list[Sync]:
    """The home's word to buckets that what they keep back for it is theirs again: a debt, once the home has what it
    lacks; units kept for a lack, once nothing is short anywhere (which of its units left with the lines that
    shipped, a bucket cannot tell)."""
    hot = home.hot
    if hot is None or hot.state != HOT:
        return []
    out = []
    if hot.indebted and not home_short(home) and not hot.settles:  # a count's loss is owed once it is settled
        out += [Sync(CONFIG, k, ref=DEBT_LIFTED) for k in hot.indebted]
        hot.indebted, hot.debt_asked = [], 0
    if hot.lacked and not owed(home):
        out += [Sync(CONFIG, k, ref=LACK_LIFTED) for k in hot.lacked]
        hot.lacked = []
    return out


def owed(home: SkuStock) -> int:
    """Units a hot SKU's home owes for its warehouses below zero: as many as its buckets hold there. A count
    found fewer units there than the buckets keep, or a shipment no line held was taken off the home's empty
    shelf: the SKU's figure in that warehouse is the sum, so the buckets' units there are partly not there,
    and as many units must stay home (or come back) as a cold SKU's on-hand would be short. A warehouse below
    zero with nothing out in the buckets owes nothing: like a cold SKU's, it hides no other warehouse's stock.

    Units out on an exchange (``lent``) are known here by number only: any of them may be of that warehouse (one
    that came back to a bucket that has not reported since), so they count as if they were, until reported."""
    if home.hot is None:
        return 0
    below = {wh: -qty for wh, qty in home.on_hand.items() if qty < 0}
    short = sum(bucket_short(home.hot, k) for k in home.hot.short)
    if not below:
        return short
    whole = aggregate(home)  # the home's figure plus the buckets' (reported and in transit)
    travelling = whole.lent()
    return short + sum(min(debt, max(0, whole.on_hand.get(wh, 0) + travelling + debt)) for wh, debt in below.items())


def bucket_short(hot: Buckets, bucket: int) -> int:
    """Units a bucket's open lines hold beyond the units it has, by its last figures and what was sent it since:
    none, but after a count took units from behind lines not yet tied (``relabel_phantoms``). Every other record's
    free units are that many fewer in truth, so the home keeps them back (``owed``) rather than let them be sold."""
    fig = hot.reports.get(str(bucket))
    if fig is None:
        return 0
    on_hand = dict(fig.get("on_hand", {}))
    for _, to, units in hot.in_flight:
        if to == bucket:
            for wh, qty in units.items():
                on_hand[wh] = on_hand.get(wh, 0) + qty
    has = sum(q for q in on_hand.values() if q > 0) + int(fig.get("lent", 0))
    return max(0, int(fig.get("locked", 0)) + int(fig.get("presale_reserved", 0)) - has)


def home_short(home: SkuStock) -> int:
    """Units the home's own open lines, and what it ``owed``, claim beyond the free units it has: presale lines
    above all. They are decided at the home, and the pool's rule (available = on_hand - locked -
    presale_reserved) keeps on-hand units back for them, which while hot are out in the buckets."""
    return max(0, _backing(home) + owed(home) - total(_unallocated(home)))


def outstanding_debt(home: SkuStock) -> None:
    """What the home asked its buckets for as a debt and no longer lacks came home: not outstanding. Units that came
    home may go out again (behind a short bucket's lines, ``relabel_phantoms``), and a debt that then grows is asked
    for anew, not taken as asked already. Called after every change at the home."""
    hot = home.hot
    if hot is not None and hot.debt_asked > 0:
        hot.debt_asked = min(hot.debt_asked, home_short(home))


def rebalance(home: SkuStock, now_ms: int, low_water: int, interval_ms: int) -> list[Sync]:
    """Ask the buckets for units home when the home's own lines are short of them (``home_short``); else ask the
    richer buckets for their surplus when one runs low (or all of it, when gathering). At most once per
    ``interval_ms``: figures reported meanwhile do not yet show the last round.

    A presale line the home held counts against the SKU's whole on-hand, so the buckets give their free units
    up to it: the ones they sold before the ask reached them were sold first, as a cold SKU's would be had
    those orders come first (a presale hold depends on its cap alone). Units a bucket frees later go home at
    its next report, as long as the home is short."""
    hot = home.hot
    if hot is None or hot.state != HOT or hot.settles or hot.count < MIN_BUCKETS:
        return []
    short = home_short(home)
    # What the SKU as a whole lacks (a count, a correction or a shipment took it) is a debt of every bucket at once:
    # asked of the one whose last figures looked richest, the others sold their free units until its answer came,
    # and it may have had none left to pay. Every bucket keeps the debt back from what it sells and sends it home as
    # units free up; more may come home than lacked, and go out again once the home has it (``lifts``). Asked again
    # only for what it grew by, at once, whatever the interval: the SKU as a whole has no unit to spare meanwhile.
    debt = min(short, owed(home)) if short > 0 else 0
    if now_ms - hot.rebalanced_ms < interval_ms:
        if debt <= hot.debt_asked:
            return []
        short = debt
    levels = reported_available(hot)
    units = sum(levels)
    if max(levels) <= 0 and short <= 0:  # a bucket short of units (``bucket_short``) may take the sum to 0 or below
        return []
    debts: list[int] = []
    if short > 0:
        asks = []
        claimed = short - debt  # the home's own lines' (presale): asked of the richest buckets
        for k in sorted(range(hot.count), key=lambda k: (-levels[k], k)):
            if claimed <= 0 or levels[k] <= 0:
                break
            asks.append((k, min(claimed, levels[k])))
            claimed -= asks[-1][1]
        short = debt + claimed  # and what no bucket had free when asked: a debt too
        if short > hot.debt_asked:  # asked for already: the buckets keep it back until it is lifted
            debts = [k for k in range(hot.count) if k not in hot.merged]
            hot.indebted = sorted({*hot.indebted, *debts})
            short, hot.debt_asked = short - hot.debt_asked, short  # each bucket is asked for what it grew by
    elif gathering(levels, low_water):
        target = max(range(hot.count), key=lambda k: (levels[k], -k))
        asks = [(k, levels[k]) for k in range(hot.count) if k != target and levels[k] > 0]
    elif min(levels) < low_water and max(levels) - min(levels) > 1:
        mean = units // hot.count
        asks = [(k, levels[k] - mean) for k in range(hot.count) if levels[k] > mean]
    else:
        asks = []
    if asks or debts:
        hot.rebalanced_ms = now_ms
    return [Sync(REBALANCE, k, qty=qty) for k, qty in asks] + [Sync(REBALANCE, k, qty=short, ref=DEBT) for k in debts]


def credit(home: SkuStock, bucket: int, units: dict[str, int]) -> None:
    """Units a bucket sent home; a count waiting for that bucket's answer counts them as the bucket's."""
    give(home, units)
    hot = home.hot
    for settle in hot.settles if hot is not None else ():
        if bucket in settle["waiting"] and str(bucket) not in settle["got"] and settle["wh"] in units:
            pre = settle["pre"]
            pre[str(bucket)] = pre.get(str(bucket), 0) + units[settle["wh"]]


def buckets_kept_from(home: SkuStock) -> int:
    """The latest moment from which some bucket, at its last report, still kept its shipments: a count taken
    before it could not have them all put back."""
    hot = home.hot
    if hot is None or hot.state == COLD:
        return 0
    return max((int(fig.get("kept_from", 0)) for fig in hot.reports.values()), default=0)


def needs_settle(home: SkuStock, kind: str, qty: int) -> bool:
    """An adjustment the home cannot apply alone: an absolute count, or a correction that takes units away,
    while buckets hold some of the SKU's units."""
    hot = home.hot
    if hot is None or hot.state == COLD:
        return False
    return kind == "COUNT" or (kind == "CORRECTION" and qty < 0)


def start_settle(home: SkuStock, kind: str, warehouse_id: str, qty: int, ref: str, dated_ms: int,
                 skew_ms: int = 0) -> list[Sync]:  # fmt: skip
    """Begin a count (or negative correction) of ``warehouse_id``: snapshot the home, probe every bucket.

    A count stands as of when it was taken: the home takes its own shelf movements since out of its snapshot
    (``rules.moved_since``), and each bucket its shipments since out of its answer (``on_probe``)."""
    hot = home.hot
    assert hot is not None
    waiting = [b for b in range(hot.count) if b not in hot.merged]
    base = home.on_hand.get(warehouse_id, 0)
    if kind == "COUNT":
        base -= moved_since(home, warehouse_id, dated_ms, skew_ms)
        counted(home, warehouse_id, dated_ms, skew_ms)
    hot.settles.append({"ref": ref, "kind": kind, "wh": warehouse_id, "qty": qty, "base": base, "waiting": waiting,
                        "got": {}, "pre": {}, "dated": dated_ms, "skew": skew_ms,
                        "in_force": home.counted_ms.get(warehouse_id, -1)})  # fmt: skip
    as_of_ms = dated_ms if kind == "COUNT" else 0
    keep = loss_bound(kind, qty)
    if keep > 0:  # kept back until settled (``lifts``); then the home asks for what the SKU really lacks
        hot.indebted = sorted({*hot.indebted, *waiting})
    return [Sync(PROBE, b, qty=keep, warehouse_id=warehouse_id, ref=ref, as_of_ms=as_of_ms, skew_ms=skew_ms)
            for b in waiting]  # fmt: skip


def loss_bound(kind: str, qty: int) -> int:
    """The most free units a count (or a negative correction) being settled can take from the SKU as a whole: every
    bucket keeps that many back from what it sells from its answer until the home has settled it and asked for what
    the SKU really lacks (a debt, ``DEBT``). Without it, a bucket that answered sold units the count had not found
    while the slowest bucket's answer was on its way. A correction takes its own amount. A count has no bound the
    home knows: a bucket's shipments after the count was taken go back into what it counts as there then (the home
    sees them only as units gone from the bucket's figures), so every bucket keeps back all it has until settled."""
    return max(0, -qty) if kind != "COUNT" else WHOLE


def on_counted(home: SkuStock, bucket: int, ref: str, remaining: int, low_water: int,
               left: dict[str, int] | None = None, tied: dict[str, int] | None = None) -> list[Sync]:  # fmt: skip
    """A bucket's answer to a probe; the last one settles the count, and the home hands out units again.

    ``left`` and ``tied``: the warehouse's units the bucket kept and how many of them are tied to lines; the rest
    back its untied lines, and are the first a count that finds fewer takes away (``relabel_phantoms``). A bucket
    of a release before this says nothing of them (no ``tied``), and keeps them as before."""
    hot = home.hot
    settle = next((s for s in hot.settles if s["ref"] == ref), None) if hot is not None else None
    if hot is None or settle is None or bucket not in settle["waiting"] or str(bucket) in settle["got"]:
        return []
    settle["got"][str(bucket)] = remaining
    wh = settle["wh"]
    if left is not None and tied is not None and wh in tied:
        untied = left.get(wh, 0) - tied[wh]
        if untied > 0:
            settle.setdefault("untied", {})[str(bucket)] = untied
    if len(settle["got"]) < len(settle["waiting"]):
        return []
    return finish_settle(home, settle, low_water)


def _in_a_count(home: SkuStock, settle: dict[str, Any], at_ms: int) -> bool:
    """Whether a loss settled now is in a count already, as a cold SKU would judge it: found before the count in
    force when it was read, or before a count begun and settled since that a cold SKU would have put it back under
    (not: one begun since and still settling, whose snapshot takes the loss in or leaves it on top itself)."""
    wh, skew_ms = settle["wh"], settle.get("skew", 0)
    in_force = settle.get("in_force", home.counted_ms.get(wh, -1))
    if at_ms <= in_force - skew_ms:
        return True
    since = home.counted_ms.get(wh, -1)
    pending = any(s["kind"] == "COUNT" and s["wh"] == wh for s in home.hot.settles) if home.hot else False
    return since != in_force and not pending and not taken_after(at_ms, since, skew_ms)


def finish_settle(home: SkuStock, settle: dict[str, Any], low_water: int) -> list[Sync]:
    """Apply a count as of the moment each bucket was probed: what the home held then, what each bucket held
    then (sent home or left), and everything that happened since stays on top."""
    hot = home.hot
    assert hot is not None
    wh = settle["wh"]
    at_ms: int | None = None  # a correction's date
    if settle["kind"] == "COUNT":
        counted = settle["base"] + sum(settle["got"].values()) + sum(settle["pre"].values())
        delta = settle["qty"] - counted
    else:
        delta = settle["qty"]
        at_ms = settle.get("dated") or home.touched_ms  # a settle begun before corrections were dated: about then
        if _in_a_count(home, settle, at_ms):
            delta = 0
        else:
            note_shelf_move(home, wh, delta, at_ms)
    home.on_hand[wh] = home.on_hand.get(wh, 0) + delta
    hot.settles.remove(settle)
    for later in hot.settles:
        # Its snapshot was taken before this change was applied: in it, unless it is a count taken before this
        # correction was made, which the correction stays on top of.
        after = at_ms is not None and later["kind"] == "COUNT" and taken_after(
            at_ms, later.get("dated", 0), later.get("skew", 0))
        if later["wh"] == wh and not after:
            later["base"] += delta
    relabelled = relabel_phantoms(home, settle)
    if hot.state == COLD and not hot.setting and not hot.settles and not hot.next_count:
        home.hot = None
    if relabelled:
        # Handed out only once the home counts these transfers as on their way (``sent_to_bucket``): before, a
        # bucket they leave short is not yet seen, and the units kept back for it would go out (the processor
        # hands out the home's free units after every change).
        return relabelled
    return distribute(home, low_water)


def on_settled(bucket: SkuStock, ref: str) -> None:
    """The home's word that a count this bucket answered is settled (a TRANSFER taking units off it, or a CONFIG):
    the warehouse's units left here are the ones the count found."""
    hot = bucket.hot
    if hot is None or not ref.startswith(SETTLED):
        return
    count_ref = ref.removeprefix(SETTLED)
    hot.probed = {wh: probe for wh, probe in hot.probed.items() if probe[0] != count_ref}


def forget_stale_probes(bucket: SkuStock, now_ms: int) -> None:
    """Counts whose settling the bucket waited for longer than ``PROBE_HOLD_MS``: it goes on without the word."""
    hot = bucket.hot
    if hot is not None and hot.probed:
        hot.probed = {wh: probe for wh, probe in hot.probed.items() if now_ms < int(probe[1])}


def relabel_phantoms(home: SkuStock, settle: dict[str, Any]) -> list[Sync]:
    """A count that found fewer of a warehouse's units than its records keep: the home's figure went below zero,
    while buckets still keep units of it behind lines not yet tied to it. Those are the units the warehouse lacks
    (the ones tied to lines stay theirs, as a cold SKU's allocation does), so the home takes them off the buckets
    that keep them, giving free units of its other warehouses in their place where it has them: a bucket then ties
    no line to the warehouse with units it does not have. A bucket given fewer than it lost holds lines its units
    no longer cover; the home keeps as many units back for it (``owed``) as a cold SKU's on-hand would be short."""
    hot = home.hot
    wh = settle["wh"]
    if hot is None or hot.state == COLD:
        return []
    untied = {bucket: qty for k, qty in settle.get("untied", {}).items()
              if 0 <= (bucket := int(k)) < hot.count and bucket not in hot.merged}  # fmt: skip
    debt = -home.on_hand.get(wh, 0)
    moves: dict[int, int] = {}
    for bucket in sorted(untied):
        if debt <= 0:
            break
        moves[bucket] = min(untied[bucket], debt)  # every entry is above zero
        debt -= moves[bucket]
    ref = SETTLED + settle["ref"]
    # Every bucket that kept units there behind untied lines waits for word that the count is settled: with the
    # units taken off it, or a CONFIG.
    settled = [Sync(CONFIG, bucket, ref=ref) for bucket in sorted(untied) if bucket not in moves]
    if not moves:
        return settled
    # The debt moved off the home first: what it still owes after, and its own lines, are all it keeps back.
    take(home, {wh: -sum(moves.values())})
    spare = {w: q for w, q in movable(home, owed=owed(home)).items() if w != wh}
    out = []
    for bucket, taken in moves.items():
        instead = apportion(spare, [taken])[0]
        for w, q in instead.items():
            spare[w] -= q
        take(home, instead)
        out.append(Sync(TRANSFER, bucket, {wh: -taken, **instead}, ref=ref))
        if total(instead) < taken and bucket not in hot.short:
            hot.short.append(bucket)
    return out + settled


def sku_sold_out(home: SkuStock) -> bool:
    """No unit of a hot SKU is free anywhere: not at the home, not in any bucket's last figures, none on its
    way to a bucket. Not while merging (the home decides lines again)."""
    hot = home.hot
    if hot is None or hot.state != HOT or hot.count < 1:
        return False
    return home.available() <= 0 and all(level <= 0 for level in reported_available(hot))


def sold_out_news(home: SkuStock) -> list[Sync]:
    """Whether the SKU just sold out or has free units again; if so, every bucket is told (a CONFIG: each
    channel from the home is in order, so a bucket's belief is the word of the home's last message)."""
    hot = home.hot
    if hot is None:
        return []
    now = sku_sold_out(home)
    if now == hot.sold_out:
        return []
    hot.sold_out = now
    return [Sync(CONFIG, b) for b in range(hot.count)] if hot.state == HOT else []


def told_state(hot: Buckets, sync: Sync) -> str:
    """The state a message from the home carries. A transfer brings units, so it never says sold out (the
    home's flag is cleared, and every bucket told, right after the transfer is sent)."""
    if hot.state == HOT and hot.sold_out and sync.kind != TRANSFER:
        return SOLD_OUT
    return hot.state


def aggregate(home: SkuStock) -> SkuStock:
    """The SKU as one: the home's record plus every bucket's last figures plus units in transit to them.
    What ``stock.levels``, the pause and ``/stock/{sku}`` use."""
    hot = home.hot
    if hot is None or not (hot.reports or hot.in_flight):
        return home
    agg = replace(home, on_hand=dict(home.on_hand), allocated=dict(home.allocated))
    for fig in hot.reports.values():
        for wh, qty in fig["on_hand"].items():
            agg.on_hand[wh] = agg.on_hand.get(wh, 0) + qty
        for wh, qty in fig["allocated"].items():
            agg.allocated[wh] = agg.allocated.get(wh, 0) + qty
        agg.locked += fig["locked"]
        agg.sold += fig["sold"]
        agg.presale_reserved += fig["presale_reserved"]
        agg.open_lines += fig["open_lines"]
        agg.newest_change_ms = max(agg.newest_change_ms, fig["newest_change_ms"])
        agg.newest_source_ms = max(agg.newest_source_ms, fig["newest_source_ms"])
    for _, _, units in hot.in_flight:
        give(agg, units)
    lent = sum(int(fig.get("lent", 0)) for fig in hot.reports.values())
    if lent:  # only their number counts here, whatever they are exchanged for
        agg.hot = replace(hot, lent={**hot.lent, "": hot.lent.get("", 0) + lent})
    return agg


def sent_to_bucket(home: SkuStock, seq: int, sync: Sync) -> None:
    """Remember a transfer until its bucket reports having applied it (``aggregate`` counts it meanwhile). An
    exchange's without its units (the record that asked for it counts them as lent until they are back), yet
    remembered all the same: its bucket sends them on or back, so it is not done (``on_report``) until it applied
    it. Taken as merged on a report older than the exchange (a bucket that went while its last figures still showed
    the warehouse's units), it is left out of a count's probes, and the units it sends home after the count's
    snapshot, in no bucket's answer and not in the home's figure, land on top of the count: phantom units."""
    if home.hot is not None and sync.kind == TRANSFER and sync.to_bucket >= 0:
        home.hot.in_flight.append([seq, sync.to_bucket, {} if swap_of(sync.ref) is not None else dict(sync.units)])


# ---- a bucket -------------------------------------------------------------------------------------


def configure(bucket: SkuStock, index: int, count: int, state: str, paused: bool, seq: int) -> None:
    """Adopt what the home says (every message from it carries its settings, in order)."""
    hot = bucket.hot = bucket.hot or Buckets(bucket=index)
    hot.bucket, hot.count = index, count
    hot.state, hot.sold_out = (HOT, True) if state == SOLD_OUT else (state, False)
    hot.acked = max(hot.acked, seq)
    bucket.paused = paused


def takes_reservations(bucket: SkuStock) -> bool:
    return bucket.hot is not None and bucket.hot.state == HOT


def refuses_unfilled(bucket: SkuStock) -> bool:
    """A line this bucket cannot fill is refused here rather than passed on: its home says no unit is free
    anywhere, so the other buckets would only refuse it too, each leaving a marker."""
    hot = bucket.hot
    return hot is not None and hot.bucket >= 0 and hot.state == HOT and hot.sold_out


def ran_dry(bucket: SkuStock, had_free: int) -> list[Sync]:
    """A bucket whose last free unit just went reports at once rather than at its next report: when every
    bucket is dry the SKU is sold out, and the sooner its home knows, the fewer lines go round all K."""
    hot = bucket.hot
    if hot is None or hot.bucket < 0 or hot.state != HOT or had_free <= 0 or bucket.available() > 0:
        return []
    return [Sync(REPORT, HOME)]


def uncovered(stock: SkuStock) -> int:
    """Units a record's open lines hold beyond the units it has: its own figure of ``bucket_short``."""
    return max(0, stock.locked + stock.presale_reserved - stock.on_hand_total() - stock.lent())


def ran_short(bucket: SkuStock, had_uncovered: int) -> list[Sync]:
    """A bucket whose lines came to hold more than its units (a line let go shipped all the same, off units that
    back its other lines) reports at once: the SKU as a whole may be short of them, and until its home knows, it
    hands the next units in to be sold where a cold SKU's lines would keep them."""
    hot = bucket.hot
    if hot is None or hot.bucket < 0 or hot.state != HOT or uncovered(bucket) <= had_uncovered:
        return []
    return [Sync(REPORT, HOME)]


def found_units(bucket: SkuStock) -> list[Sync]:
    """A bucket told the SKU is sold out that has free units of its own (a release, an expiry, or its home's
    word was older than the bucket's last figures) reports at once, so its home lifts the flag for every
    bucket, and stops believing it meanwhile."""
    hot = bucket.hot
    if hot is None or hot.bucket < 0 or not hot.sold_out or bucket.available() <= 0:
        return []
    hot.sold_out = False
    return [Sync(REPORT, HOME)]


def send_home(bucket: SkuStock) -> list[Sync]:
    """A bucket that is not taking lines (merging, or its home went cold) sends every free unit home, and a
    shortfall too (units shipped beyond what it held), so nothing stays behind when it is dropped."""
    if takes_reservations(bucket):
        return []
    units = movable(bucket)
    for wh, qty in bucket.on_hand.items():
        if qty < 0:
            units[wh] = qty
    if not units:
        return []
    take(bucket, units)
    return [Sync(TRANSFER, HOME, units)]


def received(bucket: SkuStock, units: dict[str, int], ref: str) -> None:
    """A transfer to a bucket arrived; units its home sent for lines a count left short are kept for them. Other
    units are the bucket's to sell, even while it waits for a count (none of them is one the count may not find)."""
    give(bucket, units)
    hot = bucket.hot
    if hot is None:
        return
    if ref == LACK:
        hot.for_lack += total(units)
        return
    for waiting in hot.probed.values():
        if len(waiting) > MOST_SOLD + 1:
            waiting[MOST_SOLD] = int(waiting[MOST_SOLD]) + total(units)
            waiting[MOST_SOLD + 1] = int(waiting[MOST_SOLD + 1]) + total(units)


def lift(bucket: SkuStock, ref: str) -> None:
    """The home's word that the SKU owes nothing (``LACK_LIFTED``), or has what it asked for as a debt."""
    if bucket.hot is not None and ref == LACK_LIFTED:
        bucket.hot.for_lack = 0
    if bucket.hot is not None and ref == DEBT_LIFTED:
        bucket.hot.owes_home = 0


def pay_debt(bucket: SkuStock) -> list[Sync]:
    """Units its lines freed, up to what its home asked for as a debt (``DEBT``), go home; none are sold here."""
    hot = bucket.hot
    if hot is None or hot.owes_home <= 0:
        return []
    units = _taken_home(bucket, min(hot.owes_home, bucket.unheld() + hot.owes_home))
    hot.owes_home -= total(units)
    return [Sync(TRANSFER, HOME, units)] if units else []


def _taken_home(bucket: SkuStock, qty: int, keep: int = 0) -> dict[str, int]:
    """Up to ``qty`` of a bucket's units no open line needs, taken off it to go home; ``keep`` more stay."""
    units = apportion(movable(bucket, owed=keep), [qty])[0] if qty > 0 else {}
    take(bucket, units)
    return units


def hold_probes_down(bucket: SkuStock) -> None:
    """After each change, what a bucket waiting for counts may sell goes down with every unit it sold (or sent
    away), never up: units a line let go meanwhile wait for the count's settling (``SkuStock.available``)."""
    hot = bucket.hot
    if hot is None or not hot.probed:
        return
    free = bucket.unheld()
    for waiting in hot.probed.values():
        if len(waiting) > MOST_SOLD + 1:
            waiting[MOST_SOLD] = int(waiting[MOST_SOLD]) + min(0, free - int(waiting[MOST_SOLD + 1]))
            waiting[MOST_SOLD + 1] = free


def return_lack(bucket: SkuStock) -> list[Sync]:
    """Units sent for a lack that its lines no longer need (one ended) go home, where what the SKU is short of is
    kept (``owed``); none are sold here. Lines that shipped took theirs with them."""
    hot = bucket.hot
    if hot is None or hot.for_lack <= 0:
        return []
    units = _taken_home(bucket, min(hot.for_lack, bucket.unheld() + hot.for_lack + hot.owes_home))
    hot.for_lack = max(0, min(hot.for_lack - total(units), bucket.locked + bucket.presale_reserved))
    return [Sync(TRANSFER, HOME, units)] if units else []


def send_shortfall(bucket: SkuStock) -> list[Sync]:
    """A bucket taking lines that shipped more of a warehouse than it held (a line shipped from a warehouse routing
    did not tie it to) sends the shortfall home at once: kept here below zero, its other warehouses' units would hide
    it (on-hand counts no warehouse below zero) and be sold, while at the home it is owed (``owed``) and made good."""
    if not takes_reservations(bucket):
        return []  # send_home sends it
    short = {wh: qty for wh, qty in bucket.on_hand.items() if qty < 0}
    if not short:
        return []
    take(bucket, short)
    return [Sync(TRANSFER, HOME, short)]


def on_rebalance(bucket: SkuStock, qty: int, ref: str = "") -> list[Sync]:
    """Units home, as many as asked and free here: never units sent for a lack (``for_lack``), nor any while its
    lines hold as many as it has. A line tied to a warehouse this bucket lacks is not backed by its other units, so
    they look free; sent home, the home would hand them to the short bucket again, and ask again: round and round."""
    part = _taken_home(bucket, min(qty, max(0, bucket.unheld())), keep=bucket.hot.for_lack if bucket.hot else 0)
    if ref == DEBT and bucket.hot is not None:
        bucket.hot.owes_home += qty - total(part)  # a debt is asked for again only by what it grew
    return [Sync(TRANSFER, HOME, part)] if part else []


def on_probe(bucket: SkuStock, warehouse_id: str, ref: str, now_ms: int, as_of_ms: int = 0,
             skew_ms: int = 0, keep: int = 0) -> list[Sync]:  # fmt: skip
    """Send the warehouse's free units home, then say what was left there (the units open lines hold) when the count
    was taken (``as_of_ms``; 0: as it stands): its shipments since stay on top of the count. Units kept there behind
    untied lines wait for the count to be settled (``rules.awaits_count``): the home may take them off."""
    out = []
    free = movable(bucket).get(warehouse_id, 0)
    if free > 0:
        take(bucket, {warehouse_id: free})
        out.append(Sync(TRANSFER, HOME, {warehouse_id: free}))
    if keep > max(0, free):  # what the count may take from the SKU as a whole (``loss_bound``): kept back as a debt
        out += on_rebalance(bucket, keep - max(0, free), DEBT)
    left = bucket.on_hand.get(warehouse_id, 0)
    then = left - moved_since(bucket, warehouse_id, as_of_ms, skew_ms) if as_of_ms else left
    if as_of_ms:
        counted(bucket, warehouse_id, as_of_ms, skew_ms)
    tied = {warehouse_id: bucket.allocated.get(warehouse_id, 0)}  # the rest of ``left`` backs untied lines
    if left > tied[warehouse_id] and bucket.hot is not None:
        bucket.hot.probed[warehouse_id] = [ref, now_ms + PROBE_HOLD_MS, bucket.available(), bucket.unheld()]
    # Its figures first, on the same ordered channel: the home settles the count on the last answer, and what it
    # keeps back for a bucket the count leaves short is worked out from them (``bucket_short``).
    out.append(Sync(REPORT, HOME))
    out.append(Sync(COUNTED, HOME, {warehouse_id: left}, qty=then, warehouse_id=warehouse_id, ref=ref, allocated=tied))
    return out


def figures(bucket: SkuStock) -> dict[str, Any]:
    """What a bucket tells its home (``REPORT``); ``acked``: the last home message it applied."""
    hot = bucket.hot
    return {
        "seq": hot.seq if hot else 0, "acked": hot.acked if hot else 0, "on_hand": dict(bucket.on_hand),
        "available": bucket.available(), "lent": bucket.lent(), "locked": bucket.locked, "sold": bucket.sold,
        "presale_reserved": bucket.presale_reserved, "allocated": dict(bucket.allocated),
        "open_lines": bucket.open_lines, "newest_change_ms": bucket.newest_change_ms,
        "newest_source_ms": bucket.newest_source_ms,
    }  # fmt: skip


def empty(fig: dict[str, Any]) -> bool:
    # Lent units come back to the bucket that lent them: it is not done before they are.
    return int(fig["open_lines"]) == 0 and all(q == 0 for q in fig["on_hand"].values()) and not fig.get("lent")


# ---- a line short of the warehouse routing chose ----------------------------------------------------------

SWAP = "swap"  # the ref of an exchange's transfers: "swap:<record that asked>:<order id>#<line no>"
# An exchange's ref once a record on the way kept the warehouse's units back for a count being settled: refused
# for want of them, the line is refused ``warehouse_counting`` (its order tries again in a second), not short.
SWAP_COUNTED = "swap-counted"
# Exchanges one allocation makes: its own, and one more if the record's other lines took the warehouse's units
# meanwhile; then the line is refused and routing chooses again, rather than the records trading units for ever.
MAX_ASKS = 2


def swap_ref(requester: int, order_id: str, line_no: int) -> str:
    return f"{SWAP}:{requester}:{order_id}#{line_no}"


def swap_of(ref: str) -> tuple[int, str, int] | None:
    """(the record that asked, order id, line no) of an exchange's transfer; None for any other transfer."""
    kind, _, rest = ref.partition(":")
    if kind not in (SWAP, SWAP_COUNTED):
        return None
    requester, _, line = rest.partition(":")
    order_id, _, line_no = line.rpartition("#")
    return int(requester), order_id, int(line_no)


def exchanges(stock: SkuStock) -> bool:
    """A record sharing a hot SKU's units with others (a bucket, or a home with buckets): what it lacks of a
    warehouse, another may have. A cold SKU's record holds all its units, so its refusal stands."""
    hot = stock.hot
    return hot is not None and (hot.bucket >= 0 or hot.count > 0)


def offer(stock: SkuStock, warehouse_id: str, qty: int) -> dict[str, int]:
    """Up to ``qty`` units of warehouses other than ``warehouse_id`` that no line is tied to, the fullest first;
    none of a warehouse another line here waits for, nor, at the home, of one whose count is being settled (the
    count's difference is applied to the home's units: a bucket that answered the count would keep them)."""
    hot = stock.hot
    kept = set(hot.lent) | {settle["wh"] for settle in hot.settles} | set(hot.probed) if hot is not None else set()
    spare = {wh: max(0, q) - stock.allocated.get(wh, 0) for wh, q in stock.on_hand.items()
             if wh != warehouse_id and wh not in kept}  # fmt: skip
    out = {}
    for wh in sorted(spare, key=lambda w: (-spare[w], w)):
        n = min(qty, spare[wh])
        if n > 0:
            out[wh] = n
            qty -= n
    return out


def reported_free(hot: Buckets, bucket: int, warehouse_id: str) -> int:
    """A bucket's units of the warehouse no line is tied to, by its last figures and what was sent it since: a
    bucket gains units only from its home, so it has no more than this (fewer once it sold some)."""
    fig = hot.reports.get(str(bucket), {})
    free = int(fig.get("on_hand", {}).get(warehouse_id, 0)) - int(fig.get("allocated", {}).get(warehouse_id, 0))
    return free + sum(units.get(warehouse_id, 0) for _, to, units in hot.in_flight if to == bucket)


def next_donor(home: SkuStock, warehouse_id: str, requester: int, after: int) -> int | None:
    """The next bucket an exchange asks: in turn from the record that asked (the home: from bucket 0), after
    ``after``, skipping the one that asked and those that cannot have a free unit of the warehouse."""
    hot = home.hot
    if hot is None:
        return None
    if 0 <= requester < hot.count:
        order = [(requester + i) % hot.count for i in range(1, hot.count)]
    else:
        order = [q for q in range(hot.count) if q != requester]
    later = order[order.index(after) + 1 :] if after in order else order
    return next((q for q in later if reported_free(hot, q, warehouse_id) > 0), None)


def want(stock: SkuStock, hold: LineHold, warehouse_id: str) -> tuple[LineHold, list[Sync]] | None:
    """A held line routed to ``warehouse_id``, of which this record has fewer free units than the line: offer the
    SKU's other records as many units of its other warehouses (the units behind the line until now: the routed
    warehouse's will be), one for one. The answer waits for the exchange (``swap_arrived``). None: nothing to
    offer or nobody to ask, and the refusal stands.

    The units offered are ``lent`` until the exchange comes back: they still back the line meanwhile."""
    if hold.wants == warehouse_id:
        return hold, []  # asked already (a duplicate command): the answer comes with the units
    hot = stock.hot
    assert hot is not None
    units = offer(stock, warehouse_id, hold.qty - max(0, stock.warehouse_free(warehouse_id)))
    to = HOME if hot.bucket >= 0 else next_donor(stock, warehouse_id, HOME, HOME)
    if to is None or not units:
        return None
    take(stock, units)
    hot.lent[warehouse_id] = hot.lent.get(warehouse_id, 0) + total(units)
    ref = swap_ref(hot.bucket, hold.order_id, hold.line_no)
    waiting = replace(hold, wants=warehouse_id, asks=hold.asks + 1)
    return waiting, [Sync(TRANSFER, to, units, total(units), warehouse_id, ref)]


def wanted(units: dict[str, int], warehouse_id: str) -> int:
    """Units of the warehouse an exchange still wants: one for each unit offered that nobody took yet."""
    return total(units) - units.get(warehouse_id, 0)


def spares(stock: SkuStock, warehouse_id: str, requester: int) -> bool:
    """Whether ``stock`` gives its own units of the warehouse to the exchange ``requester`` asked for: not while a
    line of its own waits for them, unless the requester comes first (the home, then by bucket number). Two records
    waiting for the same units would otherwise give each other theirs, each get one back and ask again, for ever;
    this way the units only go one way, and the first one gets them all."""
    hot = stock.hot
    if hot is not None and warehouse_id in hot.probed:
        return False  # units a count being settled may not have found (``rules.awaits_count``)
    return hot is None or warehouse_id not in hot.lent or requester < hot.bucket


def swap_give(stock: SkuStock, warehouse_id: str, units: dict[str, int], own: bool = True) -> dict[str, int]:
    """What a record passes on of an exchange's ``units``, just credited to it: the warehouse's units gathered
    so far, and with them as many of its own free ones (``own``) as it keeps of the units offered, one for one,
    and the offered units it does not keep. Its totals do not change, so its lines stay backed."""
    gathered = units.get(warehouse_id, 0)
    offered = {wh: q for wh, q in sorted(units.items()) if wh != warehouse_id and q > 0}
    given = 0
    if own:
        free = max(0, stock.on_hand.get(warehouse_id, 0) - gathered) - stock.allocated.get(warehouse_id, 0)
        given = max(0, min(free, total(offered)))
    kept = apportion(offered, [given])[0]
    out = {wh: q - kept.get(wh, 0) for wh, q in offered.items() if q > kept.get(wh, 0)}
    if gathered + given:
        out[warehouse_id] = gathered + given
    take(stock, out)
    return out


def swap_ask(bucket: SkuStock, warehouse_id: str, units: dict[str, int], ref: str) -> list[Sync]:
    """A bucket asked, by its home, for the warehouse's units: everything goes back, what it gave in place of
    what it kept (the home waits for this answer to ask the next bucket or to end the exchange)."""
    swap = swap_of(ref)
    out = swap_give(bucket, warehouse_id, units, own=swap is not None and spares(bucket, warehouse_id, swap[0]))
    if bucket.hot is not None and warehouse_id in bucket.hot.probed:
        ref = counted_swap(ref)
    return [Sync(TRANSFER, HOME, out, wanted(out, warehouse_id), warehouse_id, ref)]


def counted_swap(ref: str) -> str:
    """An exchange's ref, saying a record on the way kept the warehouse's units back for a count."""
    return SWAP_COUNTED + ref.removeprefix(SWAP) if ref.startswith(SWAP + ":") else ref


def swap_at_home(home: SkuStock, sender: int, units: dict[str, int], warehouse_id: str,
                 ref: str) -> tuple[list[Sync], bool]:  # fmt: skip
    """An exchange's transfer at the home, just credited. From the bucket that asked, the home first gives of
    its own (not while a count of that warehouse is settled: the count's difference is applied to the home's
    units); then everything goes on, to the next bucket that may have the warehouse's units, or, once no more
    are wanted or no bucket is left, back to the record that asked. True: that is the home, and the units stay."""
    swap = swap_of(ref)
    requester = swap[0] if swap is not None else HOME
    counting = home.hot is not None and any(s["wh"] == warehouse_id for s in home.hot.settles)
    own = sender == requester >= 0 and not counting and spares(home, warehouse_id, requester)
    passing = swap_give(home, warehouse_id, units, own=own)
    if counting:
        ref = counted_swap(ref)
    still = wanted(passing, warehouse_id)
    nxt = next_donor(home, warehouse_id, requester, sender) if still > 0 else None
    if nxt is None and requester == HOME:
        give(home, passing)
        return [], True
    return [Sync(TRANSFER, requester if nxt is None else nxt, passing, still, warehouse_id, ref)], False


def swap_arrived(stock: SkuStock, hold: LineHold | None, warehouse_id: str, brought: dict[str, int],
                 now_ms: int, ref: str = "") -> tuple[Step, list[Sync]]:  # fmt: skip
    """An exchange back at the record that asked, its units credited (as many as it lent): the line is allocated
    if the warehouse's units are here now; asked for again (once: ``MAX_ASKS``) if every unit offered was taken
    but other lines here took the warehouse's units meanwhile; else refused (no record had enough free: routing
    chooses again). Units that come for a line no longer waiting stay here."""
    hot = stock.hot
    if hot is not None:
        left = hot.lent.get(warehouse_id, 0) - total(brought)
        if left > 0:
            hot.lent[warehouse_id] = left
        else:
            hot.lent.pop(warehouse_id, None)
    if hold is None or not hold.is_open or hold.warehouse_id or hold.wants != warehouse_id:
        return Step(None), []
    waiting = replace(hold, wants="", asks=0)  # answered: routed here again, it may exchange again
    if stock.warehouse_free(warehouse_id) >= hold.qty:
        placed = allocate(stock, waiting, hold.order_id, hold.line_no, hold.qty, warehouse_id, now_ms)
        # Refused (a count of the warehouse awaits its settling: ``rules.awaits_count``), the line is stored answered
        # all the same: left wanting the warehouse, it would take its next routing there for an exchange still out.
        return Step(placed.answer, placed.holds or {hold.line_no: replace(waiting, updated_ms=now_ms)}), []
    counting = awaits_count(stock, warehouse_id, now_ms) or ref.startswith(SWAP_COUNTED + ":")
    every_unit_taken = brought.get(warehouse_id, 0) > 0 and wanted(brought, warehouse_id) == 0
    if not counting and hold.asks < MAX_ASKS and every_unit_taken:
        asked = want(stock, replace(waiting, asks=hold.asks), warehouse_id)
        if asked is not None:
            return Step(None, {hold.line_no: asked[0]}), asked[1]
    why = Reason.WAREHOUSE_COUNTING if counting else Reason.WAREHOUSE_SHORT
    refused = Answer(hold.order_id, hold.line_no, hold.qty, "ALLOCATE", "REFUSED", why)
    return Step(refused, {hold.line_no: replace(waiting, updated_ms=now_ms)}), []
