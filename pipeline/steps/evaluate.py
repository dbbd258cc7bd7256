"""Evaluate: held-out metrics and plots, logged on the candidate's own run.

Logging `test_*` metrics on the training run (not a separate evaluation run) is what lets the
MLflow experiment table compare candidates side by side in one row each.

The run also gets the reference profile monitoring compares production traffic with
(`monitoring/reference_profile.json`): the training rows' feature distributions, the model's
predictions on them, and its held-out metrics over `monitoring.performance.reference_chunks`
chunks, named without the `test_` prefix (`accuracy`, `rmse`, ...) as monitoring names the
metrics of a production window.

Beside the gate's metrics a classifier's run gets what a binary or imbalanced problem needs to
be judged by a person: balanced accuracy, precision/recall/F1 per class, average precision,
Brier score and a reliability curve, the tuned decision threshold, the trivial baseline's score
on the same rows (``baseline_test_*``), and a warning tag when accuracy is the gate metric of a
rare class. The training rows' input domain (``input_domain.json``: categories and numeric
ranges) lets the server flag a request value the model never saw.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from sklearn import metrics as skm
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline

from pipeline import artifacts
from pipeline.config import PipelineConfig
from pipeline.contracts import INPUT_DOMAIN_ARTIFACT, ColumnDomain, InputDomain
from pipeline.metrics import as_codes, classification_diagnostics, metric, prediction_metrics
from pipeline.monitoring.profile import (
    PerformanceReference,
    ReferenceProfile,
    build_reference_profile,
)
from pipeline.steps import baseline, features, ingest
from pipeline.steps.features import Split

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

# Permutation importance: a seeded sample of held-out rows bounds its cost on big data.
IMPORTANCE_ROWS = 5_000
IMPORTANCE_REPEATS = 5
# The reference profile's prediction distribution: the model predicts a seeded sample of at
# most this many training rows (the features are profiled on every training row). A share
# estimated from 100,000 rows is within 0.5 percentage point of the whole's (3 sigma at 50%),
# far below what a drift test can see in a production window.
PROFILE_PREDICTION_ROWS = 100_000


@dataclass(frozen=True)
class Answers:
    """A model's answers on a set of rows, made once and read by every metric and plot: on a
    million held-out rows each extra pass of the model costs as much as the metric itself."""

    predicted: np.ndarray
    proba: np.ndarray | None
    """Class probabilities, columns in ``classes`` order; None for regressors and for
    classifiers without ``predict_proba``."""
    classes: list[object] | None

    def take(self, rows: np.ndarray) -> Answers:
        """The answers on some of the rows: a boolean mask or positions."""
        return Answers(
            predicted=self.predicted[rows],
            proba=None if self.proba is None else self.proba[rows],
            classes=self.classes,
        )

    @classmethod
    def of(
        cls, config: PipelineConfig, model: Pipeline | BaseEstimator, X: pd.DataFrame
    ) -> Answers:
        if config.task != "classification":
            return cls(predicted=np.asarray(model.predict(X)), proba=None, classes=None)
        classes = list(model.classes_)
        if not hasattr(model, "predict_proba"):
            return cls(predicted=np.asarray(model.predict(X)), proba=None, classes=classes)
        once = _answers_in_one_pass(model, X)
        if once is not None:
            return cls(predicted=once[0], proba=once[1], classes=classes)
        return cls(
            predicted=np.asarray(model.predict(X)), proba=model.predict_proba(X), classes=classes
        )


def _answers_in_one_pass(
    model: Pipeline | BaseEstimator, X: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray] | None:
    """(predict, predict_proba) of a HistGradientBoosting classifier from one pass of its trees,
    or None for another model. Its predict and predict_proba each walk every tree; both are
    computed from the same raw scores, here as scikit-learn's own methods compute them (a test
    checks they are equal to the two calls)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    steps = model.steps if isinstance(model, Pipeline) else [("model", model)]
    estimator = steps[-1][1]
    kind = HistGradientBoostingClassifier
    if type(estimator).predict is not kind.predict or (
        type(estimator).predict_proba is not kind.predict_proba
    ):
        return None
    Xt = model[:-1].transform(X) if isinstance(model, Pipeline) and len(steps) > 1 else X
    try:
        raw = estimator._raw_predict(Xt)
        proba = estimator._loss.predict_proba(raw)
    except AttributeError:  # scikit-learn's private helpers moved: the two public calls
        return None
    # As its predict: the sign of one raw score for two classes, else the largest.
    encoded = (raw.ravel() > 0).astype(int) if raw.shape[1] == 1 else np.argmax(raw, axis=1)
    return estimator.classes_[encoded], proba


