"""Live evidence: the champion and the challenger judged on the same production requests.

In shadow or canary serving both versions answer (or one answers and the other shadows) the
same requests, and the prediction log holds each version's answer under the request's key
(``request_id``, ``row``). Labels arrive later through ``/feedback``. This module pairs the two
versions' answers by key and turns them into evidence: how often they agree, and, on the
labelled shared requests, the gate metric of both with the paired bootstrap interval of the
challenger's gain. :func:`judge` turns the evidence into live-gate's decision.

:func:`traffic` and :func:`prediction_drift` describe what each version did on the same traffic:
requests, errors, latency percentiles, and how far apart their predictions are.

It knows nothing of files or the registry: the caller reads the log and acts on the decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon

from pipeline.config import PipelineConfig
from pipeline.contracts import PROBA_PREFIX
from pipeline.metrics import prediction_metrics
from pipeline.steps import bootstrap

KEY = ["request_id", "row"]

PROMOTED_EXIT = 0
REJECTED_EXIT = 10
WAIT_EXIT = 20
LATENCY_PERCENTILES = (50, 95, 99)
_DRIFT_BINS = 20


@dataclass(frozen=True)
class VersionTraffic:
    """What one version did in the window, from its rows of the prediction log."""

    version: str
    requests: int
    rows: int
    answered: int
    """Rows with a prediction (no error)."""
    served: int
    """Rows whose answer went back to the client."""
    errors: int
    """Requests the version failed to answer (an error on any of its rows)."""
    latency_ms: dict[int, float | None]
    """Percentile -> the model's time per request, in ms (None: no latency was logged)."""

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


def traffic(version: str, rows: pd.DataFrame) -> VersionTraffic:
    """Count one version's rows: ``request_id``, ``row``, ``served``, ``latency_ms`` and
    ``error`` columns, as ``PredictionLog.live_rows`` reads them.

    Latency and errors are per request (the server times one model call per request and logs
    it on every row of it), so a batch of 100 rows counts once, like a single row.
    """
    failed = rows["error"].notna()
    per_request = rows.assign(_failed=failed).groupby("request_id", sort=False)
    errors = int(per_request["_failed"].any().sum())
    latency = per_request["latency_ms"].first().dropna().to_numpy(dtype=float)
    return VersionTraffic(
        version=version,
        requests=int(rows["request_id"].nunique()),
        rows=len(rows),
        answered=int((~failed).sum()),
        served=int(rows["served"].astype(bool).sum()),
        errors=errors,
        latency_ms={
            p: (float(np.percentile(latency, p)) if latency.size else None)
            for p in LATENCY_PERCENTILES
        },
    )


def prediction_drift(
    config: PipelineConfig, champion: pd.Series, challenger: pd.Series
) -> float | None:
    """Jensen-Shannon distance (base 2, in [0, 1]) between the two versions' predictions on
    the same requests: of the predicted-class shares for a classifier, of histograms on shared
    bins (20 equal-width over both versions' range) for a regressor. None without rows."""
    if champion.empty or challenger.empty:
        return None
    if config.task == "regression":
        a, b = champion.astype(float).to_numpy(), challenger.astype(float).to_numpy()
        both = np.concatenate([a, b])
        both = both[np.isfinite(both)]
        if both.size == 0:
            return None
        low, high = float(both.min()), float(both.max())
        if low == high:
            return 0.0
        edges = np.linspace(low, high, _DRIFT_BINS + 1)
        p, q = np.histogram(a, edges)[0], np.histogram(b, edges)[0]
    else:
        shares = pd.crosstab(
            pd.concat([champion.astype(str), challenger.astype(str)], ignore_index=True),
            np.repeat(["champion", "challenger"], [len(champion), len(challenger)]),
        )
        p, q = shares["champion"].to_numpy(), shares["challenger"].to_numpy()
    return float(jensenshannon(p / p.sum(), q / q.sum(), base=2))


@dataclass(frozen=True)
class LiveEvidence:
    metric: str
    shared: int
    """Requests (rows) both versions answered."""
    agreement: float | None
    """Share of shared requests where both predicted the same label (classifiers) or within
    1% of each other's value (regressors)."""
    labelled: int
    """Shared requests with a label."""
    champion_score: float | None
    challenger_score: float | None
    interval: bootstrap.GainInterval | None
    """Challenger minus champion on the labelled shared requests, positive = better."""
    baseline_interval: bootstrap.GainInterval | None
    """Challenger minus the trivial baseline (training class shares / mean) on the same rows."""


@dataclass(frozen=True)
class LiveDecision:
    outcome: Literal["promote", "reject", "wait"]
    reason: str

    @property
    def exit_code(self) -> int:
        return {"promote": PROMOTED_EXIT, "reject": REJECTED_EXIT, "wait": WAIT_EXIT}[self.outcome]


