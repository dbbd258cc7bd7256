"""Team scale, for real: PostgreSQL, `deploy/tracking-server.sh` and processes that talk HTTP.

One tracking server serves the whole session (its start-up is the slowest part). It stores in a
database of its own, created for this run and dropped at the end, and keeps artifacts in a
temporary directory through `--serve-artifacts`. Each test module uses its own registered
model names so that the modules do not depend on one another's order.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.factories import iris_config
from tests.team.harness import (
    PG_HOST,
    PG_PORT,
    free_port,
    start_tracking_server,
    stop_group,
)

PG_ADMIN = {"host": PG_HOST, "port": PG_PORT, "user": "postgres", "dbname": "test"}
SERVING_START_TIMEOUT = 90.0


def _postgres_ready() -> bool:
    if shutil.which("pg_isready") is None:
        return _can_connect()
    probe = subprocess.run(
        ["pg_isready", "-h", PG_HOST, "-p", str(PG_PORT)], capture_output=True, check=False
    )
    return probe.returncode == 0


def _psycopg2() -> ModuleType:
    try:
        import psycopg2
    except ImportError:
        pytest.fail(
            "psycopg2 is not installed: the team tests and the tracking server need it "
            "(pip install -e '.[team]')"
        )
    return psycopg2


def _can_connect() -> bool:
    psycopg2 = _psycopg2()

    try:
        psycopg2.connect(connect_timeout=3, **PG_ADMIN).close()
    except psycopg2.OperationalError:
        return False
    return True


def _ensure_postgres() -> None:
    """Start the machine's PostgreSQL cluster when it is down; fail (never skip) if it cannot."""
    _psycopg2()
    if _postgres_ready():
        return
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not versions or shutil.which("pg_ctlcluster") is None:
        pytest.fail(
            f"PostgreSQL is not running on {PG_HOST}:{PG_PORT} and no cluster to start was found "
            "(/etc/postgresql, pg_ctlcluster); start it, e.g. `.ci/run` does"
        )
    started = subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"],
        capture_output=True,
        text=True,
        check=False,
    )
    deadline = time.monotonic() + 30
    while not _postgres_ready():
        if time.monotonic() > deadline:
            pytest.fail(
                f"PostgreSQL did not come up on {PG_HOST}:{PG_PORT} after pg_ctlcluster start "
                f"(exit {started.returncode}): {started.stderr.strip()[-500:]}"
            )
        time.sleep(0.5)


