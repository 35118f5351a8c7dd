"""The notifier's pure rules: the robot's sliding window, folding a storm, splitting and cutting to the
size limit, what a full queue drops, the retry waits. No network, no broker."""

from __future__ import annotations

import re

import pytest

from agents.alerting import digest
from agents.alerting.alerts import alert
from streams.contract.records import Alert

LIMIT = 4096


def an_alert(
    n: int, kind: str = "sla_breach", severity: str = "RED", *, cleared: bool = False, message: str = ""
) -> Alert:
    return alert(
        kind, severity, f"pdd:order-{n:04d}", message or f"paid {n} min ago, not pushed to a warehouse",
        1_700_000_000_000 + n, cleared=cleared, details={"channel": "pdd"},
    )  # fmt: skip


def ids(messages: list[digest.Message]) -> list[str]:
    return [i for m in messages for i in m.alert_ids]


# ---- the window ---------------------------------------------------------------------------------------


def test_the_window_allows_the_limit_then_frees_a_slot_a_window_after_each_send() -> None:
    window = digest.SlidingWindow(limit=3, window_s=60.0)
    assert window.free(0.0) == 3 and window.next_free_at(0.0) == 0.0
    for at in (1.0, 2.0, 5.0):
        window.record(at)
    assert window.free(5.0) == 0
    assert window.next_free_at(5.0) == 61.0  # the first send's slot
    assert window.free(60.9) == 0
    assert window.free(61.0) == 1  # exactly a window later the slot is free again
    window.record(61.0)
    assert window.next_free_at(61.5) == 62.0


def test_the_window_never_allows_more_than_the_limit_in_any_span_of_its_length() -> None:
    window = digest.SlidingWindow(limit=20, window_s=3.0)
    sent: list[float] = []
    now = 0.0
    while len(sent) < 200:
        now = window.next_free_at(now)
        for _ in range(window.free(now)):
            sent.append(now)
            window.record(now)
        now += 0.05
    for i, t in enumerate(sent):
        assert sum(1 for s in sent[i:] if s < t + 3.0) <= 20


def test_a_stamp_earlier_than_the_last_keeps_the_slots_ordered() -> None:
    window = digest.SlidingWindow(limit=2, window_s=10.0)
    window.record(5.0)
    window.record(4.0)
    assert list(window.sent) == [5.0, 5.0] and window.next_free_at(6.0) == 15.0


# ---- cutting on a character boundary ---------------------------------------------------------------------


@pytest.mark.parametrize("max_bytes", range(0, 40))
def test_truncation_never_splits_a_character_and_keeps_within_the_bytes(max_bytes: int) -> None:
    text = "库存不足：上海仓 SKU-F 缺 3 件 🚚 请补货"
    cut = digest.truncate_utf8(text, max_bytes)
    assert len(cut.encode()) <= max_bytes
    cut.encode().decode("utf-8")  # valid UTF-8
    if cut:
        assert cut.endswith("…") and text.startswith(cut[:-1])


def test_text_that_fits_is_left_alone() -> None:
    assert digest.truncate_utf8("上海", 6) == "上海"
    assert digest.truncate_utf8("上海", 5) == "…"  # the ellipsis alone is 3 bytes; no whole character fits
    assert digest.truncate_utf8("上海x", 6) == "上…"


# ---- one alert, one message ----------------------------------------------------------------------------


def test_a_single_alert_carries_its_label_text_subject_and_details() -> None:
    message = digest.single(an_alert(1), LIMIT)
    assert message.alert_ids == (an_alert(1)["event_id"],) and not message.digest
    assert message.content.splitlines() == [
        '<font color="warning">**RED: sla breach**</font>',
        "paid 1 min ago, not pushed to a warehouse",
        '> subject: <font color="comment">pdd:order-0001</font>',
        '> channel: <font color="comment">pdd</font>',
    ]
    assert message.body == {"msgtype": "markdown", "markdown": {"content": message.content}}
    cleared = digest.single(an_alert(1, cleared=True), LIMIT)
    assert cleared.content.startswith('<font color="info">**cleared: sla breach**</font>')


