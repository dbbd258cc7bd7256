from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from pipeline.config import load_config
from pipeline.steps import features, ingest
from tests.pipeline.factories import fitted, shipped_config


def test_the_model_is_one_pipeline_of_preprocessing_and_the_configured_estimator() -> None:
    config = shipped_config("customers")
    dataset = ingest.run(config)
    model = features.build_model(config, dataset)
    assert list(model.named_steps) == ["preprocess", "model"]
    preprocess = model.named_steps["preprocess"]
    assert isinstance(preprocess, ColumnTransformer)
    numeric, categorical = preprocess.transformers[0], preprocess.transformers[1]
    assert isinstance(numeric[1].named_steps["scale"], StandardScaler)
    encoder = categorical[1].named_steps["one_hot"]
    assert isinstance(encoder, OneHotEncoder)
    assert encoder.handle_unknown == "ignore"
    assert model.named_steps["model"].get_params()["random_state"] == config.split.seed


def test_unknown_categories_and_gaps_at_prediction_time_are_handled() -> None:
    customers = fitted(shipped_config("customers"))
    model, dataset = customers.model, customers.dataset
    row = customers.split.X_test.head(1).copy()
    row["contract"] = "lifetime"  # never seen in training
    row["monthly_charges"] = np.nan
    assert model.predict(row)[0] in set(dataset.y)


def test_the_split_is_the_same_for_the_same_config_and_data(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    config = load_config(write_config(iris_config()))
    dataset = ingest.run(config)
    first, second = features.split(config, dataset), features.split(config, dataset)
    assert first.X_test.index.equals(second.X_test.index)
    assert first.y_test.value_counts().to_dict() == {
        "setosa": 15,
        "versicolor": 15,
        "virginica": 15,
    }


def test_row_hashes_change_with_any_value_of_a_row() -> None:
    dataset = ingest.run(shipped_config("iris"))
    columns = sorted(dataset.features)
    hashes = features.row_hashes(dataset.X, dataset.y, columns)
    changed = dataset.X.copy()
    changed.iloc[0, 0] += 0.1
    assert (features.row_hashes(changed, dataset.y, columns) != hashes).sum() == 1
