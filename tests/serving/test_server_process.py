"""End to end: ``python -m serving`` as a real process, over real HTTP, against a temp store."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.serving.factories import TinyModel, TinyStore

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

STARTUP_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(process: subprocess.Popen[bytes], base_url: str) -> httpx.Response:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited during startup"
        try:
            response = httpx.get(f"{base_url}/health/ready", timeout=2.0)
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        if response.status_code == 200:
            return response
        time.sleep(0.2)
    raise AssertionError(f"{base_url} was not ready within {STARTUP_TIMEOUT}s")


def test_python_m_serving_answers_predictions_over_http(store: TinyStore, tmp_path: Path) -> None:
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "SERVING_TRACKING_URI": store.tracking_uri,
        "SERVING_PORT": str(port),
        "SERVING_MODEL_NAME": "iris",
        "SERVING_LOG_LEVEL": "INFO",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving"],
            cwd=tmp_path,  # nothing may land in the checkout
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            ready = _wait_ready(process, base_url)
            assert ready.json() == {
                "status": "ready",
                "model_name": "iris",
                "model_version": "1",
                "last_reload_error": None,
                "warnings": [],
            }

            row = store.models["iris"].features.iloc[100].to_dict()
            response = httpx.post(f"{base_url}/predict", json=row, timeout=10.0)
            assert response.status_code == 200, response.text
            assert response.headers["x-model-version"] == "1"
            body = response.json()
            assert (body["model_name"], body["model_version"]) == ("iris", "1")
            expected = store.models["iris"].estimator.predict(
                store.models["iris"].features.iloc[[100]]
            )[0]
            assert body["prediction"]["label"] == expected

            bad = httpx.post(f"{base_url}/predict", json={**row, "extra": 1}, timeout=10.0)
            assert bad.status_code == 422
            assert "Traceback" not in bad.text
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                exit_code = process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
                raise
    output = log_path.read_text()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status reports it.
    assert exit_code in (0, -signal.SIGTERM), output
    assert "Application shutdown complete." in output
    assert "Serving model 'iris' version 1" in output
    assert "objects alive after startup" in output  # frozen before the first request
    assert "collection thresholds (50000, 20, 100)" in output
    assert "Traceback" not in output
    assert not (tmp_path / "mlflow.db").exists()


def test_python_m_serving_refuses_invalid_settings_with_a_readable_message(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "SERVING_MODEL_URI": "runs:/abc/model", "SERVING_PORT": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "serving"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Invalid serving settings" in result.stderr
    assert "SERVING_MODEL_URI: Value error, model URI 'runs:/abc/model'" in result.stderr
    assert "Traceback" not in result.stderr


@contextmanager
def running_server(
    store: TinyStore, tmp_path: Path, **env_overrides: str
) -> Iterator[tuple[str, Path]]:
    """``python -m serving`` on a free loopback port; yields its base URL and log file."""
    port = _free_port()
    env = {
        **os.environ,
        "SERVING_TRACKING_URI": store.tracking_uri,
        "SERVING_PORT": str(port),
        **env_overrides,
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_ready(process, f"http://127.0.0.1:{port}")
            yield f"http://127.0.0.1:{port}", log_path
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


class Traffic:
    """Threads posting /predict without pause; records every answer's status and version."""

    def __init__(self, base_url: str, body: dict[str, float], threads: int = 2) -> None:
        self.base_url = base_url
        self.body = body
        self.answers: list[tuple[int, str | None]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10.0) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/predict", json=self.body)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                self.answers.append((response.status_code, response.headers.get("x-model-version")))

    def latest_version(self) -> str | None:
        return self.answers[-1][1] if self.answers else None

    def wait_for_version(self, version: str, timeout: float = 30.0) -> None:
        _wait(lambda: self.latest_version() == version, timeout, f"version {version} answering")


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _versions_in_order(answers: list[tuple[int, str | None]]) -> list[str | None]:
    versions: list[str | None] = []
    for _, version in answers:
        if not versions or versions[-1] != version:
            versions.append(version)
    return versions


