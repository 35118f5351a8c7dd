"""stockflow: one stock pool for every channel, on Kafka."""

from __future__ import annotations

import os
import sys
import time

import typer
from rich.console import Console
from rich.table import Table

from streams.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help=__doc__)
dev = typer.Typer(no_args_is_help=True, help="The local stack: Kafka (KRaft) and ClickHouse server.")
topics = typer.Typer(no_args_is_help=True, help="Topics of the contract.")
app.add_typer(dev, name="dev")
app.add_typer(topics, name="topics")
console = Console()


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


@dev.command("up")
def dev_up(
    clickhouse_server: bool = typer.Option(
        False, "--clickhouse-server", help="Also start a ClickHouse server (server backend)."
    ),
) -> None:
    """Start a single-node Kafka broker on 127.0.0.1 (and optionally a ClickHouse server)."""
    from streams.localclickhouse import LocalClickHouseServer
    from streams.localkafka import LocalKafka, MissingTool

    settings = Settings()
    try:
        console.print(LocalKafka(settings).up())
        if clickhouse_server:
            console.print(LocalClickHouseServer(settings).up())
    except (MissingTool, RuntimeError) as exc:
        _fail(str(exc))


@dev.command("down")
def dev_down() -> None:
    """Stop what ``dev up`` started."""
    from streams.localclickhouse import LocalClickHouseServer
    from streams.localkafka import LocalKafka

    settings = Settings()
    stopped_kafka = LocalKafka(settings).down()
    stopped_ch = LocalClickHouseServer(settings).down()
    console.print(f"Kafka: {'stopped' if stopped_kafka else 'was not running'}")
    console.print(f"ClickHouse server: {'stopped' if stopped_ch else 'was not running'}")


@dev.command("status")
def dev_status() -> None:
    """Say what runs where, and whether the broker answers metadata requests."""
    from streams import procs
    from streams.localclickhouse import LocalClickHouseServer
    from streams.localkafka import LocalKafka, broker_metadata

    settings = Settings()
    table = Table("service", "state", "where")
    kafka = LocalKafka(settings)
    pid = kafka.running_pid()
    try:
        md = broker_metadata(settings.bootstrap, timeout_s=3)
        answer = f"answers metadata: cluster {md['cluster_id']}, {md['topics']} topics"
    except Exception as exc:
        answer = f"no answer ({type(exc).__name__})"
    origin = "external" if settings.kafka_bootstrap else (f"pid {pid}" if pid else "not running")
    table.add_row("kafka", f"{origin}; {answer}", settings.bootstrap)
    ch = LocalClickHouseServer(settings)
    ch_pid = procs.read_pid(ch.pid_file)
    table.add_row("clickhouse-server", f"pid {ch_pid}" if ch_pid else "not running", ch.url)
    table.add_row("clickhouse (configured)", "", settings.clickhouse_url)
    console.print(table)


@dev.command("fetch")
def dev_fetch() -> None:
    """Resolve the Kafka broker jars with Maven (done by ``dev up`` when needed)."""
    from streams.localkafka import LocalKafka, MissingTool

    try:
        console.print(f"Kafka jars in {LocalKafka(Settings()).fetch()}")
    except (MissingTool, RuntimeError) as exc:
        _fail(str(exc))


@topics.command("create")
def topics_create() -> None:
    """Create every contract topic that does not exist yet."""
    from streams.topics import ensure_topics

    created = ensure_topics(Settings())
    console.print(f"created {len(created)} topics" + (f": {', '.join(created)}" if created else ""))


@topics.command("contract")
def topics_contract(markdown: bool = typer.Option(False, help="Print a Markdown table.")) -> None:
    """The topic contract: key, partitions, schema files and writer of every topic."""
    from streams.topics import contract_rows

    rows = contract_rows(Settings())
    header = ("topic", "direction", "key", "partitions", "schema", "written by")
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(f"`{row[0]}`" if i == 0 else c for i, c in enumerate(row)) + " |")
        return
    table = Table(*header)
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.command()
def worker() -> None:
    """Run a stockflow worker (Faust) against the configured broker and ClickHouse."""
    import faust

    from streams.app import create_app
    from streams.topics import ensure_topics

    settings = Settings()
    ensure_topics(settings)
    faust_app = create_app(settings)
    worker = faust.Worker(faust_app, loglevel=settings.log_level, quiet=True)
    # Faust's progress spinner sets the root logger to DEBUG, so every library's debug call builds
    # a log record: a quarter of the worker's CPU under load. No spinner, WARN stays WARN.
    worker.spinner = None
    worker.execute_from_commandline()


