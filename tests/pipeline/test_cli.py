"""The command surface: exit codes, one-line errors, and a registry left as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline import model_io
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.steps import evaluate, features, ingest
from tests.pipeline.factories import REPO_ROOT


def _printed_run_id(capsys: pytest.CaptureFixture[str]) -> str:
    """The run id that `train` printed as `run_id=<id>`."""
    return capsys.readouterr().out.split("run_id=")[1].split()[0]


def _store_is_empty() -> bool:
    client = MlflowClient()
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    return not client.search_registered_models() and not runs


def test_validate_prints_a_summary_of_good_data(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["validate", "--config", str(write_config(iris_config()))]) == 0
    assert "OK: sklearn:iris: 150 rows" in capsys.readouterr().out


def test_bad_data_exits_non_zero_with_one_line_and_leaves_the_store_empty(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    csv = "a,b,species\n1,2,x\n3,4,\n5,6,y\n"
    path = write_config(iris_config(data={"target": "species"}), csv_text=csv)
    assert main(["main", "--config", str(path)]) == 3
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        "target column 'species' has 1 missing values in 3 rows (first at row 2); "
        "drop or fill those rows"
    ]
    assert _store_is_empty()


def test_a_bad_config_exits_with_status_2_naming_the_key(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = write_config({**iris_config(), "learning_rate": 0.1})
    assert main(["main", "--config", str(path)]) == 2
    assert "unknown key 'learning_rate'" in caplog.text
    assert _store_is_empty()


def test_a_non_integer_seed_is_refused_before_anything_runs(
    mlflow_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["main", "--seed", "forty-two"])
    assert exited.value.code == 2
    assert "argument --seed: expected an integer, got 'forty-two'" in capsys.readouterr().err
    assert _store_is_empty()


def test_empty_overrides_fall_back_to_the_config(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = str(write_config(iris_config()))
    assert (
        main(["train", "--config", path, "--seed", "", "--test-size", "", "--cv-folds", "2"]) == 0
    )
    run_id = _printed_run_id(capsys)
    params = MlflowClient().get_run(run_id).data.params
    assert params["split.seed"] == "42"
    assert params["cv.folds"] == "2"


def test_the_steps_run_one_by_one_give_the_same_decision_as_main(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = str(write_config(iris_config()))
    assert main(["train", "--config", path]) == 0
    run_id = _printed_run_id(capsys)
    assert main(["evaluate", "--config", path, "--run-id", run_id]) == 0
    assert "test_f1_macro=" in capsys.readouterr().out
    assert main(["register", "--config", path, "--run-id", run_id]) == 0
    assert "registered iris-test version 1" in capsys.readouterr().out
    assert main(["gate", "--config", path, "--version", "1"]) == 0
    assert "iris-test v1 promoted: first model" in capsys.readouterr().out
    assert main(["history", "--name", "iris-test"]) == 0
    assert "gate" in capsys.readouterr().out


def test_registering_an_unevaluated_run_is_refused(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = str(write_config(iris_config()))
    main(["train", "--config", path])
    run_id = _printed_run_id(capsys)
    assert main(["register", "--config", path, "--run-id", run_id]) == 1
    assert "has no held-out metrics; evaluate it first" in caplog.text
    assert not MlflowClient().search_registered_models()


def test_promoting_a_missing_version_exits_with_status_4(
    mlflow_store: str, caplog: pytest.LogCaptureFixture
) -> None:
    MlflowClient().create_registered_model("iris")
    assert main(["promote", "--name", "iris", "--version", "1"]) == 4
    assert "registered model 'iris' has no version '1'" in caplog.text


def test_a_mistyped_model_name_is_named_with_the_models_it_may_mean(
    mlflow_store: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = MlflowClient()
    client.create_registered_model("iris")
    client.create_registered_model("iris.lock")  # a held Production lock is no candidate
    assert main(["promote", "--name", "irsi", "--version", "1"]) == 4
    assert "registered model 'irsi' does not exist; did you mean 'iris'?" in caplog.text
    caplog.clear()
    assert main(["reproduce", "--name", "ghost", "--version", "1"]) == 4
    assert "registered model 'ghost' does not exist; registered models: iris" in caplog.text


def test_evaluate_scores_a_run_on_the_split_it_was_trained_with(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_config(iris_config())
    assert main(["train", "--config", str(path), "--seed", "7", "--test-size", "0.5"]) == 0
    run_id = _printed_run_id(capsys)
    assert main(["evaluate", "--config", str(path), "--run-id", run_id]) == 0
    config = load_config(path).with_overrides(**{"split.seed": 7, "split.test_size": 0.5})
    held_out = features.split(config, ingest.run(config))
    model = model_io.load_model(f"runs:/{run_id}/model")
    expected = evaluate.score(config, model, held_out.X_test, held_out.y_test)
    logged = MlflowClient().get_run(run_id).data.metrics
    assert logged["test_accuracy"] == pytest.approx(expected["test_accuracy"])


def test_model_name_prints_the_registered_model_of_a_config(
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["model-name", "--config", str(write_config(iris_config()))]) == 0
    assert capsys.readouterr().out.strip() == "iris-test"


def test_help_of_the_cli_and_of_every_command_imports_no_heavy_library() -> None:
    # Start-up time itself is measured by bench/cli.py; this keeps its cause from coming back.
    code = """
