"""What every processor is handed: settings, the codec and the pipeline clock."""

from __future__ import annotations

from dataclasses import dataclass

from streams.contract.codec import Codec
from streams.engine.clock import Clock
from streams.settings import Settings


@dataclass
class Runtime:
    """What every agent module is given: settings, the codec and the pipeline clock."""

    settings: Settings
    codec: Codec
    clock: Clock