@app.command()
def intake(
    port: int = typer.Option(None, help="Port (default: STOCKFLOW_INTAKE_PORT)."),
    host: str = typer.Option(None, help="Address (default: STOCKFLOW_INTAKE_HOST)."),
) -> None:
    """Serve the HTTP intake: channel connectors and the WMS post notifications as JSON."""
    from streams.intake import serve
    from streams.topics import ensure_topics

    settings = Settings()
    overrides = {k: v for k, v in (("intake_port", port), ("intake_host", host)) if v is not None}
    settings = settings.model_copy(update=overrides)
    try:
        ensure_topics(settings)
    except Exception as exc:
        _fail(f"no broker at {settings.bootstrap}: {exc}")
    console.print(f"intake on http://{settings.intake_host}:{settings.intake_port}/v1/channels/<channel>/<kind>")
    serve(settings)


override = typer.Typer(no_args_is_help=True, help="VIP overrides: release locked stock to a VIP order.")
clock = typer.Typer(
    no_args_is_help=True, help="The pipeline clock (drills and tests; needs STOCKFLOW_CLOCK_CONTROL=1)."
)
app.add_typer(override, name="override")
app.add_typer(clock, name="clock")


def _worker_view(path: str) -> None:
    import json

    import httpx

    settings = Settings()
    url = f"http://{settings.web_host}:{settings.web_port}{path}"
    try:
        response = httpx.get(url, timeout=10, follow_redirects=True)
    except httpx.HTTPError as exc:
        _fail(f"no worker answers at {url}: {exc}")
    if response.status_code == 404:
        _fail(f"not known: {path}")
    print(json.dumps(response.json(), ensure_ascii=False, indent=2))


@app.command()
def stock(sku: str) -> None:
    """A SKU's availability now, from the worker that owns it."""
    _worker_view(f"/stock/{sku}")


@app.command()
def order(order_id: str = typer.Argument(..., help="<channel>:<channel_order_id>")) -> None:
    """An order's state now, from the worker that owns it."""
    _worker_view(f"/orders/{order_id}")


def _send_override(action: str, override_id: str, sku: str, qty: int, vip_order: str, operator: str,
                   reason: str) -> None:  # fmt: skip
    from loadtest.events import now_ms
    from streams.producer import EventProducer
    from streams.topics import OPS_OVERRIDES

    producer = EventProducer(Settings())
    producer.send(OPS_OVERRIDES.name, sku, "VipOverride", {
        "event_id": f"{override_id}:{action}:{operator}:{now_ms()}", "event_time_ms": now_ms(),
        "override_id": override_id, "action": action, "sku": sku, "qty": qty, "vip_order_id": vip_order,
        "operator": operator, "reason": reason,
    })  # fmt: skip
    producer.flush()
    console.print(f"{action} {override_id} sent; the outcome is written to audit.overrides")


@override.command("request")
def override_request(
    override_id: str = typer.Option(..., "--id"),
    sku: str = typer.Option(...),
    qty: int = typer.Option(..., min=1),
    vip_order: str = typer.Option(..., help="<channel>:<channel_order_id> of the VIP order"),
    requester: str = typer.Option(...),
    reason: str = typer.Option(...),
) -> None:
    """Ask to release locked stock to a VIP order (nothing moves until someone else approves)."""
    _send_override("REQUEST", override_id, sku, qty, vip_order, requester, reason)


@override.command("approve")
def override_approve(
    override_id: str = typer.Option(..., "--id"),
    sku: str = typer.Option(...),
    approver: str = typer.Option(..., help="Must differ from the requester."),
) -> None:
    """Approve a requested override; the pool applies it and audits who, when, why, how much."""
    _send_override("APPROVE", override_id, sku, 0, "", approver, "")


