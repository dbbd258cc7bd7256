"""Register: every evaluated candidate becomes a registered model version."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import artifacts
from pipeline.config import PipelineConfig
from pipeline.errors import PipelineError
from pipeline.metrics import held_out

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    model_uri: str


def run(
    config: PipelineConfig,
    run_id: str,
    model_uri: str,
    metrics: Mapping[str, float],
    data_hash: str,
) -> RegisteredVersion:
    """Create a version of `config.registered_model` from the run's model, tagged for lineage."""
    client = MlflowClient()
    name = config.registered_model
    _ensure_registered_model(client, config)
    scores = held_out(metrics)
    tags = {
        "run_id": run_id,
        artifacts.DATA_HASH: data_hash,
        "config.hash": config.config_hash(),
        "task": config.task,
        "estimator": config.estimator.class_path,
        **{metric: f"{value:.6g}" for metric, value in scores.items()},
    }
    headline = ", ".join(f"{k}={v:.4f}" for k, v in scores.items())
    version = client.create_model_version(
        name,
        source=model_uri,
        # A tracking server needs the logged model's id beside a models:/m-... source (as
        # mlflow.register_model passes it); the embedded store resolves it either way.
        model_id=_logged_model_id(model_uri),
        run_id=run_id,
        tags=tags,
        description=(
            f"{config.estimator.class_path} trained on {config.source_description} "
            f"(data hash {data_hash[:12]}) in run {run_id}. Held-out: {headline}."
        ),
    )
    logger.info("Registered '%s' version %s from run %s", name, version.version, run_id)
    return RegisteredVersion(
        name=name, version=str(version.version), run_id=run_id, model_uri=model_uri
    )


def _logged_model_id(model_uri: str) -> str | None:
    """The id in `models:/m-<id>`, MLflow 3's URI of a logged model; None for other URIs."""
    model_id = model_uri.removeprefix("models:/")
    return model_id if model_uri.startswith("models:/m-") and "/" not in model_id else None


def _ensure_registered_model(client: MlflowClient, config: PipelineConfig) -> None:
    try:
        existing = client.get_registered_model(config.registered_model)
    except MlflowException:
        existing = None
    if existing is not None:
        task = existing.tags.get("task")
        if task and task != config.task:
            raise PipelineError(
                f"registered model '{config.registered_model}' holds {task} models but this "
                f"config is {config.task}; choose another registered_model name"
            )
        return
    try:
        client.create_registered_model(
            config.registered_model,
            tags={"task": config.task},
            description=(
                f"{config.task.capitalize()} model trained by the pipeline on "
                f"{config.source_description}; gate metric {config.gate.metric}."
            ),
        )
    except MlflowException:
        # Another pipeline created it between our check and our create: that is fine.
        client.get_registered_model(config.registered_model)
