"""The topic contract: every topic, its key, partitioning, retention, events and single writer.

This is what outside producers code against (the README's contract table is printed from it by
``stockflow topics contract``). Keyed topics use Kafka's default (Java, murmur2) partitioner; a
confluent-kafka/librdkafka producer must set ``partitioner=murmur2_random`` so that every event of
one SKU or order lands on the partition that owns its state.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from streams.errors import StockflowError
from streams.kafkaconf import AuthWatch, confluent_config, topic_config
from streams.settings import Settings

# A dead letter carries the refused message whole: room for the largest one a broker takes by default
# (1 MiB) and the letter around it. Producers allow a little more than the topic (their framing).
LARGEST_DEAD_LETTER = 2 * 1024 * 1024
PRODUCER_MAX_MESSAGE_BYTES = LARGEST_DEAD_LETTER + 64 * 1024
log = logging.getLogger(__name__)


class PartitionCountMismatch(StockflowError, RuntimeError):
    """The topics exist with another partition count than the settings give them."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    events: tuple[str, ...]
    writer: str  # the one module that writes it ("outside" = connectors, WMS, intake)
    direction: str  # input | internal | output
    compacted: bool = False
    single_partition: bool = False
    doc: str = ""
    # False: a record the engine applies in the batch that wrote it (its reader's partition is on the
    # same worker) is not published: its effect commits in the reader's changelog, and the reader's
    # answer is published. Records for partitions on other workers are published as always.
    publish_applied: bool = True
    # True for a compacted topic read as a table (the newest record per key carries everything): of
    # the records one batch writes under one key, only the newest is published, as Kafka Streams'
    # record cache does. Compaction would drop the others anyway; this spares writing them.
    newest_per_batch: bool = False
    max_message_bytes: int = 0  # > 0: the topic's ``max.message.bytes`` (else the broker's default)
    # The topic's ``retention.ms`` (-1: never deleted), also set on a topic that exists with another one;
    # None: the broker's default (7 days).
    retention_ms: int | None = None
    # A compacted topic's ``min.compaction.lag.ms``: how long every record is kept before compaction may drop
    # the older ones of its key (0: the broker's default, none).
    min_compaction_lag_ms: int = 0

    def partitions(self, settings: Settings) -> int:
        return 1 if self.single_partition else settings.partitions


# For the compacted topics whose intermediate records the dashboards count (an order's routing, a refund
# paid out one month and settled the next): the sink waits out a ClickHouse outage of up to a day, so a
# sink that fell behind, or ClickHouse rebuilt from the topics, within a week still sees every one.
DASHBOARD_HISTORY_MS = 7 * 86_400_000

