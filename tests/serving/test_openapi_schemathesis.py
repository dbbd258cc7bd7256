"""The OpenAPI document as a test oracle: schemathesis (``--checks all``) against a live
``python -m serving`` finds no failure and no 5xx, with a bounded number of examples."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serving.factories import TinyStore

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

EXAMPLES = 15
"""Examples per operation: enough to reach every declared status, under ~30 s in all."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(store: TinyStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real server on iris version 1, its prediction log in a temp dir."""
    workdir = tmp_path_factory.mktemp("schemathesis")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVING_", "MLFLOW_"))}
    env |= {
        "SERVING_TRACKING_URI": store.tracking_uri,
        "SERVING_MODEL_URI": "models:/iris/1",
        "SERVING_PORT": str(port),
        "SERVING_LOG_LEVEL": "WARNING",
    }
    log = (workdir / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "serving"], cwd=workdir, env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, (workdir / "server.log").read_text()
            try:
                if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


CONFIG = """
# Schema-valid bodies the model still refuses, by design: values it overflows on, a label
# that is not one of its classes, text that is not CSV, more rows than SERVING_MAX_ROWS.
# The schema cannot say "within what the model can take"; every other default stands.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "401", "403", "404", "409", "413", "422", "429"]

# A body over a limit is refused 413 before its shape is looked at: a rejection too.
[checks.negative_data_rejection]
expected-statuses = [
    "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429",
]

# The served model, so the v2 routes are reached beyond their 404 (other names are tried too).
[parameters]
"path.name" = "iris"
"path.version" = "1"
"""


def test_schemathesis_with_every_check_finds_nothing_against_the_live_server(
    server: str, tmp_path: Path
) -> None:
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "st"),
            "run",
            f"{server}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            "13",
            "--generation-deterministic",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
        cwd=tmp_path,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert "Server error" not in report, report
    assert "Failures:" not in report, report
