"""The event contract's Avro schemas (``*.avsc``, old versions in ``history/``) and the ClickHouse DDL
(``ddl/``), shipped as package data and read through ``streams.resources.packaged``."""