@dataclass(frozen=True)
class EvaluationResult:
    run_id: str
    metrics: Mapping[str, float]
    plots: tuple[str, ...]
    answers: Answers | None = field(default=None, repr=False, compare=False)
    """The model's answers on the held-out rows, for the gate to read instead of asking the
    model again."""
    baseline: baseline.Baseline | None = field(default=None, repr=False, compare=False)
    """The trivial baseline fitted on the training rows, for the gate to compare with."""


def run(
    config: PipelineConfig, run_id: str, model: Pipeline, data_split: Split
) -> EvaluationResult:
    """Score `model` on the held-out rows and log `test_*` metrics and plots on `run_id`."""
    client = MlflowClient()
    answers = Answers.of(config, model, data_split.X_test)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="importance") as pool:
        # Permutation importance keeps one core busy for a second or more (it runs the model
        # on one thread); what follows until it is needed is mostly Python (metrics, the
        # baseline, figures, MLflow calls), so it runs meanwhile on the other core.
        importance_job = pool.submit(
            feature_importance, config, model, data_split.X_test, data_split.y_test
        )
        metrics = scores(config, data_split.y_test, answers)
        if config.task == "classification":
            metrics.update(diagnostics(config, data_split.y_test, answers))
        for name, value in metrics.items():
            client.log_metric(run_id, name, value)
        trivial = baseline.fit(config, data_split.X_train, data_split.y_train)
        trivial_scores = score(config, trivial.model, data_split.X_test, data_split.y_test)
        for name, value in trivial_scores.items():
            client.log_metric(run_id, f"baseline_{name}", value)
        _record_classification_notes(client, config, run_id, model, data_split)
        plots = _log_plots(client, config, run_id, data_split.y_test, answers)
        importance = importance_job.result()
    if importance is not None:
        plots += _log_importance_plot(client, run_id, importance)
    profile = reference_profile(config, model, data_split, importance, answers)
    client.log_dict(run_id, profile.to_dict(), artifacts.REFERENCE_PROFILE_PATH)
    client.log_dict(
        run_id, input_domain(model, data_split.X_train).to_json(), INPUT_DOMAIN_ARTIFACT
    )
    logger.info(
        "Held-out metrics for run %s: %s",
        run_id,
        ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
    )
    return EvaluationResult(
        run_id=run_id, metrics=metrics, plots=plots, answers=answers, baseline=trivial
    )


def score(
    config: PipelineConfig, model: Pipeline, X: pd.DataFrame, y: pd.Series
) -> dict[str, float]:
    """The task's held-out metrics; the gate uses this too, so both sides score alike."""
    return scores(config, y, Answers.of(config, model, X))


def scores(config: PipelineConfig, y: pd.Series, answers: Answers) -> dict[str, float]:
    """The task's held-out metrics (``test_*``) from answers already made."""
    values = prediction_metrics(
        config.task,
        y,
        answers.predicted,
        proba=answers.proba,
        classes=answers.classes if answers.proba is not None else None,
    )
    return {metric(name).held_out: value for name, value in values.items()}


def diagnostics(config: PipelineConfig, y: pd.Series, answers: Answers) -> dict[str, float]:
    """A classifier's held-out diagnostics (``metrics.classification_diagnostics``), ``test_*``."""
    classes = answers.classes or []
    values = classification_diagnostics(
        y, answers.predicted, answers.proba, classes, features.positive_class(config, classes)
    )
    return {f"test_{name}": value for name, value in values.items()}


