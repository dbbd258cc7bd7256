"""Reproduce: a version re-trained from its record matches exactly, or the change is named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import DataValidationError
from pipeline.steps import flow, reproduce
from tests.pipeline.factories import iris_csv


@pytest.fixture
def registered_from_csv(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> Path:
    forest = {
        "class_path": "sklearn.ensemble.RandomForestClassifier",
        "params": {"n_estimators": 10},
    }
    config_path = write_config(
        iris_config(data={"target": "target"}, estimator=forest), csv_text=iris_csv(), name="csv"
    )
    flow.run_all(load_config(config_path))
    return config_path


def test_a_reproduced_version_matches_its_recorded_held_out_metrics_exactly(
    registered_from_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = reproduce.run("iris-test", "1")
    assert result.matches
    assert {check.name for check in result.metrics} >= {"test_accuracy", "test_f1_macro"}
    assert all(check.reproduced == check.recorded for check in result.metrics)
    run = MlflowClient().get_run(result.run_id)
    assert run.data.tags["reproduce.of_version"] == "iris-test/1"
    assert run.data.tags["reproduce.matches"] == "true"
    # A reproduction is a run, never a new version.
    assert len(MlflowClient().search_model_versions("name = 'iris-test'")) == 1
    assert main(["reproduce", "--name", "iris-test", "--version", "1"]) == 0
    assert "all held-out metrics match exactly" in capsys.readouterr().out


def test_a_modified_data_file_is_reported_by_hash_and_nothing_is_trained(
    registered_from_csv: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = registered_from_csv.with_suffix(".csv")
    lines = data.read_text().splitlines()
    lines[1] = lines[1].replace("5.1", "5.2", 1)
    data.write_text("\n".join(lines) + "\n")
    runs_before = len(MlflowClient().search_runs(["1"]))
    with pytest.raises(
        DataValidationError, match=r"the data of iris-test v1 changed: .* hashes to"
    ):
        reproduce.run("iris-test", "1")
    assert len(MlflowClient().search_runs(["1"])) == runs_before
    assert main(["reproduce", "--name", "iris-test", "--version", "1"]) == 3
    assert "restore the original data to reproduce it" in caplog.text


def test_reproducing_an_unknown_version_names_it(
    registered_from_csv: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["reproduce", "--name", "iris-test", "--version", "9"]) == 4
    assert "has no version '9'" in caplog.text