def test_a_huge_alert_is_cut_to_the_limit_on_a_character_boundary_keeping_label_and_subject() -> None:
    huge = an_alert(7, message="缺货" * 3000)  # 18 000 bytes of text
    huge["details"] = {f"k{i}": "值" * 200 for i in range(40)}
    content = digest.single(huge, LIMIT).content
    assert len(content.encode()) <= LIMIT
    lines = content.splitlines()
    assert lines[0] == '<font color="warning">**RED: sla breach**</font>'
    assert lines[1].startswith("缺货缺货") and lines[1].endswith("…")
    assert lines[2] == '> subject: <font color="comment">pdd:order-0007</font>'
    assert len(lines[1].encode()) >= (LIMIT - 200) // 2  # the text keeps at least half the room


@pytest.mark.parametrize("limit", [512, 600, 1000, 4096])
def test_any_alert_fits_any_allowed_limit(limit: int) -> None:
    for text in ("x" * 10_000, "库" * 5000, "a\nb" * 3000, ""):
        a = an_alert(3, message=text)
        a["subject"] = "订单" * 400
        a["details"] = {"why": "因" * 900}
        single = digest.single(a, limit, notice=digest.dropped_notice(12, 10_000))
        assert len(single.content.encode()) <= limit
        for message in digest.digests([a, an_alert(4)], limit, notice=digest.dropped_notice(1, 10)):
            assert len(message.content.encode()) <= limit


# ---- folding a storm -------------------------------------------------------------------------------------


def storm() -> list[Alert]:
    alerts = [an_alert(n, "invariant_breach", "WARNING") for n in range(0, 40)]
    alerts += [an_alert(n, "sla_breach", "RED", cleared=True) for n in range(40, 80)]
    alerts += [an_alert(n, "sla_breach", "RED") for n in range(80, 400)]
    alerts += [an_alert(n, "unroutable", "INFO") for n in range(400, 450)]
    alerts += [an_alert(n, "connector_failing", "RED") for n in range(450, 500)]
    return alerts


def test_a_storm_folds_into_digests_every_alert_once_every_message_within_the_limit() -> None:
    alerts = storm()
    messages = digest.digests(alerts, LIMIT)
    assert sorted(ids(messages)) == sorted(a["event_id"] for a in alerts)  # each exactly once
    assert all(m.digest and len(m.content.encode()) <= LIMIT for m in messages)
    everything = "\n".join(m.content for m in messages)
    assert all(f"- {a['subject']}: " in everything for a in alerts)
    assert len(messages) <= 500 * 60 // LIMIT + 1  # lines of about 60 bytes: dense, not one per alert
    assert messages[0].content.startswith('<font color="warning">**500 alerts at once** · 370 RED')


def test_digests_go_red_first_then_warning_info_and_clearings_last() -> None:
    messages = digest.digests(storm(), LIMIT)
    headers = [
        re.sub(r" \(continued\)$", "", line)
        for m in messages
        for line in m.content.splitlines()
        if "</font> · " in line and "alerts at once" not in line
    ]
    order = list(dict.fromkeys(headers))
    assert order == [
        '<font color="warning">**RED: connector failing**</font> · 50',
        '<font color="warning">**RED: sla breach**</font> · 320',
        '<font color="warning">**WARNING: invariant breach**</font> · 40',
        '<font color="info">**INFO: unroutable**</font> · 50',
        '<font color="info">**cleared: sla breach**</font> · 40',
    ]
    first_ids = messages[0].alert_ids
    assert first_ids[0] == an_alert(450, "connector_failing")["event_id"]  # oldest of the first group first


def test_a_group_split_across_messages_repeats_its_header_marked_continued() -> None:
    messages = digest.digests([an_alert(n) for n in range(300)], 1024)
    assert len(messages) > 2
    for m in messages[1:]:
        assert m.content.splitlines()[1] == '<font color="warning">**RED: sla breach**</font> · 300 (continued)'
    assert sorted(ids(messages)) == sorted(an_alert(n)["event_id"] for n in range(300))


