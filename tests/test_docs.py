"""The documents are contracts: every config key and CLI flag they name must exist.

A renamed or removed key/flag that a document still names fails here, so docs
cannot silently drift from the code (README.md, docs/*.md, bench/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from recbatch.cli import build_parser
from recbatch.config import Config

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", REPO / "bench" / "README.md", *sorted((REPO / "docs").glob("*.md"))]

SECTIONS = [f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(getattr(Config(), f.name))]
# `score.k`, `--set train.cadence=never`: a known section, a dot, a key (an optional =value after).
# File names such as `split.parquet` are not keys.
KEY = re.compile(
    r"(?<![\w./-])(" + "|".join(sorted(SECTIONS)) + r")\.(?!(?:parquet|json|csv|yaml|md|py|png|html)\b)"
    r"([a-z][a-z0-9_]*)(?=[\s=`:,)]|$)"
)
# `recbatch COMMAND ... --flag`, up to the end of the line or inline code span.
COMMAND_LINE = re.compile(r"recbatch (\w+)([^`\n]*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _config_keys() -> dict[str, set[str]]:
    defaults = Config()
    return {section: {f.name for f in dataclasses.fields(getattr(defaults, section))} for section in SECTIONS}


def _parser_flags() -> dict[str, set[str]]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {opt for action in p._actions for opt in action.option_strings} for name, p in sub.choices.items()}


def _named(pattern: re.Pattern, text: str) -> list[re.Match]:
    return list(pattern.finditer(text))


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_documented_config_keys_exist(document):
    keys = _config_keys()
    text = document.read_text()
    missing = sorted({f"{m[1]}.{m[2]}" for m in _named(KEY, text) if m[2] not in keys[m[1]]})
    assert not missing, f"{document.name} names config keys that do not exist: {missing}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_documented_cli_flags_exist(document):
    flags = _parser_flags()
    missing = set()
    for m in _named(COMMAND_LINE, document.read_text()):
        command, rest = m[1], m[2]
        if command not in flags:
            continue  # "recbatch nightly" is a command; "recbatch turns ..." is prose
        missing |= {f"recbatch {command} {flag}" for flag in FLAG.findall(rest) if flag not in flags[command]}
    assert not missing, f"{document.name} names CLI flags that do not exist: {sorted(missing)}"


def test_the_checks_see_keys_and_flags():
    """Guard against a pattern that matches nothing (and so could never fail)."""
    text = "use `--set score.k=50` or `train.cadence: never`; `recbatch nightly --run-date 2026-01-01 --nope`"
    assert {f"{m[1]}.{m[2]}" for m in _named(KEY, text)} == {"score.k", "train.cadence"}
    cli = _named(COMMAND_LINE, text)[0]
    assert cli[1] == "nightly" and FLAG.findall(cli[2]) == ["--run-date", "--nope"]
    assert "--nope" not in _parser_flags()["nightly"] and "--run-date" in _parser_flags()["nightly"]
