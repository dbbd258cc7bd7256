"""Serving benchmark: our server (``python -m serving``) against ``mlflow models serve``.

Run from the repository root with the project's virtualenv:

    .venv/bin/python bench/serving.py --quick                  # ~1 minute, to check it works
    .venv/bin/python bench/serving.py --duration 15 --warmup 5 # the figures in bench/README.md
    .venv/bin/python bench/serving.py --calibrate              # how fast can the load generator go?

What it does (issue 3, item 7):

1. Builds a throwaway MLflow store in a temporary directory (never ./mlflow.db or ./mlruns),
   trains a RandomForest (100 trees) and a LogisticRegression pipeline on scikit-learn's
   bundled breast-cancer data, logs each in skops format with a signature and an input
   example, registers each as its own model and puts version 1 in Production (+ alias
   ``champion``).
2. For each model, starts our server and then MLflow's scoring server on the same registered
   version, one at a time (the machine has 2 cores), each in its own process group, and stops
   it (SIGTERM, then SIGKILL for the whole group) before the next one starts.
3. Drives each with the same closed-loop load from this process: ``--concurrency`` keep-alive
   connections, each sending one single-row request after another, first for ``--warmup``
   seconds (not counted) and then for ``--duration`` seconds. Reports requests/s
   (completions inside the window / window length), p50 and p99 latency and errors (non-2xx
   answers and exceptions).
4. Bulk: one ``--bulk-rows``-row request, sent ``--bulk-requests`` times in a row after a
   warm-up; reports rows/s.
5. Prediction log (issue 5): our server runs with its prediction log on, as it is deployed
   (``--prediction-log on``), off, or both ways on the same model and load
   (``--prediction-log both``, alternating which goes first in each round), which reports the
   throughput ratio log on / log off against the issue's limit (at most 10% slower), and
   how many rows the log wrote, dropped or lost.

Both servers are black boxes reached over HTTP on 127.0.0.1 only. The load generator is
described in bench/README.md: by default raw asyncio streams (uvloop when available) writing
pre-built HTTP/1.1 requests, because httpx's client costs several times more CPU per request
than the servers under test on a 2-core machine (``--calibrate`` measures it).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/serving.py` puts bench/ first on sys.path, where this file would shadow the
# project's `serving` package for anything that imports it. Nothing here imports it, but drop
# the entry anyway so the name can never resolve to this script.
_BENCH_DIR = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == _BENCH_DIR:
    sys.path.pop(0)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import atexit  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

REPO_ROOT = _BENCH_DIR.parent
HOST = "127.0.0.1"

STARTUP_TIMEOUT = 180.0  # seconds for a server to answer its readiness route
STOP_TIMEOUT = 15.0  # seconds between SIGTERM and SIGKILL
REQUEST_TIMEOUT = 60.0  # seconds for one request outside the load loop (sanity, bulk)
DRAIN_GRACE = 30.0  # seconds the load loop waits for in-flight requests after the window

# Targets from issue 3 (benchmark, not timed tests).
TARGETS = {
    "rf": {"single_ratio": 20.0, "p99_below_mlflow": True, "bulk_ratio": 2.0},
    "lr": {"single_ratio": 3.0, "p99_below_mlflow": False, "bulk_ratio": 2.0},
}

MODEL_TITLES = {
    "rf": "RandomForestClassifier(n_estimators=100)",
    "lr": "LogisticRegression",
}

SERVER_KINDS = ("ours-nolog", "ours", "mlflow")
"""``ours`` is our server with its prediction log on (its default), ``ours-nolog`` with it off."""
OURS_KINDS = {"on": ["ours"], "off": ["ours-nolog"], "both": ["ours-nolog", "ours"]}
LOG_COST_LIMIT = 0.10  # issue 5: the prediction log may cost at most 10% of throughput

BUSY_OTHER_CORES = 0.25  # other processes' CPU during a window above which we warn


# --------------------------------------------------------------------------------------------
# Machine facts


def machine_facts() -> dict[str, Any]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    versions: dict[str, str | None] = {}
    for package in (
        "mlflow",
        "scikit-learn",
        "skops",
        "numpy",
        "pandas",
        "fastapi",
        "starlette",
        "pydantic",
        "uvicorn",
        "uvloop",
        "httptools",
        "httpx",
    ):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "loadavg_at_start": _loadavg(),
        "python": platform.python_version(),
        "versions": versions,
        "git": _git_facts(),
    }


def _loadavg() -> str | None:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


def _git_facts() -> dict[str, Any]:
    """Which commit of the server is measured, and whether serving/ has local changes."""

    def run(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = run("status", "--porcelain", "--", "serving")
    return {
        "commit": run("rev-parse", "--short", "HEAD"),
        "serving_dirty": None if status is None else bool(status),
        "serving_tree_sha256": _serving_tree_hash(),
    }


def _serving_tree_hash() -> str:
    """A digest of serving/*.py as it is on disk now (it may differ from the commit)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "serving").rglob("*.py")):
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0")
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# Data, models and the throwaway MLflow store


@dataclass
class Dataset:
    columns: list[str]
    single_rows: list[list[float]]  # the pool of single-row payloads (held-out rows)
    bulk_rows: list[list[float]]  # the rows of the one bulk request


@dataclass
class Store:
    root: Path
    tracking_uri: str
    registered: dict[str, str]  # model key -> registered model name


def load_dataset(bulk_rows: int) -> tuple[Any, Any, Any, Dataset]:
    import numpy as np
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    frame = load_breast_cancer(as_frame=True)
    X = frame.data.astype("float64")
    y = frame.target
    X_train, X_test, y_train, _ = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    rng = np.random.default_rng(0)
    bulk_index = rng.integers(0, len(X), size=bulk_rows)
    data = Dataset(
        columns=[str(c) for c in X.columns],
        single_rows=[[float(v) for v in row] for row in X_test.to_numpy()],
        bulk_rows=[[float(v) for v in row] for row in X.to_numpy()[bulk_index]],
    )
    return X_train, y_train, X, data


def build_estimator(key: str, columns: Sequence[str]) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if key == "rf":
        model: Any = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1)
    elif key == "lr":
        model = LogisticRegression(max_iter=5000)
    else:
        raise ValueError(f"unknown model {key!r}: use rf or lr")
    preprocess = ColumnTransformer([("num", StandardScaler(), list(columns))])
    return Pipeline([("preprocess", preprocess), ("model", model)])


def _pinned_requirements() -> list[str]:
    # Exact pins from this environment (as pipeline/train.py does): no slow inference.
    return [
        f"{package}=={importlib.metadata.version(package)}"
        for package in ("mlflow", "scikit-learn", "skops", "numpy", "scipy", "pandas")
    ]


def build_store(root: Path, keys: Sequence[str], X_train: Any, y_train: Any) -> Store:
    """Train, log, register and promote each model in a new SQLite store under ``root``."""
    import logging

    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import mlflow
    import skops.io
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    tracking_uri = f"sqlite:///{root}/mlflow.db"
    # `make bench-serving` exports MLFLOW_TRACKING_URI=sqlite:///mlflow.db: never use it here.
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment_id = client.create_experiment(
        "bench-serving", artifact_location=(root / "artifacts").as_uri()
    )
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    registered: dict[str, str] = {}
    for key in keys:
        started = time.perf_counter()
        model = build_estimator(key, list(X_train.columns)).fit(X_train, y_train)
        name = f"bench-{key}"
        with (
            warnings.catch_warnings(),
            mlflow.start_run(experiment_id=experiment_id, run_name=f"bench-{key}"),
        ):
            warnings.simplefilter("ignore")
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(X_train, model.predict(X_train)),
                input_example=X_train.head(5),
                serialization_format="skops",
                skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(model)),
                pip_requirements=_pinned_requirements(),
            )
            version = mlflow.register_model(info.model_uri, name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            client.transition_model_version_stage(name, version.version, "Production")
        client.set_registered_model_alias(name, "champion", version.version)
        registered[key] = name
        log(
            f"registered {name} v{version.version} ({MODEL_TITLES[key]}) in Production "
            f"in {time.perf_counter() - started:.1f}s"
        )
    return Store(root=root, tracking_uri=tracking_uri, registered=registered)


# --------------------------------------------------------------------------------------------
# Server processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _group_processes(pgid: int) -> list[tuple[int, str, float]]:
    """(pid, state, cpu seconds) of every process whose process group is ``pgid``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry.name}/stat").read_bytes()
        except OSError:
            continue
        rest = raw[raw.rindex(b")") + 2 :].split()
        if int(rest[2]) != pgid:
            continue
        cpu = (int(rest[11]) + int(rest[12])) / _CLK_TCK
        found.append((int(entry.name), rest[0].decode(), cpu))
    return found


def group_cpu_seconds(pgid: int) -> float:
    return sum(cpu for _, _, cpu in _group_processes(pgid))


def system_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (from /proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user/nice
    return (sum(fields) - idle - guest) / _CLK_TCK


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
        self.startup_seconds: float | None = None
        self.stop_info: dict[str, Any] = {}

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # start_new_session=True: the leader's pid is the group id

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
        url = f"http://{HOST}:{self.port}{self.ready_path}"
        deadline = started + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise ServerFailedError(
                    f"{self.label} exited with code {code} during start-up; last lines of "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2.0) as response:
                    if response.status == 200:
                        self.startup_seconds = time.monotonic() - started
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}: {exc.read()[:200]!r}"
            except (urllib.error.URLError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.25)
        raise ServerFailedError(
            f"{self.label} did not answer 200 on {self.ready_path} within {timeout:.0f}s "
            f"(last: {last}); last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL it after STOP_TIMEOUT, and wait until it is empty."""
        if self.proc is None:
            return
        pgid = self.pgid
        began = time.monotonic()
        killed = False
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            killed = True
            _signal_group(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        # Children (uvicorn under the mlflow CLI) may outlive the leader: wait, then kill.
        deadline = time.monotonic() + 5.0
        while _live_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _live_members(pgid):
            killed = True
            _signal_group(pgid, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
            while _live_members(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)
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


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _live_members(pgid: int) -> list[int]:
    return [pid for pid, state, _ in _group_processes(pgid) if state != "Z"]


def _stop_all_servers() -> None:
    for server in list(_LIVE_SERVERS):
        with contextlib.suppress(Exception):
            server.stop()


atexit.register(_stop_all_servers)


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


def our_server(
    store: Store, key: str, workdir: Path, max_body_bytes: int | None, log_dir: Path | None
) -> ServerProcess:
    """Our server; its prediction log writes to ``log_dir``, or is off when that is None."""
    port = free_port()
    env = _base_env()
    # Serve the `serving` package of the checkout this script lives in.
    env["PYTHONPATH"] = str(REPO_ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    env.update(
        {
            "SERVING_TRACKING_URI": store.tracking_uri,
            "SERVING_MODEL_NAME": store.registered[key],
            "SERVING_PORT": str(port),
            "SERVING_HOST": HOST,
            "SERVING_LOG_LEVEL": "WARNING",
        }
    )
    if max_body_bytes is not None:
        env["SERVING_MAX_BODY_BYTES"] = str(max_body_bytes)
    if log_dir is None:
        env["SERVING_PREDICTION_LOG_ENABLED"] = "false"
    else:
        env["SERVING_PREDICTION_LOG_DIR"] = str(log_dir)  # otherwise all defaults
    return ServerProcess(
        label=f"ours ({key}, prediction log {'off' if log_dir is None else 'on'})",
        argv=[sys.executable, "-m", "serving"],
        env=env,
        port=port,
        ready_path="/health/ready",
        log_path=workdir / f"{key}-ours-{port}.log",
        cwd=workdir,
    )


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


# --------------------------------------------------------------------------------------------
# Payloads


@dataclass
class Payloads:
    path: str
    single: list[bytes]  # one JSON body per pool row
    bulk: bytes


def build_payloads(protocol: str, data: Dataset) -> Payloads:
    """Bodies for our ``/predict`` (``protocol="predict"``) or MLflow's ``/invocations``."""
    columns = data.columns
    if protocol == "predict":
        single = [
            json.dumps(dict(zip(columns, row, strict=True))).encode() for row in data.single_rows
        ]
        bulk = json.dumps(
            {"records": [dict(zip(columns, row, strict=True)) for row in data.bulk_rows]}
        ).encode()
        return Payloads("/predict", single, bulk)
    single = [
        json.dumps({"dataframe_split": {"columns": columns, "data": [row]}}).encode()
        for row in data.single_rows
    ]
    bulk = json.dumps({"dataframe_split": {"columns": columns, "data": data.bulk_rows}}).encode()
    return Payloads("/invocations", single, bulk)


def http_request(port: int, path: str, body: bytes) -> bytes:
    """A complete pre-built HTTP/1.1 keep-alive POST."""
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {HOST}:{port}\r\n"
        "Content-Type: application/json\r\n"
        "Accept: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode()
    return head + body


def labels_from(protocol: str, body: bytes) -> list[Any]:
    """The predicted labels in a response body of /predict or /invocations."""
    decoded = json.loads(body)
    if protocol == "predict":
        if "predictions" in decoded:
            return [p["label"] for p in decoded["predictions"]]
        return [decoded["prediction"]["label"]]
    predictions = decoded["predictions"]
    return [p if not isinstance(p, dict) else next(iter(p.values())) for p in predictions]


# --------------------------------------------------------------------------------------------
# HTTP clients


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams.

    Sends pre-built request bytes and reads one response: status line, headers,
    Content-Length or chunked body. Reconnects when the server closes the connection.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port, limit=1 << 20)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def close(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self.connect()
        reader, writer = self.reader, self.writer
        assert reader is not None and writer is not None
        try:
            writer.write(data)
            if len(data) > 65536:
                await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = -1
            chunked = close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif name == b"connection":
                    close = b"close" in value.lower()
            if chunked:
                body = await self._read_chunked(reader)
            elif length >= 0:
                body = await reader.readexactly(length)
            else:
                body = await reader.read()
                close = True
        except BaseException:
            await self.close()
            raise
        if close:
            await self.close()
        return status, body

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # trailers, then the final CRLF
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)


@dataclass
class LoadResult:
    generator: str
    concurrency: int
    warmup_s: float
    window_s: float
    completed: int = 0
    ok: int = 0
    errors: int = 0
    warmup_requests: int = 0
    warmup_errors: int = 0
    stalled: int = 0  # requests still unanswered DRAIN_GRACE seconds after the window
    error_kinds: dict[str, int] = field(default_factory=dict)
    error_sample: str | None = None
    req_per_s: float = 0.0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    mean_ms: float | None = None
    generator_cpu_cores: float | None = None
    server_cpu_cores: float | None = None
    other_cpu_cores: float | None = None  # everything else on the machine: noise indicator


class _Recorder:
    """Per-request bookkeeping shared by the generators (one per worker, merged after)."""

    __slots__ = (
        "errors",
        "kinds",
        "latencies",
        "sample",
        "t_end",
        "t_measure",
        "warmup",
        "warmup_errors",
    )

    def __init__(self, t_measure: float, t_end: float) -> None:
        self.t_measure = t_measure
        self.t_end = t_end
        self.latencies: list[float] = []
        self.errors = 0
        self.warmup = 0
        self.warmup_errors = 0
        self.kinds: collections.Counter[str] = collections.Counter()
        self.sample: str | None = None

    def record(self, t0: float, t1: float, ok: bool, kind: str | None, detail: str | None) -> None:
        if self.t_measure <= t1 <= self.t_end:
            self.latencies.append(t1 - t0)
            if not ok:
                self.errors += 1
        elif t1 < self.t_measure:
            self.warmup += 1
            if not ok:
                self.warmup_errors += 1
        if not ok and kind is not None:
            self.kinds[kind] += 1
            if self.sample is None:
                self.sample = detail


def _summarise(
    result: LoadResult, recorders: Sequence[_Recorder], cpu: dict[str, float]
) -> LoadResult:
    import numpy as np

    latencies = np.array([x for r in recorders for x in r.latencies], dtype=float)
    result.completed = int(latencies.size)
    result.errors = sum(r.errors for r in recorders)
    result.ok = result.completed - result.errors
    result.warmup_requests = sum(r.warmup for r in recorders)
    result.warmup_errors = sum(r.warmup_errors for r in recorders)
    kinds: collections.Counter[str] = collections.Counter()
    for r in recorders:
        kinds.update(r.kinds)
    result.error_kinds = dict(kinds)
    result.error_sample = next((r.sample for r in recorders if r.sample), None)
    result.req_per_s = result.completed / result.window_s
    if latencies.size:
        ms = latencies * 1000.0
        result.p50_ms = float(np.percentile(ms, 50))
        result.p90_ms = float(np.percentile(ms, 90))
        result.p99_ms = float(np.percentile(ms, 99))
        result.max_ms = float(ms.max())
        result.mean_ms = float(ms.mean())
    if "gen" in cpu:
        result.generator_cpu_cores = cpu["gen"] / result.window_s
    if "server" in cpu:
        result.server_cpu_cores = cpu["server"] / result.window_s
    if "system" in cpu:
        others = cpu["system"] - cpu.get("gen", 0.0) - cpu.get("server", 0.0)
        result.other_cpu_cores = max(0.0, others) / result.window_s
    return result


def _cpu_snapshot(server_pgid: int | None) -> tuple[float, float | None, float]:
    server = None if server_pgid is None else group_cpu_seconds(server_pgid)
    return self_cpu_seconds(), server, system_busy_seconds()


def _cpu_delta(
    before: tuple[float, float | None, float], after: tuple[float, float | None, float]
) -> dict[str, float]:
    out = {"gen": after[0] - before[0], "system": after[2] - before[2]}
    if before[1] is not None and after[1] is not None:
        out["server"] = after[1] - before[1]
    return out


async def _cpu_window(
    t_measure: float, t_end: float, server_pgid: int | None, out: dict[str, float]
) -> None:
    await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
    before = _cpu_snapshot(server_pgid)
    await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
    out.update(_cpu_delta(before, _cpu_snapshot(server_pgid)))


async def _run_workers(
    workers: list[Callable[[], Any]], t_end: float, recorders: list[_Recorder]
) -> int:
    """Run the worker coroutines; cancel any still running DRAIN_GRACE after the window."""
    tasks = [asyncio.create_task(w()) for w in workers]
    timeout = max(0.0, t_end - time.perf_counter()) + DRAIN_GRACE
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5.0)
    for task in done:
        if task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return len(pending)


async def load_raw(
    port: int,
    requests: list[bytes],
    concurrency: int,
    warmup: float,
    duration: float,
    server_pgid: int | None,
) -> LoadResult:
    conns = [RawConnection(port) for _ in range(concurrency)]
    await asyncio.gather(*(c.connect() for c in conns))
    start = time.perf_counter()
    t_measure, t_end = start + warmup, start + warmup + duration
    recorders = [_Recorder(t_measure, t_end) for _ in range(concurrency)]
    n = len(requests)
    perf = time.perf_counter

    def make_worker(index: int) -> Callable[[], Any]:
        conn, rec = conns[index], recorders[index]

        async def worker() -> None:
            i = index * 7
            while True:
                t0 = perf()
                if t0 >= t_end:
                    return
                try:
                    status, body = await conn.request(requests[i % n])
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                    rec.record(t0, perf(), False, type(exc).__name__, repr(exc))
                    await asyncio.sleep(0.01)  # do not spin on a refusing server
                else:
                    ok = 200 <= status < 300
                    if ok:
                        rec.record(t0, perf(), True, None, None)
                    else:
                        rec.record(
                            t0,
                            perf(),
                            False,
                            f"HTTP {status}",
                            body[:300].decode("utf-8", "replace"),
                        )
                i += 1

        return worker

    cpu: dict[str, float] = {}
    cpu_task = asyncio.create_task(_cpu_window(t_measure, t_end, server_pgid, cpu))
    try:
        stalled = await _run_workers([make_worker(i) for i in range(concurrency)], t_end, recorders)
        await cpu_task
    finally:
        cpu_task.cancel()
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    result = LoadResult("raw", concurrency, warmup, duration, stalled=stalled)
    return _summarise(result, recorders, cpu)


async def load_httpx(
    port: int,
    path: str,
    bodies: list[bytes],
    concurrency: int,
    warmup: float,
    duration: float,
    server_pgid: int | None,
) -> LoadResult:
    import httpx

    url = f"http://{HOST}:{port}{path}"
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    n = len(bodies)
    perf = time.perf_counter
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT) as client:
        start = perf()
        t_measure, t_end = start + warmup, start + warmup + duration
        recorders = [_Recorder(t_measure, t_end) for _ in range(concurrency)]

        def make_worker(index: int) -> Callable[[], Any]:
            rec = recorders[index]

            async def worker() -> None:
                i = index * 7
                while True:
                    t0 = perf()
                    if t0 >= t_end:
                        return
                    try:
                        response = await client.post(url, content=bodies[i % n], headers=headers)
                    except httpx.HTTPError as exc:
                        rec.record(t0, perf(), False, type(exc).__name__, repr(exc))
                        await asyncio.sleep(0.01)
                    else:
                        ok = response.is_success
                        if ok:
                            rec.record(t0, perf(), True, None, None)
                        else:
                            rec.record(
                                t0,
                                perf(),
                                False,
                                f"HTTP {response.status_code}",
                                response.text[:300],
                            )
                    i += 1

            return worker

        cpu: dict[str, float] = {}
        cpu_task = asyncio.create_task(_cpu_window(t_measure, t_end, server_pgid, cpu))
        try:
            stalled = await _run_workers(
                [make_worker(i) for i in range(concurrency)], t_end, recorders
            )
            await cpu_task
        finally:
            cpu_task.cancel()
    result = LoadResult("httpx", concurrency, warmup, duration, stalled=stalled)
    return _summarise(result, recorders, cpu)


def load_threads(
    port: int,
    path: str,
    bodies: list[bytes],
    concurrency: int,
    warmup: float,
    duration: float,
    server_pgid: int | None,
) -> LoadResult:
    """One thread per connection with http.client keep-alive connections."""
    import http.client

    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    n = len(bodies)
    perf = time.perf_counter
    start = perf() + 0.2  # let every thread connect first
    t_measure, t_end = start + warmup, start + warmup + duration
    recorders = [_Recorder(t_measure, t_end) for _ in range(concurrency)]
    failures: list[BaseException] = []

    def worker(index: int) -> None:
        rec = recorders[index]
        conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
        try:
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            time.sleep(max(0.0, start - perf()))
            i = index * 7
            while True:
                t0 = perf()
                if t0 >= t_end:
                    return
                try:
                    conn.request("POST", path, body=bodies[i % n], headers=headers)
                    response = conn.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    rec.record(t0, perf(), False, type(exc).__name__, repr(exc))
                    conn.close()
                    time.sleep(0.01)
                else:
                    ok = 200 <= response.status < 300
                    if ok:
                        rec.record(t0, perf(), True, None, None)
                    else:
                        rec.record(
                            t0,
                            perf(),
                            False,
                            f"HTTP {response.status}",
                            body[:300].decode("utf-8", "replace"),
                        )
                i += 1
        except BaseException as exc:
            failures.append(exc)
        finally:
            conn.close()

    threads = [
        threading.Thread(target=worker, args=(i,), daemon=True, name=f"load-{i}")
        for i in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, t_measure - perf()))
    before = _cpu_snapshot(server_pgid)
    time.sleep(max(0.0, t_end - perf()))
    cpu = _cpu_delta(before, _cpu_snapshot(server_pgid))
    deadline = time.monotonic() + DRAIN_GRACE
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    stalled = sum(thread.is_alive() for thread in threads)
    if failures:
        raise failures[0]
    result = LoadResult("threads", concurrency, warmup, duration, stalled=stalled)
    return _summarise(result, recorders, cpu)


def run_async(coro: Any, use_uvloop: bool) -> Any:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(coro)
    return asyncio.run(coro)


def run_load(
    generator: str,
    port: int,
    payloads: Payloads,
    concurrency: int,
    warmup: float,
    duration: float,
    server_pgid: int | None,
    use_uvloop: bool,
) -> LoadResult:
    if generator == "raw":
        requests = [http_request(port, payloads.path, body) for body in payloads.single]
        coro = load_raw(port, requests, concurrency, warmup, duration, server_pgid)
        result: LoadResult = run_async(coro, use_uvloop)
        return result
    if generator == "httpx":
        coro = load_httpx(
            port, payloads.path, payloads.single, concurrency, warmup, duration, server_pgid
        )
        result = run_async(coro, use_uvloop)
        return result
    if generator == "threads":
        return load_threads(
            port, payloads.path, payloads.single, concurrency, warmup, duration, server_pgid
        )
    raise ValueError(f"unknown generator {generator!r}")


# --------------------------------------------------------------------------------------------
# Bulk and sanity checks


@dataclass
class BulkResult:
    rows: int
    body_bytes: int
    requests: int = 0
    errors: int = 0
    error_sample: str | None = None
    seconds: float = 0.0
    rows_per_s: float | None = None
    median_ms: float | None = None
    max_ms: float | None = None
    server_cpu_cores: float | None = None
    other_cpu_cores: float | None = None


async def _bulk(
    port: int, request: bytes, rows: int, body_bytes: int, warmup: int, repeats: int, pgid: int
) -> tuple[BulkResult, bytes | None]:
    conn = RawConnection(port)
    result = BulkResult(rows=rows, body_bytes=body_bytes)
    first_ok: bytes | None = None
    try:
        for _ in range(warmup):
            status, body = await asyncio.wait_for(conn.request(request), REQUEST_TIMEOUT)
            if 200 <= status < 300 and first_ok is None:
                first_ok = body
            elif not 200 <= status < 300:
                result.error_sample = f"warm-up: HTTP {status}: {body[:300]!r}"
        latencies = []
        before = _cpu_snapshot(pgid)
        began = time.perf_counter()
        for _ in range(repeats):
            t0 = time.perf_counter()
            try:
                status, body = await asyncio.wait_for(conn.request(request), REQUEST_TIMEOUT)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                result.errors += 1
                result.error_sample = result.error_sample or repr(exc)
                continue
            latencies.append(time.perf_counter() - t0)
            if 200 <= status < 300:
                first_ok = first_ok or body
            else:
                result.errors += 1
                result.error_sample = result.error_sample or f"HTTP {status}: {body[:300]!r}"
        result.seconds = time.perf_counter() - began
        cpu = _cpu_delta(before, _cpu_snapshot(pgid))
        result.server_cpu_cores = cpu["server"] / result.seconds
        others = cpu["system"] - cpu["gen"] - cpu["server"]
        result.other_cpu_cores = max(0.0, others) / result.seconds
    finally:
        await conn.close()
    result.requests = repeats
    good = repeats - result.errors
    if good > 0 and latencies:
        result.rows_per_s = good * rows / result.seconds
        ordered = sorted(latencies)
        result.median_ms = ordered[len(ordered) // 2] * 1000.0
        result.max_ms = ordered[-1] * 1000.0
    return result, first_ok


def run_bulk(
    port: int,
    payloads: Payloads,
    rows: int,
    warmup: int,
    repeats: int,
    pgid: int,
    use_uvloop: bool,
) -> tuple[BulkResult, bytes | None]:
    request = http_request(port, payloads.path, payloads.bulk)
    coro = _bulk(port, request, rows, len(payloads.bulk), warmup, repeats, pgid)
    outcome: tuple[BulkResult, bytes | None] = run_async(coro, use_uvloop)
    return outcome


def sanity_labels(kind: str, protocol: str, port: int, payloads: Payloads, count: int) -> list[Any]:
    """Labels for the first ``count`` pool rows, one request each (not timed)."""
    import http.client

    labels: list[Any] = []
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
    try:
        for body in payloads.single[:count]:
            conn.request(
                "POST", payloads.path, body=body, headers={"Content-Type": "application/json"}
            )
            response = conn.getresponse()
            raw = response.read()
            if response.status != 200:
                raise ServerFailedError(
                    f"{kind} answered HTTP {response.status} to a single-row request: {raw[:500]!r}"
                )
            labels.extend(labels_from(protocol, raw))
    finally:
        conn.close()
    return labels


# --------------------------------------------------------------------------------------------
# Calibration: the generators against a stub server that does nothing


_STUB_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def _stub_serve(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                writer.write(_STUB_RESPONSE)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, HOST, port)
    async with server:
        await server.serve_forever()


def stub_main(port: int) -> int:
    # Stops when its parent (the benchmark) is gone, in case cleanup never ran.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    run_async(_stub_serve(port), use_uvloop=True)
    return 0


def calibrate(args: argparse.Namespace, data: Dataset) -> dict[str, Any]:
    """How many requests/s each generator reaches against a server that does nothing."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-stub-"))
    port = free_port()
    stub = ServerProcess(
        label="stub",
        argv=[sys.executable, str(Path(__file__).resolve()), "--stub-server", str(port)],
        env=_base_env(),
        port=port,
        ready_path="/",
        log_path=workdir / "stub.log",
        cwd=workdir,
    )
    results: dict[str, Any] = {}
    try:
        stub.start(timeout=30.0)  # the stub answers 200 to any request, GET / included
        payloads = build_payloads("predict", data)
        for generator in args.calibrate_generators:
            result = run_load(
                generator,
                port,
                payloads,
                args.concurrency,
                args.warmup,
                args.duration,
                stub.pgid,
                not args.no_uvloop,
            )
            results[generator] = asdict(result)
            log(
                f"calibration {generator:8s}: {result.req_per_s:9.0f} req/s  "
                f"p50 {fmt_ms(result.p50_ms)} ms  p99 {fmt_ms(result.p99_ms)} ms  "
                f"generator CPU {result.generator_cpu_cores:.2f} cores, "
                f"stub CPU {result.server_cpu_cores or 0:.2f} cores, other processes "
                f"{fmt_cores(result.other_cpu_cores)} cores, errors {result.errors}"
            )
    finally:
        stub.stop()
        with contextlib.suppress(OSError):
            for path in workdir.iterdir():
                path.unlink()
            workdir.rmdir()
    return results


# --------------------------------------------------------------------------------------------
# Optional profiling of the servers with py-spy (--profile DIR)


def find_py_spy() -> str | None:
    import shutil

    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


class Profiler:
    """``py-spy record`` on a server's process tree; SIGINT makes it write its file."""

    def __init__(self, exe: str, pid: int, out: Path) -> None:
        self.exe = exe
        self.pid = pid
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self.proc = subprocess.Popen(
                [
                    self.exe,
                    "record",
                    "--pid",
                    str(self.pid),
                    "--subprocesses",
                    "--nonblocking",
                    "--rate",
                    "100",
                    "--format",
                    "raw",
                    "--output",
                    str(self.out),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )

    def stop(self) -> Path | None:
        with self._lock:
            self._stopped = True
            proc = self.proc
        if proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        return self.out if self.out.is_file() else None


_BOILERPLATE_FRAMES = ("<frozen", "threading.py", "runpy", "concurrent/futures/thread.py")


def summarise_profile(path: Path, top: int = 25) -> list[str]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            if not any(b in frame for b in _BOILERPLATE_FRAMES):
                inclusive[frame] += count
    if not total:
        return ["(no samples)"]
    lines = [f"{total} samples", "", "self time (where the CPU is):"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines += ["", "inclusive time (what it is spent under):"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(2 * top)]
    return lines


def profiled(
    profile_dir: Path | None, label: str, pid: int, delay: float
) -> contextlib.AbstractContextManager[None]:
    """Profile ``pid`` from ``delay`` seconds into the block until its end, if asked."""

    @contextlib.contextmanager
    def scope() -> Any:
        exe = find_py_spy() if profile_dir is not None else None
        if profile_dir is None or exe is None:
            yield
            return
        profile_dir.mkdir(parents=True, exist_ok=True)
        profiler = Profiler(exe, pid, profile_dir / f"{label}.raw.txt")
        timer = threading.Timer(delay, profiler.start)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            written = profiler.stop()
            if written is not None:
                summary = summarise_profile(written)
                summary_path = profile_dir / f"{label}.summary.txt"
                summary_path.write_text("\n".join(summary) + "\n")
                log(f"profile of {label}: {summary_path}")
                for line in summary[3:11]:
                    log(f"    {line.strip()}")

    return scope()


# --------------------------------------------------------------------------------------------
# One server: start, check, load, bulk, stop


@dataclass
class ServerRun:
    server: str
    model: str
    round: int = 1
    started: bool = False
    startup_s: float | None = None
    failure: str | None = None
    single: LoadResult | None = None
    bulk: BulkResult | None = None
    sanity_labels: list[Any] | None = None
    bulk_labels: list[Any] | None = None
    stop: dict[str, Any] = field(default_factory=dict)
    log_problems: list[str] = field(default_factory=list)
    prediction_log: PredictionLogFigures | None = None


@dataclass
class PredictionLogFigures:
    """What our server's prediction log did in one run: rows in the Parquet parts on disk
    after the server stopped, and its dropped/failed counters scraped just before."""

    rows_on_disk: int = 0
    parts: int = 0
    dropped: float | None = None
    failed: float | None = None
    write_errors: float | None = None


def scrape_log_counters(port: int) -> dict[str, float]:
    """The prediction_log_* series of our server's /metrics, summed over labels."""
    request = urllib.request.Request(f"http://{HOST}:{port}/metrics")
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("prediction_log_"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def count_logged_rows(log_dir: Path) -> tuple[int, int]:
    """Rows and parts of the prediction parts under ``log_dir`` (pyarrow reads only footers)."""
    import pyarrow.parquet as pq

    parts = sorted(log_dir.glob("*/predictions/part-*.parquet"))
    return sum(pq.read_metadata(p).num_rows for p in parts), len(parts)


