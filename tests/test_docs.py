"""The commands README.md and docs/ show exist as written: make targets in the Makefile, and
`python -m pipeline` subcommands with the options they are shown with."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from pipeline.cli import _parser

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# Code as a reader copies it: fenced blocks and inline code spans.
CODE = re.compile(r"```[a-z]*\n(.*?)```|`([^`\n]+)`", re.DOTALL)
MAKE = re.compile(r"(?:^|[ \t;&(])make[ \t]+([a-z][a-z-]*)", re.MULTILINE)
PIPELINE = re.compile(r"python -m pipeline\s+([a-z][a-z-]*)([^\n`|#]*)")


def _code(document: Path) -> str:
    return "\n".join(a or b for a, b in CODE.findall(document.read_text()))


def _makefile_targets() -> set[str]:
    text = (REPO_ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z-]*):", text, re.MULTILINE))


def _subcommands() -> dict[str, set[str]]:
    parser = _parser()
    (actions,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: {option for action in sub._actions for option in action.option_strings}
        for name, sub in actions.choices.items()
    }


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_make_target_a_document_shows_is_in_the_makefile(document: Path) -> None:
    shown = set(MAKE.findall(_code(document)))
    assert shown - _makefile_targets() == set()


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_pipeline_command_a_document_shows_exists_with_its_options(document: Path) -> None:
    commands = _subcommands()
    wrong = []
    for name, rest in PIPELINE.findall(_code(document)):
        if name not in commands:
            wrong.append(f"python -m pipeline {name}: no such command")
            continue
        unknown = set(re.findall(r"--[a-z][a-z-]*", rest)) - commands[name]
        if unknown:
            wrong.append(f"python -m pipeline {name}: unknown option(s) {sorted(unknown)}")
    assert wrong == []


def test_the_readme_shows_the_two_commands() -> None:
    code = _code(REPO_ROOT / "README.md")
    assert {"run", "test"} <= set(MAKE.findall(code))