@clock.command("set")
def clock_set(offset_minutes: float = typer.Argument(..., help="Minutes ahead of wall time.")) -> None:
    """Move the pipeline clock to wall time + OFFSET_MINUTES (it never moves back)."""
    from loadtest.events import now_ms
    from streams.producer import EventProducer
    from streams.topics import OPS_CLOCK

    producer = EventProducer(Settings())
    offset = int(offset_minutes * 60_000)
    producer.send(OPS_CLOCK.name, "clock", "ClockAdvanced",
                  {"event_id": f"clock:{offset}", "event_time_ms": now_ms(), "offset_ms": offset})  # fmt: skip
    producer.flush()
    console.print(f"pipeline clock set to wall time + {offset_minutes} min")


@app.command()
def dash(
    name: str = typer.Argument("", help="Dashboard name; leave out to list them."),
    since: str = typer.Option(None, "--from", help="Start: now, -24h, 2026-11-11T00:00 or epoch ms."),
    until: str = typer.Option(None, "--to", help="End (same forms)."),
    channel: str = typer.Option(None, help="One channel."),
    warehouse: str = typer.Option(None, help="One warehouse id."),
    sku: str = typer.Option(None, help="One SKU."),
    by: str = typer.Option(None, help="flow_time: group by stage|channel|warehouse|hour."),
    threshold: int = typer.Option(None, help="low_stock: threshold."),
    output: str = typer.Option("table", "--format", help="table, csv or json."),
    grafana: str = typer.Option(None, "--export-grafana", help="Write every dashboard as one Grafana JSON model."),
) -> None:
    """Print an ops dashboard (one SQL file in dashboards/) as a table, CSV or JSON."""
    import csv
    import json

    from streams import dashboards

    settings = Settings()
    if grafana:
        model = dashboards.grafana_dashboard(settings)
        with open(grafana, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(model, ensure_ascii=False, indent=2) + "\n")
        console.print(f"wrote {len(model['panels'])} panels to {grafana}")
        return
    if not name:
        table = Table("dashboard", "what it shows", "parameters")
        for dashboard in dashboards.load_all().values():
            table.add_row(dashboard.name, dashboard.title, ", ".join(dashboard.params))
        console.print(table)
        return
    if output not in ("table", "csv", "json"):
        _fail(f"--format must be table, csv or json, not {output!r}")
    options = {"from_ms": since, "to_ms": until, "channel": channel, "warehouse": warehouse, "sku": sku, "by": by,
               "threshold": threshold}  # fmt: skip
    given = {k: str(v) for k, v in options.items() if v is not None}
    try:
        dashboard, rows = dashboards.run(settings, name, given)
    except dashboards.DashboardError as exc:
        _fail(str(exc))
    except Exception as exc:  # ClickHouse unreachable or refusing
        _fail(f"could not query ClickHouse at {settings.clickhouse_url}: {exc}")
    columns = list(rows[0]) if rows else []
    if output == "json":
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    elif output == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    else:
        table = Table(*columns, title=dashboard.title, caption=f"{len(rows)} rows")
        for row in rows:
            table.add_row(*(str(row[c]) for c in columns))
        console.print(table)


@app.command()
def web(port: int = typer.Option(8050, help="Port of the dashboard page.")) -> None:
    """Serve the dashboards as a live HTML page with charts."""
    from streams.webpage import serve

    settings = Settings()
    console.print(f"dashboards on http://{settings.web_host}:{port}/")
    serve(settings, port)


@app.command()
def bench(
    profile: str = typer.Option("double11", help="steady, double11 or flash-sale."),
    rate: float = typer.Option(500.0, min=1, help="Orders per second at the profile's 100%."),
    duration: float = typer.Option(60.0, min=5, max=3600, help="Seconds of traffic."),
    seed: int = typer.Option(11, help="Same seed, same traffic."),
    workers: int = typer.Option(1, min=1, max=8, help="Workers in the consumer group."),
    hold_commands: int = typer.Option(50_000, help="Backlog for the hold-agent throughput figure (0: skip)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (progress goes to stderr)."),
) -> None:
    """Load-test the pipeline with Double-11 traffic and compare it with a plain Kafka loop."""
    import json

    from loadtest import bench as bench_
    from loadtest.generator import PROFILES
    from loadtest.stack import local_stack

    if profile not in PROFILES:
        _fail(f"--profile must be one of {', '.join(PROFILES)}")
    settings = Settings()
    out = Console(stderr=True) if as_json else console
    try:
        with local_stack(settings, out):
            figures, _ = bench_.run_bench(settings, profile, rate, duration, seed, workers, out, hold_commands)
    except Exception as exc:  # a broker that does not start, a worker that dies: say so, no traceback
        _fail(str(exc))
    series = figures.pop("series")
    if as_json:
        print(json.dumps(figures))
        return
    console.print(bench_.summary_table(figures))
    chart = bench_.write_chart(
        {**figures, "series": series}, settings.home_dir / "bench" / f"bench-{int(time.time())}.html"
    )
    console.print(f"chart: {chart}")


