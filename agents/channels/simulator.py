"""The local marketplace simulator: one HTTP server playing the six open platforms, for drills and tests.

    POST /{channel}{path}    each platform's stock-update, many-SKU stock-update and refund-agree API at
                             its own path (``platforms.PLATFORMS[channel].paths``; tmall: /tmall/router/rest, ...)
    GET  /_sim/healthz       alive, and the simulator's clock
    /_sim/...                the admin and inspection API (JSON, no signature, loopback only): apps,
                             rotations, expiry, rate limits, latency, faults, the clock; calls,
                             refunds, stock, settlements, status, reset

A call is answered the way its platform answers, in this order: an injected fault (an outage
window, a random 5xx) is a server error; then the signature is checked exactly as the platform
checks it (``platforms.verify_request``, its timestamp window included) - a signature made with a
secret rotated away is "Invalid API Key", a wrong one "bad signature"; an expired app gets the
expired-credentials answer; a call over the app's token bucket the rate-limit answer; a body
without the endpoint's fields "bad request". Only then is the call applied:

- refund agree is idempotent by refund id: the first call agrees it (``agreed`` is 1, and can never
  become 2), every later one gets the platform's "already agreed" answer and counts as a duplicate;
  ``settle_delay_ms`` after agreeing, a settlement notification signed with the app's secret
  (``platforms.sign_callback``) is posted to ``settle_url``, retried a few times if it fails;
- stock update sets (quantity, version) per channel and SKU unless the version is not newer than
  the one applied: then the platform's stale answer, and the figure stays. With ``honors_versions`` off
  it sets whatever lands last, as the platforms' own stock APIs (which carry no version) do; and the next
  ``late_calls`` stock calls are held ``late_apply_ms`` before they are applied and answered, as a gateway
  holding them would: a caller that timed out meanwhile finds them landed after its next call;
- a many-SKU stock update (``stock_batch``) is one call, so one token of the app's rate limit, and
  applies each of its figures by the same rule, in the order sent: its answer is ok and says per
  figure applied or stale (``platforms.stock_batch_answer``). A body the platform cannot take (no
  figures, more than ``StockBatch.max_items``, a SKU twice, a figure without its fields) is refused
  whole, as "bad request", and nothing of it is applied.

Every applied, duplicate or stale call is recorded with its idempotency key and the time it was
accepted; a many-SKU call is recorded as one ``stock`` record per figure, numbered by its call
(``CallRecord.batch``), so whoever reads the records sees each SKU's change at the moment it was
applied whichever way it came. An answer waits the configured latency (base + jitter + any injected
extra) after the effect, as a real platform's does, so a caller that times out may find the effect
applied.

Owns only memory: the apps, rate buckets, the newest ``calls_kept`` calls and recent refusals
(bounded deques), and complete per-refund and per-SKU summaries (one small record each), so a long
drill stays bounded by the refunds and SKUs it touches. ``Marketplace`` is the state and its
decisions, without I/O; ``SimulatorServer`` puts it on aiohttp; ``SimulatorThread`` runs one in a
background thread (tests, drills); ``LocalSimulator`` runs ``stockflow sim serve`` as a background
process with a pid file under the home, like the local broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import secrets
import sys
import threading
import time
import tomllib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from random import Random
from typing import Any, Literal

import httpx
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from agents.channels import platforms as pf
from agents.channels.credentials import StoredKey
from agents.channels.platforms import CHANNELS, AuthFailure, Credentials, Endpoint, ErrorKind
from streams.devstack import procs
from streams.engine.clock import Clock
from streams.engine.retry import Backoff, Retry
from streams.errors import StockflowError
from streams.settings import Settings

log = logging.getLogger(__name__)
STOCK_HISTORY_KEPT = 64  # changes remembered per channel and SKU (push latency, ordering checks)
REJECTIONS_KEPT = 1000
SETTLE_ATTEMPTS = 5


class SimulatorError(StockflowError, RuntimeError):
    """The simulator cannot start or cannot be reached; the message says why."""


# --- apps ----------------------------------------------------------------------------------------


class AppSpec(BaseModel):
    """One app of one channel as the operator describes it (the apps file, ``/_sim/apps``)."""

    model_config = ConfigDict(extra="forbid")

    app_key: str = Field(min_length=1, max_length=128)
    secret: str = Field(min_length=1, max_length=512, repr=False)
    valid_from_ms: int = Field(default=0, ge=0)
    expires_at_ms: int | None = Field(default=None, ge=0)


AppsByChannel = dict[str, list[AppSpec]]
_APPS = TypeAdapter(dict[str, list[AppSpec]])


def load_apps(path: Path) -> AppsByChannel:
    """Read an apps file: ``{"jd": [{"app_key": ..., "secret": ...}], ...}`` as JSON, or the same as TOML
    (``[[jd]]`` tables). Raises ``SimulatorError`` naming what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        apps = _APPS.validate_python(raw)
    except (OSError, ValueError) as exc:  # ValidationError and TOML/JSON decode errors are ValueErrors
        raise SimulatorError(f"cannot read simulator apps from {path}: {exc}") from exc
    unknown = set(apps) - set(CHANNELS)
    if unknown:
        raise SimulatorError(f"{path}: unknown channels {sorted(unknown)}; known: {', '.join(CHANNELS)}")
    return apps


