"""The Faust application: built from settings, with every agent module registered on it."""

from __future__ import annotations

from dataclasses import dataclass

import faust

from streams.clock import Clock
from streams.codec import Codec, default_codec
from streams.settings import Settings


@dataclass
class Runtime:
    """What every agent module is given: settings, the codec and the pipeline clock."""

    settings: Settings
    codec: Codec
    clock: Clock


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

    # Imported here: agent modules register agents, tables, timers and views on this app.
    from agents import clock_control, holds, notify, orders, sink

    clock_control.register(app, runtime)
    holds.register(app, runtime)
    orders.register(app, runtime)
    notify.register(app, runtime)
    sink.register(app, runtime)
    return app
