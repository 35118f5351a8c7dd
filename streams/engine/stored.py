"""Stored records across versions: what a record written by another version of stockflow loads as."""

from __future__ import annotations

from dataclasses import fields
from functools import cache
from typing import Any


@cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


def stored_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The fields of a stored record (a dataclass) this version has. During a rolling deploy, or after a rollback,
    a worker reads records a newer one wrote (a field it does not know would make every event of their key a dead
    letter) and records an older one wrote (a field missing takes its default)."""
    names = _field_names(cls)
    return data if data.keys() <= names else {k: v for k, v in data.items() if k in names}
