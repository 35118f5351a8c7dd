"""The warehouses stockflow may hold stock in, from the configured TOML file."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Warehouse:
    id: str
    name: str
    province: str
    city: str
    cost_per_order: float


def load_warehouses(path: Path) -> dict[str, Warehouse]:
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
        )
        found[wh.id] = wh
    if not found:
        raise ValueError(f"{path}: no [[warehouse]] entries")
    return found
