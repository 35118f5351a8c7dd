"""The stream engine: batches, per-partition state behind changelogs, Kafka transactions, timers.

``loop`` runs processors on the broker, ``local`` runs them in-process for tests, ``processor`` is
the interface an area implements, ``state`` the stores, ``changelog`` their topics and restore,
``timers`` the per-partition timer heaps, ``host`` the engine inside the Faust worker.
``tables`` serves the low-rate agents that stay on Faust (the notifier).
"""
