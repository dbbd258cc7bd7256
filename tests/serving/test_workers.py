"""End to end: ``python -m serving --workers N`` as real processes, and graceful shutdown.

Each worker is its own process with its own model and batcher; ``/metrics`` carries
``serving_worker_info{pid}`` so a scrape tells which worker answered it, and sums the request
counters of every worker (Prometheus multiprocess mode), whichever answers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from serving.app import app_from_env, create_app
from tests.serving.factories import SETOSA, TinyStore

pytestmark = pytest.mark.timeout(180)
e2e = pytest.mark.e2e

STARTUP_TIMEOUT = 90.0
_WORKER = re.compile(r'^serving_worker_info\{pid="(\d+)"\} 1\.0$', re.MULTILINE)
_PREDICTED = re.compile(
    r'^serving_requests_total\{method="POST",route="/predict",status="200"\} (\S+)$', re.MULTILINE
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready(self) -> bool:
        assert self.process.poll() is None, f"the server exited:\n{self.log()}"
        try:
            return httpx.get(f"{self.base_url}/health/ready", timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit status (killed, and the test failed, if it hangs)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.process.kill()
            self.process.wait(timeout=10)
            message = f"the server did not stop within {timeout}s:\n{self.log()}"
            raise AssertionError(message) from exc


@contextmanager
def serving(store: TinyStore, tmp_path: Path, *args: str, **env: str) -> Iterator[Server]:
    """``python -m serving *args`` on a free loopback port, ready; stopped at the end."""
    port = _free_port()
    environment = {
        **os.environ,
        "SERVING_TRACKING_URI": store.tracking_uri,
        "SERVING_PORT": str(port),
        "SERVING_MODEL_NAME": "iris",
        **env,
    }
    environment.pop("MLFLOW_TRACKING_URI", None)
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving", *args],
            cwd=tmp_path,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        server = Server(process, port, log_path)
        try:
            _wait(server.ready, STARTUP_TIMEOUT, "the server to be ready")
            yield server
        finally:
            if process.poll() is None:
                server.stop()


def test_the_worker_factory_builds_the_app_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SERVING_MODEL_URI", "models:/wine@champion")
    monkeypatch.setenv("SERVING_REQUEST_TIMEOUT_SECONDS", "3")
    app = app_from_env()
    assert app.state.settings.model_uri == "models:/wine@champion"
    assert app.state.settings.request_timeout_seconds == 3


def test_metrics_name_the_worker_process_that_answered(store: TinyStore) -> None:
    with TestClient(create_app(store.settings())) as client:
        metrics = client.get("/metrics").text
    assert _WORKER.findall(metrics) == [str(os.getpid())]


def _children(pid: int) -> set[int]:
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        if re.search(rf"^PPid:\s+{pid}$", status, re.MULTILINE):
            children.add(int(entry.name))
    return children


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1)) / 1024


@e2e
def test_two_workers_each_answer_predictions_from_their_own_process(
    store: TinyStore, tmp_path: Path
) -> None:
    with serving(store, tmp_path, "--workers", "2") as server:
        scraped: set[int] = set()  # the workers that answered a /metrics scrape
        request_ids: list[str] = []
        parts_dir = tmp_path / "prediction_log" / "iris" / "predictions"

        def predict_then_scrape(_: int) -> None:
            # A fresh connection per call, so that the kernel hands them to either worker.
            response = httpx.post(f"{server.base_url}/predict", json=SETOSA, timeout=10.0)
            assert response.status_code == 200, response.text
            assert response.json()["prediction"]["label"] == "setosa"
            request_ids.append(response.headers["X-Request-ID"])
            metrics = httpx.get(f"{server.base_url}/metrics", timeout=10.0).text
            (pid,) = _WORKER.findall(metrics)
            scraped.add(int(pid))

        def logging_workers() -> set[int]:
            # Each worker writes its own parts (its pid in their names) every 2 s while it
            # predicts: the workers that answered predictions.
            return {int(part.name.split("-")[2]) for part in parts_dir.glob("*.parquet")}

        deadline = time.monotonic() + 60
        with ThreadPoolExecutor(max_workers=8) as pool:
            while len(scraped) < 2 or len(logging_workers()) < 2:
                assert time.monotonic() < deadline, f"scraped {scraped}, {logging_workers()}"
                list(pool.map(predict_then_scrape, range(16)))
                time.sleep(0.5)

        workers = scraped
        assert len(workers) == 2
        assert logging_workers() == workers
        # The request counters are summed over both workers, whichever answers the scrape.
        for _ in range(6):
            metrics = httpx.get(f"{server.base_url}/metrics", timeout=10.0).text
            assert _PREDICTED.findall(metrics) == [f"{len(request_ids)}.0"], metrics
        assert server.process.pid not in workers
        assert workers <= _children(server.process.pid)  # both are the server's own workers
        for pid in sorted(workers):
            print(f"worker {pid}: VmRSS {_rss_mb(pid):.0f} MB")  # the memory cost, per worker
        exit_code = server.stop()

    log = server.log()
    assert exit_code in (0, -signal.SIGTERM), log
    assert log.count("Serving model 'iris' version 1") == 2, log  # one model per worker
    assert log.count("objects alive after startup") == 2, log  # each worker froze them
    assert log.count("Application shutdown complete.") == 2, log
    assert "Traceback" not in log
    # Each worker wrote its own prediction log parts (its pid in their names) at shutdown.
    parts = sorted((tmp_path / "prediction_log" / "iris" / "predictions").glob("*.parquet"))
    assert {int(part.name.split("-")[2]) for part in parts} == workers
    logged = pd.concat([pq.read_table(part).to_pandas() for part in parts])
    assert sorted(logged["request_id"]) == sorted(request_ids)


@e2e
def test_keep_alive_connections_opened_at_once_are_spread_over_both_workers(
    store: TinyStore, tmp_path: Path
) -> None:
    # What a load balancer or a client pool does: open its connections together, then keep
    # them. On one shared socket the first worker to wake accepted all of them.
    with serving(store, tmp_path, "--workers", "2") as server:
        # Ready means one worker answers: wait until both do (a worker still loading its
        # model is not listening yet, and connections go to the others).
        seen: set[str] = set()

        def both_answer() -> bool:
            seen.update(_WORKER.findall(httpx.get(f"{server.base_url}/metrics").text))
            return len(seen) == 2

        _wait(both_answer, STARTUP_TIMEOUT, "both workers to answer")
        connections = [
            socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(16)
        ]
        answered: list[int] = []
        try:
            for connection in connections:
                request = f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n"
                connection.sendall(request.encode())
            for connection in connections:
                answered.append(_answering_worker(connection))
        finally:
            for connection in connections:
                connection.close()
    # 16 connections hashed over two sockets all land on one with probability 2 / 2**16.
    assert len(set(answered)) == 2, answered


def _answering_worker(connection: socket.socket) -> int:
    """The pid in the ``/metrics`` answer read from ``connection`` (Content-Length framed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?im)^content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += connection.recv(65536)
    (pid,) = _WORKER.findall(body.decode())
    return int(pid)


