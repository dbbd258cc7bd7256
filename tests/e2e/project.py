"""A copy of the project as a fresh clone holds it, and the user's commands run in it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
E2E_CONFIGS = Path(__file__).resolve().parent / "configs"
VENV_BIN = Path(sys.executable).parent
# What a clone holds besides the code: what the documented commands read.
CLONE_FILES = ("MLproject", "conda.yaml", "pyproject.toml", "Makefile", "uv.lock")


def copy_project(destination: Path) -> Path:
    """What a fresh clone holds, without the checkout's store, artifacts or venv."""
    for name in ("pipeline", "serving", "configs", "tools", "deploy"):
        shutil.copytree(
            REPO_ROOT / name, destination / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in CLONE_FILES:
        shutil.copy(REPO_ROOT / name, destination / name)
    for path in E2E_CONFIGS.iterdir():
        shutil.copy(path, destination / "configs" / path.name)
    return destination


def project_env(project: Path) -> dict[str, str]:
    """A shell with the project's environment activated (README: `source .venv/bin/activate`)
    and the store in the copy; none of the caller's MLflow or serving settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SERVING_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    return env


def mlflow_run(
    project: Path, *params: str, entry_point: str = "main", experiment: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`mlflow run . --env-manager local -e <entry_point> -P ...` in the copy."""
    args = [str(VENV_BIN / "mlflow"), "run", ".", "--env-manager", "local", "-e", entry_point]
    if experiment is not None:
        args += ["--experiment-name", experiment]
    for param in params:
        args += ["-P", param]
    return subprocess.run(
        args, cwd=project, env=project_env(project), capture_output=True, text=True, timeout=300
    )


def pipeline(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline ...` in the copy."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=project,
        env=project_env(project),
        capture_output=True,
        text=True,
        timeout=300,
    )
