"""The intake's secrets: each channel's callback app key and secret, the WMS token and customer service's.

Read from ``STOCKFLOW_INTAKE_SECRETS_FILE`` (TOML, see ``config/secrets.example.toml``)::

    [tmall]
    app_key = "12345678"
    secret = "..."

    [wms]
    token = "..."

    [service]
    token = "..."

A channel with a section has every callback verified with its platform's scheme
(``agents.channels.platforms.verify_callback``); a channel without one is refused unless
``STOCKFLOW_INTAKE_ALLOW_UNSIGNED`` is on. The WMS (``/v1/wms/*``) and customer service
(``/v1/service/*``) send their token as ``Authorization: Bearer <token>``. ``SecretsFile`` re-reads
the file when it changes, so a rotated key is taken up without a restart; a file that no longer
reads keeps the last good secrets (and says so in the log, without any secret). A channel's
``previous_secret`` is accepted beside its ``secret`` while a key rotation runs, so no push signed with
either is refused. Secrets are never logged or shown: reprs carry a fingerprint
(``platforms.fingerprint``) instead.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from agents.channels.platforms import CHANNELS as SIGNING_CHANNELS
from agents.channels.platforms import Credentials, fingerprint

log = logging.getLogger(__name__)
WMS = "wms"
SERVICE = "service"
TOKENS = (WMS, SERVICE)  # the callers that post with a shared token rather than a channel's signature
RECHECK_S = 1.0  # how often a request may look at the file's modification time


@dataclass(frozen=True)
class IntakeSecrets:
    channels: Mapping[str, Credentials] = field(default_factory=lambda: MappingProxyType({}))
    tokens: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    # Per channel, the secret before the current one, still accepted while a rotation runs: a marketplace signs
    # its pushes, and its retries of them, with whichever it holds, and a callback refused 401 is lost for good
    # once the marketplace stops retrying.
    previous: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)

    def __repr__(self) -> str:
        tokens = {name: fingerprint(token) for name, token in self.tokens.items()}
        previous = {name: fingerprint(secret) for name, secret in self.previous.items()}
        return f"IntakeSecrets(channels={dict(self.channels)!r}, tokens={tokens}, previous={previous})"

    def callback_secrets(self, channel: str) -> list[str]:
        """The secrets a callback of ``channel`` may be signed with: the current one first."""
        creds = self.channels.get(channel)
        if creds is None:
            return []
        earlier = self.previous.get(channel)
        return [creds.secret, earlier] if earlier and earlier != creds.secret else [creds.secret]

    def token(self, name: str) -> str | None:
        return self.tokens.get(name)

    def signed(self, channels: Iterable[str]) -> dict[str, bool]:
        """Per channel (and ``wms``, ``service``): whether a secret is configured."""
        return {**{c: c in self.channels for c in channels}, **{t: t in self.tokens for t in TOKENS}}


def load_secrets(path: Path | None, known: Iterable[str]) -> IntakeSecrets:
    """The secrets in ``path`` (None: no secrets); ``ValueError`` naming the section at fault, never a value."""
    if path is None:
        return IntakeSecrets()
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    known = set(known)
    channels: dict[str, Credentials] = {}
    tokens: dict[str, str] = {}
    previous: dict[str, str] = {}
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ValueError(f"{path}: {section!r} must be a [section]")
        if section in TOKENS:
            token = values.get("token")
            if not isinstance(token, str) or not token:
                raise ValueError(f"{path}: [{section}] needs a non-empty token")
            tokens[section] = token
            continue
        if section not in known:
            raise ValueError(f"{path}: [{section}] is not a channel in STOCKFLOW_CHANNELS {sorted(known)}")
        if section not in SIGNING_CHANNELS:
            raise ValueError(f"{path}: [{section}] has no signature scheme (known: {', '.join(SIGNING_CHANNELS)})")
        app_key, secret = values.get("app_key"), values.get("secret")
        if not isinstance(app_key, str) or not app_key or not isinstance(secret, str) or not secret:
            raise ValueError(f"{path}: [{section}] needs a non-empty app_key and secret")
        channels[section] = Credentials(app_key, secret)
        earlier = values.get("previous_secret")
        if earlier is not None:
            if not isinstance(earlier, str) or not earlier:
                raise ValueError(f"{path}: [{section}] previous_secret must be a non-empty string (or left out)")
            previous[section] = earlier
    return IntakeSecrets(MappingProxyType(channels), MappingProxyType(tokens), MappingProxyType(previous))


class SecretsFile:
    """The secrets file as it is now: re-read when its modification time or size changes."""

    def __init__(self, path: Path | None, known: Iterable[str]) -> None:
        self.path, self.known = path, tuple(known)
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._secrets = load_secrets(path, self.known)  # a bad file at start is a start-up error
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def current(self) -> IntakeSecrets:
        if self.path is None or time.monotonic() - self._checked < RECHECK_S:
            return self._secrets
        with self._lock:
            self._checked = time.monotonic()
            stamp = self._stat()
            if stamp is not None and stamp != self._stamp:
                try:
                    found = load_secrets(self.path, self.known)
                    if not (found.channels or found.tokens) and (self._secrets.channels or self._secrets.tokens):
                        # Caught mid-rewrite by a tool that truncates first: an empty file is no rotation.
                        raise ValueError("it holds no secrets at all")
                    self._secrets = found
                    log.warning("intake: secrets re-read from %s: %r", self.path, self._secrets)
                except (OSError, ValueError) as exc:
                    # Half-written or broken: keep verifying with the secrets that worked.
                    log.error("intake: %s does not read (%s); keeping the previous secrets", self.path, exc)
                self._stamp = stamp
        return self._secrets


def write_secrets(path: Path, channels: Mapping[str, Credentials], wms_token: str | None = None,
                  service_token: str | None = None, previous: Mapping[str, str] | None = None) -> Path:  # fmt: skip
    """Write a secrets file intake reads (readable by its owner only): for drills, load runs and tests."""
    lines = []
    for channel, creds in channels.items():
        lines += [f"[{channel}]", f"app_key = {_toml_text(creds.app_key)}", f"secret = {_toml_text(creds.secret)}"]
        if earlier := (previous or {}).get(channel):
            lines.append(f"previous_secret = {_toml_text(earlier)}")
        lines.append("")
    for name, token in ((WMS, wms_token), (SERVICE, service_token)):
        if token is not None:
            lines += [f"[{name}]", f"token = {_toml_text(token)}", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed over it: a reader never sees the file half-written (or empty).
    fd, staged = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines))
        os.replace(staged, path)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
    return path


def _toml_text(value: str) -> str:
    # A TOML basic string is a JSON string for everything JSON escapes.
    return json.dumps(value, ensure_ascii=False)
