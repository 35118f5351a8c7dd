"""``stockflow report connectivity`` end to end on embedded ClickHouse: a week of connector calls with the seed's
incident (jd's refund key rotated, every refund call failing for 47 minutes, then replayed) becomes the report,
and its summary reaches a local WeCom-style webhook through the notifier's delivery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from agents.alerting.digest import nbytes
from agents.channels import connectivity as cn
from streams.engine.clock import wall_ms
from tests.conftest import free_port
from tests.helpers import AppServer

ROOT = Path(__file__).resolve().parents[2]
ZONE = "Asia/Shanghai"
MIN = 60_000

# Run in a process of its own: chdb keeps one session a process.
_SEED = """
import json, sys
from agents.analytics import facts
from agents.channels.outbound import CallOutcome
from streams.settings import Settings
from streams.stores.clickhouse import open_clickhouse

start = int(sys.argv[2])
MIN = 60_000
calls = []

def call(channel, endpoint, at, outcome, *, error="", replayed=False, n=[0]):
    c = CallOutcome(channel, endpoint, at - 40, replayed=replayed, key_fingerprint="fp",
                    key_expires_ms=start + 90 * 86_400_000)
    if outcome == "ok":
        c.latencies_ms.append(40.0)
    if error:
        c.failed_attempt(error, at)
    n[0] += 1
    calls.append(c.record(outcome, "connector_credentials", 1, at, str(n[0])))

monday_1400 = start + 14 * 60 * MIN
for i in range(60):  # jd refunds fine every minute from 13:40
    call("jd", "refund", monday_1400 - 20 * MIN + i * 30_000, "ok")
for i in range(47):  # from 14:23:05 every call fails: "Invalid API Key"
    call("jd", "refund", monday_1400 + (23 + i) * MIN + 5_000, "failed", error="HTTP 200 Invalid API Key")
call("jd", "refund", monday_1400 + 70 * MIN + 10_000, "ok")  # 15:10:10, the new key set
for i in range(10):  # the failed queue replayed at 15:20; one refused again
    call("jd", "refund", monday_1400 + 80 * MIN + i * 1000, "failed" if i == 9 else "already_applied",
         error="HTTP 200 refund closed" if i == 9 else "", replayed=True)
for i in range(5):  # a lone failure on tmall is no incident
    lone = i == 2
    call("tmall", "stock", start + 2 * 86_400_000 + i * MIN, "failed" if lone else "ok", error="HTTP 503" * lone)
tables = {}
for record in calls:
    for table, row in facts.rows_of("ConnectorCalled", dict(record)):
        cols = tables.setdefault(table, {k: [] for k in row})
        for k, v in row.items():
            cols[k].append(v)
ch = open_clickhouse(Settings(clickhouse_url="chdb://" + sys.argv[1]))
for table, cols in tables.items():
    ch.insert(table, cols)
ch.close()
"""


def test_the_weekly_report_finds_the_incident_and_posts_its_summary(tmp_path: Path) -> None:
    week = cn.parse_week(cn.week_of(wall_ms() - 7 * 86_400_000, ZONE), ZONE)  # last week: complete
    chdb = tmp_path / "ch"
    seeded = subprocess.run([sys.executable, "-c", _SEED, str(chdb), str(week.start_ms)], cwd=ROOT,
                            capture_output=True, text=True, timeout=240, check=False)  # fmt: skip
    assert seeded.returncode == 0, seeded.stderr[-2000:]

    received: list[dict[str, Any]] = []

    async def robot(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    app = web.Application()
    app.router.add_post("/cgi-bin/webhook/send", robot)
    server = AppServer(app, free_port())
    env = {**os.environ, "STOCKFLOW_HOME": str(tmp_path / "home"), "STOCKFLOW_CLICKHOUSE_URL": f"chdb://{chdb}",
           "STOCKFLOW_SINK_PORT": str(free_port()),  # no sink there: the report opens the chdb folder itself
           "STOCKFLOW_WEBHOOK_URL": f"{server.url}/cgi-bin/webhook/send?key=test"}  # fmt: skip
    stockflow = [str(Path(sys.executable).with_name("stockflow"))]
    try:
        done = subprocess.run([*stockflow, "report", "connectivity", "--week", week.label, "--format", "json"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout)
        page = tmp_path / "report.html"
        html = subprocess.run([*stockflow, "report", "connectivity", "--week", week.label, "--format", "html",
                               "--no-post", "-o", str(page)], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=240, check=False)  # fmt: skip
        assert html.returncode == 0, html.stderr[-3000:]
    finally:
        server.stop()

    monday_1400 = week.start_ms + 14 * 60 * MIN
    [incident] = report["incidents"]
    assert incident["channel"] == "jd" and incident["endpoint"] == "refund"
    assert incident["start_ms"] == monday_1400 + 23 * MIN + 5_000  # the first failed call
    assert incident["end_ms"] == monday_1400 + 70 * MIN + 10_000  # the first call done after it
    assert incident["failed_calls"] == 47 and incident["last_error"] == "HTTP 200 Invalid API Key"
    by_endpoint = {(e["channel"], e["endpoint"]): e for e in report["endpoints"]}
    jd, tmall = by_endpoint["jd", "refund"], by_endpoint["tmall", "stock"]
    assert jd["calls"] == 118 and jd["failed"] == 48 and jd["incidents"] == 1
    assert jd["availability"] == round(1 - (47 * MIN + 5_000) / (7 * 86_400_000), 6)
    assert tmall["incidents"] == 0 and tmall["availability"] == 1.0 and tmall["failed"] == 1
    volume = {(f["channel"], f["reason"]): f["calls"] for f in report["failed_volume"]}
    assert volume == {("jd", "connector_credentials"): 48, ("tmall", "connector_credentials"): 1}
    assert report["replays"] == [{"channel": "jd", "endpoint": "refund", "replayed": 10, "done": 9,
                                  "still_failing": 1}]  # fmt: skip

    [message] = received
    content = message["markdown"]["content"]
    assert message["msgtype"] == "markdown" and nbytes(content) <= 4096
    assert f"Connectivity report {week.label}" in content and "incidents 1 (47 min 05 s down)" in content
    assert "replayed 10" in content and "jd refund" in content
    text = page.read_text(encoding="utf-8")
    assert f"<h1>Connectivity report {week.label}" in text and "Invalid API Key" in text
