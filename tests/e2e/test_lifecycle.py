"""End to end as a user runs it: the real `mlflow run` CLI, a real server process, real HTTP."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from serving.model.ref import ModelRef
from serving.model.store import load_model
from tests.factories import IRIS_SETOSA

REPO_ROOT = Path(__file__).resolve().parents[2]
E2E_CONFIGS = Path(__file__).resolve().parent / "configs"

pytestmark = pytest.mark.e2e


def _copy_project(destination: Path) -> Path:
    """What a fresh clone holds, without the checkout's store, artifacts or venv."""
    for name in ("pipeline", "serving", "configs"):
        shutil.copytree(
            REPO_ROOT / name, destination / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in ("MLproject", "conda.yaml", "pyproject.toml"):
        shutil.copy(REPO_ROOT / name, destination / name)
    for path in E2E_CONFIGS.iterdir():
        shutil.copy(path, destination / "configs" / path.name)
    return destination


def _env(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SERVING_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def _mlflow_run(project: Path, *params: str) -> subprocess.CompletedProcess[str]:
    args = [str(Path(sys.executable).parent / "mlflow"), "run", ".", "--env-manager", "local"]
    for param in params:
        args += ["-P", param]
    return subprocess.run(
        args, cwd=project, env=_env(project), capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy_project(tmp_path_factory.mktemp("clone"))


@pytest.fixture(scope="module")
def trained(project: Path) -> Path:
    result = _mlflow_run(project)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gate: promoted: first model" in result.stdout
    return project


@pytest.fixture(scope="module")
def server(trained: Path, serve: Callable[..., AbstractContextManager[str]]) -> Iterator[str]:
    with serve(trained, _env(trained)) as base:
        yield base


def _production_version(project: Path) -> str:
    client = MlflowClient(tracking_uri=_env(project)["MLFLOW_TRACKING_URI"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        versions = client.get_latest_versions("iris", stages=["Production"])
    return str(versions[0].version)


def test_the_served_production_model_answers_over_http(server: str) -> None:
    response = httpx.post(f"{server}/predict", json=IRIS_SETOSA, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "iris"
    assert body["model_version"] == "1"
    assert response.headers["X-Model-Version"] == "1"
    assert body["prediction"]["label"] == "setosa"
    assert set(body["prediction"]["probabilities"]) == {"setosa", "versicolor", "virginica"}


def test_a_bad_request_gets_a_422_naming_the_field(server: str) -> None:
    response = httpx.post(
        f"{server}/predict", json={**IRIS_SETOSA, "petal_width_cm": "wide"}, timeout=10
    )
    assert response.status_code == 422
    assert "petal_width_cm" in response.text
    assert "Traceback" not in response.text


def test_a_worse_candidate_is_registered_not_promoted_and_the_server_keeps_answering(
    trained: Path, server: str
) -> None:
    result = _mlflow_run(trained, "config=configs/iris_worse.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "registered iris version 2" in result.stdout
    assert "gate: rejected: test_f1_macro" in result.stdout
    client = MlflowClient(tracking_uri=_env(trained)["MLFLOW_TRACKING_URI"])
    tags = client.get_model_version("iris", "2").tags
    assert tags["gate.decision"] == "rejected"
    assert "< champion v1" in tags["gate.reason"]
    assert _production_version(trained) == "1"
    response = httpx.post(f"{server}/predict", json=IRIS_SETOSA, timeout=10)
    assert response.status_code == 200
    assert response.json()["model_version"] == "1"


def test_bad_data_fails_the_run_and_leaves_the_registry_unchanged(trained: Path) -> None:
    client = MlflowClient(tracking_uri=_env(trained)["MLFLOW_TRACKING_URI"])
    before = sorted(str(v.version) for v in client.search_model_versions("name='iris'"))
    result = _mlflow_run(trained, "config=configs/iris_bad_data.yaml")
    assert result.returncode != 0
    assert "target column 'species' has 1 missing values in 3 rows" in result.stderr
    assert "Traceback" not in result.stderr
    after = sorted(str(v.version) for v in client.search_model_versions("name='iris'"))
    assert after == before
    assert _production_version(trained) == "1"


def test_a_non_integer_parameter_fails_the_run_naming_it(trained: Path) -> None:
    result = _mlflow_run(trained, "seed=abc")
    assert result.returncode != 0
    assert "argument --seed: expected an integer, got 'abc'" in result.stderr


# What the server's load does with each shipped model (serving/model/fastpath.py, forest.py):
# the all-numeric ones get their preprocessing in NumPy, the forest its trees walked at once.
FAST_PATHS = {
    "breast_cancer": (True, True),
    "diabetes": (True, False),
    "customers": (False, False),  # text inputs: scikit-learn does the preprocessing
}


@pytest.mark.parametrize("config", list(FAST_PATHS))
def test_every_other_shipped_config_runs_through_mlflow_run(tmp_path: Path, config: str) -> None:
    project = _copy_project(tmp_path)
    result = _mlflow_run(project, f"config=configs/{config}.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(tracking_uri=_env(project)["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(config)
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert any(name.startswith("test_") for name in run.data.metrics)
    assert any(name.startswith("model.") for name in run.data.params)
    # Each shipped config's first model clears its own threshold and becomes Production.
    assert client.get_model_version(config, "1").tags["gate.decision"] == "promoted"
    served = load_model(
        ModelRef.from_uri(f"models:/{config}/Production"), _env(project)["MLFLOW_TRACKING_URI"]
    )
    assert (served.replay is not None, served.walk is not None) == FAST_PATHS[config]


def test_mlflow_run_in_the_configs_experiment_makes_its_run_the_candidate(tmp_path: Path) -> None:
    project = _copy_project(tmp_path)
    args = [str(Path(sys.executable).parent / "mlflow"), "run", ".", "--env-manager", "local"]
    result = subprocess.run(
        [*args, "--experiment-name", "iris", "-P", "config=configs/iris.yaml"],
        cwd=project,
        env=_env(project),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(tracking_uri=_env(project)["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("iris")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["mlflow.project.entryPoint"] == "main"
    assert run.info.run_name.startswith("iris-LogisticRegression-")
    assert "test_f1_macro" in run.data.metrics
    assert client.get_model_version("iris", "1").run_id == run.info.run_id
