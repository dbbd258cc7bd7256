"""Compatibility: the same payloads sent to the real ``mlflow models serve`` and to us."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.serving.factories import TinyStore

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

STARTUP_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def mlflow_server(store: TinyStore, tmp_path: Path) -> Iterator[str]:
    """``mlflow models serve`` on iris version 1, as a process group killed at the end."""
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "MLFLOW_TRACKING_URI": store.tracking_uri,
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # mlflow runs `uvicorn` from PATH: use the one next to this interpreter.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/iris/1"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    log_path = tmp_path / "mlflow-serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while True:
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "mlflow models serve did not start in time"
                try:
                    if httpx.get(f"{base_url}/ping", timeout=2.0).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
            yield base_url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def test_invocations_match_mlflow_models_serve(
    mlflow_server: str, make_client: Callable[..., TestClient], store: TinyStore
) -> None:
    rows = store.models["iris"].features.iloc[[0, 51, 102, 149]]
    records = rows.to_dict(orient="records")
    json_type = {"Content-Type": "application/json"}
    cases: list[tuple[str, bytes, dict[str, str]]] = [
        (
            "split",
            json.dumps({"dataframe_split": rows.to_dict(orient="split")}).encode(),
            json_type,
        ),
        ("records", json.dumps({"dataframe_records": records}).encode(), json_type),
        ("instances", json.dumps({"instances": records}).encode(), json_type),
        ("inputs", json.dumps({"inputs": rows.to_dict(orient="list")}).encode(), json_type),
        ("params", json.dumps({"inputs": records, "params": {"a": 1}}).encode(), json_type),
        (
            "charset",
            json.dumps({"inputs": records}).encode(),
            {"Content-Type": "application/json; charset=utf-8"},
        ),
        ("csv", rows.to_csv(index=False).encode(), {"Content-Type": "text/csv"}),
        ("malformed", b"{not json", json_type),
        ("no key", json.dumps({"data": records}).encode(), json_type),
        ("two keys", json.dumps({"inputs": records, "instances": records}).encode(), json_type),
        (
            "missing column",
            json.dumps({"dataframe_split": rows.iloc[:, :3].to_dict(orient="split")}).encode(),
            json_type,
        ),
        (
            "wrong type",
            json.dumps({"dataframe_records": [{**records[0], "petal width (cm)": "x"}]}).encode(),
            json_type,
        ),
        ("text/plain", b"hello", {"Content-Type": "text/plain"}),
    ]
    ours = make_client("iris")
    for name, body, headers in cases:
        theirs = httpx.post(
            f"{mlflow_server}/invocations", content=body, headers=headers, timeout=30
        )
        mine = ours.post("/invocations", content=body, headers=headers)
        assert mine.status_code == theirs.status_code, (name, mine.text, theirs.text)
        if theirs.status_code == 200:
            assert mine.json() == theirs.json(), name
        elif theirs.headers["content-type"].startswith("application/json"):
            assert mine.json()["error_code"] == theirs.json()["error_code"], (
                name,
                mine.text,
                theirs.text,
            )

    # Documented differences: no Content-Type is a 415 here, a 500 in MLflow.
    theirs = httpx.post(f"{mlflow_server}/invocations", content=b"{}", timeout=30)
    assert theirs.status_code == 500
    assert ours.post("/invocations", content=b"{}").status_code == 415

    for path in ("/ping", "/version"):
        theirs = httpx.get(f"{mlflow_server}{path}", timeout=10)
        mine = ours.get(path)
        assert (mine.status_code, mine.text) == (theirs.status_code, theirs.text), path
