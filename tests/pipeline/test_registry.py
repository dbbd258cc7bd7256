from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from pipeline import flow, registry
from pipeline.config import load_config
from pipeline.errors import RegistryError

WEAK = {"class_path": "sklearn.linear_model.LogisticRegression", "params": {"C": 0.0005}}


def test_there_is_no_production_version_of_an_unknown_model(mlflow_store: str) -> None:
    assert registry.production_version(MlflowClient(), "nothing-here") is None


def test_history_of_an_unknown_model_is_refused_naming_it(mlflow_store: str) -> None:
    with pytest.raises(RegistryError, match="registered model 'nothing-here' does not exist"):
        registry.history(MlflowClient(), "nothing-here")


def test_set_production_moves_stage_and_alias_together_and_appends_history(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> None:
    flow.run_all(load_config(write_config(iris_config())))
    flow.run_all(load_config(write_config(iris_config(estimator=WEAK))))
    client = MlflowClient()
    event = registry.set_production(client, "iris-test", "2", action="promote", reason="test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        stages = {v.version: v.current_stage for v in client.search_model_versions()}
    assert {str(k): v for k, v in stages.items()} == {"1": "Archived", "2": "Production"}
    assert str(client.get_model_version_by_alias("iris-test", "champion").version) == "2"
    assert (event.from_version, event.to_version) == ("1", "2")
    newest_first = registry.history(client, "iris-test")
    assert [e.to_version for e in newest_first] == ["2", "1"]
    assert client.get_model_version("iris-test", "2").tags["promoted.by"] == event.actor
