"""Where runs and models are stored, and the lineage facts every run records."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import getpass
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import sqlite3
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.contracts import STORE_LOCK_SUFFIX
from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
STORE_LOCK_TIMEOUT_SECONDS = 300.0
"""How long to wait for a process creating the store: it takes seconds, and a holder that
dies releases the lock at once, so only a stuck one makes this run out."""
_LOCK_POLL_SECONDS = 0.1


def configure_tracking() -> str:
    """Point MLflow at `MLFLOW_TRACKING_URI`, or at the embedded SQLite store. Entry points only.

    A SQLite store is created and migrated here, once, however many processes start on it at
    the same moment (see `prepare_sqlite_store`).
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    mlflow.set_tracking_uri(uri)
    logger.debug("Tracking URI: %s", uri)
    # The registry follows the tracking URI unless MLFLOW_REGISTRY_URI says otherwise.
    registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or uri
    for store_uri in dict.fromkeys((uri, registry_uri)):
        prepare_sqlite_store(store_uri)
    return uri


def launcher_run_in(launcher_id: str | None, experiment_name: str) -> str | None:
    """The run `mlflow run` created, when it is in `experiment_name`: the command logs into it.

    `mlflow run` puts its run in the experiment named on its own command line (`Default`
    without one); a command's runs belong in the config's experiments. When they differ, the
    command makes its own run and leaves a note on the launcher run (`point_launcher_to`).
    """
    if launcher_id is None:
        return None
    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None or client.get_run(launcher_id).info.experiment_id != (
        experiment.experiment_id
    ):
        return None
    return launcher_id


def point_launcher_to(launcher_id: str | None, run_id: str | None) -> None:
    """A note on the run `mlflow run` created, saying where this invocation's own run is."""
    if launcher_id is None or run_id is None or run_id == launcher_id:
        return
    client = MlflowClient()
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id).name
    client.set_tag(
        launcher_id,
        "mlflow.note.content",
        f"This invocation's run is {run.info.run_name or run_id} ({run_id}) "
        f"in experiment '{experiment}'.",
    )


def prepare_sqlite_store(uri: str, timeout: float = STORE_LOCK_TIMEOUT_SECONDS) -> None:
    """Make sure a SQLite store exists at MLflow's current schema, creating it at most once.

    MLflow creates and migrates a SQLite store the first time a process opens it, with no
    guard: several processes starting on a new store all run the migrations and all but one
    die in alembic ("table ... already exists"). Here the first process does it under an
    exclusive lock on `<db>.lock`; the others wait for the lock, then find the store ready.
    A store already at the current schema is recognised without taking the lock. Any other
    URI is left alone: a tracking server or a server database migrates itself.
    """
    db = _sqlite_path(uri)
    if db is None or _stored_revision(db) == _head_revision():
        return
    lock = db.with_name(db.name + STORE_LOCK_SUFFIX)
    with _exclusive_lock(lock, db, timeout):
        # Whoever held the lock before us may have just finished the job.
        if _stored_revision(db) != _head_revision():
            _open_store(uri, db)


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI; None for other URIs and in-memory databases."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _stored_revision(db: Path) -> str | None:
    """The store's alembic revision, read with the standard library; None when unreadable."""
    if not db.is_file():
        return None
    try:
        # Read-only: this must never create or change the file. A store busy for longer than
        # the timeout reads as unknown, which costs only a turn through the lock.
        with contextlib.closing(
            sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        ) as connection:
            rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:
        return None
    return str(rows[0][0]) if len(rows) == 1 else None


@functools.cache
def _head_revision() -> str:
    # The revision MLflow itself demands when it opens a store (`_verify_schema`), so a store
    # that passes here never makes MLflow migrate.
    from mlflow.store.db.utils import _get_latest_schema_revision

    return str(_get_latest_schema_revision())


@contextlib.contextmanager
def _exclusive_lock(lock: Path, db: Path, timeout: float) -> Iterator[None]:
    """Hold an flock on `lock`; the kernel drops it when the holder exits, so none goes stale."""
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise PipelineError(
            f"Cannot create the store lock {lock} ({exc.strerror}): check that {lock.parent} "
            "is a directory you can write, or set MLFLOW_TRACKING_URI to another store"
        ) from exc
    try:
        _acquire(fd, lock, db, timeout)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _acquire(fd: int, lock: Path, db: Path, timeout: float) -> None:
    # Polled rather than blocking so that a stuck holder ends in a message, not a hang.
    deadline = time.monotonic() + timeout
    waiting = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if time.monotonic() >= deadline:
            raise PipelineError(
                f"Another process has been creating the MLflow store {db} for over "
                f"{timeout:g} s (it holds {lock}): let it finish or stop it, then retry"
            )
        if not waiting:
            logger.info("Waiting for another process to create the MLflow store %s", db)
            waiting = True
        time.sleep(_LOCK_POLL_SECONDS)


