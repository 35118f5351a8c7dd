"""The worker, built in one place: the Faust shell, the engine with the hot processors, and the
low-rate Faust agents around them.

- Engine (``streams.engine``, confluent-kafka, one Kafka transaction per batch): the pool
  (``agents.inventory.hold_stock``), the order lifecycle (``agents.orders.run_lifecycle``) and
  refunds (``agents.refunds.run_refunds``, on the orders' partitions, reading their store).
  Faust's per-event cost (an agent ~80-190 µs, a table write ~230-265 µs) is above the hot path's
  whole budget, so the hot path does not go through it.
- Faust: the web views, the warehouse view routing reads, the customers' returns the health score
  reads, the webhook notifier, the scheduled inspection (``agents.inspect.scan_checks``, a leader-only
  timer), the clock control for drills, and the ClickHouse sink.

Areas never import this module; it imports them. ``stockflow worker`` runs what ``create_app``
returns.
"""

from __future__ import annotations

import faust

from agents.alerting import notify
from agents.inspect import scan_checks
from agents.inventory import views as inventory_views
from agents.inventory.hold_stock import HoldStock
from agents.orders import customer_returns, hot_skus
from agents.orders import views as order_views
from agents.orders.run_lifecycle import RunLifecycle
from agents.refunds import views as refund_views
from agents.refunds.run_refunds import RunRefunds
from agents.routing import warehouse_view
from agents.routing.warehouses import load_warehouses
from streams.contract.codec import codec_for
from streams.engine import clock_control
from streams.engine.clock import Clock
from streams.engine.host import host
from streams.engine.loop import Engine, group_instance_id
from streams.engine.runtime import Runtime
from streams.kafkaconf import faust_broker
from streams.settings import Settings


def create_app(settings: Settings) -> faust.App:
    datadir = settings.home_dir / "worker" / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        **faust_broker(settings),
        store="rocksdb://",
        datadir=str(datadir),
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        # Faust's own /router and /table views route Faust tables, which stockflow's views do not use;
        # asked before a changelog's metadata exists they answered 500 with a NoneType traceback.
        web_router_enabled=False,
        web_tables_enabled=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.kafka_replication_factor,
        topic_allow_declare=True,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        stream_wait_empty=False,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(settings.session_timeout_s / 10, 0.5),
        consumer_group_instance_id=group_instance_id(settings, "shell") if settings.static_membership else None,
    )
    runtime = Runtime(settings=settings, codec=codec_for(settings), clock=Clock())

    view = warehouse_view.register(app, runtime)
    pool = HoldStock.from_settings(settings, frozenset(load_warehouses(settings.warehouses_file)))
    returns = customer_returns.register(app, runtime)
    lifecycle = RunLifecycle.from_settings(settings, view, returns, hot_skus.register(app, runtime))
    refunds = RunRefunds.from_settings(settings)
    engine = Engine(settings, runtime.codec, runtime.clock, [lifecycle, pool, refunds])
    host(app, engine, settings.engine_stall_s)
    inventory_views.register(app, engine, pool)
    order_views.register(app, engine, lifecycle)
    refund_views.register(app, engine, refunds)

    clock_control.register(app, runtime)
    notify.register(app, runtime)
    scan_checks.register(app, runtime)
    return app
