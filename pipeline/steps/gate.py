"""Gate: promote the candidate only if it is good enough and better than the champion.

Both sides are scored with the same metric function on the same rows: the candidate's
held-out rows that the champion never trained on either. Without that restriction a
champion trained on another split (or on older data the new data contains) would be scored
partly on its own training rows, and the gate would favour it.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mlflow
import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from sklearn.pipeline import Pipeline

from pipeline import artifacts, model_io
from pipeline.config import PipelineConfig
from pipeline.errors import PipelineError, RegistryError
from pipeline.registry import production
from pipeline.steps import bootstrap, evaluate, features
from pipeline.steps.features import Split

logger = logging.getLogger(__name__)

MIN_COMPARISON_ROWS = 10


@dataclass(frozen=True)
class GateDecision:
    name: str
    version: str
    decision: Literal["promoted", "rejected"]
    reason: str
    metric: str
    candidate_value: float
    champion_version: str | None
    champion_value: float | None
    comparison_rows: int
    rule: str
    gain: float | None = None
    ci_lower: float | None = None
    ci_upper: float | None = None
    ci_level: float | None = None
    resamples: int | None = None

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"


@dataclass(frozen=True)
class _Comparison:
    candidate: float | None
    champion: float | None
    rows: int
    problem: str | None
    interval: bootstrap.GainInterval | None = None


def run(config: PipelineConfig, version: str, model: Pipeline, data_split: Split) -> GateDecision:
    """Decide on `version`, tag it with the decision and reason, and promote it if it passed.

    Reading the champion, deciding and promoting happen under the registry's Production lock,
    so two pipelines finishing together are judged one after the other, the second against
    the first's outcome.
    """
    client = MlflowClient()
    name = config.registered_model
    metric = config.gate.metric
    held_out = evaluate.score(config, model, data_split.X_test, data_split.y_test)
    if metric not in held_out:
        raise PipelineError(
            f"gate.metric '{metric}' could not be computed on the held-out rows of version "
            f"{version}; choose another gate.metric"
        )
    with production.production_lock(client, name):
        champion = production.production_version(client, name)
        if champion is not None and str(champion.version) == str(version):
            raise RegistryError(f"version {version} of '{name}' is already in Production")
        comparison = (
            _compare(config, client, champion, model, data_split) if champion is not None else None
        )
        passed, reason = _decide(config, held_out[metric], champion, comparison)
        interval = comparison.interval if comparison else None
        decision = GateDecision(
            name=name,
            version=str(version),
            decision="promoted" if passed else "rejected",
            reason=reason,
            metric=metric,
            candidate_value=held_out[metric],
            champion_version=str(champion.version) if champion else None,
            champion_value=comparison.champion if comparison else None,
            comparison_rows=comparison.rows if comparison else len(data_split.y_test),
            rule=describe_rule(config),
            gain=interval.gain if interval else None,
            ci_lower=interval.lower if interval else None,
            ci_upper=interval.upper if interval else None,
            ci_level=interval.level if interval else None,
            resamples=interval.resamples if interval else None,
        )
        _tag(client, decision)
        if passed:
            production.set_production(client, name, str(version), action="gate", reason=reason)
        else:
            logger.info("Gate rejected '%s' version %s: %s", name, version, reason)
    return decision


def recorded_decision(config: PipelineConfig, version: ModelVersion) -> GateDecision:
    """The decision an earlier gate recorded on `version`, read back from its tags."""
    tags = version.tags

    def number(key: str) -> float | None:
        value = tags.get(key)
        return None if value in (None, "none") else float(value)

    decision = tags[artifacts.GATE_DECISION]
    return GateDecision(
        name=str(version.name),
        version=str(version.version),
        decision="promoted" if decision == "promoted" else "rejected",
        reason=tags.get("gate.reason", ""),
        metric=tags.get("gate.metric", config.gate.metric),
        candidate_value=number("gate.candidate_value") or 0.0,
        champion_version=None
        if tags.get("gate.champion_version") in (None, "none")
        else tags["gate.champion_version"],
        champion_value=number("gate.champion_value"),
        comparison_rows=int(tags.get("gate.comparison_rows", "0")),
        rule=tags.get("gate.rule", describe_rule(config)),
        gain=number("gate.diff"),
        ci_lower=number("gate.ci_lower"),
        ci_upper=number("gate.ci_upper"),
        ci_level=number("gate.ci_level"),
        resamples=None if "gate.resamples" not in tags else int(tags["gate.resamples"]),
    )


def describe_rule(config: PipelineConfig) -> str:
    """The promotion rule in words, as the model card and the version tags show it."""
    gate = config.gate
    direction = "lower is better" if config.gate_lower_is_better() else "higher is better"
    parts = [f"{gate.metric} ({direction})"]
    if gate.threshold is not None:
        parts.append(f"must reach {gate.threshold:g}")
    parts.append(f"must beat the champion by more than 0 and by at least {gate.min_improvement:g}")
    if gate.require_significant_gain:
        level = f"{gate.bootstrap.confidence:.0%}"
        parts.append(f"the lower {level} confidence bound of the gain must be above 0")
    return "; ".join(parts)


def _compare(
    config: PipelineConfig,
    client: MlflowClient,
    champion: ModelVersion,
    model: Pipeline,
    data_split: Split,
) -> _Comparison:
    metric = config.gate.metric
    try:
        champion_model = model_io.load_model(f"models:/{champion.name}/{champion.version}")
    except PipelineError as exc:
        return _Comparison(None, None, 0, f"it could not be loaded ({exc})")
    unseen = _unseen_by(champion.run_id, data_split)
    X, y = data_split.X_test[unseen], data_split.y_test[unseen]
    rows = int(unseen.sum())
    if rows < MIN_COMPARISON_ROWS or (config.task == "classification" and y.nunique() < 2):
        return _Comparison(
            None, None, rows, f"only {rows} held-out rows were unseen by it in training"
        )
    try:
        champion_scores = evaluate.score(config, champion_model, X, y)
    except (ValueError, KeyError, TypeError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        logger.warning("Champion v%s cannot score these rows: %s", champion.version, first_line)
        return _Comparison(None, None, rows, f"it cannot score these rows ({first_line})")
    candidate_scores = evaluate.score(config, model, X, y)
    if metric not in champion_scores or metric not in candidate_scores:
        return _Comparison(None, None, rows, f"'{metric}' cannot be computed on these rows")
    interval = bootstrap.paired_gain_interval(
        metric,
        y,
        challenger=bootstrap.Predictions.of(model, X, metric),
        champion=bootstrap.Predictions.of(champion_model, X, metric),
        settings=config.gate.bootstrap,
        lower_is_better=config.gate_lower_is_better(),
    )
    return _Comparison(candidate_scores[metric], champion_scores[metric], rows, None, interval)


def _unseen_by(run_id: str | None, data_split: Split) -> np.ndarray:
    """Mask of held-out rows absent from the run's training rows (all, if unrecorded)."""
    everything = np.ones(len(data_split.y_test), dtype=bool)
    if not run_id:
        return everything
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path=artifacts.TRAINING_ROWS,
                dst_path=tmp,
            )
        except Exception:  # any failure means the rows were not recorded
            logger.warning("Run %s recorded no training rows; comparing on all rows", run_id)
            return everything
        with np.load(Path(local), allow_pickle=False) as recorded:
            columns = [str(c) for c in recorded["columns"]]
            seen = recorded["hashes"]
    if not set(columns) <= set(data_split.X_test.columns):
        return everything
    candidate = features.row_hashes(data_split.X_test, data_split.y_test, columns)
    return ~np.isin(candidate, seen)


