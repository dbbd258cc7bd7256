"""fastpath: the NumPy replay of a model's preprocessing equals scikit-learn's to the bit, or is
not used at all."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MinMaxScaler,
    OneHotEncoder,
    RobustScaler,
    StandardScaler,
)

from serving.model import fastpath
from serving.model.fastpath import FastPreprocessing, compile_preprocessing

NAMES = ("mean radius", "texture [mm]", "area", "smoothness", "symmetry")


def _training(rows: int = 300, seed: int = 3) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rows, len(NAMES))) * [1.0, 30.0, 1e4, 1e-3, 7.0] + [0, 5, 2e4, 0, -3]
    values[:, :3][rng.random((rows, 3)) < 0.1] = np.nan  # missing values in the first three
    frame = pd.DataFrame(values, columns=list(NAMES))
    return frame, (np.nan_to_num(values[:, 0]) + np.nan_to_num(values[:, 4]) > -3).astype(int)


def _served(rows: np.ndarray) -> pd.DataFrame:
    """A frame built as the server builds them: one C-ordered float64 matrix."""
    matrix = np.ascontiguousarray(rows, dtype=np.float64)
    return pd.DataFrame(matrix, columns=list(NAMES), copy=False)


def _fitted(preprocess: list[tuple[str, Any]], final: Any = None) -> Pipeline:
    features, y = _training()
    model = Pipeline([*preprocess, ("model", final or LogisticRegression(max_iter=2000))])
    return model.fit(features, y)


def _columns(*transformers: tuple[str, Any, list[str]], remainder: str = "drop") -> Any:
    return ("preprocess", ColumnTransformer(list(transformers), remainder=remainder))


def _imputed_scaled(strategy: str = "mean") -> Pipeline:
    return Pipeline(
        [("impute", SimpleImputer(strategy=strategy, fill_value=0.0)), ("scale", StandardScaler())]
    )


REPLAYED = {
    "scaler on every column": [_columns(("num", _imputed_scaled(), list(NAMES)))],
    "a subset, reordered, and passthrough": [
        _columns(
            ("num", _imputed_scaled("median"), ["symmetry", "area", "mean radius"]),
            ("raw", "passthrough", ["smoothness"]),
        )
    ],
    "min-max clipped, robust, constant fill": [
        _columns(
            (
                "minmax",
                Pipeline([("impute", SimpleImputer()), ("mm", MinMaxScaler(clip=True))]),
                ["area", "texture [mm]"],
            ),
            (
                "robust",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="constant", fill_value=0.0)),
                        ("rb", RobustScaler()),
                    ]
                ),
                ["mean radius", "symmetry", "smoothness"],
            ),
        )
    ],
    "most frequent, then a step after the columns": [
        _columns(("num", SimpleImputer(strategy="most_frequent"), list(NAMES))),
        ("scale", StandardScaler(with_mean=False)),
    ],
    "columns kept by the remainder": [
        _columns(("num", _imputed_scaled(), list(NAMES[:3])), remainder="passthrough")
    ],
    "no column transformer": [("impute", SimpleImputer()), ("scale", StandardScaler())],
}


@pytest.mark.parametrize("preprocess", REPLAYED.values(), ids=REPLAYED.keys())
def test_replayed_preprocessing_gives_the_final_estimator_scikit_learn_s_bits_and_layout(
    preprocess: list[tuple[str, Any]],
) -> None:
    model = _fitted(preprocess)
    fast = compile_preprocessing(model, NAMES)
    assert fast is not None
    rng = np.random.default_rng(11)
    rows = _training(rows=64, seed=5)[0].to_numpy() * rng.uniform(0.5, 2.0, size=(64, 1))
    for batch in (rows, rows[:1], rows[7:40]):
        frame = _served(batch)
        expected = model[:-1].transform(frame)
        matrix = fast.matrix(frame)
        assert matrix is not None
        actual = fast.transform(matrix)
        assert actual.dtype == expected.dtype and actual.strides == expected.strides
        assert actual.tobytes() == expected.tobytes()
        final = fast.final
        assert final.predict_proba(actual).tobytes() == model.predict_proba(frame).tobytes()


def test_replay_of_a_regressor_s_preprocessing_predicts_what_the_pipeline_does() -> None:
    model = _fitted(REPLAYED["scaler on every column"], final=Ridge())
    fast = compile_preprocessing(model, NAMES)
    assert fast is not None
    frame = _served(_training(rows=20, seed=8)[0].to_numpy())
    matrix = fast.matrix(frame)
    assert matrix is not None
    assert fast.final.predict(fast.transform(matrix)).tobytes() == model.predict(frame).tobytes()


NOT_REPLAYED = {
    "a one-hot encoder": [_columns(("cat", OneHotEncoder(handle_unknown="ignore"), ["area"]))],
    "a function transformer with a function": [
        _columns(("abs", FunctionTransformer(np.abs), ["symmetry"]))
    ],
    "missing-value indicators": [_columns(("num", SimpleImputer(add_indicator=True), list(NAMES)))],
    "pandas output": [
        _columns(("num", StandardScaler().set_output(transform="pandas"), list(NAMES)))
    ],
}


@pytest.mark.parametrize("preprocess", NOT_REPLAYED.values(), ids=NOT_REPLAYED.keys())
def test_preprocessing_the_replay_does_not_know_is_left_to_scikit_learn(
    preprocess: list[tuple[str, Any]],
) -> None:
    features, y = _training()
    model = Pipeline([*preprocess, ("model", LogisticRegression(max_iter=2000))])
    model.fit(features.fillna(0.0), y)
    assert compile_preprocessing(model, NAMES) is None


def test_an_estimator_without_preprocessing_or_with_unknown_inputs_has_no_replay() -> None:
    features, y = _training()
    bare = LogisticRegression().fit(features.fillna(0.0), y)
    assert compile_preprocessing(bare, NAMES) is None
    model = _fitted(REPLAYED["scaler on every column"])
    assert compile_preprocessing(model, (*NAMES[:-1], "another column")) is None


def test_an_imputer_that_drops_a_column_without_values_is_left_to_scikit_learn() -> None:
    features, y = _training()
    features["area"] = np.nan  # SimpleImputer drops it at transform, with a warning
    model = Pipeline([_columns(("num", SimpleImputer(), list(NAMES))), ("model", Ridge())])
    with pytest.warns(UserWarning, match="Skipping features"):
        model.fit(features, y)
    assert compile_preprocessing(model, NAMES) is None


def test_a_replay_that_differs_from_scikit_learn_is_not_used_and_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = _fitted(REPLAYED["scaler on every column"])

    def divided_first(scaler: StandardScaler) -> fastpath.Step:
        # The two operations swapped: equal in exact arithmetic, not in floating point.
        def step(block: np.ndarray) -> np.ndarray:
            return (block / scaler.scale_ - scaler.mean_ / scaler.scale_).copy()

        return step

    monkeypatch.setattr(fastpath, "_standard", divided_first)
    with caplog.at_level(logging.WARNING, logger=fastpath.__name__):
        assert compile_preprocessing(model, NAMES) is None
    assert "a value differs from scikit-learn's" in caplog.text


def _replay() -> FastPreprocessing:
    fast = compile_preprocessing(_fitted(REPLAYED["scaler on every column"]), NAMES)
    assert fast is not None
    return fast


@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame(np.asfortranarray(np.ones((4, 5))), columns=list(NAMES), copy=False),
        pd.DataFrame(np.ones((4, 5)), columns=list(reversed(NAMES)), copy=False),
        pd.DataFrame(np.ones((4, 5), dtype=np.float32), columns=list(NAMES)),
        pd.DataFrame({name: np.ones(4) for name in NAMES}),
        _served(np.array([[1.0, np.inf, 2.0, 3.0, 4.0]])),
    ],
    ids=["column-ordered", "other column order", "float32", "column by column", "infinity"],
)
def test_frames_not_built_as_the_server_builds_them_are_left_to_scikit_learn(
    frame: pd.DataFrame,
) -> None:
    assert _replay().matrix(frame) is None


def test_the_replay_leaves_the_matrix_it_is_given_untouched() -> None:
    fast = _replay()
    frame = _served(_training(rows=10)[0].to_numpy())
    before = frame.to_numpy().copy()
    matrix = fast.matrix(frame)
    assert matrix is not None
    fast.transform(matrix)
    assert np.array_equal(frame.to_numpy(), before, equal_nan=True)


@pytest.mark.parametrize(
    "classes", [np.array([0, 1]), np.array(["benign", "malignant", "unsure"])], ids=["2", "3"]
)
def test_logistic_labels_and_probabilities_in_one_pass_equal_predict_and_predict_proba(
    classes: np.ndarray,
) -> None:
    features, y = _training()
    labels = classes[y if len(classes) == 2 else y + np.arange(len(y)) % 2]
    model = Pipeline([*REPLAYED["scaler on every column"], ("model", LogisticRegression())])
    model.fit(features, labels)
    fast = compile_preprocessing(model, NAMES)
    assert fast is not None and fast.answers is not None
    rows = _served(_training(rows=50, seed=9)[0].to_numpy())
    for frame in (rows, _served(rows.to_numpy()[:1])):
        matrix = fast.matrix(frame)
        assert matrix is not None
        given_labels, probabilities = fast.answers(fast.transform(matrix))
        assert given_labels.tolist() == model.predict(frame).tolist()
        assert probabilities.tobytes() == model.predict_proba(frame).tobytes()


def test_other_final_estimators_keep_their_own_predict_methods() -> None:
    fast = compile_preprocessing(_fitted(REPLAYED["scaler on every column"], final=Ridge()), NAMES)
    assert fast is not None and fast.answers is None


def test_one_pass_answers_that_differ_from_scikit_learn_are_not_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(fastpath, "expit", lambda scores: expit(scores) + 1e-12)
    with caplog.at_level(logging.WARNING, logger=fastpath.__name__):
        fast = compile_preprocessing(_fitted(REPLAYED["scaler on every column"]), NAMES)
    assert fast is not None and fast.answers is None  # the preprocessing replay stays
    assert "they differ from scikit-learn's" in caplog.text
