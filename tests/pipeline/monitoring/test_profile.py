"""Code layer: the reference profile summarises training data and survives JSON exactly."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import DataValidationError
from pipeline.monitoring.profile import (
    PREDICTION,
    CategoricalReference,
    NumericReference,
    PerformanceReference,
    ReferenceProfile,
    build_reference_profile,
)


def _training_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.normal(40, 12, rows),
            "income": rng.lognormal(10, 1, rows),
            "city": rng.choice(["paris", "lyon", "nice"], rows, p=[0.5, 0.3, 0.2]),
        }
    )


def _profile(rows: int = 2000, task: str = "classification", seed: int = 0) -> ReferenceProfile:
    frame = _training_frame(rows, seed)
    rng = np.random.default_rng(seed + 1)
    predictions = (
        rng.choice(["yes", "no"], rows) if task == "classification" else rng.normal(size=rows)
    )
    return build_reference_profile(
        frame,
        predictions,
        numeric=["age", "income"],
        categorical=["city"],
        task=task,
        performance=PerformanceReference(
            metric_chunks={"accuracy": (0.9, 0.8, 0.85), "f1_macro": (0.7, math.nan, 0.9)},
            chunk_rows=200,
        ),
    )


def _json_round_trip(profile: ReferenceProfile) -> ReferenceProfile:
    text = json.dumps(profile.to_dict(), allow_nan=False)
    return ReferenceProfile.from_dict(json.loads(text))


def test_the_profile_round_trips_through_strict_json_exactly() -> None:
    profile = _profile(task="regression")
    restored = _json_round_trip(profile)
    assert restored.columns == profile.columns
    assert restored.task == profile.task
    assert restored.to_dict() == profile.to_dict()
    assert ReferenceProfile.from_json(profile.to_json()).columns == profile.columns


def test_an_all_missing_column_and_a_nan_metric_round_trip_without_nan_in_the_json() -> None:
    frame = pd.DataFrame({"empty": [np.nan, np.nan, np.inf], "x": [1.0, 2.0, 3.0]})
    profile = build_reference_profile(
        frame,
        [0.5, 0.6, 0.7],
        numeric=["empty", "x"],
        categorical=[],
        task="regression",
        performance=PerformanceReference(metric_chunks={"rmse": (math.nan, 1.0)}, chunk_rows=2),
    )
    text = profile.to_json()
    assert "NaN" not in text
    assert "Infinity" not in text
    restored = ReferenceProfile.from_json(text)
    empty = restored.columns["empty"]
    assert isinstance(empty, NumericReference)
    assert (empty.n, empty.missing, empty.quantiles) == (0, 3, ())
    assert math.isnan(empty.mean)
    assert restored.to_dict() == profile.to_dict()
    assert restored.performance is not None
    assert math.isnan(restored.performance.metric_chunks["rmse"][0])


def test_numeric_bins_are_the_reference_deciles_with_open_outer_edges() -> None:
    frame = _training_frame(5000)
    age = build_reference_profile(
        frame, ["a"] * 5000, numeric=["age"], categorical=[], task="classification"
    ).columns["age"]
    assert isinstance(age, NumericReference)
    assert age.bin_edges[0] == -math.inf
    assert age.bin_edges[-1] == math.inf
    assert list(age.bin_edges[1:-1]) == list(np.quantile(frame["age"], np.arange(1, 10) / 10))
    assert sum(age.bin_counts) == age.n == 5000
    assert all(abs(count - 500) <= 1 for count in age.bin_counts)
    assert len(age.quantiles) == 1001
    assert age.quantiles[0] == frame["age"].min()
    assert age.quantiles[-1] == frame["age"].max()
    assert age.mean == pytest.approx(frame["age"].mean())
    assert age.std == pytest.approx(frame["age"].std(ddof=0))


def test_n_bins_sets_the_number_of_psi_bins() -> None:
    profile = build_reference_profile(
        _training_frame(1000),
        ["a"] * 1000,
        numeric=["age"],
        categorical=[],
        task="classification",
        n_bins=4,
    )
    age = profile.columns["age"]
    assert isinstance(age, NumericReference)
    assert len(age.bin_edges) == 5
    assert sum(age.bin_counts) == 1000


def test_tied_deciles_collapse_into_one_bin() -> None:
    frame = pd.DataFrame({"flag": [0.0] * 700 + [1.0] * 300})
    flag = build_reference_profile(
        frame, ["a"] * 1000, numeric=["flag"], categorical=[], task="classification"
    ).columns["flag"]
    assert isinstance(flag, NumericReference)
    assert flag.bin_edges[0] == -math.inf
    assert flag.bin_edges[-1] == math.inf
    assert len(set(flag.bin_edges)) == len(flag.bin_edges)
    assert sum(flag.bin_counts) == 1000
    assert flag.bin_counts[0] == 0  # nothing below the smallest value


def test_the_prediction_is_categorical_for_a_classifier_and_numeric_for_a_regressor() -> None:
    classifier = _profile(task="classification")
    regressor = _profile(task="regression")
    assert isinstance(classifier.columns[PREDICTION], CategoricalReference)
    assert set(classifier.columns[PREDICTION].counts) == {"yes", "no"}
    assert isinstance(regressor.columns[PREDICTION], NumericReference)
    assert classifier.features == ("age", "income", "city")


def test_categories_are_counted_by_their_string_label() -> None:
    frame = pd.DataFrame({"grade": [1, 2, 2, None, 3, 3, 3]})
    grade = build_reference_profile(
        frame, [1] * 7, numeric=[], categorical=["grade"], task="classification"
    ).columns["grade"]
    assert isinstance(grade, CategoricalReference)
    assert dict(grade.counts) == {"1.0": 1, "2.0": 2, "3.0": 3}
    assert (grade.n, grade.missing) == (6, 1)


def test_missing_and_non_finite_values_are_counted_as_missing() -> None:
    frame = pd.DataFrame({"x": [1.0, np.nan, 2.0, np.inf, -np.inf, 3.0]})
    x = build_reference_profile(
        frame, [0.0] * 6, numeric=["x"], categorical=[], task="regression"
    ).columns["x"]
    assert isinstance(x, NumericReference)
    assert (x.n, x.missing) == (3, 3)
    assert x.mean == 2.0


def test_the_profile_does_not_grow_with_the_number_of_training_rows() -> None:
    small = len(_profile(rows=2_000).to_json())
    large = len(_profile(rows=200_000).to_json())
    assert large < 1.1 * small


def test_performance_reference_gives_the_mean_and_sample_std_per_metric() -> None:
    performance = _profile().performance
    assert performance is not None
    assert performance.mean["accuracy"] == pytest.approx(0.85)
    assert performance.std["accuracy"] == pytest.approx(0.05)
    assert performance.mean["f1_macro"] == pytest.approx(0.8)  # the NaN chunk is skipped
    assert PerformanceReference({"a": (0.5,)}, chunk_rows=10).std["a"] == 0.0


def test_a_feature_missing_from_the_data_is_named() -> None:
    with pytest.raises(DataValidationError, match=r"\['height'\] to profile are not in the data"):
        build_reference_profile(
            _training_frame(10), ["a"] * 10, numeric=["height"], categorical=[], task="regression"
        )
    assert DataValidationError.exit_code == 3


def test_predictions_of_another_length_are_refused() -> None:
    with pytest.raises(DataValidationError, match="9 predictions for 10 feature rows"):
        build_reference_profile(
            _training_frame(10), [1.0] * 9, numeric=["age"], categorical=[], task="regression"
        )


def test_text_in_a_numeric_column_is_refused_with_its_name() -> None:
    frame = pd.DataFrame({"age": ["young", "old"]})
    with pytest.raises(DataValidationError, match=r"column 'age' is numeric .* non-numeric"):
        build_reference_profile(frame, [1, 2], numeric=["age"], categorical=[], task="regression")


def test_a_feature_named_prediction_is_refused() -> None:
    frame = pd.DataFrame({"prediction": [1.0, 2.0]})
    with pytest.raises(DataValidationError, match="a feature is named 'prediction'"):
        build_reference_profile(
            frame, [1, 2], numeric=["prediction"], categorical=[], task="regression"
        )


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda d: d.pop("task"), "missing key 'task'"),
        (lambda d: d.update(format_version=99), "format_version 99 is not 1"),
        (lambda d: d["columns"]["age"].pop("quantiles"), "column 'age': missing key 'quantiles'"),
        (lambda d: d["columns"]["age"].update(kind="text"), "column 'age': kind 'text'"),
        (
            lambda d: d["columns"]["age"]["bin_counts"].append(1),
            "column 'age': bin_counts must have one count per bin",
        ),
        (
            lambda d: d["columns"]["city"]["counts"].update(paris=-5),
            "column 'city': the category counts do not add up to n",
        ),
        (
            lambda d: d["columns"]["age"]["quantiles"].reverse(),
            "column 'age': quantiles must be non-decreasing",
        ),
        (lambda d: d["columns"]["age"].update(mean="high"), "column 'age': expected a number"),
    ],
)
def test_a_malformed_profile_is_refused_with_the_column_and_key(
    corrupt: Callable[[dict[str, Any]], object], message: str
) -> None:
    data = _profile().to_dict()
    corrupt(data)
    with pytest.raises(DataValidationError, match=message):
        ReferenceProfile.from_dict(data)


def test_a_profile_that_is_not_json_is_refused() -> None:
    with pytest.raises(DataValidationError, match="reference profile: not valid JSON"):
        ReferenceProfile.from_json("{not json")


def _with_importance(importance: dict[str, float] | pd.Series | None) -> ReferenceProfile:
    frame = _training_frame(500)
    return build_reference_profile(
        frame,
        ["yes"] * 500,
        numeric=["age", "income"],
        categorical=["city"],
        task="classification",
        importance=importance,
    )


def test_importance_is_stored_as_each_features_share_and_round_trips() -> None:
    # A permutation importance below zero (shuffling helped by chance) counts as none.
    profile = _with_importance({"age": 3.0, "income": 1.0, "city": -0.2})
    assert profile.importance == {"age": 0.75, "income": 0.25, "city": 0.0}
    assert _json_round_trip(profile).importance == profile.importance


def test_importance_by_preprocessing_output_name_is_summed_per_raw_feature() -> None:
    output = pd.Series(
        {
            "numeric__age": 2.0,
            "numeric__income": 1.0,
            "categorical__city_paris": 0.5,
            "categorical__city_nice": 0.5,
        }
    )
    profile = _with_importance(output)
    assert profile.importance == {"age": 0.5, "income": 0.25, "city": 0.25}


def test_no_importance_or_only_zeros_records_none() -> None:
    assert _with_importance(None).importance is None
    assert _with_importance({"age": 0.0, "income": -0.1}).importance is None


def test_a_profile_written_before_importance_existed_is_read_as_without_importance() -> None:
    data = _profile().to_dict()
    del data["importance"]
    assert ReferenceProfile.from_dict(data).importance is None


def test_importance_of_a_name_that_is_no_feature_is_refused_with_the_name() -> None:
    with pytest.raises(DataValidationError, match="feature importance names 'numeric__height'"):
        _with_importance({"numeric__height": 1.0})


def test_predictions_of_a_sample_of_the_rows_are_profiled_against_that_sample() -> None:
    frame = _training_frame(10)
    sample = np.array([1, 4, 7])
    profile = build_reference_profile(
        frame,
        ["yes", "no", "yes"],
        numeric=["age"],
        categorical=["city"],
        task="classification",
        prediction_rows=sample,
    )
    assert profile.columns["age"].n == 10
    assert profile.columns[PREDICTION] == CategoricalReference(
        n=3, counts={"no": 1, "yes": 2}, missing=0
    )
    with pytest.raises(DataValidationError, match="2 predictions for 3 feature rows"):
        build_reference_profile(
            frame,
            ["yes", "no"],
            numeric=["age"],
            categorical=[],
            task="classification",
            prediction_rows=sample,
        )
