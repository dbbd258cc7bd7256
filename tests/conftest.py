"""Fixtures shared by every layer: a throwaway MLflow store and small config factories."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from mlflow.tracking import fluent
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils

from tests import factories

REPO_ROOT = Path(__file__).resolve().parents[1]

# No network here: keep MLflow's usage telemetry from trying, in this process and children.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow draws download bars on stderr for every artifact read; they only clutter test logs.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# One OpenMP thread per process, set before anything loads scikit-learn's OpenMP runtime (the
# imports above do not; test modules and server processes come later). The suite runs in
# parallel workers, and OpenMP threads of HistGradientBoosting spin-wait when the cores are
# oversubscribed: a 0.1 s fit took 13 s with two workers on two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def migrated_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite store with MLflow's schema, created once per session.

    Creating the schema runs MLflow's ~60 alembic migrations, which cost seconds per store;
    copying this file gives every test the same fresh, empty store without them.
    """
    path = tmp_path_factory.mktemp("store-template") / "mlflow.db"
    script = (
        "import sys; from mlflow.tracking import MlflowClient; "
        "client = MlflowClient(sys.argv[1]); client.search_experiments(); "
        "client.search_registered_models()"
    )
    # A child process: initialising a store in this one would leave its URI and engines cached.
    subprocess.run(
        [sys.executable, "-c", script, f"sqlite:///{path}"],
        check=True,
        capture_output=True,
        cwd=path.parent,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        timeout=300,
    )
    return path


@pytest.fixture
def mlflow_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_store_template: Path
) -> Iterator[str]:
    """A fresh SQLite tracking store in tmp_path; artifacts land in tmp_path/mlruns.

    The working directory moves to tmp_path so MLflow's default `./mlruns` artifact root is
    the temporary one, never the checkout's. (Only the `Default` experiment, which the pipeline
    never uses, keeps the template's artifact location.)
    """
    shutil.copyfile(migrated_store_template, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    # mlflow.set_*_uri also export MLFLOW_*_URI to the environment, which child processes of
    # later tests would inherit: monkeypatch restores both variables after the test.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    # mlflow.set_experiment exports the id too; it names an experiment of another store.
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # An experiment an earlier test set active would not exist in this store.
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    yield uri
    if mlflow.active_run():
        mlflow.end_run()
    tracking_utils._tracking_uri = None
    registry_utils._registry_uri = None


@pytest.fixture
def iris_config() -> Callable[..., dict[str, Any]]:
    """A small, fast iris config as a dict; keyword arguments replace whole sections."""
    return factories.iris_config


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a config dict (and optionally a CSV beside it) and return the YAML path."""
    counter = iter(range(1000))

    def write(config: dict[str, Any], csv_text: str | None = None, name: str | None = None) -> Path:
        stem = name or f"config{next(counter)}"
        if csv_text is not None:
            (tmp_path / f"{stem}.csv").write_text(csv_text)
            config = {**config, "data": {**config["data"], "path": f"{stem}.csv"}}
            config["data"].pop("dataset", None)
        path = tmp_path / f"{stem}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    return write
