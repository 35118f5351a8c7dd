"""The notifier's indexed queue answers exactly as a look through the whole queue would."""

from __future__ import annotations

import random

from agents.alerting import digest
from agents.alerting.alerts import alert
from agents.alerting.notify import Queued
from agents.alerting.waiting import Waiting, which
from streams.contract.records import Alert

KINDS = [("sla_breach", "RED"), ("unroutable", "WARNING"), ("stock_low", "INFO"), ("odd", "CUSTOM")]


def random_alert(rng: random.Random, n: int) -> Alert:
    kind, severity = rng.choice(KINDS)
    subject = f"jd:o-{rng.randrange(30)}"
    # Same time for many: the id then decides among equals, as it does in ``digest.overflow``.
    return alert(kind, severity, subject, f"alert {n}", 1_700_000_000_000 + rng.randrange(50),
                 cleared=rng.random() < 0.3)  # fmt: skip


def test_random_puts_pops_and_caps_drop_what_overflow_drops_and_find_what_a_scan_finds() -> None:
    rng = random.Random(11)
    waiting, plain = Waiting(), {}  # plain: the queue as a dict looked through whole
    for n in range(4_000):
        step = rng.random()
        if step < 0.6:
            item = Queued(random_alert(rng, n), partition=rng.randrange(4), queued_ms=n)
            waiting.put(item)
            plain[item.id] = item
        elif step < 0.75 and plain:
            gone = rng.choice(list(plain))
            assert waiting.pop(gone) == plain.pop(gone)
        elif step < 0.97:
            cap = max(len(plain) - rng.randrange(4), 0)
            _, expected = digest.overflow([i.alert for i in plain.values()], cap)
            dropped = waiting.over(cap)
            assert sorted(i.id for i in dropped) == sorted(a["event_id"] for a in expected)
            for a in expected:
                del plain[a["event_id"]]
            assert waiting.drop_order_size <= 2 * len(waiting) + 64  # alerts gone do not pile up in the heap
        else:
            moving = rng.randrange(4)
            waiting.keep(lambda i, away=moving: i.partition != away)
            plain = {k: v for k, v in plain.items() if v.partition != moving}
        probe = random_alert(rng, -1)
        assert {i.id for i in waiting.of(probe)} == {k for k, v in plain.items() if which(v.alert) == which(probe)}
        assert list(waiting) == list(plain) and len(waiting) == len(plain)


def test_an_alert_queued_again_keeps_its_place_and_is_dropped_once() -> None:
    waiting = Waiting()
    first = Queued(alert("sla_breach", "INFO", "jd:o-1", "a", 1_000), partition=0, queued_ms=0)
    second = Queued(alert("sla_breach", "RED", "jd:o-2", "b", 2_000), partition=0, queued_ms=1)
    waiting.put(first)
    waiting.put(second)
    waiting.put(first)
    assert list(waiting) == [first.id, second.id]
    assert waiting.over(1) == [first] and waiting.over(0) == [second] and waiting.over(0) == []
