"""Every command README.md and docs/ show, run as written in a fresh shell after `make run`.

The shell is the one the README asks for: the project's `.venv` activated, in a copy of the
project (a fresh clone's files, no store), after the equivalent of `make run`:

- `python -m pipeline main --config configs/iris.yaml` (what `make pipeline` runs, minus the
  `mlflow run` launcher): iris v1 in Production; two more versions of the same model (v2, v3)
  so the promote, rollback and reproduce examples have versions to name;
- the server `make serve` starts (`python -m serving`) on a free port: `127.0.0.1:8000` in
  the text is that port; every iris row sent to it once, and the true labels in `labels.csv`;
- the user's files the examples read: `data.csv`, `new_rows.csv`, `rows.csv`, `in.parquet`,
  `rows.parquet` (iris rows) and `configs/my_data.yaml` (a copy of `customers.yaml` named
  `my_model`, as the README's own-CSV section says to make).

Each document's commands run in one bash process, in reading order (variables such as `$B`
carry on), each with its own output and exit status; documents run in the order README.md,
docs/*.md, against the one store. Commands a rule in tests/test_docs.py names are skipped with
their reason. curl runs with `--fail-with-body` (from a `.curlrc`), so an error answer fails
the command as it would fail a reader. The counts of commands run and skipped are printed.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_iris

from tests.e2e.project import REPO_ROOT, copy_project, pipeline, project_env
from tests.test_docs import DocumentedCommand, documented_commands

pytestmark = pytest.mark.e2e

COLUMNS = {
    "sepal length (cm)": "sepal_length_cm",
    "sepal width (cm)": "sepal_width_cm",
    "petal length (cm)": "petal_length_cm",
    "petal width (cm)": "petal_width_cm",
}


def _iris() -> tuple[pd.DataFrame, list[str]]:
    iris = load_iris(as_frame=True)
    frame = iris.frame.rename(columns=COLUMNS)
    labels = [str(iris.target_names[t]) for t in frame["target"]]
    return frame[list(COLUMNS.values())], labels


def _activatable_venv(project: Path) -> None:
    """`.venv` in the copy: the checkout's environment, entry by entry, with its own install
    stamp, so `make` finds the environment installed and never installs into the real one."""
    venv = project / ".venv"
    venv.mkdir()
    for entry in (REPO_ROOT / ".venv").iterdir():
        if entry.name != ".installed":
            (venv / entry.name).symlink_to(entry)
    (venv / ".installed").touch()  # newer than the copy's pyproject.toml and uv.lock


def _user_files(project: Path) -> None:
    features, _ = _iris()
    for name in ("data.csv", "new_rows.csv", "rows.csv"):
        features.to_csv(project / name, index=False)
    for name in ("in.parquet", "rows.parquet"):
        features.to_parquet(project / name, index=False)
    config = yaml.safe_load((project / "configs" / "customers.yaml").read_text())
    config.update(experiment="my_model", registered_model="my_model")
    (project / "configs" / "my_data.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (project / ".curlrc").write_text("fail-with-body\n")


def _served_traffic(project: Path, base: str) -> None:
    features, labels = _iris()
    response = httpx.post(
        f"{base}/predict", json={"records": features.to_dict(orient="records")}, timeout=30
    )
    assert response.status_code == 200, response.text
    request_id = response.headers["X-Request-ID"]
    pd.DataFrame({"request_id": request_id, "row": range(len(labels)), "label": labels}).to_csv(
        project / "labels.csv", index=False
    )


def _more_versions(project: Path) -> None:
    client = MlflowClient(tracking_uri=project_env(project)["MLFLOW_TRACKING_URI"])
    run_id = client.get_model_version("iris", "1").run_id
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for _ in range(2):
            client.create_model_version("iris", "models:/iris/1", run_id=run_id)


@pytest.fixture(scope="module")
def after_make_run(
    tmp_path_factory: pytest.TempPathFactory, serve: Callable[..., AbstractContextManager[str]]
) -> Iterator[tuple[Path, str]]:
    project = copy_project(tmp_path_factory.mktemp("clone"))
    _activatable_venv(project)
    _user_files(project)
    trained = pipeline(project, "main", "--config", "configs/iris.yaml")
    assert trained.returncode == 0, trained.stderr[-3000:]
    _more_versions(project)
    env = {
        **project_env(project),
        "SERVING_POLL_SECONDS": "1",
        "SERVING_PREDICTION_LOG_ROTATE_SECONDS": "0.5",
    }
    with serve(project, env) as base:
        _served_traffic(project, base)
        yield project, base


@dataclass(frozen=True)
class Outcome:
    command: DocumentedCommand
    status: int
    output: str


def _run_document(project: Path, base: str, commands: list[DocumentedCommand]) -> list[Outcome]:
    """The document's runnable commands in one bash, each with its output and exit status."""
    port = base.rsplit(":", 1)[1]
    out = project / "doc-output"
    out.mkdir(exist_ok=True)
    script = ["cd " + str(project)]
    for number, command in enumerate(commands):
        text = command.runnable.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        text = text.replace("localhost:8000", f"127.0.0.1:{port}")
        # Newlines around the command: a trailing comment must not swallow the braces.
        script.append(f"{{\n{text}\n}} >{out}/{number}.out 2>&1 </dev/null")
        script.append(f"echo $? >{out}/{number}.status")
    # The shell a reader has: the environment activated by the README's own command.
    env = {**project_env(project), "CURL_HOME": str(project)}
    env["PATH"] = env["PATH"].split(os.pathsep, 1)[1]
    env.pop("VIRTUAL_ENV")
    subprocess.run(
        ["bash", "-c", "source .venv/bin/activate\n" + "\n".join(script)],
        cwd=project,
        env=env,
        timeout=900,
        check=False,
    )
    outcomes = []
    for number, command in enumerate(commands):
        status = out / f"{number}.status"
        outcomes.append(
            Outcome(
                command,
                int(status.read_text()) if status.exists() else -1,
                (out / f"{number}.out").read_text()[-2000:],
            )
        )
    return outcomes


def test_every_documented_command_runs_as_written_with_its_documented_status(
    after_make_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    project, base = after_make_run
    commands = documented_commands()
    runnable = [c for c in commands if c.skip is None]
    skipped = [c for c in commands if c.skip is not None]
    outcomes: list[Outcome] = []
    for _, of_document in groupby(runnable, key=lambda c: c.document):
        outcomes += _run_document(project, base, list(of_document))
    wrong = [
        f"{o.command.document}:{o.command.line}: exit {o.status}, documented "
        f"{sorted(o.command.expected_status)}: {o.command.text}\n{o.output}"
        for o in outcomes
        if o.status not in o.command.expected_status
    ]
    with capsys.disabled():
        print(f"\ndocumented commands: {len(outcomes)} run, {len(skipped)} skipped by name")
        for reason, group in groupby(
            sorted(skipped, key=lambda c: str(c.skip)), key=lambda c: c.skip
        ):
            print(f"  skipped {len(list(group))}: {reason}")
    assert wrong == [], "\n\n".join(wrong)
    assert len(outcomes) == len(runnable)
