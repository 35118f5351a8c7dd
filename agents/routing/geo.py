"""Placing a Chinese address on the map, offline: province and city centroids shipped with stockflow.

``agents/routing/data/cn_centroids.csv`` holds one row per province (city empty: the provincial capital)
and one per major city. An address is placed at its city when the city is listed, else at its
province's centroid; an address whose province is unknown cannot be placed. Names match with or
without their administrative suffix (浙江省 = 浙江, 杭州市 = 杭州, 广西壮族自治区 = 广西).
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from pathlib import Path

CENTROIDS = Path(__file__).parent / "data" / "cn_centroids.csv"
_SUFFIXES = (
    "维吾尔自治区", "壮族自治区", "回族自治区", "特别行政区", "自治区", "自治州", "省", "市", "地区", "盟",
)  # fmt: skip
EARTH_RADIUS_KM = 6371.0


@dataclass(frozen=True)
class Place:
    lat: float
    lon: float
    precision: str  # "city" or "province"


def normalise(name: str) -> str:
    name = name.strip()
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


@functools.cache
def _table(path: Path = CENTROIDS) -> dict[tuple[str, str], tuple[float, float]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return {(normalise(r["province"]), normalise(r["city"])): (float(r["lat"]), float(r["lon"]))
                for r in csv.DictReader(fh)}  # fmt: skip


@functools.lru_cache(maxsize=4096)
def locate(province: str, city: str) -> Place | None:
    """Where an address is, at the finest level the table knows; None if it cannot be placed."""
    table = _table()
    prov, town = normalise(province), normalise(city)
    if (prov, town) in table:
        return Place(*table[(prov, town)], "city")
    if (prov, "") in table:
        return Place(*table[(prov, "")], "province")
    return None


@functools.lru_cache(maxsize=65536)
def distance_km(a: Place, b: Place) -> float:
    """Great-circle distance (haversine)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a.lat, a.lon, b.lat, b.lon))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))
