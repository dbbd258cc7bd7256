from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io
import yaml
from sklearn.compose import ColumnTransformer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from pipeline.config import PipelineConfig, load_config
from pipeline.contracts import refused_types
from pipeline.errors import DataValidationError
from pipeline.steps import features, ingest
from tests.pipeline.factories import CONFIGS, fitted, iris_csv, shipped_config


def test_a_linear_model_gets_imputation_scaling_and_one_hot_encoding(
    write_config: Callable[..., Path],
) -> None:
    config = _customers_with("sklearn.linear_model.LogisticRegression", write_config)
    model = features.build_model(config, ingest.run(config))
    assert list(model.named_steps) == ["preprocess", "model"]
    preprocess = model.named_steps["preprocess"]
    assert isinstance(preprocess, ColumnTransformer)
    numeric, categorical = preprocess.transformers[0], preprocess.transformers[1]
    assert isinstance(numeric[1].named_steps["scale"], StandardScaler)
    encoder = categorical[1].named_steps["one_hot"]
    assert isinstance(encoder, OneHotEncoder)
    assert encoder.handle_unknown == "ignore"


def test_hist_gradient_boosting_keeps_its_native_missing_values_and_categories() -> None:
    config = shipped_config("customers")
    dataset = ingest.run(config)
    model = features.build_model(config, dataset)
    numeric, categorical = model.named_steps["preprocess"].transformers[:2]
    assert numeric[1] == "passthrough"
    assert isinstance(categorical[1].named_steps["ordinal"], OrdinalEncoder)
    estimator = model.named_steps["model"]
    assert estimator.get_params()["random_state"] == config.split.seed
    mask = estimator.get_params()["categorical_features"]
    assert mask == [False] * len(dataset.numeric_features) + [True] * len(
        dataset.categorical_features
    )
    data_split = features.split(config, dataset)
    model.fit(data_split.X_train, data_split.y_train)
    assert model.named_steps["model"].is_categorical_.sum() == len(dataset.categorical_features)


