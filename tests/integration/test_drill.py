"""The key-rotation drill, small: refunds flowing on jd, the key rotated mid-way, replayed, each paid once."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from loadtest.drill import key_rotation
from streams.settings import Settings

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_key_rotation_drill_pays_every_refund_exactly_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", kafka_bootstrap=kafka_bootstrap, partitions=4)
    # The drill deletes its topics when it ends, like every run on the local stack.
    result = key_rotation(settings, refunds=30, spread_s=6, rotate_after_s=2, console=Console(quiet=True))
    assert result.failed > 0 and result.replay["still_failing"] == 0  # the rotation bit, the replay put it right
    assert (result.refunded_once, result.refunded_twice, result.lost) == (30, 0, 0)
    assert result.seconds_from_rotation_to_alert is not None and result.seconds_from_rotation_to_alert < 60