def bench_server(
    kind: str,
    key: str,
    store: Store,
    data: Dataset,
    args: argparse.Namespace,
    workdir: Path,
    round_index: int = 0,
) -> ServerRun:
    ours = kind.startswith("ours")
    protocol = args.ours_protocol if ours else "invocations"
    payloads = build_payloads(protocol, data)
    bulk_protocol = args.bulk_protocol if ours else "invocations"
    bulk_payloads = build_payloads(bulk_protocol, data)
    run = ServerRun(server=kind, model=key, round=round_index + 1)
    tag = f"{key}-{kind}" + (f"-round{round_index + 1}" if args.rounds > 1 else "")
    log_dir: Path | None = None
    if ours:
        # The default body limit (1 MB) is far below a 10,000-row request: raise it so the
        # bulk phase can run. Single-row requests are unaffected.
        biggest = max(len(payloads.bulk), len(bulk_payloads.bulk))
        limit = max(1_000_000, 2 * biggest) if args.bulk_requests else None
        if kind == "ours":
            log_dir = workdir / f"prediction-log-{tag}"
        server = our_server(store, key, workdir, limit, log_dir)
    else:
        server = mlflow_server(store, key, workdir)
    use_uvloop = not args.no_uvloop
    try:
        log(f"[{key}] starting {server.label} on port {server.port}")
        server.start(args.startup_timeout)
        run.started = True
        run.startup_s = server.startup_seconds
        log(f"[{key}] {server.label} ready in {server.startup_seconds:.1f}s")
        run.sanity_labels = sanity_labels(kind, protocol, server.port, payloads, 20)
        if args.duration > 0:
            log(
                f"[{key}] {kind}: single-row load, {args.generator} generator, concurrency "
                f"{args.concurrency}, {args.warmup:g}s warm-up + {args.duration:g}s"
            )
            with profiled(args.profile, f"{tag}-single", server.pgid, args.warmup):
                run.single = run_load(
                    args.generator,
                    server.port,
                    payloads,
                    args.concurrency,
                    args.warmup,
                    args.duration,
                    server.pgid,
                    use_uvloop,
                )
            s = run.single
            log(
                f"[{key}] {kind}: {s.req_per_s:.1f} req/s, p50 {fmt_ms(s.p50_ms)} ms, "
                f"p99 {fmt_ms(s.p99_ms)} ms, errors {s.errors}, server CPU "
                f"{fmt_cores(s.server_cpu_cores)}, generator CPU {fmt_cores(s.generator_cpu_cores)}"
                f", other processes {fmt_cores(s.other_cpu_cores)}"
            )
        if args.bulk_requests > 0:
            if server.proc is None or server.proc.poll() is not None:
                raise ServerFailedError(f"{server.label} exited during the single-row load")
            log(
                f"[{key}] {kind}: bulk, {args.bulk_rows}-row request "
                f"({len(bulk_payloads.bulk) / 1e6:.1f} MB to {bulk_payloads.path}) x "
                f"{args.bulk_requests} "
                f"after {args.bulk_warmup} warm-up"
            )
            with profiled(args.profile, f"{tag}-bulk", server.pgid, 0.0):
                run.bulk, first = run_bulk(
                    server.port,
                    bulk_payloads,
                    args.bulk_rows,
                    args.bulk_warmup,
                    args.bulk_requests,
                    server.pgid,
                    use_uvloop,
                )
            if first is not None:
                run.bulk_labels = labels_from(bulk_protocol, first)
            b = run.bulk
            log(
                f"[{key}] {kind}: bulk {fmt_num(b.rows_per_s)} rows/s, median "
                f"{fmt_ms(b.median_ms)} ms per request, errors {b.errors}"
            )
        if server.proc is None or server.proc.poll() is not None:
            raise ServerFailedError(f"{server.label} exited during the benchmark")
        if log_dir is not None:
            counters = scrape_log_counters(server.port)
            run.prediction_log = PredictionLogFigures(
                dropped=counters.get("prediction_log_records_dropped_total"),
                failed=counters.get("prediction_log_records_failed_total"),
                write_errors=counters.get("prediction_log_write_errors_total"),
            )
    except ServerFailedError as exc:
        run.failure = str(exc)
        log(f"[{key}] FAILED: {exc}")
    finally:
        server.stop()
        run.stop = server.stop_info
        run.log_problems = server.log_problems()[:20]
    if log_dir is not None and run.prediction_log is not None:
        # After the stop: the server writes what it still holds at shutdown.
        figures = run.prediction_log
        figures.rows_on_disk, figures.parts = count_logged_rows(log_dir)
        log(
            f"[{key}] {kind}: prediction log wrote {figures.rows_on_disk:,} rows in "
            f"{figures.parts} parts; dropped {fmt_num(figures.dropped)}, lost to write errors "
            f"{fmt_num(figures.failed)}"
        )
    return run


