"""Retrain: when the monitor finds drift or degraded performance, train a challenger on the
configured data plus the labelled production rows, and let the gate decide.

The combined data is written as a Parquet file beside the prediction log and becomes the
challenger's data source, so its run records the hash of exactly what it trained on and
`reproduce` can rebuild it. A labelled production row identical (features and label, whatever
the dtypes) to a configured row or to another production row is dropped: a copy would land on
both sides of the split. The random split puts a share of the recent rows into the held-out
set; the gate scores both models only on held-out rows neither trained on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from pipeline.config import PipelineConfig
from pipeline.errors import DataValidationError
from pipeline.monitoring import monitor
from pipeline.monitoring.prediction_log import PredictionLog
from pipeline.steps import features, flow, ingest

logger = logging.getLogger(__name__)

TRAINING_DIR = "training"


@dataclass(frozen=True)
class RetrainResult:
    status: Literal["not_needed", "no_labels", "retrained"]
    reason: str
    monitor_run_id: str | None
    labelled_rows: int
    data_path: Path | None
    pipeline: flow.PipelineResult | None


def run(
    config: PipelineConfig,
    *,
    force: bool = False,
    since: datetime | None = None,
    until: datetime | None = None,
) -> RetrainResult:
    """Monitor the Production version, and retrain and gate a challenger if it needs it."""
    checked = None
    if force:
        reason = "forced"
    else:
        checked = monitor.run(config, since=since, until=until)
        if not checked.needs_action:
            return RetrainResult(
                status="not_needed",
                reason=f"monitor run {checked.run_id} found {checked.verdict}: nothing to do",
                monitor_run_id=checked.run_id,
                labelled_rows=0,
                data_path=None,
                pipeline=None,
            )
        reason = f"monitor run {checked.run_id} found {checked.verdict}"
    dataset = ingest.run(config)
    recent = labelled_production_rows(config, dataset, since=since, until=until)
    if recent.empty:
        return RetrainResult(
            status="no_labels",
            reason=(
                f"{reason}, but no labelled production rows arrived: retraining on the same "
                "data would give the same model. Send labels (POST /feedback or "
                "`python -m pipeline feedback`) and run retrain again"
            ),
            monitor_run_id=checked.run_id if checked else None,
            labelled_rows=0,
            data_path=None,
            pipeline=None,
        )
    configured = dataset.frame[[*dataset.features, dataset.target]]
    new = new_rows(configured, recent, dataset)
    copies = len(recent) - len(new)
    data_path = _write_training_data(config, pd.concat([configured, new], ignore_index=True))
    logger.info(
        "Retraining %s (%s) on %d configured + %d labelled production rows (%d copies of "
        "rows already there dropped) from %s",
        config.registered_model,
        reason,
        dataset.rows,
        len(new),
        copies,
        data_path,
    )
    result = flow.run_all(
        config.with_data_file(data_path, name=f"{config.name}-retrain", recent_rows=len(new))
    )
    _record_why(result, reason, checked.run_id if checked else None, len(recent), copies)
    return RetrainResult(
        status="retrained",
        reason=reason,
        monitor_run_id=checked.run_id if checked else None,
        labelled_rows=len(recent),
        data_path=data_path,
        pipeline=result,
    )


def labelled_production_rows(
    config: PipelineConfig,
    dataset: ingest.Dataset,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pd.DataFrame:
    """Logged predictions of any version that received a label, as rows of the data set.

    Only answers served to a client are read: where a challenger answered the same request in
    shadow, its row carries the same features and label, and reading both would count every
    shadowed request twice."""
    log = PredictionLog(Path(config.monitoring.log_dir), config.registered_model)
    features = list(dataset.features)
    if not log.parts(since=since, until=until):
        return pd.DataFrame(columns=[*features, dataset.target])
    frames = [
        chunk.dropna(subset=["label"])
        for chunk in log.read(
            features,
            chunk_rows=config.monitoring.chunk_rows,
            since=since,
            until=until,
            labels=True,
            served_only=True,
        )
    ]
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if rows.empty:
        return pd.DataFrame(columns=[*features, dataset.target])
    labels = rows["label"]
    try:
        target = labels.astype(dataset.y.dtype) if config.task == "regression" else labels
        if config.task == "classification" and pd.api.types.is_numeric_dtype(dataset.y):
            target = pd.to_numeric(labels).astype(dataset.y.dtype)
    except (TypeError, ValueError) as exc:
        raise DataValidationError(
            f"labels in {log.feedback_dir} do not fit target '{dataset.target}' "
            f"({dataset.y.dtype}): {exc}; fix or remove those feedback parts"
        ) from exc
    if config.task == "classification":
        unknown = sorted(set(target.astype(str)) - set(dataset.y.astype(str)))
        if unknown:
            raise DataValidationError(
                f"labels {unknown[:5]} in {log.feedback_dir} are not classes of target "
                f"'{dataset.target}'; fix or remove those feedback parts"
            )
    recent = rows[features].copy()
    for column in dataset.numeric_features:
        recent[column] = pd.to_numeric(recent[column], errors="coerce")
    recent[dataset.target] = target.to_numpy()
    return recent


def new_rows(
    configured: pd.DataFrame, recent: pd.DataFrame, dataset: ingest.Dataset
) -> pd.DataFrame:
    """The rows of `recent` that copy neither a configured row nor an earlier recent row
    (features and target, dtypes aside): a copy would land on both sides of the split."""
    columns = sorted(dataset.features)

    def hashes(frame: pd.DataFrame) -> np.ndarray:
        return features.row_hashes(frame[columns], frame[dataset.target], columns)

    mine = hashes(recent)
    fresh = ~np.isin(mine, hashes(configured)) & ~pd.Series(mine).duplicated().to_numpy()
    return recent[fresh].reset_index(drop=True)


def _write_training_data(config: PipelineConfig, frame: pd.DataFrame) -> Path:
    directory = Path(config.monitoring.log_dir) / config.registered_model / TRAINING_DIR
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    path = (directory / f"retrain-{stamp}.parquet").resolve()
    temporary = path.with_name(f"{path.name}.tmp")
    frame.to_parquet(temporary, index=False)
    temporary.replace(path)
    return path


def _record_why(
    result: flow.PipelineResult,
    reason: str,
    monitor_run_id: str | None,
    recent_rows: int,
    copies: int,
) -> None:
    client = MlflowClient()
    tags = {
        "retrain.trigger": reason,
        "retrain.monitor_run": monitor_run_id or "none",
        "retrain.production_rows": str(recent_rows),
        "retrain.copies_dropped": str(copies),
    }
    for key, value in tags.items():
        client.set_tag(result.run_id, key, value)
        client.set_model_version_tag(result.registered.name, result.registered.version, key, value)
