"""The servers under test, each a process group started and stopped as a whole.

Ours is ``python -m serving`` from this checkout; MLflow's is ``mlflow models serve``; the
calibration stub is this package with ``--stub-server``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.serving.machine import REPO_ROOT, group_processes
from bench.serving.store import Store
from bench.serving.wire import HOST, free_port

_WORKER_PID = re.compile(r'^serving_worker_info\{pid="(\d+)"\} 1\.0$', re.MULTILINE)

STARTUP_TIMEOUT = 180.0  # seconds for a server to answer its readiness route
STOP_TIMEOUT = 15.0  # seconds between SIGTERM and SIGKILL


class ServerFailedError(RuntimeError):
    pass


_LIVE_SERVERS: set[ServerProcess] = set()


class ServerProcess:
    """One server in its own session (process group), stopped as a whole group."""

    def __init__(
        self,
        label: str,
        argv: list[str],
        env: dict[str, str],
        port: int,
        ready_path: str,
        log_path: Path,
        cwd: Path,
    ) -> None:
        self.label = label
        self.argv = argv
        self.env = env
        self.port = port
        self.ready_path = ready_path
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_workers = 1
        """Worker processes that must answer before the server counts as started."""
        self._answered: set[str] = set()
        self.startup_seconds: float | None = None
        self.stop_info: dict[str, Any] = {}

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # start_new_session=True: the leader's pid is the group id

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float) -> None:
        started = time.monotonic()
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _LIVE_SERVERS.add(self)
        deadline = started + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise ServerFailedError(
                    f"{self.label} exited with code {code} during start-up; last lines of "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            problem = self._readiness_problem() or self._workers_problem()
            if problem is None:
                self.startup_seconds = time.monotonic() - started
                return
            last = problem
            time.sleep(0.25)
        raise ServerFailedError(
            f"{self.label} did not answer 200 on {self.ready_path} within {timeout:.0f}s "
            f"(last: {last}); last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def _workers_problem(self) -> str | None:
        """None once ``ready_workers`` distinct worker processes have answered ``/metrics``.

        The readiness route is answered by whichever worker gets the connection: a worker
        still loading its model is not listening yet, so a load started then would open
        every connection to the workers that are."""
        if self.ready_workers <= 1:
            return None
        url = f"http://{HOST}:{self.port}/metrics"
        for _ in range(8 * self.ready_workers):  # a fresh connection each: any worker's
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2.0) as answer:
                self._answered.update(_WORKER_PID.findall(answer.read().decode()))
            if len(self._answered) >= self.ready_workers:
                return None
        return f"{len(self._answered)} of {self.ready_workers} workers answering"

    def _readiness_problem(self) -> str | None:
        """None once the readiness route answers 200, else what it answered instead."""
        url = f"http://{HOST}:{self.port}{self.ready_path}"
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                return None if response.status == 200 else f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}: {exc.read()[:200]!r}"
        except (urllib.error.URLError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL it after STOP_TIMEOUT, and wait until it is empty."""
        if self.proc is None:
            return
        pgid = self.pgid
        began = time.monotonic()
        killed = False
        signal_group(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            killed = True
            signal_group(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        # Children (uvicorn under the mlflow CLI) may outlive the leader: wait, then kill.
        if not _group_gone(pgid, 5.0):
            killed = True
            signal_group(pgid, signal.SIGKILL)
            _group_gone(pgid, 5.0)
        self.stop_info = {
            "seconds": round(time.monotonic() - began, 2),
            "needed_sigkill": killed,
            "exit_code": self.proc.returncode,
        }
        _LIVE_SERVERS.discard(self)
        self.proc = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_problems(self) -> list[str]:
        """Lines of the server log that look like errors (tracebacks, ERROR, CRITICAL)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        keys = ("Traceback", " ERROR ", "ERROR:", "CRITICAL", "Exception")
        return [line for line in text.splitlines() if any(k in line for k in keys)]


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_gone(pgid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for every live member of the group to exit."""
    deadline = time.monotonic() + timeout
    while _live_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _live_members(pgid)


def _live_members(pgid: int) -> list[int]:
    return [pid for pid, state, _ in group_processes(pgid) if state != "Z"]


def stop_all_servers() -> None:
    """Stop every server still running: from `finally` blocks, atexit and on Ctrl-C."""
    for server in list(_LIVE_SERVERS):
        with contextlib.suppress(Exception):
            server.stop()


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in list(env):
        if key.startswith(("SERVING_", "MLFLOW_")):
            del env[key]
    # The venv's bin first: `mlflow models serve` runs `uvicorn` through a shell.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _checkout_env() -> dict[str, str]:
    """`_base_env` with this checkout first on PYTHONPATH, whatever the working directory."""
    env = _base_env()
    env["PYTHONPATH"] = str(REPO_ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return env


def our_server(
    store: Store,
    key: str,
    workdir: Path,
    max_body_bytes: int | None,
    log_dir: Path | None,
    workers: int = 1,
) -> ServerProcess:
    """Our server with ``workers`` worker processes; its prediction log writes to
    ``log_dir``, or is off when that is None."""
    port = free_port()
    # Serve the `serving` package of the checkout this benchmark lives in.
    env = _checkout_env()
    env.update(
        {
            "SERVING_TRACKING_URI": store.tracking_uri,
            "SERVING_MODEL_NAME": store.registered[key],
            "SERVING_PORT": str(port),
            "SERVING_HOST": HOST,
            "SERVING_LOG_LEVEL": "WARNING",
            "SERVING_WORKERS": str(workers),
        }
    )
    if max_body_bytes is not None:
        env["SERVING_MAX_BODY_BYTES"] = str(max_body_bytes)
    if log_dir is None:
        env["SERVING_PREDICTION_LOG_ENABLED"] = "false"
    else:
        env["SERVING_PREDICTION_LOG_DIR"] = str(log_dir)  # otherwise all defaults
    server = ServerProcess(
        label=f"ours ({key}, prediction log {'off' if log_dir is None else 'on'}"
        + (f", {workers} workers)" if workers > 1 else ")"),
        argv=[sys.executable, "-m", "serving"],
        env=env,
        port=port,
        ready_path="/health/ready",
        log_path=workdir / f"{key}-ours-{port}.log",
        cwd=workdir,
    )
    server.ready_workers = workers
    return server


def mlflow_server(store: Store, key: str, workdir: Path) -> ServerProcess:
    port = free_port()
    env = _base_env()
    env.update(
        {
            "MLFLOW_TRACKING_URI": store.tracking_uri,
            # MLflow 3.17 refuses to load sklearn (even skops) models without it.
            "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
            "TMPDIR": str(workdir),  # it downloads the model to a temp dir
        }
    )
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        f"models:/{store.registered[key]}/1",
        "--env-manager",
        "local",
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    return ServerProcess(
        label=f"mlflow ({key})",
        argv=argv,
        env=env,
        port=port,
        ready_path="/ping",
        log_path=workdir / f"{key}-mlflow-{port}.log",
        cwd=workdir,
    )


def stub_server(workdir: Path) -> ServerProcess:
    """A server that answers ``{}`` to anything (``--stub-server``), for calibration."""
    port = free_port()
    return ServerProcess(
        label="stub",
        argv=[sys.executable, "-m", "bench.serving", "--stub-server", str(port)],
        env=_checkout_env(),
        port=port,
        ready_path="/",
        log_path=workdir / "stub.log",
        cwd=workdir,
    )
