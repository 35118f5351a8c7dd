"""Stock documents from a WMS or ERP - a receipt, an absolute count, a correction - as ``StockAdjusted``.

Read by ``POST /v1/wms/stock`` (``agents.intake.service``) and ``stockflow stock receive|count|correct``
(``agents.inventory.cli``); both write the event to ``stock.adjustments`` keyed by SKU. The document
id becomes the adjustment's ``event_id``: the stock pool applies an adjustment id once per SKU (and
remembers it ``STOCKFLOW_TOMBSTONE_TTL_S``), so a document sent twice moves stock once, and one
document may carry several SKUs, one request each. Nothing is written here.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from agents.intake.fields import (
    ID_MAX,
    TEXT_MAX,
    IntakeError,
    Parser,
    choice,
    epoch_ms,
    flat_parser,
    moment,
    signed_whole,
    sku,
    text,
)
from agents.intake.mapping import Catalogue, Mapped, OrderLimits, content_digest
from agents.inventory.rules import MAX_ADJUSTMENT_QTY, check_adjustment
from streams.contract.reasons import Reason
from streams.contract.topics import STOCK_ADJUSTMENTS

# The words a WMS uses, and the adjustment kinds they are.
KINDS = {"receipt": "RECEIPT", "count": "COUNT", "correction": "CORRECTION"}
REQUIRED = ("document_id", "kind", "sku", "warehouse_id", "qty")
MEANINGS = {
    "document_id": "the WMS/ERP document (receipt, count sheet, correction note); the adjustment's id",
    "kind": "receipt: qty units arrived (> 0); count: the warehouse now holds qty units (>= 0); "
    "correction: qty units more or, negative, fewer (not 0)",
    "sku": "the SKU, as the shop's catalogue names it",
    "warehouse_id": "the warehouse, as the routing configuration names it",
    "qty": "units (see kind)",
    "reason": "why, for the people reading it later",
    "event_time_ms": "when it happened in the warehouse, a count when it was taken (absent: when intake received it)",
}
PARSER: Parser = flat_parser(
    "StockDocument",
    {
        "document_id": text("document_id", required=True, max_length=ID_MAX),
        "kind": choice("kind", KINDS, Reason.INVALID_KIND),
        "sku": sku("sku"),
        "warehouse_id": text("warehouse_id", required=True),
        "qty": signed_whole("qty", MAX_ADJUSTMENT_QTY, Reason.INVALID_QTY),
        "reason": text("reason", required=False, max_length=TEXT_MAX),
        "event_time_ms": moment("event_time_ms"),
    },
    REQUIRED,
    MEANINGS,
    doc="A stock document: one SKU's receipt, count or correction in one warehouse.",
)
FIELD_OF = {Reason.INVALID_KIND: "kind", Reason.UNKNOWN_WAREHOUSE: "warehouse_id", Reason.INVALID_QTY: "qty"}


def build_adjustment(body: Any, warehouses: Collection[str], catalogue: Catalogue, limits: OrderLimits,
                     now_ms: int) -> Mapped:  # fmt: skip
    """The ``StockAdjusted`` a stock document stands for (``body``: raw JSON, or an object to read as
    JSON); ``IntakeError`` if the document is not acceptable."""
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False)
    doc = PARSER.parse(raw, limits.window(now_ms))
    kind = KINDS[doc["kind"]]
    if not catalogue.knows(doc["sku"]):
        raise IntakeError(Reason.UNKNOWN_SKU, f"{doc['sku']!r} is not in the catalogue", "sku")
    problem = check_adjustment(kind, doc["qty"], doc["warehouse_id"], frozenset(warehouses))
    if problem is not None:
        raise IntakeError(problem, _explain(problem, doc, warehouses), FIELD_OF.get(problem, ""))
    given = doc["event_time_ms"]
    record = {"event_id": doc["document_id"], "event_time_ms": epoch_ms(given) if given is not None else now_ms,
              "sku": doc["sku"], "warehouse_id": doc["warehouse_id"], "kind": kind, "qty": doc["qty"],
              "reason": doc["reason"] or ""}  # fmt: skip
    volatile = () if given is not None else ("event_time_ms",)
    # The pool applies an adjustment id once per SKU, so (SKU, document) is what a repeat repeats; the SKU's length
    # first, as either may hold any separator ("SKU-1@A" and "B", "SKU-1" and "A@B").
    identity = f"{len(doc['sku'])}:{doc['sku']}@{doc['document_id']}"
    return Mapped("StockAdjusted", record, STOCK_ADJUSTMENTS.name, doc["sku"], identity,
                  content_digest(record, volatile))  # fmt: skip


def _explain(problem: Reason, doc: dict[str, Any], warehouses: Collection[str]) -> str:
    if problem is Reason.UNKNOWN_WAREHOUSE:
        return f"warehouse {doc['warehouse_id']!r} is not one of {sorted(warehouses)}"
    if problem is Reason.INVALID_QTY:
        needs = {"receipt": "more than 0", "count": "0 or more", "correction": "other than 0"}[doc["kind"]]
        return (
            f"a {doc['kind']} of {doc['qty']}: its qty must be {needs}, at most {MAX_ADJUSTMENT_QTY:,} units either way"
        )
    return f"{problem}: {problem.description}"
