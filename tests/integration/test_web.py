"""`stockflow web` in a real browser: headless Chromium loads the page and the charts render with data."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from PIL import Image

from agents.analytics import queries as dashboards
from agents.analytics.webpage import make_app
from agents.forecast import predict as forecast
from loadtest import events as ev
from streams.contract.topics import STOCK_ADJUSTMENTS
from streams.engine.producer import EventProducer
from tests.conftest import free_port
from tests.helpers import AppServer, wait_for
from tests.integration.test_dashboards import send_fixed
from tests.integration.test_refund_dashboards import H, send_refunds

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


def trace_pixels(png: Path) -> int:
    image = Image.open(png).convert("RGB")
    found = 0
    for r, g, b in image.getdata():
        if any(abs(r - cr) + abs(g - cg) + abs(b - cb) < 40 for cr, cg, cb in TRACE_COLOURS):
            found += 1
    return found


def test_the_dashboard_page_draws_every_chart_with_data(
    make_settings, start_worker, start_sink, clickhouse_server_url, tmp_path: Path
) -> None:
    settings = make_settings(clickhouse_url=clickhouse_server_url)
    start_worker(settings)
    start_sink(settings)
    send_fixed(settings)
    send_refunds(settings, ev.now_ms() - 20 * H)  # the refund dashboards' refunds, inside the page's last 24 h
    wait_for(
        lambda: dashboards.run(settings, "split_rate", {})[1][0]["routed_orders"] == 2, what="events in ClickHouse"
    )
    wait_for(lambda: dashboards.run(settings, "refund_mismatches", {})[1], what="refund events in ClickHouse")
    # Every SQL dashboard, and beside them the cards the page computes in Python (the forecast).
    cards = [d.describe() for d in dashboards.load_all().values()] + [forecast.chart_card()]
    charted = [c for c in cards if c["chart"]["kind"] != "table"]

    server = AppServer(make_app(settings), free_port())
    try:
        page = f"{server.url}/?sku=SKU-D1&refresh=60000"
        dom = browse(page, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        html = dom.stdout
        assert 'data-ready="1"' in html, html[-3000:]
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
        dom = browse(f"{server.url}/?refresh=60000", "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        html = dom.stdout
        assert 'data-ready="1"' in html, html[-3000:]
        assert "pwned" not in html.split("<body", 1)[1].split(">", 1)[0], "the SKU's markup ran in the page"
        assert '<img src="x"' not in html and "&lt;img src=x onerror" in html  # shown, as text
    finally:
        server.stop()
