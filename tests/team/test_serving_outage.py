"""Registry outage and recovery in a live server: the PostgreSQL-backed tracking server stopped
and started again (same database, same artifacts, same port) under a polling `python -m serving`.

The session's tracking server cannot be stopped without breaking the other team tests, so this
module runs a second `deploy/tracking-server.sh`, started as the `tracking_server` fixture starts
it, on the same database and artifact destination (the registered versions are already there);
the model server is pointed at this second server only.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from pipeline.registry import production
from tests.factories import IRIS_SETOSA
from tests.team.harness import free_port, start_tracking_server, stop_group

if TYPE_CHECKING:
    from conftest import Team, TrackingServer

pytestmark = [pytest.mark.e2e, pytest.mark.team, pytest.mark.timeout(240)]

POLL_SECONDS = 1.0
TWO_POLLS = 2 * POLL_SECONDS
SLACK = 8.0
"""A poll's own request time plus a loaded 2-core machine; the measured time is reported."""
KEEPING = "Keeping model version "


def _start_server(server: TrackingServer, port: int) -> subprocess.Popen[bytes]:
    """A second `deploy/tracking-server.sh` on the fixture's database and artifacts."""
    return start_tracking_server(
        database=server.database,
        artifacts=server.artifacts,
        workdir=server.workdir,
        log=server.log,
        port=port,
    )


def _refused(uri: str) -> bool:
    try:
        httpx.get(f"{uri}/health", timeout=2)
    except httpx.ConnectError:
        return True
    return False


@contextmanager
def _second_server(session: TrackingServer, workdir: Path) -> Iterator[Any]:
    """A second tracking server on the session's database and artifacts, on a port of its own;
    yields a handle whose ``stop()`` and ``start()`` restart it on that same port."""
    port = free_port()
    server = dataclasses.replace(
        session, uri=f"http://127.0.0.1:{port}", workdir=workdir, log=workdir / "server.log"
    )

    class Handle:
        def __init__(self) -> None:
            self.server = server
            self.process: subprocess.Popen[bytes] | None = _start_server(server, port)

        def stop(self) -> None:
            assert self.process is not None
            stop_group(self.process)
            self.process = None

        def start(self) -> None:
            self.process = _start_server(server, port)

    handle = Handle()
    try:
        yield handle
    finally:
        if handle.process is not None:
            stop_group(handle.process)


def _ready(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/health/ready")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _eventually(
    client: httpx.Client, check: Callable[[dict[str, Any]], bool], deadline: float
) -> dict[str, Any]:
    while True:
        body = _ready(client)
        if check(body):
            return body
        assert time.monotonic() < deadline, f"/health/ready still says {body}"
        time.sleep(0.05)


def _metric(client: httpx.Client, series: str) -> float | None:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _answered_by(client: httpx.Client, version: str) -> bool:
    response = client.post("/predict", json=IRIS_SETOSA)
    return (
        response.status_code == 200
        and response.headers["x-model-version"] == version
        and response.json()["prediction"]["label"] == "setosa"
    )


def _degraded(body: dict[str, Any]) -> bool:
    error = body.get("last_reload_error") or {}
    return body["status"] == "degraded" and error.get("type") == "registry_unavailable"


def test_stopping_and_starting_the_tracking_server_degrades_then_recovers_a_live_server(
    team: Team,
    tracking_server: TrackingServer,
    copies_of: Callable[[str, int], list[str]],
    tmp_path: Path,
) -> None:
    name = "iris-outage"
    (version,) = copies_of(name, 1)
    production.set_production(team.client(), name, version, action="promote", reason="outage")
    with _second_server(tracking_server, tmp_path) as registry:
        mine = dataclasses.replace(team, server=registry.server, workdir=tmp_path)
        with (
            mine.replicas(name, poll_seconds=POLL_SECONDS) as (replica,),
            httpx.Client(base_url=replica.url, timeout=10.0) as client,
        ):
            body = _ready(client)
            assert (body["status"], body["model_version"]) == ("ready", version)
            assert _metric(client, "serving_model_reload_failing") == 0

            # The outage: the tracking server's process group is stopped, the port refuses.
            stopping = time.monotonic()
            registry.stop()
            stopped = time.monotonic()
            assert _refused(registry.server.uri)
            body = _eventually(client, _degraded, stopped + TWO_POLLS + SLACK)
            degraded_after = time.monotonic() - stopped
            assert body["model_version"] == version
            assert f"The MLflow registry at {registry.server.uri} is unreachable" in body["reason"]
            assert "connection refused" in body["reason"]
            assert body["since"] == body["last_reload_error"]["since"]
            assert _metric(client, "serving_model_reload_failing") == 1
            assert _metric(client, 'serving_model_fault{type="registry_unavailable"}') == 1
            assert _answered_by(client, version)
            time.sleep(3 * POLL_SECONDS)  # more failing polls: the same fault, the same since
            later = _ready(client)
            assert _degraded(later) and later["since"] == body["since"]
            assert _answered_by(client, version)

            # The recovery: the same database, artifacts and port.
            registry.start()
            started = time.monotonic()
            _eventually(
                client,
                lambda b: b["status"] == "ready" and b["last_reload_error"] is None,
                started + TWO_POLLS + SLACK,
            )
            ready_after = time.monotonic() - started
            assert _metric(client, "serving_model_reload_failing") == 0
            assert _metric(client, 'serving_model_fault{type="registry_unavailable"}') is None
            assert _answered_by(client, version)
            served = client.get("/model").json()
            assert (served["name"], served["version"]) == (name, version)

    log = replica.log.read_text(errors="replace")
    print(
        f"\nstop took {stopped - stopping:.2f}s, degraded {degraded_after:.2f}s after it, "
        f"ready {ready_after:.2f}s after the restart"
    )
    assert "Traceback" not in log, log[-3000:]
    faults = [line for line in log.splitlines() if KEEPING in line]
    assert faults, log[-3000:]
    assert "is unreachable: connection refused" in faults[0]
    assert len([line for line in log.splitlines() if "Recovered after" in line]) == 1, log[-3000:]
