"""The whole chain: a finished run with the same config, data and code is not trained again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.steps import flow


def test_rerunning_the_same_config_reuses_the_run_and_forcing_trains_again(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_config(iris_config())
    first = flow.run_all(load_config(path))
    again = flow.run_all(load_config(path))
    client = MlflowClient()
    assert again.cached_from == first.run_id and again.training is None
    assert again.registered.version == first.registered.version == "1"
    assert again.decision.decision == first.decision.decision == "promoted"
    assert again.decision.reason == first.decision.reason
    assert again.metrics == {k: v for k, v in first.metrics.items()}
    assert len(client.search_runs(["1"])) == 1
    assert len(client.search_model_versions("name = 'iris-test'")) == 1

    assert main(["main", "--config", str(path)]) == 0
    assert f"cache hit: run {first.run_id} has the same config, data and code" in (
        capsys.readouterr().out
    )
    assert main(["main", "--config", str(path), "--force"]) == 0
    out = capsys.readouterr().out
    assert "cache hit" not in out and "registered iris-test version 2" in out
    assert len(client.search_runs(["1"])) == 2


def test_a_changed_config_or_data_is_not_a_cache_hit(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> None:
    flow.run_all(load_config(write_config(iris_config())))
    other_seed = iris_config(split={"test_size": 0.3, "seed": 1, "stratify": True, "cv_folds": 3})
    assert flow.run_all(load_config(write_config(other_seed))).cached_from is None


def test_a_false_force_flag_from_mlflow_run_means_no(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = str(write_config(iris_config()))
    assert main(["main", "--config", path, "--force", "false"]) == 0
    assert main(["main", "--config", path, "--force", "false"]) == 0
    assert "cache hit" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["main", "--config", path, "--force", "maybe"])
    assert exit_info.value.code == 2
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err


def test_main_says_a_staged_candidate_awaits_live_gate_and_a_cache_hit_says_it_still_does(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    weak = {"class_path": "sklearn.linear_model.LogisticRegression", "params": {"C": 0.0005}}
    gate = {"metric": "test_f1_macro", "threshold": None, "min_improvement": 0.0}
    flow.run_all(load_config(write_config(iris_config(estimator=weak, gate=gate))))
    live = str(write_config(iris_config(gate={**gate, "live": True})))
    assert main(["main", "--config", live]) == 0
    out = capsys.readouterr().out
    assert "gate: staged: test_f1_macro" in out
    assert "sent to Staging (challenger) since gate.live is on" in out
    assert main(["main", "--config", live]) == 0
    assert (
        "gate: not run again (cache hit): version 2 is in Staging (challenger): judge it on live "
        "traffic with `python -m pipeline live-gate --config <config>`; Production is version 1"
    ) in capsys.readouterr().out
    reused = flow.run_all(load_config(Path(live)))
    assert (reused.decision.decision, reused.decision.stage) == ("staged", "Staging")