# --------------------------------------------------------------------------------------------
# Report


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def fmt_num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmt_cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def fmt_ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.1f}x"


def report(facts: dict[str, Any], runs: list[ServerRun], args: argparse.Namespace) -> str:
    lines = []
    versions = facts["versions"]
    lines.append("")
    lines.append("Machine")
    lines.append(
        f"  {facts['nproc']} cores ({facts['cpu_model']}), {facts['memory_gib']} GiB, "
        f"Linux {facts['kernel']}"
    )
    lines.append(
        f"  Python {facts['python']}, mlflow {versions['mlflow']}, scikit-learn "
        f"{versions['scikit-learn']}, numpy {versions['numpy']}, pandas {versions['pandas']}, "
        f"fastapi {versions['fastapi']}, uvicorn {versions['uvicorn']}"
    )
    git = facts["git"]
    lines.append(
        f"  checkout {git['commit']}"
        + (" (serving/ has uncommitted changes)" if git["serving_dirty"] else "")
        + f", serving/ tree sha256 {git['serving_tree_sha256']}"
        + f"; load average at start {facts['loadavg_at_start']}"
    )
    lines.append(
        f"  load: {args.generator} generator, concurrency {args.concurrency}, "
        f"{args.warmup:g}s warm-up + {args.duration:g}s measured; bulk {args.bulk_rows} rows x "
        f"{args.bulk_requests} after {args.bulk_warmup} warm-up; ours is sent "
        + ("/predict JSON records" if args.ours_protocol == "predict" else "/invocations")
        + " single rows and "
        + ("/predict JSON records" if args.bulk_protocol == "predict" else "/invocations")
        + " in bulk, MLflow /invocations dataframe_split; our prediction log "
        + {"on": "on", "off": "off", "both": "off and on (ours-nolog, ours)"}[args.prediction_log]
    )
    busiest = max(
        (
            phase.other_cpu_cores
            for each in runs
            for phase in (each.single, each.bulk)
            if phase is not None and phase.other_cpu_cores is not None
        ),
        default=0.0,
    )
    if busiest > BUSY_OTHER_CORES:
        lines.append(
            f"  WARNING: other processes used up to {busiest:.2f} of the "
            f"{facts['nproc']} cores during a measurement (column 'other'): the figures are "
            "noisy; re-run on a quiet machine before quoting them"
        )
    by_model: dict[str, dict[str, list[ServerRun]]] = {}
    for each in runs:
        by_model.setdefault(each.model, {}).setdefault(each.server, []).append(each)
    for key, servers in by_model.items():
        lines.extend(_model_report(key, servers, args))
    return "\n".join(lines)


