"""The README's configuration table is the one ``stockflow settings --markdown`` generates from ``Settings``."""

from __future__ import annotations

from pathlib import Path

from streams.contract.topics import contract_table_markdown
from streams.settings import Settings, settings_table_markdown

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def test_every_setting_says_what_it_means() -> None:
    undescribed = [name for name, field in Settings.model_fields.items() if not (field.description or "").strip()]
    assert not undescribed, f"give these Settings fields a description=: {undescribed}"


def test_readme_settings_table_is_the_generated_one() -> None:
    text = README.read_text(encoding="utf-8")
    assert START in text and END in text, f"README.md lost its {START} / {END} markers"
    in_readme = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert in_readme == settings_table_markdown().strip(), (
        "README.md's configuration table differs from Settings: run `stockflow settings --markdown` "
        f"and paste its output between {START} and {END}"
    )


def test_readme_topic_contract_is_the_generated_one() -> None:
    start, end = "<!-- contract-table:start -->", "<!-- contract-table:end -->"
    text = README.read_text(encoding="utf-8")
    assert start in text and end in text, f"README.md lost its {start} / {end} markers"
    in_readme = text.split(start, 1)[1].split(end, 1)[0].strip()
    defaults = Settings(partitions=Settings.model_fields["partitions"].default)
    assert in_readme == contract_table_markdown(defaults).strip(), (
        "README.md's topic contract differs from streams/contract/topics.py: run "
        f"`stockflow topics contract --markdown` and paste its output between {start} and {end}"
    )
