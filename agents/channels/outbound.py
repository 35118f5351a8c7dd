"""The outbound connectors' pure rules: no I/O, no clock (every call takes the time), no threads.

- ``OffsetTracker``: which input records are still being worked on, and so how far each partition's
  offset may be committed while calls finish out of order (one channel's slow or failing calls never
  hold up another's, yet nothing unfinished is ever committed); its tickets name the assignment they
  were read in, so work left over from before a revoke never counts for the record read again;
- ``PushQueue``: one channel's stock pushes waiting to go, coalesced per SKU (only the newest figure
  is sent; an unchanged figure is not sent again; an older version never replaces a newer one), taken
  in batches for the platform's many-SKU call; a figure whose call failed for now (the platform away or
  busy, a refused key) is sent again after a backoff until the channel has it or a newer one replaces it,
  and one the platform keeps refusing on its own in calls it otherwise answers is given up past a bound;
- ``TokenBucket``: the client-side rate limit, kept a little under the platform's;
- ``FailingWatch``: the ``connector_failing`` alert, raised once when a channel endpoint's calls start
  failing and cleared when one of that endpoint's succeeds again;
- ``EndpointStats``: calls ok / retried / failed, last error, latency percentiles, for the status view;
- ``success_rate``: the share of finished calls that got done, the one definition the status view,
  the health board (``dashboards/connector_health.sql``) and the connectivity report use;
- the records the connectors write: ``refund_issued``, ``FailedCall.record`` and ``CallOutcome.record``
  (one ``ConnectorCalled`` per call as it ended).
"""

from __future__ import annotations

import heapq
import statistics
from collections import OrderedDict, deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.alerting.alerts import alert
from streams.contract.reasons import Reason
from streams.contract.records import Alert, ConnectorCalled, ConnectorCallFailed, RefundIssued
from streams.contract.topics import CONNECTOR_FAILED

FAILING_ALERT = "connector_failing"
LATENCY_WINDOW = 2048  # calls per endpoint the latency percentiles look at
ANSWER_CHARS = 2000  # how much of an answer a failed-call record keeps


def failing_subject(channel: str, endpoint: str) -> str:
    """The subject of an endpoint's ``connector_failing`` alert: the notifier pairs a raise with its clearing by
    kind and subject, so a channel's stock pushes going through never cancel its refund endpoint's alert."""
    return f"{channel}/{endpoint}"


def stock_key(sku: str, version: int) -> str:
    """A stock push's idempotency key (the contract's ``SKU@version``)."""
    return f"{sku}@{version}"


def source_of(topic: str, partition: int, offset: int) -> str:
    """Where a call's request came from, as the failed-call record names it."""
    return f"{topic}/{partition}/{offset}"


# ---- offsets -------------------------------------------------------------------------------------


TopicPartitionKey = tuple[str, int]


@dataclass(frozen=True)
class Ticket:
    """One input record in flight: done when every part of its work is (its result acknowledged).

    ``epoch`` counts the revokes of its partition before it was read: the same record read again after
    its partition came back is another ticket, and only the newest one's work counts."""

    topic: str
    partition: int
    offset: int
    epoch: int = 0

    @property
    def tp(self) -> TopicPartitionKey:
        return (self.topic, self.partition)

    def replaces(self, older: Ticket) -> bool:
        """Whether this record, with a newer figure of the same key, stands for ``older`` across a crash: it
        comes later on the same partition, so while it is unfinished no commit passes it and a restart
        reads it again."""
        return self.tp == older.tp and self.offset > older.offset


class OffsetTracker:
    """Input records whose work is not finished, per partition.

    A partition may be committed up to (not including) its oldest unfinished record; with none in
    flight, up to the consumer's position (which also steps over transaction markers). Records
    finish in any order; the committed offset only ever covers records that are all done.
    """

    def __init__(self) -> None:
        self._open: dict[TopicPartitionKey, dict[int, int]] = {}
        self._epochs: dict[TopicPartitionKey, int] = {}

    def begin(self, topic: str, partition: int, offset: int, parts: int = 1) -> Ticket:
        """Start a record with ``parts`` pieces of work (0: it is done already)."""
        ticket = Ticket(topic, partition, offset, self._epochs.get((topic, partition), 0))
        if parts > 0:
            self._open.setdefault(ticket.tp, {})[offset] = parts
        return ticket

    def holds(self, ticket: Ticket) -> bool:
        """Whether ``ticket`` was read in its partition's current assignment (else it is the new owner's)."""
        return ticket.epoch == self._epochs.get(ticket.tp, 0)

    def finish(self, ticket: Ticket, parts: int = 1) -> bool:
        """``parts`` pieces of ``ticket``'s work are done; True when the record is now done."""
        offsets = self._open.get(ticket.tp)
        if offsets is None or ticket.offset not in offsets or not self.holds(ticket):
            # Revoked meanwhile: the record is read again under a new ticket, and work queued for the old one
            # must not count for it (it may be done twice while other channels have not done theirs).
            return False
        left = offsets[ticket.offset] - parts
        if left > 0:
            offsets[ticket.offset] = left
            return False
        del offsets[ticket.offset]
        return True

    def in_flight(self) -> int:
        return sum(len(offsets) for offsets in self._open.values())

    def commit_points(self, positions: Mapping[TopicPartitionKey, int]) -> dict[TopicPartitionKey, int]:
        """The offset to commit per partition: its oldest unfinished record, else the consumer's position."""
        points = {}
        for tp, position in positions.items():
            offsets = self._open.get(tp)
            if offsets:
                points[tp] = min(offsets)
            elif position >= 0:
                points[tp] = position
        return points

    def forget(self, partitions: Iterable[TopicPartitionKey]) -> None:
        """Partitions this consumer no longer holds: their unfinished records are read again by the next owner
        (this consumer too, if they come back), and their tickets so far count for nothing any more."""
        for tp in partitions:
            self._open.pop(tp, None)
            self._epochs[tp] = self._epochs.get(tp, 0) + 1


