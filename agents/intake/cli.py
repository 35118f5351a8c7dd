"""The ``stockflow intake`` command: the HTTP intake for channel connectors and the WMS."""

from __future__ import annotations

import typer

from streams.cli import console, fail
from streams.settings import Settings


def intake(
    port: int = typer.Option(None, help="Port (default: STOCKFLOW_INTAKE_PORT)."),
    host: str = typer.Option(None, help="Address (default: STOCKFLOW_INTAKE_HOST)."),
) -> None:
    """Serve the HTTP intake: channel connectors and the WMS post notifications as JSON."""
    from agents.intake.service import serve
    from streams.contract.topics import ensure_topics

    settings = Settings()
    overrides = {k: v for k, v in (("intake_port", port), ("intake_host", host)) if v is not None}
    settings = settings.model_copy(update=overrides)
    try:
        ensure_topics(settings)
    except Exception as exc:  # noqa: BLE001 - a command turns any failure to reach the broker into one line
        fail(f"no broker at {settings.bootstrap}: {exc}")
    console.print(f"intake on http://{settings.intake_host}:{settings.intake_port}/v1/channels/<channel>/<kind>")
    serve(settings)
