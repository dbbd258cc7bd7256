"""Paired bootstrap of the challenger's gain over the champion on the same held-out rows.

Both models are scored on the same resampled rows in every resample, so the interval
describes the difference itself, not two independent noisy scores. A resample is a vector of
row counts (the held-out rows drawn with replacement), which turns every metric into weighted
sums. Each metric is prepared once per model (its per-row values; for ROC AUC, one sort of the
scores into groups) and then evaluated for a block of resamples at once with matrix products:
the cost is a few passes over rows x resamples, not one sklearn call per resample. ROC AUC
reads the row numbers each resample drew instead of their counts (one bincount of their score
groups), and several models compared with the same challenger share the resamples
(`paired_gain_intervals`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from pipeline import metrics
from pipeline.config import BootstrapConfig
from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

# Resamples are drawn in blocks of at most this many cells (4 MB of drawn row numbers, 8 MB of
# float64 counts when a metric needs them): larger blocks save little time and cost the gate's
# peak memory several of them.
_BLOCK_CELLS = 1_000_000

# A metric prepared for one model's predictions: resample weights (resamples x rows, row
# counts) -> the metric on each resample, as sklearn computes it on the resampled rows.
_Weighted = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _FromDrawn:
    """A `_Weighted` metric that can also read a block's drawn row numbers (resamples x draws)
    directly, which spares counting every row of every resample (`_Block.counts`)."""

    weighted: _Weighted
    drawn: Callable[[np.ndarray], np.ndarray]

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        return self.weighted(weights)


class _Block:
    """A block of resamples: the row numbers each drew, and each row's count when asked."""

    def __init__(self, drawn: np.ndarray, rows: int) -> None:
        self.drawn = drawn
        self._rows = rows

    @cached_property
    def counts(self) -> np.ndarray:
        counts = np.empty((len(self.drawn), self._rows))
        for row, drawn in zip(counts, self.drawn, strict=True):
            row[:] = np.bincount(drawn, minlength=self._rows)
        return counts

    def metric(self, weighted: _Weighted) -> np.ndarray:
        """`weighted` on every resample of the block."""
        if isinstance(weighted, _FromDrawn):
            return weighted.drawn(self.drawn)
        return weighted(self.counts)


@dataclass(frozen=True)
class Predictions:
    """What one model predicted on the comparison rows."""

    predicted: np.ndarray
    proba: np.ndarray | None
    classes: tuple[object, ...]


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
    (interval,) = paired_gain_intervals(
        metric,
        y,
        challenger=challenger,
        others=(champion,),
        settings=settings,
        lower_is_better=lower_is_better,
    )
    return interval


def paired_gain_intervals(
    metric: str,
    y: pd.Series | np.ndarray,
    *,
    challenger: Predictions,
    others: Sequence[Predictions],
    settings: BootstrapConfig,
    lower_is_better: bool,
) -> tuple[GainInterval, ...]:
    """The interval of the challenger's gain over each of ``others``, in order.

    Each is the interval `paired_gain_interval` gives for that pair: the resamples are the
    same (the same seed draws them), so they are drawn once and the challenger's metric is
    computed once on them, however many models it is compared with."""
    y_true = np.asarray(y)
    rows = len(y_true)
    if rows == 0:
        raise PipelineError("the bootstrap needs at least one held-out row")
    sign = -1.0 if lower_is_better else 1.0
    prepared = [_prepare(metric, y_true, model) for model in (challenger, *others)]
    whole = [weighted(np.ones((1, rows))) for weighted in prepared]
    rng = np.random.default_rng(settings.seed)
    blocks: list[list[np.ndarray]] = [[] for _ in prepared]
    for block in _resample_blocks(rng, rows, settings.resamples):
        for values, weighted in zip(blocks, prepared, strict=True):
            values.append(block.metric(weighted))
    per_model = [np.concatenate(values) for values in blocks]
    tail = (1.0 - settings.confidence) / 2.0
    intervals = []
    for other in range(1, len(prepared)):
        samples = sign * (per_model[0] - per_model[other])
        samples = samples[np.isfinite(samples)]
        if samples.size == 0:
            raise PipelineError(f"the bootstrap could not compute {metric} on any resample")
        lower, upper = np.quantile(samples, [tail, 1.0 - tail])
        intervals.append(
            GainInterval(
                gain=float(sign * (whole[0] - whole[other])[0]),
                lower=float(lower),
                upper=float(upper),
                level=settings.confidence,
                resamples=settings.resamples,
                rows=rows,
            )
        )
    return tuple(intervals)


