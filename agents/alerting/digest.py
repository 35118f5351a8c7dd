"""The ops-chat notifier's pure rules: a WeCom group robot's sending budget, the order alerts go out
in, folding a storm into digest messages, fitting every message within the robot's size limit, and
what a full queue gives up first.

Reads and writes nothing: alerts and times come in as arguments, messages go out as values. The
notifier (``agents.alerting.notify``: the Faust agent, the HTTP calls, the durable queue) decides
*when* a message may go; these rules decide *what* it says.

A group robot takes 20 messages a minute and a markdown message of at most 4096 bytes of UTF-8
content. While the queue is no longer than the free budget, each alert goes out on its own (its
full text); beyond it the whole queue is folded into digests - grouped by severity and kind, RED
first and clearings last, one line per alert (its subject and the start of its text) under a
header with the group's count - packed into as few messages as the size limit allows. Every
alert appears, by subject, in exactly one message.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

from streams.contract.records import Alert

SEVERITIES = ("RED", "WARNING", "INFO")
COLOURS = {"RED": "warning", "WARNING": "warning", "INFO": "info"}
ELLIPSIS = "…"
# A subject is an order id or a SKU; these bounds only stop a pathological one from eating a message.
SUBJECT_BYTES = 160
DETAIL_BYTES = 300
# A digest line shows the start of an alert's text: enough to tell alerts of one kind apart, short
# enough that a 4 KB message carries some forty of them.
EXCERPT_BYTES = 80
# Smallest size limit the rules are built for: a head, a group header and one line always fit.
MIN_MESSAGE_BYTES = 512


def nbytes(text: str) -> int:
    """Bytes of ``text`` as UTF-8, what the robot's limit counts."""
    return len(text.encode("utf-8", "replace"))


def truncate_utf8(text: str, max_bytes: int, ellipsis: str = ELLIPSIS) -> str:
    """``text`` cut to at most ``max_bytes`` bytes of UTF-8, on a character boundary, ``ellipsis``
    marking the cut; unchanged when it fits."""
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return text
    room = max_bytes - nbytes(ellipsis)
    if room <= 0:
        return ""
    # Cutting mid-character leaves a partial sequence at the end: dropping it lands on the boundary.
    return data[:room].decode("utf-8", "ignore") + ellipsis


def _content_bytes(lines: Sequence[str]) -> int:
    return sum(nbytes(line) for line in lines) + max(len(lines) - 1, 0)


@dataclass
class SlidingWindow:
    """A robot's budget: at most ``limit`` messages in any ``window_s`` seconds.

    A message takes its slot from when its answer came back, which is no earlier than the robot
    counted it; so however slow the answers, the robot never sees more than ``limit`` in a window.
    Times are the caller's monotonic seconds.
    """

    limit: int
    window_s: float
    sent: deque[float] = field(default_factory=deque)

    def _expire(self, now: float) -> None:
        while self.sent and self.sent[0] <= now - self.window_s:
            self.sent.popleft()

    def free(self, now: float) -> int:
        """Messages that may go at ``now``."""
        self._expire(now)
        return max(self.limit - len(self.sent), 0)

    def next_free_at(self, now: float) -> float:
        """When the next message may go: ``now`` if a slot is free, else when the oldest one frees."""
        self._expire(now)
        if len(self.sent) < self.limit:
            return now
        return self.sent[len(self.sent) - self.limit] + self.window_s

    def record(self, at: float) -> None:
        """A message was sent (or tried: a refused or throttled call may still count at the robot)."""
        if self.sent and at < self.sent[-1]:
            at = self.sent[-1]  # keeps the slots ordered; a later stamp is only more careful
        self.sent.append(at)


@dataclass(frozen=True)
class Message:
    """One markdown message for the robot and the alerts it carries."""

    content: str
    alert_ids: tuple[str, ...]

    @property
    def body(self) -> dict[str, Any]:
        return {"msgtype": "markdown", "markdown": {"content": self.content}}

    @property
    def digest(self) -> bool:
        return len(self.alert_ids) > 1


