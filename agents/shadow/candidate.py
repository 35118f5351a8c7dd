"""What a shadow run is: its name, the candidate rule it runs, the files it keeps, and the settings
that send everything it writes under its own topic prefix.

A shadow named ``N`` of the pipeline with app id ``A`` and topic prefix ``P``:

- reads the live input topics (``P<topic>`` for every ``TopicSpec`` with direction ``input``:
  ``order.events``, ``stock.adjustments``, ``ops.overrides``, ``ops.clock``, ``refund.events``) as its
  own consumer group ``A.shadow.N.engine``, from their beginning, so its state is built from the
  same events as the live one;
- writes everything else - internal topics, outputs, changelogs, dead letters, alerts - as
  ``Pshadow.N.<topic>``. Connectors, the notifier, the sink and the audit read only live names, so
  nothing a shadow decides reaches a marketplace, a warehouse, a webhook or a dashboard;
- keeps its engine state under ``<home>/state/A.shadow.N/`` and its own files under
  ``<home>/shadow/N/``: ``candidate.json`` (the rule it runs and the live one it is compared with),
  ``refund_rules.toml`` (a copy of a candidate refund rule file), ``shadow.pid``, ``shadow.log`` and
  ``status.json`` (written by the running shadow).

This module reads and writes no topic; ``run_shadow`` runs a shadow and ``report`` compares it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr

from agents.refunds.rules import load_refund_rules
from agents.routing.scoring import check_weights
from streams.contract.topics import ALL_TOPICS, CONNECTOR_FAILED
from streams.resources import packaged
from streams.settings import Settings

# A shadow's name is part of topic names, consumer groups and folders: keep it to what all three take,
# and without dots, so ``shadow.<name>.`` never is the beginning of another shadow's prefix.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
LIVE_INPUTS = frozenset(spec.name for spec in ALL_TOPICS if spec.direction == "input")
# Written only by the outbound connectors, which a shadow does not have.
CONNECTOR_ONLY = frozenset(spec.name for spec in CONNECTOR_FAILED.values())
DEFAULT_REFUND_RULES = packaged("agents.refunds", "config", "refund_rules.toml")


class CandidateError(ValueError):
    """A shadow name or candidate rule that cannot be run."""


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise CandidateError(f"shadow name {name!r}: 1-40 of a-z, 0-9, '_' and '-', starting with a letter or digit")
    return name


@dataclass(frozen=True)
class Candidate:
    """The rule a shadow runs (routing weights, refund rules, or both) and the live one it is compared
    with, as they were when the shadow was started."""

    name: str
    routing_weights: dict[str, float] | None = None
    refund_rules: str | None = None  # the candidate refund rule file's TOML text
    refund_rules_source: str = ""  # where it was read from, for the report
    live_routing_weights: dict[str, float] = field(default_factory=dict)
    live_refund_rules_source: str = ""
    created_ms: int = 0

    def same_rule(self, other: Candidate) -> bool:
        return (self.routing_weights, self.refund_rules) == (other.routing_weights, other.refund_rules)

    def describe(self) -> str:
        parts = []
        if self.routing_weights is not None:
            parts.append("routing weights " + ", ".join(f"{k} {v:g}" for k, v in self.routing_weights.items()))
        if self.refund_rules is not None:
            parts.append(f"refund rules from {self.refund_rules_source}")
        return "; ".join(parts)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Candidate:
        return cls(**json.loads(text))


def make_candidate(live: Settings, name: str, routing_weights: str | None, refund_rules_file: Path | None) -> Candidate:
    """A candidate from what ``stockflow shadow start`` was given, checked as the live pipeline would check it."""
    check_name(name)
    if routing_weights is None and refund_rules_file is None:
        raise CandidateError("give a candidate: --routing-weights JSON, --refund-rules FILE, or both")
    weights = None
    if routing_weights is not None:
        try:
            parsed = json.loads(routing_weights)
            if not isinstance(parsed, dict):
                raise CandidateError(f"--routing-weights must be a JSON object, not {routing_weights!r}")
            weights = check_weights({str(k): float(v) for k, v in parsed.items()})
        except (ValueError, TypeError) as exc:
            raise CandidateError(f"--routing-weights: {exc}") from None
    rules_text = None
    if refund_rules_file is not None:
        try:
            rules_text = refund_rules_file.read_text(encoding="utf-8")
            # Refused here, not in the log (the limits do not matter to whether the file reads).
            load_refund_rules(refund_rules_file, respond_ms=1, qc_ms=1, settle_ms=1, return_ms=1)
        except (OSError, ValueError, TypeError) as exc:
            raise CandidateError(f"--refund-rules {refund_rules_file}: {exc}") from None
    live_rules = live.refund_rules_file or DEFAULT_REFUND_RULES
    return Candidate(
        name=name,
        routing_weights=weights,
        refund_rules=rules_text,
        refund_rules_source=str(refund_rules_file.resolve()) if refund_rules_file is not None else "",
        live_routing_weights=check_weights(live.routing_weights),
        live_refund_rules_source=str(Path(live_rules).resolve()),
        created_ms=int(time.time() * 1000),
    )


@dataclass(frozen=True)
class ShadowHome:
    """A shadow's own files under ``<home>/shadow/<name>/``."""

    live: Settings
    name: str

    @property
    def root(self) -> Path:
        return self.live.home_dir / "shadow" / self.name

    @property
    def candidate_file(self) -> Path:
        return self.root / "candidate.json"

    @property
    def rules_file(self) -> Path:
        return self.root / "refund_rules.toml"

    @property
    def pid_file(self) -> Path:
        return self.root / "shadow.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "shadow.log"

    @property
    def status_file(self) -> Path:
        return self.root / "status.json"

    @property
    def state_dir(self) -> Path:
        return self.live.home_dir / "state" / shadow_app_id(self.live, self.name)

    def exists(self) -> bool:
        return self.candidate_file.exists()

    def load(self) -> Candidate:
        try:
            return Candidate.from_json(self.candidate_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CandidateError(f"no shadow named {self.name!r} (nothing in {self.root})") from None

    def save(self, candidate: Candidate) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if candidate.refund_rules is not None:
            # A copy: the file the shadow was started with may be edited while it runs.
            _write_atomically(self.rules_file, candidate.refund_rules)
        _write_atomically(self.candidate_file, candidate.to_json())

    def status(self) -> dict[str, Any]:
        try:
            data = json.loads(self.status_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_status(self, status: dict[str, Any]) -> None:
        _write_atomically(self.status_file, json.dumps(status, ensure_ascii=False, indent=2))


def _write_atomically(path: Path, text: str) -> None:
    """Readers (``shadow list``, ``report``) never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def shadow_names(live: Settings) -> list[str]:
    root = live.home_dir / "shadow"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "candidate.json").exists())


def shadow_app_id(live: Settings, name: str) -> str:
    return f"{live.app_id}.shadow.{name}"


def shadow_topic_prefix(live: Settings, name: str) -> str:
    """The beginning of every topic name shadow ``name`` writes (its outputs, internal topics and changelogs)."""
    return f"{live.topic_prefix}shadow.{name}."


class ShadowSettings(Settings):
    """The live settings with the candidate rule swapped in and another app id; ``topic`` maps the live
    inputs to their live names and every other topic under the shadow's prefix. Everything that names
    a topic goes through ``topic`` (the engine's inputs and outputs, its dead letters, changelogs and
    their restore, ``ensure_topics``, the routing view's follower), so that is the one switch."""

    _shadow_prefix: str = PrivateAttr(default="shadow.")

    @classmethod
    def of(cls, values: dict[str, Any], name: str) -> ShadowSettings:
        # Validated from the live values, not read again from the environment.
        settings = cls.model_validate(values)
        settings._shadow_prefix = f"shadow.{check_name(name)}."  # noqa: SLF001 - its own class's factory
        return settings

    @property
    def shadow_prefix(self) -> str:
        return f"{self.topic_prefix}{self._shadow_prefix}"

    def topic(self, name: str) -> str:
        if name in LIVE_INPUTS:
            return super().topic(name)
        return f"{self.shadow_prefix}{name}"


def shadow_settings(live: Settings, candidate: Candidate, home: ShadowHome) -> ShadowSettings:
    values = live.model_dump()
    values["app_id"] = shadow_app_id(live, candidate.name)
    if candidate.routing_weights is not None:
        values["routing_weights"] = candidate.routing_weights
    if candidate.refund_rules is not None:
        values["refund_rules_file"] = home.rules_file
    return ShadowSettings.of(values, candidate.name)
