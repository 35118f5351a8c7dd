"""Secrets in settings never reach a log line or a message."""

from __future__ import annotations

from streams.settings import Settings


def test_the_clickhouse_password_is_masked_wherever_the_url_is_shown() -> None:
    shown = Settings(clickhouse_url="clickhouse://stockflow:s3cr%40t@clickhouse:9000/stockflow").clickhouse_url_shown
    assert shown == "clickhouse://stockflow:***@clickhouse:9000/stockflow"
    assert Settings(clickhouse_url="clickhouse://clickhouse:9000").clickhouse_url_shown == "clickhouse://clickhouse:9000"
    assert Settings(clickhouse_url="chdb://").clickhouse_url_shown == "chdb://"
