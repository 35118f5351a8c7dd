"""The registry of event types: which schema file and record describe each event.

Adding an event is a schema file in ``schemas/``, a TypedDict in ``streams.contract.records`` and one entry
here. Older versions of a schema live in ``schemas/history/`` and stay readable forever: the codec
resolves a writer's schema by its fingerprint and reads it into the current version.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streams.contract import records
from streams.resources import packaged

SCHEMA_DIR = packaged("schemas")


@dataclass(frozen=True)
class EventType:
    name: str  # the Avro full name, e.g. "stockflow.OrderPlaced"
    schema_file: str  # relative to schemas/
    record: type

    @property
    def short_name(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def subject(self) -> str:
        """Its Schema Registry subject: the record's full name (RecordNameStrategy), not ``<topic>-value``,
        since one topic carries several event types."""
        return self.name

    @property
    def schema_path(self) -> Path:
        return SCHEMA_DIR / self.schema_file

    def history_paths(self) -> list[Path]:
        stem = Path(self.schema_file).stem
        return sorted((SCHEMA_DIR / "history").glob(f"{stem}.v*.avsc"))


EVENT_TYPES: tuple[EventType, ...] = (
    EventType("stockflow.OrderPlaced", "order_placed.avsc", records.OrderPlaced),
    EventType("stockflow.PaymentConfirmed", "payment_confirmed.avsc", records.PaymentConfirmed),
    EventType("stockflow.PaymentFailed", "payment_failed.avsc", records.PaymentFailed),
    EventType("stockflow.OrderCancelled", "order_cancelled.avsc", records.OrderCancelled),
    EventType("stockflow.StockAdjusted", "stock_adjusted.avsc", records.StockAdjusted),
    EventType("stockflow.ShipmentDispatched", "shipment_dispatched.avsc", records.ShipmentDispatched),
    EventType("stockflow.ShipmentDelivered", "shipment_delivered.avsc", records.ShipmentDelivered),
    EventType("stockflow.HoldCommand", "hold_command.avsc", records.HoldCommand),
    EventType("stockflow.HoldDecided", "hold_decided.avsc", records.HoldDecided),
    EventType("stockflow.ReservationDecided", "reservation_decided.avsc", records.ReservationDecided),
    EventType("stockflow.OrderStateChanged", "order_state_changed.avsc", records.OrderStateChanged),
    EventType("stockflow.OrderHealthScored", "order_health_scored.avsc", records.OrderHealthScored),
    EventType("stockflow.StockLevel", "stock_level.avsc", records.StockLevel),
    EventType("stockflow.RoutingDecision", "routing_decision.avsc", records.RoutingDecision),
    EventType("stockflow.Alert", "alert.avsc", records.Alert),
    EventType("stockflow.DeadLetter", "dead_letter.avsc", records.DeadLetter),
    EventType("stockflow.VipOverride", "vip_override.avsc", records.VipOverride),
    EventType("stockflow.OverrideAudited", "override_audited.avsc", records.OverrideAudited),
    EventType("stockflow.ClockAdvanced", "clock_advanced.avsc", records.ClockAdvanced),
    EventType("stockflow.WmsAcknowledged", "wms_acknowledged.avsc", records.WmsAcknowledged),
    EventType("stockflow.WarehouseDispatched", "warehouse_dispatched.avsc", records.WarehouseDispatched),
    EventType("stockflow.ShipmentOutcome", "shipment_outcome.avsc", records.ShipmentOutcome),
    EventType("stockflow.RefundRequested", "refund_requested.avsc", records.RefundRequested),
    EventType("stockflow.RefundReviewed", "refund_reviewed.avsc", records.RefundReviewed),
    EventType("stockflow.ReturnShipped", "return_shipped.avsc", records.ReturnShipped),
    EventType("stockflow.ReturnReceived", "return_received.avsc", records.ReturnReceived),
    EventType("stockflow.RefundSettled", "refund_settled.avsc", records.RefundSettled),
    EventType("stockflow.RefundCancelled", "refund_cancelled.avsc", records.RefundCancelled),
    EventType("stockflow.RefundInstruction", "refund_instruction.avsc", records.RefundInstruction),
    EventType("stockflow.RefundIssued", "refund_issued.avsc", records.RefundIssued),
    EventType("stockflow.RefundStateChanged", "refund_state_changed.avsc", records.RefundStateChanged),
    EventType("stockflow.ConnectorCallFailed", "connector_call_failed.avsc", records.ConnectorCallFailed),
    EventType("stockflow.ConnectorCalled", "connector_called.avsc", records.ConnectorCalled),
    EventType("stockflow.HotSku", "hot_sku.avsc", records.HotSku),
    EventType("stockflow.BucketSync", "bucket_sync.avsc", records.BucketSync),
)

BY_NAME: dict[str, EventType] = {e.name: e for e in EVENT_TYPES}
BY_SHORT_NAME: dict[str, EventType] = {e.short_name: e for e in EVENT_TYPES}
