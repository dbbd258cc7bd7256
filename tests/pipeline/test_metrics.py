"""The metric table: one entry per metric, agreeing with scikit-learn and with every user."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.metrics import get_scorer

from pipeline import metrics
from pipeline.steps import bootstrap
from tests.pipeline.factories import REPO_ROOT

Y = np.array(["a", "b", "c", "a", "b", "c", "a", "b"])
PREDICTED = np.array(["a", "b", "a", "a", "c", "c", "a", "b"])
PROBA = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.1, 0.8, 0.1],
        [0.5, 0.2, 0.3],
        [0.6, 0.3, 0.1],
        [0.2, 0.3, 0.5],
        [0.1, 0.1, 0.8],
        [0.8, 0.1, 0.1],
        [0.3, 0.6, 0.1],
    ]
)
TARGET = np.array([3.0, 1.5, 4.0, 2.0, 0.5])
ESTIMATE = np.array([2.5, 1.0, 4.5, 2.0, 1.5])


def test_a_metric_is_found_by_its_name_with_or_without_the_held_out_prefix() -> None:
    assert metrics.metric("test_rmse") is metrics.metric("rmse") is metrics.METRICS["rmse"]
    assert metrics.metric("rmse").held_out == "test_rmse"


def test_an_unknown_metric_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown metric 'test_auc'; known: accuracy"):
        metrics.metric("test_auc")


def test_errors_are_lower_is_better_and_their_scorers_are_negated() -> None:
    lower = {m.name for m in metrics.METRICS.values() if m.lower_is_better}
    assert lower == {"log_loss", "rmse", "mae"}
    assert {m.name for m in metrics.METRICS.values() if m.scorer_sign < 0} == lower


def test_every_scorer_exists_in_scikit_learn_and_belongs_to_the_metrics_task() -> None:
    for metric in metrics.METRICS.values():
        get_scorer(metric.scorer)
        assert metrics.scorer_task(metric.scorer) == metric.task


def test_a_name_that_is_no_scikit_learn_scorer_has_no_task() -> None:
    assert metrics.scorer_task("f1_mucro") is None


def test_cross_validation_uses_the_metrics_that_need_no_probabilities() -> None:
    assert [m.name for m in metrics.cross_validated("classification")] == ["accuracy", "f1_macro"]
    assert [m.name for m in metrics.cross_validated("regression")] == ["rmse", "mae", "r2"]


def test_held_out_keeps_only_the_test_metrics_of_a_run() -> None:
    logged = {"cv_rmse_mean": 1.0, "test_rmse": 2.0, "test_r2": 0.5, "search_score_mean": 3.0}
    assert metrics.held_out(logged) == {"test_rmse": 2.0, "test_r2": 0.5}


def test_classification_metrics_equal_scikit_learn() -> None:
    labels = ["a", "b", "c"]
    computed = metrics.prediction_metrics("classification", Y, PREDICTED, PROBA, labels)
    assert computed == pytest.approx(
        {
            "accuracy": skm.accuracy_score(Y, PREDICTED),
            "f1_macro": skm.f1_score(Y, PREDICTED, average="macro"),
            "roc_auc": skm.roc_auc_score(Y, PROBA, multi_class="ovr", labels=labels),
            "log_loss": skm.log_loss(Y, PROBA, labels=labels),
        }
    )


def test_regression_metrics_equal_scikit_learn() -> None:
    assert metrics.prediction_metrics("regression", TARGET, ESTIMATE) == pytest.approx(
        {
            "rmse": skm.root_mean_squared_error(TARGET, ESTIMATE),
            "mae": skm.mean_absolute_error(TARGET, ESTIMATE),
            "r2": skm.r2_score(TARGET, ESTIMATE),
        }
    )


def test_metrics_that_cannot_be_computed_on_the_rows_are_left_out() -> None:
    assert set(metrics.prediction_metrics("regression", TARGET[:1], ESTIMATE[:1])) == {
        "rmse",
        "mae",
    }
    without_proba = metrics.prediction_metrics("classification", Y, PREDICTED)
    assert set(without_proba) == {"accuracy", "f1_macro"}
    unknown_label = metrics.prediction_metrics("classification", Y, PREDICTED, PROBA, ["a", "b"])
    assert set(unknown_label) == {"accuracy", "f1_macro"}
    assert metrics.prediction_metrics("classification", [], []) == {}


def test_every_metric_has_a_paired_bootstrap() -> None:
    assert set(bootstrap._WEIGHTED) == set(metrics.METRICS)


def test_importing_the_table_and_the_config_imports_no_heavy_library() -> None:
    # pyarrow (and NumPy under it) come with pipeline.contracts, which the config reads the
    # prediction log's default directory from; the libraries that take seconds must not.
    code = (
        "import sys, pipeline.metrics, pipeline.config\n"
        "print(sorted({'mlflow', 'sklearn', 'pandas', 'scipy', 'matplotlib'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("classes", [["no", "yes"], ["setosa", "versicolor", "virginica"]])
def test_text_labels_score_exactly_as_scikit_learn_scores_them(classes: list[str]) -> None:
    """Metrics are computed on integer codes of text labels (fast); the values are sklearn's."""
    rng = np.random.default_rng(0)
    y = rng.choice(classes, 500).astype(object)
    proba = rng.dirichlet(np.ones(len(classes)), 500)
    predicted = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    got = metrics.prediction_metrics("classification", y, predicted, proba, classes)
    assert got["accuracy"] == skm.accuracy_score(y, predicted)
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, predicted, average="macro"), abs=1e-12)
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, proba, labels=classes), abs=1e-12)
    expected_auc = (
        skm.roc_auc_score(y == classes[1], proba[:, 1])
        if len(classes) == 2
        else skm.roc_auc_score(y, proba, multi_class="ovr", labels=classes)
    )
    assert got["roc_auc"] == pytest.approx(expected_auc, abs=1e-12)
    diagnostics = metrics.classification_diagnostics(y, predicted, proba, classes, classes[-1])
    assert diagnostics["balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score(y, predicted), abs=1e-12
    )
    recall = skm.recall_score(y, predicted, labels=classes, average=None)
    assert [diagnostics[f"recall_{c}"] for c in classes] == pytest.approx(recall.tolist())