def urgency(alert: Alert) -> tuple[int, int]:
    """Smaller is more urgent: raised before cleared, then RED, WARNING, INFO, any other severity."""
    severity = alert["severity"]
    rank = SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)
    return (1 if alert["cleared"] else 0, rank)


def _send_order(alert: Alert) -> tuple[int, int, int, str]:
    return (*urgency(alert), alert["event_time_ms"], alert["event_id"])


def _title(alert: Alert) -> str:
    return alert["kind"].replace("_", " ")


def _label(alert: Alert) -> str:
    if alert["cleared"]:
        return f'<font color="info">**cleared: {_title(alert)}**</font>'
    colour = COLOURS.get(alert["severity"], "comment")
    return f'<font color="{colour}">**{alert["severity"]}: {_title(alert)}**</font>'


def single(alert: Alert, max_bytes: int, notice: str = "") -> Message:
    """One alert, in full when it fits: its label, text, subject and details. Longer, the label and
    subject stay whole, details go from the last while they crowd the text out, and the text is cut
    on a character boundary."""
    top = [notice, _label(alert)] if notice else [_label(alert)]
    subject = f'> subject: <font color="comment">{truncate_utf8(alert["subject"], SUBJECT_BYTES)}</font>'
    details = [
        f'> {truncate_utf8(k, SUBJECT_BYTES)}: <font color="comment">{truncate_utf8(v, DETAIL_BYTES)}</font>'
        for k, v in sorted(alert["details"].items())
    ]
    text = alert["message"]
    lines = [*top, text, subject, *details]
    if _content_bytes(lines) > max_bytes:
        fixed = _content_bytes([*top, subject]) + 1  # the newline before the text
        # Details are kept while the text keeps at least half the room (or all it needs).
        text_floor = min(nbytes(text), (max_bytes - fixed) // 2)
        while details and fixed + text_floor + _content_bytes(details) + 1 > max_bytes:
            details.pop()
        room = max_bytes - fixed - (_content_bytes(details) + 1 if details else 0)
        lines = [*top, truncate_utf8(text, room), subject, *details]
    content = "\n".join(lines)
    # Only a limit below MIN_MESSAGE_BYTES with a long notice gets here; the cut may then split markup.
    return Message(truncate_utf8(content, max_bytes), (alert["event_id"],))


def _digest_line(alert: Alert) -> str:
    excerpt = alert["message"].strip().split("\n", 1)[0]
    subject = truncate_utf8(alert["subject"], SUBJECT_BYTES)
    return f"- {subject}: {truncate_utf8(excerpt, EXCERPT_BYTES)}" if excerpt else f"- {subject}"


def _group_header(first: Alert, count: int, continued: bool) -> str:
    more = " (continued)" if continued else ""
    return f"{_label(first)} · {count}{more}"


def _cost(lines: Sequence[str]) -> int:
    """Bytes ``lines`` add to a message that has a line already (each one comes after a newline)."""
    return sum(nbytes(line) + 1 for line in lines)


DigestGroup = tuple[tuple[int, int], str, bool]  # urgency, kind, cleared: one header each


class _Packer:
    """Fills messages up to the size limit, line by line, starting a new one when the next line
    would not fit; a group cut across messages repeats its header there, marked continued."""

    def __init__(self, max_bytes: int, head: str, notice: str) -> None:
        self.max_bytes = max_bytes
        self.head = head
        self.notice = notice
        self.messages: list[Message] = []
        self.last_group: DigestGroup | None = None
        self._start()

    def _start(self) -> None:
        # The notice goes once, at the top of the first message.
        self.lines = [self.notice, self.head] if self.notice and not self.messages else [self.head]
        self.size = _content_bytes(self.lines)
        self.ids: list[str] = []
        self.group: DigestGroup | None = None

    def flush(self) -> None:
        if self.ids:
            self.messages.append(Message("\n".join(self.lines), tuple(self.ids)))
            self._start()

    def _new_lines(self, group: DigestGroup, header: str, continued: str, line: str) -> list[str]:
        if self.group == group:
            return [line]
        return [continued if self.last_group == group else header, line]

    def add(self, group: DigestGroup, header: str, continued: str, alert: Alert) -> None:
        line = _digest_line(alert)
        new = self._new_lines(group, header, continued, line)
        if self.ids and self.size + _cost(new) > self.max_bytes:
            self.flush()
            new = self._new_lines(group, header, continued, line)
        if self.size + _cost(new) > self.max_bytes:  # a line too long even for an empty message: cut
            new[-1] = truncate_utf8(line, max(self.max_bytes - self.size - _cost(new[:-1]) - 1, 0))
        self.lines.extend(new)
        self.size += _cost(new)
        self.ids.append(alert["event_id"])
        self.group = self.last_group = group


def digests(alerts: Sequence[Alert], max_bytes: int, notice: str = "") -> list[Message]:
    """The queue folded: groups by severity and kind (raised RED first, clearings last), each alert
    one line, packed into as few messages of at most ``max_bytes`` as the lines allow."""
    if not alerts:
        return []
    red = sum(1 for a in alerts if a["severity"] == "RED" and not a["cleared"])
    colour = "warning" if red else "info"
    head = f'<font color="{colour}">**{len(alerts)} alerts at once** · {red} RED · grouped by kind, RED first</font>'
    packer = _Packer(max_bytes, head, notice)

    def group_of(a: Alert) -> DigestGroup:
        return (urgency(a), a["kind"], a["cleared"])

    ordered = sorted(alerts, key=lambda a: (group_of(a), a["event_time_ms"], a["event_id"]))
    for key, members in groupby(ordered, key=group_of):
        group = list(members)
        header = _group_header(group[0], len(group), continued=False)
        continued = _group_header(group[0], len(group), continued=True)
        for alert in group:
            packer.add(key, header, continued, alert)  # the whole key: a kind's RED and WARNING are two groups
    packer.flush()
    return packer.messages


def plan(alerts: Sequence[Alert], free: int, max_bytes: int, notice: str = "") -> list[Message]:
    """What to send now, at most ``free`` messages: each alert on its own while the queue fits in the
    budget, else the whole queue folded into digests, most urgent first; what does not fit in
    ``free`` waits for the next plan (new alerts may have joined it by then)."""
    if free <= 0 or not alerts:
        return []
    if len(alerts) <= free:
        ordered = sorted(alerts, key=_send_order)
        return [single(a, max_bytes, notice if i == 0 else "") for i, a in enumerate(ordered)]
    return digests(alerts, max_bytes, notice)[:free]


Expendability = tuple[int, int, int, str]


def expendability(alert: Alert) -> Expendability:
    """Smaller goes first from a full queue: the least urgent - clearings, then INFO, WARNING, RED - and
    among equals the oldest, the one most likely to be over by now."""
    cleared, rank = urgency(alert)
    return -cleared, -rank, alert["event_time_ms"], alert["event_id"]


def overflow(alerts: Iterable[Alert], cap: int) -> tuple[list[Alert], list[Alert]]:
    """A full queue: which alerts it keeps (in their order) and which it drops, by ``expendability``."""
    queue = list(alerts)
    if len(queue) <= cap:
        return queue, []
    expendable = sorted(queue, key=expendability)
    dropped_ids = {a["event_id"] for a in expendable[: len(queue) - cap]}
    kept = [a for a in queue if a["event_id"] not in dropped_ids]
    dropped = [a for a in queue if a["event_id"] in dropped_ids]
    return kept, dropped


def dropped_notice(count: int, cap: int) -> str:
    """The line the next message starts with after the queue overflowed."""
    if count <= 0:
        return ""
    return (
        f'<font color="warning">**{count} alerts dropped**</font>: more than {cap} were waiting for this robot; '
        "they are on the alerts dashboard and in the worker log"
    )


def retry_delay(failures: int, first_s: float, max_s: float) -> float:
    """Wait before the next try after ``failures`` failures in a row: ``first_s``, doubling, at most ``max_s``."""
    if failures <= 0:
        return 0.0
    return min(max_s, first_s * 2.0 ** min(failures - 1, 40))
