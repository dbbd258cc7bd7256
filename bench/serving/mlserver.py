"""MLServer (Seldon) as the Open Inference Protocol peer: the same registered version, served
by ``mlserver_mlflow`` with adaptive batching, from the ``bench`` extra installed into its own
environment ``.venv-bench`` (it conflicts with the ``dev`` extra)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from bench.serving.console import log
from bench.serving.machine import REPO_ROOT
from bench.serving.servers import ServerProcess, _base_env
from bench.serving.store import Store
from bench.serving.wire import HOST, free_port

BENCH_ENV = REPO_ROOT / ".venv-bench"
MAX_BATCH_SIZE = 64
MAX_BATCH_TIME = 0.005
"""MLServer's adaptive batching: at most 64 requests merged, waiting at most 5 ms."""


def ensure_bench_env() -> Path:
    """The ``mlserver`` executable, installing the ``bench`` extra (locked) when missing."""
    executable = BENCH_ENV / "bin" / "mlserver"
    if not executable.exists():
        log(f"installing the bench extra (mlserver, mlserver-mlflow) into {BENCH_ENV}")
        uv = REPO_ROOT / ".venv" / "bin" / "uv"
        subprocess.run(
            [str(uv), "sync", "--locked", "--extra", "bench", "--no-install-project"],
            cwd=REPO_ROOT,
            env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(BENCH_ENV)},
            check=True,
        )
    return executable


def mlserver_server(store: Store, key: str, workdir: Path) -> ServerProcess:
    """MLServer serving version 1 of the registered model, its artifacts downloaded first."""
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    executable = ensure_bench_env()
    name = store.registered[key]
    client = MlflowClient(tracking_uri=store.tracking_uri, registry_uri=store.tracking_uri)
    source = client.get_model_version_download_uri(name, "1")
    model_dir = download_artifacts(
        artifact_uri=source, dst_path=str(workdir / f"mlserver-{key}-model"),
        tracking_uri=store.tracking_uri,
    )  # fmt: skip
    root = workdir / f"mlserver-{key}"
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "model-settings.json").write_text(
        json.dumps(
            {
                "name": name,
                "implementation": "mlserver_mlflow.MLflowRuntime",
                "parameters": {"uri": model_dir},
                "max_batch_size": MAX_BATCH_SIZE,
                "max_batch_time": MAX_BATCH_TIME,
            }
        )
    )
    port = free_port()
    # Inference in the server process (as MLServer's docs suggest for small models): its
    # separate inference pool worker did not start here, and the extra hop only adds latency.
    settings = {
        "host": HOST,
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": 0,
    }
    (root / "settings.json").write_text(json.dumps(settings))
    env = _base_env()
    env["PATH"] = str(executable.parent) + os.pathsep + env["PATH"]
    # MLflow 3.17 refuses to load sklearn (even skops) models without it.
    env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "true"
    return ServerProcess(
        label=f"mlserver ({key}, batching {MAX_BATCH_SIZE} / {MAX_BATCH_TIME * 1000:g} ms)",
        argv=[str(executable), "start", str(root)],
        env=env,
        port=port,
        ready_path=f"/v2/models/{name}/ready",
        log_path=workdir / f"{key}-mlserver-{port}.log",
        cwd=workdir,
    )
