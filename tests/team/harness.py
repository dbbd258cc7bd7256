"""Starting and stopping `deploy/tracking-server.sh` for the team tests (the session fixture,
and tests that stop and restart a server of their own)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PG_HOST = "127.0.0.1"
PG_PORT = 5432
SERVER_START_TIMEOUT = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_tracking_server(
    *, database: str, artifacts: Path, workdir: Path, log: Path, port: int
) -> subprocess.Popen[bytes]:
    """`deploy/tracking-server.sh` on `database`, healthy on `port` (its output appended to
    `log`); the test fails with the log's tail if it exits or is not healthy in time."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SERVING_"))}
    env.update(
        MLFLOW_BACKEND_STORE_URI=f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{database}",
        MLFLOW_ARTIFACTS_DESTINATION=str(artifacts),
        MLFLOW_HOST="127.0.0.1",
        MLFLOW_PORT=str(port),
        MLFLOW_WORKERS="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        PYTHON=sys.executable,
        MLFLOW=str(Path(sys.executable).parent / "mlflow"),
    )
    with log.open("ab") as out:
        process = subprocess.Popen(
            ["bash", str(REPO_ROOT / "deploy" / "tracking-server.sh")],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # mlflow server runs uvicorn as a child: stop the group
        )
    try:
        _wait_healthy(process, f"http://127.0.0.1:{port}", log)
    except BaseException:
        stop_group(process)
        raise
    return process


def _wait_healthy(process: subprocess.Popen[bytes], uri: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        if process.poll() is not None:
            pytest.fail(
                f"the tracking server exited with {process.returncode}:\n"
                + log.read_text(errors="replace")[-3000:]
            )
        with suppress(httpx.TransportError):
            if httpx.get(f"{uri}/health", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            pytest.fail(
                f"the tracking server was not healthy within {SERVER_START_TIMEOUT:.0f}s:\n"
                + log.read_text(errors="replace")[-3000:]
            )
        time.sleep(0.3)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop the server's process group: SIGTERM, then SIGKILL for anything left behind."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
