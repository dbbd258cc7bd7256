"""What the end-to-end tests share: starting `python -m serving` as a real process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import pytest

ServeFn = Callable[[Path, dict[str, str]], AbstractContextManager[str]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running(
    args: list[str], *, cwd: Path, env: dict[str, str], log_path: Path, ready_url: str
) -> Iterator[None]:
    """Run ``args`` as a process until the block ends; enter once ``ready_url`` answers 200."""
    with log_path.open("w") as log:
        process = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 120
            while True:
                assert process.poll() is None, log_path.read_text()[-3000:]
                try:
                    if httpx.get(ready_url, timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"{args[0]} never answered {ready_url}"
                time.sleep(0.5)
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@contextmanager
def _serve(workdir: Path, env: dict[str, str]) -> Iterator[str]:
    """`python -m serving` in `workdir` on a free port; yields its base URL once ready."""
    port = free_port()
    env = {**env, "SERVING_PORT": str(port), "SERVING_HOST": "127.0.0.1"}
    base = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "serving"]
    with running(
        args,
        cwd=workdir,
        env=env,
        log_path=workdir / "server.log",
        ready_url=f"{base}/health/ready",
    ):
        yield base


@pytest.fixture(scope="session")
def serve() -> ServeFn:
    """Start a real server process: `with serve(workdir, env) as base_url: ...`."""
    return _serve
