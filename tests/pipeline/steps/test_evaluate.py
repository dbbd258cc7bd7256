from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sklearn import metrics as skm

from pipeline.config import load_config
from pipeline.steps import evaluate, ingest, train
from tests.pipeline.factories import diabetes_config, fitted


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
    }
    logged = {a.path for a in MlflowClient().list_artifacts(training.run_id, "plots")}
    assert logged == set(result.plots)
    assert 0.9 < MlflowClient().get_run(training.run_id).data.metrics["test_roc_auc"] <= 1.0