def _median(values: Sequence[float | None]) -> float | None:
    present = sorted(v for v in values if v is not None)
    if not present:
        return None
    middle = len(present) // 2
    if len(present) % 2:
        return present[middle]
    return (present[middle - 1] + present[middle]) / 2


def _row_label(kind: str, index: int, count: int) -> str:
    return kind if count == 1 else f"{kind} #{index + 1}"


def _model_report(
    key: str, servers: dict[str, list[ServerRun]], args: argparse.Namespace
) -> list[str]:
    """The single-row and bulk tables of one model; medians over rounds when there are several."""
    lines = ["", f"Model {key}: {MODEL_TITLES[key]}  (single-row requests)"]
    lines.append(
        f"  {'server':13s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>7s} "
        f"{'requests':>9s} {'srv CPU':>8s} {'gen CPU':>8s} {'other':>6s}"
    )
    single: dict[str, dict[str, float | None]] = {}
    for kind in SERVER_KINDS:
        kind_runs = servers.get(kind, [])
        done = [r.single for r in kind_runs if r.single is not None]
        for index, run in enumerate(kind_runs):
            label = _row_label(kind, index, len(kind_runs))
            s = run.single
            if not run.started or s is None:
                state = "failed to start" if not run.started else "failed: " + str(run.failure)
                lines.append(f"  {label:13s} {state[:120]}")
                continue
            lines.append(
                f"  {label:13s} {s.req_per_s:9.1f} {fmt_ms(s.p50_ms):>8s} {fmt_ms(s.p99_ms):>8s} "
                f"{s.errors:7d} {s.completed:9d} {fmt_cores(s.server_cpu_cores):>8s} "
                f"{fmt_cores(s.generator_cpu_cores):>8s} {fmt_cores(s.other_cpu_cores):>6s}"
            )
            if s.warmup_errors:
                lines.append(f"               ! {s.warmup_errors} errors during warm-up")
            if s.stalled:
                lines.append(
                    f"               ! {s.stalled} requests unanswered {DRAIN_GRACE:.0f}s "
                    "after the end"
                )
            if s.error_kinds:
                lines.append(f"               ! errors {s.error_kinds}; e.g. {s.error_sample!r}")
        if done:
            single[kind] = {
                "req_per_s": _median([d.req_per_s for d in done]),
                "p50_ms": _median([d.p50_ms for d in done]),
                "p99_ms": _median([d.p99_ms for d in done]),
                "errors": float(sum(d.errors + d.warmup_errors for d in done)),
                "cpu_per_unit": _median([_cpu_per(d.server_cpu_cores, d.req_per_s) for d in done]),
            }
            if len(kind_runs) > 1:
                m = single[kind]
                lines.append(
                    f"  {kind + ' med':13s} {m['req_per_s'] or 0:9.1f} {fmt_ms(m['p50_ms']):>8s} "
                    f"{fmt_ms(m['p99_ms']):>8s} {int(m['errors'] or 0):7d}"
                )
    target = TARGETS.get(key, {})
    ours, theirs = single.get("ours") or single.get("ours-nolog"), single.get("mlflow")
    if ours and theirs and ours["req_per_s"] and theirs["req_per_s"]:
        ratio = ours["req_per_s"] / theirs["req_per_s"]
        verdict = [
            f"target >= {target['single_ratio']:g}x: "
            + ("met" if ratio >= target["single_ratio"] else "NOT met")
        ]
        if target.get("p99_below_mlflow"):
            p99_ok = (
                ours["p99_ms"] is not None
                and theirs["p99_ms"] is not None
                and ours["p99_ms"] < theirs["p99_ms"]
            )
            verdict.append("p99 below MLflow's: " + ("met" if p99_ok else "NOT met"))
        verdict.append("0 errors: " + ("met" if not ours["errors"] else "NOT met"))
        lines.append(f"  ours/MLflow req/s: {ratio:.1f}x   ({'; '.join(verdict)})")
    lines.extend(_log_cost("req/s", single.get("ours"), single.get("ours-nolog")))

    if not any(r.bulk for kind_runs in servers.values() for r in kind_runs):
        return lines + _notes(servers)
    lines.append(f"  bulk: one {args.bulk_rows}-row request, repeated")
    lines.append(
        f"  {'server':13s} {'rows/s':>10s} {'median ms':>10s} {'errors':>7s} {'body MB':>8s} "
        f"{'srv CPU':>8s} {'other':>6s}"
    )
    bulk: dict[str, float | None] = {}
    bulk_cpu: dict[str, float | None] = {}
    for kind in SERVER_KINDS:
        kind_runs = servers.get(kind, [])
        done_bulk = [r.bulk for r in kind_runs if r.bulk is not None]
        for index, run in enumerate(kind_runs):
            b = run.bulk
            if b is None:
                continue
            label = _row_label(kind, index, len(kind_runs))
            lines.append(
                f"  {label:13s} {fmt_num(b.rows_per_s):>10s} {fmt_ms(b.median_ms):>10s} "
                f"{b.errors:7d} {b.body_bytes / 1e6:8.1f} {fmt_cores(b.server_cpu_cores):>8s} "
                f"{fmt_cores(b.other_cpu_cores):>6s}"
            )
            if b.error_sample:
                lines.append(f"               ! {b.error_sample}")
        if done_bulk:
            bulk[kind] = _median([b.rows_per_s for b in done_bulk])
            bulk_cpu[kind] = _median(
                [_cpu_per(b.server_cpu_cores, b.rows_per_s) for b in done_bulk]
            )
            if len(kind_runs) > 1:
                lines.append(f"  {kind + ' med':13s} {fmt_num(bulk[kind]):>10s}")
    ours_rows, their_rows = bulk.get("ours") or bulk.get("ours-nolog"), bulk.get("mlflow")
    if ours_rows and their_rows:
        ratio = ours_rows / their_rows
        goal = target.get("bulk_ratio", 2.0)
        lines.append(
            f"  ours/MLflow rows/s: {ratio:.1f}x   "
            f"(target >= {goal:g}x: {'met' if ratio >= goal else 'NOT met'})"
        )
    lines.extend(
        _log_cost(
            "rows/s",
            {"req_per_s": bulk.get("ours"), "cpu_per_unit": bulk_cpu.get("ours")}
            if "ours" in bulk
            else None,
            {"req_per_s": bulk.get("ours-nolog"), "cpu_per_unit": bulk_cpu.get("ours-nolog")}
            if "ours-nolog" in bulk
            else None,
        )
    )

    first_ours = next(iter(servers.get("ours", []) or servers.get("ours-nolog", [])), None)
    first_theirs = next(iter(servers.get("mlflow", [])), None)
    if first_ours and first_theirs:
        agree = []
        if first_ours.sanity_labels is not None and first_theirs.sanity_labels is not None:
            same = first_ours.sanity_labels == first_theirs.sanity_labels
            agree.append(f"single-row labels {'identical' if same else 'DIFFER'}")
        if first_ours.bulk_labels is not None and first_theirs.bulk_labels is not None:
            same = first_ours.bulk_labels == first_theirs.bulk_labels
            agree.append(f"bulk labels {'identical' if same else 'DIFFER'}")
        if agree:
            lines.append("  answers: " + ", ".join(agree))
    return lines + _notes(servers)