# ---- stock pushes --------------------------------------------------------------------------------


@dataclass
class Push:
    """The newest figure waiting to be pushed for one SKU on one channel."""

    sku: str
    quantity: int
    version: int
    due_ms: int  # when it may go: after the push window, or after its backoff once its call failed for now
    source: str
    tickets: list[Ticket] = field(default_factory=list)
    failures: int = 0  # calls in a row that failed for now: its backoff grows with them
    # Its last failure was its whole call's (the channel away, a refused key): a call of the channel going
    # through wakes it. One the platform refused alone, in a call it otherwise answered, keeps its backoff.
    wake_on_success: bool = False
    alone_failures: int = 0  # times this figure was refused alone, for now (a newer figure starts again at 0)
    alone_since_ms: int | None = None  # when it was first
    taken_in: int = 0  # the queue's revoke count when its call was taken (``PushQueue.forget_shown``)
    taken_ms: int = 0  # when its call was taken
    confirming: bool = False  # applied, it goes once more after a lost call's time to land (``PushQueue.settle``)

    @property
    def idempotency_key(self) -> str:
        return stock_key(self.sku, self.version)


@dataclass
class Batch:
    """What ``PushQueue.take_batch`` hands out: pushes to send in one call, and pushes the channel already shows
    (a call in flight landed their figure meanwhile), settled without a call: their tickets are to be finished."""

    send: list[Push] = field(default_factory=list)
    shown: list[Push] = field(default_factory=list)


UNKNOWN_QUANTITY = -1  # what a channel shows when a figure after its last accepted one failed: no figure equals it
UNKNOWN_VERSION = -1  # the version of a lost call only known to have maybe been made (``PushQueue.replayed``)
# A figure whose call failed for now waits this long before it goes again, doubling per failure up to the
# ceiling: a channel down for hours costs a call per batch of SKUs every half minute, and a channel back (or a
# key set) gets its figures within that (at once when another of its calls goes through: ``resume_retries``).
RETRY_FIRST_MS = 1_000
RETRY_MAX_MS = 30_000
# A figure the platform refuses on its own, for now (a per-item 429 or 5xx), in calls whose other figures it
# takes, is given up after this many such refusals or this long since the first (about 2.5 minutes of backoff
# for the count): the channel answers, so waiting longer is no cure, and its record would hold its partition's
# commit point for good when no newer figure of the SKU comes. The connector parks it (connector.failed.<channel>,
# ``connector_retries_exhausted``). A figure whose whole call fails (the channel away, a refused key) waits for the
# channel, however long - unless its lane holds more SKUs than its cap meanwhile (``PushQueue.overflow``).
RETRY_ALONE_MAX_FAILURES = 10
RETRY_ALONE_MAX_MS = 15 * 60_000


def retry_delay_ms(failures: int) -> int:
    """How long a figure waits after its ``failures``-th call in a row failed for now."""
    return min(RETRY_MAX_MS, RETRY_FIRST_MS << min(max(0, failures - 1), 16))


