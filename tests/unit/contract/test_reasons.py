"""One refusal vocabulary: every reason code is a ``Reason``, documented, and named as one in code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from streams.contract.reasons import DESCRIPTIONS, Reason
from streams.contract.topics import ALL_TOPICS

ROOT = Path(__file__).resolve().parents[3]
README = (ROOT / "README.md").read_text(encoding="utf-8")
REASONS_MODULE = ROOT / "streams" / "contract" / "reasons.py"
CODE = re.compile(r"`([a-z]+(?:_[a-z]+)*)`")


def _section(start: str, end: str) -> str:
    """README text from the line containing ``start`` up to the next line starting with ``end``."""
    begin = README.index(start)
    stop = README.find("\n" + end, begin + len(start))
    return README[begin : stop if stop != -1 else len(README)]


REFUSED_INPUT = _section("### Refused input", "#")
INTAKE_TABLE = _section("A refusal writes nothing", "#")


def test_every_reason_says_when_it_is_used() -> None:
    assert set(DESCRIPTIONS) == set(Reason)
    assert all(reason.description.strip() for reason in Reason)


def test_every_reason_is_in_the_readme() -> None:
    documented = set(CODE.findall(REFUSED_INPUT)) | set(CODE.findall(INTAKE_TABLE))
    assert sorted(r.value for r in Reason if r.value not in documented) == []


def test_every_code_the_readme_lists_is_a_reason() -> None:
    topics = {t.name for t in ALL_TOPICS}  # the section names the ``deadletters`` topic too
    quoted = {c for c in CODE.findall(REFUSED_INPUT) + CODE.findall(INTAKE_TABLE) if c not in topics}
    assert sorted(quoted - {r.value for r in Reason}) == []


def test_code_names_reasons_as_members_not_strings() -> None:
    """A string equal to a reason code, anywhere in agents/ or streams/, should be ``Reason.X``."""
    values = {r.value: r.name for r in Reason}
    bare = sorted(
        f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r} -> Reason.{values[node.value]}"
        for package in ("agents", "streams")
        for path in (ROOT / package).rglob("*.py")
        if path != REASONS_MODULE
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in values
    )
    assert bare == []
