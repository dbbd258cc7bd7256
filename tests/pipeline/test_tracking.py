"""First use of a store: created and migrated once, however many processes start on it; and the
runs-table view the store keeps for the MLflow UI."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.store.db.utils import _get_latest_schema_revision
from mlflow.tracking import MlflowClient

from pipeline.errors import PipelineError
from pipeline.tracking import STATUS_TAG, prepare_sqlite_store, publish_runs_table_view

REPO_ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 4
CREATING = "Creating initial MLflow database tables"


@dataclass(frozen=True)
class Race:
    root: Path
    results: tuple[subprocess.CompletedProcess[str], ...]


def _pipeline_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    # The embedded default, sqlite:///mlflow.db in the working directory, is what is raced.
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_REGISTRY_URI", None)
    return env


@pytest.fixture(scope="module")
def race(tmp_path_factory: pytest.TempPathFactory) -> Race:
    """Several real pipelines started at the same moment on a directory with no store."""
    root = tmp_path_factory.mktemp("race")
    command = [sys.executable, "-m", "pipeline", "history", "--name", "x"]
    # All started before any is waited for: each spends ~1.5 s importing MLflow, so they reach
    # the empty store together, inside the seconds the schema takes to create.
    processes = [
        subprocess.Popen(
            command,
            cwd=root,
            env=_pipeline_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    return Race(root, tuple(results))


@contextlib.contextmanager
def _held(lock: Path) -> Iterator[None]:
    """Hold the store lock as another process creating the store would."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _revision(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        ((revision,),) = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    return str(revision)


def _store_copy(race: Race, tmp_path: Path) -> Path:
    db = tmp_path / "mlflow.db"
    shutil.copyfile(race.root / "mlflow.db", db)
    return db


@pytest.mark.process
def test_pipelines_started_at_once_on_a_new_store_all_answer_without_a_traceback(
    race: Race,
) -> None:
    for done in race.results:
        assert "Traceback" not in done.stderr
        assert done.returncode == 4, done.stderr
        assert "registered model 'x' does not exist" in done.stderr


@pytest.mark.process
def test_pipelines_started_at_once_migrate_the_new_store_exactly_once(race: Race) -> None:
    assert sum(CREATING in done.stderr for done in race.results) == 1
    assert _revision(race.root / "mlflow.db") == _get_latest_schema_revision()
    assert (race.root / "mlflow.db.lock").is_file()


@pytest.mark.process
def test_a_store_at_the_current_schema_is_used_without_taking_the_lock(
    race: Race, tmp_path: Path
) -> None:
    db = _store_copy(race, tmp_path)
    with _held(tmp_path / "mlflow.db.lock"):
        prepare_sqlite_store(f"sqlite:///{db}", timeout=0)


def test_a_store_another_process_keeps_creating_ends_in_one_line_naming_the_lock(
    tmp_path: Path,
) -> None:
    lock = tmp_path / "mlflow.db.lock"
    with _held(lock), pytest.raises(PipelineError) as raised:
        prepare_sqlite_store(f"sqlite:///{tmp_path / 'mlflow.db'}", timeout=0)
    message = str(raised.value)
    assert "\n" not in message
    assert f"it holds {lock}" in message and "then retry" in message
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.process
def test_a_store_at_an_older_schema_asks_for_mlflow_db_upgrade(race: Race, tmp_path: Path) -> None:
    db = _store_copy(race, tmp_path)
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.execute("UPDATE alembic_version SET version_num = 'an-older-revision'")
    with pytest.raises(MlflowException, match="mlflow db upgrade"):
        prepare_sqlite_store(f"sqlite:///{db}")
    assert _revision(db) == "an-older-revision"


def test_a_file_that_is_not_a_store_fails_with_one_line_saying_what_to_do(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    db.write_text("not a database\n" * 100)
    with pytest.raises(PipelineError) as raised:
        prepare_sqlite_store(f"sqlite:///{db}")
    message = str(raised.value)
    assert "\n" not in message
    assert f"Cannot open the MLflow store {db} (file is not a database)" in message
    assert "move the file aside" in message


def test_a_lock_that_cannot_be_created_fails_with_one_line_saying_what_to_do(
    tmp_path: Path,
) -> None:
    (tmp_path / "not-a-directory").write_text("")
    with pytest.raises(PipelineError) as raised:
        prepare_sqlite_store(f"sqlite:///{tmp_path / 'not-a-directory' / 'mlflow.db'}")
    assert "Cannot create the store lock" in str(raised.value)
    assert "is a directory you can write, or set MLFLOW_TRACKING_URI" in str(raised.value)


@pytest.mark.parametrize(
    "uri", ["http://127.0.0.1:9", "postgresql://user@127.0.0.1:9/mlflow", "sqlite:///:memory:"]
)
def test_stores_that_are_not_sqlite_files_are_left_to_migrate_themselves(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    prepare_sqlite_store(uri, timeout=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.process
def test_help_answers_without_opening_or_creating_a_store(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--help"],
        cwd=tmp_path,
        env=_pipeline_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_runs_table_view_shows_status_estimator_and_held_out_metrics_first(
    mlflow_store: str,
) -> None:
    client = MlflowClient()
    experiment = client.create_experiment("view")
    metrics = ["test_accuracy", "test_f1_macro", "test_roc_auc", "test_log_loss", "cv_f1_mean"]
    publish_runs_table_view(experiment, ["estimator", "model.C"], metrics)
    publish_runs_table_view(experiment, ["estimator", "model.max_depth"], metrics)
    state = json.loads(client.get_experiment(experiment).tags["mlflow.sharedViewState.pipeline"])
    columns = state["selectedColumns"]
    assert columns[:6] == [
        f"tags.`{STATUS_TAG}`",
        "params.`estimator`",
        *(f"metrics.`{name}`" for name in metrics[:4]),
    ]
    # Both candidates' parameters stay; no column twice; the order is the one shown.
    assert {"params.`model.C`", "params.`model.max_depth`", "metrics.`cv_f1_mean`"} <= set(columns)
    assert len(columns) == len(set(columns)) and state["columnOrder"] == columns
    # What fits beside Run Name and Created at 1,400 px (tests/e2e/test_ui_browser.py looks).
    assert set(state["columnWidths"]) == set(columns[:6])
    assert sum(state["columnWidths"].values()) <= 720
