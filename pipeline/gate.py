"""Gate: promote the candidate only if it is good enough and better than the champion.

Both sides are scored on the same held-out rows with the same metric function, so the
comparison never mixes numbers computed on different data.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from pipeline import evaluate, model_io, registry
from pipeline.config import PipelineConfig
from pipeline.errors import PipelineError
from pipeline.features import Split

logger = logging.getLogger(__name__)


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

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"


def run(
    config: PipelineConfig,
    version: str,
    candidate_metrics: Mapping[str, float],
    data_split: Split,
) -> GateDecision:
    """Decide on `version`, tag it with the decision and reason, and promote it if it passed."""
    client = MlflowClient()
    name = config.registered_model
    metric = config.gate.metric
    if metric not in candidate_metrics:
        raise PipelineError(
            f"gate.metric '{metric}' was not computed for version {version} (the estimator "
            "may lack predict_proba); choose another gate.metric"
        )
    candidate = candidate_metrics[metric]
    champion = registry.production_version(client, name)
    champion_value: float | None = None
    if champion is not None and str(champion.version) == str(version):
        reason = f"version {version} is already in Production"
        passed = False
    else:
        if champion is not None:
            champion_value = _champion_score(
                config, f"models:/{name}/{champion.version}", data_split
            )
        passed, reason = _decide(config, candidate, champion, champion_value)
    decision = GateDecision(
        name=name,
        version=str(version),
        decision="promoted" if passed else "rejected",
        reason=reason,
        metric=metric,
        candidate_value=candidate,
        champion_version=str(champion.version) if champion else None,
        champion_value=champion_value,
    )
    _tag(client, decision)
    if passed:
        registry.set_production(client, name, str(version), action="gate", reason=reason)
    else:
        logger.info("Gate rejected '%s' version %s: %s", name, version, reason)
    return decision


def _champion_score(config: PipelineConfig, model_uri: str, data_split: Split) -> float | None:
    try:
        model = model_io.load_model(model_uri)
        scores = evaluate.score(config, model, data_split.X_test, data_split.y_test)
    except Exception:
        logger.exception("The champion could not be scored on the candidate's held-out rows")
        return None
    return scores.get(config.gate.metric)


def _decide(
    config: PipelineConfig,
    candidate: float,
    champion: ModelVersion | None,
    champion_value: float | None,
) -> tuple[bool, str]:
    gate = config.gate
    metric = gate.metric
    lower = config.gate_lower_is_better()
    if gate.threshold is not None:
        fails = candidate > gate.threshold if lower else candidate < gate.threshold
        if fails:
            op = ">" if lower else "<"
            return False, f"{metric} {candidate:.4f} {op} threshold {gate.threshold:.4f}"
    if champion is None:
        bar = "" if gate.threshold is None else f", meets threshold {gate.threshold:.4f}"
        return True, f"first model: no champion yet; {metric} {candidate:.4f}{bar}"
    champion_version = champion.version
    if champion_value is None:
        return False, (
            f"champion v{champion_version} could not be scored on the same held-out rows "
            "(see the log); promote by hand with `python -m pipeline promote` if intended"
        )
    gain = champion_value - candidate if lower else candidate - champion_value
    if gain > 0 and gain >= gate.min_improvement:
        sign = "-" if lower else "+"
        return True, (
            f"{metric} {candidate:.4f} beats champion v{champion_version} "
            f"{champion_value:.4f} {sign} {gate.min_improvement:.4f}"
        )
    if gain == 0 and gate.min_improvement == 0:
        return False, (
            f"{metric} {candidate:.4f} equals champion v{champion_version} "
            f"{champion_value:.4f}: no improvement"
        )
    op, sign = (">", "-") if lower else ("<", "+")
    return False, (
        f"{metric} {candidate:.4f} {op} champion v{champion_version} "
        f"{champion_value:.4f} {sign} {gate.min_improvement:.4f}"
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
    }
    for key, value in tags.items():
        client.set_model_version_tag(decision.name, decision.version, key, value)