def test_native_categories_are_grouped_only_when_a_column_has_more_than_the_model_takes(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    """Grouping rare categories counts every value in Python: only when it is needed."""
    shipped = shipped_config("customers")
    few = features.build_model(shipped, ingest.run(shipped))
    assert few.named_steps["preprocess"].transformers[1][1]["ordinal"].max_categories is None

    rng = np.random.default_rng(0)
    rows = 2_000
    csv = tmp_path / "many.csv"
    pd.DataFrame(
        {
            "x": rng.normal(size=rows),
            "city": [f"city{i}" for i in rng.integers(0, 400, rows)],
            "label": rng.choice(["yes", "no"], rows),
        }
    ).to_csv(csv, index=False)
    config = load_config(
        write_config(
            {
                "experiment": "many",
                "registered_model": "many",
                "task": "classification",
                "data": {
                    "path": str(csv),
                    "target": "label",
                    "features": {"numeric": ["x"], "categorical": ["city"]},
                },
                "estimator": {"class_path": "sklearn.ensemble.HistGradientBoostingClassifier"},
                "gate": {"metric": "test_roc_auc"},
            }
        )
    )
    dataset = ingest.run(config)
    many = features.build_model(config, dataset)
    assert many.named_steps["preprocess"].transformers[1][1]["ordinal"].max_categories == 255
    many.fit(dataset.X, dataset.y)  # HistGradientBoosting refuses more than 255 categories


def test_other_tree_models_get_ordinal_codes_and_no_scaling(
    write_config: Callable[..., Path],
) -> None:
    config = _customers_with("sklearn.ensemble.RandomForestClassifier", write_config)
    model = features.build_model(config, ingest.run(config))
    numeric, categorical = model.named_steps["preprocess"].transformers[:2]
    assert list(numeric[1].named_steps) == ["impute"]
    assert list(categorical[1].named_steps) == ["impute", "ordinal"]


def test_the_preprocessing_kind_can_be_forced(write_config: Callable[..., Path]) -> None:
    config = _customers_with(
        "sklearn.ensemble.RandomForestClassifier", write_config, preprocessing={"kind": "linear"}
    )
    assert features.preprocessing_kind(config) == "linear"
    numeric = features.build_model(config, ingest.run(config)).named_steps["preprocess"]
    assert "scale" in numeric.transformers[0][1].named_steps


def _customers_with(
    class_path: str, write_config: Callable[..., Path], **sections: Any
) -> PipelineConfig:
    raw = yaml.safe_load((CONFIGS / "customers.yaml").read_text())
    raw["data"]["path"] = str((CONFIGS / raw["data"]["path"]).resolve())
    raw["estimator"] = {"class_path": class_path, "params": {"random_state": 0}}
    raw.update(sections)
    return load_config(write_config(raw))


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


def test_row_hashes_do_not_depend_on_the_dtype_of_a_column() -> None:
    X = pd.DataFrame({"year": [2007, 2010], "kind": ["a", None]})
    as_floats = X.assign(year=X["year"].astype(float))
    y = pd.Series([1, 0])
    columns = ["kind", "year"]
    assert (
        features.row_hashes(X, y, columns)
        == features.row_hashes(as_floats, y.astype(float), columns)
    ).all()
    old = features.row_hashes(X, y, columns, version=1)
    assert (old != features.row_hashes(as_floats, y, columns, version=1)).all()


def test_text_is_fingerprinted_as_the_text_of_each_value_whatever_its_dtype() -> None:
    """Version 2 hashes each value's str() (None when missing) row by row; the fingerprints of
    recorded runs depend on it, so a faster way must give the very same numbers."""
    values = ["b", None, "a", "b", np.nan, "c"]
    mixed = pd.Series([1, True, None, "1", 2.5, "x"], dtype=object)
    X = pd.DataFrame(
        {
            "text": pd.Series(values, dtype=object),
            "category": pd.Series(values, dtype="category"),
            "mixed": mixed,
            "number": [1.0, -0.0, np.nan, 2.0, 0.0, 3.0],
        }
    )
    y = pd.Series(["no", "yes", "no", "no", "yes", "yes"], dtype=object)

    def spelled(column: pd.Series) -> pd.Series:
        return pd.Series(
            [None if pd.isna(v) else str(v) for v in column.astype(object)], dtype=object
        )

    columns = ["category", "mixed", "number", "text"]
    by_definition = pd.DataFrame(
        {
            "category": spelled(X["category"]),
            "mixed": spelled(X["mixed"]),
            "number": (X["number"] + 0.0).where(X["number"].notna(), np.nan),
            "text": spelled(X["text"]),
            "__target__": spelled(y),
        }
    )
    expected = pd.util.hash_pandas_object(by_definition, index=False).to_numpy()
    assert (features.row_hashes(X, y, columns) == expected).all()
    # 1 and True are one key to a hash table but two texts.
    assert features.row_hashes(X, y, ["mixed"])[0] != features.row_hashes(X, y, ["mixed"])[1]


def test_a_stratified_split_of_text_labels_holds_out_the_rows_sklearn_would() -> None:
    config = shipped_config("customers")
    dataset = ingest.run(config)
    _, expected, _, _ = train_test_split(
        dataset.X,
        dataset.y,
        test_size=config.split.test_size,
        random_state=config.split.seed,
        stratify=dataset.y.astype(object),
    )
    held_out = features.split(config, dataset).X_test
    assert pd.api.types.is_string_dtype(dataset.y)
    # The same rows in the same order, less the copies of training rows moved to training.
    assert held_out.index.equals(expected.index[expected.index.isin(held_out.index)])
    assert len(held_out) >= 0.9 * len(expected)


@pytest.mark.parametrize(("hashes", "seen"), [(50, 80), (50, 0), (0, 80), (1, 1)])
def test_fingerprints_seen_before_are_those_numpy_isin_finds(hashes: int, seen: int) -> None:
    rng = np.random.default_rng(hashes + seen)
    recorded = rng.integers(0, 2**64 - 1, seen, dtype=np.uint64, endpoint=True)
    # Some of them again (twice, for duplicates), some new, the largest fingerprint too.
    new = rng.integers(0, 2**64 - 1, hashes, dtype=np.uint64, endpoint=True)
    asked = np.concatenate([new, recorded[: seen // 3], recorded[: seen // 4], [2**64 - 1]])
    asked = asked.astype(np.uint64)
    expected = np.isin(asked, recorded)
    assert np.array_equal(features.seen_in(asked, recorded), expected)
    assert expected.sum() >= (seen // 3 + seen // 4)


def test_a_held_out_copy_of_a_training_row_is_moved_to_the_training_side(
    tmp_path: Path,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> None:
    # Every flower twice: a random split puts one copy of many of them on each side.
    csv = tmp_path / "iris_twice.csv"
    text = iris_csv("species")
    csv.write_text(text + text.split("\n", 1)[1])
    config = load_config(write_config(iris_config(data={"path": str(csv), "target": "species"})))
    data_split = features.split(config, ingest.run(config))
    columns = sorted(data_split.X_train.columns)
    seen = features.row_hashes(data_split.X_train, data_split.y_train, columns)
    held_out = features.row_hashes(data_split.X_test, data_split.y_test, columns)
    assert not np.isin(held_out, seen).any()
    assert len(data_split.y_test) + len(data_split.y_train) == 300
    assert 0 < len(data_split.y_test) < 90


def test_an_unknown_positive_class_names_the_classes(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    raw = iris_config()
    raw["data"]["positive_class"] = "rose"
    config = load_config(write_config(raw))
    with pytest.raises(DataValidationError, match="'rose' is not a class of target 'species'"):
        features.positive_class(config, ["setosa", "versicolor"])
    assert features.positive_class(config.with_overrides(), ["a", "rose"]) == "rose"


def test_a_tuned_decision_threshold_is_learned_and_used_by_predict(
    write_config: Callable[..., Path],
) -> None:
    config = _customers_with(
        "sklearn.ensemble.HistGradientBoostingClassifier",
        write_config,
        decision_threshold={"optimize": "f1"},
    )
    trained = fitted(config)
    threshold = features.decision_threshold(trained.model)
    assert threshold is not None and 0.0 < threshold < 1.0
    proba = trained.model.predict_proba(trained.split.X_test)
    positive = list(trained.model.classes_).index(
        features.positive_class(config, list(trained.model.classes_))
    )
    expected = np.where(
        proba[:, positive] >= threshold,
        trained.model.classes_[positive],
        trained.model.classes_[1 - positive],
    )
    assert (trained.model.predict(trained.split.X_test) == expected).all()
    assert type(features.estimator_of(trained.model)).__name__ == "HistGradientBoostingClassifier"


def test_a_model_with_a_tuned_threshold_holds_only_trusted_types(
    write_config: Callable[..., Path],
) -> None:
    config = _customers_with(
        "sklearn.linear_model.LogisticRegression",
        write_config,
        decision_threshold={"optimize": "balanced_accuracy"},
    )
    model = fitted(config).model
    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    assert refused_types(untrusted) == []


def test_recent_rows_get_their_own_held_out_share(
    tmp_path: Path, write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, 2)), columns=["x1", "x2"])
    frame["label"] = ["a", "b"] * 100
    frame.to_csv(tmp_path / "data.csv", index=False)
    raw = iris_config(data={"path": str(tmp_path / "data.csv"), "target": "label"})
    raw["split"]["recent_rows"] = 20  # the last 20 rows came from production
    config = load_config(write_config(raw))
    data_split = features.split(config, ingest.run(config))
    # Exactly test_size of them, of each class: by chance alone it would vary around 6.
    assert data_split.y_test[data_split.y_test.index >= 180].value_counts().to_dict() == {
        "a": 3,
        "b": 3,
    }


def test_hist_gradient_boosting_with_native_categories_holds_only_trusted_types() -> None:
    model = fitted(shipped_config("customers")).model
    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    assert "functools.partial" in untrusted  # what native categorical splits keep
    assert refused_types(untrusted) == []


def test_an_untrusted_function_wrapped_in_a_partial_is_still_refused() -> None:
    assert refused_types(["functools.partial", "builtins.eval"]) == ["builtins.eval"]
