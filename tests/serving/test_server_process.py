"""End to end: ``python -m serving`` as a real process, over real HTTP, against a temp store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from conftest import TinyStore

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
            assert ready.json() == {"status": "ready", "model_name": "iris", "model_version": "1"}

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
    assert "model_uri" in result.stderr
    assert "Traceback" not in result.stderr