def test_a_digest_line_shows_the_first_line_of_the_text_cut_short() -> None:
    long = an_alert(1, message="第一行很长" * 40 + "\nsecond line")
    (message,) = digest.digests([long, an_alert(2)], LIMIT)
    line = next(x for x in message.content.splitlines() if x.startswith("- pdd:order-0001"))
    assert line.endswith("…") and "second line" not in message.content
    assert len(line.encode()) <= len(b"- pdd:order-0001: ") + digest.EXCERPT_BYTES


def test_the_dropped_notice_opens_the_first_message_only() -> None:
    notice = digest.dropped_notice(7, 10_000)
    messages = digest.digests([an_alert(n) for n in range(300)], 1024, notice)
    assert messages[0].content.startswith(notice) and all(notice not in m.content for m in messages[1:])
    assert digest.dropped_notice(0, 10) == ""


# ---- planning against the budget ---------------------------------------------------------------------------


def test_within_the_budget_each_alert_goes_on_its_own_most_urgent_first() -> None:
    alerts = [an_alert(1, "unroutable", "INFO"), an_alert(2, cleared=True), an_alert(3), an_alert(4, "x", "WARNING")]
    messages = digest.plan(alerts, free=4, max_bytes=LIMIT)
    assert [m.alert_ids[0] for m in messages] == [alerts[i]["event_id"] for i in (2, 3, 0, 1)]
    assert not any(m.digest for m in messages)


def test_beyond_the_budget_the_queue_folds_and_only_the_budget_is_planned() -> None:
    alerts = storm()
    messages = digest.plan(alerts, free=2, max_bytes=LIMIT)
    assert len(messages) == 2 and all(m.digest for m in messages)
    assert messages == digest.digests(alerts, LIMIT)[:2]
    assert digest.plan(alerts, free=0, max_bytes=LIMIT) == []
    assert digest.plan([], free=20, max_bytes=LIMIT) == []
    # Just over the budget: the whole queue in one digest rather than 20 singles and one left over.
    (folded,) = digest.plan([an_alert(n) for n in range(21)], free=20, max_bytes=LIMIT)
    assert len(folded.alert_ids) == 21


# ---- a full queue ------------------------------------------------------------------------------------------


def test_a_full_queue_drops_clearings_then_the_least_severe_oldest_first() -> None:
    queue = [an_alert(1), an_alert(2, cleared=True), an_alert(3, "u", "INFO"), an_alert(4, "u", "INFO"),
             an_alert(5, "w", "WARNING"), an_alert(6)]  # fmt: skip
    kept, dropped = digest.overflow(queue, cap=3)
    assert [a["event_id"] for a in dropped] == [queue[i]["event_id"] for i in (1, 2, 3)]
    assert [a["event_id"] for a in kept] == [queue[i]["event_id"] for i in (0, 4, 5)]
    kept, dropped = digest.overflow(queue, cap=1)
    assert [a["event_id"] for a in kept] == [queue[5]["event_id"]]  # the newest RED stays
    assert digest.overflow(queue, cap=6) == (queue, [])


def test_retry_waits_double_up_to_the_cap() -> None:
    assert [digest.retry_delay(n, 1.0, 300.0) for n in range(0, 11)] == [
        0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0
    ]  # fmt: skip
    assert digest.retry_delay(10_000, 1.0, 300.0) == 300.0


def test_a_kinds_red_and_warning_alerts_side_by_side_each_get_their_header() -> None:
    """Failed before: the packer told groups apart by kind alone, so a WARNING group right after the same kind's
    RED group was printed under the RED header and its count (the key-rotation incident: jd's key expired, pdd's
    expiring)."""
    t = 1_700_000_000_000
    alerts = [alert("connector_failing", "RED", "jd/refund", "jd: refund calls failing (Invalid API Key)", t),
              alert("credential_expiring", "RED", "jd", "jd: API key expired", t + 1),
              alert("credential_expiring", "WARNING", "pdd", "pdd: API key expires in 5 d", t + 2)]  # fmt: skip
    (message,) = digest.digests(alerts, 4096)
    lines = message.content.split("\n")
    warning = next(n for n, line in enumerate(lines) if "WARNING" in line and "credential expiring" in line)
    assert lines[warning + 1].startswith("- pdd")
