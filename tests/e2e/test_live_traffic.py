"""Champion and challenger judged on live traffic, with real processes end to end.

A weak champion (a one-split tree) serves iris; a logistic regression trained with
``gate.live: true`` passes the offline gate into Staging as the challenger; the server shadows
it on every request; labels arrive through ``/feedback``; ``live-gate`` compares both on the
same labelled requests and promotes the challenger; the running server swaps to it without a
restart and the history shows Staging, then Production. The other way round, a challenger that
is worse on the live labels is archived with a reason that quotes the paired interval.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_iris

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
STUMP = {
    "class_path": "sklearn.tree.DecisionTreeClassifier",
    "params": {"max_depth": 1, "random_state": 0},
}
LOGISTIC = {"class_path": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 1000}}


def _config(name: str, estimator: dict[str, Any], *, live: bool) -> dict[str, Any]:
    return {
        "experiment": name,
        "registered_model": name,
        "task": "classification",
        "data": {"dataset": "iris", "target": "species"},
        "estimator": estimator,
        "split": {"test_size": 0.3, "seed": 42, "stratify": True, "cv_folds": 3},
        "gate": {
            "metric": "test_f1_macro",
            "threshold": 0.5,
            "live": live,
            "live_min_labels": 100,
            "bootstrap": {"resamples": 500, "confidence": 0.95, "seed": 0},
        },
    }


def _env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SERVING_"))}
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}",
        MLFLOW_DISABLE_TELEMETRY="true",
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        PYTHONPATH=str(REPO_ROOT),
    )
    return env


def _pipeline(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=workdir,
        env=_env(workdir),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _train(workdir: Path, config: str) -> None:
    trained = _pipeline(workdir, "main", "--config", config)
    assert trained.returncode == 0, trained.stdout + trained.stderr[-3000:]


def _write_config(workdir: Path, file: str, config: dict[str, Any]) -> str:
    (workdir / file).write_text(yaml.safe_dump(config, sort_keys=False))
    return file


@contextmanager
def _shadow_server(
    serve: Callable[..., AbstractContextManager[str]], workdir: Path, name: str
) -> Iterator[str]:
    env = {
        **_env(workdir),
        "SERVING_MODEL_NAME": name,
        "SERVING_POLL_SECONDS": "1",
        "SERVING_PREDICTION_LOG_ROTATE_SECONDS": "0.5",
        "SERVING_CHALLENGER_MODE": "shadow",
    }
    with serve(workdir, env) as base:
        yield base


def _iris_traffic() -> list[tuple[dict[str, float], str]]:
    iris = load_iris(as_frame=True)
    columns = {
        "sepal length (cm)": "sepal_length_cm",
        "sepal width (cm)": "sepal_width_cm",
        "petal length (cm)": "petal_length_cm",
        "petal width (cm)": "petal_width_cm",
    }
    frame = iris.frame.rename(columns=columns)
    names = list(iris.target_names)
    return [
        ({column: float(row[column]) for column in columns.values()}, str(names[int(target)]))
        for (_, row), target in zip(frame.iterrows(), iris.target, strict=True)
    ]


def _client(workdir: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")


def _stage(workdir: Path, name: str, version: str) -> str:
    return str(_client(workdir).get_model_version(name, version).current_stage)


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def _model(server: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{server}/model", timeout=5).json()
    return answer


def _send_labelled_traffic(server: str, workdir: Path, name: str) -> set[str]:
    """Every iris row as its own request, 8 at a time, then its label through /feedback.

    Returns the versions that answered (``X-Model-Version``); waits until the log holds
    both versions' answers and the labels."""
    traffic = _iris_traffic()

    def ask(record: dict[str, float]) -> httpx.Response:
        return httpx.post(f"{server}/predict", json=record, timeout=20)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, [record for record, _ in traffic]))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers][:3]
    labels = [
        {"request_id": answer.headers["X-Request-ID"], "row": 0, "label": label}
        for answer, (_, label) in zip(answers, traffic, strict=True)
    ]
    sent = httpx.post(f"{server}/feedback", json={"labels": labels}, timeout=20)
    assert sent.status_code < 300, sent.text

    log_dir = workdir / "prediction_log" / name
    _wait_for(
        lambda: bool(
            list(log_dir.glob("predictions/*.parquet")) and list(log_dir.glob("feedback/*"))
        ),
        "the prediction log was never written",
    )
    time.sleep(1.5)  # the last shadow answers' part rotates 0.5 s after them
    return {answer.headers["X-Model-Version"] for answer in answers}