def generate_apps() -> AppsByChannel:
    """One app per channel with a fresh random secret."""
    return {c: [AppSpec(app_key=f"{c}-sim-app", secret=secrets.token_hex(16))] for c in CHANNELS}


def simulator_keys(apps: AppsByChannel, channels: Iterable[str], expires: date, now_ms: int) -> list[StoredKey]:
    """The connectors' keys for the simulator's apps: each channel's first app valid now (none for a channel
    without one), until ``expires`` or the app's own expiry, whichever comes first."""
    keys = []
    for channel in channels:
        valid = [a for a in apps.get(channel, [])
                 if a.valid_from_ms <= now_ms and (a.expires_at_ms is None or a.expires_at_ms > now_ms)]  # fmt: skip
        if valid:
            app = valid[0]
            until = expires if app.expires_at_ms is None else min(expires, date.fromtimestamp(app.expires_at_ms / 1000))
            keys.append(StoredKey(channel, Credentials(app.app_key, app.secret), until, now_ms))
    return keys


def default_apps_file(settings: Settings) -> Path:
    return settings.home_dir / "sim" / "apps.json"


def ensure_apps_file(path: Path) -> AppsByChannel:
    """The apps in ``path``; when it does not exist, generated and written there (owner-only) first."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        apps = generate_apps()
        text = json.dumps({c: [a.model_dump(exclude_none=True) for a in lst] for c, lst in apps.items()}, indent=2)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return load_apps(path)


@dataclass
class AppState:
    """An app's secrets over time: ``secrets`` holds (valid from ms, secret), oldest first; the newest one
    already valid is current, the ones before it are rotated away, later ones not valid yet."""

    channel: str
    app_key: str
    secrets: list[tuple[int, str]]
    expires_at_ms: int | None = None

    def current(self, now_ms: int) -> str | None:
        valid = [s for at, s in self.secrets if at <= now_ms]
        return valid[-1] if valid else None

    def retired(self, now_ms: int) -> list[str]:
        return [s for at, s in self.secrets if at <= now_ms][:-1]

    def rotate(self, at_ms: int, new_secret: str) -> None:
        self.secrets = sorted([*[(at, s) for at, s in self.secrets if at < at_ms], (at_ms, new_secret)])

    def expired(self, now_ms: int) -> bool:
        return self.expires_at_ms is not None and now_ms >= self.expires_at_ms

    def describe(self, now_ms: int) -> dict[str, Any]:
        """What an operator may see: fingerprints, never a secret."""
        current = self.current(now_ms)
        return {
            "app_key": self.app_key,
            "fingerprint": pf.fingerprint(current) if current else None,
            "valid_from_ms": self.secrets[0][0],
            "expires_at_ms": self.expires_at_ms,
            "expired": self.expired(now_ms),
            "rotated_away": len(self.retired(now_ms)),
            "rotations_pending": [
                {"at_ms": at, "fingerprint": pf.fingerprint(s)} for at, s in self.secrets if at > now_ms
            ],
        }


# --- rate limits, latency, faults ----------------------------------------------------------------


@dataclass
class TokenBucket:
    """``rate`` calls a second on average, up to ``capacity`` at once; a call with no token is refused."""

    rate: float
    capacity: float
    tokens: float = -1.0
    updated_s: float = 0.0

    def take(self, now_s: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.updated_s = self.capacity, now_s
        self.tokens = min(self.capacity, self.tokens + (now_s - self.updated_s) * self.rate)
        self.updated_s = now_s
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class ChannelConfig(BaseModel):
    """How one channel of the simulator behaves; every field can be changed at run time (``/_sim/config``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    qps: float = Field(gt=0, description="Per-app calls a second")
    burst: float = Field(ge=1, description="Calls an idle app may make at once")
    latency_ms: float = Field(ge=0)
    jitter_ms: float = Field(ge=0)
    error_rate: float = Field(default=0.0, ge=0, le=1, description="Share of calls answered with a 5xx")
    extra_latency_ms: float = Field(default=0.0, ge=0)
    outages: list[tuple[int, int]] = Field(default_factory=list, description="[start_ms, end_ms) windows of 5xx")
    honors_versions: bool = Field(
        default=True, description="False: a stock figure is applied whatever its version, as the platforms' own stock "
        "APIs (which carry none) apply it: a call landing late sets its older figure over a newer one")
    late_calls: int = Field(default=0, ge=0, description="The next this many stock calls are applied only "
                            "late_apply_ms after they arrive (a gateway that held them), and answered after that")
    late_apply_ms: float = Field(default=0.0, ge=0)


# --- what the simulator remembers ----------------------------------------------------------------

CallResult = Literal["applied", "duplicate", "stale"]


@dataclass(frozen=True)
class CallRecord:
    seq: int
    channel: str
    endpoint: Endpoint
    app_key: str
    idempotency_key: str
    result: CallResult
    accepted_at_ms: int
    body: dict[str, Any]  # the request's business body; for a figure of a many-SKU call, that figure's
    batch: int = 0  # the many-SKU call a figure came in (its number, from 1); 0: a call of its own


@dataclass
class RefundRecord:
    """One refund id on one channel: agreed once, then only duplicates; and its settlement."""

    channel: str
    refund_id: str
    amount_fen: int
    app_key: str
    first_accepted_at_ms: int
    channel_order_id: str | None = None
    agreed: int = 1  # by construction never more than 1: only the first accepted call creates the record
    duplicate_attempts: int = 0
    duplicate_amount_mismatches: int = 0
    last_attempt_at_ms: int = 0
    settlement: Literal["pending", "delivered", "failed", "not_sent"] = "pending"
    settled_at_ms: int | None = None
    settlement_attempts: int = 0
    settlement_error: str = ""


@dataclass
class StockRecord:
    channel: str
    sku: str
    quantity: int
    version: int
    accepted_at_ms: int
    changes: int = 1
    stale_attempts: int = 0
    history: deque[tuple[int, int, int]] = field(default_factory=lambda: deque(maxlen=STOCK_HISTORY_KEPT))

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["history"] = [{"version": v, "quantity": q, "accepted_at_ms": at} for v, q, at in list(self.history)]
        return data


@dataclass(frozen=True)
class Answer:
    """What the simulator answers one call, and what it set going."""

    status: int
    body: dict[str, Any]
    delay_s: float
    settle: RefundRecord | None = None  # a refund just agreed: its settlement is due
    late: tuple[float, Callable[[], Answer]] | None = None  # (seconds, the call applied): a stock call held back


# --- the marketplace: state and decisions, no I/O -------------------------------------------------


class Marketplace:
    """The six platforms' state and how they answer; every method is synchronous (the server's event
    loop runs them one at a time, so no call sees another half applied)."""

    def __init__(
        self,
        apps: Mapping[str, Sequence[AppSpec]],
        *,
        latency_ms: float = 15.0,
        jitter_ms: float = 45.0,
        calls_kept: int = 100_000,
        seed: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.clock = clock or Clock()
        self.rng = Random(seed)
        self.calls_kept = calls_kept
        self.apps: dict[str, dict[str, AppState]] = {c: {} for c in CHANNELS}
        self.reset()
        self.config: dict[str, ChannelConfig] = {
            c: ChannelConfig(qps=p.default_qps, burst=max(1.0, p.default_qps), latency_ms=latency_ms,
                             jitter_ms=jitter_ms)
            for c, p in pf.PLATFORMS.items()
        }  # fmt: skip
        for channel, specs in apps.items():
            for spec in specs:
                self.add_app(channel, spec)

    def reset(self, *, keep_apps: bool = True) -> None:
        """Forget calls, refunds, stock and counters (and the apps unless ``keep_apps``)."""
        self.calls: deque[CallRecord] = deque(maxlen=self.calls_kept)
        self.rejections: deque[dict[str, Any]] = deque(maxlen=REJECTIONS_KEPT)
        self.refunds: dict[tuple[str, str], RefundRecord] = {}
        self.stock: dict[tuple[str, str], StockRecord] = {}
        self.counters: dict[str, Counter[str]] = {c: Counter() for c in CHANNELS}
        self.buckets: dict[tuple[str, str], TokenBucket] = {}
        self.seq = 0
        self.batches = 0
        if not keep_apps:
            self.apps = {c: {} for c in CHANNELS}

    def now_ms(self) -> int:
        return self.clock.now_ms()

    # --- admin ---

    def add_app(self, channel: str, spec: AppSpec) -> AppState:
        """Add an app, or replace the one with the same key (its rotations and expiry with it)."""
        pf.platform(channel)
        state = AppState(channel, spec.app_key, [(spec.valid_from_ms, spec.secret)], spec.expires_at_ms)
        self.apps[channel][spec.app_key] = state
        self.buckets.pop((channel, spec.app_key), None)
        return state

    def remove_app(self, channel: str, app_key: str) -> bool:
        return self.apps[channel].pop(app_key, None) is not None

    def app(self, channel: str, app_key: str | None = None) -> AppState:
        """The named app, or the channel's only one; ``KeyError`` naming the choices otherwise."""
        apps = self.apps[pf.platform(channel).channel]
        if app_key is None:
            if len(apps) != 1:
                raise KeyError(f"{channel} has {len(apps)} apps ({', '.join(apps) or 'none'}); name one")
            return next(iter(apps.values()))
        if app_key not in apps:
            raise KeyError(f"{channel} has no app {app_key!r}")
        return apps[app_key]

    def rotate(self, channel: str, at_ms: int, new_secret: str, app_key: str | None = None) -> AppState:
        """From ``at_ms`` on, ``new_secret`` is the app's secret and the old one answers "Invalid API Key"."""
        app = self.app(channel, app_key)
        app.rotate(at_ms, new_secret)
        return app

    def set_expiry(self, channel: str, expires_at_ms: int | None, app_key: str | None = None) -> AppState:
        app = self.app(channel, app_key)
        app.expires_at_ms = expires_at_ms
        return app

    def configure(self, channel: str, **changes: Any) -> ChannelConfig:
        """Change a channel's rate limit, latency or faults (``ChannelConfig`` fields)."""
        config = self.config[pf.platform(channel).channel]
        merged = ChannelConfig.model_validate({**config.model_dump(), **changes})
        self.config[channel] = merged
        if {"qps", "burst"} & set(changes):
            for key in [k for k in self.buckets if k[0] == channel]:
                del self.buckets[key]
        return merged

    # --- calls ---

    def handle(self, channel: str, path: str, query: Mapping[str, str], headers: Mapping[str, str],
               body: bytes) -> Answer:  # fmt: skip
        """Decide and apply one call to ``channel`` at ``path``."""
        now = self.now_ms()
        config = self.config[channel]
        delay_s = self._delay_s(config)
        if any(start <= now < end for start, end in config.outages) or self.rng.random() < config.error_rate:
            return self._refuse(channel, ErrorKind.SERVER_ERROR, None, "injected fault", now, delay_s)
        apps = self.apps[channel]

        def secret_for(app_key: str) -> str | None:
            app = apps.get(app_key)
            return app.current(now) if app else None

        verdict = pf.verify_request(channel, secret_for, query, headers, body, now, path=path)
        if not verdict.ok:
            assert verdict.failure is not None
            kind = verdict.failure.error_kind
            rotated = verdict.failure is AuthFailure.BAD_SIGNATURE and self._signed_with_retired(
                channel, verdict.app_key, query, headers, body, path, now
            )
            if rotated:  # the platform has forgotten that secret: to it, the key is not valid
                kind = ErrorKind.INVALID_API_KEY
            return self._refuse(channel, kind, verdict.app_key, verdict.detail, now, delay_s)
        assert verdict.app_key is not None and verdict.endpoint is not None and verdict.payload is not None
        app = apps[verdict.app_key]
        if app.expired(now):
            return self._refuse(channel, ErrorKind.EXPIRED_CREDENTIALS, app.app_key, "app expired", now, delay_s)
        bucket = self.buckets.setdefault((channel, app.app_key), TokenBucket(config.qps, config.burst))
        if not bucket.take(time.monotonic()):
            return self._refuse(channel, ErrorKind.RATE_LIMITED, app.app_key, f"over {config.qps:g} qps", now, delay_s)
        endpoint, payload, key = verdict.endpoint, verdict.payload, app.app_key
        if endpoint == "refund":
            try:
                return self._agree_refund(channel, key, pf.parse_refund(channel, payload), payload, now, delay_s)
            except pf.BodyError as exc:
                return self._refuse(channel, ErrorKind.BAD_REQUEST, key, str(exc), now, delay_s)
        if config.late_calls > 0:
            self.config[channel] = config.model_copy(update={"late_calls": config.late_calls - 1})
            late = (config.late_apply_ms / 1000, lambda: self._stock_call(channel, key, endpoint, payload, delay_s))
            return Answer(0, {}, 0.0, late=late)
        return self._stock_call(channel, key, endpoint, payload, delay_s, now)

    def _stock_call(self, channel: str, app_key: str, endpoint: Endpoint, payload: dict[str, Any], delay_s: float,
                    now: int | None = None) -> Answer:  # fmt: skip
        now = self.now_ms() if now is None else now
        try:
            if endpoint == pf.STOCK_BATCH:
                return self._update_stock_batch(channel, app_key, payload, now, delay_s)
            return self._update_stock(channel, app_key, pf.parse_stock(channel, payload), payload, now, delay_s)
        except pf.BodyError as exc:
            return self._refuse(channel, ErrorKind.BAD_REQUEST, app_key, str(exc), now, delay_s)

    def _signed_with_retired(
        self, channel: str, app_key: str | None, query: Mapping[str, str], headers: Mapping[str, str], body: bytes,
        path: str, now: int,
    ) -> bool:  # fmt: skip
        app = self.apps[channel].get(app_key or "")
        if app is None:
            return False
        for old in app.retired(now):

            def secret_for(_key: str, secret: str = old) -> str:
                return secret

            if pf.verify_request(channel, secret_for, query, headers, body, now, path=path).ok:
                return True
        return False

    def _delay_s(self, config: ChannelConfig) -> float:
        return (config.latency_ms + self.rng.uniform(0, config.jitter_ms) + config.extra_latency_ms) / 1000

    def _refuse(self, channel: str, kind: ErrorKind, app_key: str | None, detail: str, now: int,
                delay_s: float) -> Answer:  # fmt: skip
        self.counters[channel][f"refused:{kind.value}"] += 1
        self.rejections.append({"channel": channel, "kind": kind.value, "app_key": app_key, "detail": detail,
                                "at_ms": now})  # fmt: skip
        status, body = pf.error_answer(channel, kind, request_id=f"sim-{self.seq}-{now}")
        return Answer(status, body, delay_s)

    def _record(self, channel: str, endpoint: Endpoint, app_key: str, key: str, result: CallResult, now: int,
                payload: dict[str, Any], *, batch: int = 0) -> None:  # fmt: skip
        self.seq += 1
        self.calls.append(CallRecord(self.seq, channel, endpoint, app_key, key, result, now, payload, batch))
        self.counters[channel][f"{endpoint}:{result}"] += 1

    def _agree_refund(self, channel: str, app_key: str, refund: pf.RefundAgree, payload: dict[str, Any], now: int,
                      delay_s: float) -> Answer:  # fmt: skip
        known = self.refunds.get((channel, refund.refund_id))
        if known is not None:
            known.duplicate_attempts += 1
            mismatch = (refund.amount_fen, refund.channel_order_id) != (known.amount_fen, known.channel_order_id)
            known.duplicate_amount_mismatches += mismatch
            known.last_attempt_at_ms = now
            self._record(channel, "refund", app_key, refund.idempotency_key, "duplicate", now, payload)
            # As the platforms do: a refund id agreed for one amount and order is not "already agreed" for another;
            # taken as done, the caller would record a payment that was never made.
            status, body = pf.error_answer(channel, ErrorKind.BAD_REQUEST if mismatch else ErrorKind.ALREADY_APPLIED)
            return Answer(status, body, delay_s)
        record = RefundRecord(channel, refund.refund_id, refund.amount_fen, app_key, now, refund.channel_order_id,
                              last_attempt_at_ms=now)  # fmt: skip
        self.refunds[(channel, refund.refund_id)] = record
        self._record(channel, "refund", app_key, refund.idempotency_key, "applied", now, payload)
        f = pf.platform(channel).fields
        status, body = pf.ok_answer(channel, "refund", {f.refund_id: refund.refund_id, "status": "SUCCESS"})
        return Answer(status, body, delay_s, settle=record)

    def _update_stock(self, channel: str, app_key: str, update: pf.StockUpdate, payload: dict[str, Any], now: int,
                      delay_s: float) -> Answer:  # fmt: skip
        if not self._apply_stock(channel, app_key, update, payload, now):
            status, body = pf.error_answer(channel, ErrorKind.STALE_VERSION)
            return Answer(status, body, delay_s)
        f = pf.platform(channel).fields
        status, body = pf.ok_answer(channel, "stock", {f.sku: update.sku, f.quantity: update.quantity,
                                                       f.version: update.version})  # fmt: skip
        return Answer(status, body, delay_s)

    def _update_stock_batch(self, channel: str, app_key: str, payload: dict[str, Any], now: int,
                            delay_s: float) -> Answer:  # fmt: skip
        updates = pf.parse_stock_batch(channel, payload)  # a BodyError refuses the call before anything applies
        items = payload[pf.platform(channel).stock_batch.items]
        self.batches += 1
        self.counters[channel]["stock_batch:calls"] += 1
        self.counters[channel]["stock_batch:items"] += len(updates)
        results = [(u, None if self._apply_stock(channel, app_key, u, dict(item), now, batch=self.batches)
                    else ErrorKind.STALE_VERSION) for u, item in zip(updates, items, strict=True)]  # fmt: skip
        status, body = pf.stock_batch_answer(channel, results)
        return Answer(status, body, delay_s)

    def _apply_stock(self, channel: str, app_key: str, update: pf.StockUpdate, payload: dict[str, Any], now: int,
                     *, batch: int = 0) -> bool:  # fmt: skip
        """Set the figure unless its version is not newer than the one applied (stale); recorded either way."""
        known = self.stock.get((channel, update.sku))
        if known is not None and update.version <= known.version and self.config[channel].honors_versions:
            known.stale_attempts += 1
            self._record(channel, "stock", app_key, update.idempotency_key, "stale", now, payload, batch=batch)
            return False
        if known is None:
            known = self.stock[(channel, update.sku)] = StockRecord(channel, update.sku, update.quantity,
                                                                    update.version, now)  # fmt: skip
        else:
            # A platform that keeps no version: whatever lands last stands, and its version is the one it carried.
            known.quantity, known.version, known.accepted_at_ms = update.quantity, update.version, now
            known.changes += 1
        known.history.append((update.version, update.quantity, now))
        self._record(channel, "stock", app_key, update.idempotency_key, "applied", now, payload, batch=batch)
        return True

    # --- inspection ---

    def status(self) -> dict[str, Any]:
        now = self.now_ms()
        return {
            "now_ms": now,
            "channels": {
                c: {
                    "apps": [a.describe(now) for a in self.apps[c].values()],
                    "config": self.config[c].model_dump(),
                    "counters": dict(self.counters[c]),
                    "refunds_agreed": sum(1 for (ch, _), _r in self.refunds.items() if ch == c),
                    "skus": sum(1 for ch, _ in self.stock if ch == c),
                }
                for c in CHANNELS
            },
        }

    def calls_json(self, channel: str | None = None, endpoint: str | None = None, since_ms: int | None = None,
                   result: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
        # Snapshots (list() copies in one step under the GIL): the serving thread adds calls, refunds and
        # stock while a test or a drill reads them from its own.
        rows = [
            asdict(c) for c in list(self.calls)
            if (channel is None or c.channel == channel) and (endpoint is None or c.endpoint == endpoint)
            and (since_ms is None or c.accepted_at_ms >= since_ms) and (result is None or c.result == result)
        ]  # fmt: skip
        return rows[-limit:] if limit else rows

    def refunds_json(self, channel: str | None = None, refund_id: str | None = None) -> list[dict[str, Any]]:
        return [asdict(r) for (c, rid), r in list(self.refunds.items())
                if (channel is None or c == channel) and (refund_id is None or rid == refund_id)]  # fmt: skip

    def stock_json(self, channel: str | None = None, sku: str | None = None) -> list[dict[str, Any]]:
        return [s.as_json() for (c, k), s in list(self.stock.items())
                if (channel is None or c == channel) and (sku is None or k == sku)]  # fmt: skip

    def settlements_json(self, channel: str | None = None) -> list[dict[str, Any]]:
        keys = ("channel", "refund_id", "channel_order_id", "amount_fen", "settlement", "settled_at_ms",
                "settlement_attempts", "settlement_error")  # fmt: skip
        return [{k: getattr(r, k) for k in keys} for r in list(self.refunds.values())
                if r.settlement != "pending" and (channel is None or r.channel == channel)]  # fmt: skip


# --- the HTTP server ------------------------------------------------------------------------------


class ConfigChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: str | None = None  # None: every channel
    qps: float | None = Field(default=None, gt=0)
    burst: float | None = Field(default=None, ge=1)
    latency_ms: float | None = Field(default=None, ge=0)
    jitter_ms: float | None = Field(default=None, ge=0)
    error_rate: float | None = Field(default=None, ge=0, le=1)
    extra_latency_ms: float | None = Field(default=None, ge=0)
    outages: list[tuple[int, int]] | None = None
    honors_versions: bool | None = None
    late_calls: int | None = Field(default=None, ge=0)
    late_apply_ms: float | None = Field(default=None, ge=0)


class AppChange(AppSpec):
    channel: str


class Rotation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: str
    at_ms: int = Field(ge=0)
    new_secret: str = Field(min_length=1, max_length=512, repr=False)
    app_key: str | None = None


class Expiry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: str
    expires_at_ms: int | None = Field(ge=0)
    app_key: str | None = None


class SettleChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = None  # "" or None: send none
    delay_ms: float | None = Field(default=None, ge=0)


class ClockChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    offset_ms: int | None = None
    advance_ms: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one(self) -> ClockChange:
        if (self.offset_ms is None) == (self.advance_ms is None):
            raise ValueError("give offset_ms or advance_ms")
        return self


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False))


def _loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


CHANNEL_PLACEHOLDER = "{channel}"


def settlement_url(template: str, channel: str) -> str:
    """Where ``channel``'s settlements go: ``template`` with ``{channel}`` replaced (the intake has a route per
    channel, ``/v1/channels/{channel}/refund_settled``); a template without it sends every channel there."""
    return template.replace(CHANNEL_PLACEHOLDER, channel)


class SimulatorServer:
    """The marketplace on aiohttp, with the settlement sender."""

    def __init__(self, market: Marketplace, *, settle_url: str = "", settle_delay_ms: float = 2000.0,
                 settle_backoff: Backoff | None = None) -> None:  # fmt: skip
        self.market = market
        self.settle_url = settle_url
        self.settle_delay_ms = settle_delay_ms
        self.settle_backoff = settle_backoff or Backoff(0.5, 5.0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20, middlewares=[self._admin_guard])
        routes = {(c, path) for c, p in pf.PLATFORMS.items() for path in p.paths.values()}
        for channel, path in sorted(routes):
            app.router.add_post(f"/{channel}{path}", self._platform_call)
        get, post = app.router.add_get, app.router.add_post
        get("/_sim/healthz", self._healthz)
        get("/_sim/status", self._status)
        post("/_sim/apps", self._add_app)
        app.router.add_delete("/_sim/apps/{channel}/{app_key}", self._remove_app)
        post("/_sim/rotate", self._rotate)
        post("/_sim/expiry", self._expiry)
        post("/_sim/config", self._config)
        post("/_sim/settle", self._settle_config)
        get("/_sim/clock", self._clock)
        post("/_sim/clock", self._clock)
        get("/_sim/calls", self._calls)
        get("/_sim/refunds", self._refunds)
        get("/_sim/stock", self._stock)
        get("/_sim/settlements", self._settlements)
        get("/_sim/rejections", self._rejections)
        post("/_sim/reset", self._reset)
        app.on_cleanup.append(self._cleanup)
        return app

    @web.middleware
    async def _admin_guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/_sim/") and not _loopback(request):
            return _json({"error": "the simulator's admin API answers local calls only"}, 403)
        try:
            response: web.StreamResponse = await handler(request)
        except ValidationError as exc:
            return _json({"error": "invalid request", "detail": exc.errors(include_url=False, include_input=False)},
                         400)  # fmt: skip
        except _BadRequest as exc:
            return _json({"error": str(exc)}, 400)
        except (KeyError, pf.UnknownChannel) as exc:
            return _json({"error": str(exc).strip("'\"")}, 404)
        return response

    async def _platform_call(self, request: web.Request) -> web.Response:
        channel = request.path.split("/", 2)[1]
        path = request.path[len(channel) + 1 :]
        body = await request.read()
        answer = self.market.handle(channel, path, request.query, request.headers, body)
        if answer.late is not None:
            # Applied later whether or not the caller is still there to hear it.
            answer = await asyncio.shield(self._spawn(self._apply_late(*answer.late)))
        if answer.settle is not None:
            self._spawn(self._settle(answer.settle))
        if answer.delay_s > 0:
            await asyncio.sleep(answer.delay_s)
        return _json(answer.body, answer.status)

    # --- settlements ---

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    async def _apply_late(after_s: float, apply: Callable[[], Answer]) -> Answer:
        await asyncio.sleep(after_s)
        return apply()

    async def _settle(self, record: RefundRecord) -> None:
        """Settle ``record`` after the delay: post its channel's signed settlement notification, retried a few
        times; what came of it stays on the record (``/_sim/settlements``)."""
        await asyncio.sleep(self.settle_delay_ms / 1000)
        record.settled_at_ms = self.market.now_ms()
        channel = record.channel
        url = settlement_url(self.settle_url, channel)
        if not url:
            record.settlement = "not_sent"
            return
        body = pf.settlement_body(channel, record.refund_id, record.amount_fen, record.settled_at_ms,
                                  channel_order_id=record.channel_order_id)  # fmt: skip
        event = pf.SETTLEMENT_EVENTS[channel]

        async def send() -> None:
            record.settlement_attempts += 1
            app = self.market.apps[channel].get(record.app_key)
            secret = app.current(self.market.now_ms()) if app else None
            if secret is None:
                raise _NotDelivered(f"app {record.app_key} is gone")
            signed = pf.sign_callback(channel, Credentials(record.app_key, secret), event, body, self.market.now_ms())
            http = self._http or httpx.AsyncClient(timeout=10)
            self._http = http
            response = await http.post(signed.url(url), content=signed.body, headers=dict(signed.headers))
            if response.status_code >= 300:  # noqa: PLR2004 - anything but 2xx is not delivered
                raise _NotDelivered(f"{response.status_code} {response.text[:200]}")

        retry = Retry(f"settlement of {channel} refund {record.refund_id}", (httpx.HTTPError, _NotDelivered),
                      attempts=SETTLE_ATTEMPTS, backoff=self.settle_backoff, log=log)  # fmt: skip
        try:
            await retry.acall(send)
        except (httpx.HTTPError, _NotDelivered) as exc:
            record.settlement, record.settlement_error = "failed", f"{type(exc).__name__}: {exc}"
            return
        record.settlement, record.settlement_error = "delivered", ""

    async def _cleanup(self, _: web.Application) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    # --- admin ---

    async def _healthz(self, _: web.Request) -> web.Response:
        return _json({"ok": True, "channels": list(CHANNELS), "now_ms": self.market.now_ms()})

    async def _status(self, _: web.Request) -> web.Response:
        status = self.market.status()
        status["settle"] = {"url": self.settle_url, "delay_ms": self.settle_delay_ms, "in_flight": len(self._tasks)}
        status["calls_kept"] = self.market.calls_kept
        return _json(status)

    async def _add_app(self, request: web.Request) -> web.Response:
        change = AppChange.model_validate(await _body(request))
        state = self.market.add_app(change.channel, AppSpec.model_validate(change.model_dump(exclude={"channel"})))
        return _json(state.describe(self.market.now_ms()))

    async def _remove_app(self, request: web.Request) -> web.Response:
        removed = self.market.remove_app(request.match_info["channel"], request.match_info["app_key"])
        return _json({"removed": removed}, 200 if removed else 404)

    async def _rotate(self, request: web.Request) -> web.Response:
        r = Rotation.model_validate(await _body(request))
        return _json(self.market.rotate(r.channel, r.at_ms, r.new_secret, r.app_key).describe(self.market.now_ms()))

    async def _expiry(self, request: web.Request) -> web.Response:
        e = Expiry.model_validate(await _body(request))
        return _json(self.market.set_expiry(e.channel, e.expires_at_ms, e.app_key).describe(self.market.now_ms()))

    async def _config(self, request: web.Request) -> web.Response:
        change = ConfigChange.model_validate(await _body(request))
        values = change.model_dump(exclude={"channel"}, exclude_none=True)
        channels = [change.channel] if change.channel else list(CHANNELS)
        return _json({c: self.market.configure(c, **values).model_dump() for c in channels})

    async def _settle_config(self, request: web.Request) -> web.Response:
        change = SettleChange.model_validate(await _body(request))
        if change.url is not None:
            self.settle_url = change.url
        if change.delay_ms is not None:
            self.settle_delay_ms = change.delay_ms
        return _json({"url": self.settle_url, "delay_ms": self.settle_delay_ms})

    async def _clock(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            change = ClockChange.model_validate(await _body(request))
            clock = self.market.clock
            # Like the pipeline clock, never backwards: an expiry or rotation already passed stays passed.
            target = change.offset_ms if change.offset_ms is not None else clock.offset_ms + (change.advance_ms or 0)
            clock.advance_to(target)
        return _json({"now_ms": self.market.now_ms(), "offset_ms": self.market.clock.offset_ms})

    async def _calls(self, request: web.Request) -> web.Response:
        q = request.query
        return _json(self.market.calls_json(q.get("channel"), q.get("endpoint"), _int(q.get("since_ms")),
                                            q.get("result"), _int(q.get("limit"))))  # fmt: skip

    async def _refunds(self, request: web.Request) -> web.Response:
        return _json(self.market.refunds_json(request.query.get("channel"), request.query.get("refund_id")))

    async def _stock(self, request: web.Request) -> web.Response:
        return _json(self.market.stock_json(request.query.get("channel"), request.query.get("sku")))

    async def _settlements(self, request: web.Request) -> web.Response:
        return _json(self.market.settlements_json(request.query.get("channel")))

    async def _rejections(self, request: web.Request) -> web.Response:
        channel = request.query.get("channel")
        return _json([r for r in self.market.rejections if channel is None or r["channel"] == channel])

    async def _reset(self, request: web.Request) -> web.Response:
        body = await _body(request) if request.can_read_body else {}
        self.market.reset(keep_apps=bool(body.get("keep_apps", True)))
        return _json({"ok": True})


class _NotDelivered(Exception):
    """The shop's callback URL did not take a settlement."""


class _BadRequest(Exception):
    """An admin request the simulator cannot read."""


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise _BadRequest("body is not JSON") from None
    if not isinstance(body, dict):
        raise _BadRequest("body is not a JSON object")
    return body


def _int(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise _BadRequest(f"not a whole number: {text!r}") from None


# --- running it ----------------------------------------------------------------------------------


def build_market(settings: Settings, apps_file: Path | None = None, *, seed: int | None = None) -> Marketplace:
    """A marketplace with the apps of ``apps_file`` (else ``STOCKFLOW_SIM_APPS_FILE``, else the generated defaults)."""
    path = apps_file or settings.sim_apps_file
    apps = load_apps(path) if path else ensure_apps_file(default_apps_file(settings))
    return Marketplace(apps, latency_ms=settings.sim_latency_ms, jitter_ms=settings.sim_jitter_ms,
                       calls_kept=settings.sim_calls_kept, seed=seed)  # fmt: skip


def serve(settings: Settings, market: Marketplace, *, host: str | None = None, port: int | None = None,
          settle_url: str | None = None) -> None:  # fmt: skip
    """Serve in the foreground until interrupted (``stockflow sim serve``)."""
    server = SimulatorServer(market, settle_url=settings.sim_settle_url if settle_url is None else settle_url,
                             settle_delay_ms=settings.sim_settle_delay_ms)  # fmt: skip
    web.run_app(server.app(), host=host or settings.sim_host, port=port or settings.sim_port, print=None,
                access_log=None)  # fmt: skip


class SimulatorThread:
    """A simulator in a background thread on 127.0.0.1 (a free port unless given): for tests and drills.

    with SimulatorThread(Marketplace(apps, latency_ms=0, jitter_ms=0)) as sim:
        httpx.post(sim.url("jd") + signed.path, ...)
    """

    def __init__(self, market: Marketplace, *, port: int = 0, settle_url: str = "", settle_delay_ms: float = 0.0,
                 settle_backoff: Backoff | None = None) -> None:  # fmt: skip
        self.market = market
        self.server = SimulatorServer(market, settle_url=settle_url, settle_delay_ms=settle_delay_ms,
                                      settle_backoff=settle_backoff)  # fmt: skip
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, channel: str) -> str:
        """The channel's base URL: what a connector is configured with instead of the production one."""
        return f"{self.base_url}/{channel}"

    def start(self) -> SimulatorThread:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread, which raises it
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="marketplace-simulator", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise SimulatorError(f"simulator did not start: {failure[0]}") from failure[0]
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.server.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])  # the port the OS picked when asked for 0

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
        self._loop = self._thread = None

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


