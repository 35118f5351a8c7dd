"""The ``stockflow intake`` command: the HTTP intake for channel connectors and the WMS."""

from __future__ import annotations

import typer

from streams.cli import console, fail
from streams.ports import busy_port_message, port_problem
from streams.settings import Settings


def intake(
    port: int = typer.Option(None, help="Port (default: STOCKFLOW_INTAKE_PORT)."),
    host: str = typer.Option(None, help="Address (default: STOCKFLOW_INTAKE_HOST)."),
) -> None:
    """Serve the HTTP intake: channel connectors and the WMS post notifications as JSON."""
    from agents.intake.service import Intake, serve
    from streams.contract.topics import PartitionCountMismatch, ensure_topics

    settings = Settings()
    overrides = {k: v for k, v in (("intake_port", port), ("intake_host", host)) if v is not None}
    settings = settings.model_copy(update=overrides)
    if problem := port_problem(settings.intake_host, settings.intake_port):
        fail(busy_port_message("intake", settings.intake_host, settings.intake_port, problem,
                               "--port or STOCKFLOW_INTAKE_PORT"))  # fmt: skip
    try:
        ensure_topics(settings)
    except PartitionCountMismatch as exc:  # the broker answered: the settings are what is wrong
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - a command turns any failure to reach the broker into one line
        fail(f"no broker at {settings.bootstrap}: {exc}")
    try:
        service = Intake(settings)
    except (OSError, ValueError) as exc:  # a mapping, catalogue, warehouses or secrets file that does not read
        fail(f"intake configuration: {exc}")
    signed = service.secrets.current().signed(service.channels)
    unsigned = sorted(name for name, yes in signed.items() if not yes)
    base = f"http://{settings.intake_host}:{settings.intake_port}"
    console.print(f"intake on {base}/v1/channels/<channel>/<kind> and {base}/v1/wms/*; API: {base}/openapi.json")
    if unsigned:
        mode = "accepted unsigned (development)" if settings.intake_allow_unsigned else "refused 401 (no secret)"
        console.print(f"[yellow]no secret for {', '.join(unsigned)}: their requests are {mode}[/yellow]")
    serve(settings, service)
