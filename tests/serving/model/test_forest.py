"""forest: a forest's probabilities, walked level by level or gathered tree by tree, equal
scikit-learn's ``predict_proba`` to the bit, or the walk is not used at all."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression

from serving.model import forest as forests
from serving.model.forest import ForestWalk, compile_walk, forest_proba


def _data(rows: int = 400, seed: int = 4, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 5)) * [1.0, 30.0, 1e4, 1e-3, 7.0]
    score = X[:, 0] + X[:, 4] / 7 + X[:, 1] / 30
    bounds = [-0.5, 0.5] if classes == 3 else [0.0]
    return X, np.array(["low", "mid", "high"])[np.digitize(score, bounds)]


def _walk(model: Any) -> ForestWalk:
    walk = compile_walk(model)
    assert walk is not None
    return walk


FORESTS = {
    "random forest, 3 classes": lambda X, y: RandomForestClassifier(
        n_estimators=12, random_state=1
    ).fit(X, y),
    "shallow random forest": lambda X, y: RandomForestClassifier(
        n_estimators=5, max_depth=2, random_state=2
    ).fit(X, y),
    "extra trees": lambda X, y: ExtraTreesClassifier(n_estimators=9, random_state=3).fit(X, y),
}


@pytest.mark.parametrize("build", FORESTS.values(), ids=FORESTS.keys())
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_the_walk_equals_predict_proba_to_the_bit(build: Any, rows: int) -> None:
    X, y = _data()
    model = build(X[:300], y[:300])
    walk = _walk(model)
    # Held-out rows, and rows exactly at the split thresholds (where <= decides).
    at_thresholds = X[300 : 300 + rows].copy()
    column = walk.feature[np.isfinite(walk.threshold)][:rows]
    at_thresholds[np.arange(column.size), column] = walk.threshold[np.isfinite(walk.threshold)][
        :rows
    ]
    for batch in (X[300 : 300 + rows], at_thresholds):
        expected = model.predict_proba(batch).tobytes()
        # float32, as the forest's input check hands it over
        assert walk.mean(batch.astype(np.float32)).tobytes() == expected
        assert forest_proba(model, batch, walk).tobytes() == expected


@pytest.mark.parametrize(
    "layout",
    [np.ascontiguousarray, np.asfortranarray, lambda rows: rows.astype(np.float32)],
    ids=["C float64", "F float64", "float32"],
)
def test_the_walk_takes_each_layout_the_preprocessing_hands_over(
    layout: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    X, y = _data()
    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(X[:300], y[:300])
    batch = layout(X[300:316])
    walk = _walk(model)
    checked = _count_input_checks(model, monkeypatch)
    walked = forest_proba(model, batch, walk)
    assert checked == []  # walked without scikit-learn's input check
    assert walked.tobytes() == model.predict_proba(batch).tobytes()
    assert walked.flags.c_contiguous


def _count_input_checks(model: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows of each call to ``model``'s own input check from now on."""
    calls: list[int] = []
    check = model._validate_X_predict

    def counted(features: Any) -> Any:
        calls.append(len(features))
        return check(features)

    monkeypatch.setattr(model, "_validate_X_predict", counted)
    return calls


