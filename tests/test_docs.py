"""The commands README.md and docs/ show exist as written: make targets in the Makefile, and
`python -m pipeline` subcommands with the options they are shown with.

Every command of a fenced shell block is also run, as written, by
`tests/e2e/test_documented_commands.py`, except those a rule below skips by name with its
reason; `documented_commands` is what both read.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import _parser

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# Code as a reader copies it: fenced blocks and inline code spans.
CODE = re.compile(r"```[a-z]*\n(.*?)```|`([^`\n]+)`", re.DOTALL)
MAKE = re.compile(r"(?:^|[ \t;&(])make[ \t]+([a-z][a-z-]*)", re.MULTILINE)
PIPELINE = re.compile(r"python -m pipeline\s+([a-z][a-z-]*)([^\n`|#]*)")


SHELL_BLOCK = re.compile(r"^[ \t]*```(?:bash|sh|shell)\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)

# What the docs test does not run, and why. A rule matches a command's text; a block rule
# skips its whole block (the lines after it depend on it, e.g. `export` of another store).
BLOCK_SKIPS: dict[str, str] = {
    "make tracking-server": "needs PostgreSQL and a team tracking server (tests/team runs it)",
    "export MLFLOW_TRACKING_URI=http": "commands against a team tracking server (tests/team)",
    "docker ": "needs a Docker engine (tests/deploy checks the files against the code)",
    "kubectl ": "needs a Kubernetes cluster (tests/deploy checks the manifests)",
    "kustomize ": "needs a Kubernetes cluster (tests/deploy checks the manifests)",
}
COMMAND_SKIPS: dict[str, str] = {
    "make run": "trains, then serves until Ctrl-C; its two halves run here as `make pipeline` "
    "and the server the test starts (`python -m serving`, what `make serve` runs)",
    "make serve": "serves until Ctrl-C; the test starts the same `python -m serving` itself",
    "make ui": "serves the UI until Ctrl-C; tests/e2e/test_ui_browser.py starts it and opens "
    "the printed link in a browser",
    "make test": "the whole test suite, which this test is part of",
    "make lint": "part of `make test`",
    "make format": "rewrites the sources",
    "make lock": "re-resolves the dependencies from the network",
    "make bench-": "a benchmark: minutes (bench/README.md has its figures)",
    ".venv/bin/python bench/": "a benchmark: minutes (its figures are in the text)",
    "python -m bench.": "a benchmark: minutes (its figures are in the text)",
    ".venv/bin/pytest": "part of `make test`",
    "iris_search.yaml": "50 search trials: minutes on two cores; tests/e2e/"
    "test_tracking_server_view.py runs a small search through the same command",
    "engine=spark": "starts a Spark session with Java (tests/pipeline/scoring, marker spark)",
    "--engine spark": "starts a Spark session with Java (tests/pipeline/scoring, marker spark)",
}
# Optional parts the text shows in brackets (`[--repair]`, `[-P engine=spark]`) are left out.
OPTIONAL = re.compile(r"[ \t]+\[-[^\]]*\]")
EXIT_COMMENT = re.compile(r"#[^\n]*\bexit (\d+)")
# Statuses the text gives for commands whose answer depends on the data (README: "Exit status
# 0: nothing found; 10: drift"); make turns any failure into 2, `mlflow run` into 1.
DATA_DEPENDENT = {
    "python -m pipeline monitor": {0, 10},
    "python -m pipeline retrain": {0, 10},
    "make monitor": {0, 2},
    "make retrain": {0, 2},
    "-e monitor": {0, 1},
    "-e retrain": {0, 1},
    # live-gate: 0 promoted, 10 rejected, 20 not enough evidence yet (README).
    "python -m pipeline live-gate": {0, 10, 20},
    "make live-gate": {0, 2},
    "-e live_gate": {0, 1},
}


@dataclass(frozen=True)
class DocumentedCommand:
    document: str
    line: int
    text: str
    block: int
    skip: str | None
    """Why it is not run, or None."""

    @property
    def runnable(self) -> str:
        """The command as run: optional bracketed parts left out."""
        return OPTIONAL.sub("", self.text)

    @property
    def expected_status(self) -> set[int]:
        stated = EXIT_COMMENT.search(self.text)
        if stated:
            return {int(stated.group(1))}
        for prefix, statuses in DATA_DEPENDENT.items():
            if prefix in self.text:
                return statuses
        return {0}


def documented_commands() -> list[DocumentedCommand]:
    """Every command of every fenced shell block of README.md and docs/*.md, in reading order.

    A command is a line, with the lines its trailing backslash or an open quote carries on;
    comment lines and blank lines are not commands.
    """
    commands = []
    for number, document in enumerate(DOCUMENTS):
        text = document.read_text()
        for block_number, match in enumerate(SHELL_BLOCK.finditer(text)):
            first_line = text[: match.start()].count("\n") + 2
            block = _commands(textwrap.dedent(match.group(1)))
            block_skip = next(
                (why for rule, why in BLOCK_SKIPS.items() for _, c in block if rule in c), None
            )
            for offset, command in block:
                runnable = OPTIONAL.sub("", command)
                skip = block_skip or next(
                    (why for rule, why in COMMAND_SKIPS.items() if rule in runnable), None
                )
                commands.append(
                    DocumentedCommand(
                        document=str(document.relative_to(REPO_ROOT)),
                        line=first_line + offset,
                        text=command,
                        block=number * 1000 + block_number,
                        skip=skip,
                    )
                )
    return commands


def _commands(block: str) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for offset, line in enumerate(block.splitlines()):
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not pending:
            start = offset
        pending.append(line)
        text = "\n".join(pending)
        if line.endswith("\\") or not _complete(text):
            continue
        found.append((start, text))
        pending = []
    assert not pending, f"unfinished command in a shell block: {pending}"
    return found


def _complete(text: str) -> bool:
    try:
        shlex.split(text, comments=True)
    except ValueError:  # an open quote: the command goes on on the next line
        return False
    return True


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


def test_every_documented_command_is_run_or_skipped_by_a_named_rule() -> None:
    commands = documented_commands()
    run = [c for c in commands if c.skip is None]
    skipped = [c for c in commands if c.skip is not None]
    # Each kind the text shows is among those run: the pipeline CLI, `mlflow run`, make, curl.
    for kind in ("python -m pipeline ", "mlflow run ", "make ", "curl "):
        assert any(c.text.startswith(kind) for c in run), kind
    # No rule is kept for a command the text no longer shows.
    reasons = {c.skip for c in skipped}
    unused = [r for r, why in {**BLOCK_SKIPS, **COMMAND_SKIPS}.items() if why not in reasons]
    assert unused == []


def test_a_command_is_split_at_lines_not_inside_quotes_or_continuations() -> None:
    block = (
        "B=x\n# a comment\ncurl -s $B -d '{\"a\": [1,\n  2]}'\n"
        "python -m pipeline doctor --name iris [--repair]   # exit 10: half done\n"
        "make pipeline \\\n  CONFIG=c.yaml\n"
    )
    assert _commands(block) == [
        (0, "B=x"),
        (2, "curl -s $B -d '{\"a\": [1,\n  2]}'"),
        (4, "python -m pipeline doctor --name iris [--repair]   # exit 10: half done"),
        (5, "make pipeline \\\n  CONFIG=c.yaml"),
    ]
    command = DocumentedCommand("d", 1, _commands(block)[2][1], 0, None)
    assert command.runnable == "python -m pipeline doctor --name iris   # exit 10: half done"
    assert command.expected_status == {10}


def test_the_readme_says_once_how_to_put_the_projects_tools_on_path() -> None:
    activations = [c for c in documented_commands() if "source .venv/bin/activate" in c.text]
    assert [c.document for c in activations] == ["README.md"]
    # Every other document relies on it rather than repeating it or calling bare .venv paths.
    runnable = [c for c in documented_commands() if c.skip is None]
    assert [c.text for c in runnable if c.text.startswith(".venv/bin/")] == []


def test_the_readmes_body_size_for_10000_rows_is_what_such_a_body_weighs() -> None:
    stated = re.search(
        r"a 10,000-row iris `/predict` body is about ([\d.]+) MB, of ten full-precision "
        r"float columns about ([\d.]+) MB",
        (REPO_ROOT / "README.md").read_text(),
    )
    assert stated is not None
    rng = np.random.default_rng(0)
    names = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
    iris = rng.uniform(0.1, 7.9, size=(10_000, 4)).round(1)  # iris measurements: one decimal
    floats = rng.normal(size=(10_000, 10))
    iris_rows = [dict(zip(names, row, strict=True)) for row in iris.tolist()]
    float_rows = [{f"f{i}": v for i, v in enumerate(row)} for row in floats.tolist()]
    sizes = [len(json.dumps({"records": rows})) for rows in (iris_rows, float_rows)]
    for size, figure in zip(sizes, stated.groups(), strict=True):
        assert abs(size / 1e6 - float(figure)) <= 0.15 * float(figure), (size, figure)
