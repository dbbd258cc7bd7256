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
    ours = bootstrap._prepare(metric, y, predictions)(np.ones((1, len(y))))[0]
    assert ours == pytest.approx(reference(y, predictions), rel=1e-9)  # type: ignore[operator]


def test_macro_f1_of_a_resample_that_lost_a_class_matches_sklearn_on_that_sample() -> None:
    y, predictions = _classifier(seed=4, rows=60, skill=0.6)
    weights = np.zeros((1, 60))
    keep = np.flatnonzero((y != "c") & (predictions.predicted != "c"))
    weights[0, keep] = 2.0
    expected = skm.f1_score(
        np.repeat(y[keep], 2), np.repeat(predictions.predicted[keep], 2), average="macro"
    )
    ours = bootstrap._prepare("test_f1_macro", y, predictions)(weights)[0]
    assert ours == pytest.approx(expected)


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
    ours = bootstrap._prepare(metric, y, predictions)(np.ones((1, 300)))[0]
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


# The metric on the resampled rows themselves, one sklearn call per resample: what the
# bootstrap computed before it became weighted sums, kept here as the reference.
REFERENCE = {
    "test_accuracy": lambda y, p: skm.accuracy_score(y, p.predicted),
    "test_f1_macro": lambda y, p: skm.f1_score(y, p.predicted, average="macro"),
    "test_log_loss": lambda y, p: skm.log_loss(y, p.proba, labels=list(p.classes)),
    "test_roc_auc": lambda y, p: (
        skm.roc_auc_score(y == p.classes[1], p.proba[:, 1])
        if len(p.classes) == 2
        else skm.roc_auc_score(y, p.proba, multi_class="ovr", labels=list(p.classes))
    ),
    "test_rmse": lambda y, p: np.sqrt(skm.mean_squared_error(y, p.predicted)),
    "test_mae": lambda y, p: skm.mean_absolute_error(y, p.predicted),
    "test_r2": lambda y, p: skm.r2_score(y, p.predicted),
}


def _reference_interval(
    metric: str,
    y: np.ndarray,
    challenger: bootstrap.Predictions,
    champion: bootstrap.Predictions,
    settings: BootstrapConfig,
) -> tuple[float, float, float]:
    def score(counts: np.ndarray, model: bootstrap.Predictions) -> float:
        rows = np.repeat(np.arange(len(y)), counts.astype(int))
        resampled = bootstrap.Predictions(
            model.predicted[rows], None if model.proba is None else model.proba[rows], model.classes
        )
        try:
            return float(REFERENCE[metric](y[rows], resampled))
        except ValueError:
            return np.nan  # a resample that lost a class has no AUC

    sign = -1.0 if metric in ("test_log_loss", "test_rmse", "test_mae") else 1.0
    everything = np.ones(len(y))
    gain = sign * (score(everything, challenger) - score(everything, champion))
    rng = np.random.default_rng(settings.seed)
    samples = np.array(
        [
            sign * (score(counts, challenger) - score(counts, champion))
            for block in bootstrap._resample_counts(rng, len(y), settings.resamples)
            for counts in block
        ]
    )
    tail = (1.0 - settings.confidence) / 2.0
    lower, upper = np.quantile(samples[np.isfinite(samples)], [tail, 1.0 - tail])
    return gain, float(lower), float(upper)


def _binary(seed: int, rows: int, skill: float) -> tuple[np.ndarray, bootstrap.Predictions]:
    rng = np.random.default_rng(seed)
    y = rng.choice(["no", "yes"], size=rows)
    # Scores rounded to two decimals, so many rows tie, as tree ensembles' scores do.
    positive = np.round(np.clip((y == "yes") * skill + rng.random(rows) * (1 - skill), 0, 1), 2)
    proba = np.column_stack([1 - positive, positive])
    predicted = np.where(positive > 0.5, "yes", "no")
    return y, bootstrap.Predictions(predicted=predicted, proba=proba, classes=("no", "yes"))


def _constant(rows: int) -> bootstrap.Predictions:
    """The trivial baseline's answers: one probability for every row."""
    proba = np.tile([0.7, 0.3], (rows, 1))
    return bootstrap.Predictions(np.full(rows, "no"), proba, ("no", "yes"))


def _regression(seed: int, rows: int, noise: float) -> tuple[np.ndarray, bootstrap.Predictions]:
    rng = np.random.default_rng(seed)
    y = rng.normal(size=rows)
    return y, bootstrap.Predictions(y + rng.normal(scale=noise, size=rows), None, ())


