"""The channels' ``stockflow`` commands.

``stockflow sim up|down|status|serve``: the local marketplace simulator (``agents.channels.simulator``),
started in the background like the local broker, pid and log under ``<home>/sim/``. Its apps come
from ``--apps FILE`` (or ``STOCKFLOW_SIM_APPS_FILE``; JSON or TOML, ``{"jd": [{"app_key": ...,
"secret": ..., "expires_at_ms": ...}]}``), else from ``<home>/sim/apps.json``, generated with a
random secret per channel the first time and kept (owner-only) so a connector can be given them.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer
from rich.table import Table

from streams.cli import console, fail
from streams.kafkaconf import confluent_config
from streams.settings import Settings

# --- stockflow sim -------------------------------------------------------------------------------

sim = typer.Typer(no_args_is_help=True, help="The local marketplace simulator (drills and tests).")
_PORT = typer.Option(None, help="Port (default: STOCKFLOW_SIM_PORT).")
_SETTLE_URL = typer.Option(None, "--settle-url", help="Post settlements here, {channel} replaced by the refund's "
                           "channel (default: STOCKFLOW_SIM_SETTLE_URL).")  # fmt: skip
_APPS = typer.Option(
    None, "--apps", help="Apps file, JSON or TOML (default: STOCKFLOW_SIM_APPS_FILE, else generated).", dir_okay=False
)


def _when(ms: int | None) -> str:
    if ms is None:
        return "never"
    return datetime.fromtimestamp(ms / 1000).astimezone().strftime("%Y-%m-%d %H:%M:%S")


@sim.command("up")
def sim_up(
    port: int = _PORT,
    settle_url: str = _SETTLE_URL,
    apps: Path = _APPS,
) -> None:
    """Start the marketplace simulator in the background on 127.0.0.1."""
    from agents.channels.simulator import LocalSimulator, SimulatorError, default_apps_file

    settings = Settings()
    try:
        console.print(LocalSimulator(settings).up(port=port, settle_url=settle_url, apps_file=apps))
    except SimulatorError as exc:
        fail(str(exc))
    if apps is None and settings.sim_apps_file is None:
        console.print(f"apps and their secrets: {default_apps_file(settings)}")


@sim.command("down")
def sim_down() -> None:
    """Stop the simulator ``sim up`` started."""
    from agents.channels.simulator import LocalSimulator

    stopped = LocalSimulator(Settings()).down()
    console.print(f"simulator: {'stopped' if stopped else 'was not running'}")


@sim.command("status")
def sim_status() -> None:
    """Per channel: its apps (key fingerprints, expiry, rotations), rate limit, latency and calls answered."""
    from agents.channels.sim_client import SimulatorClient
    from agents.channels.simulator import LocalSimulator, SimulatorError

    local = LocalSimulator(Settings())
    pid, url = local.running_pid(), local.base_url()
    with SimulatorClient(url, timeout_s=5) as client:
        try:
            status = client.status()
        except SimulatorError as exc:
            fail(f"simulator {'pid ' + str(pid) if pid else 'not started'}; {exc}")
            return
    console.print(f"simulator at {url}" + (f", pid {pid}" if pid else " (not started by sim up)"))
    table = Table("channel", "apps", "rate limit", "latency", "faults", "calls")
    for channel, info in status["channels"].items():
        apps = "\n".join(
            f"{a['app_key']} {a['fingerprint'] or '(not valid yet)'} expires {_when(a['expires_at_ms'])}"
            + (" [red]EXPIRED[/red]" if a["expired"] else "")
            + "".join(f"\n  rotates {_when(r['at_ms'])} to {r['fingerprint']}" for r in a["rotations_pending"])
            for a in info["apps"]
        ) or "[red]none[/red]"  # fmt: skip
        config, counters = info["config"], info["counters"]
        faults = ", ".join(
            part for part in (
                f"{config['error_rate']:.0%} 5xx" if config["error_rate"] else "",
                f"+{config['extra_latency_ms']:g} ms" if config["extra_latency_ms"] else "",
                f"{len(config['outages'])} outage(s)" if config["outages"] else "",
            ) if part
        ) or "-"  # fmt: skip
        calls = "\n".join(f"{k} {v}" for k, v in sorted(counters.items())) or "-"
        table.add_row(channel, apps, f"{config['qps']:g}/s (burst {config['burst']:g})",
                      f"{config['latency_ms']:g}+{config['jitter_ms']:g} ms", faults, calls)  # fmt: skip
    console.print(table)
    settle = status["settle"]
    console.print(f"settlements: {settle['url'] or 'not sent'} after {settle['delay_ms']:g} ms; "
                  f"{settle['in_flight']} in flight")  # fmt: skip


@sim.command("serve")
def sim_serve(
    port: int = _PORT,
    host: str = typer.Option(None, help="Address (default: STOCKFLOW_SIM_HOST)."),
    settle_url: str = _SETTLE_URL,
    apps: Path = _APPS,
) -> None:
    """Run the marketplace simulator in the foreground."""
    from agents.channels.simulator import SimulatorError, build_market, serve

    settings = Settings()
    try:
        market = build_market(settings, apps)
    except SimulatorError as exc:
        fail(str(exc))
        return
    console.print(f"marketplace simulator on http://{host or settings.sim_host}:{port or settings.sim_port}/<channel>")
    serve(settings, market, host=host, port=port, settle_url=settle_url)


# --- stockflow connectors: the outbound connectors -----------------------------------------------
# (keys, the process, its status, replaying a channel's failed queue; agents.channels.connector_process,
# credentials, failed_queue)

connectors = typer.Typer(
    no_args_is_help=True, help="The outbound marketplace connectors: keys, the process, status, replay."
)
_SECRET_FILE = typer.Option(
    None, "--secret-file", dir_okay=False, help="A file whose first line is the app secret; default: asked for."
)
_TOKEN_FILE = typer.Option(
    None, "--access-token-file", dir_okay=False, help="A file whose first line is the shop's access token."
)


def _channel(channel: str) -> str:
    from streams.contract.topics import MARKETPLACES

    if channel not in MARKETPLACES:
        fail(f"unknown channel {channel!r}; channels: {', '.join(MARKETPLACES)}")
    return channel


def _first_line(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read the {what} from {path}: {type(exc).__name__}")
        return ""
    if not text or not text[0].strip():
        fail(f"{path} holds no {what}")
    return text[0].strip()


@connectors.command("set-key")
def connectors_set_key(
    channel: str = typer.Argument(..., help="tmall, jd, douyin, pdd, kuaishou or own"),
    app_key: str = typer.Option(..., "--app-key", help="The app key the platform issued."),
    secret_file: Path = _SECRET_FILE,
    expires: str = typer.Option(
        ..., "--expires", help="YYYY-MM-DD: the key stops working at the start of that day (GMT+8)."
    ),
    access_token_file: Path = _TOKEN_FILE,
) -> None:
    """Store a channel's new key; the running connectors use it from their next call (no restart)."""
    from datetime import date

    from agents.channels.credentials import CredentialsError, CredentialStore, StoredKey, expires_at_ms
    from agents.channels.platforms import Credentials
    from streams.engine.clock import wall_ms

    _channel(channel)
    try:
        until = date.fromisoformat(expires)
    except ValueError:
        fail(f"--expires {expires!r} is not a date YYYY-MM-DD")
        return
    if secret_file is not None:
        secret = _first_line(secret_file, "secret")
    else:
        secret = typer.prompt(f"{channel} app secret", hide_input=True, confirmation_prompt=True).strip()
    if not secret:
        fail("the secret is empty")
    token = _first_line(access_token_file, "access token") if access_token_file is not None else None
    key = StoredKey(channel, Credentials(app_key.strip(), secret, token), until, wall_ms())
    store = CredentialStore.from_settings(Settings())
    try:
        store.set_key(key)
    except (CredentialsError, OSError) as exc:
        fail(str(exc))
    console.print(f"{channel}: key {key.credentials.app_key} set (secret {key.fingerprint}), valid until {until}; "
                  f"the running connectors use it from their next call. Stored in {store.path}")  # fmt: skip
    if expires_at_ms(until) <= wall_ms():
        console.print(f"[yellow]warning:[/yellow] {until} is past: the platform will refuse this key")


