"""The loop closed with real processes: serve, log, label, detect drift, retrain, hot reload.

Production traffic is iris shifted by +3 cm on every measurement (a recalibrated sensor, say):
the champion forest calls nearly all of it virginica, labels arriving later show it, the
monitor flags drift and degraded performance, and retraining on the configured data plus the
labelled traffic yields a challenger the gate promotes. The running server answers with it
without a restart.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
import yaml
from sklearn.datasets import load_iris

pytestmark = pytest.mark.e2e

SHIFT_CM = 3.0
CONFIG = {
    "experiment": "loop",
    "registered_model": "loop",
    "task": "classification",
    "data": {"dataset": "iris", "target": "species"},
    "estimator": {
        "class_path": "sklearn.ensemble.RandomForestClassifier",
        "params": {"n_estimators": 30},
    },
    "split": {"test_size": 0.3, "seed": 42, "stratify": True, "cv_folds": 3},
    "gate": {"metric": "test_f1_macro", "threshold": 0.8},
    "monitoring": {"performance": {"window": "1D"}},
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("loop")
    (directory / "loop.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    return directory


def _env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SERVING_"))}
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}",
        MLFLOW_DISABLE_TELEMETRY="true",
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )
    return env


def _pipeline(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args, "--config", str(workdir / "loop.yaml")],
        cwd=workdir,
        env=_env(workdir),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def server(workdir: Path, serve: Callable[..., AbstractContextManager[str]]) -> Iterator[str]:
    first = _pipeline(workdir, "main")
    assert first.returncode == 0, first.stderr[-3000:]
    env = {
        **_env(workdir),
        "SERVING_MODEL_NAME": "loop",
        "SERVING_POLL_SECONDS": "1",
        "SERVING_PREDICTION_LOG_ROTATE_SECONDS": "0.5",
    }
    with serve(workdir, env) as base:
        yield base


def _shifted_traffic() -> tuple[list[dict[str, float]], list[str]]:
    iris = load_iris(as_frame=True)
    frame = iris.frame.rename(
        columns={
            "sepal length (cm)": "sepal_length_cm",
            "sepal width (cm)": "sepal_width_cm",
            "petal length (cm)": "petal_length_cm",
            "petal width (cm)": "petal_width_cm",
        }
    )
    names = list(iris.target_names)
    records, labels = [], []
    for _, row in frame.iterrows():
        records.append({k: float(row[k]) + SHIFT_CM for k in frame.columns if k != "target"})
        labels.append(str(names[int(row["target"])]))
    return records, labels


def _served_version(server: str) -> str:
    return str(httpx.get(f"{server}/model", timeout=5).json()["version"])


def test_drift_found_in_served_traffic_retrains_and_the_server_swaps_to_the_new_version(
    server: str, workdir: Path
) -> None:
    assert _served_version(server) == "1"
    records, labels = _shifted_traffic()
    feedback = []
    for start in range(0, len(records), 25):
        response = httpx.post(
            f"{server}/predict", json={"records": records[start : start + 25]}, timeout=10
        )
        assert response.status_code == 200, response.text
        request_id = response.headers["X-Request-ID"]
        feedback += [
            {"request_id": request_id, "row": row, "label": label}
            for row, label in enumerate(labels[start : start + 25])
        ]
    answered = httpx.post(f"{server}/feedback", json={"labels": feedback}, timeout=10)
    assert answered.status_code < 300, answered.text

    # The writer rotates parts every 0.5 s; wait until both kinds are on disk.
    log_dir = workdir / "prediction_log" / "loop"
    deadline = time.monotonic() + 30
    while not (list(log_dir.glob("predictions/*.parquet")) and list(log_dir.glob("feedback/*"))):
        assert time.monotonic() < deadline, "the prediction log was never written"
        time.sleep(0.5)
    time.sleep(1.5)

    monitored = _pipeline(workdir, "monitor")
    assert monitored.returncode == 10, monitored.stdout + monitored.stderr[-3000:]
    assert "-> data-set drift" in monitored.stdout
    assert "DEGRADED" in monitored.stdout

    retrained = _pipeline(workdir, "retrain")
    assert retrained.returncode == 0, retrained.stdout + retrained.stderr[-3000:]
    assert "150 labelled production rows" in retrained.stdout
    assert "registered loop version 2" in retrained.stdout
    assert "gate: promoted: " in retrained.stdout

    deadline = time.monotonic() + 60
    while _served_version(server) != "2":
        assert time.monotonic() < deadline, "the server never picked up version 2"
        time.sleep(0.5)
    answer = httpx.post(f"{server}/predict", json=records[0], timeout=10).json()
    assert answer["model_version"] == "2"
    assert answer["prediction"]["label"] == labels[0]
