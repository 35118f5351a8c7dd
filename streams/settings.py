"""Every setting stockflow reads from the environment, in one place.

Variables are prefixed ``STOCKFLOW_`` (``STOCKFLOW_KAFKA_BOOTSTRAP``, ...). The settings object is
built once at the entry point (CLI, worker, test fixture) and passed down explicitly; no module
reads the environment on its own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STOCKFLOW_", extra="ignore")

    # --- where things live -------------------------------------------------------------------
    home: Path = Field(
        default=Path(".stockflow"),
        description="Local state: broker data and log, embedded ClickHouse, worker tables.",
    )

    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "stockflow",
        description="Broker jars Maven downloads (about 40 MB, once), shared by every home on this machine.",
    )

    # --- Kafka ---------------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        default=None,
        description="`host:port` of an existing broker; when set, stockflow starts none. "
        "Unset: the local broker on `STOCKFLOW_KAFKA_PORT`.",
    )
    kafka_port: int = Field(default=19092, description="Client port of the local broker (127.0.0.1).")
    kafka_controller_port: int = Field(default=19093, description="KRaft controller port of the local broker.")
    kafka_version: str = Field(default="4.4.0", description="Broker release `dev up` resolves with Maven.")
    kafka_heap: str = Field(default="1g", description="Java heap of the local broker (`-Xms` and `-Xmx`).")
    topic_prefix: str = Field(default="", description="Prepended to every topic name; empty: none.")
    partitions: int = Field(
        default=4,
        ge=1,
        description="Partitions of every keyed topic, fixed when the topics are created: the most workers one "
        "group can use (`stockflow plan` sizes it for a peak). Each costs the broker work on every request, so "
        "a one-box stack wants few. A worker refuses to start on topics created with another count.",
    )
    wire_format: Literal["single_object", "confluent"] = Field(
        default="single_object",
        description="How the events stockflow writes are framed: `single_object` (Avro single-object encoding: "
        "`C3 01` and the schema's 8-byte fingerprint) or `confluent` (Schema Registry framing: byte 0 and the 4-byte "
        "schema id; needs `STOCKFLOW_SCHEMA_REGISTRY_URL`). Both are always read.",
    )
    schema_registry_url: str = Field(
        default="",
        description="A Confluent-compatible Schema Registry (`http://host:8081`, credentials as "
        "`https://user:password@host`): schemas are registered and looked up under their record's full name "
        "(RecordNameStrategy). Empty: none, and Schema Registry-framed input is refused (`unknown_schema_id`).",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="How every Kafka client stockflow makes talks to the brokers: `PLAINTEXT`, `SSL` (TLS), "
        "`SASL_PLAINTEXT` or `SASL_SSL` (SASL over TLS). With `SASL_*`, the local broker `dev up` starts takes the "
        "same user.",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="SCRAM-SHA-512", description="SASL mechanism when the protocol is `SASL_*`."
    )
    kafka_sasl_username: str = Field(default="", description="SASL user name (needed with `SASL_*`).")
    kafka_sasl_password: SecretStr = Field(
        default=SecretStr(""), description="SASL password (needed with `SASL_*`); never logged or shown."
    )
    kafka_ssl_ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CA(s) the brokers' certificates are checked against (`SSL`, `SASL_SSL`); "
        "unset: the system's trust store. The broker's name must match its certificate.",
    )
    kafka_ssl_cert_file: Path | None = Field(
        default=None, description="PEM client certificate, for brokers that require mutual TLS; with the key file."
    )
    kafka_ssl_key_file: Path | None = Field(
        default=None, description="PEM private key of `STOCKFLOW_KAFKA_SSL_CERT_FILE`."
    )
    kafka_ssl_key_password: SecretStr = Field(
        default=SecretStr(""), description="Password of an encrypted client key; never logged or shown."
    )
    kafka_replication_factor: int = Field(
        default=1, ge=1, description="Replication factor of the topics stockflow creates (contract, changelogs)."
    )
    kafka_min_insync_replicas: int = Field(
        default=1,
        ge=1,
        description="`min.insync.replicas` of the topics stockflow creates: with `acks=all`, a write needs this many "
        "replicas; at most the replication factor (3 and 2 on a production cluster).",
    )

    # --- the worker ----------------------------------------------------------------------------
    app_id: str = Field(default="stockflow", description="Consumer group and changelog prefix.")
    web_port: int = Field(
        default=6066,
        description="Port of the worker's HTTP views (`/stock`, `/orders`, `/engine/status`, `/metrics`, `/healthz`, "
        "`/readyz`); the dashboards are the sink's (`STOCKFLOW_SINK_PORT`).",
    )
    web_host: str = Field(
        default="127.0.0.1",
        description="Address the worker's HTTP views and `stockflow web` listen on, and the CLI asks.",
    )
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        default="exactly_once",
        description="How the engine commits a batch: `exactly_once` (outputs, changelog records and input offsets in "
        "one Kafka transaction) or `at_least_once` (flushed, then offsets committed; a crash may repeat outputs).",
    )
    session_timeout_s: float = Field(
        default=6.0,
        gt=0,
        description="How soon the group notices a dead worker and moves its partitions; a worker restarted after "
        "a crash also waits about this long for the dead one's membership to lapse. 6 s is the broker's default "
        "minimum (`group.min.session.timeout.ms`).",
    )
    static_membership: bool = Field(
        default=False,
        description="Workers join their consumer groups under a fixed name (host and web port): one restarted "
        "with the same settings gets its partitions back at once, without a rebalance; one stopped for good "
        "hands them over only after the session timeout. Off by default: after a broker outage longer than "
        "the session, librdkafka 2.16 fences such a worker's consumer for good (the worker must be restarted).",
    )
    log_level: Literal["crit", "error", "warn", "info", "debug"] = Field(
        default="warn", description="Worker log level on stderr: `crit`, `error`, `warn`, `info` or `debug`."
    )

    # --- ClickHouse ----------------------------------------------------------------------------
    clickhouse_url: str = Field(
        default="chdb://",
        description="`chdb://` (embedded, under home), `chdb:///abs/path`, or `clickhouse://host:9000[/db]`.",
    )
    clickhouse_database: str = Field(
        default="stockflow", description="Database name (the path of a `clickhouse://` URL wins over it)."
    )
    clickhouse_server_port: int = Field(
        default=19000, description="TCP port of the ClickHouse server `dev up --clickhouse-server` starts."
    )
    sink_batch_rows: int = Field(
        default=40_000,
        ge=1,
        description="Messages the sink gathers into one insert per table (fewer, larger inserts cost ClickHouse "
        "less per row); sized to hold `STOCKFLOW_SINK_FLUSH_INTERVAL_S` of a 1,500 orders/s peak.",
    )
    sink_flush_interval_s: float = Field(
        default=2.0,
        gt=0,
        description="Longest the sink waits before inserting a batch that is not full: how far the dashboards may "
        "trail the topics. Every insert makes a part per table for ClickHouse to write and merge; at 1,500 "
        "orders/s, 2 s instead of 1 s cost the sink a quarter less CPU an order (BENCHMARKS.md).",
    )
    sink_niceness: int = Field(
        default=10,
        ge=0,
        le=19,
        description="How much the sink process lowers its CPU priority (`nice`): on a machine it shares with "
        "workers, decisions win and the dashboards catch up after a peak. Started in a session of its own (as "
        "`stockflow bench`, the dev stack and most supervisors start it), it lowers its session's scheduling group "
        "too, without which Linux's autogroup ranks a nice value only within its session. 0: same priority.",
    )
    sink_port: int = Field(
        default=6067,
        description="Port of the `stockflow sink` process's HTTP views (`/sink/status`, `/dash`, `/healthz`, "
        "`/readyz`); with embedded ClickHouse, `stockflow dash` and `web` ask it.",
    )
    sink_url: str = Field(
        default="",
        description="Where the other processes reach the sink's HTTP views (e.g. `http://sink:6067` in the compose "
        "stack, where it runs in a container of its own); empty: this host, `STOCKFLOW_SINK_PORT`.",
    )

    # --- inventory rules -----------------------------------------------------------------------
    payment_timeout_s: float = Field(default=1800.0, gt=0, description="Unpaid orders release their holds after this.")
    hold_ttl_s: float = Field(default=7200.0, gt=0, description="An orphaned (unpaid) hold expires after this.")
    presale_balance_s: float = Field(
        default=30 * 86400.0,
        gt=0,
        description="How long after its deposit (the channel's payment time) a presale order waits for its "
        "balance, its units held; then it is cancelled (`balance_unpaid`) and the units go back, the deposit "
        "forfeited. A safety net for a lost close, not the rule: the marketplace closes a trade whose balance is "
        "unpaid itself (that cancel comes through intake), and Double-11's deposit phase often opens the balance "
        "10+ days after the first deposits, so a short window cancels early depositors before they can pay.",
    )
    safety_threshold: int = Field(
        default=10, ge=0, description="Below this many available units only the main channel sells."
    )
    threshold_hysteresis: int = Field(
        default=5, ge=0, description="Every channel sells again above the safety threshold plus this."
    )
    refresh_interval_ms: int = Field(
        default=200, ge=10, description="At most one `stock.levels` record per SKU per interval."
    )
    hot_skus: dict[str, int] = Field(
        default_factory=dict,
        description="SKUs split into stock buckets on several partitions, with how many (JSON object, e.g. "
        '`{"SKU-1": 4}`); applied when the value changes; `stockflow stock hot` / `unhot` change it at run time.',
    )
    hot_sku_low_water: int = Field(
        default=5,
        ge=1,
        description="A hot SKU's bucket with fewer available units is topped up from a richer one; when all its "
        "buckets together hold no more than this many per bucket, they gather the rest into one.",
    )
    main_channel: str = Field(default="tmall", description="The channel that keeps selling below the safety threshold.")
    channels: tuple[str, ...] = Field(
        default=("tmall", "jd", "douyin", "pdd", "kuaishou", "own"),
        description="Channels orders may come from (JSON list).",
    )
    tombstone_ttl_s: float = Field(
        default=7 * 86400.0,
        gt=0,
        description="How long an applied stock adjustment id is remembered, so a document the WMS sends again "
        "changes nothing (an adjustment dated further back is refused, `adjustment_too_old`); a VIP override is "
        "kept as long after its last change (a pending one then expires).",
    )
    count_clock_skew_ms: int = Field(
        default=500,
        ge=0,
        le=60_000,
        description="How far a warehouse's clock may run ahead of the pipeline's. A count stands as of when it was "
        "taken: a shipment the pool booked less than this before that time comes off it too (in doubt, fewer units; "
        "the next count gives a unit taken twice back).",
    )
    count_max_age_s: float = Field(
        default=3600.0,
        gt=0,
        le=7 * 86400.0,
        description="How long after it was taken a stock count may still reach the pool: each warehouse's shelf "
        "movements are kept this long (at most its last 48 quarter-seconds with any) to be put back on top of it; "
        "an older count is refused (`count_too_old`).",
    )
    line_tombstone_ttl_s: float = Field(
        default=600.0,
        gt=0,
        description="How long a finished order line (released, expired, shipped) is remembered against late "
        "duplicates of its commands; the SKU's stored state stays bounded by this, not by its traffic.",
    )
    parked_grace_s: float = Field(
        default=600.0,
        gt=0,
        description="How long an event may wait for its order to arrive; then it is dead-lettered (`unknown_order`), "
        "unless it is one `STOCKFLOW_PARKED_PAYMENT_GRACE_S` keeps longer. "
        "A marketplace settlement waiting this long for its refund's request raises a `refund_reconciliation` alert.",
    )
    parked_payment_grace_s: float = Field(
        default=86400.0,
        gt=0,
        description="How long a payment, a cancel, a shipment or a delivery may wait for its order: after "
        "`STOCKFLOW_PARKED_GRACE_S` a `payment_without_order` (or `event_without_order`) alert is raised and the "
        "event is kept this long, so a late order is still paid, never shipped after its cancel, and never shipped "
        "twice; then it is dead-lettered (`unknown_order`; a payment raises a RED `paid_order_not_fulfilled`: owed "
        "back) and a slim copy is kept `STOCKFLOW_ORDER_RETENTION_S` more for an order replayed later. "
        "A marketplace settlement before its refund's request waits this grace too, then is dead-lettered "
        "(`unknown_refund`); so does a return receipt for an order no warehouse is known to have shipped, for the "
        "order's shipment notice (then `nothing_shipped`).",
    )
    order_retention_s: float = Field(
        default=30 * 86400.0,
        gt=0,
        description="How long a finished order (delivered, rejected, cancelled, timed out, or shipped with no delivery "
        "reported) keeps its state after its last change, for late WMS and channel events; then it is purged, so "
        "stored orders stay bounded. A payment, cancel, shipment or delivery given up on waiting for its order is "
        "kept as long after it was.",
    )
    max_line_qty: int = Field(default=10_000, ge=1, description="Larger line quantities are refused (`invalid_qty`).")
    max_order_lines: int = Field(
        default=100, ge=1, description="Orders with more lines are refused (`invalid_lines`), at intake and after."
    )
    engine_stall_s: float = Field(
        default=180.0,
        gt=0,
        description="A worker whose engine loop has not come round for this long exits (code 3) so a supervisor "
        "restarts it: a Kafka client call that ignores its own timeout cannot hold the hot path forever.",
    )
    batch_window_ms: float = Field(
        default=3.0,
        gt=0,
        le=1000,
        description="How long a stateful agent gathers events into each batch (all of it, unless "
        "`STOCKFLOW_BATCH_MAX_EVENTS` come sooner): latency against transactions a second.",
    )
    fetch_wait_ms: int = Field(
        default=5,
        ge=1,
        le=500,
        description="Longest a stateful agent's fetch waits at the broker for records: an event reaches its "
        "batch up to this much later, and an idle worker sends up to 1000/this empty fetches a second.",
    )
    batch_max_events: int = Field(default=5000, ge=1, description="Most events in one batch.")
    clock_control: bool = Field(
        default=False, description="Accept `ops.clock` events from `stockflow clock` (tests and drills only)."
    )
    timing: bool = Field(default=False, description="Print how long each `stockflow` command took.")
    warehouses_file: Path | None = Field(
        default=None,
        description="Warehouses stock may be held in, their location and cost (TOML); "
        "unset: the sample set in `agents/routing/config/warehouses.toml`.",
    )

    # Routing and the order SLA
    routing_weights: dict[str, float] = Field(
        default={"distance": 0.4, "sufficiency": 0.3, "on_time": 0.2, "cost": 0.1},
        description="Weight of each routing factor (JSON object naming all four); must sum to 1.",
    )
    on_time_prior: float = Field(default=0.95, ge=0, le=1, description="On-time rate a warehouse starts from.")
    on_time_prior_weight: float = Field(default=20.0, ge=0, description="How many shipments the prior counts as.")
    on_time_window: int = Field(default=500, ge=1, description="Shipments the rolling on-time rate looks at.")
    ship_promise_s: float = Field(
        default=86400.0,
        gt=0,
        description="Promised time from payment to shipment (what on-time means). A routed order past it with lines "
        "not shipped raises a RED `shipment_overdue` alert (once; cleared when it moves on).",
    )
    health_rules_file: Path | None = Field(
        default=None,
        description="The order health score (TOML: each factor's weight and thresholds, coupon types, how much "
        "return history each worker keeps, the focus-pool threshold); unset: `agents/orders/config/health.toml`.",
    )
    refund_rules_file: Path | None = Field(
        default=None,
        description="Refund rules per channel (TOML: auto-approval limit, no-reason days, tracking before review, "
        "time zone); unset: `agents/refunds/config/refund_rules.toml`.",
    )
    refund_respond_s: float = Field(
        default=2 * 3600.0, gt=0, description="Refund SOP: customer service answers a request within this long."
    )
    refund_qc_s: float = Field(
        default=24 * 3600.0, gt=0, description="Refund SOP: the warehouse finishes QC of a return within this long."
    )
    refund_return_s: float = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description="Refund SOP: an approved return reaches the warehouse within this long of its approval (the "
        "buyer sends it); past it, a RED `refund_sop_breach` alert and a `return_` row in the exception list. A "
        "channel that reviews only with the return's tracking number gives the buyer as long to send it.",
    )
    refund_settle_s: float = Field(
        default=72 * 3600.0,
        gt=0,
        description="A refund paid out and not settled by the marketplace within this long: a RED "
        "`refund_reconciliation` alert.",
    )
    refund_retention_s: float = Field(
        default=90 * 86400.0,
        gt=0,
        description="How long a finished refund (completed, rejected, cancelled) keeps its state after it last moved "
        "(its parcel's QC too), then it is purged; "
        "a refund still open that has not moved for this long is purged too, with a RED `refund_sop_breach` alert "
        "(`abandoned`).",
    )
    sla_unrouted_s: float = Field(
        default=900.0, gt=0, description="Paid but not pushed/acknowledged this long: a RED `sla_breach` alert."
    )
    route_retry_s: float = Field(default=30.0, gt=0, description="Retry routing an order no warehouse could take.")
    reserve_retry_s: float = Field(
        default=60.0,
        gt=0,
        description="How long a placed order waits for its lines' stock answers before it asks the pool again "
        "(idempotent) and raises a `reservation_unanswered` alert, so an answer lost never leaves it placed for good.",
    )
    max_route_attempts: int = Field(
        default=5,
        ge=1,
        description="Routing attempts in a row for one order (each after a warehouse refused an allocation) "
        "before it waits `STOCKFLOW_ROUTE_RETRY_S`. A refusal while a hot SKU's warehouse is being counted "
        "(`warehouse_counting`) is not one: the line is routed again a second later.",
    )
    webhook_url: str = Field(default="", description="WeCom group-robot webhook for alerts; empty: no notifications.")
    notify_kinds: tuple[str, ...] = Field(
        default=(
            "sla_breach",
            "invariant_breach",
            "connector_failing",
            "credential_expiring",
            "refund_sop_breach",
            "refund_reconciliation",
            "inspection_breach",
            # Money already taken or owed: a customer to pay back, goods gone out, refunds lost to retention.
            "paid_order_not_fulfilled",
            "shipped_after_cancel",
            "cancelled_after_shipment",
            "shipped_from_other_warehouse",
            "failed_queue_gap",
            # An order nothing else would move: routed, and past its promised ship time; or delivered with a part
            # its warehouse never reported shipping.
            "shipment_overdue",
            "delivered_with_unshipped_lines",
            # Goods back for a refund customer service closed: a person decides whether to reopen it.
            "refund_parcel_after_close",
        ),
        description="Alert kinds posted to the webhook (JSON list).",
    )
    notify_rate: int = Field(
        default=20,
        ge=1,
        description="Messages the notifier sends one robot per `STOCKFLOW_NOTIFY_WINDOW_S` (WeCom: 20 a minute). "
        "Each worker keeps it on its own: with N workers, set it to 20/N.",
    )
    notify_window_s: float = Field(
        default=60.0, gt=0, description="The sliding window `STOCKFLOW_NOTIFY_RATE` counts over, in seconds."
    )
    notify_max_bytes: int = Field(
        default=4096,
        ge=512,
        description="Largest markdown content of one message, in UTF-8 bytes (WeCom: 4096); longer digests are "
        "split, a longer alert's text is cut on a character boundary.",
    )
    notify_queue_max: int = Field(
        default=10_000,
        ge=1,
        description="Alerts a worker keeps waiting for the robot (table `notify_pending`); beyond it the least "
        "urgent are dropped, logged, and counted in the next message.",
    )
    notify_remember_h: float = Field(
        default=168.0,
        gt=0,
        description="Hours the notifier remembers an alert it sent or gave up (table `notified_by_alert`), so a "
        "duplicate or a replay of `alerts` within it is not sent again; then the row is deleted. Keep it at least "
        "the `alerts` topic's retention (the dev broker's: 168 h).",
    )
    notify_retry_max_s: float = Field(
        default=300.0,
        gt=0,
        description="Longest wait between tries while the robot fails or refuses (1 s, doubling); alerts stay queued.",
    )

    # HTTP intake
    intake_host: str = Field(default="127.0.0.1", description="Address `stockflow intake` listens on.")
    intake_port: int = Field(default=8080, description="Port `stockflow intake` listens on.")
    channels_file: Path | None = Field(
        default=None,
        description="Per-channel JSON field mapping (TOML); unset: the six channels of "
        "`agents/intake/config/channels.toml`.",
    )
    catalogue_file: Path | None = Field(
        default=None,
        description="SKU patterns intake accepts (TOML; no patterns: any SKU); "
        "unset: the sample catalogue `agents/intake/config/catalogue.toml`.",
    )
    intake_max_event_age_s: float = Field(
        default=30 * 86400.0,
        gt=0,
        description="Intake refuses times (event, sent) further in the past than this (`time_out_of_range`).",
    )
    intake_max_future_s: float = Field(
        default=300.0,
        ge=0,
        description="Intake refuses times further ahead of its clock than this (`time_out_of_range`).",
    )
    intake_secrets_file: Path | None = Field(
        default=None,
        description="TOML with each channel's callback `app_key` and `secret` and the WMS `token` "
        "(`agents/intake/config/secrets.example.toml`); never logged. Unset: no channel has a secret.",
    )
    intake_allow_unsigned: bool = Field(
        default=False,
        description="Development only: accept unsigned callbacks from channels with no secret configured "
        "(and WMS calls when no token is); a channel with a secret is always verified.",
    )

    # Marketplace simulator (drills and tests)
    sim_host: str = Field(
        default="127.0.0.1", description="Address the marketplace simulator (`stockflow sim`) listens on."
    )
    sim_port: int = Field(default=18090, description="Port of the marketplace simulator; channel `c` is under `/c/`.")
    sim_apps_file: Path | None = Field(
        default=None,
        description="The simulator's apps per channel (`app_key`, `secret`, optional `valid_from_ms`, `expires_at_ms`; "
        "JSON or TOML). Unset: generated once into `<home>/sim/apps.json`.",
    )
    sim_latency_ms: float = Field(default=15.0, ge=0, description="Least time the simulator takes to answer a call.")
    sim_jitter_ms: float = Field(
        default=45.0, ge=0, description="Random extra answer time of the simulator, between 0 and this."
    )
    sim_settle_url: str = Field(
        default="",
        description="Where the simulator posts the signed settlement notification of each agreed refund, `{channel}` "
        "replaced by the refund's channel (the intake's routes: "
        "`http://127.0.0.1:8080/v1/channels/{channel}/refund_settled`); empty: none is sent (settlements stay "
        "readable at `/_sim/settlements`).",
    )
    sim_settle_delay_ms: float = Field(
        default=2000.0, ge=0, description="How long after agreeing a refund the simulator sends its settlement."
    )
    sim_calls_kept: int = Field(
        default=100_000,
        ge=1,
        description="Accepted calls the simulator keeps for inspection, oldest dropped first; its per-refund and "
        "per-SKU summaries are always complete.",
    )

    # Outbound connectors (`stockflow connectors`)
    marketplace_url: str = Field(
        default="",
        description="Base URL of the marketplaces' open APIs; channel `c` is called at `<url>/c`. Empty: the local "
        "marketplace simulator on `STOCKFLOW_SIM_HOST`:`STOCKFLOW_SIM_PORT`.",
    )
    connector_credentials_file: Path | None = Field(
        default=None,
        description="The connectors' app keys, secrets and expiry dates per channel (JSON, mode 0600, written by "
        "`stockflow connectors set-key`, re-read on change). Unset: `<home>/connectors/credentials.json`.",
    )
    connector_retry_budget_s: float = Field(
        default=20.0,
        ge=0,
        le=50,
        description="How long a connector retries a call answered retriably (no answer, 5xx, rate limit) before "
        "`connector_failing` is raised and a refund call goes to the channel's failed queue (a stock figure waits in "
        "the connector and is sent again, at most 30 s apart, until the channel takes it or a newer one replaces it; "
        "one the platform refuses alone while the rest of its call goes through is parked after 10 tries or 15 "
        "minutes); "
        "at most 50: the alert is due within a minute of the first failure.",
    )
    connector_call_timeout_s: float = Field(
        default=5.0, gt=0, description="How long one marketplace call may take before it counts as no answer."
    )
    connector_in_doubt_ms: int = Field(
        default=30_000,
        ge=0,
        le=300_000,
        description="How long a stock call whose answer was lost (no answer, a 5xx) may still land at its platform. "
        "The platforms' stock APIs carry no version, so such a call landing late would set its older figure over "
        "a newer one: a SKU's figure sent within this time after a lost call is sent once more after it, and so is "
        "one read again within this time after its partition was assigned (an earlier owner's calls are not known).",
    )
    connector_push_window_ms: int = Field(
        default=100,
        ge=0,
        le=800,
        description="A SKU's channel stock push waits this long after its first unsent change; newer figures in "
        "the meantime replace it, so a burst is one call.",
    )
    connector_qps: dict[str, float] = Field(
        default={},
        description="Calls a second the connectors allow themselves per channel (JSON object); a channel not named: "
        "90% of its platform's documented per-app limit.",
    )
    credential_warn_days: int = Field(
        default=7, ge=0, description="A WARNING `credential_expiring` alert this many days before a key expires."
    )
    connectors_port: int = Field(
        default=6068, description="Port of the `stockflow connectors run` status view (`/connectors/status`)."
    )
    connectors_url: str = Field(
        default="",
        description="Where the other processes reach the connectors' status view (e.g. `http://connectors:6068`); "
        "empty: this host, `STOCKFLOW_CONNECTORS_PORT`.",
    )
    inspect_interval_s: float = Field(
        default=60.0,
        ge=0,
        description="The worker runs `stockflow inspect`'s checks this often (on the group's leader), raising a RED "
        "`inspection_breach` alert when a check enters breach and clearing it on recovery; 0: no scheduled scan.",
    )

    # Order-peak forecast (`stockflow forecast`)
    promotions_file: Path | None = Field(
        default=None,
        description="The promotion calendar the forecast knows (TOML `[[promotion]]` tables, or CSV "
        "`name,start,end,intensity`; times in the shop's zone); unset: `agents/forecast/config/promotions.toml`.",
    )
    forecast_drivers_file: Path | None = Field(
        default=None,
        description="Other known hourly drivers of orders for the forecast (CSV: `hour`, then one numeric column "
        "each, e.g. rain or a competitor's sale); unset: none.",
    )
    forecast_history_days: int = Field(
        default=7, ge=1, le=60, description="Days of orders before now the forecast learns from."
    )

    @model_validator(mode="after")
    def _timeouts_agree(self) -> Settings:
        # An unpaid hold expiring before its order's payment timeout would cancel orders whose
        # customers are still within their time to pay.
        if self.payment_timeout_s >= self.hold_ttl_s:
            raise ValueError(
                f"STOCKFLOW_PAYMENT_TIMEOUT_S ({self.payment_timeout_s:g}) must be shorter than "
                f"STOCKFLOW_HOLD_TTL_S ({self.hold_ttl_s:g})"
            )
        return self

    @model_validator(mode="after")
    def _confluent_needs_a_registry(self) -> Settings:
        # A Schema Registry frame names its schema by an id only a registry can hand out.
        if self.wire_format == "confluent" and not self.schema_registry_url:
            raise ValueError("STOCKFLOW_WIRE_FORMAT=confluent needs STOCKFLOW_SCHEMA_REGISTRY_URL")
        return self

    @model_validator(mode="after")
    def _kafka_security_agrees(self) -> Settings:
        # Caught at start, not as a handshake failure minutes later in one client's log.
        protocol = self.kafka_security_protocol
        has_user = bool(self.kafka_sasl_username and self.kafka_sasl_password.get_secret_value())
        if protocol.startswith("SASL_") and not has_user:
            raise ValueError(
                f"STOCKFLOW_KAFKA_SECURITY_PROTOCOL={protocol} needs STOCKFLOW_KAFKA_SASL_USERNAME and "
                "STOCKFLOW_KAFKA_SASL_PASSWORD"
            )
        tls_files = [f for f in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file") if getattr(self, f"kafka_{f}")]
        if tls_files and not protocol.endswith("SSL"):
            named = ", ".join(f"STOCKFLOW_KAFKA_{f.upper()}" for f in tls_files)
            raise ValueError(f"{named} set, but STOCKFLOW_KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS")
        if (self.kafka_ssl_cert_file is None) != (self.kafka_ssl_key_file is None):
            raise ValueError("STOCKFLOW_KAFKA_SSL_CERT_FILE and STOCKFLOW_KAFKA_SSL_KEY_FILE go together (mutual TLS)")
        if self.kafka_min_insync_replicas > self.kafka_replication_factor:
            raise ValueError(
                f"STOCKFLOW_KAFKA_MIN_INSYNC_REPLICAS ({self.kafka_min_insync_replicas}) is above "
                f"STOCKFLOW_KAFKA_REPLICATION_FACTOR ({self.kafka_replication_factor}): no write would ever succeed"
            )
        return self

    @property
    def clickhouse_url_shown(self) -> str:
        """``clickhouse_url`` fit for logs and messages: its password replaced by ``***``."""
        return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", self.clickhouse_url)

    @property
    def sink_base_url(self) -> str:
        """The sink's HTTP views, as the other processes reach them."""
        return self.sink_url.rstrip("/") or f"http://{self._local_host}:{self.sink_port}"

    @property
    def connectors_base_url(self) -> str:
        """The connectors' status view, as the other processes reach it."""
        return self.connectors_url.rstrip("/") or f"http://{self._local_host}:{self.connectors_port}"

    @property
    def _local_host(self) -> str:
        # A service listening on every address is asked on the loopback one.
        return "127.0.0.1" if self.web_host in ("0.0.0.0", "::", "") else self.web_host

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def bootstrap(self) -> str:
        return self.kafka_bootstrap or f"127.0.0.1:{self.kafka_port}"

    @property
    def home_dir(self) -> Path:
        return self.home.resolve()

    def as_env(self) -> dict[str, str]:
        """These settings as STOCKFLOW_* variables, to hand to a child process."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()  # the child needs the secret itself, not its mask
            elif isinstance(value, bool):
                value = int(value)
            elif isinstance(value, (tuple, list)):
                value = json.dumps(list(value))
            elif isinstance(value, dict):
                value = json.dumps(value)
            env[f"STOCKFLOW_{name.upper()}"] = str(value)
        return env


def _readable_default(value: object) -> str:
    """A default as someone would type it into the variable: JSON for lists and maps, ``~`` for the home folder."""
    if value is None:
        return ""
    if isinstance(value, bool) or (isinstance(value, float) and value.is_integer()):
        value = int(value)  # 1 rather than True or 1.0: what one types into the variable
    if isinstance(value, (tuple, list, dict)):
        value = json.dumps(value, separators=(",", ":"))
    if isinstance(value, Path) and value.is_absolute() and value.is_relative_to(Path.home()):
        value = Path("~") / value.relative_to(Path.home())
    text = str(value)
    return f"`{text}`" if text else ""


def settings_rows() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every field of ``Settings``, in declaration order."""
    prefix = Settings.model_config.get("env_prefix", "")
    return [
        (
            f"{prefix}{name.upper()}",
            _readable_default(field.get_default(call_default_factory=True)),
            field.description or "",
        )
        for name, field in Settings.model_fields.items()
    ]


def settings_table_markdown() -> str:
    """The settings as the Markdown table the README carries (``stockflow settings --markdown``)."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for variable, default, meaning in settings_rows():
        cell = meaning.replace("|", "\\|")  # a bare | would end the cell
        lines.append(f"| `{variable}` | {default} | {cell} |")
    return "\n".join(lines) + "\n"
