"""Trying again what fails for a while - a broker or ClickHouse away, a webhook busy - and only that.

Every retry names what it retries and which errors are worth another attempt. A retriable error is
logged once per retry, with its reason, and the call is made again after an exponential wait, until
the attempts or the deadline run out; then the last error is raised. Any other error is fatal and
raised at once: retrying a bug, a payload the other side refuses or a wrong setting only hides it.

    rows = await Retry("ClickHouse insert", clickhouse_retriable, backoff=Backoff(0.2, 10.0)).acall(insert)

Built on tenacity; sync (``call``) and async (``acall``) alike.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import tenacity
from aiokafka import errors as kafka_errors
from confluent_kafka import KafkaError, KafkaException

T = TypeVar("T")
Retriable = tuple[type[BaseException], ...] | Callable[[BaseException], bool]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Waits between attempts: ``first_s``, then ``factor`` times the previous one, never over ``max_s``."""

    first_s: float = 0.2
    max_s: float = 5.0
    factor: float = 2.0


@dataclass(frozen=True)
class Retry:
    """How to retry one thing: which errors are retriable, for how long, how far apart.

    ``attempts`` and ``deadline_s`` bound the retries (the first that is reached ends them); with
    neither, a retriable error is retried until the call succeeds or the task is cancelled.
    """

    what: str
    retriable: Retriable
    attempts: int | None = None
    deadline_s: float | None = None
    backoff: Backoff = field(default_factory=Backoff)
    log: logging.Logger = _log
    level: int = logging.WARNING

    def is_retriable(self, exc: BaseException) -> bool:
        if not isinstance(exc, Exception):
            return False  # cancellation, interrupts and exits always go through
        if isinstance(self.retriable, tuple):
            return isinstance(exc, self.retriable)
        return self.retriable(exc)

    def call(self, fn: Callable[[], T], on_retry: Callable[[BaseException], object] | None = None) -> T:
        """``fn()``, retried; ``on_retry(error)`` runs before each wait (to drop a broken connection, say)."""

        def before_wait(state: tenacity.RetryCallState) -> None:
            exc = self._log_retry(state)
            if on_retry is not None:
                on_retry(exc)

        for attempt in tenacity.Retrying(**self._policy(), before_sleep=before_wait):
            with attempt:
                return fn()
        raise AssertionError("unreachable: tenacity returns the result or raises the last error")

    async def acall(
        self, fn: Callable[[], Awaitable[T]], on_retry: Callable[[BaseException], object] | None = None
    ) -> T:
        """``await fn()``, retried; ``on_retry(error)`` (awaited if it is a coroutine) runs before each wait."""

        async def before_wait(state: tenacity.RetryCallState) -> None:
            exc = self._log_retry(state)
            if on_retry is not None:
                outcome = on_retry(exc)
                if inspect.isawaitable(outcome):
                    await outcome

        async for attempt in tenacity.AsyncRetrying(**self._policy(), before_sleep=before_wait):
            with attempt:
                return await fn()
        raise AssertionError("unreachable: tenacity returns the result or raises the last error")

    def _policy(self) -> dict[str, Any]:
        stops: list[tenacity.stop.stop_base] = []
        if self.attempts is not None:
            stops.append(tenacity.stop_after_attempt(self.attempts))
        if self.deadline_s is not None:
            # No attempt starts past the deadline: stopping after it would still sleep and try once more, which
            # those waiting on the deadline (a revoke waiting for a call to land, say) do not count on.
            stops.append(tenacity.stop_before_delay(self.deadline_s))
        return {
            "retry": tenacity.retry_if_exception(self.is_retriable),
            "stop": tenacity.stop_any(*stops) if stops else tenacity.stop_never,
            "wait": tenacity.wait_exponential(
                multiplier=self.backoff.first_s, exp_base=self.backoff.factor, max=self.backoff.max_s
            ),
            # Giving up raises the error itself, not tenacity's RetryError around it.
            "reraise": True,
        }

    def _log_retry(self, state: tenacity.RetryCallState) -> BaseException:
        exc = state.outcome.exception() if state.outcome is not None else None
        assert exc is not None, "tenacity only waits after a failed attempt"
        self.log.log(
            self.level, "%s failed (attempt %d: %s: %s); retrying in %.1f s",
            self.what, state.attempt_number, type(exc).__name__, exc, state.upcoming_sleep,
        )  # fmt: skip
        return exc


# aiokafka's ``retriable`` flag says whether the client may resend one request; some errors it does
# not flag still pass when tried again a little later (a broker restarting, a rebalance, a timeout),
# and so may a bare KafkaError: aiokafka raises it for "no metadata from any broker" and wraps
# unexpected fetch failures in it.
_KAFKA_PASSING = (
    kafka_errors.KafkaTimeoutError,
    kafka_errors.KafkaUnavailableError,
    kafka_errors.BrokerNotAvailableError,
    kafka_errors.ReplicaNotAvailableError,
    kafka_errors.RebalanceInProgressError,
)


def leader_moving(exc: BaseException) -> bool:
    """A confluent-kafka call refused while a partition has no leader yet (a topic just created) or is
    moving: asked again in a moment, it answers."""
    if not isinstance(exc, KafkaException) or not isinstance(exc.args[0], KafkaError):
        return False
    error: KafkaError = exc.args[0]
    return bool(error.retriable()) or error.code() in (KafkaError.NOT_LEADER_FOR_PARTITION,
                                                       KafkaError.LEADER_NOT_AVAILABLE)  # fmt: skip


def kafka_transient(exc: BaseException) -> bool:
    """Worth retrying against Kafka: the broker away, busy or moving leaders; not a refusal or a bug."""
    if isinstance(exc, kafka_errors.KafkaError):
        return bool(exc.retriable) or isinstance(exc, _KAFKA_PASSING) or type(exc) is kafka_errors.KafkaError
    return isinstance(exc, (OSError, TimeoutError))
