"""Processors that would silently take each other's events, writes or timers are refused up front."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from streams.contract.topics import HOLD_COMMANDS, ORDER_EVENTS
from streams.engine.local import LocalRunner
from streams.engine.processor import Context, Processor
from streams.engine.state import StoreSpec


@dataclass
class Quiet(Processor):
    def handle(self, ctx: Context, event_type: str, record: dict[str, Any]) -> None:
        return None


def test_a_timer_store_indexed_for_two_processors_is_refused() -> None:
    # Before, the engine kept one processor per timer store and the other's timers never fired.
    first = Quiet("first", (ORDER_EVENTS,), stores=(StoreSpec("due_by_key"),), timer_store="due_by_key")
    second = Quiet("second", (HOLD_COMMANDS,), stores=(StoreSpec("due_by_key"),), timer_store="due_by_key")
    with pytest.raises(ValueError, match=r"store 'due_by_key' claimed by \['first', 'second'\]"):
        LocalRunner([first, second])


def test_timers_on_a_store_the_processor_does_not_own_are_refused() -> None:
    lone = Quiet("lone", (ORDER_EVENTS,), stores=(StoreSpec("mine"),), timer_store="theirs")
    with pytest.raises(ValueError, match="sets timers on 'theirs', a store it does not own"):
        LocalRunner([lone])


def test_one_input_topic_read_by_two_processors_is_refused() -> None:
    with pytest.raises(ValueError, match=r"input topic 'order\.events' claimed by"):
        LocalRunner([Quiet("a", (ORDER_EVENTS,)), Quiet("b", (ORDER_EVENTS,))])
