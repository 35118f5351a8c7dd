"""`stockflow web` in a real browser: headless Chromium loads the page and the charts render with data; the
control tower's cards (connector health board, focus pool, shadow runs) show their rows."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from agents.analytics import facts
from agents.analytics import queries as dashboards
from agents.analytics.webpage import make_app
from agents.channels.outbound import CallOutcome
from agents.forecast import predict as forecast
from agents.shadow import card as shadow_card
from loadtest import events as ev
from streams.contract.records import ConnectorCalled
from streams.contract.topics import CONNECTOR_CALLS, STOCK_ADJUSTMENTS
from streams.engine.producer import EventProducer
from streams.settings import Settings
from streams.stores.clickhouse import open_clickhouse
from tests.conftest import free_port
from tests.helpers import AppServer, wait_for
from tests.integration.test_dashboards import send_fixed
from tests.integration.test_refund_dashboards import H, send_refunds
from tests.unit.shadow.sample_report import shadow_report

pytestmark = pytest.mark.broker
CHROMIUM = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# The first trace colours of Plotly's default palette: a chart with data paints bars and lines in these.
TRACE_COLOURS = [(0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C), (0xD6, 0x27, 0x28)]


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return name
    pytest.fail("Debian's chromium is needed for the page check (scripts/setup.sh installs it)")


def browse(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    # The virtual time budget lets the page's scripts fetch and draw before the DOM is dumped.
    command = [chromium(), *CHROMIUM, "--virtual-time-budget=30000", "--window-size=1600,4200", *extra, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def drawn_page(url: str) -> str:
    """The page's DOM once its scripts have drawn every card."""
    dom = browse(url, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-ready="1"' in dom.stdout, dom.stdout[-3000:]
    return dom.stdout


def trace_pixels(png: Path) -> int:
    image = Image.open(png).convert("RGB")
    found = 0
    for r, g, b in image.getdata():
        if any(abs(r - cr) + abs(g - cg) + abs(b - cb) < 40 for cr, cg, cb in TRACE_COLOURS):
            found += 1
    return found


EVIL = "<img src=x onerror=document.body.dataset.pwned=1>"


def connector_calls(now_ms: int) -> list[ConnectorCalled]:
    """jd's refund endpoint failing for a while (its key rotated), tmall's stock calls fine."""
    out = []
    for i in range(6):
        call = CallOutcome("jd", "refund", now_ms - 600_000 + i * 1000, key_fingerprint="fp-jd-1",
                           key_expires_ms=now_ms + 9 * 86_400_000 + 60_000)  # fmt: skip
        call.latencies_ms.append(40.0 + i)
        failed = i < 4
        if failed:
            call.failed_attempt(f"HTTP 401 Invalid API Key {EVIL}", call.started_ms + 40)
        out.append(call.record("failed" if failed else "ok", "connector_credentials", 1, call.started_ms + 50, str(i)))
    for i in range(3):
        call = CallOutcome("tmall", "stock", now_ms - 300_000 + i * 1000, key_fingerprint="fp-tm-1")
        call.latencies_ms.append(25.0)
        out.append(call.record("ok", "", 1, call.started_ms + 30, f"t{i}"))
    return out


def send_connector_calls(settings: Settings, now_ms: int) -> None:
    producer = EventProducer(settings)
    for record in connector_calls(now_ms):
        producer.send(CONNECTOR_CALLS.name, record["channel"], "ConnectorCalled", record)
    producer.flush()


def focus_scores(now_ms: int) -> list[dict[str, object]]:
    return [
        {"event_id": f"jd:F{i}:health", "event_time_ms": now_ms - 3_600_000 + i, "order_id": f"jd:F{i}",
         "channel": "jd", "customer_id": f"C{i}", "score": 41.0 + i, "focus": True, "focus_below": 60.0,
         "breakdown": {"promptness": 10.0, "address": 5.0, "complexity": 10.0, "returns": 16.0 + i, "coupon": 0.0},
         "notes": ["address without unit, room", EVIL], "paid_after_ms": 1_260_000, "returns": 2}
        for i in range(2)
    ]  # fmt: skip


def seed_control_tower(settings: Settings, now_ms: int) -> None:
    """The health board's and the focus pool's rows straight into ClickHouse, as the sink writes them."""
    tables: dict[str, dict[str, list[Any]]] = {}
    events = [("ConnectorCalled", r) for r in connector_calls(now_ms)]
    events += [("OrderHealthScored", r) for r in focus_scores(now_ms)]
    for event_type, record in events:
        for table, row in facts.rows_of(event_type, dict(record)):
            columns = tables.setdefault(table, {name: [] for name in row})
            for name, value in row.items():
                columns[name].append(value)
    ch = open_clickhouse(settings)
    try:
        for table, columns in tables.items():
            ch.insert(table, columns)
    finally:
        ch.close()


def test_the_control_tower_cards_show_their_rows_escaped(make_settings, clickhouse_server_url, tmp_path: Path) -> None:
    """The connector health board, the focus pool and the shadow runs, each with rows, in the DOM and on a
    screenshot; a marketplace's error text and an order note full of markup stay text."""
    settings = make_settings(clickhouse_url=clickhouse_server_url)
    seed_control_tower(settings, ev.now_ms())
    board = dashboards.run(settings, "connector_health", {})[1]
    assert {(r["channel"], r["endpoint"], r["failed_calls"]) for r in board} == {("jd", "refund", 4),
                                                                                 ("tmall", "stock", 0)}  # fmt: skip
    server = AppServer(make_app(settings, shadow_rows=lambda _s: shadow_card.card_rows([shadow_report()])),
                       free_port())  # fmt: skip
    try:
        page = f"{server.url}/?refresh=60000"
        html = drawn_page(page)

        def card(name: str) -> str:
            found = re.search(rf'<section id="card-{name}"[^>]*data-points="(\d+)".*?</section>', html, re.S)
            assert found and int(found.group(1)) > 0, f"{name} shows no rows"
            return found.group(0)

        health = card("connector_health")
        assert re.search(r"<td>jd</td><td>refund</td><td>6</td><td>0\.3333</td>", health), health[:3000]
        assert "<td>tmall</td><td>stock</td><td>3</td><td>1</td>" in health and "fp-jd-1" in health
        assert "HTTP 401 Invalid API Key &lt;img src=x onerror" in health
        assert re.search(r"<td>fp-jd-1</td><td>[^<]+</td><td>9</td>", health), "the key's days left"
        focus = card("focus_pool")
        assert "<td>jd:F0</td>" in focus and "<td>jd:F1</td>" in focus and "&lt;img src=x" in focus
        shadow = card("shadow")
        assert "<td>near</td>" in shadow and "WH-SH -&gt; WH-HZ (4)" in shadow and "jd:R1: WH-SH -&gt; WH-HZ" in shadow
        assert "310.5 km avg" in shadow and "188.2 km avg" in shadow
        assert "pwned" not in html.split("<body", 1)[1].split(">", 1)[0], "markup from the data ran in the page"
        assert '<img src="x"' not in html

        png = tmp_path / "control-tower.png"
        shot = browse(page, f"--screenshot={png}")
        assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
        assert Image.open(png).size == (1600, 4200)
    finally:
        server.stop()


def test_the_dashboard_page_draws_every_chart_with_data(
    make_settings, start_worker, start_sink, clickhouse_server_url, tmp_path: Path
) -> None:
    settings = make_settings(clickhouse_url=clickhouse_server_url)
    start_worker(settings)
    start_sink(settings)
    send_fixed(settings)
    send_refunds(settings, ev.now_ms() - 20 * H)  # the refund dashboards' refunds, inside the page's last 24 h
    send_connector_calls(settings, ev.now_ms())  # the connector health board, failed calls, calls per minute
    wait_for(
        lambda: dashboards.run(settings, "split_rate", {})[1][0]["routed_orders"] == 2, what="events in ClickHouse"
    )
    wait_for(lambda: dashboards.run(settings, "refund_mismatches", {})[1], what="refund events in ClickHouse")
    wait_for(lambda: dashboards.run(settings, "connector_minutes", {})[1], what="connector calls in ClickHouse")
    # Dead letters reach ClickHouse a sink batch after the events that caused them.
    wait_for(lambda: dashboards.run(settings, "dead_letters", {})[1], what="dead letters in ClickHouse")
    # Every SQL dashboard, and beside them the cards the page computes in Python (the forecast, the shadows).
    cards = [d.describe() for d in dashboards.load_all().values()] + [forecast.chart_card(), shadow_card.chart_card()]
    charted = [c for c in cards if c["chart"]["kind"] != "table"]

    server = AppServer(make_app(settings, shadow_rows=lambda _s: shadow_card.card_rows([shadow_report()])),
                       free_port())  # fmt: skip
    try:
        page = f"{server.url}/?sku=SKU-D1&refresh=60000"
        html = drawn_page(page)
        drawn = len(re.findall(r'class="[^"]*js-plotly-plot', html))
        assert drawn == len(charted), f"{drawn} charts drawn, {len(charted)} expected"
        for card in cards:
            points = re.search(rf'id="card-{card["name"]}"[^>]*data-points="(\d+)"', html)
            assert points and int(points.group(1)) > 0, f"{card['name']} shows no data"
        predicted = httpx.get(f"{server.url}/api/forecast", timeout=60).json()["rows"]
        assert any(r["actual"] for r in predicted) and any(r["forecast"] for r in predicted[-24:]), predicted
        assert not re.search(r'<div class="error">(?!\$\{)', html), "a dashboard answered with an error"

        png = tmp_path / "dashboards.png"
        shot = browse(page, f"--screenshot={png}")
        assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
        assert trace_pixels(png) > 5000, "the screenshot shows (almost) no coloured bars or lines"
    finally:
        server.stop()


EVIL_SKU = "SKU-<img src=x onerror=document.body.dataset.pwned=1>"


def test_a_sku_is_shown_as_text_never_run_as_markup(
    make_settings, start_worker, start_sink, clickhouse_server_url, tmp_path: Path
) -> None:
    settings = make_settings(clickhouse_url=clickhouse_server_url)
    start_worker(settings)
    start_sink(settings)
    producer = EventProducer(settings)
    # Below the safety threshold: the SKU shows in the pause history (a table) and low stock (a chart).
    producer.send(STOCK_ADJUSTMENTS.name, EVIL_SKU, "StockAdjusted", ev.stock_adjusted(EVIL_SKU, "WH-SH", 3))
    producer.flush()
    wait_for(lambda: any(r["sku"] == EVIL_SKU for r in dashboards.run(settings, "channel_pauses", {})[1]),
             what="the SKU's pause in ClickHouse")  # fmt: skip
    server = AppServer(make_app(settings), free_port())
    try:
        html = drawn_page(f"{server.url}/?refresh=60000")
        assert "pwned" not in html.split("<body", 1)[1].split(">", 1)[0], "the SKU's markup ran in the page"
        assert '<img src="x"' not in html and "&lt;img src=x onerror" in html  # shown, as text
    finally:
        server.stop()
