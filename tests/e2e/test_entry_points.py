"""Every MLproject entry point that logs runs works with plain `mlflow run . --env-manager local`,
with and without `--experiment-name`, and leaves no failed, running or empty run behind.

Without `--experiment-name`, `mlflow run` makes its run in `Default`: the command logs in the
config's experiments and leaves a note on that run saying where. With the experiment the
command logs in, the run `mlflow run` made is the command's run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_iris

from tests.e2e.project import copy_project, mlflow_run, pipeline, project_env

pytestmark = pytest.mark.e2e

COLUMNS = {
    "sepal length (cm)": "sepal_length_cm",
    "sepal width (cm)": "sepal_width_cm",
    "petal length (cm)": "petal_length_cm",
    "petal width (cm)": "petal_width_cm",
}


def _served_with_labels(project: Path, base: str) -> None:
    """Every iris row through the real server, and its true label through /feedback."""
    iris = load_iris(as_frame=True)
    frame = iris.frame.rename(columns=COLUMNS)
    records = frame[list(COLUMNS.values())].to_dict(orient="records")
    labels = [str(iris.target_names[t]) for t in frame["target"]]
    response = httpx.post(f"{base}/predict", json={"records": records}, timeout=30)
    assert response.status_code == 200, response.text
    request_id = response.headers["X-Request-ID"]
    feedback = [
        {"request_id": request_id, "row": row, "label": label} for row, label in enumerate(labels)
    ]
    answered = httpx.post(f"{base}/feedback", json={"labels": feedback}, timeout=30)
    assert answered.status_code == 202, answered.text
    log_dir = project / "prediction_log" / "iris"
    deadline = time.monotonic() + 30
    while not (list(log_dir.glob("predictions/part-*")) and list(log_dir.glob("feedback/part-*"))):
        assert time.monotonic() < deadline, "the prediction log was never written"
        time.sleep(0.25)


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory, serve: Callable[..., AbstractContextManager[str]]
) -> Path:
    """iris v1 trained and served; its predictions and their labels in the log."""
    project = copy_project(tmp_path_factory.mktemp("entry-points"))
    trained = pipeline(project, "main", "--config", "configs/iris.yaml")
    assert trained.returncode == 0, trained.stderr[-3000:]
    env = {**project_env(project), "SERVING_PREDICTION_LOG_ROTATE_SECONDS": "0.5"}
    with serve(project, env) as base:
        _served_with_labels(project, base)
    return project


def _client(project: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=project_env(project)["MLFLOW_TRACKING_URI"])


def _launcher(project: Path, stdout_and_err: str) -> Run:
    """The run `mlflow run` made, named in its own log line."""
    marker = "in run with ID '"
    start = stdout_and_err.index(marker) + len(marker)
    return _client(project).get_run(stdout_and_err[start : stdout_and_err.index("'", start)])


def _note(run: Run) -> str:
    return run.data.tags.get("mlflow.note.content", "")


@pytest.mark.parametrize(
    ("entry_point", "params", "logs_in"),
    [
        ("monitor", ["config=configs/iris.yaml"], "iris-monitoring"),
        ("reproduce", ["name=iris", "version=1"], "iris"),
        ("retrain", ["config=configs/iris.yaml", "force=true"], "iris"),
    ],
    ids=["monitor", "reproduce", "retrain"],
)
def test_an_entry_point_run_without_an_experiment_logs_in_its_own_and_notes_it_in_default(
    project: Path, entry_point: str, params: list[str], logs_in: str
) -> None:
    result = mlflow_run(project, *params, entry_point=entry_point)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    launcher = _launcher(project, result.stderr)
    client = _client(project)
    assert client.get_experiment(launcher.info.experiment_id).name == "Default"
    assert launcher.info.status == "FINISHED"
    assert f"in experiment '{logs_in}'" in _note(launcher)
    (pointed,) = [part for part in _note(launcher).split() if part.startswith("(")]
    own = client.get_run(pointed.strip("()"))
    assert client.get_experiment(own.info.experiment_id).name == logs_in
    assert own.info.status == "FINISHED"


@pytest.mark.parametrize(
    ("entry_point", "params", "experiment", "metric_prefix"),
    [
        ("monitor", ["config=configs/iris.yaml"], "iris-monitoring", "drift."),
        ("reproduce", ["name=iris", "version=1"], "iris", "test_"),
    ],
    ids=["monitor", "reproduce"],
)
def test_an_entry_point_run_in_its_own_experiment_makes_the_launcher_run_its_run(
    project: Path, entry_point: str, params: list[str], experiment: str, metric_prefix: str
) -> None:
    result = mlflow_run(project, *params, entry_point=entry_point, experiment=experiment)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    launcher = _launcher(project, result.stderr)
    assert _client(project).get_experiment(launcher.info.experiment_id).name == experiment
    assert launcher.data.tags["mlflow.project.entryPoint"] == entry_point
    assert any(name.startswith(metric_prefix) for name in launcher.data.metrics)
    assert "This invocation's run is" not in _note(launcher)


def test_no_run_in_default_is_failed_running_or_without_a_note(project: Path) -> None:
    # What the runs above left behind (the module's tests share one store, in file order).
    client = _client(project)
    default = client.get_experiment_by_name("Default")
    assert default is not None
    runs = client.search_runs([default.experiment_id])
    assert runs, "the runs above should have left their launcher runs here"
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert [run.info.run_id for run in runs if not _note(run)] == []
