"""``stockflow inspect [--json]``: run every named check now and print each with its value and threshold.

Reads the thresholds (``config/inspect.toml`` or ``--config``) and, through ``agents.inspect.probe``,
the broker and the sink's and connectors' status views. Exit code 1 when any check is in breach.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.table import Table

from agents.inspect import checks, probe
from streams.cli import console, fail
from streams.settings import Settings

_STYLE = {checks.Status.OK: "green", checks.Status.WARN: "yellow", checks.Status.BREACH: "bold red",
          checks.Status.UNKNOWN: "yellow"}  # fmt: skip


def inspect(
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    config: str = typer.Option("", help="The thresholds file (TOML; default: the packaged one)."),
) -> None:
    """Run the inspection's named checks now (consumer lag, dead-letter rate, connector latency p99 and
    failed queues, sink insert lag, disk free, credential expiry); exit 1 on any breach."""
    path = Path(config) if config else checks.DEFAULT_CONFIG
    try:
        thresholds = checks.load_config(path)
    except (OSError, ValidationError, ValueError) as exc:
        fail(f"{path}: {exc}")
    results = checks.evaluate(probe.measure(Settings(), thresholds), thresholds)
    overall = checks.worst(results)
    if as_json:
        print(json.dumps({"status": overall.value, "checks": [r.as_dict() for r in results]}, indent=2))
    else:
        table = Table("check", "subject", "status", "value", "warn", "breach", "detail")
        for r in results:
            value = "-" if r.value is None else f"{r.value:g} {r.threshold.unit}"
            mark = "≤" if r.threshold.direction == "below" else "≥"
            table.add_row(r.check, r.subject, f"[{_STYLE[r.status]}]{r.status.value}[/]", value,
                          f"{mark} {r.threshold.warn:g}", f"{mark} {r.threshold.breach:g}", r.detail)  # fmt: skip
        console.print(table)
        console.print(f"overall: [{_STYLE[overall]}]{overall.value}[/]")
    if overall is checks.Status.BREACH:
        raise typer.Exit(1)
