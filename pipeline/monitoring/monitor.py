"""Monitor: drift and performance of one model version over a window of its prediction log.

The reference is the profile logged with the model at training time, so monitoring never
needs the training data; the log is streamed in chunks, so memory is bounded by the chunk
size whatever the window holds. Drift is counted by `drift`, the labelled rows (late labels)
are judged per time window by `performance`, and `record` logs the findings as one run of the
monitoring experiment, tagged with the model version it watched.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.artifacts import REFERENCE_PROFILE_PATH
from pipeline.config import PipelineConfig
from pipeline.errors import DataValidationError, PipelineError, RegistryError
from pipeline.monitoring.drift import DriftAccumulator, DriftReport
from pipeline.monitoring.findings import MonitorResult
from pipeline.monitoring.performance import LabelledRows, check_performance, check_window
from pipeline.monitoring.prediction_log import PredictionLog, describe_window, utc
from pipeline.monitoring.profile import ReferenceProfile
from pipeline.monitoring.record import log_monitor_run
from pipeline.registry import production

logger = logging.getLogger(__name__)


def run(
    config: PipelineConfig,
    version: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    run_id: str | None = None,
) -> MonitorResult:
    """Compare the predictions of `version` (default: Production) in [since, until) with its
    reference profile, and log the findings as a run of the monitoring experiment.

    `run_id` logs into an existing run (the one `mlflow run` created) instead of a new one.
    """
    client = MlflowClient()
    name = config.registered_model
    check_window(config.monitoring.performance.window)
    model_version = _resolve_version(client, name, version)
    version = str(model_version.version)
    model_run_id = str(model_version.run_id or "")
    profile = _reference_profile(client, name, version, model_run_id)
    until = utc(until) if until is not None else datetime.now(UTC)
    since = utc(since) if since is not None else None
    if since is not None and since >= until:
        raise DataValidationError(
            f"the window start {since.isoformat()} is not before its end {until.isoformat()}; "
            "pass --since earlier than --until"
        )
    window = _read_window(config, profile, version, since, until)
    findings = MonitorResult(
        run_id="",
        model_name=name,
        model_version=version,
        model_run_id=model_run_id,
        window_start=since or (window.first.to_pydatetime() if window.first is not None else until),
        window_end=until,
        rows=window.rows,
        labelled_rows=len(window.labels),
        drift=window.drift,
        performance=check_performance(
            config.task, config.monitoring.performance, profile.performance, window.labels
        ),
    )
    result = replace(findings, run_id=log_monitor_run(client, config, findings, run_id=run_id))
    logger.info(
        "Monitored %s v%s over %d predictions: %s (run %s)",
        name,
        version,
        window.rows,
        result.verdict,
        result.run_id,
    )
    return result


@dataclass(frozen=True)
class _Window:
    """What one pass over the log window leaves: counts, never the rows (but labelled ones)."""

    rows: int
    first: pd.Timestamp | None  # the earliest prediction read
    drift: DriftReport
    labels: pd.DataFrame


def _read_window(
    config: PipelineConfig,
    profile: ReferenceProfile,
    version: str,
    since: datetime | None,
    until: datetime,
) -> _Window:
    log = PredictionLog(Path(config.monitoring.log_dir), config.registered_model)
    # Every answer of this version counts, served or not: a shadow answer is the version's
    # prediction on real traffic, which is what its drift and performance are about. Rows with
    # an error hold no prediction; the reader skips them (docs/monitoring.md).
    # Without labels the window is read without the request keys and probabilities.
    with_labels = profile.performance is not None and any(log.feedback_dir.glob("part-*.parquet"))
    accumulator = DriftAccumulator(profile, config.monitoring.drift)
    labelled = LabelledRows(config.task)
    first: pd.Timestamp | None = None
    for chunk in log.read(
        profile.features,
        chunk_rows=config.monitoring.chunk_rows,
        version=version,
        since=since,
        until=until,
        probabilities=with_labels and config.task == "classification",
        labels=with_labels,
    ):
        accumulator.update(chunk)  # it reads the profile's columns and ignores the rest
        chunk_first = chunk["timestamp"].min()
        first = chunk_first if first is None else min(first, chunk_first)
        if with_labels:
            labelled.update(chunk)
    if accumulator.rows == 0:
        raise _empty_window(log, config, version, since, until)
    return _Window(
        rows=accumulator.rows, first=first, drift=accumulator.result(), labels=labelled.frame()
    )


def _resolve_version(client: MlflowClient, name: str, version: str | None) -> Any:
    if version is not None:
        return production.get_version(client, name, version)
    current = production.production_version(client, name)
    if current is None:
        raise RegistryError(
            f"registered model '{name}' has no Production version to monitor; pass --version "
            "or promote one first"
        )
    return current


def _reference_profile(
    client: MlflowClient, name: str, version: str, model_run_id: str
) -> ReferenceProfile:
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        try:
            local = client.download_artifacts(model_run_id, REFERENCE_PROFILE_PATH, tmp)
        except (MlflowException, OSError) as exc:
            raise RegistryError(
                f"version {version} of '{name}' has no reference profile "
                f"({REFERENCE_PROFILE_PATH} on run {model_run_id or '?'}); retrain it with "
                "this pipeline version"
            ) from exc
        try:
            return ReferenceProfile.from_json(Path(local).read_text())
        except DataValidationError as exc:
            raise RegistryError(
                f"the reference profile of version {version} of '{name}' cannot be read "
                f"({exc}); retrain it with this pipeline version"
            ) from exc


def _empty_window(
    log: PredictionLog,
    config: PipelineConfig,
    version: str,
    since: datetime | None,
    until: datetime,
) -> PipelineError:
    name = config.registered_model
    where = f"{log.directory}"
    window = describe_window(since, until)
    if not log.parts():
        return DataValidationError(
            f"no prediction log for {name} in {log.predictions_dir}: start the server with "
            "prediction logging on, or set monitoring.log_dir to the directory it logs to"
        )
    others = log.versions(since=since, until=until)
    if others:
        found = ", ".join(f"{v} ({n} rows)" for v, n in others.items())
        return DataValidationError(
            f"no predictions of {name} v{version} in {where} {window}; found versions {found}: "
            "pass --version to monitor one of them, or widen the window"
        )
    return DataValidationError(
        f"no predictions of {name} v{version} in {where} {window}; widen the window with "
        "--since/--until"
    )
