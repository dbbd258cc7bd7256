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

from pipeline import evaluate, features, model_io, registry, train
from pipeline.config import PipelineConfig
from pipeline.errors import PipelineError, RegistryError
from pipeline.features import Split

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

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"


@dataclass(frozen=True)
class _Comparison:
    candidate: float | None
    champion: float | None
    rows: int
    problem: str | None


def run(config: PipelineConfig, version: str, model: Pipeline, data_split: Split) -> GateDecision:
    """Decide on `version`, tag it with the decision and reason, and promote it if it passed."""
    client = MlflowClient()
    name = config.registered_model
    metric = config.gate.metric
    held_out = evaluate.score(config, model, data_split.X_test, data_split.y_test)
    if metric not in held_out:
        raise PipelineError(
            f"gate.metric '{metric}' could not be computed on the held-out rows of version "
            f"{version}; choose another gate.metric"
        )
    champion = registry.production_version(client, name)
    if champion is not None and str(champion.version) == str(version):
        raise RegistryError(f"version {version} of '{name}' is already in Production")
    comparison = (
        _compare(config, client, champion, model, data_split) if champion is not None else None
    )
    passed, reason = _decide(config, held_out[metric], champion, comparison)
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
    )
    _tag(client, decision)
    if passed:
        registry.set_production(client, name, str(version), action="gate", reason=reason)
    else:
        logger.info("Gate rejected '%s' version %s: %s", name, version, reason)
    return decision


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
    return _Comparison(candidate_scores[metric], champion_scores[metric], rows, None)


def _unseen_by(run_id: str | None, data_split: Split) -> np.ndarray:
    """Mask of held-out rows absent from the run's training rows (all, if unrecorded)."""
    everything = np.ones(len(data_split.y_test), dtype=bool)
    if not run_id:
        return everything
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path=f"{train.TRAINING_ROWS_DIR}/{train.TRAINING_ROWS_FILE}",
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
    gate = config.gate
    metric = gate.metric
    lower = config.gate_lower_is_better()
    if gate.threshold is not None:
        fails = candidate > gate.threshold if lower else candidate < gate.threshold
        if fails:
            op = ">" if lower else "<"
            return False, f"{metric} {candidate:.4f} {op} threshold {gate.threshold:.4f}"
    if champion is None or comparison is None:
        bar = "" if gate.threshold is None else f", meets threshold {gate.threshold:.4f}"
        return True, f"first model: no champion yet; {metric} {candidate:.4f}{bar}"
    if comparison.problem is not None or comparison.candidate is None:
        return False, (
            f"cannot compare with champion v{champion.version}: {comparison.problem}; "
            "promote by hand with `python -m pipeline promote` if intended"
        )
    ours, theirs = comparison.candidate, comparison.champion
    assert theirs is not None
    where = f" (on {comparison.rows} held-out rows unseen by both)"
    gain = theirs - ours if lower else ours - theirs
    if gain > 0 and gain >= gate.min_improvement:
        sign = "-" if lower else "+"
        return True, (
            f"{metric} {ours:.4f} beats champion v{champion.version} "
            f"{theirs:.4f} {sign} {gate.min_improvement:.4f}{where}"
        )
    if gain == 0 and gate.min_improvement == 0:
        return False, (
            f"{metric} {ours:.4f} equals champion v{champion.version} {theirs:.4f}: "
            f"no improvement{where}"
        )
    op, sign = (">", "-") if lower else ("<", "+")
    return False, (
        f"{metric} {ours:.4f} {op} champion v{champion.version} "
        f"{theirs:.4f} {sign} {gate.min_improvement:.4f}{where}"
    )


def _tag(client: MlflowClient, decision: GateDecision) -> None:
    tags = {
        "gate.decision": decision.decision,
        "gate.reason": decision.reason,
        "gate.metric": decision.metric,
        "gate.candidate_value": f"{decision.candidate_value:.6g}",
        "gate.champion_version": decision.champion_version or "none",
        "gate.champion_value": (
            "none" if decision.champion_value is None else f"{decision.champion_value:.6g}"
        ),
        "gate.comparison_rows": str(decision.comparison_rows),
    }
    for key, value in tags.items():
        client.set_model_version_tag(decision.name, decision.version, key, value)
