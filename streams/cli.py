"""Platform commands: the local stack (``dev``), the topic contract (``topics``), the settings, the pipeline clock.

Shared by every area's commands: ``console``, ``fail`` and ``worker_view``.
"""

from __future__ import annotations

import json
from http import HTTPStatus

import httpx
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from streams.settings import Settings

dev = typer.Typer(no_args_is_help=True, help="The local stack: Kafka (KRaft) and ClickHouse server.")
topics = typer.Typer(no_args_is_help=True, help="Topics of the contract.")
clock = typer.Typer(
    no_args_is_help=True, help="The pipeline clock (drills and tests; needs STOCKFLOW_CLOCK_CONTROL=1)."
)
console = Console()


def fail(message: str) -> None:
    """One red line and exit 1: what every command does instead of a traceback."""
    # soft_wrap: one line even in a pipe or a log, where rich would otherwise break it at 80 columns.
    console.print(f"[red]error:[/red] {message}", soft_wrap=True)
    raise typer.Exit(1)


def worker_view(path: str) -> None:
    """Print a worker HTTP view (``/stock/SKU``, ``/orders/ID``) as JSON, from whichever worker answers."""
    settings = Settings()
    url = f"http://{settings.web_host}:{settings.web_port}{path}"
    try:
        response = httpx.get(url, timeout=10, follow_redirects=True)
    except httpx.HTTPError as exc:
        fail(f"no worker answers at {url}: {exc}")
    if response.status_code == HTTPStatus.NOT_FOUND:
        fail(f"not known: {path}")
    print(json.dumps(response.json(), ensure_ascii=False, indent=2))


@dev.command("up")
def dev_up(
    clickhouse_server: bool = typer.Option(
        False, "--clickhouse-server", help="Also start a ClickHouse server (server backend)."
    ),
) -> None:
    """Start a single-node Kafka broker on 127.0.0.1 (and optionally a ClickHouse server)."""
    from streams.devstack.localclickhouse import LocalClickHouseServer
    from streams.devstack.localkafka import LocalKafka, MissingTool

    settings = Settings()
    try:
        console.print(LocalKafka(settings).up())
        if clickhouse_server:
            console.print(LocalClickHouseServer(settings).up())
    except (MissingTool, RuntimeError) as exc:
        fail(str(exc))


@dev.command("down")
def dev_down() -> None:
    """Stop what ``dev up`` started."""
    from streams.devstack.localclickhouse import LocalClickHouseServer
    from streams.devstack.localkafka import LocalKafka

    settings = Settings()
    stopped_kafka = LocalKafka(settings).down()
    stopped_ch = LocalClickHouseServer(settings).down()
    console.print(f"Kafka: {'stopped' if stopped_kafka else 'was not running'}")
    console.print(f"ClickHouse server: {'stopped' if stopped_ch else 'was not running'}")


@dev.command("status")
def dev_status() -> None:
    """Say what runs where, and whether the broker answers metadata requests."""
    from streams.devstack import procs
    from streams.devstack.localclickhouse import LocalClickHouseServer
    from streams.devstack.localkafka import LocalKafka, broker_metadata
    from streams.kafkaconf import KafkaAuthError, describe

    settings = Settings()
    table = Table("service", "state", "where")
    kafka = LocalKafka(settings)
    pid = kafka.running_pid()
    try:
        md = broker_metadata(settings, timeout_s=3)
        answer = f"answers metadata: cluster {md['cluster_id']}, {md['topics']} topics"
    except KafkaAuthError as exc:
        answer = f"refuses these credentials ({exc})"
    except Exception as exc:  # noqa: BLE001 - a status table shows any failure to reach the broker as its state
        answer = f"no answer ({type(exc).__name__})"
    origin = "external" if settings.kafka_bootstrap else (f"pid {pid}" if pid else "not running")
    table.add_row("kafka", f"{origin}; {answer}", describe(settings))
    ch = LocalClickHouseServer(settings)
    ch_pid = procs.read_pid(ch.pid_file)
    table.add_row("clickhouse-server", f"pid {ch_pid}" if ch_pid else "not running", ch.url)
    table.add_row("clickhouse (configured)", "", settings.clickhouse_url_shown)
    console.print(table)


@dev.command("fetch")
def dev_fetch() -> None:
    """Resolve the Kafka broker jars with Maven (done by ``dev up`` when needed)."""
    from streams.devstack.localkafka import LocalKafka, MissingTool

    try:
        console.print(f"Kafka jars in {LocalKafka(Settings()).fetch()}")
    except (MissingTool, RuntimeError) as exc:
        fail(str(exc))


@topics.command("create")
def topics_create() -> None:
    """Create every contract topic that does not exist yet."""
    from streams.contract.topics import ensure_topics

    created = ensure_topics(Settings())
    console.print(f"created {len(created)} topics" + (f": {', '.join(created)}" if created else ""))


@topics.command("contract")
def topics_contract(markdown: bool = typer.Option(False, help="Print a Markdown table.")) -> None:
    """The topic contract: key, partitions, schema files and writer of every topic."""
    from streams.contract.topics import contract_rows, contract_table_markdown

    if markdown:
        print(contract_table_markdown(Settings()), end="")
        return
    rows = contract_rows(Settings())
    table = Table("topic", "direction", "key", "partitions", "schema", "written by")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def settings_command(markdown: bool = typer.Option(False, help="Print the Markdown table the README carries.")) -> None:
    """Every STOCKFLOW_* variable: its default and what it means."""
    from streams.settings import settings_rows, settings_table_markdown

    if markdown:
        print(settings_table_markdown(), end="")
        return
    table = Table("variable", "default", "meaning")
    for variable, default, meaning in settings_rows():
        # Text, not markup: `[/db]` in a meaning or a JSON default would read as a rich tag.
        table.add_row(Text(variable), Text(default.strip("`")), Text(meaning))
    console.print(table)


@clock.command("set")
def clock_set(offset_minutes: float = typer.Argument(..., help="Minutes ahead of wall time.")) -> None:
    """Move the pipeline clock to wall time + OFFSET_MINUTES (it never moves back)."""
    from streams.contract.topics import OPS_CLOCK
    from streams.engine.clock import wall_ms
    from streams.engine.producer import EventProducer

    settings = Settings()
    if not settings.clock_control:
        # Workers started with these settings ignore ops.clock: sending would change nothing.
        fail("clock control is off: workers ignore ops.clock unless STOCKFLOW_CLOCK_CONTROL=1 "
             "(set it for the workers and this command); nothing sent")  # fmt: skip
    producer = EventProducer(settings)
    offset = int(offset_minutes * 60_000)
    producer.send(OPS_CLOCK.name, "clock", "ClockAdvanced",
                  {"event_id": f"clock:{offset}", "event_time_ms": wall_ms(), "offset_ms": offset})  # fmt: skip
    producer.flush()
    console.print(f"pipeline clock set to wall time + {offset_minutes} min (workers with STOCKFLOW_CLOCK_CONTROL=1 "
                  "follow it; it never moves back)")  # fmt: skip