ORDER_EVENTS = TopicSpec(
    "order.events",
    key="order id '<channel>:<channel_order_id>'",
    events=(
        "OrderPlaced",
        "PaymentConfirmed",
        "PaymentFailed",
        "OrderCancelled",
        "ShipmentDispatched",
        "ShipmentDelivered",
        "WmsAcknowledged",
    ),
    writer="outside (channel connectors, stockflow intake, WMS)",
    direction="input",
    doc="Everything a channel or the WMS says about an order, in channel order.",
)
STOCK_ADJUSTMENTS = TopicSpec(
    "stock.adjustments",
    key="SKU",
    events=("StockAdjusted",),
    writer="outside (WMS / ERP)",
    direction="input",
    doc="Receipts, absolute counts, corrections per warehouse; presale pool caps.",
)
OPS_OVERRIDES = TopicSpec(
    "ops.overrides",
    key="SKU",
    events=("VipOverride", "HotSku"),
    writer="agents.inventory.cli (stockflow override; stockflow stock hot / unhot)",
    direction="input",
    doc="VIP override requests and approvals; an operator marking a SKU hot (its stock split into buckets) or not.",
)
OPS_CLOCK = TopicSpec(
    "ops.clock",
    key="'clock' (compacted: the newest offset wins)",
    events=("ClockAdvanced",),
    writer="streams.cli (stockflow clock)",
    direction="input",
    compacted=True,
    single_partition=True,
    doc="Drills and tests only: moves the pipeline clock.",
)
HOLD_COMMANDS = TopicSpec(
    "stock.hold-commands",
    key="SKU, or 'SKU#k[.n]' for bucket k of a hot SKU",
    events=("HoldCommand",),
    writer="agents.orders.run_lifecycle",
    direction="internal",
    doc="Reserve / release / commit / ship one order line against the pool. A command for a SKU whose "
    "partition is on the worker that wrote it is applied there and not published; its answer is.",
    publish_applied=False,
)
STOCK_BUCKETS = TopicSpec(
    "stock.buckets",
    key="SKU (a hot SKU's home) or 'SKU#k[.n]' (its bucket k)",
    events=("BucketSync", "HoldCommand"),
    writer="agents.inventory.hold_stock",
    direction="internal",
    doc="Between a hot SKU's home and its buckets: stock transfers (debit and credit commit together), figures, "
    "settings, counts, and a RESERVE a bucket could not fill passed on to the next one. Applied where it is "
    "written when its partition is on the same worker, and then not published.",
    publish_applied=False,
)
HOLD_RESULTS = TopicSpec(
    "stock.hold-results",
    key="order id",
    events=("HoldDecided",),
    writer="agents.inventory.hold_stock",
    direction="internal",
    doc="The pool's answer per order line.",
)
RESERVATION_RESULTS = TopicSpec(
    "reservation.results",
    key="order id",
    events=("ReservationDecided",),
    writer="agents.orders.run_lifecycle",
    direction="output",
    doc="All lines held, or none (reason per line).",
)
ORDER_STATES = TopicSpec(
    "order.states",
    key="order id",
    events=("OrderStateChanged",),
    writer="agents.orders.run_lifecycle",
    direction="output",
    compacted=True,
    min_compaction_lag_ms=DASHBOARD_HISTORY_MS,
    newest_per_batch=True,
    doc="The order's lifecycle: its newest transition per worker batch (transitions in one batch, such as placed "
    "and reserved, are published as the newest alone); every record carries all stage times so far.",
)
STOCK_LEVELS = TopicSpec(
    "stock.levels",
    key="SKU",
    events=("StockLevel",),
    writer="agents.inventory.hold_stock",
    direction="output",
    compacted=True,
    doc="Available stock and sellable units per channel, at most once per refresh interval.",
)
STOCK_HOT_SKUS = TopicSpec(
    "stock.hot-skus",
    key="SKU",
    events=("HotSku",),
    writer="agents.inventory.hold_stock",
    direction="output",
    compacted=True,
    doc="Which SKUs are split into stock buckets and how many take reservations: the order lifecycle routes "
    "a hot SKU's order lines to its buckets by it.",
)
ROUTING_DECISIONS = TopicSpec(
    "routing.decisions",
    key="order id",
    events=("RoutingDecision",),
    writer="agents.orders.run_lifecycle",
    direction="output",
    doc="Chosen warehouse(s) with every candidate's factors and score.",
)
WAREHOUSE_DISPATCH = TopicSpec(
    "warehouse.dispatch",
    key="order id",
    events=("WarehouseDispatched",),
    writer="agents.orders.run_lifecycle",
    direction="output",
    doc="Orders pushed to a warehouse, one record per warehouse of a split order: what a WMS consumes.",
)
WAREHOUSE_PERFORMANCE = TopicSpec(
    "warehouse.performance",
    key="warehouse id",
    events=("ShipmentOutcome",),
    writer="agents.orders.run_lifecycle",
    direction="internal",
    doc="Shipped on time or not, per order and warehouse: the routing on-time rate is built from it.",
)
ORDER_HEALTH = TopicSpec(
    "order.health",
    key="order id",
    events=("OrderHealthScored",),
    writer="agents.orders.run_lifecycle",
    direction="output",
    compacted=True,
    doc="Each paid order's health score (0-100) with every factor's points; under the threshold: the focus pool.",
)
ALERTS = TopicSpec(
    "alerts",
    key="subject (SKU or order id)",
    events=("Alert",),
    writer="agents.alerting.alerts",
    direction="output",
    doc="Paused SKUs, invariant breaches, SLA breaches; cleared=true when over.",
)
AUDIT_OVERRIDES = TopicSpec(
    "audit.overrides",
    key="override id",
    events=("OverrideAudited",),
    writer="agents.inventory.hold_stock",
    direction="output",
    doc="Who released locked stock to which VIP order, when, why, how much.",
)
DEADLETTERS = TopicSpec(
    "deadletters",
    key="source topic",
    events=("DeadLetter",),
    writer="streams.engine.deadletter",
    direction="output",
    doc="Refused messages with reason, original bytes and source position.",
    max_message_bytes=LARGEST_DEAD_LETTER,
)