@connectors.command("sim-keys")
def connectors_sim_keys(
    apps: Path = _APPS,
    days: int = typer.Option(365, "--days", min=1, help="How long the keys stay valid, from today."),
) -> None:
    """Development: store the local simulator's keys (what `sim up` uses) for every channel, as `set-key` would."""
    from datetime import date, timedelta

    from agents.channels.credentials import CredentialsError, CredentialStore
    from agents.channels.simulator import SimulatorError, default_apps_file, load_apps, simulator_keys
    from streams.engine.clock import wall_ms

    settings = Settings()
    path = apps or settings.sim_apps_file or default_apps_file(settings)
    try:
        keys = simulator_keys(load_apps(path), settings.channels, date.today() + timedelta(days=days), wall_ms())
        if not keys:
            raise SimulatorError(f"{path} has no app valid now for any of {', '.join(settings.channels)}")
        store = CredentialStore.from_settings(settings)
        for key in keys:
            store.set_key(key)
    except (SimulatorError, CredentialsError, OSError) as exc:
        fail(f"{exc} (start the simulator once with `stockflow sim up`, or name its apps with --apps)")
        return
    console.print(f"{', '.join(k.channel for k in keys)}: the simulator's keys from {path} set, valid {days} days "
                  f"(or to the app's own expiry); stored in {store.path}")  # fmt: skip
    missing = [c for c in settings.channels if c not in {k.channel for k in keys}]
    if missing:
        console.print(f"[yellow]warning:[/yellow] no app valid now for {', '.join(missing)}: their calls will fail "
                      "until `connectors set-key`")  # fmt: skip