def input_domain(model: Pipeline, X_train: pd.DataFrame) -> InputDomain:
    """The categories and finite numeric range of every feature in the training rows."""
    numeric, categorical = _feature_kinds(model, X_train)
    columns: dict[str, ColumnDomain] = {}
    for name in numeric:
        values = pd.to_numeric(X_train[name], errors="coerce").astype(float)
        finite = values[np.isfinite(values)]
        if len(finite):
            columns[name] = ColumnDomain(name, low=float(finite.min()), high=float(finite.max()))
    for name in categorical:
        seen = X_train[name].dropna().astype(str).unique()
        columns[name] = ColumnDomain(name, categories=frozenset(seen.tolist()))
    return InputDomain(columns)


def _record_classification_notes(
    client: MlflowClient, config: PipelineConfig, run_id: str, model: Pipeline, data_split: Split
) -> None:
    """The tuned threshold as a param, and the imbalance warning as a tag and a log line."""
    if config.task != "classification":
        return
    threshold = features.decision_threshold(model)
    if threshold is not None:
        client.log_param(run_id, "decision_threshold", f"{threshold:.6g}")
    positive = features.positive_class(config, list(model.classes_))
    client.set_tag(run_id, artifacts.POSITIVE_CLASS, str(positive))
    warning = ingest.imbalance_warning(config, data_split.y_train)
    if warning is not None:
        client.set_tag(run_id, artifacts.IMBALANCE_WARNING, warning)


def reference_profile(
    config: PipelineConfig,
    model: Pipeline,
    data_split: Split,
    importance: pd.Series | None = None,
    held_out: Answers | None = None,
) -> ReferenceProfile:
    """What monitoring compares production with: training rows, predictions, held-out chunks,
    and the features' permutation importance (drift in an important feature matters more).
    ``held_out``: the model's answers on the held-out rows, when already made."""
    numeric, categorical = _feature_kinds(model, data_split.X_train)
    if held_out is None:
        held_out = Answers.of(config, model, data_split.X_test)
    X_train = data_split.X_train
    sample = _sample_rows(len(X_train), PROFILE_PREDICTION_ROWS, config.split.seed)
    predicted = model.predict(X_train if sample is None else X_train.iloc[sample])
    return build_reference_profile(
        X_train,
        _as_logged(config.task, predicted),
        numeric=numeric,
        categorical=categorical,
        task=config.task,
        performance=_performance_reference(config, data_split.y_test, held_out),
        importance=importance,
        n_bins=config.monitoring.drift.psi_bins,
        prediction_rows=sample,
    )


def _sample_rows(rows: int, at_most: int, seed: int) -> np.ndarray | None:
    """Positions of a seeded sample of at most `at_most` of `rows` rows, in order; None when
    every row fits."""
    if rows <= at_most:
        return None
    return np.sort(np.random.default_rng(seed).choice(rows, at_most, replace=False))


