"""Faults, for real, against ``python -m serving`` over HTTP: the registry's store moved away
and back, a corrupt skops file and a deleted artifact directory in newly promoted versions.
Each shows on /health/ready and /metrics within two poll intervals (asserted with a generous
deadline), the old version keeps answering, and each change is logged once."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serving.factories import TinyStore
from tests.serving.faults import corrupt_skops, delete_artifacts, log_iris_copy, private_store
from tests.serving.test_server_process import running_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

POLL_SECONDS = 0.2
DEADLINE = 20.0
"""Generous: the server should take two poll intervals, a loaded machine may take longer."""
KEEPING = "Keeping model version 1 "


def _eventually(client: httpx.Client, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while True:
        body: dict[str, Any] = client.get("/health/ready").json()
        if check(body):
            return body
        assert time.monotonic() < deadline, f"/health/ready still says {body}"
        time.sleep(0.05)


def _metric(client: httpx.Client, series: str) -> float | None:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _answered_by_version_1(client: httpx.Client, row: dict[str, float]) -> bool:
    response = client.post("/predict", json=row)
    return response.status_code == 200 and response.headers["x-model-version"] == "1"


def _degraded(version: str | None, error_type: str) -> Callable[[dict[str, Any]], bool]:
    def check(body: dict[str, Any]) -> bool:
        error = body.get("last_reload_error") or {}
        return body["status"] == "degraded" and (error.get("version"), error.get("type")) == (
            version,
            error_type,
        )

    return check


def test_registry_and_artifact_faults_are_reported_while_the_old_version_serves(
    store: TinyStore, tmp_path: Path, unique_name: str
) -> None:
    store.register(unique_name, store.models["iris"], production=True)
    private = private_store(store, tmp_path / "store")
    db = tmp_path / "store" / "mlflow.db"
    row = store.models["iris"].features.iloc[100].to_dict()
    settings = {
        "SERVING_TRACKING_URI": private.tracking_uri,
        "SERVING_MODEL_NAME": unique_name,
        "SERVING_POLL_SECONDS": str(POLL_SECONDS),
    }
    with (
        running_server(private, tmp_path, **settings) as (base_url, log_path),
        httpx.Client(base_url=base_url, timeout=10.0) as client,
    ):
        assert client.get("/health/ready").json()["status"] == "ready"

        # (a) The store moves away: registry unreachable, degraded but still answering.
        db.rename(tmp_path / "moved.db")
        body = _eventually(client, _degraded(None, "registry_unavailable"))
        assert body["model_version"] == "1"
        assert f"unreachable: no MLflow store at {db}" in body["reason"]
        assert body["since"] == body["last_reload_error"]["since"]
        assert _metric(client, "serving_model_reload_failing") == 1
        assert _metric(client, 'serving_model_fault{type="registry_unavailable"}') == 1
        assert _answered_by_version_1(client, row)
        time.sleep(5 * POLL_SECONDS)  # several more failing polls: same fault, same since
        assert client.get("/health/ready").json()["since"] == body["since"]
        assert not db.exists()  # nothing recreated an empty store at the old path

        (tmp_path / "moved.db").rename(db)
        _eventually(client, lambda b: b == {**b, "status": "ready", "last_reload_error": None})
        assert _metric(client, "serving_model_reload_failing") == 0
        assert _metric(client, 'serving_model_fault{type="registry_unavailable"}') is None

        # (b) A newly promoted version whose skops file is corrupt.
        corrupt = log_iris_copy(private)
        corrupt_skops(private, corrupt)
        private.register(unique_name, corrupt, production=True)
        body = _eventually(client, _degraded("2", "model_artifact_error"))
        assert f"The skops file of model '{unique_name}' version 2 at file://" in body["reason"]
        assert "is not a valid skops archive" in body["reason"]
        assert _metric(client, "serving_model_reload_failing") == 1
        assert _answered_by_version_1(client, row)

        # (c) Then one whose artifact directory was deleted.
        gone = log_iris_copy(private)
        path = delete_artifacts(private, gone)
        private.register(unique_name, gone, production=True)
        body = _eventually(client, _degraded("3", "model_artifact_error"))
        assert f"version 3 are missing at {path}" in body["reason"]
        assert "registry" not in body["reason"]
        assert _answered_by_version_1(client, row)
        time.sleep(5 * POLL_SECONDS)  # retried every poll, logged once

    log = log_path.read_text()
    assert "Traceback" not in log
    faults = [line for line in log.splitlines() if KEEPING in line]
    assert len(faults) == 3, faults
    assert "registry_unavailable" not in faults[0]  # the message, not a type name
    assert "unreachable: no MLflow store at" in faults[0]
    assert "is not a valid skops archive" in faults[1]
    assert "are missing at" in faults[2]
    assert len([line for line in log.splitlines() if "Recovered after" in line]) == 1
    assert len([line for line in log.splitlines() if "now points at version 2" in line]) == 1
