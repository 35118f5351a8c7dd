"""stockflow: one stock pool for every channel, on Kafka.

The ``stockflow`` command, assembled from the platform's commands (``streams.cli``), each business
area's commands, the ``worker`` command, and whatever the ``stockflow.commands`` entry point group
adds (the load test registers ``bench`` and ``demo`` there).
"""

from __future__ import annotations

import logging
import os
import time
from importlib.metadata import PackageNotFoundError, entry_points, version

import typer
from rich.markup import escape

from agents.analytics import cli as analytics
from agents.audit import cli as audit
from agents.channels import cli as channels
from agents.forecast import cli as forecast
from agents.inspect import cli as inspection
from agents.intake import cli as intake
from agents.inventory import cli as inventory
from agents.orders import cli as orders
from agents.refunds import cli as refunds
from agents.shadow import cli as shadow
from streams import cli as platform
from streams.cli import console, fail
from streams.errors import StockflowError
from streams.extras import MissingExtra
from streams.logs import quiet_repeats
from streams.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help=__doc__)


def _print_version(asked: bool) -> None:
    if not asked:
        return
    try:
        console.print(f"stockflow {version('stockflow')}")
    except PackageNotFoundError:  # run from a checkout that was never installed
        console.print("stockflow (not installed: no package version)")
    raise typer.Exit()


VERSION = typer.Option(False, "--version", is_eager=True, callback=_print_version, help="Print the version and exit.")


@app.callback()
def _root(show_version: bool = VERSION) -> None:
    """stockflow: one stock pool for every channel, on Kafka."""


app.add_typer(platform.dev, name="dev")
app.add_typer(platform.topics, name="topics")
app.add_typer(platform.clock, name="clock")
app.command("settings")(platform.settings_command)
app.add_typer(inventory.override, name="override")
app.add_typer(refunds.refunds, name="refunds")
app.add_typer(channels.sim, name="sim")
app.add_typer(channels.connectors, name="connectors")
app.add_typer(channels.report, name="report")
app.add_typer(inventory.stock_app, name="stock")
app.add_typer(forecast.forecast, name="forecast")
app.add_typer(shadow.shadow, name="shadow")
app.command()(orders.order)
app.add_typer(orders.orders_app, name="orders")
app.command()(intake.intake)
app.command()(analytics.sink)
app.command()(analytics.dash)
app.command()(analytics.web)
app.command()(audit.check)
app.command()(inspection.inspect)


@app.command()
def worker() -> None:
    """Run a stockflow worker (Faust) against the configured broker and ClickHouse."""
    from streams.ports import busy_port_message, port_problem

    settings = Settings()
    # Faust would find out only after joining the group, as a long traceback.
    if problem := port_problem(settings.web_host, settings.web_port):
        fail(busy_port_message("worker", settings.web_host, settings.web_port, problem, "STOCKFLOW_WEB_PORT"))
    import faust

    from agents.worker import create_app
    from streams.contract.topics import ensure_topics
    from streams.engine.tables import ensure_table_changelogs

    class Worker(faust.Worker):
        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            # During a broker outage Faust's aiokafka clients log each failure many times a second.
            quiet_repeats(logger)

    ensure_topics(settings)
    faust_app = create_app(settings)
    ensure_table_changelogs(faust_app, settings)
    worker = Worker(faust_app, loglevel=settings.log_level, quiet=True)
    # Faust's progress spinner sets the root logger to DEBUG, so every library's debug call builds
    # a log record: a quarter of the worker's CPU under load. No spinner, WARN stays WARN.
    worker.spinner = None
    worker.execute_from_commandline()


def _plugins() -> None:
    for entry in entry_points(group="stockflow.commands"):
        entry.load()(app)


def main() -> None:
    # Faust and its libraries are chatty on import; keep the CLI readable.
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    started = time.monotonic()
    _plugins()
    try:
        app()
    except (MissingExtra, StockflowError) as exc:
        # An optional part not installed, topics made with another partition count, refused
        # credentials: what to do about it, not a traceback.
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise SystemExit(1) from None
    finally:
        if _timing_wanted():
            console.print(f"[dim]{time.monotonic() - started:.1f}s[/dim]")


def _timing_wanted() -> bool:
    try:
        return Settings().timing
    except ValueError:  # settings the command itself already refused: nothing more to say
        return False


if __name__ == "__main__":
    main()