def _admin_execute(statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    connection = _psycopg2().connect(connect_timeout=10, **PG_ADMIN)
    connection.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return list(cursor.fetchall()) if cursor.description else []
    finally:
        connection.close()


def _query_database(database: str, statement: str) -> list[tuple[Any, ...]]:
    connection = _psycopg2().connect(connect_timeout=10, **{**PG_ADMIN, "dbname": database})
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
            return list(cursor.fetchall())
    finally:
        connection.close()


@dataclass(frozen=True)
class TrackingServer:
    uri: str
    database: str
    artifacts: Path
    workdir: Path
    log: Path

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        """Read the server's own database (tests only: clients never touch it)."""
        return _query_database(self.database, statement)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database name unique to this test run; dropped (with its connections) at the end."""
    _ensure_postgres()
    name = f"mlops_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def tracking_server(
    postgres_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrackingServer]:
    """`deploy/tracking-server.sh` on the fresh database (which the script creates)."""
    workdir = tmp_path_factory.mktemp("tracking-server")
    port = free_port()
    server = TrackingServer(
        uri=f"http://127.0.0.1:{port}",
        database=postgres_database,
        artifacts=workdir / "artifacts",
        workdir=workdir,
        log=workdir / "server.log",
    )
    process = start_tracking_server(
        database=postgres_database,
        artifacts=server.artifacts,
        workdir=workdir,
        log=server.log,
        port=port,
    )
    try:
        yield server
    finally:
        stop_group(process)


@dataclass(frozen=True)
class Team:
    """What a team member has: the server's URI, and the pipeline and serving commands."""

    server: TrackingServer
    workdir: Path

    @property
    def uri(self) -> str:
        return self.server.uri

    def env(self) -> dict[str, str]:
        """A process environment in which only MLFLOW_TRACKING_URI points at a store."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SERVING_"))}
        env.update(
            MLFLOW_TRACKING_URI=self.uri,
            MLFLOW_DISABLE_TELEMETRY="true",
            MPLBACKEND="Agg",
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        )
        return env

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def config(self, name: str, **sections: Any) -> Path:
        """A small, fast iris config whose experiment and registered model are `name`."""
        config = iris_config(name, **sections)
        path = self.workdir / f"{name}-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start(self, *args: str) -> subprocess.Popen[str]:
        """`python -m pipeline <args>` as a background process."""
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", *args],
            cwd=self.workdir,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`python -m pipeline <args>`, waited for."""
        process = self.start(*args)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    @contextmanager
    def replicas(
        self, model_name: str, count: int = 1, poll_seconds: float = 1.0
    ) -> Iterator[list[Replica]]:
        """`count` real `python -m serving` processes on free ports, each ready to answer."""
        replicas: list[Replica] = []
        try:
            for _ in range(count):
                replicas.append(self._start_replica(model_name, poll_seconds))
            for replica in replicas:
                _wait_ready(replica)
            yield replicas
        finally:
            for replica in replicas:
                if replica.process.poll() is None:
                    replica.process.terminate()
            for replica in replicas:
                try:
                    replica.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    replica.process.kill()
                    replica.process.wait(timeout=10)

    def _start_replica(self, model_name: str, poll_seconds: float) -> Replica:
        port = free_port()
        home = self.workdir / f"replica-{port}"
        home.mkdir()
        env = {
            **self.env(),
            "SERVING_TRACKING_URI": self.uri,
            "SERVING_MODEL_NAME": model_name,
            "SERVING_HOST": "127.0.0.1",
            "SERVING_PORT": str(port),
            "SERVING_POLL_SECONDS": str(poll_seconds),
        }
        log = home / "serving.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "serving"],
                cwd=home,  # its prediction log lands here, never in the checkout
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return Replica(f"http://127.0.0.1:{port}", process, log)


@dataclass(frozen=True)
class Replica:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def _wait_ready(replica: Replica) -> None:
    deadline = time.monotonic() + SERVING_START_TIMEOUT
    while True:
        if replica.process.poll() is not None:
            pytest.fail(
                f"serving replica {replica.url} exited with {replica.process.returncode}:\n"
                + replica.log.read_text(errors="replace")[-3000:]
            )
        try:
            if httpx.get(f"{replica.url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(
                f"serving replica {replica.url} was not ready within {SERVING_START_TIMEOUT:.0f}s:"
                "\n" + replica.log.read_text(errors="replace")[-3000:]
            )
        time.sleep(0.3)


@pytest.fixture(scope="session")
def team(tracking_server: TrackingServer, tmp_path_factory: pytest.TempPathFactory) -> Team:
    return Team(tracking_server, tmp_path_factory.mktemp("team"))


@dataclass(frozen=True)
class TrainedVersion:
    name: str
    version: str
    source: str
    run_id: str
    stdout: str


@pytest.fixture(scope="session")
def trained(team: Team) -> TrainedVersion:
    """`python -m pipeline main` once against the server: version 1 of `iris-team`."""
    result = team.run("main", "--config", str(team.config("iris-team")))
    assert result.returncode == 0, result.stderr[-3000:]
    version = team.client().get_model_version("iris-team", "1")
    assert version.run_id is not None
    return TrainedVersion("iris-team", "1", str(version.source), version.run_id, result.stdout)


@pytest.fixture(scope="session")
def copies_of(team: Team, trained: TrainedVersion) -> Callable[[str, int], list[str]]:
    """Register `count` versions of a new model, each the trained model: real, and cheap.

    The source `models:/<name>/<version>` makes the server copy the lineage (run, logged model).
    """

    def make(name: str, count: int) -> list[str]:
        client = team.client()
        client.create_registered_model(name, tags={"task": "classification"})
        source = f"models:/{trained.name}/{trained.version}"
        return [str(client.create_model_version(name, source).version) for _ in range(count)]

    return make
