"""A benchmark run leaves nothing on disk that only it could read: engineers run them all week before
the peak, and each used to leave ~170 MB of embedded ClickHouse and its worker state behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest import stack
from loadtest.stack import isolated, remove_run_folders
from streams.settings import Settings


@pytest.fixture(autouse=True)
def _no_runs_left_behind() -> Iterator[None]:
    yield
    stack._RUNS.clear()  # noqa: SLF001 - the runs these tests made must not reach a later stack


def test_a_runs_stores_and_scratch_clickhouse_go_and_nothing_else(tmp_path: Path) -> None:
    base = Settings(home=tmp_path, clickhouse_url="chdb://")
    _, run = isolated(base, "bench")
    _, other = isolated(base, "bench")
    chdb = Path(run.clickhouse_url.removeprefix("chdb://"))
    written = [run.home_dir / "state" / run.app_id / "stock_by_sku-0", run.home_dir / "worker" / run.app_id / "t",
               chdb / "data"]  # fmt: skip
    kept = [run.home_dir / "bench" / "bench-1.json", run.home_dir / "logs" / "worker.log",
            other.home_dir / "state" / other.app_id / "x"]  # fmt: skip
    for path in written + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")

    remove_run_folders([run])

    assert not any(p.exists() for p in written)
    assert all(p.exists() for p in kept)
    assert not chdb.exists()


def test_a_clickhouse_folder_the_user_chose_is_never_removed(tmp_path: Path) -> None:
    mine = tmp_path / "my-clickhouse"
    (mine / "data").mkdir(parents=True)
    _, run = isolated(Settings(home=tmp_path, clickhouse_url="clickhouse://127.0.0.1:9000"), "bench")
    run = run.model_copy(update={"clickhouse_url": f"chdb://{mine}"})

    remove_run_folders([run])

    assert (mine / "data").exists()