import argparse, contextlib, io, sys
from pipeline.cli import _parser, main
commands = next(
    a.choices for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)
)
for argv in (["--help"], *([name, "--help"] for name in commands)):
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
        main(argv)
print(len(commands), sorted({"mlflow", "sklearn", "pandas", "numpy"} & set(sys.modules)))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.split(maxsplit=1)[1].strip() == "[]"
    assert int(result.stdout.split()[0]) >= 17


@pytest.mark.process
def test_a_command_on_a_remote_store_says_which_store_it_waits_on(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        # Nothing listens on port 9 (discard): the command fails fast instead of retrying.
        "MLFLOW_TRACKING_URI": "http://alice:secret@127.0.0.1:9/",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "history", "--name", "iris"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    first = result.stderr.splitlines()[0]
    assert first.endswith(
        "history: loading MLflow, then waiting on the store http://127.0.0.1:9"
    ), result.stderr
    assert "MLflow refused the operation" in result.stderr
    assert "secret" not in result.stderr


def _two_versions(name: str) -> None:
    """Two versions of `name` (of one hand-made run), version 1 in Production."""
    client = MlflowClient()
    run = client.create_run(client.create_experiment(f"{name}-exp"))
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    for _ in range(2):
        client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id)
    assert main(["promote", "--name", name, "--version", "1"]) == 0


def test_promote_with_stage_staging_makes_a_challenger_and_history_shows_both_stages(
    mlflow_store: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hand-made versions have no model files: the signature check has nothing to compare.
    from pipeline.registry import schema

    monkeypatch.setattr(schema, "check", lambda *args, **kwargs: None)
    _two_versions("iris")
    capsys.readouterr()
    assert main(["promote", "--name", "iris", "--version", "2", "--stage", "Staging"]) == 0
    assert capsys.readouterr().out == (
        "iris: Staging is now version 2 (the challenger) (was none)\n"
    )
    aliases = MlflowClient().get_registered_model("iris").aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": "1", "challenger": "2"}
    assert main(["history", "--name", "iris"]) == 0
    header, staged, promoted = capsys.readouterr().out.splitlines()
    assert header.split()[:5] == ["time", "action", "stage", "from", "to"]
    assert staged.split()[1:5] == ["promote", "Staging", "-", "2"]
    assert promoted.split()[1:5] == ["promote", "Production", "-", "1"]


def test_promote_to_a_stage_that_is_not_production_or_staging_is_refused_by_the_parser(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["promote", "--name", "iris", "--version", "2", "--stage", "Archived"])
    assert exited.value.code == 2
    error = capsys.readouterr().err.replace("'", "")  # Python 3.12 quotes the choices
    assert "argument --stage: invalid choice: Archived (choose from Production, Staging)" in error


def test_live_gate_help_documents_its_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["live-gate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "exit 0: promoted to Production; 10: rejected (archived); 20: not enough" in text


def test_live_compare_with_an_unreadable_time_is_refused_naming_the_format(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["live-compare", "--since", "yesterday"])
    assert exited.value.code == 2
    assert "expected an ISO 8601 time" in capsys.readouterr().err
