"""One outbound marketplace call, made the same way by both connectors and by the replay.

``ChannelCaller.call(channel, endpoint, body)`` takes the channel's key from the credentials store
(read afresh, so ``connectors set-key`` takes effect on the next call), waits its turn in the channel's
client-side rate limit, signs the business body with ``platforms.sign_request`` (a fresh timestamp on
every attempt), POSTs it to ``<marketplace url>/<channel>`` and judges the answer with
``platforms.classify``. Retriable answers (no answer, a timeout, 5xx, the platform's rate limit, a
stale timestamp) are tried again with exponential backoff (``streams.engine.retry``, on tenacity) for
``STOCKFLOW_CONNECTOR_RETRY_BUDGET_S``; a credential or fatal answer ends the call at once. The result
says what happened and, for a call that failed for good, the ``Reason`` its failed-call record gets.

Reads: the credentials store; writes: nothing but the HTTP call, the per-endpoint figures of the
status view (a many-SKU ``stock_batch`` call counts under ``stock``, what it is for, and takes one turn
in the rate limit like any call) and, given an ``on_call``, each call's ``ConnectorCalled`` record as
it ended (the process publishes it on ``connector.calls``: the health board and the weekly
connectivity report read it in ClickHouse). Never logs a key or a signed request.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from agents.channels.credentials import CredentialStore
from agents.channels.outbound import CallOutcome, EndpointStats, FailedCall, TokenBucket
from agents.channels.platforms import (
    BodyError,
    Endpoint,
    Outcome,
    OutcomeKind,
    canonical_json,
    classify,
    platform,
    purpose,
    sign_request,
)
from streams.contract.reasons import Reason
from streams.contract.records import ConnectorCalled
from streams.engine.clock import wall_ms
from streams.engine.retry import Backoff, Retry
from streams.errors import StockflowError
from streams.settings import Settings

log = logging.getLogger(__name__)
RATE_SHARE = 0.9  # of the platform's per-app limit: our clock and theirs never agree exactly
# A replay run while the connectors serve the same app takes this much of what they take: the platform
# limits per app, and two callers each pacing themselves to 90% would offer it 1.8 times its limit.
REPLAY_BESIDE_CONNECTORS = 0.1
ANSWER_CHARS = 1500
BACKOFF = Backoff(first_s=0.25, max_s=4.0)
THREAD_CONNECTIONS = 2  # kept open per calling thread: its one call at a time, and a replay's across channels


class Stopping(StockflowError, RuntimeError):
    """The process is stopping in the middle of a call's retries: the record stays unfinished, read again."""


@dataclass(frozen=True)
class CallResult:
    """How a call ended: the last answer judged, its text, how many attempts it took; ``lost``: one of them was sent
    and its answer leaves it maybe applied, now or later (``platforms.Outcome.maybe_applied``)."""

    outcome: Outcome
    answer: str
    attempts: int
    lost: bool = False

    @property
    def done(self) -> bool:
        return self.outcome.done

    @property
    def reason(self) -> Reason:
        """Why it failed for good (meaningless for a call that is done). An attempt that may have been applied
        comes first, whatever the last one was answered: a person must never take it as not paid (its replay
        learns which, and a key set again or a refusal shows up then)."""
        if self.lost:
            return Reason.CONNECTOR_IN_DOUBT
        if self.outcome.kind is OutcomeKind.CREDENTIAL:
            return Reason.CONNECTOR_CREDENTIALS
        if self.outcome.kind is OutcomeKind.RETRIABLE:
            return Reason.CONNECTOR_RETRIES_EXHAUSTED
        return Reason.CONNECTOR_REFUSED

    def failed_call(self, channel: str, endpoint: str, idempotency_key: str, body: Mapping[str, Any], source: str,
                    earlier_attempts: int = 0) -> FailedCall:  # fmt: skip
        """This failed call as its failed queue keeps it (the body as JSON, before signing)."""
        return FailedCall(channel, endpoint, idempotency_key, canonical_json(dict(body)), self.answer, self.reason,
                          earlier_attempts + self.attempts, source)  # fmt: skip

    def platform_ref(self, channel: str) -> str:
        """The platform's reference for the accepted call, where its answer carries one (else its echo of the
        platform's refund id)."""
        result = self.outcome.result or {}
        for name in ("platform_ref", "refund_ref", "request_id", "id", platform(channel).fields.refund_id):
            value = result.get(name)
            if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
                return str(value)
        return ""


