"""``stockflow shadow``: run a candidate rule beside the live one on the same events, and compare.

``start NAME --routing-weights JSON | --refund-rules FILE`` runs the live pipeline's hot processors
again with the candidate swapped in (``agents.shadow.run_shadow``), in the background, pid and log under
``<home>/shadow/NAME/``; ``list`` shows every shadow; ``report NAME`` compares its decisions with the live
ones (``agents.shadow.report``); ``stop NAME [--delete-topics]`` stops it (and removes its topics,
group and state).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from agents.shadow.candidate import CandidateError, check_name
from streams.cli import console, fail
from streams.settings import Settings

shadow = typer.Typer(
    no_args_is_help=True,
    help="Shadow runs: a candidate rule beside the live one on the same events, its decisions compared.",
)
_NAME = typer.Argument(..., help="The shadow's name: a-z, 0-9, '_' and '-' (part of its topic names).")
_RULES = typer.Option(
    None,
    "--refund-rules",
    exists=True,
    dir_okay=False,
    help="Candidate refund rules: a TOML file like agents/refunds/config/refund_rules.toml.",
)


@shadow.command("start")
def start(
    name: str = _NAME,
    routing_weights: str = typer.Option(
        None,
        "--routing-weights",
        help="Candidate routing weights, JSON naming all four factors, summing to 1: "
        '\'{"distance":0.9,"sufficiency":0,"on_time":0.1,"cost":0}\'.',
    ),
    refund_rules: Path = _RULES,
    foreground: bool = typer.Option(False, "--foreground", help="Run in this process until Ctrl-C."),
    niceness: int = typer.Option(
        10, "--niceness", min=0, max=19, help="How much the shadow lowers its CPU priority (live decisions first)."
    ),
) -> None:
    """Start a shadow: the live hot pipeline again with the candidate rule, reading the live inputs and
    writing only topics under shadow.NAME. It costs as much CPU as the live pipeline."""
    from agents.shadow import control, run_shadow
    from agents.shadow.candidate import ShadowHome, make_candidate

    settings = Settings()
    try:
        candidate = make_candidate(settings, name, routing_weights, refund_rules)
        if foreground:
            home = ShadowHome(settings, name)
            control.check_can_start(settings, home)
            candidate, _ = control.adopt(home, candidate)
            console.print(f"shadow {name}: {candidate.describe()}; Ctrl-C stops it")
            code = run_shadow.main(settings, name, niceness)
            raise typer.Exit(code)
        started = control.start(settings, candidate, niceness)
    except (CandidateError, control.ShadowError) as exc:
        fail(str(exc))
        return
    verb = "carries on" if started.resumed else "started"
    console.print(f"shadow {name} {verb}, pid {started.pid}: {started.candidate.describe()}")
    console.print(f"log: {ShadowHome(settings, name).log_file}; `stockflow shadow report {name}` compares it")


@shadow.command("run", hidden=True)
def run(
    name: str = _NAME,
    niceness: int = typer.Option(0, "--niceness", min=0, max=19),
) -> None:
    """Run a started shadow in this process (what ``start`` runs in the background)."""
    from agents.shadow import run_shadow

    try:
        check_name(name)
        code = run_shadow.main(Settings(), name, niceness)
    except CandidateError as exc:
        fail(str(exc))
        return
    raise typer.Exit(code)


@shadow.command("list")
def list_command(as_json: bool = typer.Option(False, "--json", help="JSON instead of a table.")) -> None:
    """Every shadow: its candidate, whether it runs, how far behind the live inputs it is."""
    from agents.shadow import control

    shadows = control.list_shadows(Settings())
    if as_json:
        print(json.dumps(shadows, ensure_ascii=False, indent=2))
        return
    if not shadows:
        console.print("no shadows (`stockflow shadow start NAME --routing-weights ...` starts one)")
        return
    table = Table("name", "running", "candidate", "ready", "lag", "caught up", "events", "error")
    for entry in shadows:
        status = entry["status"]
        engine = status.get("engine", {})
        table.add_row(
            entry["name"], f"pid {entry['pid']}" if entry["pid"] else "no", entry["candidate"],
            "yes" if status.get("ready") and entry["pid"] else "no",
            "-" if status.get("lag") is None else str(status["lag"]),
            "yes" if status.get("caught_up_ms") else "no",
            str(engine.get("events", 0) + engine.get("local_events", 0)), status.get("error") or "",
        )  # fmt: skip
    console.print(table)


@shadow.command("stop")
def stop(
    name: str = _NAME,
    delete_topics: bool = typer.Option(
        False, "--delete-topics", help="Also delete its topics, consumer group, state and folder: the shadow is gone."
    ),
) -> None:
    """Stop a shadow; it keeps its topics and state (report still works, start carries on) unless --delete-topics."""
    from agents.shadow import control

    try:
        check_name(name)
        was_running, deleted = control.stop(Settings(), name, delete_topics)
    except (CandidateError, control.ShadowError) as exc:
        fail(str(exc))
        return
    console.print(f"shadow {name}: {'stopped' if was_running else 'was not running'}")
    if delete_topics:
        console.print(f"deleted {len(deleted)} topics, its consumer group, state and folder")


@shadow.command("report")
def report(
    name: str = _NAME,
    as_json: bool = typer.Option(False, "--json", help="JSON instead of tables."),
    examples: int = typer.Option(5, "--examples", min=0, help="How many differences to show in full."),
) -> None:
    """Where the shadow's decisions differ from the live ones: counts, share, first examples with both
    decisions and score breakdowns, and the business effect (km per parcel, split rate, auto-approved refunds)."""
    from agents.shadow.report import build_report, render

    try:
        check_name(name)
        result = build_report(Settings(), name, examples)
    except CandidateError as exc:
        fail(str(exc))
        return
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
    else:
        render(result, console)