def _raw_request(port: int, body: bytes) -> tuple[socket.socket, bytes]:
    """Open a connection and send the headers of a POST /predict; the body is sent later."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode())
    return sock, body


def _read_response(sock: socket.socket, log: Callable[[], str]) -> tuple[int, dict[str, object]]:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert head.lower().count(b"content-type: application/json") == 1, (data, log())
    return status, json.loads(body)


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


@e2e
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_lets_the_request_in_flight_finish_then_exits(
    store: TinyStore, tmp_path: Path, workers: str
) -> None:
    with serving(store, tmp_path, "--workers", workers) as server:
        body = json.dumps(SETOSA).encode()
        sock, body = _raw_request(server.port, body)
        with sock:
            sock.sendall(body[:10])  # the request is in flight: headers and part of its body
            time.sleep(0.5)
            server.process.send_signal(signal.SIGTERM)
            # Every worker starts shutting down, but keeps this connection open ...
            _wait(
                lambda: server.log().count("Shutting down") == int(workers),
                30,
                "the workers to start shutting down",
            )
            if workers == "1":
                # ... and stops accepting new ones. (With several workers the parent process
                # holds the listening socket until it exits: the kernel still queues new
                # connections, which are reset when the parent exits.)
                _wait(lambda: _refuses_connections(server.port), 30, "connections refused")
            time.sleep(0.5)
            assert server.process.poll() is None, "the server quit with a request in flight"
            sock.sendall(body[10:])
            # ... and answers it in full.
            status, answer = _read_response(sock, server.log)
        exit_code = server.stop()

    log = server.log()
    assert status == 200, (answer, log)
    assert answer["prediction"]["label"] == "setosa"  # type: ignore[index]
    assert exit_code in (0, -signal.SIGTERM), log
    assert "Application shutdown complete." in log
    assert "timeout graceful shutdown exceeded" not in log
    assert "Traceback" not in log


@e2e
def test_graceful_shutdown_gives_up_on_a_stuck_request_after_the_graceful_timeout(
    store: TinyStore, tmp_path: Path
) -> None:
    env = {"SERVING_GRACEFUL_TIMEOUT_SECONDS": "1"}
    with serving(store, tmp_path, **env) as server:
        sock, _ = _raw_request(server.port, json.dumps(SETOSA).encode())
        with sock:
            sock.sendall(b'{"sepal')  # and never the rest
            time.sleep(0.5)
            start = time.monotonic()
            exit_code = server.stop(timeout=30)
            stopped_after = time.monotonic() - start
    log = server.log()
    assert exit_code in (0, -signal.SIGTERM), log
    assert stopped_after < 20, log  # bounded by the 1 s graceful timeout, not by the client
    assert "timeout graceful shutdown exceeded" in log