REFUND_EVENTS = TopicSpec(
    "refund.events",
    key="order id '<channel>:<channel_order_id>'",
    events=("RefundRequested", "RefundReviewed", "ReturnShipped", "ReturnReceived", "RefundSettled", "RefundCancelled"),
    writer="outside (stockflow intake: channel refund callbacks, customer-service reviews, the WMS returns desk)",
    direction="input",
    doc="Everything a channel, customer service or the warehouse says about a refund; refund id "
    "'<channel>:<channel_refund_id>'.",
)
REFUND_ISSUED = TopicSpec(
    "refund.issued",
    key="order id",
    events=("RefundIssued",),
    writer="agents.channels.issue_refunds",
    direction="internal",
    doc="The marketplace accepted a refund instruction: the refund moves on to waiting for settlement.",
)
REFUND_INSTRUCTIONS = TopicSpec(
    "refund.instructions",
    key="order id",
    events=("RefundInstruction",),
    writer="agents.refunds.run_refunds",
    direction="output",
    doc="Refunds to pay back on the original payment path; the channel connector sends them, idempotent by refund id.",
)
REFUND_STATES = TopicSpec(
    "refund.states",
    key="refund id '<channel>:<channel_refund_id>'",
    events=("RefundStateChanged",),
    writer="agents.refunds.run_refunds",
    direction="output",
    compacted=True,
    min_compaction_lag_ms=DASHBOARD_HISTORY_MS,
    doc="Every refund transition; the newest per refund carries all stage times.",
)
STOCK_RETURNS = TopicSpec(
    "stock.returns",
    key="SKU",
    events=("StockAdjusted",),
    writer="agents.refunds.run_refunds",
    direction="internal",
    doc="Returned units QC found resellable, back on hand at the warehouse that received them "
    "(adjustment id 'return:<refund id>:<line>').",
)
REFUND_ORDER_CANCELS = TopicSpec(
    "refund.order-cancels",
    key="order id",
    events=("OrderCancelled",),
    writer="agents.refunds.run_refunds",
    direction="internal",
    doc="A refund-only approved before shipment cancels its order: holds released, or the WMS push cancelled.",
)
# The marketplaces the connectors talk to; each has its own failed-call queue, so one channel's
# rotated key never holds up another's calls, and a replay keeps that channel's order.
MARKETPLACES: tuple[str, ...] = ("tmall", "jd", "douyin", "pdd", "kuaishou", "own")
CONNECTOR_FAILED: dict[str, TopicSpec] = {
    channel: TopicSpec(
        f"connector.failed.{channel}",
        key="channel",
        events=("ConnectorCallFailed",),
        writer="agents.channels (the outbound connectors)",
        direction="output",
        single_partition=True,
        # An approved refund parked here is paid only when it is replayed, however long that takes: the
        # broker's default retention deleted it after 7 days.
        retention_ms=-1,
        doc=f"{channel}: outbound calls that failed for good, in order, with request, answer and reason; "
        "`stockflow connectors replay` resends them.",
    )
    for channel in MARKETPLACES
}