class PushQueue:
    """One channel's stock pushes: the newest figure per SKU, sent oldest change first, one call per SKU at a time.

    ``offer`` a SKU's figure from a ``stock.levels`` record. A push is due ``window_ms`` after the SKU's first
    unsent change, so a burst of changes collapses into one figure. ``take_batch`` hands out up to
    ``max_items`` due pushes whose SKU has no call in flight, for one many-SKU call - or none while fewer than
    ``min_items`` are due and the oldest has been due for less than ``hold_ms`` (a lane with a call in flight
    waits for a full batch rather than send a thin one, so the calls stay few while a figure waits about one
    call's time; Nagle's rule, with ``hold_ms`` bounding the wait when that call is slow). The pushes taken are
    in flight until ``settle``-d with what the platform answered, or ``release``-d when the call failed or was
    abandoned. A push due while the channel already shows its figure (a call in flight landed it meanwhile)
    needs no call: ``take_batch`` settles it and hands it back in ``Batch.shown``. Tickets of figures that need
    no call (unchanged, older) are handed back for finishing with their push; those of a figure a newer one
    replaced are finished at once (``take_superseded``) when the newer one's record stands for them across a
    crash (``Ticket.replaces``), so a SKU holds one record open however often it changes while its channel is
    down. A push whose call failed for now is ``retry``-ed: it waits out a backoff (``retry_delay_ms``) apart
    from the queue, then goes again; a newer figure of its SKU takes its place and its backoff. A push whose
    whole call failed goes again as often as it takes (and at once when a call of the channel goes through:
    ``resume_retries``); one the platform refused alone keeps its backoff and is given up past
    ``RETRY_ALONE_MAX_FAILURES`` / ``RETRY_ALONE_MAX_MS`` (``retry`` answers False: the caller parks it).
    While the channel is away, the lane bounds what waits: ``overflow`` hands out the oldest waiting figures past
    its cap, for parking. Remembers the last figure each SKU's channel accepted: bounded by the SKUs of the
    catalogue; what a call lands after a revoke is not remembered (``settle``).

    A call whose answer was lost (no answer, a 5xx: ``retry``, or an attempt of it before the one answered:
    ``settle(lost=True)``) may still land at the platform up to ``doubt_ms`` later, and the platforms keep no
    version: landing after a newer figure, it would set its older one over it. A newer figure of that SKU applied
    within that time goes once more after it (``settle`` answers False and the push waits in the queue, its records
    open); a newer figure still takes its place at once.

    The same holds for a call of the partition's previous owner (an earlier life of this process after ``kill -9``,
    or another member before a rebalance): its lost calls are not known here, but their records were left open, so
    they are read again. A figure read from below the end the partition had when it was assigned (``replayed``)
    is taken as following an unknown lost call of its SKU, and goes once more ``doubt_ms`` after the assignment.

    A figure parked while a lost call of its SKU may still land (``keep_open``) keeps its records open until then
    (``take_closed``): finished at once, a process started again meanwhile would not read it again, know nothing
    of that call, and finish the SKU's next figure while the call can still land after it.
    """

    def __init__(self, window_ms: int, doubt_ms: int = 0) -> None:
        self.window_ms = window_ms
        self.doubt_ms = doubt_ms
        self._doubt: dict[str, list[tuple[int, int]]] = {}  # sku -> (until when, version) of each lost call
        self._pending: OrderedDict[str, Push] = OrderedDict()  # due times grow with insertion: oldest first
        self._in_flight: dict[str, Push] = {}  # sku -> the push whose call is under way
        self._retrying: dict[str, Push] = {}  # sku -> a push waiting out its backoff (never also pending)
        self._accepted: dict[str, tuple[int, int]] = {}  # sku -> (quantity, version) the platform holds
        self._superseded: list[Ticket] = []
        self._revokes = 0  # ``forget_shown``-s so far: a call taken before the last one lands unremembered
        # Partitions assigned within ``doubt_ms`` -> (their end offset then, until when): records below it were read
        # by an earlier owner too, which may have had calls of them lost (``replayed``).
        self._replayed: dict[TopicPartitionKey, tuple[int, int]] = {}
        # Figures parked while in doubt: sku -> (until when, their tickets), at most one per SKU (``keep_open``), and
        # a heap of (until, sku) to close them in time order (an entry whose until moved on is skipped there).
        self._kept: dict[str, tuple[int, list[Ticket]]] = {}
        self._kept_due: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._pending)

    def in_flight(self) -> int:
        return len(self._in_flight)

    def retrying(self) -> int:
        return len(self._retrying)

    def waiting(self) -> int:
        """Figures waiting to go, those waiting out a backoff included (each holds about one record open)."""
        return len(self._pending) + len(self._retrying)

    def overflow(self, limit: int) -> list[Push]:
        """Take the oldest waiting figures past ``limit`` out of the queue, for the caller to park and finish:
        first those waiting out a backoff (their call failed, least recently first), then the oldest queued; never
        a SKU with a call in flight (what that call lands must not be remembered over a parked newer figure). Each
        SKU's next figure is then sent whatever the channel showed, as after ``release``."""
        excess = self.waiting() - limit
        if excess <= 0:
            return []
        taken: list[Push] = []
        for waiting in (self._retrying, self._pending):
            for sku, push in waiting.items():
                if len(taken) >= excess:
                    break
                if sku not in self._in_flight and not push.confirming:  # applied already: not for parking
                    taken.append(push)
        for push in taken:
            if self._retrying.pop(push.sku, None) is None:
                del self._pending[push.sku]
            self._forget_figure(push.sku)
        return taken

    def take_superseded(self) -> list[Ticket]:
        """Tickets whose figure a newer one replaced, with a record that stands for them: finish them now."""
        tickets, self._superseded = self._superseded, []
        return tickets

    def replayed(self, ends: Mapping[TopicPartitionKey, int], now_ms: int) -> None:
        """Partitions were just assigned, with these end offsets: an earlier owner may have read the records below
        them and lost calls of their figures (see the class docstring)."""
        if self.doubt_ms > 0:
            self._replayed = {tp: v for tp, v in self._replayed.items() if v[1] > now_ms}
            self._replayed.update({tp: (end, now_ms + self.doubt_ms) for tp, end in ends.items()})

    def _read_again(self, sku: str, ticket: Ticket, now_ms: int) -> None:
        end, until = self._replayed.get(ticket.tp, (0, 0))
        if ticket.offset < end and until > now_ms:
            doubt = self._doubt.setdefault(sku, [])
            if (until, UNKNOWN_VERSION) not in doubt:
                doubt.append((until, UNKNOWN_VERSION))

    def offer(self, sku: str, quantity: int, version: int, ticket: Ticket, source: str, now_ms: int) -> bool:
        """Queue a figure; False when there is nothing to send for it (the caller finishes ``ticket`` now)."""
        if self._replayed:
            self._read_again(sku, ticket, now_ms)
        waiting = self._pending.get(sku) or self._retrying.get(sku)
        accepted = self._accepted.get(sku)
        flying = self._in_flight.get(sku)
        carrier = next((p for p in (waiting, flying) if p is not None and p.version >= version), None)
        if carrier is not None:
            # A level read again (a rebalance handed its partition back) while its figure, or a newer one, is
            # still to be sent: its record is done when that push is, never before (its offset must not be
            # committed while the push could still be lost).
            carrier.tickets.append(ticket)
            return True
        if accepted is not None and version <= accepted[1]:
            return False  # an older level read again (a restart, a rebalance): never send it over a newer one
        if waiting is not None and waiting.confirming:
            # Applied, waiting to go once more after a lost call's time: the newer figure goes now, not then.
            del self._retrying[sku]
            waiting.confirming, waiting.due_ms = False, now_ms + self.window_ms
            self._pending[sku] = waiting
        if waiting is not None:
            # The newest figure wins; it keeps its place and due time (or backoff), and has a bound of its own.
            waiting.quantity, waiting.version, waiting.source = quantity, version, source
            waiting.alone_failures, waiting.alone_since_ms = 0, None
            older, waiting.tickets = waiting.tickets, [ticket]
            self._absorb(waiting, older)
            return True
        if flying is None and accepted is not None and accepted[0] == quantity:
            # The channel already shows this figure. While a call is in flight what it will show is not known
            # yet (the call may fail, or find a newer version there): queue it, and ``take_batch`` decides.
            return False
        self._pending[sku] = Push(sku, quantity, version, now_ms + self.window_ms, source, [ticket])
        return True

    def _absorb(self, newest: Push, older: list[Ticket]) -> None:
        """``newest`` carries a newer figure than ``older`` (tickets) asked for: those of them a record of
        ``newest``'s stands for are done now, the others are done with ``newest``."""
        kept: list[Ticket] = []
        for ticket in older:
            (self._superseded if any(n.replaces(ticket) for n in newest.tickets) else kept).append(ticket)
        newest.tickets = kept + newest.tickets

    def retry(self, push: Push, now_ms: int, *, alone: bool = False, lost: bool | None = None) -> bool:
        """``push``'s call failed for now (no usable answer within the retry budget, a refused key), or, with
        ``alone``, the platform refused this figure on its own for now in a call it otherwise answered: it goes
        again after a backoff, unless a newer figure of its SKU waits already, which then stands for it. Its
        records stay open until the channel has the figure or a newer one: a figure given up on here would
        leave the channel showing stock the pool no longer has, the last change of a SKU never sent - except a
        figure refused alone past ``RETRY_ALONE_MAX_FAILURES`` / ``RETRY_ALONE_MAX_MS``: False then, it is out
        of the queue (its SKU free, as after ``release``) and the caller parks it and finishes its records. ``lost``
        (by default: not ``alone``): an attempt of its call got no answer, and may still land (see the class
        docstring)."""
        self._in_flight.pop(push.sku, None)
        self._forget_figure(push.sku)  # it may have landed before the answer was lost
        if (not alone) if lost is None else lost:
            self.note_lost(push, now_ms)
        newer = self._pending.get(push.sku)
        if newer is not None:
            older, push.tickets = push.tickets, []
            self._absorb(newer, older)
            return True
        if not push.tickets:
            return True  # every record that asked for it went to another connector with its partition
        push.failures += 1
        push.wake_on_success = not alone
        if alone:
            push.alone_failures += 1
            if push.alone_since_ms is None:
                push.alone_since_ms = now_ms
            if (push.alone_failures >= RETRY_ALONE_MAX_FAILURES
                    or now_ms - push.alone_since_ms >= RETRY_ALONE_MAX_MS):  # fmt: skip
                return False
        push.due_ms = now_ms + retry_delay_ms(push.failures)
        self._retrying[push.sku] = push
        return True

    def resume_retries(self, now_ms: int) -> None:
        """A call of this channel went through: the figures whose whole call failed (waiting out a backoff for
        the channel) are due now; a figure the platform refused alone keeps its own backoff."""
        for push in self._retrying.values():
            if push.wake_on_success:
                push.due_ms = min(push.due_ms, now_ms)

    def _promote(self, now_ms: int) -> None:
        """Move the figures whose backoff is over into the queue, keeping its due times in insertion order."""
        due = sorted((p for p in self._retrying.values() if p.due_ms <= now_ms), key=lambda p: p.due_ms)
        if not due:
            return
        last = next(reversed(self._pending.values())).due_ms if self._pending else due[0].due_ms
        for push in due:
            del self._retrying[push.sku]
            push.due_ms = last = max(push.due_ms, last)
            self._pending[push.sku] = push

    def under_way(self, partitions: Collection[TopicPartitionKey] | None = None) -> set[str]:
        """SKUs whose call is under way (for a record of ``partitions``, when given)."""
        return {sku for sku, push in self._in_flight.items()
                if partitions is None or any(t.tp in partitions for t in push.tickets)}  # fmt: skip

    def forget_partitions(self, partitions: Collection[TopicPartitionKey]) -> None:
        """Partitions went to another connector, which sends what their records ask for: what waits here for
        them only goes from here if another partition's record asks for it too, and a call under way for
        them is not tried again here if it fails."""
        for waiting in (self._pending, self._retrying):
            for sku, push in list(waiting.items()):
                push.tickets = [t for t in push.tickets if t.tp not in partitions]
                if not push.tickets:
                    del waiting[sku]
        for push in self._in_flight.values():
            # A new list: the lane that sent it may be finishing the old one's tickets right now.
            push.tickets = [t for t in push.tickets if t.tp not in partitions]
        for sku, (until, tickets) in list(self._kept.items()):
            left = [t for t in tickets if t.tp not in partitions]
            if left:
                self._kept[sku] = (until, left)
            else:
                del self._kept[sku]

    def _takeable(self, now_ms: int, limit: int) -> list[Push]:
        """Up to ``limit`` due pushes whose SKU has no call in flight, oldest first (nothing is removed)."""
        found: list[Push] = []
        for push in self._pending.values():
            if push.due_ms > now_ms or len(found) >= limit:
                break
            if push.sku not in self._in_flight:
                found.append(push)
        return found

    def ready_at_ms(self, min_items: int = 1, hold_ms: int = 0) -> int | None:
        """When ``take_batch(..., min_items, hold_ms)`` will hand out pushes, as things stand (an offer or a settle
        changes that): the time to wake; None when nothing is waiting with no call in flight for its SKU."""
        seen, first, ready = 0, None, None
        for push in self._pending.values():
            if push.sku not in self._in_flight:
                seen += 1
                first = push.due_ms if first is None else first
                if seen >= min_items:
                    ready = min(push.due_ms, first + hold_ms)
                    break
        else:
            ready = None if first is None else first + hold_ms
        # A figure whose backoff ends joins the queue then, and may make a batch due.
        times = [t for t in (ready, *(p.due_ms for p in self._retrying.values())) if t is not None]
        return min(times) if times else None

    def wakes(self, max_items: int) -> bool:
        """Whether the push just queued (the newest) can change ``ready_at_ms`` for up to ``max_items``: only when
        fewer than that many pushes without a call in flight are ahead of it (a lane's waiting threads need
        waking then, and only then)."""
        return len(self._pending) - 1 - len(self._in_flight) < max_items

    def take_batch(self, now_ms: int, max_items: int, min_items: int = 1, hold_ms: int = 0) -> Batch:
        """The oldest due pushes with no call in flight for their SKU, at most ``max_items`` to send, and none
        while fewer than ``min_items`` are and the oldest has been due for less than ``hold_ms`` (see the class
        docstring); the ones sent are in flight until settled or released."""
        batch = Batch()
        self._promote(now_ms)
        candidates = self._takeable(now_ms, max_items)
        for push in candidates:
            if self._shows(push):
                del self._pending[push.sku]
                self._accepted[push.sku] = (push.quantity, push.version)  # its level is handled: older ones are not
                batch.shown.append(push)
        sendable = [p for p in candidates if p.sku in self._pending]
        held = sendable and sendable[0].due_ms + hold_ms > now_ms
        if not sendable or (held and len(sendable) < min(min_items, max_items)):
            return batch
        for push in sendable:
            del self._pending[push.sku]
            self._in_flight[push.sku] = push
            push.taken_in, push.taken_ms, push.confirming = self._revokes, now_ms, False
        batch.send = sendable
        return batch

    def _shows(self, push: Push) -> bool:
        accepted = self._accepted.get(push.sku)
        return accepted is not None and accepted[0] == push.quantity

    def keep_open(self, push: Push, now_ms: int) -> bool:
        """``push`` was parked (the broker has it in the failed queue): True when a lost call of its SKU may still
        land, and the queue keeps its records open until it cannot (``take_closed``); False: finish them now. A SKU
        keeps one such entry: the records of an earlier parked figure that ``push``'s stand for are done
        (``take_superseded``), so what stays open is bounded by the SKUs, not by how often they were parked."""
        until = max((u for u, _ in self._doubt.get(push.sku, []) if u > now_ms), default=0)
        if not until or not push.tickets:
            return False
        earlier_until, earlier = self._kept.get(push.sku, (0, []))
        kept: list[Ticket] = []
        for ticket in earlier:
            (self._superseded if any(t.replaces(ticket) for t in push.tickets) else kept).append(ticket)
        self._kept[push.sku] = (max(until, earlier_until), kept + push.tickets)
        if until > earlier_until:
            heapq.heappush(self._kept_due, (until, push.sku))
        return True

    def kept(self) -> int:
        """SKUs whose parked figure's records are kept open while a lost call may land (``keep_open``)."""
        return len(self._kept)

    def take_closed(self, now_ms: int) -> list[Ticket]:
        """Tickets of parked figures (``keep_open``) whose SKU's lost calls can no longer land: finish them now."""
        closed: list[Ticket] = []
        while self._kept_due and self._kept_due[0][0] <= now_ms:
            until, sku = heapq.heappop(self._kept_due)
            entry = self._kept.get(sku)
            if entry is not None and entry[0] == until:
                closed += self._kept.pop(sku)[1]
        return closed

    def note_lost(self, push: Push, now_ms: int) -> None:
        """An attempt of a call carrying ``push``'s figure may have been applied, and may land until ``doubt_ms``
        from now (also said by ``retry``, ``settle`` and ``release``; the lane says it of a many-SKU call refused
        whole after such an attempt, whose figures then go again alone)."""
        if self.doubt_ms > 0:
            lost = [d for d in self._doubt.get(push.sku, []) if d[0] > now_ms]
            self._doubt[push.sku] = [*lost, (now_ms + self.doubt_ms, push.version)]

    def _to_confirm(self, push: Push, accepted: bool) -> int:
        """When ``push``, applied, must go once more: once every call of its SKU whose answer was lost can have
        landed (0: it need not). A call taken after that is the last to land. Lost calls whose time was over when
        ``push`` was taken are forgotten: no later call is taken earlier. A lost call of this very figure counts
        too: landing late it changes nothing here, but its record stays open until it can no longer land, so a
        process started again meanwhile reads it again and knows the SKU is in doubt (``replayed``)."""
        doubt = self._doubt.get(push.sku)
        if doubt is None:
            return 0
        doubt = [d for d in doubt if d[0] > push.taken_ms]
        if doubt:
            self._doubt[push.sku] = doubt
        else:
            del self._doubt[push.sku]
        return max((until for until, version in doubt if version <= push.version), default=0) if accepted else 0

    def settle(self, push: Push, accepted: bool, now_ms: int = 0, lost: bool = False) -> bool:
        """The platform answered ``push``: ``accepted`` (now shows it), or stale (it holds a newer version); ``lost``:
        an attempt of its call before the one answered got no answer. False: it must go once more (see the class
        docstring): it waits in the queue, its records open.

        A call taken before a revoke (``forget_shown``), or whose records all went with their partition, may land
        after the partition's new owner pushed a newer figure, or before it does: what the channel shows then is
        not known, and remembering this figure would skip a later level equal to it as "already shown" when the
        partition comes back (with no revoke here meanwhile to forget it, if this process held nothing). Only
        its version is kept (the platform holds at least that), so the SKU's next figure is sent whatever it is."""
        self._in_flight.pop(push.sku, None)
        if lost:
            self.note_lost(push, now_ms)
        confirm_at = self._to_confirm(push, accepted)
        if confirm_at and push.tickets:
            self._forget_figure(push.sku)
            newer = self._pending.get(push.sku)  # offered while this call was under way: it goes, and confirms
            if newer is not None:
                older, push.tickets = push.tickets, []
                self._absorb(newer, older)
                return False
            push.confirming, push.due_ms, push.failures, push.wake_on_success = True, confirm_at, 0, False
            push.alone_failures, push.alone_since_ms = 0, None
            self._retrying[push.sku] = push
            return False
        if accepted and (push.taken_in != self._revokes or not push.tickets):
            known = self._accepted.get(push.sku)
            self._accepted[push.sku] = (UNKNOWN_QUANTITY, max(push.version, known[1] if known else 0))
        elif accepted:
            self._accepted[push.sku] = (push.quantity, push.version)
        else:
            # A newer version is there, set by an earlier run: its figure is unknown, so the next change is sent.
            self._accepted.pop(push.sku, None)
        return True

    def release(self, push: Push, now_ms: int = 0, lost: bool = False) -> None:
        """``push``'s call failed for good or was abandoned: the SKU may be sent again. The channel still shows
        what it did, but a failed figure waits in the failed queue for ``stockflow connectors replay``, which
        would set it over any newer one not sent because the channel "already showed" it: the SKU's next
        figure is sent whatever it is, so the replayed one then finds a newer version there. ``lost``: an attempt
        of its call before the one answered got no answer, and may still land."""
        self._in_flight.pop(push.sku, None)
        self._forget_figure(push.sku)
        if lost:
            self.note_lost(push, now_ms)

    def _forget_figure(self, sku: str) -> None:
        accepted = self._accepted.get(sku)
        if accepted is not None:
            self._accepted[sku] = (UNKNOWN_QUANTITY, accepted[1])

    def forget_shown(self) -> None:
        """Partitions went to another connector, which may push newer figures than the ones remembered here
        before they come back: every SKU's next figure is sent whatever it is (versions are kept: the platform
        holds at least those), and a call under way now is not remembered when it lands (``settle``)."""
        self._revokes += 1
        for sku, (_, version) in self._accepted.items():
            self._accepted[sku] = (UNKNOWN_QUANTITY, version)

    def drain(self) -> list[Push]:
        """Everything waiting (at a stop: their records are left uncommitted and read again, as are those of figures
        parked while in doubt)."""
        pushes = [*self._pending.values(), *self._retrying.values()]
        self._pending.clear()
        self._retrying.clear()
        self._kept.clear()
        self._kept_due.clear()
        return pushes