class _Again(Exception):  # an internal signal to tenacity, not an error anybody sees
    def __init__(self, result: CallResult) -> None:
        super().__init__(result.answer)
        self.result = result


def marketplace_url(settings: Settings, channel: str) -> str:
    """Where ``channel``'s open API is: ``STOCKFLOW_MARKETPLACE_URL/<channel>``, by default the local simulator."""
    base = settings.marketplace_url or f"http://{settings.sim_host}:{settings.sim_port}"
    return f"{base.rstrip('/')}/{channel}"


def rate_per_s(settings: Settings, channel: str, share: float = 1.0) -> float:
    """Calls a second to ``channel``: ``STOCKFLOW_CONNECTOR_QPS`` or 90% of the platform's limit, times ``share``."""
    given = settings.connector_qps.get(channel)
    return (given if given else platform(channel).default_qps * RATE_SHARE) * share


class ChannelCaller:
    """Makes calls to every channel; thread-safe (lanes of several channels and endpoints share it)."""

    def __init__(
        self,
        settings: Settings,
        store: CredentialStore,
        *,
        http: httpx.Client | None = None,
        stopping: Callable[[], bool] = lambda: False,
        budget_s: float | None = None,
        on_call: Callable[[ConnectorCalled], None] | None = None,
        replaying: bool = False,
        rate_share: float = 1.0,
    ) -> None:
        self.settings = settings
        # Of ``rate_per_s``: less for a replay beside running connectors, and for a connector process that
        # owns only some of the input partitions (``set_share``).
        self.rate_share = rate_share
        self.store = store
        self.stopping = stopping
        self.budget_s = settings.connector_retry_budget_s if budget_s is None else budget_s
        # Each call as it ended; called on the calling thread, so it must not block (a producer's send).
        self.on_call = on_call
        self.replaying = replaying
        self._call_ids = itertools.count(1)
        self._caller_id = uuid.uuid4().hex[:12]
        self._given_http = http
        # One client per calling thread: a lane's thread makes one call at a time, and one pool shared by
        # every lane serialises them on the pool's lock and scans every connection on each request (most of
        # the connectors' CPU with a hundred calls in flight).
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self.stats: dict[tuple[str, str], EndpointStats] = {}
        self._buckets: dict[str, tuple[TokenBucket, threading.Lock]] = {}
        self._lock = threading.Lock()

    @property
    def http(self) -> httpx.Client:
        """The calling thread's HTTP client (the one given, if one was)."""
        if self._given_http is not None:
            return self._given_http
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(
                timeout=httpx.Timeout(self.settings.connector_call_timeout_s),
                limits=httpx.Limits(max_connections=THREAD_CONNECTIONS, max_keepalive_connections=THREAD_CONNECTIONS),
                trust_env=False,  # a proxy variable must not send marketplace calls elsewhere
            )
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def endpoint_stats(self, channel: str, endpoint: str) -> EndpointStats:
        key = (channel, endpoint)
        stats = self.stats.get(key)
        if stats is None:
            with self._lock:
                stats = self.stats.setdefault(key, EndpointStats())
        return stats

    def call(self, channel: str, endpoint: Endpoint, body: Mapping[str, Any], what: str = "") -> CallResult:
        """Send ``body`` to ``channel``'s ``endpoint`` until it is done, fails for good or the budget is spent.

        Raises ``Stopping`` if the process stops while the call waits to be retried.
        """
        stats = self.endpoint_stats(channel, purpose(endpoint))
        attempts, lost = 0, False
        outcome = CallOutcome(channel, purpose(endpoint), wall_ms(), replayed=self.replaying)

        def attempt() -> CallResult:
            nonlocal attempts, lost
            attempts += 1
            result = self._attempt(channel, endpoint, body, attempts, stats, outcome)
            lost = lost or result.lost
            if result.outcome.kind is OutcomeKind.RETRIABLE:
                raise _Again(result)
            return result

        def before_retry(exc: BaseException) -> None:
            stats.retried += 1
            if self.stopping():
                raise Stopping(f"stopped while retrying {channel} {endpoint}: {exc}")

        retry = Retry(f"{channel} {endpoint} call {what}".strip(), (_Again,), deadline_s=self.budget_s,
                      attempts=None if self.budget_s > 0 else 1, backoff=BACKOFF, log=log,
                      level=logging.INFO)  # fmt: skip
        try:
            result = retry.call(attempt, before_retry)
        except _Again as exc:
            result = exc.result
        result = dataclasses.replace(result, lost=lost)
        if result.done:
            stats.last_ok_ms = wall_ms()
            if result.outcome.kind is OutcomeKind.OK:
                stats.ok += 1
            elif result.outcome.kind is OutcomeKind.ALREADY_APPLIED:
                stats.already_applied += 1
            else:
                stats.stale += 1
        else:
            stats.failed += 1
        if self.on_call is not None:
            kind = result.outcome.kind
            name = {OutcomeKind.OK: "ok", OutcomeKind.ALREADY_APPLIED: "already_applied"}.get(kind, "stale")
            self.on_call(outcome.record(name if result.done else "failed", result.reason.value, result.attempts,
                                        wall_ms(), f"{self._caller_id}:{next(self._call_ids)}"))  # fmt: skip
        return result

    def _attempt(self, channel: str, endpoint: Endpoint, body: Mapping[str, Any], attempt_no: int,
                 stats: EndpointStats, call: CallOutcome) -> CallResult:  # fmt: skip
        key = self.store.get(channel)
        call.key_fingerprint = key.fingerprint if key else ""
        call.key_expires_ms = (key.expires_at_ms or 0) if key else 0
        if key is None:
            outcome = Outcome(OutcomeKind.CREDENTIAL, message="no key set")
            answer = f"no key is set for {channel}: stockflow connectors set-key {channel}"
            return self._failed(stats, call, CallResult(outcome, answer, attempt_no))
        try:
            signed = sign_request(channel, key.credentials, endpoint, body, wall_ms())
        except BodyError as exc:  # a body the platform cannot carry: never sent, and sending it again won't help
            return self._failed(stats, call, CallResult(Outcome(OutcomeKind.FATAL, message=str(exc)),
                                                        f"not sent: {exc}", attempt_no))  # fmt: skip
        self._pace(channel)
        stats.calls += 1
        started = time.perf_counter()
        try:
            response = self.http.request(signed.http_method, signed.url(marketplace_url(self.settings, channel)),
                                         headers=dict(signed.headers), content=signed.body)  # fmt: skip
        except httpx.TransportError as exc:
            # The URL carries the signature and maybe an access token: the answer names only the error.
            answer = f"no answer: {type(exc).__name__}: {exc}"[:ANSWER_CHARS]
            sent = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))  # else never left this process
            return self._failed(stats, call, CallResult(classify(channel, None, None), answer, attempt_no, lost=sent))
        took_ms = (time.perf_counter() - started) * 1000
        stats.latencies_ms.append(took_ms)
        call.latencies_ms.append(took_ms)
        outcome = classify(channel, response.status_code, response.content)
        answer = f"HTTP {response.status_code} {response.text}"[:ANSWER_CHARS]
        result = CallResult(outcome, answer, attempt_no, lost=outcome.maybe_applied)
        return result if outcome.done else self._failed(stats, call, result)

    @staticmethod
    def _failed(stats: EndpointStats, call: CallOutcome, result: CallResult) -> CallResult:
        stats.last_error = result.answer[:500]
        stats.last_error_ms = wall_ms()
        call.failed_attempt(result.answer, stats.last_error_ms)
        return result

    def set_share(self, share: float) -> None:
        """Pace every channel at ``share`` of its rate from now on (0 < share <= 1)."""
        if not 0 < share <= 1:
            raise ValueError(f"a rate share is in (0, 1], not {share}")
        with self._lock:  # held throughout, so two changes never land in the wrong order
            self.rate_share = share
            now_s = time.monotonic()
            for channel, (bucket, lock) in self._buckets.items():
                with lock:
                    bucket.retune(rate_per_s(self.settings, channel, share), now_s)

    def paced_at(self, channel: str) -> float:
        """Calls a second ``channel`` is paced at now."""
        bucket, lock = self._bucket(channel)
        with lock:
            return bucket.rate_per_s

    def _bucket(self, channel: str) -> tuple[TokenBucket, threading.Lock]:
        entry = self._buckets.get(channel)
        if entry is None:
            with self._lock:
                entry = self._buckets.setdefault(
                    channel, (TokenBucket(rate_per_s(self.settings, channel, self.rate_share)), threading.Lock())
                )
        return entry

    def _pace(self, channel: str) -> None:
        """Wait for ``channel``'s rate limit; calls of both endpoints share it (the platform limits per app)."""
        bucket, lock = self._bucket(channel)
        with lock:
            delay = bucket.reserve(time.monotonic())
        if delay > 0:
            time.sleep(delay)
