"""Reproduce: re-train a registered version from what its run recorded and compare metrics.

The recorded resolved config, data hash, code hash and library versions are the recipe. The
data must hash the same as when the version was trained, otherwise the comparison would be
meaningless: a changed file is reported and nothing is trained. Code and library differences
are reported next to the metrics, because they are the usual reason a metric moves.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import mlflow
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import artifacts, metrics
from pipeline.config import config_from_mapping
from pipeline.errors import DataValidationError, PipelineError
from pipeline.registry import production
from pipeline.steps import evaluate, ingest, train
from pipeline.tracking import code_hash, git_state, launcher_run_in, library_versions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricCheck:
    name: str
    recorded: float
    reproduced: float | None

    @property
    def matches(self) -> bool:
        return self.reproduced is not None and self.reproduced == self.recorded


@dataclass(frozen=True)
class ReproduceResult:
    name: str
    version: str
    original_run_id: str
    run_id: str
    data_hash: str
    code_changes: tuple[str, ...]
    """Differences in git commit, working-tree state, pipeline code and libraries."""
    metrics: tuple[MetricCheck, ...]

    @property
    def matches(self) -> bool:
        return bool(self.metrics) and all(check.matches for check in self.metrics)


def run(name: str, version: str, launcher_run_id: str | None = None) -> ReproduceResult:
    """Re-train version `version` of `name` in a new run and compare its held-out metrics.

    `launcher_run_id` (the run `mlflow run` created) becomes that run when it is in the
    recorded config's experiment.
    """
    client = MlflowClient()
    model_version = production.get_version(client, name, version)
    if not model_version.run_id:
        raise PipelineError(f"version {version} of '{name}' has no run to reproduce")
    original = client.get_run(model_version.run_id)
    tags = original.data.tags
    config = config_from_mapping(
        _recorded_config(original.info.run_id),
        base_dir=tags.get(artifacts.CONFIG_DIR),
        source=f"the config recorded on run {original.info.run_id}",
        name=tags.get(artifacts.CONFIG_NAME, "config"),
    )
    dataset = ingest.run(config)
    recorded_hash = tags.get(artifacts.DATA_HASH)
    if recorded_hash != dataset.data_hash:
        raise DataValidationError(
            f"the data of {name} v{version} changed: {config.source_description} hashes to "
            f"{dataset.data_hash[:12]} now but {str(recorded_hash)[:12]} when it was trained; "
            "restore the original data to reproduce it (nothing was trained)"
        )
    changes = _code_changes(tags)
    for change in changes:
        logger.warning("Reproducing %s v%s with different code: %s", name, version, change)
    training = train.run(
        config, dataset, run_id=launcher_run_in(launcher_run_id, config.experiment)
    )
    client.set_tag(training.run_id, "mlflow.runName", f"reproduce-{name}-v{version}")
    client.set_tag(training.run_id, artifacts.REPRODUCE_OF_RUN, original.info.run_id)
    client.set_tag(training.run_id, "reproduce.of_version", f"{name}/{version}")
    evaluation = evaluate.run(config, training.run_id, training.model, training.split)
    checks = tuple(
        MetricCheck(metric, recorded, evaluation.metrics.get(metric))
        for metric, recorded in sorted(metrics.held_out(original.data.metrics).items())
    )
    result = ReproduceResult(
        name=name,
        version=str(version),
        original_run_id=original.info.run_id,
        run_id=training.run_id,
        data_hash=dataset.data_hash,
        code_changes=changes,
        metrics=checks,
    )
    client.set_tag(training.run_id, "reproduce.matches", str(result.matches).lower())
    return result


def _recorded_config(run_id: str) -> Mapping[str, object]:
    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/{artifacts.RESOLVED_CONFIG}")
    except MlflowException as exc:
        raise PipelineError(
            f"run {run_id} recorded no resolved config ({artifacts.RESOLVED_CONFIG}); it was "
            "trained by an older pipeline and cannot be reproduced from the registry"
        ) from exc
    recorded = yaml.safe_load(text)
    if not isinstance(recorded, dict):
        raise PipelineError(f"the resolved config of run {run_id} is not a mapping")
    return recorded


def _code_changes(tags: Mapping[str, str]) -> tuple[str, ...]:
    changes = []
    commit, dirty = git_state()
    recorded_commit, recorded_dirty = tags.get(artifacts.GIT_COMMIT), tags.get(artifacts.GIT_DIRTY)
    if recorded_commit not in (None, commit):
        changes.append(f"git commit {str(recorded_commit)[:12]} then, {commit[:12]} now")
    if recorded_dirty == "true" or dirty == "true":
        changes.append(f"uncommitted changes (dirty then: {recorded_dirty}, now: {dirty})")
    if tags.get(artifacts.CODE_HASH) not in (None, code_hash()):
        changes.append("the pipeline's source differs from the one that trained it")
    recorded_libraries = json.loads(tags.get(artifacts.LIBRARIES, "{}"))
    for library, now in library_versions().items():
        then = recorded_libraries.get(library)
        if then is not None and then != now:
            changes.append(f"{library} {then} then, {now} now")
    return tuple(changes)
