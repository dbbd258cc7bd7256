"""Paired bootstrap of the challenger's gain over the champion on the same held-out rows.

Both models are scored on the same resampled rows in every resample, so the interval
describes the difference itself, not two independent noisy scores. A resample is a vector of
row counts (multinomial), which turns every metric into weighted sums computed for a block of
resamples at once with matrix products instead of a Python loop per resample.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.pipeline import Pipeline

from pipeline import metrics
from pipeline.config import BootstrapConfig
from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

# Resample weight matrices are built in blocks of at most this many cells (~40 MB of int64).
_BLOCK_CELLS = 5_000_000


@dataclass(frozen=True)
class Predictions:
    """What one model predicted on the comparison rows."""

    predicted: np.ndarray
    proba: np.ndarray | None
    classes: tuple[object, ...]

    @classmethod
    def of(cls, model: Pipeline, X: pd.DataFrame, metric: str) -> Predictions:
        proba = model.predict_proba(X) if metrics.metric(metric).needs_proba else None
        classes = tuple(getattr(model, "classes_", ()))
        return cls(predicted=np.asarray(model.predict(X)), proba=proba, classes=classes)


@dataclass(frozen=True)
class GainInterval:
    """Gain of the challenger (positive = better, whatever the metric's direction)."""

    gain: float
    lower: float
    upper: float
    level: float
    resamples: int
    rows: int

    def describe(self) -> str:
        return (
            f"{self.gain:+.4f}, {self.level:.0%} CI [{self.lower:+.4f}, {self.upper:+.4f}] "
            f"({self.resamples} paired bootstrap resamples of {self.rows} held-out rows "
            "unseen by both)"
        )


def paired_gain_interval(
    metric: str,
    y: pd.Series | np.ndarray,
    *,
    challenger: Predictions,
    champion: Predictions,
    settings: BootstrapConfig,
    lower_is_better: bool,
) -> GainInterval:
    """Percentile interval of metric(challenger) - metric(champion), oriented as a gain."""
    y_true = np.asarray(y)
    rows = len(y_true)
    if rows == 0:
        raise PipelineError("the bootstrap needs at least one held-out row")
    sign = -1.0 if lower_is_better else 1.0
    full = np.ones((1, rows))
    gain = sign * float(
        (_metric(metric, y_true, challenger, full) - _metric(metric, y_true, champion, full))[0]
    )
    rng = np.random.default_rng(settings.seed)
    block = max(1, _BLOCK_CELLS // rows)
    gains: list[np.ndarray] = []
    remaining = settings.resamples
    while remaining:
        size = min(block, remaining)
        weights = rng.multinomial(rows, np.full(rows, 1.0 / rows), size=size).astype(float)
        difference = _metric(metric, y_true, challenger, weights) - _metric(
            metric, y_true, champion, weights
        )
        gains.append(sign * difference)
        remaining -= size
    samples = np.concatenate(gains)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        raise PipelineError(f"the bootstrap could not compute {metric} on any resample")
    tail = (1.0 - settings.confidence) / 2.0
    lower, upper = np.quantile(samples, [tail, 1.0 - tail])
    return GainInterval(
        gain=gain,
        lower=float(lower),
        upper=float(upper),
        level=settings.confidence,
        resamples=settings.resamples,
        rows=rows,
    )


def _metric(metric: str, y: np.ndarray, model: Predictions, weights: np.ndarray) -> np.ndarray:
    """`metric` for each row of `weights` (row counts of one resample), as sklearn defines it."""
    try:
        weighted = _WEIGHTED[metrics.metric(metric).name]
    except KeyError:
        raise PipelineError(f"no bootstrap for metric '{metric}'") from None
    return weighted(y, model, weights)


def _accuracy(y: np.ndarray, model: Predictions, weights: np.ndarray) -> np.ndarray:
    return np.asarray(weights @ (model.predicted == y).astype(float) / weights.sum(axis=1))


def _log_loss(y: np.ndarray, model: Predictions, weights: np.ndarray) -> np.ndarray:
    return np.asarray(weights @ _row_log_loss(y, model) / weights.sum(axis=1))


def _error(y: np.ndarray, model: Predictions) -> np.ndarray:
    return np.asarray(model.predicted.astype(float) - y.astype(float))


def _rmse(y: np.ndarray, model: Predictions, weights: np.ndarray) -> np.ndarray:
    return np.asarray(np.sqrt(weights @ _error(y, model) ** 2 / weights.sum(axis=1)))


def _mae(y: np.ndarray, model: Predictions, weights: np.ndarray) -> np.ndarray:
    return np.asarray(weights @ np.abs(_error(y, model)) / weights.sum(axis=1))


def _r2(y: np.ndarray, model: Predictions, weights: np.ndarray) -> np.ndarray:
    n = weights.sum(axis=1)
    target = y.astype(float)
    total = weights @ target**2 - (weights @ target) ** 2 / n
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(1.0 - (weights @ _error(y, model) ** 2) / total)


def _f1_macro(y: np.ndarray, model: Predictions, weights: np.ndarray) -> np.ndarray:
    predicted = model.predicted
    labels = np.unique(np.concatenate([y, predicted]).astype(str))
    y_hot = (y.astype(str)[:, None] == labels[None, :]).astype(float)
    p_hot = (predicted.astype(str)[:, None] == labels[None, :]).astype(float)
    true_positive = weights @ (y_hot * p_hot)
    support = weights @ y_hot + weights @ p_hot
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(support > 0, 2 * true_positive / support, 0.0)
    # sklearn averages over the labels present in this sample's truth or predictions.
    present = support > 0
    return np.asarray(f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1))


def _row_log_loss(y: np.ndarray, model: Predictions) -> np.ndarray:
    assert model.proba is not None
    proba = model.proba / model.proba.sum(axis=1, keepdims=True)
    column = {str(label): index for index, label in enumerate(model.classes)}
    index = np.array([column.get(str(label), -1) for label in y])
    eps = np.finfo(proba.dtype).eps
    picked = np.where(index >= 0, proba[np.arange(len(y)), np.maximum(index, 0)], 0.0)
    return np.asarray(-np.log(np.clip(picked, eps, 1 - eps)))


def _roc_auc(y: np.ndarray, model: Predictions, weights: np.ndarray) -> np.ndarray:
    # No closed form over weights: one sklearn call per resample (a few ms each).
    assert model.proba is not None
    classes = list(model.classes)
    values = np.full(len(weights), np.nan)
    for row, w in enumerate(weights):
        try:
            if len(classes) == 2:
                positive = (y == classes[1]).astype(int)
                values[row] = skm.roc_auc_score(positive, model.proba[:, 1], sample_weight=w)
            else:
                values[row] = skm.roc_auc_score(
                    y, model.proba, multi_class="ovr", labels=classes, sample_weight=w
                )
        except ValueError:
            continue  # a resample that lost a class has no AUC; it is left out
    return values


# Every metric of pipeline.metrics as weighted sums over resamples (a test checks all are here).
_WEIGHTED: dict[str, Callable[[np.ndarray, Predictions, np.ndarray], np.ndarray]] = {
    "accuracy": _accuracy,
    "f1_macro": _f1_macro,
    "roc_auc": _roc_auc,
    "log_loss": _log_loss,
    "rmse": _rmse,
    "mae": _mae,
    "r2": _r2,
}