CONNECTOR_CALLS = TopicSpec(
    "connector.calls",
    key="channel",
    events=("ConnectorCalled",),
    writer="agents.channels.calls (the outbound connectors and their replay)",
    direction="output",
    doc="Every outbound marketplace call as it ended: outcome, attempts, latencies, the last error, the key's "
    "fingerprint and expiry; the connector health board and the weekly connectivity report read it.",
)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    ORDER_EVENTS,
    STOCK_ADJUSTMENTS,
    OPS_OVERRIDES,
    OPS_CLOCK,
    HOLD_COMMANDS,
    STOCK_BUCKETS,
    HOLD_RESULTS,
    RESERVATION_RESULTS,
    ORDER_STATES,
    STOCK_LEVELS,
    STOCK_HOT_SKUS,
    ROUTING_DECISIONS,
    WAREHOUSE_DISPATCH,
    WAREHOUSE_PERFORMANCE,
    ORDER_HEALTH,
    ALERTS,
    AUDIT_OVERRIDES,
    REFUND_EVENTS,
    REFUND_ISSUED,
    REFUND_INSTRUCTIONS,
    REFUND_STATES,
    STOCK_RETURNS,
    REFUND_ORDER_CANCELS,
    *CONNECTOR_FAILED.values(),
    CONNECTOR_CALLS,
    DEADLETTERS,
)

# What the ClickHouse sink records: every business topic, not the drill clock.
SUNK_TOPICS: tuple[TopicSpec, ...] = tuple(t for t in ALL_TOPICS if t is not OPS_CLOCK)


def ensure_topics(settings: Settings, specs: tuple[TopicSpec, ...] = ALL_TOPICS) -> list[str]:
    """Create missing topics with their contract settings, the replication factor and ``min.insync.replicas``
    of the settings; return the names created. Refused credentials raise ``KafkaAuthError``."""
    from confluent_kafka.admin import AdminClient, NewTopic

    watch = AuthWatch(settings)
    admin = AdminClient(confluent_config(settings, error_cb=watch))
    existing = watch.list_topics(admin, 15).topics
    wanted = []
    for spec in specs:
        name = settings.topic(spec.name)
        if name in existing:
            _check_partitions(settings, spec, len(existing[name].partitions))
            continue
        config = topic_configs(settings, spec)
        wanted.append(NewTopic(name, spec.partitions(settings), settings.kafka_replication_factor, config=config))
    _keep_pinned_configs(settings, admin, [spec for spec in specs if settings.topic(spec.name) in existing])
    if not wanted:
        return []
    created, raced = [], []
    for name, fut in admin.create_topics(wanted, operation_timeout=30).items():
        try:
            fut.result()
            created.append(name)
        except Exception as exc:  # another process created it meanwhile, or just before (metadata lags)
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
            raced.append(name)
    if raced:
        _check_raced(settings, admin, watch, {settings.topic(spec.name): spec for spec in specs}, raced)
    return created


# The contract's topic configuration an existing topic is brought back to at every start.
PINNED_CONFIGS = ("retention.ms", "min.compaction.lag.ms")


def topic_configs(settings: Settings, spec: TopicSpec) -> dict[str, str]:
    """The topic-level configuration ``spec``'s topic is created with."""
    lag = {"min.compaction.lag.ms": str(spec.min_compaction_lag_ms)} if spec.min_compaction_lag_ms else {}
    return {**topic_config(settings), **({"cleanup.policy": "compact"} if spec.compacted else {}), **lag,
            **({"max.message.bytes": str(spec.max_message_bytes)} if spec.max_message_bytes else {}),
            **({"retention.ms": str(spec.retention_ms)} if spec.retention_ms is not None else {})}  # fmt: skip