def compare(
    config: PipelineConfig,
    champion: pd.DataFrame,
    challenger: pd.DataFrame,
    labels: pd.DataFrame,
    baseline: bootstrap.Predictions | None = None,
) -> LiveEvidence:
    """Pair the two versions' logged answers by request key and score them on the labels.

    ``champion`` and ``challenger`` hold ``request_id``, ``row``, ``prediction`` and, for
    classifiers with probabilities, ``proba.<class>`` columns; ``labels`` holds ``request_id``,
    ``row``, ``label``. ``baseline`` gives the trivial model's answer for one row (repeated).
    """
    paired = champion.merge(challenger, on=KEY, suffixes=("_champion", "_challenger"))
    shared = len(paired)
    agreement = _agreement(config, paired) if shared else None
    labelled = paired.merge(labels[[*KEY, "label"]].drop_duplicates(KEY, keep="last"), on=KEY)
    metric = config.gate.metric
    evidence = LiveEvidence(metric, shared, agreement, len(labelled), None, None, None, None)
    if len(labelled) < 2:
        return evidence
    y = _labels(config, labelled["label"])
    ours, theirs = _answers(labelled, "_challenger"), _answers(labelled, "_champion")
    name = metric.removeprefix("test_")
    scored = [
        prediction_metrics(config.task, y, p.predicted, p.proba, p.classes) for p in (ours, theirs)
    ]
    if name not in scored[0] or name not in scored[1]:
        return evidence
    interval = _interval(config, y, ours, theirs)
    trivial = None
    if baseline is not None:
        repeated = bootstrap.Predictions(
            predicted=np.repeat(baseline.predicted, len(y)),
            proba=None if baseline.proba is None else np.repeat(baseline.proba, len(y), axis=0),
            classes=baseline.classes,
        )
        trivial = _interval(config, y, ours, repeated)
    return LiveEvidence(
        metric=metric,
        shared=shared,
        agreement=agreement,
        labelled=len(labelled),
        champion_score=scored[1][name],
        challenger_score=scored[0][name],
        interval=interval,
        baseline_interval=trivial,
    )


def judge(
    config: PipelineConfig, evidence: LiveEvidence, *, rolled_back: str | None = None
) -> LiveDecision:
    """live-gate's decision: promote on a gain whose lower bound is above 0 (and a challenger
    better than the baseline), reject on an upper bound below 0 or a rolled-back canary, and
    otherwise wait, saying how many more labels the evidence needs."""
    if rolled_back is not None:
        return LiveDecision("reject", f"the canary was rolled back: {rolled_back}")
    needed = config.gate.live_min_labels
    if evidence.labelled < needed or evidence.interval is None:
        return LiveDecision(
            "wait",
            f"{evidence.labelled} labelled requests both versions answered; live-gate needs "
            f"{needed} ({max(needed - evidence.labelled, 1)} more): send labels with POST "
            "/feedback or `python -m pipeline feedback`",
        )
    interval = evidence.interval
    scores = (
        f"{evidence.metric} on {evidence.labelled} labelled live requests: challenger "
        f"{evidence.challenger_score:.4f}, champion {evidence.champion_score:.4f}, gain "
        f"{describe(interval)}"
    )
    if interval.upper < 0:
        return LiveDecision("reject", f"worse than the champion on live traffic: {scores}")
    trivial = evidence.baseline_interval
    if trivial is not None and trivial.lower <= 0:
        return LiveDecision(
            "reject",
            f"not better than the trivial baseline on live traffic: gain {describe(trivial)}",
        )
    if interval.lower > 0:
        return LiveDecision("promote", f"better than the champion on live traffic: {scores}")
    return LiveDecision("wait", f"the interval includes 0: {scores}; {_more_labels(evidence)}")


def describe(interval: bootstrap.GainInterval) -> str:
    return (
        f"{interval.gain:+.4f}, {interval.level:.0%} CI [{interval.lower:+.4f}, "
        f"{interval.upper:+.4f}] ({interval.resamples} paired bootstrap resamples of "
        f"{interval.rows} labelled live requests)"
    )


def _more_labels(evidence: LiveEvidence) -> str:
    """How many labels would shrink the interval to exclude 0, if the gain held: the interval's
    half-width shrinks as 1/sqrt(n)."""
    interval = evidence.interval
    assert interval is not None
    half_width = (interval.upper - interval.lower) / 2
    if interval.gain == 0 or half_width <= 0:
        return "no number of labels would show a difference that is not there"
    total = math.ceil(evidence.labelled * (half_width / abs(interval.gain)) ** 2)
    return (
        f"about {max(total - evidence.labelled, 1)} more labels would settle it if the gain holds"
    )


def _agreement(config: PipelineConfig, paired: pd.DataFrame) -> float:
    ours, theirs = paired["prediction_challenger"], paired["prediction_champion"]
    if config.task == "regression":
        a, b = ours.astype(float).to_numpy(), theirs.astype(float).to_numpy()
        close = np.abs(a - b) <= 0.01 * np.maximum(np.abs(a), np.abs(b))
        return float(close.mean())
    return float((ours.astype(str) == theirs.astype(str)).mean())


def _labels(config: PipelineConfig, labels: pd.Series) -> np.ndarray:
    if config.task == "regression":
        return labels.astype(float).to_numpy()
    return labels.astype(str).to_numpy(dtype=object)


def _answers(frame: pd.DataFrame, suffix: str) -> bootstrap.Predictions:
    """One version's logged answers as the bootstrap takes them; classes as logged (str)."""
    prediction = frame[f"prediction{suffix}"]
    proba_columns = [c for c in frame.columns if c.startswith(PROBA_PREFIX) and c.endswith(suffix)]
    classes = tuple(c.removeprefix(PROBA_PREFIX).removesuffix(suffix) for c in proba_columns)
    proba = frame[proba_columns].to_numpy(dtype=float) if proba_columns else None
    if pd.api.types.is_numeric_dtype(prediction) and not classes:
        return bootstrap.Predictions(prediction.to_numpy(dtype=float), None, ())
    return bootstrap.Predictions(prediction.astype(str).to_numpy(dtype=object), proba, classes)


def _interval(
    config: PipelineConfig,
    y: np.ndarray,
    ours: bootstrap.Predictions,
    theirs: bootstrap.Predictions,
) -> bootstrap.GainInterval:
    return bootstrap.paired_gain_interval(
        config.gate.metric,
        y,
        challenger=ours,
        champion=theirs,
        settings=config.gate.bootstrap,
        lower_is_better=config.gate_lower_is_better(),
    )
