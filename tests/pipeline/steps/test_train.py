from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from pipeline import model_io
from pipeline.config import load_config
from pipeline.steps import ingest, train
from tests.pipeline.factories import shipped_config


@pytest.fixture
def trained_iris(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> tuple[train.TrainResult, ingest.Dataset]:
    config = load_config(write_config(iris_config()))
    dataset = ingest.run(config)
    return train.run(config, dataset), dataset


def test_a_training_run_records_params_cv_metrics_and_lineage_tags(
    trained_iris: tuple[train.TrainResult, ingest.Dataset],
) -> None:
    result, dataset = trained_iris
    run = MlflowClient().get_run(result.run_id)
    assert run.data.params["estimator"] == "sklearn.linear_model.LogisticRegression"
    assert run.data.params["model.max_iter"] == "500"
    assert 0.8 < run.data.metrics["cv_f1_macro_mean"] <= 1.0
    assert run.data.tags["data.hash"] == dataset.data_hash
    assert run.data.tags["data.rows"] == "150"
    assert len(run.data.tags["config.hash"]) == 64
    assert run.data.tags["git.dirty"] in {"true", "false", "unknown"}
    assert run.data.tags["git.commit"]
    assert run.data.tags["config.name"] == "config0"
    assert run.info.run_name == f"config0-LogisticRegression-{dataset.data_hash[:8]}"
    assert set(json.loads(run.data.tags["lineage.libraries"])) >= {"mlflow", "scikit-learn"}
    assert json.loads(run.data.tags["data.class_balance"]) == {
        "setosa": 50,
        "versicolor": 50,
        "virginica": 50,
    }
    assert len(run.data.tags["code.hash"]) == 64


def test_a_training_run_logs_the_dataset_and_the_resolved_config(
    trained_iris: tuple[train.TrainResult, ingest.Dataset],
) -> None:
    result, dataset = trained_iris
    run = MlflowClient().get_run(result.run_id)
    assert run.inputs is not None
    logged = run.inputs.dataset_inputs[0].dataset
    assert logged.name == "iris-test"
    assert logged.digest == dataset.data_hash[:12]
    columns = json.loads(logged.schema or "{}")["mlflow_colspec"]
    assert [c["name"] for c in columns] == [*dataset.features, "species"]
    assert json.loads(logged.profile or "{}")["num_rows"] == 150
    text = mlflow.artifacts.load_text(f"runs:/{result.run_id}/config/resolved_config.yaml")
    config = yaml.safe_load(text)
    assert config["registered_model"] == "iris-test"


def test_the_logged_model_is_skops_with_a_signature_and_loads_back_identically(
    trained_iris: tuple[train.TrainResult, ingest.Dataset],
) -> None:
    result, _ = trained_iris
    local = Path(mlflow.artifacts.download_artifacts(result.model_uri))
    flavor = Model.load(local / "MLmodel").flavors["sklearn"]
    assert flavor["serialization_format"] == "skops"
    assert Model.load(local / "MLmodel").saved_input_example_info is not None
    loaded = model_io.load_model(result.model_uri)
    X = result.split.X_test
    np.testing.assert_array_equal(loaded.predict(X), result.model.predict(X))
    assert list(loaded.classes_) == ["setosa", "versicolor", "virginica"]


def test_columns_with_gaps_in_training_are_optional_in_the_signature(mlflow_store: str) -> None:
    config = shipped_config("customers").with_overrides(**{"split.cv_folds": 2})
    result = train.run(config, ingest.run(config))
    local = Path(mlflow.artifacts.download_artifacts(result.model_uri))
    columns = {c.name: c for c in Model.load(local / "MLmodel").get_input_schema().inputs}
    assert columns["payment_method"].required is False
    assert columns["support_calls"].required is False
    assert columns["support_calls"].type.name == "double"  # an integer count with gaps
    assert columns["tenure_months"].required is True
    assert columns["tenure_months"].type.name == "long"
    assert columns["contract"].type.name == "string"


def test_training_saves_a_runs_table_view_with_params_and_test_metrics_as_columns(
    trained_iris: tuple[train.TrainResult, ingest.Dataset],
) -> None:
    result, _ = trained_iris
    tags = MlflowClient().get_experiment(result.experiment_id).tags
    columns = json.loads(tags["mlflow.sharedViewState.pipeline"])["selectedColumns"]
    assert "params.`estimator`" in columns
    assert "params.`model.max_iter`" in columns
    assert "metrics.`test_f1_macro`" in columns
    assert "metrics.`cv_f1_macro_mean`" in columns
    assert len(columns) == len(set(columns))


def test_a_model_trained_on_category_columns_takes_plain_strings_as_serving_sends_them(
    mlflow_store: str,
) -> None:
    config = shipped_config("customers").with_overrides(**{"split.cv_folds": 2})
    result = train.run(config, ingest.run(config))
    X = result.split.X_test
    assert isinstance(X["contract"].dtype, pd.CategoricalDtype)
    # What a JSON request becomes: object columns of Python strings, None for a gap.
    as_sent = X.astype(object).where(X.notna(), None)
    np.testing.assert_array_equal(result.model.predict(as_sent), result.model.predict(X))
    np.testing.assert_allclose(result.model.predict_proba(as_sent), result.model.predict_proba(X))
    local = Path(mlflow.artifacts.download_artifacts(result.model_uri))
    columns = {c.name: c for c in Model.load(local / "MLmodel").get_input_schema().inputs}
    assert {columns[name].type.name for name in ("contract", "payment_method")} == {"string"}


@pytest.mark.parametrize("name", ["customers", "iris"])
def test_cross_validated_metrics_equal_scikit_learns_own_scorers(name: str) -> None:
    from sklearn.model_selection import KFold, StratifiedKFold, cross_validate

    from pipeline import metrics
    from pipeline.steps import features

    config = shipped_config(name).with_overrides(**{"split.cv_folds": 3})
    dataset = ingest.run(config)
    data_split = features.split(config, dataset)
    model = features.build_model(config, dataset)
    ours = train._cross_validate(config, model, data_split)
    chosen = metrics.cross_validated(config.task, config.gate.metric)
    folds = KFold if config.task != "classification" else StratifiedKFold
    theirs = cross_validate(
        model,
        data_split.X_train,
        data_split.y_train,
        cv=folds(n_splits=3, shuffle=True, random_state=config.split.seed),
        scoring={m.name: m.scorer for m in chosen},
    )
    assert {m.name for m in chosen} >= {"accuracy", "f1_macro"}
    for m in chosen:
        values = m.scorer_sign * np.asarray(theirs[f"test_{m.name}"], dtype=float)
        assert ours[f"cv_{m.name}_mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert ours[f"cv_{m.name}_std"] == pytest.approx(values.std(), abs=1e-12)
