"""The one place that wires the steps together, for the whole chain and for single steps."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline import artifacts, model_io
from pipeline.config import PipelineConfig
from pipeline.errors import PipelineError
from pipeline.metrics import held_out
from pipeline.registry import production, transaction
from pipeline.reports import model_card
from pipeline.steps import evaluate, features, gate, ingest, register, train
from pipeline.tracking import STATUS_TAG

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineResult:
    data_hash: str
    run_id: str
    metrics: Mapping[str, float]
    registered: register.RegisteredVersion
    decision: gate.GateDecision
    training: train.TrainResult | None
    """None when the run was reused from the cache."""
    cached_from: str | None = None
    registry_state: str | None = None
    """On a cache hit of a gated version: what the registry says of it now, in place of the
    decision recorded when it was first gated."""


def run_all(
    config: PipelineConfig, run_id: str | None = None, *, force: bool = False
) -> PipelineResult:
    """ingest + validate -> train -> evaluate -> register -> gate -> model card.

    The gate sends a candidate that passes to Production, or to Staging as the challenger
    when `gate.live` is on (`result.decision.stage` says which).

    A finished run with the same config, data and code is reused instead of training again
    (`force` trains anyway): the registry is reconciled first (a change a killed process left
    is finished), then its version's recorded gate decision is reported together with what
    Production is now; a version the gate never finished deciding is gated again.
    """
    dataset = ingest.run(config)
    if not force:
        cached = _cached_run(config, train.cache_key(config, dataset))
        if cached is not None:
            return _reuse(config, cached, dataset, launcher_run_id=run_id)
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
    decision = gate.run(config, registered.version, training.model, training.split, evaluation)
    model_card.log_model_card(MlflowClient(), registered.name, registered.version)
    return PipelineResult(
        data_hash=dataset.data_hash,
        run_id=training.run_id,
        metrics=evaluation.metrics,
        registered=registered,
        decision=decision,
        training=training,
    )


def _cached_run(config: PipelineConfig, key: str) -> Run | None:
    client = MlflowClient()
    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{artifacts.CACHE_KEY}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    gate_metric = config.gate.metric
    for run in runs:
        if artifacts.REPRODUCE_OF_RUN in run.data.tags:
            continue  # a reproduction is never registered; the original is what to reuse
        if gate_metric in run.data.metrics and run.outputs and run.outputs.model_outputs:
            return run
    return None


def _reuse(
    config: PipelineConfig, run: Run, dataset: ingest.Dataset, launcher_run_id: str | None
) -> PipelineResult:
    client = MlflowClient()
    run_id = run.info.run_id
    logger.info(
        "Cache hit: run %s was trained on the same config, data (hash %s) and code; skipping "
        "training and evaluation (force a re-run with --force)",
        run_id,
        dataset.data_hash[:12],
    )
    if launcher_run_id and launcher_run_id != run_id:
        client.set_tag(launcher_run_id, "cache.hit_of", run_id)
        # The runs table shows this tag as a column: the row says why it has no metrics.
        client.set_tag(launcher_run_id, STATUS_TAG, f"cache hit of {run.info.run_name}")
        client.set_tag(launcher_run_id, "mlflow.runName", f"{run.info.run_name}-cache-hit")
        client.set_tag(
            launcher_run_id,
            "mlflow.note.content",
            f"Cache hit: nothing was trained; the candidate is run {run_id}.",
        )
    # A gate killed mid-way is finished (or its false tag removed) before any tag is read.
    transaction.ensure_consistent(client, config.registered_model)
    versions = client.search_model_versions(
        f"name = '{config.registered_model}' and run_id = '{run_id}'"
    )
    if versions:
        version = max(versions, key=lambda v: int(v.version))
        registered = register.RegisteredVersion(
            name=version.name,
            version=str(version.version),
            run_id=run_id,
            model_uri=str(version.source),
        )
    else:
        registered = register_run(config, run_id)
        version = production.get_version(client, registered.name, registered.version)
    if artifacts.GATE_DECISION not in version.tags:
        decision = gate_version(config, registered.version)
        model_card.log_model_card(client, registered.name, registered.version)
        registry_state = None  # gated just now: the decision is the news
    else:
        decision = gate.recorded_decision(config, version)
        registry_state = _registry_state(client, decision)
    metrics = held_out(run.data.metrics)
    return PipelineResult(
        data_hash=dataset.data_hash,
        run_id=run_id,
        metrics=metrics,
        registered=registered,
        decision=decision,
        training=None,
        cached_from=run_id,
        registry_state=registry_state,
    )


def _registry_state(client: MlflowClient, decision: gate.GateDecision) -> str:
    """What the registry says of the reused version now; its recorded decision may be old news.

    Promotions, promotes by hand, rollbacks and live-gate all move versions between stages, so
    the version's stage is read afresh and the recorded decision only says how it got there.
    """
    name, number = decision.name, decision.version
    current = production.production_version(client, name)
    if current is not None and str(current.version) == number:
        return f"version {number} is in Production"
    now = f"Production is version {current.version}" if current else "no version is in Production"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        stage = production.get_version(client, name, number).current_stage
    if stage == production.STAGING:
        return (
            f"version {number} is in Staging (challenger): judge it on live traffic with "
            f"`{gate.LIVE_GATE_COMMAND}`; {now}"
        )
    where = f"is {stage}" if stage == production.ARCHIVED else "is in no stage"
    if decision.promoted:
        return f"version {number} {where} (promoted by the gate earlier, replaced since); {now}"
    if decision.decision == "staged":
        return (
            f"version {number} {where} (staged by the gate earlier, then replaced, retired or "
            f"rolled back); {now}"
        )
    return f"version {number} {where} (the gate {decision.decision} it); {now}"


def evaluate_run(config: PipelineConfig, run_id: str) -> evaluate.EvaluationResult:
    """Evaluate the model of an earlier training run on the held-out rows of the same data."""
    config = _config_of_run(config, run_id)
    dataset = _dataset_of_run(config, run_id)
    model = model_io.load_model(_model_uri_of_run(run_id))
    return evaluate.run(config, run_id, model, features.split(config, dataset))


def register_run(config: PipelineConfig, run_id: str) -> register.RegisteredVersion:
    """Register the model of an evaluated run."""
    run = MlflowClient().get_run(run_id)
    metrics = held_out(run.data.metrics)
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
        data_hash=run.data.tags.get(artifacts.DATA_HASH, "unknown"),
    )


def gate_version(config: PipelineConfig, version: str) -> gate.GateDecision:
    """Run the gate on a registered version, scoring it afresh on the config's held-out rows."""
    client = MlflowClient()
    model_version = production.get_version(client, config.registered_model, version)
    if model_version.run_id:
        config = _config_of_run(config, model_version.run_id)
    dataset = ingest.run(config)
    data_split = features.split(config, dataset)
    model = model_io.load_model(f"models:/{config.registered_model}/{model_version.version}")
    decision = gate.run(config, str(version), model, data_split)
    model_card.log_model_card(client, config.registered_model, str(model_version.version))
    return decision


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
    recorded = MlflowClient().get_run(run_id).data.tags.get(artifacts.DATA_HASH)
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