def _feature_kinds(model: Pipeline, X: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Numeric and categorical features as the fitted preprocessing treats them."""
    kinds: dict[str, list[str]] = {"numeric": [], "categorical": []}
    for name, _, columns in model.named_steps["preprocess"].transformers_:
        if name in kinds:
            kinds[name].extend(str(c) for c in columns)
    if not kinds["numeric"] and not kinds["categorical"]:
        for column in X.columns:
            numeric = pd.api.types.is_numeric_dtype(X[column])
            kinds["numeric" if numeric else "categorical"].append(str(column))
    return kinds["numeric"], kinds["categorical"]


def _as_logged(task: str, predicted: np.ndarray) -> np.ndarray:
    # The server logs a class label as its str(), so the reference must spell it the same way.
    if task == "regression":
        return np.asarray(predicted, dtype=float)
    # Each distinct label is spelled once, not each row.
    codes, labels = pd.factorize(np.asarray(predicted), use_na_sentinel=False)
    return np.asarray([str(label) for label in labels], dtype=object)[codes]


def _performance_reference(
    config: PipelineConfig, y_test: pd.Series, answers: Answers
) -> PerformanceReference | None:
    y = np.asarray(y_test)
    chunks = min(config.monitoring.performance.reference_chunks, len(y))
    if chunks < 2:
        return None
    predicted, proba = answers.predicted, answers.proba
    classes = answers.classes if proba is not None else None
    with warnings.catch_warnings():
        # A small chunk may lack a class: sklearn warns, the value still stands.
        warnings.simplefilter("ignore")
        per_chunk = [
            prediction_metrics(
                config.task,
                y[index],
                predicted[index],
                proba=None if proba is None else proba[index],
                classes=classes,
            )
            for index in np.array_split(np.arange(len(y)), chunks)
        ]
    names = dict.fromkeys(name for metrics in per_chunk for name in metrics)
    return PerformanceReference(
        # NaN where a chunk could not give the metric (e.g. roc_auc without every class).
        metric_chunks={
            name: tuple(metrics.get(name, math.nan) for metrics in per_chunk) for name in names
        },
        chunk_rows=round(len(y) / chunks),
    )


def _log_plots(
    client: MlflowClient,
    config: PipelineConfig,
    run_id: str,
    y: pd.Series,
    answers: Answers,
) -> tuple[str, ...]:
    """The held-out figures but the importance plot (`_log_importance_plot`)."""
    figures: dict[str, Figure] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if config.task == "classification":
            figures.update(_classification_figures(config, y, answers))
        else:
            residuals = skm.PredictionErrorDisplay.from_predictions(
                y, answers.predicted, kind="residual_vs_predicted"
            )
            residuals.ax_.set_title("Residuals vs predicted (held-out)")
            figures["plots/residuals.png"] = residuals.figure_
    return _log_figures(client, run_id, figures)


def _log_importance_plot(
    client: MlflowClient, run_id: str, importance: pd.Series
) -> tuple[str, ...]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        figure = _importance_figure(importance.tail(20))
    return _log_figures(client, run_id, {"plots/feature_importance.png": figure})


def _log_figures(client: MlflowClient, run_id: str, figures: dict[str, Figure]) -> tuple[str, ...]:
    # Imported here: only the commands that draw pay for matplotlib.
    import matplotlib.pyplot as plt

    for path, figure in figures.items():
        client.log_figure(run_id, figure, path)
        plt.close(figure)
    return tuple(figures)


def _classification_figures(
    config: PipelineConfig, y: pd.Series, answers: Answers
) -> dict[str, Figure]:
    classes = answers.classes or []
    figures: dict[str, Figure] = {}
    # What `from_predictions` draws, computed on integer codes of the labels: on text labels
    # scikit-learn sorts and compares in Python, seconds on a million rows.
    y_codes, predicted_codes, label_codes = as_codes(
        np.asarray(y), np.asarray(answers.predicted), classes
    )
    matrix = skm.confusion_matrix(y_codes, predicted_codes, labels=label_codes)
    display = skm.ConfusionMatrixDisplay(matrix, display_labels=classes).plot()
    display.ax_.set_title("Confusion matrix (held-out)")
    figures["plots/confusion_matrix.png"] = display.figure_
    proba = answers.proba
    if proba is None:
        return figures
    if len(classes) == 2:
        positive = features.positive_class(config, classes)
        column = classes.index(positive)
        is_positive = y_codes == label_codes[column]
        scores = proba[:, column]
        fpr, tpr, _ = skm.roc_curve(is_positive, scores)
        roc = skm.RocCurveDisplay(
            fpr=fpr, tpr=tpr, roc_auc=skm.auc(fpr, tpr), name="Classifier", pos_label=positive
        ).plot()
        roc.ax_.set_title(f"ROC curve (positive class: {positive})")
        figures["plots/roc_curve.png"] = roc.figure_
        # Without the thresholds that cannot show on the plotted curve: fewer points to draw.
        precision, recall, _ = skm.precision_recall_curve(
            is_positive, scores, drop_intermediate=True
        )
        pr = skm.PrecisionRecallDisplay(
            precision=precision,
            recall=recall,
            average_precision=skm.average_precision_score(is_positive, scores),
            name="Classifier",
            pos_label=positive,
            prevalence_pos_label=float(is_positive.mean()),
        ).plot()
        pr.ax_.set_title(f"Precision-recall curve (positive class: {positive})")
        figures["plots/precision_recall_curve.png"] = pr.figure_
    else:
        figures.update(_one_vs_rest_curves(classes, proba, y))
    figures["plots/reliability_curve.png"] = _reliability_figure(config, classes, proba, y)
    return figures


def _reliability_figure(
    config: PipelineConfig, classes: list[object], proba: np.ndarray, y: pd.Series
) -> Figure:
    """Predicted probability against observed frequency: of the positive class for a binary
    task, of the predicted class (its confidence) for more classes."""
    from sklearn.calibration import CalibrationDisplay

    bins = int(min(10, max(2, len(y) // 20)))
    if len(classes) == 2:
        positive = features.positive_class(config, classes)
        display = CalibrationDisplay.from_predictions(
            np.asarray(y) == positive, proba[:, classes.index(positive)], n_bins=bins
        )
        display.ax_.set_title(f"Reliability (positive class: {positive}, held-out)")
    else:
        predicted = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
        display = CalibrationDisplay.from_predictions(
            predicted == np.asarray(y, dtype=object), proba.max(axis=1), n_bins=bins
        )
        display.ax_.set_title("Reliability of the predicted class's probability (held-out)")
    return display.figure_


def _one_vs_rest_curves(
    classes: list[object], proba: np.ndarray, y: pd.Series
) -> dict[str, Figure]:
    """ROC and precision-recall per class against the rest, one line per class on one plot."""
    import matplotlib.pyplot as plt

    roc_figure, roc_axes = plt.subplots(figsize=(6, 5))
    pr_figure, pr_axes = plt.subplots(figsize=(6, 5))
    for index, label in enumerate(classes):
        is_class = np.asarray(y) == label
        if is_class.all() or not is_class.any():
            continue  # a class absent from the held-out rows has no curve
        skm.RocCurveDisplay.from_predictions(
            is_class, proba[:, index], name=str(label), ax=roc_axes
        )
        skm.PrecisionRecallDisplay.from_predictions(
            is_class, proba[:, index], name=str(label), ax=pr_axes
        )
    roc_axes.set_title("ROC curves, each class against the rest (held-out)")
    pr_axes.set_title("Precision-recall curves, each class against the rest (held-out)")
    return {
        "plots/roc_curve.png": roc_figure,
        "plots/precision_recall_curve.png": pr_figure,
    }


def feature_importance(
    config: PipelineConfig, model: Pipeline, X: pd.DataFrame, y: pd.Series
) -> pd.Series | None:
    """Permutation importance of every input column on held-out rows: how much the gate's
    metric drops when the column is shuffled. Any model has it, it names the columns a request
    has (not encoded ones), and monitoring weighs drift by it."""
    from sklearn.inspection import permutation_importance

    if len(y) < 2:
        return None
    from threadpoolctl import threadpool_limits

    rows = np.random.default_rng(config.split.seed).permutation(len(y))[:IMPORTANCE_ROWS]
    # A few thousand rows scored 30 times or more: starting the model's OpenMP threads for
    # each call costs more than the call itself, and on a busy machine far more. The limit is
    # this thread's own (OpenMP keeps it per thread). No `warnings.catch_warnings` here: it
    # swaps process-wide filters, and `run` calls this on a second thread.
    with threadpool_limits(limits=1, user_api="openmp"):
        result = permutation_importance(
            model,
            X.iloc[rows],
            y.iloc[rows],
            scoring=config.gate_metric.scorer,
            n_repeats=IMPORTANCE_REPEATS,
            random_state=config.split.seed,
        )
    return pd.Series(result.importances_mean, index=[str(c) for c in X.columns]).sort_values()


def _importance_figure(importance: pd.Series) -> Figure:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, max(3, 0.3 * len(importance))))
    axis.barh(importance.index, importance.to_numpy())
    axis.set_title("Permutation importance on held-out rows (top 20)")
    axis.set_xlabel("drop of the gate metric when the column is shuffled")
    figure.tight_layout()
    return figure
