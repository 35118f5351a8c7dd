"""Data files shipped inside stockflow's packages, found the same way from a checkout or a wheel."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def packaged(package: str, *parts: str) -> Path:
    """The path of a data file (or folder) that ``package`` ships, e.g. ``packaged("schemas", "ddl")``."""
    return Path(str(files(package).joinpath(*parts)))