def _resample_counts(rng: np.random.Generator, rows: int, resamples: int) -> Iterator[np.ndarray]:
    """Blocks of resamples, each row of a block the counts of `rows` rows drawn with replacement.

    Drawing row numbers and counting them is the multinomial resample by definition, and
    several times faster than `Generator.multinomial` over a million equally likely rows.
    """
    for block in _resample_blocks(rng, rows, resamples):
        yield block.counts


def _resample_blocks(rng: np.random.Generator, rows: int, resamples: int) -> Iterator[_Block]:
    """The resamples of `_resample_counts`, drawn alike, as the row numbers each drew.

    The next block is drawn on a second thread while the caller reads this one. Drawing holds
    the GIL, but most of reading a block (gathers, bincounts) does not: on 235,000 rows the two
    overlap to a third less time. One thread reads the generator, in order: the same draws."""
    block = max(1, _BLOCK_CELLS // rows)
    dtype = np.int32 if rows < 2**31 else np.int64
    sizes = [min(block, resamples - start) for start in range(0, resamples, block)]

    def draw(size: int) -> np.ndarray:
        drawn = np.empty((size, rows), dtype=dtype)
        for row in drawn:
            row[:] = rng.integers(0, rows, size=rows, dtype=dtype)
        return drawn

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bootstrap-draws") as pool:
        pending = pool.submit(draw, sizes[0])
        for following in [*sizes[1:], None]:
            drawn = pending.result()
            if following is not None:
                pending = pool.submit(draw, following)
            yield _Block(drawn, rows)


def _prepare(metric: str, y: np.ndarray, model: Predictions) -> _Weighted:
    """`metric` of `model` as a function of resample weights (see `_Weighted`)."""
    try:
        weighted = _WEIGHTED[metrics.metric(metric).name]
    except KeyError:
        raise PipelineError(f"no bootstrap for metric '{metric}'") from None
    return weighted(y, model)


def _mean_of(values: np.ndarray) -> _Weighted:
    return lambda weights: np.asarray(weights @ values / weights.sum(axis=1))


def _accuracy(y: np.ndarray, model: Predictions) -> _Weighted:
    return _mean_of((model.predicted == y).astype(float))


def _log_loss(y: np.ndarray, model: Predictions) -> _Weighted:
    return _mean_of(_row_log_loss(y, model))


def _error(y: np.ndarray, model: Predictions) -> np.ndarray:
    return np.asarray(model.predicted.astype(float) - y.astype(float))


def _rmse(y: np.ndarray, model: Predictions) -> _Weighted:
    squared = _error(y, model) ** 2
    return lambda weights: np.asarray(np.sqrt(weights @ squared / weights.sum(axis=1)))


def _mae(y: np.ndarray, model: Predictions) -> _Weighted:
    return _mean_of(np.abs(_error(y, model)))


def _r2(y: np.ndarray, model: Predictions) -> _Weighted:
    target = y.astype(float)
    squared_error = _error(y, model) ** 2

    def weighted(weights: np.ndarray) -> np.ndarray:
        n = weights.sum(axis=1)
        total = weights @ target**2 - (weights @ target) ** 2 / n
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(1.0 - (weights @ squared_error) / total)

    return weighted


def _f1_macro(y: np.ndarray, model: Predictions) -> _Weighted:
    predicted = model.predicted
    labels = np.unique(np.concatenate([y, predicted]).astype(str))
    y_hot = (y.astype(str)[:, None] == labels[None, :]).astype(float)
    p_hot = (predicted.astype(str)[:, None] == labels[None, :]).astype(float)
    both = y_hot * p_hot

    def weighted(weights: np.ndarray) -> np.ndarray:
        true_positive = weights @ both
        support = weights @ y_hot + weights @ p_hot
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = np.where(support > 0, 2 * true_positive / support, 0.0)
        # sklearn averages over the labels present in this sample's truth or predictions.
        present = support > 0
        return np.asarray(f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1))

    return weighted


def _row_log_loss(y: np.ndarray, model: Predictions) -> np.ndarray:
    assert model.proba is not None
    proba = model.proba / model.proba.sum(axis=1, keepdims=True)
    column = {str(label): index for index, label in enumerate(model.classes)}
    index = np.array([column.get(str(label), -1) for label in y])
    eps = np.finfo(proba.dtype).eps
    picked = np.where(index >= 0, proba[np.arange(len(y)), np.maximum(index, 0)], 0.0)
    return np.asarray(-np.log(np.clip(picked, eps, 1 - eps)))


