"""Load-test commands (``bench``, ``bench-recovery``, ``bench-sink``, ``demo``, ``plan``), added to the
``stockflow`` command through the ``stockflow.commands`` entry point: the product never imports
the load test."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer
from rich.console import Console

from loadtest import forecast_backtest
from streams.cli import console, fail
from streams.settings import Settings


def bench(
    profile: str = typer.Option("double11", help="steady, double11 or flash-sale."),
    rate: float = typer.Option(500.0, min=1, help="Orders per second at the profile's 100%."),
    duration: float = typer.Option(60.0, min=5, max=3600, help="Seconds of traffic."),
    seed: int = typer.Option(11, help="Same seed, same traffic."),
    workers: int = typer.Option(1, min=1, max=8, help="Workers in the consumer group."),
    hold_commands: int = typer.Option(50_000, help="Backlog for the hold-agent throughput figure (0: skip)."),
    marketplaces: str = typer.Option(
        "high-limits",
        help="high-limits: the marketplace simulator allows every app 1,000 calls/s; platform-limits: "
        "each platform's documented per-app limit; off: no simulator, no connectors (the pipeline alone).",
    ),
    join_at: float | None = typer.Option(None, min=0, help="Start one more worker this many seconds into the "
                                         "traffic (the rebalance pause under load)."),
    leave_at: float | None = typer.Option(None, min=0, help="SIGTERM the newest running worker this many seconds "
                                          "into the traffic (one must stay)."),
    hot_sku: str = typer.Option("", help="The live-stream SKU of --hot-share (default LOAD-<seed>-HOT)."),
    hot_share: float = typer.Option(0.0, min=0, max=1, help="Share of orders that are one unit of --hot-sku alone "
                                    "(the hot-SKU ceiling)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (progress goes to stderr)."),
) -> None:
    """Load-test the pipeline with Double-11 traffic and compare it with a plain Kafka loop; channel stock
    and refunds go to the local marketplace simulator through the outbound connectors. Reports each
    worker's orders/s and every process's CPU per order, and what that predicts on more cores."""
    import json

    from loadtest import bench as bench_
    from loadtest.generator import PROFILES
    from loadtest.stack import local_stack

    if profile not in PROFILES:
        fail(f"--profile must be one of {', '.join(PROFILES)}")
    if marketplaces not in bench_.MARKETPLACES:
        fail(f"--marketplaces must be one of {', '.join(bench_.MARKETPLACES)}")
    if any(at is not None and at >= duration for at in (join_at, leave_at)):
        fail("--join-at and --leave-at must fall within --duration")
    if leave_at is not None and workers < 2 and (join_at is None or join_at >= leave_at):  # noqa: PLR2004
        fail("--leave-at needs a worker to stay: --workers 2 or more, or --join-at before it")
    changes = bench_.Changes(join_at, leave_at)
    settings = Settings()
    out = Console(stderr=True) if as_json else console
    try:
        with local_stack(settings, out):
            figures, _ = bench_.run_bench(settings, profile, rate, duration, seed, workers, console=out,
                                            hold_commands=hold_commands,
                                            channel_qps=bench_.MARKETPLACES[marketplaces], changes=changes,
                                            hot_sku=hot_sku, hot_share=hot_share)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - a broker that does not start, a worker that dies: say so, no traceback
        fail(str(exc))
    series = figures.pop("series")
    # The run with its per-second series (sent, decided, p99, lag) stays beside the chart, for
    # comparing runs afterwards; stdout keeps the figures alone.
    run_file = settings.home_dir / "bench" / f"bench-{int(time.time())}.json"
    run_file.parent.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps({**figures, "series": series}))
    if as_json:
        print(json.dumps({**figures, "run_file": str(run_file)}))
        return
    console.print(bench_.summary_table(figures))
    console.print(bench_.process_table(figures))
    chart = bench_.write_chart({**figures, "series": series}, run_file.with_suffix(".html"))
    console.print(f"chart: {chart}  series: {run_file}")


def bench_recovery(
    skus: int = typer.Option(100_000, min=1, help="SKUs in the stock_by_sku store."),
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


def demo(
    rate: float = typer.Option(
        40.0, min=1, help="Orders per second at the Double-11 curve's 100% (bursts twice it; the average about half)."
    ),
    duration: float = typer.Option(60.0, min=10, help="Seconds of traffic."),
) -> None:
    """A Double-11 minute on the local stack: orders flowing, zero oversell, where time goes."""
    from loadtest.demo import run_demo

    sys.exit(run_demo(Settings(), console, rate, duration))


def bench_engine(
    mode: str = typer.Option("pool", help="pool: the pool alone; pipeline: orders through lifecycle and pool; "
                                          "hot-sku: every order for one SKU."),
    commands: int = typer.Option(200_000, min=1_000, help="pool: RESERVE commands; pipeline and hot-sku: orders."),
    skus: int = typer.Option(1_000, min=1, help="SKUs they spread over (hot-sku: its units)."),
    buckets: int = typer.Option(
        0, min=0, max=64, help="hot-sku: split the SKU into K stock buckets first (0: not split; 1 is not a split)."
    ),
    guarantee: str = typer.Option("both", help="pool: exactly_once, at_least_once or both."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """The engine alone, no sink: the pool's stateful events/s against a plain Kafka loop, the order
    pipeline's orders/s and CPU per order, or a hot SKU's fairness and bounded state."""
    import json

    from loadtest import engine_bench
    from loadtest.stack import local_stack

    chosen = ("exactly_once", "at_least_once") if guarantee == "both" else (guarantee,)
    if any(g not in ("exactly_once", "at_least_once") for g in chosen):
        fail("--guarantee must be exactly_once, at_least_once or both")
    if mode not in ("pool", "pipeline", "hot-sku"):
        fail("--mode must be pool, pipeline or hot-sku")
    if buckets and (mode != "hot-sku" or buckets < 2):  # noqa: PLR2004 - one bucket is the SKU itself
        fail("--buckets needs --mode hot-sku and at least 2 buckets")
    settings = Settings()
    out = Console(stderr=True) if as_json else console
    with local_stack(settings, out), out.status(f"{mode}: {commands:,}..."):
        if mode == "pool":
            results = engine_bench.run(settings, commands, skus, chosen)
        elif mode == "pipeline":
            results = engine_bench.run_pipeline(settings, commands, skus)
        else:
            results = engine_bench.run_hot_sku(settings, commands, skus, buckets)
    if as_json:
        print(json.dumps(results))
    else:
        console.print_json(data=results)


drill = typer.Typer(no_args_is_help=True, help="Incident drills on the local stack and the marketplace simulator.")


@drill.command("key-rotation")
def key_rotation(
    refunds: int = typer.Option(317, min=1, help="Refunds in flight (the seed's incident: 317)."),
    spread: float = typer.Option(20.0, min=1, help="Seconds over which the refund requests arrive."),
    rotate_after: float = typer.Option(5.0, min=0, help="Seconds into the requests when jd rotates its key."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """A marketplace rotates its API key while refunds flow: every refund call fails "Invalid API Key",
    an alert is raised, the key is updated, the failed queue replayed. Exit 1 unless every refund was
    paid exactly once."""
    import json

    from loadtest.drill import key_rotation as run_drill

    out = Console(stderr=True) if as_json else console
    result = run_drill(Settings(), refunds, spread, rotate_after, out)
    if as_json:
        print(json.dumps(result.to_json()))
    else:
        console.print_json(data=result.to_json())
    if not result.ok:
        raise typer.Exit(1)


# A module-level default: typer reads a Path option's declaration from it (ruff B008 allows only this).
_CONSTANTS = typer.Option(None, help="A capacity.toml of your own (default: loadtest/capacity.toml).")


def plan(
    orders_per_s: float = typer.Option(..., "--orders-per-s", min=1, help="The target peak, orders a second."),
    hot_sku_share: float = typer.Option(0.0, "--hot-sku-share", min=0, max=1,
                                        help="Share of the peak's orders for the hottest SKU (0.02: 2%)."),
    constants: Path | None = _CONSTANTS,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    markdown: bool = typer.Option(False, "--markdown", help="The table in Markdown (docs/capacity.md)."),
) -> None:
    """What a target peak needs: partitions, workers, broker nodes, sinks, ClickHouse shards and cores, and
    the hottest SKU against one partition's ceiling with and without stock buckets, from the measured
    constants in loadtest/capacity.toml (docs/capacity.md explains the model)."""
    import json

    from pydantic import ValidationError

    from loadtest import capacity

    try:
        c = capacity.load_constants(constants)
    except (OSError, ValueError, ValidationError) as exc:
        fail(f"cannot read the constants: {exc}")
    result = capacity.plan(orders_per_s, hot_sku_share, c)
    if as_json:
        print(json.dumps({**result.to_json(), "assumptions": capacity.assumptions(c)}))
    elif markdown:
        print(capacity.plan_markdown(result, c), end="")
    else:
        console.print(capacity.plan_table(result, c))
        console.print("[bold]assumptions[/bold]")
        for line in capacity.assumptions(c):
            console.print(f"- {line}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the load-test commands to ``app`` (called by ``stockflow`` for its entry point)."""
    app.command()(bench)
    app.command("bench-recovery")(bench_recovery)
    app.command("bench-sink")(bench_sink)
    app.command("bench-engine")(bench_engine)
    app.command()(demo)
    app.command()(plan)
    app.add_typer(drill, name="drill")
    forecast_backtest.register()  # `stockflow forecast backtest`: the forecast group is the product's