def _log_cost(
    unit: str, on: dict[str, float | None] | None, off: dict[str, float | None] | None
) -> list[str]:
    """The prediction log's cost: throughput with the log on over throughput with it off."""
    if not on or not off or not on.get("req_per_s") or not off.get("req_per_s"):
        return []
    ratio = (on["req_per_s"] or 0.0) / (off["req_per_s"] or 1.0)
    verdict = "met" if ratio >= 1 - LOG_COST_LIMIT else "NOT met"
    lines = [
        f"  prediction log on/off {unit}: {ratio:.3f} ({(ratio - 1) * 100:+.1f}%; "
        f"target: at most {LOG_COST_LIMIT:.0%} slower: {verdict})"
    ]
    cpu_on, cpu_off = on.get("cpu_per_unit"), off.get("cpu_per_unit")
    if cpu_on and cpu_off:
        # Server CPU per request (or row) moves less than throughput with other load around.
        per = "request" if unit == "req/s" else "row"
        lines.append(
            f"  prediction log on/off server CPU per {per}: {cpu_on / cpu_off:.3f} "
            f"({cpu_on * 1e6:.1f} vs {cpu_off * 1e6:.1f} us)"
        )
    return lines


def _cpu_per(cores: float | None, rate: float | None) -> float | None:
    """Server CPU seconds per request (or row): cores busy / completions per second."""
    return None if not cores or not rate else cores / rate


