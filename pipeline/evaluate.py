"""Evaluate: held-out metrics and plots, logged on the candidate's own run.

Logging `test_*` metrics on the training run (not a separate evaluation run) is what lets the
MLflow experiment table compare candidates side by side in one row each.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from sklearn import metrics as skm
from sklearn.pipeline import Pipeline

from pipeline.config import PipelineConfig
from pipeline.features import Split

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationResult:
    run_id: str
    metrics: Mapping[str, float]
    plots: tuple[str, ...]


def run(
    config: PipelineConfig, run_id: str, model: Pipeline, data_split: Split
) -> EvaluationResult:
    """Score `model` on the held-out rows and log `test_*` metrics and plots on `run_id`."""
    client = MlflowClient()
    metrics = score(config, model, data_split.X_test, data_split.y_test)
    for name, value in metrics.items():
        client.log_metric(run_id, name, value)
    plots = _log_plots(client, config, run_id, model, data_split)
    logger.info(
        "Held-out metrics for run %s: %s",
        run_id,
        ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
    )
    return EvaluationResult(run_id=run_id, metrics=metrics, plots=plots)


def score(
    config: PipelineConfig, model: Pipeline, X: pd.DataFrame, y: pd.Series
) -> dict[str, float]:
    """The task's held-out metrics; the gate uses this too, so both sides score alike."""
    predicted = model.predict(X)
    if config.task == "regression":
        return {
            "test_rmse": float(np.sqrt(skm.mean_squared_error(y, predicted))),
            "test_mae": float(skm.mean_absolute_error(y, predicted)),
            "test_r2": float(skm.r2_score(y, predicted)),
        }
    result = {
        "test_accuracy": float(skm.accuracy_score(y, predicted)),
        "test_f1_macro": float(skm.f1_score(y, predicted, average="macro")),
    }
    if hasattr(model, "predict_proba"):
        proba = model.predict_proba(X)
        classes = list(model.classes_)
        result["test_log_loss"] = float(skm.log_loss(y, proba, labels=classes))
        if y.nunique() >= 2:
            if len(classes) == 2:
                positive = (np.asarray(y) == classes[1]).astype(int)
                result["test_roc_auc"] = float(skm.roc_auc_score(positive, proba[:, 1]))
            elif y.nunique() == len(classes):
                result["test_roc_auc"] = float(
                    skm.roc_auc_score(y, proba, multi_class="ovr", labels=classes)
                )
    return result


def _log_plots(
    client: MlflowClient, config: PipelineConfig, run_id: str, model: Pipeline, data_split: Split
) -> tuple[str, ...]:
    X, y = data_split.X_test, data_split.y_test
    figures: dict[str, plt.Figure] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if config.task == "classification":
            display = skm.ConfusionMatrixDisplay.from_estimator(model, X, y)
            display.ax_.set_title("Confusion matrix (held-out)")
            figures["plots/confusion_matrix.png"] = display.figure_
            if hasattr(model, "predict_proba") and len(model.classes_) == 2:
                positive = model.classes_[1]
                roc = skm.RocCurveDisplay.from_estimator(model, X, y, pos_label=positive)
                roc.ax_.set_title(f"ROC curve (positive class: {positive})")
                figures["plots/roc_curve.png"] = roc.figure_
                pr = skm.PrecisionRecallDisplay.from_estimator(model, X, y, pos_label=positive)
                pr.ax_.set_title(f"Precision-recall curve (positive class: {positive})")
                figures["plots/precision_recall_curve.png"] = pr.figure_
        else:
            residuals = skm.PredictionErrorDisplay.from_estimator(
                model, X, y, kind="residual_vs_predicted"
            )
            residuals.ax_.set_title("Residuals vs predicted (held-out)")
            figures["plots/residuals.png"] = residuals.figure_
        importance = _feature_importance(model)
        if importance is not None:
            figures["plots/feature_importance.png"] = _importance_figure(importance)
    for path, figure in figures.items():
        client.log_figure(run_id, figure, path)
        plt.close(figure)
    return tuple(figures)


def _feature_importance(model: Pipeline) -> pd.Series | None:
    estimator = model.named_steps["model"]
    values = getattr(estimator, "feature_importances_", None)
    if values is None and hasattr(estimator, "coef_"):
        coef = np.atleast_2d(estimator.coef_)
        values = np.abs(coef).mean(axis=0)
    if values is None:
        return None
    names = model.named_steps["preprocess"].get_feature_names_out()
    if len(names) != len(values):
        return None
    return pd.Series(values, index=names).sort_values().tail(20)


def _importance_figure(importance: pd.Series) -> plt.Figure:
    figure, axis = plt.subplots(figsize=(7, max(3, 0.3 * len(importance))))
    axis.barh(importance.index, importance.to_numpy())
    axis.set_title("Feature importance (top 20)")
    figure.tight_layout()
    return figure