# ---- rate limit ----------------------------------------------------------------------------------


@dataclass
class TokenBucket:
    """``rate_per_s`` calls a second with bursts of at most ``capacity``; ``reserve`` says how long to wait.

    Reservations queue: each takes a token now, so a caller that must wait holds its place and the
    next one waits behind it.
    """

    rate_per_s: float
    capacity: float = 1.0
    _tokens: float = 0.0
    _at_s: float | None = None

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.capacity < 1:
            raise ValueError(f"a token bucket needs a positive rate and room for one call, not {self}")

    def reserve(self, now_s: float) -> float:
        """Take one call's token; the seconds to wait before making the call (0: at once)."""
        if self._at_s is None:
            self._tokens, self._at_s = self.capacity, now_s
        elapsed = max(0.0, now_s - self._at_s)
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate_per_s)
        self._at_s = max(self._at_s, now_s)
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate_per_s

    def retune(self, rate_per_s: float, now_s: float) -> None:
        """Go on at ``rate_per_s`` from ``now_s``: what was earned so far at the old rate is kept, and calls
        already waiting keep their place (a debt is repaid at the new rate)."""
        if rate_per_s <= 0:
            raise ValueError(f"a token bucket needs a positive rate, not {rate_per_s}")
        if self._at_s is not None:
            elapsed = max(0.0, now_s - self._at_s)
            self._tokens = min(self.capacity, self._tokens + elapsed * self.rate_per_s)
            self._at_s = max(self._at_s, now_s)
        self.rate_per_s = rate_per_s


