"""The terminal dashboard's output: whole cells however wide, "no rows", and columns read from the SQL."""

from __future__ import annotations

import pytest

from agents.analytics import queries as dashboards
from agents.analytics.cli import print_table
from streams.settings import Settings


def test_a_wide_table_in_a_pipe_keeps_every_cell_whole(capsys: pytest.CaptureFixture[str]) -> None:
    columns = [f"column_{i}" for i in range(12)]
    row = {c: f"value-{c}-" + "x" * 20 for c in columns}
    print_table("Wide", "", columns, [row])
    out = capsys.readouterr().out
    assert all(value in out for value in row.values()) and "…" not in out
    assert "1 rows" in out


def test_no_rows_is_said(capsys: pytest.CaptureFixture[str]) -> None:
    print_table("Routing", "Shares add up to more than 100% [with splits].", ["a"], [])
    assert capsys.readouterr().out.splitlines() == [
        "Routing: no rows",
        "Shares add up to more than 100% [with splits].",
    ]


def test_columns_are_read_from_the_outermost_select() -> None:
    sql = """
    WITH t AS (SELECT a, b FROM x)
    SELECT h.order_id, round(sum(x), 1) AS total, -- a comment, with a comma
           if(a = ',', 'q', 'r') AS `odd`
    FROM (SELECT 1 AS inner_only) AS h
    UNION ALL SELECT 1, 2, 3
    """
    assert dashboards.result_columns(sql) == ("order_id", "total", "odd")
    assert dashboards.result_columns("SELECT * FROM t") == ()


def test_every_dashboard_names_its_columns() -> None:
    for dash in dashboards.load_all().values():
        assert dash.columns, dash.name


def test_a_time_naming_no_zone_is_the_shops_as_every_time_a_dashboard_shows() -> None:
    """Failed before: --from 2026-11-11T00:00 was read as UTC, 08:00 in Shanghai, and Double-11's first
    eight hours were left out of the range."""
    midnight_shanghai = 1794326400000
    assert dashboards.PARAMS["from_ms"].check("2026-11-11T00:00", Settings(), 0) == midnight_shanghai
    assert dashboards.PARAMS["to_ms"].check("2026-11-11T00:00+08:00", Settings(), 0) == midnight_shanghai
    assert dashboards.parse_time("2026-11-11T00:00Z", 0) == midnight_shanghai + 8 * 3_600_000
