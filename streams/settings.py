"""Every setting stockflow reads from the environment, in one place.

Variables are prefixed ``STOCKFLOW_`` (``STOCKFLOW_KAFKA_BOOTSTRAP``, ...). The settings object is
built once at the entry point (CLI, worker, test fixture) and passed down explicitly; no module
reads the environment on its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STOCKFLOW_", extra="ignore")

    # --- where things live -------------------------------------------------------------------
    home: Path = Field(
        default=Path(".stockflow"),
        description="Local state: broker data and jars, embedded ClickHouse, worker tables.",
    )

    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "stockflow",
        description="Downloaded broker jars, shared by every home on this machine.",
    )

    # --- Kafka ---------------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        default=None,
        description="host:port of an existing broker. When set, stockflow starts no broker.",
    )
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    kafka_version: str = "4.4.0"
    kafka_heap: str = "1g"
    topic_prefix: str = Field(default="", description="Prepended to every topic name.")
    partitions: int = Field(default=8, ge=1, description="Partitions of every keyed topic.")

    # --- the worker ----------------------------------------------------------------------------
    app_id: str = Field(default="stockflow", description="Consumer group and changelog prefix.")
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    session_timeout_s: float = Field(
        default=10.0, gt=0, description="How soon the group notices a dead worker and moves its partitions."
    )
    log_level: Literal["crit", "error", "warn", "info", "debug"] = "warn"

    # --- ClickHouse ----------------------------------------------------------------------------
    clickhouse_url: str = Field(
        default="chdb://",
        description="chdb:// (embedded, under home) or chdb:///abs/path, or clickhouse://host:9000",
    )
    clickhouse_database: str = "stockflow"
    clickhouse_server_port: int = Field(default=19000, description="`dev up --clickhouse-server`")
    sink_batch_rows: int = Field(default=5000, ge=1)
    sink_flush_interval_s: float = Field(default=1.0, gt=0)

    # --- inventory rules -----------------------------------------------------------------------
    payment_timeout_s: float = Field(default=1800.0, gt=0)
    hold_ttl_s: float = Field(default=7200.0, gt=0, description="Orphaned-hold expiry.")
    safety_threshold: int = Field(default=10, ge=0)
    threshold_hysteresis: int = Field(default=5, ge=0)
    refresh_interval_ms: int = Field(default=200, ge=10)
    main_channel: str = "tmall"
    channels: tuple[str, ...] = ("tmall", "jd", "douyin", "pdd", "kuaishou", "own")
    tombstone_ttl_s: float = Field(
        default=7 * 86400.0, gt=0, description="How long finished holds are kept to spot replays."
    )
    parked_grace_s: float = Field(
        default=600.0, gt=0, description="How long an event may wait for its order to arrive."
    )
    max_line_qty: int = Field(default=10_000, ge=1)
    sweep_interval_s: float = Field(default=1.0, gt=0)
    batch_window_ms: float = Field(
        default=10.0,
        gt=0,
        le=1000,
        description="How long a stateful agent gathers events into one batch (latency vs throughput).",
    )
    batch_max_events: int = Field(default=5000, ge=1, description="Most events in one batch.")
    clock_control: bool = Field(default=False, description="Accept clock-advance events (tests and drills only).")
    warehouses_file: Path | None = Field(
        default=None, description="Warehouses stock may be held in (TOML); unset: the sample set stockflow ships."
    )

    # Routing and the order SLA
    routing_weights: dict[str, float] = Field(
        default={"distance": 0.4, "sufficiency": 0.3, "on_time": 0.2, "cost": 0.1},
        description='JSON, e.g. {"distance":0.4,"sufficiency":0.3,"on_time":0.2,"cost":0.1}; must sum to 1.',
    )
    on_time_prior: float = Field(default=0.95, ge=0, le=1, description="On-time rate a warehouse starts from.")
    on_time_prior_weight: float = Field(default=20.0, ge=0, description="How many shipments the prior counts as.")
    on_time_window: int = Field(default=500, ge=1, description="Shipments the rolling on-time rate looks at.")
    ship_promise_s: float = Field(default=86400.0, gt=0, description="Promised time from payment to shipment.")
    sla_unrouted_s: float = Field(default=900.0, gt=0, description="Paid but not pushed/acknowledged: red alert.")
    route_retry_s: float = Field(default=30.0, gt=0, description="Retry routing an order no warehouse could take.")
    webhook_url: str = Field(default="", description="WeCom group-robot webhook for red alerts; empty: none.")
    notify_kinds: tuple[str, ...] = ("sla_breach", "invariant_breach")

    # HTTP intake
    intake_host: str = "127.0.0.1"
    intake_port: int = 8080
    channels_file: Path | None = Field(
        default=None, description="Per-channel JSON field mapping (TOML); unset: the six channels stockflow ships."
    )
    catalogue_file: Path | None = Field(
        default=None,
        description="SKU patterns intake accepts (TOML; no patterns: any SKU); unset: the sample catalogue.",
    )

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
            if isinstance(value, bool):
                value = int(value)
            elif isinstance(value, (tuple, list)):
                value = json.dumps(list(value))
            elif isinstance(value, dict):
                value = json.dumps(value)
            env[f"STOCKFLOW_{name.upper()}"] = str(value)
        return env
