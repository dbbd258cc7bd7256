"""The one place that wires the steps together, for the whole chain and for single steps."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from pipeline import evaluate, features, gate, ingest, model_io, register, registry, train
from pipeline.config import PipelineConfig
from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineResult:
    data_hash: str
    training: train.TrainResult
    evaluation: evaluate.EvaluationResult
    registered: register.RegisteredVersion
    decision: gate.GateDecision


def run_all(config: PipelineConfig, run_id: str | None = None) -> PipelineResult:
    """ingest + validate -> train -> evaluate -> register -> gate."""
    dataset = ingest.run(config)
    training = train.run(config, dataset, run_id=run_id)
    evaluation = evaluate.run(config, training.run_id, training.model, training.split)
    if config.gate.metric not in evaluation.metrics:
        # Registering a version the gate cannot judge would change the registry for nothing.
        raise PipelineError(
            f"gate.metric '{config.gate.metric}' could not be computed on the held-out rows "
            f"of run {training.run_id} (a class missing from them?); nothing was registered"
        )
    registered = register.run(
        config,
        run_id=training.run_id,
        model_uri=training.model_uri,
        metrics=evaluation.metrics,
        data_hash=dataset.data_hash,
    )
    decision = gate.run(config, registered.version, training.model, training.split)
    return PipelineResult(
        data_hash=dataset.data_hash,
        training=training,
        evaluation=evaluation,
        registered=registered,
        decision=decision,
    )


def evaluate_run(config: PipelineConfig, run_id: str) -> evaluate.EvaluationResult:
    """Evaluate the model of an earlier training run on the held-out rows of the same data."""
    config = _config_of_run(config, run_id)
    dataset = _dataset_of_run(config, run_id)
    model = model_io.load_model(_model_uri_of_run(run_id))
    return evaluate.run(config, run_id, model, features.split(config, dataset))


def register_run(config: PipelineConfig, run_id: str) -> register.RegisteredVersion:
    """Register the model of an evaluated run."""
    run = MlflowClient().get_run(run_id)
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("test_")}
    if not metrics:
        raise PipelineError(
            f"run {run_id} has no held-out metrics; evaluate it first "
            f"(python -m pipeline evaluate --config ... --run-id {run_id})"
        )
    return register.run(
        config,
        run_id=run_id,
        model_uri=_model_uri_of_run(run_id),
        metrics=metrics,
        data_hash=run.data.tags.get("data.hash", "unknown"),
    )


def gate_version(config: PipelineConfig, version: str) -> gate.GateDecision:
    """Run the gate on a registered version, scoring it afresh on the config's held-out rows."""
    client = MlflowClient()
    model_version = registry.get_version(client, config.registered_model, version)
    if model_version.run_id:
        config = _config_of_run(config, model_version.run_id)
    dataset = ingest.run(config)
    data_split = features.split(config, dataset)
    model = model_io.load_model(f"models:/{config.registered_model}/{model_version.version}")
    return gate.run(config, str(version), model, data_split)


def _config_of_run(config: PipelineConfig, run_id: str) -> PipelineConfig:
    """The config with the split the run was trained with, so held-out rows stay held out."""
    params = MlflowClient().get_run(run_id).data.params
    overrides: dict[str, object] = {}
    if "split.seed" in params:
        overrides["split.seed"] = int(params["split.seed"])
    if "split.test_size" in params:
        overrides["split.test_size"] = float(params["split.test_size"])
    if "split.stratify" in params:
        overrides["split.stratify"] = params["split.stratify"] == "True"
    return config.with_overrides(**overrides)


def _dataset_of_run(config: PipelineConfig, run_id: str) -> ingest.Dataset:
    dataset = ingest.run(config)
    recorded = MlflowClient().get_run(run_id).data.tags.get("data.hash")
    if recorded and recorded != dataset.data_hash:
        raise PipelineError(
            f"the data changed since run {run_id} was trained (hash {recorded[:12]} then, "
            f"{dataset.data_hash[:12]} now); retrain instead of evaluating on other data"
        )
    return dataset


def _model_uri_of_run(run_id: str) -> str:
    outputs = MlflowClient().get_run(run_id).outputs
    model_outputs = outputs.model_outputs if outputs else []
    if not model_outputs:
        raise PipelineError(f"run {run_id} logged no model; train it first")
    return f"models:/{model_outputs[-1].model_id}"
