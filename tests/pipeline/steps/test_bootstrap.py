"""Paired bootstrap: the vectorised metrics are sklearn's, and intervals are reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from pipeline.config import BootstrapConfig
from pipeline.errors import PipelineError
from pipeline.steps import bootstrap

CLASSES = ("a", "b", "c")


def _classifier(seed: int, rows: int, skill: float) -> tuple[np.ndarray, bootstrap.Predictions]:
    rng = np.random.default_rng(seed)
    y = rng.choice(CLASSES, size=rows)
    right = rng.random(rows) < skill
    predicted = np.where(right, y, rng.choice(CLASSES, size=rows))
    proba = rng.dirichlet(np.ones(3), size=rows)
    proba[np.arange(rows), [CLASSES.index(p) for p in predicted]] += 1.0
    proba /= proba.sum(axis=1, keepdims=True)
    return y, bootstrap.Predictions(predicted=predicted, proba=proba, classes=CLASSES)


@pytest.mark.parametrize(
    ("metric", "reference"),
    [
        ("test_accuracy", lambda y, p: skm.accuracy_score(y, p.predicted)),
        ("test_f1_macro", lambda y, p: skm.f1_score(y, p.predicted, average="macro")),
        ("test_log_loss", lambda y, p: skm.log_loss(y, p.proba, labels=list(CLASSES))),
        (
            "test_roc_auc",
            lambda y, p: skm.roc_auc_score(y, p.proba, multi_class="ovr", labels=list(CLASSES)),
        ),
    ],
)
def test_classification_metrics_on_all_rows_equal_sklearn(metric: str, reference: object) -> None:
    y, predictions = _classifier(seed=3, rows=400, skill=0.7)
    ours = bootstrap._metric(metric, y, predictions, np.ones((1, len(y))))[0]
    assert ours == pytest.approx(reference(y, predictions), rel=1e-9)  # type: ignore[operator]


def test_macro_f1_of_a_resample_that_lost_a_class_matches_sklearn_on_that_sample() -> None:
    y, predictions = _classifier(seed=4, rows=60, skill=0.6)
    weights = np.zeros((1, 60))
    keep = np.flatnonzero((y != "c") & (predictions.predicted != "c"))
    weights[0, keep] = 2.0
    expected = skm.f1_score(
        np.repeat(y[keep], 2), np.repeat(predictions.predicted[keep], 2), average="macro"
    )
    assert bootstrap._metric("test_f1_macro", y, predictions, weights)[0] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("metric", "reference"),
    [
        ("test_rmse", lambda y, p: np.sqrt(skm.mean_squared_error(y, p))),
        ("test_mae", skm.mean_absolute_error),
        ("test_r2", skm.r2_score),
    ],
)
def test_regression_metrics_on_all_rows_equal_sklearn(metric: str, reference: object) -> None:
    rng = np.random.default_rng(5)
    y = rng.normal(size=300)
    predicted = y + rng.normal(scale=0.5, size=300)
    predictions = bootstrap.Predictions(predicted=predicted, proba=None, classes=())
    ours = bootstrap._metric(metric, y, predictions, np.ones((1, 300)))[0]
    assert ours == pytest.approx(reference(y, predicted), rel=1e-9)  # type: ignore[operator]


def test_the_interval_is_the_same_for_a_seed_and_moves_with_another() -> None:
    y, challenger = _classifier(seed=1, rows=200, skill=0.8)
    _, champion = _classifier(seed=2, rows=200, skill=0.7)
    champion = bootstrap.Predictions(champion.predicted, champion.proba, CLASSES)

    def interval(seed: int) -> bootstrap.GainInterval:
        return bootstrap.paired_gain_interval(
            "test_accuracy",
            y,
            challenger=challenger,
            champion=champion,
            settings=BootstrapConfig(resamples=500, confidence=0.9, seed=seed),
            lower_is_better=False,
        )

    first = interval(7)
    assert first == interval(7)
    assert (first.lower, first.upper) != (interval(8).lower, interval(8).upper)
    assert first.lower <= first.gain <= first.upper
    assert first.rows == 200 and first.resamples == 500 and first.level == 0.9
    assert "90% CI [" in first.describe() and "500 paired bootstrap resamples" in first.describe()


def test_identical_predictions_have_a_zero_width_interval() -> None:
    y, predictions = _classifier(seed=1, rows=100, skill=0.8)
    same = bootstrap.paired_gain_interval(
        "test_f1_macro",
        y,
        challenger=predictions,
        champion=predictions,
        settings=BootstrapConfig(resamples=200),
        lower_is_better=False,
    )
    assert (same.gain, same.lower, same.upper) == (0.0, 0.0, 0.0)


def test_an_error_metric_gain_is_positive_when_the_challenger_errs_less() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=500)
    good = bootstrap.Predictions(y + rng.normal(scale=0.1, size=500), None, ())
    bad = bootstrap.Predictions(y + rng.normal(scale=1.0, size=500), None, ())
    interval = bootstrap.paired_gain_interval(
        "test_rmse",
        y,
        challenger=good,
        champion=bad,
        settings=BootstrapConfig(resamples=300),
        lower_is_better=True,
    )
    assert interval.gain > 0 and interval.lower > 0


def test_an_empty_comparison_is_refused() -> None:
    empty = bootstrap.Predictions(np.array([]), None, ())
    with pytest.raises(PipelineError, match="at least one held-out row"):
        bootstrap.paired_gain_interval(
            "test_accuracy",
            np.array([]),
            challenger=empty,
            champion=empty,
            settings=BootstrapConfig(),
            lower_is_better=False,
        )