def _open_store(uri: str, db: Path) -> None:
    """Open the tracking and registry stores, which creates and migrates the file if needed."""
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        # MLflow caches a store per URI, so the commands that follow reuse these: opening them
        # here costs nothing extra.
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_registered_models(max_results=1)
    except MlflowException:
        raise  # its message already says what to do (e.g. run `mlflow db upgrade`)
    except (SQLAlchemyError, CommandError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise PipelineError(
            f"Cannot open the MLflow store {db} ({reason}): move the file aside to start a "
            "new store, or set MLFLOW_TRACKING_URI to another one"
        ) from exc


def git_state(path: Path | None = None) -> tuple[str, str]:
    """(commit, dirty) of the checkout holding the pipeline's code, or "unknown" outside one."""
    # The code that trains, not the directory a command was started from, is what lineage means.
    cwd = path or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown", "unknown"
    return commit, str(bool(status)).lower()


LIBRARIES = ("mlflow", "scikit-learn", "skops", "numpy", "scipy", "pandas", "pyarrow")


def library_versions() -> dict[str, str]:
    """The versions that decide what a trained model computes, for lineage and caching."""
    versions = {"python": platform.python_version()}
    versions.update({name: importlib.metadata.version(name) for name in LIBRARIES})
    return versions


def code_hash() -> str:
    """Hash of the pipeline's own source: changes whenever the code that trains changes.

    Unlike the git commit it also covers uncommitted edits, so a dirty tree never reuses a
    cached result computed by other code.
    """
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def current_actor() -> str:
    """Who is acting, for the promotion history: CI's actor when set, else the OS user."""
    for variable in ("MLOPS_ACTOR", "GITHUB_ACTOR", "USER"):
        if os.environ.get(variable):
            return os.environ[variable]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


RUNS_TABLE_VIEW = "pipeline"
_SHARED_VIEW_TAG = "mlflow.sharedViewState."
STATUS_TAG = "pipeline.status"
"""A run tag the runs table shows as its first column: which run serves in Production, and
which run of `mlflow run` was a cache hit (it trained nothing)."""
# Widths (px) that fit the columns beside Run Name and Created in a 1,400 px window.
_WIDTHS = {"tags": 140, "params": 190, "metrics": 95}


def publish_runs_table_view(
    experiment_id: str, params: Iterable[str], metrics: Iterable[str]
) -> None:
    """Save a runs-table view that shows the headline params and metrics as columns.

    The MLflow UI hides every param and metric column until someone picks them; a shared view
    (an experiment tag the UI reads for `?viewStateShareKey=`) makes the link printed by
    `make ui` open with candidates compared side by side: the status tag (Production, cache
    hit), the estimator and the held-out metrics first and narrow enough to be seen without
    scrolling at 1,400 px, the rest after them. The sort stays by creation time, the one
    order in which the UI nests trials under their parent. Columns accumulate across runs, so
    candidates with different estimators all keep their parameters visible.
    """
    client = MlflowClient()
    tag = f"{_SHARED_VIEW_TAG}{RUNS_TABLE_VIEW}"
    existing = client.get_experiment(experiment_id).tags.get(tag)
    try:
        columns = list(json.loads(existing)["selectedColumns"]) if existing else []
    except (ValueError, KeyError, TypeError):
        columns = []
    params, metrics = list(params), list(metrics)
    first = [
        f"tags.`{STATUS_TAG}`",
        "params.`estimator`",
        *(f"metrics.`{m}`" for m in metrics if m.startswith("test_")),
    ]
    wanted = [
        *first,
        *(f"metrics.`{m}`" for m in metrics),
        *(f"params.`{p}`" for p in params),
    ]
    columns = [c for c in columns if c.startswith(("params.", "metrics.", "tags."))]
    columns = [*first, *(c for c in [*columns, *wanted] if c not in first)]
    columns = list(dict.fromkeys(columns))
    widths = {c: _WIDTHS[c.split(".", 1)[0]] for c in first}
    state = {"selectedColumns": columns, "columnOrder": columns, "columnWidths": widths}
    try:
        client.set_experiment_tag(experiment_id, tag, json.dumps(state))
    except MlflowException as exc:
        # Two pipelines writing the tag at once on a server database: the first insert wins
        # and the second fails on the key. The view is a convenience; training goes on.
        logger.warning("The runs table view was not saved (another run saved it): %s", exc)


def runs_table_url(base_url: str, experiment_id: str) -> str:
    # MLflow 3 opens in its GenAI view; workflowType selects the classic runs table.
    return (
        f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={RUNS_TABLE_VIEW}"
    )