def _roc_auc(y: np.ndarray, model: Predictions) -> _Weighted:
    assert model.proba is not None
    classes = list(model.classes)
    if len(classes) == 2:
        return _binary_roc_auc(y == classes[1], model.proba[:, 1])
    if np.setdiff1d(y, np.asarray(classes)).size or not np.allclose(1, model.proba.sum(axis=1)):
        # sklearn refuses labels it was not given, and scores that are not probabilities.
        return lambda weights: np.full(len(weights), np.nan)
    one_vs_rest = [
        _binary_roc_auc(y == label, model.proba[:, k]) for k, label in enumerate(classes)
    ]
    # sklearn's "ovr" is the unweighted mean over classes (NaN if a class has no positives).
    return _FromDrawn(
        weighted=lambda weights: np.mean([auc(weights) for auc in one_vs_rest], axis=0),
        drawn=lambda drawn: np.mean([auc.drawn(drawn) for auc in one_vs_rest], axis=0),
    )


def _binary_roc_auc(positive: np.ndarray, score: np.ndarray) -> _FromDrawn:
    """Area under the weighted ROC curve: the Mann-Whitney statistic, ties counting one half.

    That is exactly the trapezoidal area sklearn computes. The scores are sorted once into
    groups of equal score; a resample then needs only its positive and negative weight per
    group (one bincount of the groups of the rows it drew) and a cumulative sum over the groups.
    """
    if not np.isfinite(score).all():
        # sklearn refuses NaN scores
        return _FromDrawn(
            weighted=lambda weights: np.full(len(weights), np.nan),
            drawn=lambda drawn: np.full(len(drawn), np.nan),
        )
    values, group = np.unique(score, return_inverse=True)
    groups = len(values)
    if groups == 1:
        return _constant_roc_auc(positive)
    # A row adds its weight to its score group, in the negatives' half or the positives'.
    bins = group + groups * positive.astype(np.intp)
    # Random reads of the drawn rows' bins cost less from the smallest integers that hold them.
    small_bins = bins.astype(np.min_scalar_type(2 * groups))

    def weighted(weights: np.ndarray) -> np.ndarray:
        sums = np.empty((len(weights), 2 * groups))
        for row, w in zip(sums, weights, strict=True):
            row[:] = np.bincount(bins, weights=w, minlength=2 * groups)
        return _area(sums, groups)

    def drawn(rows: np.ndarray) -> np.ndarray:
        sums = np.empty((len(rows), 2 * groups))
        for row, drawn_rows in zip(sums, rows, strict=True):
            row[:] = np.bincount(small_bins[drawn_rows], minlength=2 * groups)
        return _area(sums, groups)

    return _FromDrawn(weighted, drawn)


def _area(sums: np.ndarray, groups: int) -> np.ndarray:
    """The area of each resample from its weight per (class, score group): negatives first."""
    negatives, positives = sums[:, :groups], sums[:, groups:]
    # Pairs won by each positive: negatives below its score, plus half those tied with it,
    # i.e. cumulative negatives up to its group minus half its own group's. Counts are
    # whole numbers, so every sum is exact in float64 (below 2**53).
    up_to = np.cumsum(negatives, axis=1)
    pairs = np.einsum("ij,ij->i", positives, up_to) - 0.5 * np.einsum(
        "ij,ij->i", positives, negatives
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        # A resample without positives or negatives has no AUC (NaN), as in sklearn.
        return np.asarray(pairs / (positives.sum(axis=1) * negatives.sum(axis=1)))


def _constant_roc_auc(positive: np.ndarray) -> _FromDrawn:
    """The area of one score for every row (the trivial baseline's): every pair ties, so the
    general formula is (P * N / 2) / (P * N), exactly 0.5 in floating point for whole counts,
    and NaN without positives or negatives. Only the two class weights are summed."""
    is_positive = positive.astype(bool)

    def of_class_weights(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
        return np.where((positives > 0) & (negatives > 0), 0.5, np.nan)

    def weighted(weights: np.ndarray) -> np.ndarray:
        positives = weights @ is_positive.astype(float)
        return of_class_weights(positives, weights.sum(axis=1) - positives)

    def drawn(rows: np.ndarray) -> np.ndarray:
        positives = np.count_nonzero(is_positive[rows], axis=1)
        return of_class_weights(positives, rows.shape[1] - positives)

    return _FromDrawn(weighted, drawn)


# Every metric of pipeline.metrics as weighted sums over resamples (a test checks all are here).
_WEIGHTED: dict[str, Callable[[np.ndarray, Predictions], _Weighted]] = {
    "accuracy": _accuracy,
    "f1_macro": _f1_macro,
    "roc_auc": _roc_auc,
    "log_loss": _log_loss,
    "rmse": _rmse,
    "mae": _mae,
    "r2": _r2,
}
