"""The connectors' credentials: one app key and secret per channel with its expiry date, in a file the
operator updates without restarting anything (``stockflow connectors set-key``).

Owns: the credentials file (``STOCKFLOW_CONNECTOR_CREDENTIALS_FILE``; unset:
``<home>/connectors/credentials.json``), JSON, mode 0600 in a 0700 folder, always replaced whole and
atomically (written to a temporary file beside it, synced, renamed over it) under a lock, so a reader
never sees half a file and two ``set-key`` runs never lose each other's key. A running connector asks
``CredentialStore.get`` before every call; the store re-reads the file when it changed (inode, size,
mtime), so a new key is used from the next call on.

Secrets never leave the store: ``Credentials`` and ``StoredKey`` print masked, the status view and the
CLI show ``platforms.fingerprint`` (a short sha256 tag) and nothing here logs a secret.

Expiry: a key bought "until 2026-12-31" stops working at the start of that day in China time (GMT+8,
the platforms' clock), the earlier reading of a date, so the warning is never late. ``ExpiryWatch``
turns the keys into ``credential_expiring`` alerts: WARNING from ``STOCKFLOW_CREDENTIAL_WARN_DAYS``
before, RED once expired, each raised once per key and state and cleared when a new key (or a later
date) is set.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from enum import StrEnum
from pathlib import Path
from typing import Any

from agents.alerting.alerts import alert
from agents.channels.platforms import CHINA, Credentials, fingerprint
from streams.contract.records import Alert
from streams.errors import StockflowError
from streams.settings import Settings

log = logging.getLogger(__name__)
FORMAT = 1
EXPIRY_ALERT = "credential_expiring"
DAY_MS = 86_400_000


class CredentialsError(StockflowError, ValueError):
    """A credentials file that cannot be read, or a key that cannot be stored."""


def credentials_path(settings: Settings) -> Path:
    return settings.connector_credentials_file or settings.home_dir / "connectors" / "credentials.json"


def expires_at_ms(expires: date) -> int:
    """When a key valid "until ``expires``" stops working: the start of that day, GMT+8."""
    return int(datetime.combine(expires, time(0, 0), tzinfo=CHINA).timestamp() * 1000)


@dataclass(frozen=True)
class StoredKey:
    """One channel's key as stored: the credentials (masked when printed), expiry date, when it was set."""

    channel: str
    credentials: Credentials
    expires: date | None
    set_at_ms: int

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.credentials.secret)

    @property
    def expires_at_ms(self) -> int | None:
        return None if self.expires is None else expires_at_ms(self.expires)

    def public(self, now_ms: int, warn_days: int) -> dict[str, Any]:
        """What the status view and ``connectors status`` show: never the secret."""
        ends = self.expires_at_ms
        return {
            "app_key": self.credentials.app_key,
            "fingerprint": self.fingerprint,
            "expires": self.expires.isoformat() if self.expires else None,
            "days_left": None if ends is None else (ends - now_ms) // DAY_MS,
            "state": expiry_state(ends, now_ms, warn_days).value,
            "set_at_ms": self.set_at_ms,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "app_key": self.credentials.app_key,
            "secret": self.credentials.secret,
            "access_token": self.credentials.access_token,
            "expires": self.expires.isoformat() if self.expires else None,
            "set_at_ms": self.set_at_ms,
        }

    @classmethod
    def from_json(cls, channel: str, data: Mapping[str, Any]) -> StoredKey:
        try:
            expires = data.get("expires")
            return cls(
                channel=channel,
                credentials=Credentials(str(data["app_key"]), str(data["secret"]), data.get("access_token") or None),
                expires=date.fromisoformat(expires) if expires else None,
                set_at_ms=int(data.get("set_at_ms", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CredentialsError(f"the key of {channel} is not readable: {type(exc).__name__}") from None


@dataclass
class CredentialStore:
    """The credentials file, re-read when it changes. Thread-safe."""

    path: Path
    _keys: dict[str, StoredKey] = field(default_factory=dict)
    _seen: tuple[int, int, int] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    generation: int = 0  # grows on every reload that changed something: watchers look again

    @classmethod
    def from_settings(cls, settings: Settings) -> CredentialStore:
        return cls(credentials_path(settings))

    # ---- reading -------------------------------------------------------------------------------------
    def get(self, channel: str) -> StoredKey | None:
        """``channel``'s key now (None: none set). Costs one ``stat`` when the file has not changed."""
        self.refresh()
        return self._keys.get(channel)

    def all(self) -> dict[str, StoredKey]:
        self.refresh()
        return dict(self._keys)

    def refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            signature = None
        else:
            signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        if signature == self._seen:
            return
        with self._lock:
            if signature == self._seen:
                return
            try:
                keys = self._read() if signature is not None else {}
            except CredentialsError as exc:
                # A file broken by hand: keep the keys in use, say so once per change of the file.
                log.error("%s; the connectors go on with the keys read before", exc)
                self._seen = signature
                return
            self._seen = signature
            if keys != self._keys:
                self._keys = keys
                self.generation += 1

    def _read(self) -> dict[str, StoredKey]:
        try:
            text = self.path.read_text(encoding="utf-8")
            data = json.loads(text)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise CredentialsError(f"credentials file {self.path} is not readable JSON: {type(exc).__name__}") from None
        if not isinstance(data, dict) or not isinstance(data.get("channels"), dict):
            raise CredentialsError(f"credentials file {self.path} has no 'channels' object")
        if os.stat(self.path).st_mode & 0o077:
            log.warning("credentials file %s is readable by other users; stockflow writes it 0600", self.path)
        return {channel: StoredKey.from_json(channel, entry) for channel, entry in data["channels"].items()}

    # ---- writing -------------------------------------------------------------------------------------
    def set_key(self, key: StoredKey) -> None:
        """Store ``key`` for its channel, replacing the old one; the other channels' keys are kept."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._file_lock():
            try:
                keys = self._read()
            except CredentialsError:
                raise CredentialsError(
                    f"{self.path} is not a credentials file stockflow can read; move it away and set every key again"
                ) from None
            keys[key.channel] = key
            self._write(keys)
        self.refresh()

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _write(self, keys: Mapping[str, StoredKey]) -> None:
        data = {"format": FORMAT, "channels": {channel: k.to_json() for channel, k in sorted(keys.items())}}
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)  # before a byte of secret is written
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=2, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)


# ---- expiry --------------------------------------------------------------------------------------


class ExpiryState(StrEnum):
    OK = "ok"
    EXPIRING = "expiring"
    EXPIRED = "expired"


def expiry_state(expires_at_ms: int | None, now_ms: int, warn_days: int) -> ExpiryState:
    """A key with no expiry date never expires; else expired from its end, expiring ``warn_days`` before."""
    if expires_at_ms is None:
        return ExpiryState.OK
    if now_ms >= expires_at_ms:
        return ExpiryState.EXPIRED
    if now_ms >= expires_at_ms - warn_days * DAY_MS:
        return ExpiryState.EXPIRING
    return ExpiryState.OK


@dataclass
class ExpiryWatch:
    """``credential_expiring`` alerts from the stored keys: one per key and state, cleared by a new key.

    Alert ids name the key's fingerprint, date and state, so a restarted connector raising the same
    alert again writes the same event.
    """

    warn_days: int
    _seen: dict[str, tuple[StoredKey, ExpiryState]] = field(default_factory=dict)

    def check(self, keys: Mapping[str, StoredKey], now_ms: int) -> list[Alert]:
        alerts: list[Alert] = []
        for channel, key in sorted(keys.items()):
            state = expiry_state(key.expires_at_ms, now_ms, self.warn_days)
            seen = self._seen.get(channel)
            self._seen[channel] = (key, state)
            if seen is None:
                if state is not ExpiryState.OK:
                    alerts.append(self._raised(key, state, now_ms))
                continue
            old_key, old_state = seen
            replaced = (old_key.fingerprint, old_key.expires) != (key.fingerprint, key.expires)
            if state is old_state and not replaced:
                continue
            if old_state is not ExpiryState.OK and (replaced or state is ExpiryState.OK):
                alerts.append(self._cleared(old_key, old_state, key, now_ms))
            if state is not ExpiryState.OK and (replaced or state is not old_state):
                alerts.append(self._raised(key, state, now_ms))
        return alerts

    def _raised(self, key: StoredKey, state: ExpiryState, now_ms: int) -> Alert:
        ends = key.expires_at_ms or 0
        days = (ends - now_ms) // DAY_MS
        when = f"expired on {key.expires}" if state is ExpiryState.EXPIRED else f"expires on {key.expires} ({days} d)"
        return alert(
            EXPIRY_ALERT, "RED" if state is ExpiryState.EXPIRED else "WARNING", key.channel,
            f"{key.channel}: API key {key.credentials.app_key} ({key.fingerprint}) {when}; renew it on the "
            f"platform and run stockflow connectors set-key {key.channel}",
            now_ms, event_id=f"{EXPIRY_ALERT}:{key.channel}:{key.fingerprint}:{key.expires}:{state.value}",
            details={"channel": key.channel, "app_key": key.credentials.app_key, "fingerprint": key.fingerprint,
                     "expires": str(key.expires), "state": state.value},
        )  # fmt: skip

    def _cleared(self, old: StoredKey, old_state: ExpiryState, new: StoredKey, now_ms: int) -> Alert:
        return alert(
            EXPIRY_ALERT, "RED" if old_state is ExpiryState.EXPIRED else "WARNING", old.channel,
            f"{old.channel}: key {new.credentials.app_key} ({new.fingerprint}) set, valid "
            + (f"until {new.expires}" if new.expires else "with no expiry date"),
            now_ms, cleared=True, event_id=f"{EXPIRY_ALERT}:{old.channel}:{old.fingerprint}:{old.expires}:cleared",
            details={"channel": old.channel, "app_key": new.credentials.app_key, "fingerprint": new.fingerprint,
                     "expires": str(new.expires)},
        )  # fmt: skip
