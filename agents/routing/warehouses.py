"""The warehouses stockflow may hold stock in, from the configured TOML file."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from streams.resources import packaged

SAMPLE = packaged("agents.routing", "config", "warehouses.toml")


@dataclass(frozen=True)
class Warehouse:
    id: str
    name: str
    province: str
    city: str
    cost_per_order: float
    on_time_prior: float | None = None  # None: the on_time_prior setting


def load_warehouses(path: Path | None) -> dict[str, Warehouse]:
    """The warehouses in ``path``; None: the sample set stockflow ships."""
    path = path or SAMPLE
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    found = {}
    for entry in data.get("warehouse", []):
        wh = Warehouse(
            id=entry["id"],
            name=entry.get("name", entry["id"]),
            province=entry.get("province", ""),
            city=entry.get("city", ""),
            cost_per_order=float(entry.get("cost_per_order", 0.0)),
            on_time_prior=float(entry["on_time_prior"]) if "on_time_prior" in entry else None,
        )
        found[wh.id] = wh
    if not found:
        raise ValueError(f"{path}: no [[warehouse]] entries")
    return found