@app.command("bench-recovery")
def bench_recovery(
    skus: int = typer.Option(100_000, min=1, help="Keys in the holds_by_sku table."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Time a worker's recovery after kill -9 with a large table (restart, and rebuild from the changelog)."""
    import json

    from loadtest import recovery
    from loadtest.stack import local_stack

    settings = Settings()
    out = Console(stderr=True) if as_json else console
    log_dir = settings.home_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with local_stack(settings, out), out.status(f"filling {skus:,} SKUs, then kill -9 and restart..."):
        results = recovery.run(settings, skus, log_dir)
    if as_json:
        print(json.dumps(results))
    else:
        console.print(results)


@app.command("bench-sink")
def bench_sink(
    events: int = typer.Option(100_000, help="Events to sink (about two rows each)."),
    seed: int = typer.Option(11, help="Seed of the generated events."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Measure the ClickHouse sink against plain batched inserts, on both backends, in one run."""
    import json

    from loadtest import sink_bench
    from loadtest.stack import local_stack

    settings = Settings()
    quiet = Console(stderr=True) if as_json else console
    given = settings.clickhouse_url if settings.clickhouse_url.startswith("clickhouse://") else ""
    with local_stack(settings, quiet, clickhouse_server=not given) as started_url:
        results = sink_bench.run(settings, given or started_url, events, seed, quiet)
    if as_json:
        print(json.dumps(results))
    else:
        sink_bench.print_results(results, console)


@app.command()
def check(
    wait: float = typer.Option(0.0, help="Keep re-checking up to this many seconds while there is drift."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Audit the stock pool against the topics with independent code; exit 1 on any drift."""
    import json

    from streams.checker import audit

    settings = Settings()
    deadline = time.monotonic() + wait
    report = audit(settings)
    while not report.ok and time.monotonic() < deadline:
        time.sleep(1.0)
        report = audit(settings)
    if as_json:
        print(json.dumps(report.summary()))
    else:
        table = Table("check", "result", title="stockflow check")
        for name, value in report.summary().items():
            table.add_row(name, str(value))
        console.print(table)
        for sa in report.drifted[:20]:
            console.print(
                f"[red]drift[/red] {sa.sku}: on-hand table {sa.table_on_hand} vs rebuilt {sa.expected_on_hand}; "
                f"open table {sa.table_open} vs rebuilt {sa.expected_open}; "
                f"missing {sa.open_keys_missing_in_table[:5]} extra {sa.open_keys_only_in_table[:5]}"
            )
        for label, items in (("lost order", report.lost_orders), ("double hold", report.double_holds),
                             ("rejected but held", report.rejected_but_held)):  # fmt: skip
            for item in items[:20]:
                console.print(f"[red]{label}[/red] {item}")
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def demo(
    rate: float = typer.Option(40.0, min=1, help="Orders per second at the Double-11 peak."),
    duration: float = typer.Option(60.0, min=10, help="Seconds of traffic."),
) -> None:
    """A Double-11 minute on the local stack: orders flowing, zero oversell, where time goes."""
    from streams.demo import run_demo

    sys.exit(run_demo(Settings(), console, rate, duration))


def main() -> None:
    # Faust and its libraries are chatty on import; keep the CLI readable.
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    started = time.monotonic()
    try:
        app()
    finally:
        if os.environ.get("STOCKFLOW_TIMING"):
            console.print(f"[dim]{time.monotonic() - started:.1f}s[/dim]")


if __name__ == "__main__":
    main()