def _decide(
    config: PipelineConfig,
    candidate: float,
    champion: ModelVersion | None,
    comparison: _Comparison | None,
) -> tuple[bool, str]:
    """(passed, reason): the threshold first, then the first-model rule, then the champion."""
    below = _below_threshold(config, candidate)
    if below is not None:
        return False, below
    if champion is None or comparison is None:
        threshold = config.gate.threshold
        bar = "" if threshold is None else f", meets threshold {threshold:.4f}"
        return True, f"first model: no champion yet; {config.gate.metric} {candidate:.4f}{bar}"
    if comparison.problem is not None or comparison.candidate is None:
        return False, (
            f"cannot compare with champion v{champion.version}: {comparison.problem}; "
            "promote by hand with `python -m pipeline promote` if intended"
        )
    return _against_champion(config, str(champion.version), comparison)


def _below_threshold(config: PipelineConfig, candidate: float) -> str | None:
    threshold = config.gate.threshold
    if threshold is None:
        return None
    lower = config.gate_lower_is_better()
    fails = candidate > threshold if lower else candidate < threshold
    if not fails:
        return None
    op = ">" if lower else "<"
    return f"{config.gate.metric} {candidate:.4f} {op} threshold {threshold:.4f}"


def _against_champion(
    config: PipelineConfig, champion: str, comparison: _Comparison
) -> tuple[bool, str]:
    """The candidate must gain more than 0 and at least min_improvement (and be significant)."""
    gate = config.gate
    ours, theirs = comparison.candidate, comparison.champion
    assert ours is not None and theirs is not None  # _decide handled the incomplete ones
    lower = config.gate_lower_is_better()
    gain = theirs - ours if lower else ours - theirs
    op, sign = (">", "-") if lower else ("<", "+")
    evidence = _evidence(comparison)
    scores = f"{gate.metric} {ours:.4f} {{}} champion v{champion} {theirs:.4f}"
    if gain == 0 and gate.min_improvement == 0:
        return False, f"{scores.format('equals')}: no improvement{evidence}"
    if not (gain > 0 and gain >= gate.min_improvement):
        return False, f"{scores.format(op)} {sign} {gate.min_improvement:.4f}{evidence}"
    beats = f"{scores.format('beats')} {sign} {gate.min_improvement:.4f}"
    interval = comparison.interval
    if gate.require_significant_gain and (interval is None or interval.lower <= 0):
        return False, f"{beats}, but the gain is within noise{evidence}"
    return True, f"{beats}{evidence}"


def _evidence(comparison: _Comparison) -> str:
    if comparison.interval is not None:
        return f"; gain {comparison.interval.describe()}"
    return f" (on {comparison.rows} held-out rows unseen by both)"


def _tag(client: MlflowClient, decision: GateDecision) -> None:
    tags = {
        artifacts.GATE_DECISION: decision.decision,
        "gate.reason": decision.reason,
        "gate.metric": decision.metric,
        "gate.candidate_value": f"{decision.candidate_value:.6g}",
        "gate.champion_version": decision.champion_version or "none",
        "gate.champion_value": (
            "none" if decision.champion_value is None else f"{decision.champion_value:.6g}"
        ),
        "gate.comparison_rows": str(decision.comparison_rows),
        "gate.rule": decision.rule,
    }
    if decision.gain is not None:
        tags["gate.diff"] = f"{decision.gain:.6g}"
    if decision.ci_lower is not None and decision.ci_upper is not None:
        tags["gate.ci_lower"] = f"{decision.ci_lower:.6g}"
        tags["gate.ci_upper"] = f"{decision.ci_upper:.6g}"
        tags["gate.ci_level"] = f"{decision.ci_level:g}"
        tags["gate.resamples"] = str(decision.resamples)
    for key, value in tags.items():
        client.set_model_version_tag(decision.name, decision.version, key, value)