# ---- alerts --------------------------------------------------------------------------------------


ChannelEndpoint = tuple[str, str]


@dataclass
class FailingWatch:
    """Per channel and endpoint: failing (a call failed since that endpoint's last success) or not; an alert
    per change. Kept per endpoint because one channel's endpoints fail apart: a refund endpoint refusing
    every call while stock pushes go through is failing, and a stock success must not clear it."""

    failing_since_ms: dict[ChannelEndpoint, int] = field(default_factory=dict)
    parked: set[ChannelEndpoint] = field(default_factory=set)  # failing, and calls went to the failed queue
    overflowing: set[ChannelEndpoint] = field(default_factory=set)  # failing, and a backlog past its cap parked

    def failed(self, channel: str, endpoint: str, reason: str, answer: str, now_ms: int, *,
               parked: bool = True) -> Alert | None:  # fmt: skip
        """A call of ``endpoint`` failed: ``parked`` on the failed queue (to replay), or else to be sent again
        by the connector itself (a stock figure)."""
        key = (channel, endpoint)
        if parked:
            self.parked.add(key)
        if key in self.failing_since_ms:
            return None
        self.failing_since_ms[key] = now_ms
        if parked:
            topic = CONNECTOR_FAILED[channel].name if channel in CONNECTOR_FAILED else "the failed queue"
            then = (f"Failed calls are kept on {topic}; fix the cause (a rotated key: stockflow connectors set-key "
                    f"{channel}), then stockflow connectors replay {channel}")  # fmt: skip
        else:
            then = (f"Each SKU's newest figure is sent again until {channel} takes it (nothing to replay); fix the "
                    f"cause (a rotated key: stockflow connectors set-key {channel})")  # fmt: skip
        return alert(
            FAILING_ALERT, "RED", failing_subject(channel, endpoint),
            f"{channel}: {endpoint} calls failing ({reason}): {answer[:300]}. {then}",
            now_ms, details={"channel": channel, "endpoint": endpoint, "reason": reason, "answer": answer[:500]},
            event_id=f"{FAILING_ALERT}:{channel}:{endpoint}:{now_ms}",
        )  # fmt: skip

    def parked_backlog(self, channel: str, endpoint: str, parked: int, cap: int, now_ms: int) -> Alert | None:
        """The channel is away and its lane, holding more than ``cap`` SKUs' figures, parked ``parked`` of the
        oldest on the failed queue so reading goes on for the other channels: said once until the endpoint's
        next success clears it (with the failing alert: same kind and subject)."""
        key = (channel, endpoint)
        self.parked.add(key)
        self.failing_since_ms.setdefault(key, now_ms)
        if key in self.overflowing:
            return None
        self.overflowing.add(key)
        topic = CONNECTOR_FAILED[channel].name if channel in CONNECTOR_FAILED else "the failed queue"
        return alert(
            FAILING_ALERT, "RED", failing_subject(channel, endpoint),
            f"{channel}: {endpoint}: the channel is away with over {cap} SKUs' figures waiting; the oldest are parked "
            f"on {topic} ({Reason.CONNECTOR_RETRIES_EXHAUSTED}), so reading goes on for the other channels. "
            f"{channel} shows old stock for those SKUs until a newer figure of each or stockflow connectors replay "
            f"{channel} once it is back", now_ms,
            details={"channel": channel, "endpoint": endpoint, "reason": str(Reason.CONNECTOR_RETRIES_EXHAUSTED),
                     "cap": str(cap), "parked": str(parked)},
            event_id=f"{FAILING_ALERT}:{channel}:{endpoint}:{now_ms}:parked",
        )  # fmt: skip

    def succeeded(self, channel: str, endpoint: str, now_ms: int) -> Alert | None:
        key = (channel, endpoint)
        self.overflowing.discard(key)
        since = self.failing_since_ms.pop(key, None)
        if since is None:
            return None
        message = f"{channel}: {endpoint} calls succeed again (failing since {since})"
        if key in self.parked:
            self.parked.discard(key)
            message += f"; replay what failed meanwhile: stockflow connectors replay {channel}"
        return alert(
            FAILING_ALERT, "RED", failing_subject(channel, endpoint), message, now_ms, cleared=True,
            details={"channel": channel, "endpoint": endpoint, "failing_since_ms": str(since)},
            event_id=f"{FAILING_ALERT}:{channel}:{endpoint}:{now_ms}:cleared",
        )  # fmt: skip

    def is_failing(self, channel: str, endpoint: str | None = None) -> bool:
        """Whether ``channel``'s ``endpoint`` (without one: any of its endpoints) is failing."""
        if endpoint is not None:
            return (channel, endpoint) in self.failing_since_ms
        return any(c == channel for c, _ in self.failing_since_ms)


