"""Where runs and models are stored, and the lineage facts every run records."""

from __future__ import annotations

import getpass
import logging
import os
import subprocess
from pathlib import Path

import mlflow

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def configure_tracking() -> str:
    """Point MLflow at `MLFLOW_TRACKING_URI`, or at the embedded SQLite store. Entry points only."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(os.environ.get("MLFLOW_REGISTRY_URI") or uri)
    logger.debug("Tracking URI: %s", uri)
    return uri


def git_state(path: Path | None = None) -> tuple[str, str]:
    """(commit, dirty) of the working tree, or ("unknown", "unknown") outside a git checkout."""
    cwd = path or Path.cwd()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown", "unknown"
    return commit, str(bool(status)).lower()


def current_actor() -> str:
    """Who is acting, for the promotion history: CI's actor when set, else the OS user."""
    for variable in ("MLOPS_ACTOR", "GITHUB_ACTOR", "USER"):
        if os.environ.get(variable):
            return os.environ[variable]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
