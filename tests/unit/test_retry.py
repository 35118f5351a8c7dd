"""The one retry helper and the classifications its users give it, no broker, no ClickHouse."""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka import errors as kafka_errors
from clickhouse_driver import errors as ch_errors
from clickhouse_driver.errors import ErrorCodes

from agents.alerting.notify import WebhookRefused, post, webhook_retriable
from agents.analytics.sink import clickhouse_retriable
from streams.engine.retry import Backoff, Retry, kafka_transient

QUICK = Backoff(first_s=0.001, max_s=0.004)


class Transient(Exception):
    pass


class Fatal(Exception):
    pass


class Flaky:
    """Fails with the given errors in turn, then answers ``done``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors, self.calls = list(errors), 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"

    async def coro(self) -> str:
        return self()


def test_a_retriable_error_is_retried_until_the_call_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    flaky, seen = Flaky(Transient("away"), Transient("still away")), list[BaseException]()
    with caplog.at_level(logging.WARNING, logger="streams.engine.retry"):
        assert Retry("the thing", (Transient,), backoff=QUICK).call(flaky, seen.append) == "done"
    assert flaky.calls == 3 and [str(e) for e in seen] == ["away", "still away"]
    retries = [r.getMessage() for r in caplog.records]
    assert len(retries) == 2 and "the thing failed (attempt 1: Transient: away)" in retries[0]


def test_a_fatal_error_is_raised_at_once() -> None:
    flaky, seen = Flaky(Fatal("refused"), Transient("never reached")), list[BaseException]()
    with pytest.raises(Fatal, match="refused"):
        Retry("the thing", (Transient,), backoff=QUICK).call(flaky, seen.append)
    assert flaky.calls == 1 and seen == []


def test_the_classification_may_be_a_predicate() -> None:
    def only_busy(exc: BaseException) -> bool:
        return "busy" in str(exc)

    assert Retry("x", only_busy, backoff=QUICK).call(Flaky(Transient("busy"))) == "done"
    with pytest.raises(Transient, match="gone"):
        Retry("x", only_busy, backoff=QUICK).call(Flaky(Transient("gone")))


def test_it_gives_up_after_the_attempts_with_the_last_error_itself() -> None:
    flaky = Flaky(*(Transient(f"try {n}") for n in range(1, 10)))
    with pytest.raises(Transient, match="try 4"):
        Retry("x", (Transient,), attempts=4, backoff=QUICK).call(flaky)
    assert flaky.calls == 4


def test_it_gives_up_after_the_deadline() -> None:
    flaky = Flaky(*(Transient("away") for _ in range(10_000)))
    with pytest.raises(Transient):
        Retry("x", (Transient,), deadline_s=0.05, backoff=Backoff(first_s=0.01, max_s=0.01)).call(flaky)
    assert 2 <= flaky.calls < 100


def test_waits_grow_by_the_factor_up_to_the_cap(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="streams.engine.retry"):
        Retry("x", (Transient,), backoff=Backoff(first_s=0.001, max_s=0.004)).call(Flaky(*[Transient()] * 4))
    assert [r.args[-1] for r in caplog.records] == [0.001, 0.002, 0.004, 0.004]  # type: ignore[index]


def test_async_calls_retry_alike_and_await_the_retry_hook() -> None:
    flaky, dropped = Flaky(Transient("away"), Transient("away")), list[BaseException]()

    async def drop(exc: BaseException) -> None:
        dropped.append(exc)

    async def run() -> str:
        return await Retry("x", (Transient,), backoff=QUICK).acall(flaky.coro, drop)

    assert asyncio.run(run()) == "done" and flaky.calls == 3 and len(dropped) == 2
    fatal = Flaky(Fatal("no"))
    with pytest.raises(Fatal):
        asyncio.run(Retry("x", (Transient,), backoff=QUICK).acall(fatal.coro))
    assert fatal.calls == 1


def test_cancelling_is_never_retried() -> None:
    flaky = Flaky(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(Retry("x", lambda exc: True, backoff=QUICK).acall(flaky.coro))
    assert flaky.calls == 1


@pytest.mark.parametrize(
    ("exc", "retriable"),
    [
        (kafka_errors.KafkaConnectionError("down"), True),
        (kafka_errors.NotLeaderForPartitionError(), True),
        (kafka_errors.KafkaTimeoutError(), True),
        (kafka_errors.RebalanceInProgressError(), True),
        (kafka_errors.KafkaError("Unable to get cluster metadata over all known brokers"), True),
        (ConnectionResetError(), True),
        (TimeoutError("offsets not readable in 30 s"), True),
        (kafka_errors.TopicAuthorizationFailedError(), False),
        (kafka_errors.UnsupportedVersionError(), False),
        (kafka_errors.IllegalStateError(), False),
        (TypeError("a bug"), False),
    ],
)
def test_kafka_transient_errors(exc: BaseException, retriable: bool) -> None:
    assert kafka_transient(exc) is retriable


@pytest.mark.parametrize(
    ("exc", "retriable"),
    [
        (ch_errors.NetworkError("Connection refused"), True),
        (ch_errors.SocketTimeoutError("timed out"), True),
        (EOFError("Unexpected EOF while reading bytes"), True),
        (ConnectionRefusedError(), True),
        (ch_errors.ServerException("Memory limit exceeded", ErrorCodes.MEMORY_LIMIT_EXCEEDED), True),
        (ch_errors.ServerException("Table doesn't exist", ErrorCodes.UNKNOWN_TABLE), True),  # reopened: migrated
        (RuntimeError("Code: 210. DB::Exception: Connection refused. (NETWORK_ERROR)"), True),
        (ch_errors.ServerException("Type mismatch", ErrorCodes.TYPE_MISMATCH), False),
        (ch_errors.ServerException("out of range", ErrorCodes.VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE), False),
        (RuntimeError("Code: 53. DB::Exception: Type mismatch. (TYPE_MISMATCH)"), False),
        (ch_errors.TypeMismatchError("UInt8 got 'x'"), False),
        (OverflowError("int too big to convert"), False),
        (struct.error("argument out of range"), False),
        (TypeError("a bug"), False),
        (RuntimeError("Session is closed."), False),
    ],
)
def test_clickhouse_errors_for_the_sink(exc: BaseException, retriable: bool) -> None:
    assert clickhouse_retriable(exc) is retriable


@pytest.mark.parametrize(
    ("exc", "retriable"),
    [
        (WebhookRefused(500, "Internal Server Error"), True),
        (WebhookRefused(503, "busy"), True),
        (WebhookRefused(429, "slow down"), True),
        (WebhookRefused(200, {"errcode": 45009, "errmsg": "api freq out of limit"}), True),
        (TimeoutError(), True),
        (aiohttp.ServerDisconnectedError(), True),
        (WebhookRefused(404, "no such robot"), False),
        (WebhookRefused(400, "bad request"), False),
        (WebhookRefused(200, {"errcode": 93000, "errmsg": "invalid webhook url"}), False),
        (aiohttp.InvalidURL("not a url"), False),
    ],
)
def test_webhook_errors(exc: BaseException, retriable: bool) -> None:
    assert webhook_retriable(exc) is retriable


def test_the_webhook_is_retried_while_busy_and_not_when_it_refuses() -> None:
    answers: list[tuple[int, dict[str, Any]]] = []
    hits: list[int] = []

    async def robot(request: web.Request) -> web.Response:
        status, body = answers.pop(0)
        hits.append(status)
        return web.json_response(body, status=status)

    async def run() -> list[str]:
        app = web.Application()
        app.router.add_post("/send", robot)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        url = f"http://127.0.0.1:{port}/send"
        try:
            async with aiohttp.ClientSession() as session:
                answers.extend([(503, {}), (200, {"errcode": 0})])
                busy_then_ok = await post(session, url, {"msgtype": "markdown"})
                answers.extend([(400, {"errmsg": "bad body"})])
                refused = await post(session, url, {"msgtype": "markdown"})
            return [busy_then_ok, refused]
        finally:
            await runner.cleanup()

    busy_then_ok, refused = asyncio.run(run())
    assert busy_then_ok == "" and refused.startswith("HTTP 400") and hits == [503, 200, 400]