# ---- status --------------------------------------------------------------------------------------


@dataclass
class EndpointStats:
    """One channel endpoint's calls, for the status view: ``ok`` ... ``failed`` count calls as they ended,
    ``calls`` every attempt sent; the ``items_*`` count the stock figures many-SKU calls carried, by their
    own result (applied, stale: a newer one is there, failed for good, failed for now and sent again)."""

    ok: int = 0
    already_applied: int = 0
    stale: int = 0
    retried: int = 0
    failed: int = 0
    calls: int = 0
    items_applied: int = 0
    items_stale: int = 0
    items_failed: int = 0
    items_retried: int = 0
    last_error: str = ""
    last_error_ms: int = 0
    last_ok_ms: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def snapshot(self) -> dict[str, Any]:
        latencies = list(self.latencies_ms)
        return {
            "ok": self.ok,
            "already_applied": self.already_applied,
            "stale": self.stale,
            "retried": self.retried,
            "failed": self.failed,
            "calls": self.calls,
            "items_applied": self.items_applied,
            "items_stale": self.items_stale,
            "items_failed": self.items_failed,
            "items_retried": self.items_retried,
            "last_error": self.last_error,
            "last_error_ms": self.last_error_ms,
            "last_ok_ms": self.last_ok_ms,
            "latency_ms": percentiles(latencies),
            "success_rate": success_rate(self.ok + self.already_applied + self.stale, self.failed),
        }


