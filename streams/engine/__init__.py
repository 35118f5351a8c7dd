"""The stream engine: batches, per-partition state behind changelogs, Kafka transactions, timers.

``loop`` runs processors on the broker, ``local`` runs them in-process for tests, ``processor`` is
the interface an area implements, ``state`` the stores, ``changelog`` their topics and restore,
``timers`` the per-partition timer heaps. The Faust-era helpers (``tables``, ``positions``,
``outbox``, ``keyed``) serve the agents not yet moved onto the engine.
"""
