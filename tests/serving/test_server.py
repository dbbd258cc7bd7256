"""The uvicorn server around the app: the port is bound before the model loads, and a client
that sends its headers too slowly is cut off. Real sockets, a real uvicorn server and, for
the command line, real ``python -m serving`` processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from serving.server import HeaderDeadlineProtocol, PortUnavailableError, ServingConfig, bind_socket


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _serving_process(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SERVING_")},
        # A store that does not exist: loading it would take seconds and log about it.
        "SERVING_TRACKING_URI": f"sqlite:///{tmp_path}/absent/mlflow.db",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "serving"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bind_socket_names_the_busy_port_and_the_setting_to_change() -> None:
    with _listening_socket() as busy:
        port = busy.getsockname()[1]
        with pytest.raises(PortUnavailableError) as caught:
            bind_socket("127.0.0.1", port)
    message = str(caught.value)
    assert message.startswith(f"Cannot listen on 127.0.0.1:{port}: Address already in use.")
    assert "choose another port with SERVING_PORT (or --port)" in message


@pytest.mark.process
def test_python_m_serving_on_a_busy_port_fails_before_loading_the_model(tmp_path: Path) -> None:
    with _listening_socket() as busy:
        port = busy.getsockname()[1]
        result = _serving_process(tmp_path, SERVING_PORT=str(port))
    assert result.returncode == 1, result.stderr
    assert f"Cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "SERVING_PORT" in result.stderr
    assert "Serving models:/" not in result.stderr  # the lifespan (model loading) never ran
    assert not (tmp_path / "absent").exists()


@pytest.mark.process
def test_python_m_serving_names_the_environment_variable_of_a_bad_port(tmp_path: Path) -> None:
    result = _serving_process(tmp_path, SERVING_PORT="abc")
    assert result.returncode == 2, result.stderr
    assert "SERVING_PORT: Input should be a valid integer" in result.stderr
    assert "Give a whole number." in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def slow_header_server() -> Iterator[int]:
    """A real uvicorn server with the serving protocol and a 0.3 s header deadline."""

    async def hello(_request: object) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/", hello)])
    config = ServingConfig(
        app,
        http=HeaderDeadlineProtocol,
        header_timeout_seconds=0.3,
        timeout_keep_alive=5,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    sock = bind_socket("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(timeout=10)


def _read_all(conn: socket.socket) -> bytes:
    conn.settimeout(10)
    received = b""
    while chunk := conn.recv(4096):
        received += chunk
    return received


def test_a_client_that_never_finishes_its_headers_is_answered_408_and_cut_off(
    slow_header_server: int,
) -> None:
    with socket.create_connection(("127.0.0.1", slow_header_server)) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        received = _read_all(conn)  # returns once the server has closed the connection
    assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert received.endswith(
        b"The request headers did not arrive in time: send them at once, then retry.\n"
    )


def test_a_client_that_connects_and_sends_nothing_is_cut_off(slow_header_server: int) -> None:
    with socket.create_connection(("127.0.0.1", slow_header_server)) as conn:
        received = _read_all(conn)
    assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")


def test_a_request_sent_in_time_is_answered_and_its_connection_kept_alive(
    slow_header_server: int,
) -> None:
    with socket.create_connection(("127.0.0.1", slow_header_server)) as conn:
        conn.settimeout(10)
        for _ in range(2):  # the deadline restarts with each request on the connection
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = conn.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
            assert answer.endswith(b"hello")
