"""The worker, built in one place: the Faust app with every business area's processors on it.

Areas never import this module; it imports them. ``stockflow worker`` runs what ``create_app``
returns.
"""

from __future__ import annotations

import faust

from agents.alerting import notify
from agents.analytics import sink
from agents.inventory import processor as inventory
from agents.orders import processor as orders
from agents.routing import warehouse_view
from streams.contract.codec import default_codec
from streams.engine import clock_control
from streams.engine.clock import Clock
from streams.engine.runtime import Runtime
from streams.settings import Settings


def create_app(settings: Settings) -> faust.App:
    datadir = settings.home_dir / "worker" / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap}",
        store="rocksdb://",
        datadir=str(datadir),
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        topic_allow_declare=True,
        processing_guarantee=settings.processing_guarantee,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        stream_wait_empty=False,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(settings.session_timeout_s / 10, 0.5),
    )
    runtime = Runtime(settings=settings, codec=default_codec(), clock=Clock())

    clock_control.register(app, runtime)
    inventory.register(app, runtime)
    orders.register(app, runtime, warehouse_view.register(app, runtime))
    notify.register(app, runtime)
    sink.register(app, runtime)
    return app
