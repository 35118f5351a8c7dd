"""The optional parts of stockflow and the pip extra that brings each (pyproject.toml's
``[project.optional-dependencies]``): embedded ClickHouse (``chdb``), the ClickHouse server driver
(``clickhouse-server``) and the charts (``charts``). Reads nothing but the import system.

Code that needs one of them calls ``ensure`` before importing it (or checks ``missing`` before
starting something long-lived), so a user who installed only the backend they use gets one line naming the
extra to install, not a ``ModuleNotFoundError`` from deep inside a command.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Extra:
    name: str  # as in ``pip install 'stockflow[name]'``
    modules: tuple[str, ...]  # what it brings, by import name
    purpose: str  # what needs it, for the message


CHDB = Extra("chdb", ("chdb", "pyarrow"), "embedded ClickHouse (STOCKFLOW_CLICKHOUSE_URL=chdb://...)")
CLICKHOUSE_SERVER = Extra(
    "clickhouse-server", ("clickhouse_driver",), "a ClickHouse server (STOCKFLOW_CLICKHOUSE_URL=clickhouse://...)"
)
CHARTS = Extra("charts", ("plotly",), "the charts (stockflow web, the bench and demo chart)")
EXTRAS = (CHDB, CLICKHOUSE_SERVER, CHARTS)


class MissingExtra(ImportError):
    """An optional part is not installed; the message is one line naming the extra."""


def message(extra: Extra, module: str) -> str:
    return (
        f"{extra.purpose} needs the Python package {module!r}, which is not installed: "
        f"pip install 'stockflow[{extra.name}]' (or 'stockflow[all]')"
    )


def missing(extra: Extra) -> str | None:
    """The one-line message when a package of ``extra`` is not installed, else None. Imports nothing:
    a check before starting a process, without paying for chdb's import."""
    for module in extra.modules:
        if importlib.util.find_spec(module) is None:
            return message(extra, module)
    return None


def ensure(extra: Extra) -> None:
    """Raise ``MissingExtra`` unless every package of ``extra`` is installed; call it before the
    import, which then stays an ordinary (typed) one."""
    if problem := missing(extra):
        raise MissingExtra(problem)