def _keep_pinned_configs(settings: Settings, admin: Any, specs: list[TopicSpec]) -> None:
    """Give existing topics the contract's retention and compaction lag: a failed queue created before its
    retention was pinned kept the broker's 7 days and goes on deleting what nobody replayed, a compacted
    topic created before its lag was set may drop records the sink has not read. A broker that does not let
    us (no ALTER_CONFIGS right) is logged with the command that does it; the topic still works."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    pinned = {}
    for spec in specs:
        wanted = {k: v for k, v in topic_configs(settings, spec).items() if k in PINNED_CONFIGS}
        if wanted:
            pinned[settings.topic(spec.name)] = wanted
    if not pinned:
        return
    try:
        described = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name) for name in pinned])
        wrong: dict[str, dict[str, str | None]] = {}
        for resource, future in described.items():
            found = future.result(timeout=15)
            for key, value in pinned[resource.name].items():
                entry = found.get(key)
                if entry is None or entry.value != value:
                    wrong.setdefault(resource.name, {})[key] = None if entry is None else entry.value
        if not wrong:
            return
        changes = [
            ConfigResource(ResourceType.TOPIC, name, incremental_configs=[
                ConfigEntry(key, pinned[name][key], incremental_operation=AlterConfigOpType.SET) for key in keys])
            for name, keys in wrong.items()
        ]  # fmt: skip
        for resource, future in admin.incremental_alter_configs(changes).items():
            future.result(timeout=15)
            for key, was in wrong[resource.name].items():
                log.warning("topic %s: %s was %s, set to %s as the contract says", resource.name, key, was,
                            pinned[resource.name][key])  # fmt: skip
    except (KafkaException, TimeoutError, ValueError) as exc:
        log.error("topics %s may keep a configuration other than the contract's (%s): %s; set it with "
                  "kafka-configs.sh --alter --entity-type topics --entity-name NAME --add-config KEY=VALUE",
                  ", ".join(sorted(pinned)), ", ".join(PINNED_CONFIGS), exc)  # fmt: skip


def _check_raced(settings: Settings, admin: Any, watch: AuthWatch, by_name: dict[str, TopicSpec],
                 raced: list[str]) -> None:  # fmt: skip
    """Check the partitions of topics someone else created (with their settings, maybe not ours) once the
    broker's metadata lists them: it can lag the creation by a moment."""
    waiting, deadline = set(raced), time.monotonic() + 15
    while True:
        listed = watch.list_topics(admin, 15).topics
        for name in [n for n in waiting if n in listed and listed[n].partitions]:
            _check_partitions(settings, by_name[name], len(listed[name].partitions))
            waiting.discard(name)
        if not waiting or time.monotonic() > deadline:
            return  # one still not listed has nothing to be checked against yet; the next start checks it
        time.sleep(0.2)


def _check_partitions(settings: Settings, spec: TopicSpec, found: int) -> None:
    # Keys are placed by partition count: a worker whose settings disagree with the topics would look for
    # a SKU's or an order's state on the wrong partition (and refuse its events as misrouted).
    if found != spec.partitions(settings):
        raise PartitionCountMismatch(
            f"topic {settings.topic(spec.name)} has {found} partitions but the settings say "
            f"{spec.partitions(settings)}; set STOCKFLOW_PARTITIONS={found} (the count the topics were created "
            "with), or move to new topics (STOCKFLOW_TOPIC_PREFIX)"
        )


def delete_topics(kafka: Settings | str, prefixes: tuple[str, ...]) -> int:
    """Delete every topic whose name starts with one of ``prefixes`` on the brokers of ``kafka`` (settings, or a
    PLAINTEXT ``host:port``); how many. A broker that keeps every test's or benchmark's ~35 topics runs out of
    file descriptors. Nothing to do if it is gone."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    if not prefixes:
        return 0
    admin = AdminClient(confluent_config(kafka))
    try:
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefixes)]
        for future in (admin.delete_topics(names, operation_timeout=60) if names else {}).values():
            future.result()
    except KafkaException:
        return 0
    return len(names)


def contract_rows(settings: Settings) -> list[tuple[str, str, str, str, str, str]]:
    """(topic, direction, key, partitions, schema files, writer) for the README table."""
    from streams.contract.registry import BY_SHORT_NAME

    rows = []
    for spec in ALL_TOPICS:
        files = ", ".join(f"schemas/{BY_SHORT_NAME[e].schema_file}" for e in spec.events)
        days = spec.min_compaction_lag_ms // 86_400_000
        lag = f", every record kept {days} days" if days else ""
        kept = f" (compacted{lag})" if spec.compacted else " (never expires)" if spec.retention_ms == -1 else ""
        parts = str(spec.partitions(settings)) + kept
        rows.append((spec.name, spec.direction, spec.key, parts, files, spec.writer))
    return rows


def contract_table_markdown(settings: Settings) -> str:
    """The README's topic contract table (``stockflow topics contract --markdown``)."""
    header = ("topic", "direction", "key", "partitions", "schema", "written by")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in contract_rows(settings):
        lines.append("| " + " | ".join(f"`{row[0]}`" if i == 0 else c for i, c in enumerate(row)) + " |")
    return "\n".join(lines) + "\n"