def test_hot_reload_under_traffic_switches_versions_without_a_failed_request(
    store: TinyStore,
    tmp_path: Path,
    unique_name: str,
    make_broken_model: Callable[[], TinyModel],
) -> None:
    store.register(unique_name, store.models["iris"], production=True)
    row = store.models["iris"].features.iloc[100].to_dict()
    settings = {"SERVING_MODEL_NAME": unique_name, "SERVING_POLL_SECONDS": "0.2"}
    with running_server(store, tmp_path, **settings) as (base_url, log_path):
        # One client thread: its requests are sequential, so the versions it sees are ordered.
        with Traffic(base_url, row, threads=1) as traffic:
            traffic.wait_for_version("1")
            store.register(unique_name, store.models["iris_svc"], production=True)
            traffic.wait_for_version("2")
            store.promote(unique_name, "1")  # a rollback moves the stage back the same way
            traffic.wait_for_version("1")

            store.register(unique_name, make_broken_model(), production=True)
            _wait(
                lambda: (
                    httpx.get(f"{base_url}/health/ready").json()["last_reload_error"] is not None
                ),
                30.0,
                "the failed reload to show on /health/ready",
            )
            count = len(traffic.answers)
            _wait(lambda: len(traffic.answers) > count + 10, 30.0, "more traffic")
        ready = httpx.get(f"{base_url}/health/ready")
        metrics = httpx.get(f"{base_url}/metrics").text

    assert traffic.errors == []
    assert traffic.answers, "no traffic was sent"
    assert {status for status, _ in traffic.answers} == {200}
    assert _versions_in_order(traffic.answers) == ["1", "2", "1"]
    assert ready.status_code == 200
    assert ready.json()["model_version"] == "1"
    assert ready.json()["last_reload_error"]["version"] == "3"
    assert "serving_model_reload_failing 1.0" in metrics
    failures = next(
        line
        for line in metrics.splitlines()
        if line.startswith('serving_model_reloads_total{result="failure"}')
    )
    assert float(failures.rsplit(" ", 1)[1]) >= 1
    assert f'serving_model_info{{name="{unique_name}",version="1"}} 1.0' in metrics
    assert "Traceback" not in log_path.read_text()


_PART = re.compile(r"^part-\d{8}T\d{12}-(\d+)-\d{6}\.parquet$")


def test_the_prediction_log_is_on_disk_after_a_graceful_shutdown(
    store: TinyStore, tmp_path: Path
) -> None:
    rows = store.models["iris"].features.iloc[[0, 60, 140]]
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [rows.iloc[0].tolist()]}
    # Parts are due only after an hour: whatever is on disk was written at shutdown.
    settings = {"SERVING_MODEL_NAME": "iris", "SERVING_PREDICTION_LOG_ROTATE_SECONDS": "3600"}
    with (
        running_server(store, tmp_path, **settings) as (base_url, log_path),
        httpx.Client(base_url=base_url, timeout=10.0) as client,
    ):
        answers = [
            client.post("/predict", json=rows.iloc[0].to_dict()),
            client.post("/predict", json={"records": rows.to_dict(orient="records")}),
            client.post("/invocations", json={"dataframe_split": rows.to_dict(orient="split")}),
            client.post("/v2/models/iris/infer", json={"inputs": [tensor]}),
        ]
        assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
        request_id = answers[0].headers["X-Request-ID"]
        feedback = client.post("/feedback", json={"request_id": request_id, "label": "setosa"})
        assert feedback.status_code == 202, feedback.text
        assert not (tmp_path / "prediction_log").exists()  # nothing is due yet
    # The default directory, relative to the server's working directory.
    root = tmp_path / "prediction_log" / "iris"
    predictions = sorted((root / "predictions").iterdir())
    labels = sorted((root / "feedback").iterdir())
    assert [_PART.match(p.name) is not None for p in predictions + labels] == [True] * 2
    logged = pq.read_table(predictions[0]).to_pandas()
    expected_ids = [a.headers["X-Request-ID"] for a in answers]
    assert logged.groupby("request_id", sort=False).size().to_dict() == dict(
        zip(expected_ids, [1, 3, 3, 1], strict=True)
    )
    assert logged["prediction"].tolist() == (
        [answers[0].json()["prediction"]["label"]]
        + [p["label"] for p in answers[1].json()["predictions"]]
        + answers[2].json()["predictions"]
        + answers[3].json()["outputs"][0]["data"]
    )
    joined = logged.merge(pq.read_table(labels[0]).to_pandas(), on=["request_id", "row"])
    assert joined[["prediction", "label"]].to_dict(orient="records") == [
        {"prediction": "setosa", "label": "setosa"}
    ]
    assert isinstance(logged["timestamp"].dtype, pd.DatetimeTZDtype)
    output = log_path.read_text()
    assert "Application shutdown complete." in output
    assert "Traceback" not in output