def _notes(servers: dict[str, list[ServerRun]]) -> list[str]:
    """Start-up and stop times, log problems and failures of each server run."""
    lines = []
    for kind in SERVER_KINDS:
        for index, run in enumerate(servers.get(kind, [])):
            label = _row_label(kind, index, len(servers[kind]))
            notes = []
            if run.startup_s is not None:
                notes.append(f"ready in {run.startup_s:.1f}s")
            if run.stop:
                notes.append(
                    f"stopped in {run.stop['seconds']:.1f}s"
                    + (" (needed SIGKILL)" if run.stop["needed_sigkill"] else "")
                )
            if run.log_problems:
                notes.append(f"{len(run.log_problems)} error line(s) in its log")
            figures = run.prediction_log
            if figures is not None:
                notes.append(
                    f"prediction log {figures.rows_on_disk:,} rows in {figures.parts} parts, "
                    f"dropped {fmt_num(figures.dropped)}, lost {fmt_num(figures.failed)}"
                )
            if notes:
                lines.append(f"  {label}: " + ", ".join(notes))
            for problem in run.log_problems[:5]:
                lines.append(f"    | {problem[:200]}")
            if run.failure:
                lines.append(f"  {label} FAILED: {run.failure.splitlines()[0]}")
    return lines


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/serving.py",
        description="Benchmark `python -m serving` against `mlflow models serve` on the same "
        "registered model versions (throwaway store in a temp dir).",
    )
    parser.add_argument("--duration", type=float, help="measured seconds per server (15)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds before measuring (5)")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop workers (32)")
    parser.add_argument("--bulk-rows", type=int, default=10_000, help="rows per bulk request")
    parser.add_argument("--bulk-requests", type=int, help="timed bulk requests per server (10)")
    parser.add_argument("--bulk-warmup", type=int, help="untimed bulk requests first (2)")
    parser.add_argument("--models", default="rf,lr", help="comma list of rf, lr (rf,lr)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the ours-then-MLflow pair this many times per model and compare medians "
        "(for a machine with other load; 1)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short run to check it works: 3s + 1s warm-up, 2 bulk requests",
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--ours-only", action="store_true", help="benchmark only our server")
    only.add_argument("--mlflow-only", action="store_true", help="benchmark only MLflow's")
    parser.add_argument(
        "--generator",
        choices=("raw", "httpx", "threads"),
        default="raw",
        help="load generator: raw asyncio streams (default), httpx.AsyncClient, or threads "
        "with http.client",
    )
    parser.add_argument(
        "--ours-protocol",
        choices=("predict", "invocations"),
        default="predict",
        help="what our server is sent: POST /predict with JSON records (default), or the same "
        "/invocations dataframe_split bytes as MLflow (once our server has that route)",
    )
    parser.add_argument(
        "--bulk-protocol",
        choices=("predict", "invocations"),
        default="invocations",
        help="what our server is sent in the bulk phase: the same /invocations dataframe_split "
        "bytes as MLflow (default: like for like), or /predict JSON records (3.4x larger body)",
    )
    parser.add_argument(
        "--prediction-log",
        choices=("on", "off", "both"),
        default="on",
        help="our server's prediction log: on (its default, row 'ours'), off (row "
        "'ours-nolog'), or both on the same model and load, alternating which goes first in "
        "each round, with the on/off throughput ratio (on)",
    )
    parser.add_argument(
        "--no-uvloop", action="store_true", help="use asyncio's default loop in the generator"
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="only measure each generator against a do-nothing stub server, then exit",
    )
    parser.add_argument(
        "--calibrate-generators", default="raw,httpx,threads", help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=STARTUP_TIMEOUT, help="seconds per server start"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record each server with py-spy (if installed) during the measured single-row "
        "window and the bulk phase; writes raw stacks and a summary per phase to DIR. "
        "py-spy costs CPU: do not quote the figures of a profiled run",
    )
    parser.add_argument("--keep-store", action="store_true", help="keep the temp dir (and logs)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    parser.add_argument("--stub-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    if args.duration is None:
        args.duration = 3.0 if quick else 15.0
    if args.warmup is None:
        args.warmup = 1.0 if quick else 5.0
    if args.bulk_requests is None:
        args.bulk_requests = 2 if quick else 10
    if args.bulk_warmup is None:
        args.bulk_warmup = 1 if quick else 2
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODEL_TITLES]
    if unknown or not args.models:
        parser.error(f"--models takes a comma list of {', '.join(MODEL_TITLES)}")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.concurrency < 1 or args.duration < 0 or args.warmup < 0 or args.bulk_rows < 1:
        parser.error("--concurrency and --bulk-rows must be >= 1, durations >= 0")
    args.calibrate_generators = [g for g in args.calibrate_generators.split(",") if g]
    return args


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stub_server is not None:
        return stub_main(args.stub_server)
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    facts = machine_facts()
    log(
        f"machine: {facts['nproc']} cores, {facts['cpu_model']}, Python {facts['python']}, "
        f"mlflow {facts['versions']['mlflow']}, scikit-learn {facts['versions']['scikit-learn']}"
    )
    X_train, y_train, _, data = load_dataset(args.bulk_rows)
    if args.calibrate:
        results = calibrate(args, data)
        if args.json:
            args.json.write_text(json.dumps({"machine": facts, "calibration": results}, indent=2))
        return 0

    ours_kinds = OURS_KINDS[args.prediction_log]
    kinds = [*ours_kinds, "mlflow"]
    if args.ours_only or args.mlflow_only:
        kinds = ours_kinds if args.ours_only else ["mlflow"]
    runs: list[ServerRun] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    try:
        log(f"throwaway MLflow store in {tmp}")
        store = build_store(tmp, args.models, X_train, y_train)
        for key in args.models:
            for round_index in range(args.rounds):
                if args.rounds > 1:
                    log(f"[{key}] round {round_index + 1} of {args.rounds}")
                # Log off and on take turns at going first, so a drift in the machine's other
                # load over a round does not always favour the same one.
                order = list(kinds)
                if round_index % 2 and len(ours_kinds) == 2:
                    order[:2] = order[1::-1]
                for kind in order:
                    runs.append(bench_server(kind, key, store, data, args, tmp, round_index))
    finally:
        _stop_all_servers()
        if args.keep_store:
            log(f"kept {tmp} (store and server logs)")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)

    print(report(facts, runs, args), flush=True)
    if args.json:
        payload = {
            "machine": facts,
            "settings": {k: v for k, v in vars(args).items() if k not in ("json", "stub_server")},
            "runs": [asdict(run) for run in runs],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=str))
        log(f"wrote {args.json}")
    failed = [run for run in runs if not run.started or run.failure]
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        _stop_all_servers()
        print("interrupted: servers stopped, temporary store removed", file=sys.stderr)
        sys.exit(130)
