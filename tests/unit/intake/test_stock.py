"""Stock documents, no broker: a receipt, count or correction onto ``StockAdjusted``; what is refused."""

from __future__ import annotations

import pytest

from agents.intake.mapping import Catalogue, IntakeError, Mapped, OrderLimits
from agents.intake.stock import build_adjustment
from streams.settings import Settings

WAREHOUSES = ("WH-SH", "WH-GZ")
CATALOGUE = Catalogue(("SKU-*",))
LIMITS = OrderLimits.from_settings(Settings())
NOW = 1794326460000


def document(**changes: object) -> dict[str, object]:
    return {"document_id": "PO-1", "kind": "receipt", "sku": "SKU-1", "warehouse_id": "WH-SH", "qty": 10, **changes}


def build(body: object) -> Mapped:
    return build_adjustment(body, WAREHOUSES, CATALOGUE, LIMITS, NOW)


def test_a_receipt_is_a_stock_adjustment_keyed_by_sku_with_the_document_as_its_id() -> None:
    mapped = build(document(reason="PO 4711"))
    assert (mapped.topic, mapped.key, mapped.event_type) == ("stock.adjustments", "SKU-1", "StockAdjusted")
    assert mapped.record == {"event_id": "PO-1", "event_time_ms": NOW, "sku": "SKU-1", "warehouse_id": "WH-SH",
                             "kind": "RECEIPT", "qty": 10, "reason": "PO 4711"}  # fmt: skip


def test_kinds_and_quantities() -> None:
    assert build(document(kind="count", qty=0)).record["kind"] == "COUNT"
    assert build(document(kind="correction", qty="-3")).record["qty"] == -3
    assert build(document(kind="RECEIPT", qty="12")).record == {**build(document(qty=12)).record}


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"kind": "transfer"}, "invalid_kind", "kind"),
        ({"kind": None}, "missing_field", "kind"),
        ({"qty": 0}, "invalid_qty", "qty"),
        ({"kind": "count", "qty": -1}, "invalid_qty", "qty"),
        ({"kind": "correction", "qty": 0}, "invalid_qty", "qty"),
        ({"qty": 10_000_001}, "invalid_qty", "qty"),
        ({"qty": "1.5"}, "invalid_field_type", "qty"),
        ({"qty": "--1"}, "invalid_field_type", "qty"),
        ({"warehouse_id": "WH-MARS"}, "unknown_warehouse", "warehouse_id"),
        ({"sku": "NOPE-1"}, "unknown_sku", "sku"),
        ({"sku": "SKU 1"}, "invalid_sku", "sku"),
        ({"sku": "SKU-1#2"}, "invalid_sku", "sku"),  # the key of SKU-1's bucket 2 when it is hot
        ({"document_id": " "}, "empty_field", "document_id"),
        ({"event_time_ms": "yesterday"}, "invalid_field_type", "event_time_ms"),
        ({"event_time_ms": 0}, "time_out_of_range", "event_time_ms"),
    ],
)
def test_refusals_name_the_field(changes: dict, code: str, field: str) -> None:
    with pytest.raises(IntakeError) as err:
        build(document(**changes))
    assert (err.value.reason, err.value.field, err.value.status) == (code, field, 422)


def test_a_repeat_is_per_sku_and_document() -> None:
    first, again = build(document()), build(document())
    assert first.identity == again.identity and first.digest == again.digest  # stamped on arrival: same content
    assert build(document(qty=11)).digest != first.digest
    other_line = build(document(sku="SKU-2"))
    assert other_line.identity != first.identity and other_line.record["event_id"] == "PO-1"


def test_two_documents_whose_sku_and_id_join_alike_are_two_repeats_apart() -> None:
    """Failed before: "SKU-1@A" with document "B" and "SKU-1" with document "A@B" shared one identity, and the second
    was refused 409 conflicting_duplicate, its units never booked."""
    assert build(document(sku="SKU-1@A", document_id="B")).identity != build(
        document(sku="SKU-1", document_id="A@B")).identity