def success_rate(done: int, failed: int) -> float | None:
    """Of the calls that finished, the share done (ok, already applied or stale: the platform has the figure);
    a call retried and then done counts as done, one that failed for good as failed. None with none finished."""
    finished = done + failed
    return None if finished == 0 else round(done / finished, 4)


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50 and p99 of ``values`` (None with no values; the one value with one)."""
    if not values:
        return {"p50": None, "p99": None}
    if len(values) == 1:
        return {"p50": round(values[0], 1), "p99": round(values[0], 1)}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(cuts[49], 1), "p99": round(cuts[98], 1)}


# ---- records -------------------------------------------------------------------------------------


def refund_issued(
    refund_id: str, order_id: str, channel: str, amount_fen: int, platform_ref: str, attempts: int, now_ms: int,
    *, replayed: bool = False,
) -> RefundIssued:  # fmt: skip
    """The marketplace accepted (or had accepted) a refund. One event id per refund, however often it is
    sent: a repeat after a crash or a replay is the same event."""
    return RefundIssued(
        event_id=f"refund-issued:{refund_id}",
        event_time_ms=now_ms,
        refund_id=refund_id,
        order_id=order_id,
        channel=channel,
        amount_fen=amount_fen,
        platform_ref=platform_ref,
        attempts=attempts,
        replayed=replayed,
    )


@dataclass(frozen=True)
class FailedCall:
    """A call that failed for good, as its channel's failed queue keeps it."""

    channel: str
    endpoint: str
    idempotency_key: str
    request: str  # the body before signing, as JSON: never a key
    answer: str
    reason: str
    attempts: int
    source: str

    def record(self, now_ms: int) -> ConnectorCallFailed:
        """Its ``ConnectorCallFailed``. The id names the call and the record that asked for it, so the same
        record failing again after a restart is the same event."""
        return ConnectorCallFailed(
            event_id=f"call-failed:{self.channel}:{self.endpoint}:{self.idempotency_key}:{self.source}",
            event_time_ms=now_ms,
            channel=self.channel,
            endpoint=self.endpoint,
            idempotency_key=self.idempotency_key,
            request=self.request,
            answer=self.answer[:ANSWER_CHARS],
            reason=self.reason,
            attempts=self.attempts,
            source=self.source,
        )


