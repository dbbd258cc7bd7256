"""What is derived from uv.lock, and the check that pyproject.toml, uv.lock and conda.yaml agree.

    python tools/lockfile.py uv-version  # the uv release the lock pins: make and Docker install it
    python tools/lockfile.py conda       # rewrite conda.yaml from uv.lock
    python tools/lockfile.py check       # exit 1, saying what to regenerate, when they disagree

`make lock` resolves pyproject.toml into uv.lock and then runs `conda`. `uv-version` needs only the
standard library (it runs before any install); the others call the uv that `make venv` installs.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class LockError(Exception):
    """uv.lock cannot be turned into conda.yaml."""


CONDA_HEADER = """\
# Generated from uv.lock by `make lock` (tools/lockfile.py): edit pyproject.toml, not this file.
# The environment `mlflow run .` builds without --env-manager local: the runtime dependencies at
# exactly the locked releases (no dev, spark or team extras).
name: mlops-pipeline
channels:
  - conda-forge
dependencies:
  - python={python}
  - pip
  - pip:
"""


def locked_version(package: str, project: Path = ROOT) -> str:
    lock = tomllib.loads((project / "uv.lock").read_text())
    for entry in lock["package"]:
        if entry["name"] == package:
            return str(entry["version"])
    raise LockError(f"uv.lock pins no {package}")


def _uv(*args: str, project: Path) -> subprocess.CompletedProcess[str]:
    # Imported here: `uv-version` runs on a bare interpreter, before uv is installed.
    try:
        from uv import find_uv_bin
    except ImportError as error:
        raise LockError("uv is not installed in this environment: run `make venv`") from error

    # Offline and without a cache: both commands read only the files in `project`.
    command = [find_uv_bin(), *args, "--project", str(project), "--offline", "--no-cache"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def render_conda(project: Path = ROOT) -> str:
    """conda.yaml for the lock in `project`: the runtime closure pinned, markers kept."""
    lock = tomllib.loads((project / "uv.lock").read_text())
    # The oldest Python the project supports is the one it is tested on (make finds python3.11).
    python = re.fullmatch(r">=\s*(\d+\.\d+)(?:\.\d+)?", lock["requires-python"])
    if python is None:
        raise LockError(f"uv.lock requires-python {lock['requires-python']!r}: expected >=X.Y")
    export = _uv(
        "export",
        "--frozen",
        "--format=requirements-txt",
        "--no-hashes",
        "--no-header",
        "--no-annotate",
        "--no-emit-project",
        project=project,
    )
    if export.returncode != 0:
        raise LockError(f"uv.lock cannot be read: run `make lock`\n{export.stderr.strip()}")
    pins = [line for line in export.stdout.splitlines() if line and not line.startswith("#")]
    lines = [f'      - "{pin}"' for pin in [*pins, "-e ."]]
    return CONDA_HEADER.format(python=python.group(1)) + "\n".join(lines) + "\n"


def problems(project: Path = ROOT) -> list[str]:
    """Why pyproject.toml, uv.lock and conda.yaml of `project` disagree; empty when they agree."""
    found = []
    check = _uv("lock", "--check", "--python", sys.executable, project=project)
    if check.returncode != 0:
        found.append(
            "uv.lock does not match pyproject.toml: run `make lock`\n" + check.stderr.strip()
        )
    try:
        if (project / "conda.yaml").read_text() != render_conda(project):
            found.append("conda.yaml does not match uv.lock: run `make lock`")
    except LockError as error:
        found.append(str(error))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["uv-version", "conda", "check"])
    parser.add_argument("--project", type=Path, default=ROOT, help="default: this repository")
    args = parser.parse_args(argv)
    if args.command == "uv-version":
        print(locked_version("uv", args.project))
        return 0
    found = problems(args.project) if args.command == "check" else []
    if args.command == "conda":
        try:
            (args.project / "conda.yaml").write_text(render_conda(args.project))
        except LockError as error:
            found.append(str(error))
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