def test_a_better_challenger_shadowed_on_live_traffic_is_promoted_and_served_without_restart(
    tmp_path: Path, serve: Callable[..., AbstractContextManager[str]]
) -> None:
    name = "live_better"
    champion = _write_config(tmp_path, "champion.yaml", _config(name, STUMP, live=False))
    challenger = _write_config(tmp_path, "challenger.yaml", _config(name, LOGISTIC, live=True))
    _train(tmp_path, champion)
    _train(tmp_path, challenger)
    assert _stage(tmp_path, name, "1") == "Production"
    assert _stage(tmp_path, name, "2") == "Staging"
    assert str(_client(tmp_path).get_model_version_by_alias(name, "challenger").version) == "2"

    with _shadow_server(serve, tmp_path, name) as server:
        _wait_for(
            lambda: str((_model(server).get("challenger") or {}).get("version")) == "2",
            f"the server never loaded the challenger: {_model(server)}",
        )
        answered_by = _send_labelled_traffic(server, tmp_path, name)
        assert answered_by == {"1"}, "in shadow mode only the champion answers clients"

        gate = _pipeline(tmp_path, "live-gate", "--config", challenger)
        assert gate.returncode == 0, gate.stdout + gate.stderr[-3000:]
        assert "CI [" in gate.stdout
        assert _stage(tmp_path, name, "2") == "Production"
        assert _stage(tmp_path, name, "1") == "Archived"
        aliases = _client(tmp_path).get_registered_model(name).aliases
        assert str(aliases.get("champion")) == "2" and "challenger" not in aliases

        _wait_for(
            lambda: str(_model(server)["version"]) == "2",
            "the server never swapped to the promoted challenger",
        )
        answer = httpx.post(f"{server}/predict", json=_iris_traffic()[0][0], timeout=10)
        assert answer.headers["X-Model-Version"] == "2"

    history = _pipeline(tmp_path, "history", "--name", name)
    assert history.returncode == 0, history.stderr[-3000:]
    lines = [line for line in history.stdout.splitlines() if " 2 " in f" {line} "]
    assert any("Staging" in line for line in lines), history.stdout
    assert any("Production" in line and "live-gate" in line for line in lines), history.stdout


def test_a_challenger_worse_on_live_labels_is_archived_with_the_paired_interval_as_reason(
    tmp_path: Path, serve: Callable[..., AbstractContextManager[str]]
) -> None:
    name = "live_worse"
    champion = _write_config(tmp_path, "champion.yaml", _config(name, LOGISTIC, live=False))
    worse = _write_config(tmp_path, "worse.yaml", _config(name, STUMP, live=True))
    _train(tmp_path, champion)
    _train(tmp_path, worse)  # the offline gate rejects it: it stays registered, in no stage
    assert _stage(tmp_path, name, "2") == "None"
    staged = _pipeline(tmp_path, "promote", "--name", name, "--version", "2", "--stage", "Staging")
    assert staged.returncode == 0, staged.stdout + staged.stderr[-3000:]

    with _shadow_server(serve, tmp_path, name) as server:
        _wait_for(
            lambda: str((_model(server).get("challenger") or {}).get("version")) == "2",
            f"the server never loaded the challenger: {_model(server)}",
        )
        _send_labelled_traffic(server, tmp_path, name)

    gate = _pipeline(tmp_path, "live-gate", "--config", worse)
    assert gate.returncode == 10, gate.stdout + gate.stderr[-3000:]
    assert "worse than the champion on live traffic" in gate.stdout
    assert "CI [" in gate.stdout and "paired bootstrap" in gate.stdout
    assert _stage(tmp_path, name, "2") == "Archived"
    assert _stage(tmp_path, name, "1") == "Production"
    reason = _client(tmp_path).get_model_version(name, "2").tags.get("gate.reason", "")
    assert "CI [" in reason