@pytest.mark.parametrize(
    ("metric", "rows", "kind"),
    [
        ("test_roc_auc", 300, "binary"),
        ("test_roc_auc", 300, "multiclass"),
        ("test_roc_auc", 24, "multiclass"),  # small: some resamples lose a class
        ("test_roc_auc", 300, "binary against a constant score"),
        ("test_roc_auc", 12, "binary against a constant score"),  # resamples lose a class
        ("test_accuracy", 300, "multiclass"),
        ("test_f1_macro", 300, "multiclass"),
        ("test_log_loss", 300, "multiclass"),
        ("test_rmse", 300, "regression"),
        ("test_mae", 300, "regression"),
        ("test_r2", 300, "regression"),
    ],
)
def test_the_interval_equals_sklearn_scoring_every_resampled_set_of_rows(
    metric: str, rows: int, kind: str
) -> None:
    if kind == "binary":
        y, challenger = _binary(seed=1, rows=rows, skill=0.6)
        _, champion = _binary(seed=1, rows=rows, skill=0.4)
    elif kind == "binary against a constant score":
        y, challenger = _binary(seed=1, rows=rows, skill=0.3)
        champion = _constant(rows)
    elif kind == "multiclass":
        y, challenger = _classifier(seed=1, rows=rows, skill=0.8)
        _, champion = _classifier(seed=1, rows=rows, skill=0.6)
    else:
        y, challenger = _regression(seed=1, rows=rows, noise=0.5)
        _, champion = _regression(seed=1, rows=rows, noise=0.8)
    settings = BootstrapConfig(resamples=100, confidence=0.9, seed=11)
    ours = bootstrap.paired_gain_interval(
        metric,
        y,
        challenger=challenger,
        champion=champion,
        settings=settings,
        lower_is_better=metric in ("test_log_loss", "test_rmse", "test_mae"),
    )
    expected = _reference_interval(metric, y, challenger, champion, settings)
    assert (ours.gain, ours.lower, ours.upper) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert ours.lower < ours.upper


def test_a_resample_counts_every_row_drawn_and_blocks_cover_all_resamples(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bootstrap, "_BLOCK_CELLS", 1_000)
    blocks = list(bootstrap._resample_counts(np.random.default_rng(0), 7, 10_001))
    counts = np.concatenate(blocks)
    assert len(blocks) == 71 and counts.shape == (10_001, 7)
    assert (counts.sum(axis=1) == 7).all()
    # Every row is drawn with probability 1/7 in each of the 7 draws: mean count 1.
    assert counts.mean(axis=0) == pytest.approx(np.ones(7), abs=0.05)


def test_blocks_drawn_ahead_on_a_thread_are_the_generator_s_draws_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bootstrap, "_BLOCK_CELLS", 1_000)
    blocks = list(bootstrap._resample_blocks(np.random.default_rng(3), 7, 1_001))
    rng = np.random.default_rng(3)
    one_by_one = [rng.integers(0, 7, size=7, dtype=np.int32) for _ in range(1_001)]
    assert len(blocks) == 8
    np.testing.assert_array_equal(np.concatenate([b.drawn for b in blocks]), one_by_one)


@pytest.mark.parametrize("metric", ["test_roc_auc", "test_accuracy", "test_log_loss"])
def test_intervals_against_several_models_equal_each_pair_bootstrapped_alone(metric: str) -> None:
    y, challenger = _binary(seed=2, rows=250, skill=0.6)
    _, champion = _binary(seed=3, rows=250, skill=0.5)
    settings = BootstrapConfig(resamples=200, confidence=0.9, seed=5)
    together = bootstrap.paired_gain_intervals(
        metric,
        y,
        challenger=challenger,
        others=[champion, _constant(250)],
        settings=settings,
        lower_is_better=metric == "test_log_loss",
    )
    alone = tuple(
        bootstrap.paired_gain_interval(
            metric,
            y,
            challenger=challenger,
            champion=other,
            settings=settings,
            lower_is_better=metric == "test_log_loss",
        )
        for other in (champion, _constant(250))
    )
    assert together == alone
    assert together[0] != together[1]


def test_a_constant_score_has_an_area_of_one_half_and_none_without_both_classes() -> None:
    y = np.array(["no", "yes", "no", "yes"])
    weights = np.array([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 2.0, 0.0], [0.0, 3.0, 1.0, 0.0]])
    area = bootstrap._prepare("test_roc_auc", y, _constant(4))(weights)
    assert area[0] == 0.5 and np.isnan(area[1]) and area[2] == 0.5
