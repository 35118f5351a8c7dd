"""The intake's routes as data, and the OpenAPI 3.1 document built from them.

``agents.intake.service`` declares every route once, as a ``Route`` (method, path, handler, the
pydantic model of its body, the answers it gives, how it is authenticated); the router is filled
from that list and ``document`` describes the same list, with the body schemas taken from the
models themselves (``pydantic.json_schema.models_json_schema``), so the documentation cannot drift
from what is parsed. ``GET /openapi.json`` serves it. Reads and writes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from streams.contract.reasons import Reason

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REF = "#/components/schemas/{model}"


class Accepted(BaseModel):
    """Written and acknowledged by the broker (``accepted``), or a repeat of what already was (``duplicate``)."""

    status: Literal["accepted", "duplicate"]
    event_id: str
    event_type: str
    order_id: str | None = Field(None, description="the order's events: `<channel>:<channel_order_id>`")
    sku: str | None = Field(None, description="stock documents: the SKU")
    partition: int
    offset: int


class Refusal(BaseModel):
    """Nothing was written."""

    error: str = Field(description="the reason code (`streams.contract.reasons.Reason`)")
    field: str = Field(description="the JSON path of the offending field, when one is to blame")
    detail: str


class Health(BaseModel):
    ok: bool
    channels: list[str]
    signed: dict[str, bool] = Field(description="per channel (and `wms`): whether a secret is configured")
    counts: dict[str, int] = Field(description="accepted per event type, refused per reason, since start")


# Which codes each refusal status stands for, for the answers' descriptions.
STATUS_CODES: dict[int, tuple[Reason, ...]] = {
    400: (Reason.MALFORMED_JSON, Reason.NOT_AN_OBJECT),
    404: (Reason.UNKNOWN_CHANNEL, Reason.UNKNOWN_EVENT_KIND),
    409: (Reason.CONFLICTING_DUPLICATE,),
    503: (Reason.KAFKA_UNAVAILABLE,),
}


@dataclass(frozen=True)
class Route:
    """One route: what the router serves and what the document says about it."""

    method: Literal["GET", "POST"]
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    answer: type[BaseModel] | None = Accepted  # None: any JSON object
    refusals: Mapping[int, str] = field(default_factory=dict)  # status -> when
    security: str | None = None  # a securitySchemes name
    parameters: tuple[Mapping[str, Any], ...] = ()
    description: str = ""


def document(
    routes: Iterable[Route], security_schemes: Mapping[str, Mapping[str, Any]], version: str
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``."""
    routes = list(routes)
    models = {m.__name__: m for r in routes for m in (r.body, r.answer) if m is not None}
    models[Refusal.__name__] = Refusal
    refs, defs = models_json_schema([(m, "validation") for m in models.values()], ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "tags": [route.tag],
            "operationId": f"{route.method.lower()}{route.path}".replace("/", "_").replace("{", "").replace("}", ""),
        }
        if route.description:
            operation["description"] = route.description
        if route.parameters:
            operation["parameters"] = [dict(p) for p in route.parameters]
        if route.body is not None:
            schema = refs[(route.body, "validation")]
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
        answer = refs[(route.answer, "validation")] if route.answer is not None else {"type": "object"}
        responses: dict[str, Any] = {"200": {"description": "OK", "content": {"application/json": {"schema": answer}}}}
        refusal = refs[(Refusal, "validation")]
        for status, when in sorted(route.refusals.items()):
            codes = ", ".join(f"`{code}`" for code in STATUS_CODES.get(status, ()))
            responses[str(status)] = {"description": f"{when} {codes}".strip(),
                                      "content": {"application/json": {"schema": refusal}}}  # fmt: skip
        operation["responses"] = responses
        if route.security is not None:
            operation["security"] = [{route.security: []}]
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "stockflow intake",
            "version": version,
            "description": "Marketplace connectors and the WMS post notifications as JSON; each answer is "
            "given only after the event is written to Kafka and acknowledged by the broker.",
        },
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {}), "securitySchemes": dict(security_schemes)},
    }


def router_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route an application's router serves (HEAD, which aiohttp adds to
    every GET, left out)."""
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter", "")
        if route.method != "HEAD":
            found.add((route.method, path))
    return found
