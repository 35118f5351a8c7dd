"""A small client of the marketplace simulator's admin API (``/_sim/``), for tests, drills and ``stockflow sim``.

Reads and changes the simulator's apps, rotations, expiry, limits, latency, faults and clock, and
reads what it accepted. Talks only to the simulator's base URL (``http://127.0.0.1:18090`` by
default); the platform calls themselves go through ``platforms.sign_request`` like any connector's.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx

from agents.channels.simulator import SimulatorError


class SimulatorClient:
    """Sync admin client: ``SimulatorClient("http://127.0.0.1:18090").rotate("jd", at_ms, "new-secret")``."""

    def __init__(self, base_url: str, *, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def channel_url(self, channel: str) -> str:
        """The base URL a connector uses for ``channel`` (instead of the platform's production URL)."""
        return f"{self.base_url}/{channel}"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SimulatorClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, method: str, path: str, json: dict[str, Any] | None = None, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v is not None}
        try:
            response = self._http.request(method, f"/_sim/{path}", json=json, params=query)
        except httpx.HTTPError as exc:
            raise SimulatorError(f"no simulator answers at {self.base_url}: {exc}") from exc
        if response.status_code >= 400:  # noqa: PLR2004 - any client or server error
            raise SimulatorError(f"simulator refused {method} /_sim/{path}: {response.status_code} {response.text}")
        return response.json()

    # --- state ---

    def healthy(self) -> bool:
        try:
            return bool(self._call("GET", "healthz").get("ok"))
        except SimulatorError:
            return False

    def status(self) -> dict[str, Any]:
        return dict(self._call("GET", "status"))

    def now_ms(self) -> int:
        return int(self._call("GET", "clock")["now_ms"])

    def advance_clock(self, ms: int) -> int:
        """Move the simulator's clock ``ms`` ahead (never back); return its new now."""
        return int(self._call("POST", "clock", {"advance_ms": ms})["now_ms"])

    def reset(self, *, keep_apps: bool = True) -> None:
        self._call("POST", "reset", {"keep_apps": keep_apps})

    # --- apps ---

    def add_app(
        self,
        channel: str,
        app_key: str,
        secret: str,
        *,
        valid_from_ms: int = 0,
        expires_at_ms: int | None = None,
    ) -> dict[str, Any]:
        """Add an app to ``channel``, or replace the one with this key."""
        body = {"channel": channel, "app_key": app_key, "secret": secret, "valid_from_ms": valid_from_ms,
                "expires_at_ms": expires_at_ms}  # fmt: skip
        return dict(self._call("POST", "apps", body))

    def remove_app(self, channel: str, app_key: str) -> None:
        self._call("DELETE", f"apps/{channel}/{app_key}")

    def rotate(self, channel: str, at_ms: int, new_secret: str, *, app_key: str | None = None) -> dict[str, Any]:
        """From ``at_ms`` (the simulator's clock) on, only ``new_secret`` signs for the app; the old one
        gets the platform's "Invalid API Key". ``app_key`` may be left out when the channel has one app."""
        body = {"channel": channel, "at_ms": at_ms, "new_secret": new_secret, "app_key": app_key}
        return dict(self._call("POST", "rotate", body))

    def set_expiry(self, channel: str, expires_at_ms: int | None, *, app_key: str | None = None) -> dict[str, Any]:
        body = {"channel": channel, "expires_at_ms": expires_at_ms, "app_key": app_key}
        return dict(self._call("POST", "expiry", body))

    # --- behaviour ---

    def configure(self, channel: str | None = None, **changes: Any) -> dict[str, Any]:
        """Change ``qps``, ``burst``, ``latency_ms``, ``jitter_ms``, ``error_rate``, ``extra_latency_ms``, ``outages``
        (list of [start_ms, end_ms)), ``honors_versions``, ``late_calls`` or ``late_apply_ms`` of one channel, or of
        every channel when ``channel`` is None."""
        return dict(self._call("POST", "config", {"channel": channel, **changes}))

    def set_settlement(self, url: str | None = None, *, delay_ms: float | None = None) -> dict[str, Any]:
        """Where (and how soon after agreeing) settlements are posted; ``url=""`` stops sending."""
        return dict(self._call("POST", "settle", {"url": url, "delay_ms": delay_ms}))

    # --- what it accepted ---

    def calls(
        self,
        channel: str | None = None,
        endpoint: str | None = None,
        *,
        since_ms: int | None = None,
        result: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Recorded calls, oldest first; ``result`` is ``applied``, ``duplicate`` or ``stale``."""
        rows = self._call("GET", "calls", channel=channel, endpoint=endpoint, since_ms=since_ms, result=result,
                          limit=limit)  # fmt: skip
        return list(rows)

    def refunds(self, channel: str | None = None) -> list[dict[str, Any]]:
        return list(self._call("GET", "refunds", channel=channel))

    def refund(self, channel: str, refund_id: str) -> dict[str, Any] | None:
        """The refund's record (``agreed`` 1, ``duplicate_attempts``, ``amount_fen``, its settlement);
        None if it was never agreed."""
        rows = self._call("GET", "refunds", channel=channel, refund_id=refund_id)
        return dict(rows[0]) if rows else None

    def stock(self, channel: str | None = None, sku: str | None = None) -> list[dict[str, Any]]:
        return list(self._call("GET", "stock", channel=channel, sku=sku))

    def settlements(self, channel: str | None = None) -> list[dict[str, Any]]:
        return list(self._call("GET", "settlements", channel=channel))

    def rejections(self, channel: str | None = None) -> list[dict[str, Any]]:
        return list(self._call("GET", "rejections", channel=channel))