@dataclass
class LocalSimulator:
    """``stockflow sim serve`` as a background process: pid, log and the URL it serves in ``<home>/sim/``."""

    settings: Settings

    @property
    def root(self) -> Path:
        return self.settings.home_dir / "sim"

    @property
    def pid_file(self) -> Path:
        return self.root / "sim.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "sim.log"

    @property
    def state_file(self) -> Path:
        return self.root / "sim.json"

    def running_pid(self) -> int | None:
        return procs.read_pid(self.pid_file)

    def base_url(self) -> str:
        """Where the running simulator answers (the port it was started on), else where it would."""
        with contextlib.suppress(OSError, ValueError):
            return str(json.loads(self.state_file.read_text())["base_url"])
        return f"http://{self.settings.sim_host}:{self.settings.sim_port}"

    def up(self, *, port: int | None = None, settle_url: str | None = None, apps_file: Path | None = None,
           timeout_s: float = 30.0) -> str:  # fmt: skip
        """Start the simulator unless it runs; return a one-line description."""
        if (pid := self.running_pid()) is not None:
            return f"simulator already running (pid {pid}) at {self.base_url()}"
        host, port = self.settings.sim_host, port or self.settings.sim_port
        if procs.port_open(host, port):
            raise SimulatorError(f"port {port} is taken by a process stockflow did not start; use --port or "
                                 "STOCKFLOW_SIM_PORT")  # fmt: skip
        apps = apps_file or self.settings.sim_apps_file
        if apps is None:
            ensure_apps_file(default_apps_file(self.settings))  # written before start, so it can be read at once
        else:
            load_apps(apps)  # refuse a bad file here, not in the child's log
        cmd = [sys.executable, "-m", "agents.cli", "sim", "serve", "--port", str(port)]
        if settle_url is not None:
            cmd += ["--settle-url", settle_url]
        if apps is not None:
            cmd += ["--apps", str(Path(apps).resolve())]
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.settings.as_env(), "PYTHONUNBUFFERED": "1"}
        pid = procs.start(cmd, self.log_file, self.pid_file, env=env)
        base_url = f"http://{host}:{port}"
        if not _wait_healthy(base_url, timeout_s, pid):
            tail = self.log_file.read_text(errors="replace")[-2000:]
            procs.stop(self.pid_file)
            raise SimulatorError(f"simulator did not answer within {timeout_s:.0f}s:\n{tail}")
        self.state_file.write_text(json.dumps({"pid": pid, "base_url": base_url}))
        return f"marketplace simulator started, pid {pid}, at {base_url}/<channel>"

    def down(self) -> bool:
        stopped = procs.stop(self.pid_file, timeout_s=10)
        self.state_file.unlink(missing_ok=True)
        return stopped


def _wait_healthy(base_url: str, timeout_s: float, pid: int) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not procs.is_alive(pid):
            return False
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/_sim/healthz", timeout=1).status_code == 200:  # noqa: PLR2004 - HTTP OK
                return True
        time.sleep(0.2)
    return False