@connectors.command("run")
def connectors_run() -> None:
    """Run the outbound connectors (refunds and channel stock) until SIGTERM; status on STOCKFLOW_CONNECTORS_PORT."""
    from agents.channels.connector_process import run

    raise typer.Exit(run(Settings()))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _broker_answers(settings: Settings) -> bool:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({**confluent_config(settings), "log_level": 0}).list_topics(timeout=3)
    except KafkaException:
        return False
    return True


@connectors.command("status")
def connectors_status(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Per channel: its key (fingerprint, expiry), calls ok / retried / failed and success rate, latency, last
    error, failed queue: since the running connectors started (the health board, `stockflow dash connector_health`,
    shows the same figures over a time range from ClickHouse)."""
    import json

    import httpx
    from confluent_kafka import KafkaException

    from agents.channels.credentials import CredentialStore
    from agents.channels.failed_queue import pending
    from streams.contract.topics import MARKETPLACES
    from streams.engine.clock import wall_ms

    settings = Settings()
    now = wall_ms()
    keys = CredentialStore.from_settings(settings).all()
    url = f"{settings.connectors_base_url}/connectors/status"
    try:
        running: dict | None = httpx.get(url, timeout=5).json()
    except (httpx.HTTPError, ValueError):
        running = None
    queues: dict[str, int | None] = dict.fromkeys(MARKETPLACES)
    if _broker_answers(settings):
        for channel in MARKETPLACES:
            try:
                start, end = pending(settings, channel, timeout_s=5)
            except KafkaException:  # the queue is not there yet: shown as unknown
                continue
            queues[channel] = end - start
    channels = {
        c: {
            "credentials": keys[c].public(now, settings.credential_warn_days) if c in keys else None,
            "failed_queue_waiting": queues[c],
            **({k: v for k, v in running["channels"][c].items() if k != "credentials"} if running else {}),
        }
        for c in MARKETPLACES
    }
    if as_json:
        print(json.dumps({"running": running is not None, "channels": channels}, ensure_ascii=False, indent=2))
        return
    console.print(f"connectors {'running at ' + url if running else '[yellow]not running[/yellow] (' + url + ')'}")
    table = Table("channel", "key", "expires", "refund calls", "stock calls", "latency p50/p99 ms", "last error",
                  "failed queue")  # fmt: skip
    for c, info in channels.items():
        cred = info["credentials"]
        key = f"{cred['app_key']}\n{cred['fingerprint']}" if cred else "[red]none[/red]"
        colour = {"ok": "", "expiring": "yellow", "expired": "red"}.get(cred["state"], "") if cred else ""
        expiry = f"[{colour}]{cred['expires']} ({cred['state']})[/{colour}]" if cred and colour else (
            f"{cred['expires']}" if cred else "-")  # fmt: skip
        cells, latency, errors = [], [], []
        for endpoint in ("refund", "stock"):
            stats = info.get("endpoints", {}).get(endpoint)
            if stats is None:
                cells.append("-")
                continue
            rate = stats.get("success_rate")  # as the health board counts it (outbound.success_rate)
            cells.append(f"ok {stats['ok']} (+{stats['already_applied'] + stats['stale']} done before)\n"
                         f"retried {stats['retried']} failed {stats['failed']}\n"
                         f"success {'-' if rate is None else f'{rate:.1%}'}")  # fmt: skip
            latency.append(f"{endpoint} {_ms(stats['latency_ms']['p50'])}/{_ms(stats['latency_ms']['p99'])}")
            if stats["last_error"]:
                errors.append(f"{endpoint}: {stats['last_error'][:80]}")
        failing = " [red]FAILING[/red]" if info.get("failing") else ""
        waiting = info["failed_queue_waiting"]
        table.add_row(c + failing, key, expiry, *cells, "\n".join(latency) or "-", "\n".join(errors) or "-",
                      "?" if waiting is None else str(waiting))  # fmt: skip
    console.print(table)


@connectors.command("replay")
def connectors_replay(
    channel: str = typer.Argument(..., help="tmall, jd, douyin, pdd, kuaishou or own"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON (no progress bar)."),
    from_offset: int | None = typer.Option(None, "--from-offset", min=0, help="Start at this offset of the queue, "
                                           "whatever position is saved (a replay that found none over a queue "
                                           "replayed before says where one had got)."),
) -> None:
    """Send a channel's failed calls again, in order and idempotently; stops at the first credential failure. A
    refund refund.issued records as paid is never called again."""
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from agents.channels.failed_queue import Replay, ReplayError, ReplaySummary

    settings = Settings()
    _channel(channel)
    if as_json:
        replay = Replay(settings, channel, from_offset=from_offset)
        try:
            summary = replay.run()
        except ReplayError as exc:
            fail(str(exc))
            return
        print(json.dumps(summary.to_json(), ensure_ascii=False, indent=2))
        raise typer.Exit(0 if summary.clean else 1)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:  # fmt: skip
        task = progress.add_task(f"replaying connector.failed.{channel}", total=None)

        def show(s: ReplaySummary) -> None:
            progress.update(task, total=s.queued, completed=s.replayed)

        try:
            summary = Replay(settings, channel, on_progress=show, from_offset=from_offset).run()
        except ReplayError as exc:
            fail(str(exc))
            return
    table = Table("queued", "sent", "already applied", "still failing", "unreadable", "left", "lost")
    table.add_row(*(str(v) for v in (summary.queued, summary.sent, summary.already_applied, summary.still_failing,
                                     summary.unreadable, summary.remaining, summary.lost)))  # fmt: skip
    console.print(table)
    if summary.gap:
        console.print(f"[red]lost:[/red] {summary.gap}")
    if summary.stopped:
        console.print(f"[red]stopped:[/red] {summary.stopped}")
    elif summary.still_failing:
        console.print(f"{summary.still_failing} call(s) refused again; they wait at the end of the queue")
    raise typer.Exit(0 if summary.clean else 1)


# --- stockflow report connectivity: the weekly connectivity report ---------------------------------
# (agents.channels.connectivity builds it, report_connectivity reads ClickHouse and posts the summary)

report = typer.Typer(no_args_is_help=True, help="Periodic reports.")
_REPORT_FILE = typer.Option(None, "--output", "-o", dir_okay=False, help="Write it here instead of stdout.")


@report.command("connectivity")
def report_connectivity(
    week: str = typer.Option("", "--week", help="ISO week, e.g. 2026-W47 (default: last week), in the shop's zone."),
    output: str = typer.Option("md", "--format", help="md, html or json."),
    out_file: Path = _REPORT_FILE,
    min_failures: int = typer.Option(3, "--min-failures", min=1, help="Failed calls in a row that make an incident."),
    post: bool = typer.Option(True, "--post/--no-post", help="Post the summary to STOCKFLOW_WEBHOOK_URL if set."),
) -> None:
    """The week's connectivity per channel endpoint: availability, incidents with start and end, failed-call
    volume by reason, replays; its summary is posted to the ops chat's webhook."""
    import json

    from agents.analytics.queries import DashboardError
    from agents.channels import connectivity as cn
    from agents.channels.report_connectivity import post_summary, read_report
    from agents.refunds.reports import shop_zone
    from streams.engine.clock import wall_ms

    if output not in ("md", "html", "json"):
        fail(f"--format must be md, html or json, not {output!r}")
    settings = Settings()
    zone, now = shop_zone(settings), wall_ms()
    try:
        span = cn.parse_week(week or cn.week_of(now - 7 * 86_400_000, zone), zone)
    except cn.WeekError as exc:
        fail(str(exc))
        return
    if span.start_ms > now:
        fail(f"{span.label} has not started yet")
    try:
        found = read_report(settings, span, now, zone, min_failures)
    except DashboardError as exc:
        fail(str(exc))
        return
    except Exception as exc:  # noqa: BLE001 - ClickHouse unreachable or refusing
        fail(f"could not query ClickHouse at {settings.clickhouse_url_shown}: {exc}")
        return
    if output == "json":
        text = json.dumps(found.to_dict(), ensure_ascii=False, indent=2) + "\n"
    else:
        text = (cn.render_html if output == "html" else cn.render_markdown)(found, zone)
    if out_file is not None:
        out_file.write_text(text, encoding="utf-8")
        console.print(f"wrote {span.label} to {out_file}")
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    if post and settings.webhook_url:
        error = post_summary(settings, cn.summary(found, zone, settings.notify_max_bytes))
        if error:
            fail(f"the report is made, but the webhook did not take its summary: {error}")
        typer.echo(f"{span.label}: summary posted to the webhook", err=True)  # stdout holds the report