@pytest.mark.parametrize("value", [1e39, np.inf, -np.inf])
def test_values_beyond_float32_are_refused_as_scikit_learn_refuses_them(
    value: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    X, y = _data()
    model = RandomForestClassifier(n_estimators=4, random_state=0).fit(X[:300], y[:300])
    batch = X[300:303].copy()
    batch[1, 2] = value
    with pytest.raises(ValueError, match="infinity or a value too large") as expected:
        model.predict_proba(batch)
    walk = _walk(model)
    checked = _count_input_checks(model, monkeypatch)
    with pytest.raises(ValueError) as walked:
        forest_proba(model, batch, walk)
    assert str(walked.value) == str(expected.value)
    assert checked == [3]  # not finite: left to the check, which refuses it


def test_missing_values_go_where_the_trees_send_them_trained_with_gaps_or_not() -> None:
    X, y = _data(classes=2)
    gappy = X.copy()
    gappy[np.random.default_rng(5).random(X.shape) < 0.15] = np.nan
    for training in (X, gappy):
        model = RandomForestClassifier(n_estimators=15, random_state=0).fit(training[:300], y[:300])
        walk = _walk(model)
        batch = gappy[300:340]
        assert np.isnan(batch).any()
        assert forest_proba(model, batch, walk).tobytes() == model.predict_proba(batch).tobytes()


def test_a_large_batch_is_traversed_tree_by_tree_not_walked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    X, y = _data()
    model = RandomForestClassifier(n_estimators=6, random_state=0).fit(X[:300], y[:300])
    walk = _walk(model)
    rows = forests.WALK_ROW_LEVELS // walk.depth + 1
    assert walk.fits(rows - 1) and not walk.fits(rows)
    batch = np.resize(X[300:], (rows, X.shape[1]))
    _refuse_walking(monkeypatch)
    assert forest_proba(model, batch, walk).tobytes() == model.predict_proba(batch).tobytes()


def _refuse_walking(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, any walk taken fails the test."""

    def refused(self: ForestWalk, features: np.ndarray) -> np.ndarray:
        pytest.fail("walked")

    monkeypatch.setattr(ForestWalk, "mean", refused)


def test_a_walk_is_used_only_for_the_forest_it_was_compiled_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    X, y = _data()
    first = RandomForestClassifier(n_estimators=4, random_state=0).fit(X[:300], y[:300])
    second = RandomForestClassifier(n_estimators=4, random_state=9).fit(X[:300], y[:300])
    walk = _walk(first)
    _refuse_walking(monkeypatch)
    batch = X[300:310]
    assert forest_proba(second, batch, walk).tobytes() == second.predict_proba(batch).tobytes()


@pytest.mark.parametrize("kind", ["not a forest", "a regressor", "two outputs"])
def test_only_single_output_forest_classifiers_are_walked(kind: str) -> None:
    X, y = _data(classes=2)
    fitted = {
        "not a forest": lambda: LogisticRegression().fit(X, y),
        "a regressor": lambda: RandomForestRegressor(n_estimators=3).fit(X, X[:, 0]),
        "two outputs": lambda: RandomForestClassifier(n_estimators=3).fit(
            X, np.stack([y, y[::-1]], axis=1)
        ),
    }
    assert compile_walk(fitted[kind]()) is None


def test_a_forest_too_large_to_copy_is_not_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    X, y = _data()  # three classes: 33 + 8 x 3 bytes a node
    model = RandomForestClassifier(n_estimators=4, random_state=0).fit(X[:300], y[:300])
    size = sum(tree.tree_.node_count for tree in model.estimators_) * (33 + 8 * 3)
    monkeypatch.setattr(forests, "MAX_WALK_BYTES", size - 1)
    assert compile_walk(model) is None
    monkeypatch.setattr(forests, "MAX_WALK_BYTES", size)
    assert compile_walk(model) is not None


def test_batches_whose_temporary_arrays_would_be_large_are_not_walked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    X, y = _data()
    model = RandomForestClassifier(n_estimators=4, max_depth=2, random_state=0).fit(X, y)
    walk = _walk(model)
    monkeypatch.setattr(forests, "MAX_WALK_CELLS", 10 * 4 * 3)  # rows x trees x classes
    assert walk.fits(10) and not walk.fits(11) and not walk.fits(0)
    batch = X[:11]
    checked = _count_input_checks(model, monkeypatch)
    walked = forest_proba(model, batch, walk)
    assert checked == [11]  # traversed tree by tree, after the check
    assert walked.tobytes() == model.predict_proba(batch).tobytes()


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize(
    ("batch", "error"),
    [(np.empty((0, 5)), ValueError), (np.asmatrix(np.ones((2, 5))), TypeError)],
    ids=["no rows", "np.matrix"],
)
def test_inputs_scikit_learn_refuses_are_refused_the_same_way(batch: Any, error: Any) -> None:
    X, y = _data()
    model = RandomForestClassifier(n_estimators=4, random_state=0).fit(X, y)
    with pytest.raises(error) as expected:
        model.predict_proba(batch)
    with pytest.raises(error) as walked:
        forest_proba(model, batch, _walk(model))
    assert str(walked.value) == str(expected.value)


def test_a_walk_that_cannot_be_built_leaves_the_forest_to_scikit_learn(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    X, y = _data()
    model = RandomForestClassifier(n_estimators=4, random_state=0).fit(X, y)

    def broken(forest: Any, structures: list[Any]) -> ForestWalk:
        raise IndexError("an unforeseen tree")

    monkeypatch.setattr(forests, "_flatten", broken)
    with caplog.at_level(logging.WARNING, logger=forests.__name__):
        assert compile_walk(model) is None
    assert "could not be built (IndexError: an unforeseen tree)" in caplog.text


def test_a_forest_that_refuses_missing_values_is_still_checked_on_every_finite_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    X, y = _data()
    model = RandomForestClassifier(n_estimators=6, random_state=0).fit(X, y)
    predict_proba = model.predict_proba

    def refusing_gaps(features: Any) -> Any:  # as scikit-learn does for trees without support
        if np.isnan(features).any():
            raise ValueError("Input X contains NaN.")
        return predict_proba(features)

    monkeypatch.setattr(model, "predict_proba", refusing_gaps)
    assert compile_walk(model) is not None
    _with_strict_thresholds(monkeypatch)
    assert compile_walk(model) is None


def test_a_walk_that_differs_from_scikit_learn_is_not_used_and_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    X, y = _data()
    model = RandomForestClassifier(n_estimators=8, random_state=0).fit(X[:300], y[:300])
    _with_strict_thresholds(monkeypatch)
    with caplog.at_level(logging.WARNING, logger=forests.__name__):
        assert compile_walk(model) is None
    assert "a probability differs from scikit-learn's on the probe rows" in caplog.text


def _with_strict_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Walks built from now on go left on x < threshold instead of x <= threshold: they
    differ from scikit-learn only for values on a threshold."""
    flatten = forests._flatten

    def strict_thresholds(forest: Any, structures: list[Any]) -> ForestWalk:
        walk = flatten(forest, structures)
        split = np.isfinite(walk.threshold)
        below = np.nextafter(walk.threshold.astype(np.float32), np.float32(-np.inf))
        return dataclasses.replace(walk, threshold=np.where(split, below, walk.threshold))

    monkeypatch.setattr(forests, "_flatten", strict_thresholds)


def test_a_walk_sending_missing_values_the_wrong_way_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    X, y = _data(classes=2)
    X[np.random.default_rng(5).random(X.shape) < 0.15] = np.nan
    model = RandomForestClassifier(n_estimators=8, random_state=0).fit(X, y)
    flatten = forests._flatten

    def flipped(forest: Any, structures: list[Any]) -> ForestWalk:
        walk = flatten(forest, structures)
        return dataclasses.replace(walk, nan_right=~walk.nan_right)

    assert compile_walk(model) is not None
    monkeypatch.setattr(forests, "_flatten", flipped)
    assert compile_walk(model) is None


def test_forest_probabilities_of_a_large_frame_split_over_cores_equal_sklearn_to_the_bit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(3_000, 4)), columns=list("abcd"))
    model = RandomForestClassifier(n_estimators=7, random_state=0).fit(
        frame[:500], (frame["a"][:500] > 0).astype(int)
    )
    monkeypatch.setattr(forests, "_cores", lambda: 3)
    assert [(c.start, c.stop) for c in forests._row_chunks(3_000)] == [
        (0, 1_000),
        (1_000, 2_000),
        (2_000, 3_000),
    ]
    assert np.array_equal(forest_proba(model, frame, _walk(model)), model.predict_proba(frame))


def test_forest_probabilities_gathered_from_the_leaves_equal_sklearn_to_the_bit() -> None:
    X, y = _data()
    model = RandomForestClassifier(n_estimators=9, max_depth=6, random_state=1).fit(
        X[:300], y[:300]
    )
    for rows in (X[300:301], X[300:]):
        assert forest_proba(model, rows).tobytes() == model.predict_proba(rows).tobytes()


def test_forest_probabilities_of_a_small_frame_stay_on_one_thread() -> None:
    assert forests._row_chunks(forests.PARALLEL_FOREST_ROWS - 1) == [
        slice(0, forests.PARALLEL_FOREST_ROWS - 1)
    ]
