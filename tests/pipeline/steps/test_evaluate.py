from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn import metrics as skm

from pipeline.config import load_config
from pipeline.contracts import InputDomain
from pipeline.steps import evaluate, ingest, train
from tests.pipeline.factories import diabetes_config, fitted, shipped_config


def test_regression_scores_are_rmse_mae_and_r2_of_the_held_out_rows(
    write_config: Callable[..., Path],
) -> None:
    config = load_config(write_config(diabetes_config()))
    diabetes = fitted(config)
    model, data_split = diabetes.model, diabetes.split
    scores = evaluate.score(config, model, data_split.X_test, data_split.y_test)
    predicted = model.predict(data_split.X_test)
    assert scores["test_rmse"] == pytest.approx(
        np.sqrt(skm.mean_squared_error(data_split.y_test, predicted))
    )
    assert scores["test_mae"] == pytest.approx(
        skm.mean_absolute_error(data_split.y_test, predicted)
    )
    assert scores["test_r2"] == pytest.approx(skm.r2_score(data_split.y_test, predicted))


def test_a_classifier_without_probabilities_gets_no_probability_metrics(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    config = load_config(
        write_config(
            iris_config(
                estimator={"class_path": "sklearn.svm.LinearSVC"},
                gate={"metric": "test_accuracy"},
            )
        )
    )
    svc = fitted(config)
    scores = evaluate.score(config, svc.model, svc.split.X_test, svc.split.y_test)
    assert set(scores) == {"test_accuracy", "test_f1_macro"}


def test_a_binary_evaluation_logs_roc_and_precision_recall_curves(
    mlflow_store: str, write_config: Callable[..., Path]
) -> None:
    config = load_config(
        write_config(
            {
                "experiment": "bc",
                "registered_model": "bc",
                "task": "classification",
                "data": {"dataset": "breast_cancer", "target": "diagnosis"},
                "estimator": {
                    "class_path": "sklearn.linear_model.LogisticRegression",
                    "params": {"max_iter": 500},
                },
                "split": {"cv_folds": 2},
                "gate": {"metric": "test_roc_auc"},
            }
        )
    )
    dataset = ingest.run(config)
    training = train.run(config, dataset)
    result = evaluate.run(config, training.run_id, training.model, training.split)
    assert set(result.plots) == {
        "plots/confusion_matrix.png",
        "plots/roc_curve.png",
        "plots/precision_recall_curve.png",
        "plots/feature_importance.png",
        "plots/reliability_curve.png",
    }
    logged = {a.path for a in MlflowClient().list_artifacts(training.run_id, "plots")}
    assert logged == set(result.plots)
    run = MlflowClient().get_run(training.run_id)
    metrics = run.data.metrics
    assert 0.9 < metrics["test_roc_auc"] <= 1.0
    # What a binary problem needs beside the gate metric, about the positive class.
    positive = run.data.tags["data.positive_class"]
    assert positive == str(training.model.classes_[1])
    proba = training.model.predict_proba(training.split.X_test)[:, 1]
    is_positive = training.split.y_test.astype(str) == positive
    assert metrics["test_average_precision"] == pytest.approx(
        skm.average_precision_score(is_positive, proba)
    )
    assert metrics["test_brier"] == pytest.approx(skm.brier_score_loss(is_positive, proba))
    predicted = training.model.predict(training.split.X_test)
    assert metrics["test_balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score(training.split.y_test, predicted)
    )
    for label in training.model.classes_:
        assert f"test_recall_{label}" in metrics and f"test_precision_{label}" in metrics
    # The majority class's share on the same rows, as the baseline scores it.
    assert metrics["baseline_test_roc_auc"] == pytest.approx(0.5)
    assert "cv_roc_auc_mean" in metrics


def test_the_input_domain_holds_training_categories_and_ranges(
    write_config: Callable[..., Path],
) -> None:
    config = shipped_config("customers")
    customers = fitted(config)
    domain = evaluate.input_domain(customers.model, customers.split.X_train)
    X = customers.split.X_train
    tenure = domain.columns["tenure_months"]
    assert (tenure.low, tenure.high) == (X["tenure_months"].min(), X["tenure_months"].max())
    assert domain.columns["contract"].categories == set(X["contract"].dropna().astype(str))
    record = {"contract": "lifetime", "tenure_months": 10_000.0, "monthly_charges": None}
    assert domain.warnings(record) == [
        f"tenure_months: 10000 is outside the training range [{tenure.low:g}, {tenure.high:g}]",
        "contract: category 'lifetime' was not seen in training",
    ]
    assert InputDomain.from_json(domain.to_json()) == domain


def test_permutation_importance_names_the_input_columns(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    config = load_config(write_config(iris_config()))
    iris = fitted(config)
    importance = evaluate.feature_importance(
        config, iris.model, iris.split.X_test, iris.split.y_test
    )
    assert importance is not None
    assert set(importance.index) == set(iris.split.X_test.columns)
    # Petal measurements separate the species; sepal width barely does.
    assert importance.idxmax().startswith("petal")


@pytest.mark.parametrize(
    ("config_of", "plots"),
    [
        (
            lambda iris: iris(),
            {
                "plots/confusion_matrix.png",
                "plots/roc_curve.png",
                "plots/precision_recall_curve.png",
                "plots/reliability_curve.png",
                "plots/feature_importance.png",
            },
        ),
        (
            lambda iris: iris(
                estimator={"class_path": "sklearn.svm.LinearSVC"},
                gate={"metric": "test_accuracy"},
            ),
            {"plots/confusion_matrix.png", "plots/feature_importance.png"},
        ),
        (
            lambda iris: diabetes_config(),
            {"plots/residuals.png", "plots/feature_importance.png"},
        ),
    ],
    ids=["multiclass with probabilities", "classifier without probabilities", "regressor"],
)
def test_every_task_gets_its_plots_from_one_set_of_held_out_answers(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
    config_of: Callable[..., dict[str, Any]],
    plots: set[str],
) -> None:
    config = load_config(write_config(config_of(iris_config)))
    training = train.run(config, ingest.run(config))
    result = evaluate.run(config, training.run_id, training.model, training.split)
    assert set(result.plots) == plots
    # The metrics logged are those of scoring the model afresh on the held-out rows.
    logged = MlflowClient().get_run(training.run_id).data.metrics
    fresh = evaluate.score(config, training.model, training.split.X_test, training.split.y_test)
    assert {name: logged[name] for name in fresh} == pytest.approx(fresh)


@pytest.mark.parametrize("config_name", ["customers", "iris"])
def test_a_gradient_boosting_classifier_answers_exactly_as_its_predict_and_predict_proba(
    config_name: str, iris_config: Callable[..., dict[str, Any]], write_config: Callable[..., Path]
) -> None:
    # customers: two classes, text categories; iris: three classes.
    config = (
        shipped_config("customers")
        if config_name == "customers"
        else load_config(
            write_config(
                iris_config(
                    estimator={
                        "class_path": "sklearn.ensemble.HistGradientBoostingClassifier",
                        "params": {"max_iter": 20},
                    }
                )
            )
        )
    )
    model = fitted(config)
    X = model.split.X_test
    answers = evaluate.Answers.of(config, model.model, X)
    assert evaluate._answers_in_one_pass(model.model, X) is not None
    assert np.array_equal(answers.predicted, model.model.predict(X))
    assert answers.predicted.dtype == model.model.predict(X).dtype
    assert answers.proba is not None
    assert np.array_equal(answers.proba, model.model.predict_proba(X))


def test_another_classifier_is_asked_for_predict_and_predict_proba(
    iris_config: Callable[..., dict[str, Any]], write_config: Callable[..., Path]
) -> None:
    config = load_config(write_config(iris_config()))
    iris = fitted(config)
    answers = evaluate.Answers.of(config, iris.model, iris.split.X_test)
    assert evaluate._answers_in_one_pass(iris.model, iris.split.X_test) is None
    assert np.array_equal(answers.predicted, iris.model.predict(iris.split.X_test))


def test_the_reference_profile_predicts_a_seeded_sample_of_the_training_rows(
    monkeypatch: pytest.MonkeyPatch,
    iris_config: Callable[..., dict[str, Any]],
    write_config: Callable[..., Path],
) -> None:
    config = load_config(write_config(iris_config()))
    iris = fitted(config)
    monkeypatch.setattr(evaluate, "PROFILE_PREDICTION_ROWS", 40)
    profile = evaluate.reference_profile(config, iris.model, iris.split)
    predicted = profile.columns["prediction"]
    train_rows = len(iris.split.X_train)
    assert profile.columns["petal_length_cm"].n == train_rows > 40
    assert predicted.n == 40
    sample = evaluate._sample_rows(train_rows, 40, config.split.seed)
    assert sample is not None
    expected = pd.Series(iris.model.predict(iris.split.X_train.iloc[sample])).value_counts()
    assert predicted.counts == {str(k): int(v) for k, v in expected.items()}
    assert evaluate.reference_profile(config, iris.model, iris.split) == profile
    monkeypatch.setattr(evaluate, "PROFILE_PREDICTION_ROWS", train_rows)
    every_row = evaluate.reference_profile(config, iris.model, iris.split)
    assert every_row.columns["prediction"].n == train_rows