ERROR_CHARS = 500  # of the last failed attempt's answer a call record keeps


@dataclass
class CallOutcome:
    """One call as it goes: filled in attempt by attempt, then ``record``-ed as its ``ConnectorCalled``."""

    channel: str
    endpoint: str  # what it is for: refund or stock
    started_ms: int
    replayed: bool = False
    latencies_ms: list[float] = field(default_factory=list)
    error: str = ""
    error_ms: int = 0
    key_fingerprint: str = ""
    key_expires_ms: int = 0

    def failed_attempt(self, answer: str, at_ms: int) -> None:
        self.error, self.error_ms = answer[:ERROR_CHARS], at_ms

    def record(self, outcome: str, reason: str, attempts: int, now_ms: int, call_id: str) -> ConnectorCalled:
        """The call's ``ConnectorCalled``; ``call_id`` is unique to the call (the caller's own id and its running
        count), so the record redelivered is one row and two calls are never one."""
        return ConnectorCalled(
            event_id=f"call:{self.channel}:{self.endpoint}:{call_id}",
            event_time_ms=now_ms,
            channel=self.channel,
            endpoint=self.endpoint,
            outcome=outcome,
            reason=reason if outcome == "failed" else "",
            attempts=attempts,
            latencies_ms=[round(v, 3) for v in self.latencies_ms],
            error=self.error,
            error_ms=self.error_ms,
            started_ms=self.started_ms,
            replayed=self.replayed,
            key_fingerprint=self.key_fingerprint,
            key_expires_ms=self.key_expires_ms,
        )
