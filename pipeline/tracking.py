"""Where runs and models are stored, and the lineage facts every run records."""

from __future__ import annotations

import getpass
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def configure_tracking() -> str:
    """Point MLflow at `MLFLOW_TRACKING_URI`, or at the embedded SQLite store. Entry points only."""
    # The registry follows the tracking URI unless MLFLOW_REGISTRY_URI says otherwise.
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    mlflow.set_tracking_uri(uri)
    logger.debug("Tracking URI: %s", uri)
    return uri


def git_state(path: Path | None = None) -> tuple[str, str]:
    """(commit, dirty) of the checkout holding the pipeline's code, or "unknown" outside one."""
    # The code that trains, not the directory a command was started from, is what lineage means.
    cwd = path or Path(__file__).resolve().parent
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


LIBRARIES = ("mlflow", "scikit-learn", "skops", "numpy", "scipy", "pandas", "pyarrow")


def library_versions() -> dict[str, str]:
    """The versions that decide what a trained model computes, for lineage and caching."""
    versions = {"python": platform.python_version()}
    versions.update({name: importlib.metadata.version(name) for name in LIBRARIES})
    return versions


def code_hash() -> str:
    """Hash of the pipeline's own source: changes whenever the code that trains changes.

    Unlike the git commit it also covers uncommitted edits, so a dirty tree never reuses a
    cached result computed by other code.
    """
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def current_actor() -> str:
    """Who is acting, for the promotion history: CI's actor when set, else the OS user."""
    for variable in ("MLOPS_ACTOR", "GITHUB_ACTOR", "USER"):
        if os.environ.get(variable):
            return os.environ[variable]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


RUNS_TABLE_VIEW = "pipeline"
_SHARED_VIEW_TAG = "mlflow.sharedViewState."
_DEFAULT_COLUMNS = ("attributes.`Dataset`", "attributes.`Models`")


def publish_runs_table_view(
    experiment_id: str, params: Iterable[str], metrics: Iterable[str]
) -> None:
    """Save a runs-table view that shows the headline params and metrics as columns.

    The MLflow UI hides every param and metric column until someone picks them; a shared view
    (an experiment tag the UI reads for `?viewStateShareKey=`) makes the link printed by
    `make ui` open with candidates compared side by side. Columns accumulate across runs, so
    candidates with different estimators all keep their parameters visible.
    """
    client = MlflowClient()
    tag = f"{_SHARED_VIEW_TAG}{RUNS_TABLE_VIEW}"
    existing = client.get_experiment(experiment_id).tags.get(tag)
    try:
        columns = list(json.loads(existing)["selectedColumns"]) if existing else []
    except (ValueError, KeyError, TypeError):
        columns = []
    wanted = [
        *_DEFAULT_COLUMNS,
        *(f"params.`{name}`" for name in params),
        *(f"metrics.`{name}`" for name in metrics),
    ]
    columns += [column for column in wanted if column not in columns]
    client.set_experiment_tag(experiment_id, tag, json.dumps({"selectedColumns": columns}))


def runs_table_url(base_url: str, experiment_id: str) -> str:
    # MLflow 3 opens in its GenAI view; workflowType selects the classic runs table.
    return (
        f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={RUNS_TABLE_VIEW}"
    )
