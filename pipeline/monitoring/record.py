"""A monitoring run in MLflow: what one `monitor.run` found, as params, tags, metrics and the
two reports, in the monitoring experiment and tagged with the model version it watched."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.config import PipelineConfig
from pipeline.monitoring.drift import metric_key
from pipeline.monitoring.findings import MonitorResult
from pipeline.reports import drift_report

REPORT_HTML = "reports/drift_report.html"
REPORT_JSON = "reports/drift_report.json"
_BATCH = 1000  # MLflow takes at most 1000 metrics per log_batch call


def log_monitor_run(
    client: MlflowClient, config: PipelineConfig, found: MonitorResult, *, run_id: str | None
) -> str:
    """Log `found` into `run_id` (the run `mlflow run` made) or a new run; returns its id.

    The run ends FINISHED, or FAILED when a write fails (the error is raised again).
    """
    run_name = f"{found.model_name}-v{found.model_version}-{found.window_end:%Y%m%dT%H%M%SZ}"
    with monitoring_run(client, config, run_name, run_id) as run_id:
        client.log_batch(
            run_id,
            params=[Param(k, str(v)) for k, v in _params(config).items()],
            tags=[RunTag(k, v) for k, v in _tags(found).items()],
        )
        metrics = _metrics(found)
        for start in range(0, len(metrics), _BATCH):
            client.log_batch(run_id, metrics=metrics[start : start + _BATCH])
        client.log_dict(run_id, drift_report.as_json(found), REPORT_JSON)
        client.log_text(run_id, drift_report.render_html(found), REPORT_HTML)
    return run_id


@contextmanager
def monitoring_run(
    client: MlflowClient, config: PipelineConfig, run_name: str, run_id: str | None
) -> Iterator[str]:
    """`run_id` (the run `mlflow run` made), or a new run of the monitoring experiment named
    `run_name`; it ends FINISHED, or FAILED when the block raises (the error is raised again).
    """
    if run_id is None:
        experiment = experiment_id(client, config.monitoring_experiment)
        run_id = client.create_run(experiment, run_name=run_name).info.run_id
    try:
        yield run_id
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of the experiment `name`, created on first use (monitor and live-compare runs)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:
        # Another monitor created it between the lookup and the creation.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def _tags(found: MonitorResult) -> dict[str, str]:
    return {
        "model.name": found.model_name,
        "model.version": found.model_version,
        "model.run_id": found.model_run_id,
        "monitor.window_start": found.window_start.isoformat(),
        "monitor.window_end": found.window_end.isoformat(),
        "monitor.verdict": found.verdict,
        "mlflow.note.content": (
            f"Monitoring of {found.model_name} v{found.model_version} over {found.rows} "
            f"predictions ({found.labelled_rows} labelled): {found.verdict}."
        ),
    }


def _params(config: PipelineConfig) -> dict[str, object]:
    monitoring = config.monitoring
    params: dict[str, object] = {
        f"drift.{key}": value for key, value in monitoring.drift.model_dump().items()
    }
    params.update(
        {f"performance.{key}": value for key, value in monitoring.performance.model_dump().items()}
    )
    params["chunk_rows"] = monitoring.chunk_rows
    params["log_dir"] = monitoring.log_dir
    return params


def _metrics(found: MonitorResult) -> list[Metric]:
    drift = found.drift
    now = int(datetime.now(UTC).timestamp() * 1000)
    # The drift module names the per-column metrics (and makes column names safe for MLflow);
    # the run-level figures get the short names the monitoring experiment's table shows.
    summary = {"drift.dataset_drift", "drift.drifted_share", "drift.rows"}
    values = {k: v for k, v in drift.metrics().items() if k not in summary}
    values.update(
        {
            "rows": float(found.rows),
            "labelled_rows": float(found.labelled_rows),
            "drift.share": float(drift.drifted_share),
            "drift.dataset": float(found.drift_detected),
            "perf.degraded": float(found.performance_degraded),
        }
    )
    metrics = [Metric(key, value, now, 0) for key, value in values.items()]
    # One step per performance window, stamped with the window's start: the MLflow chart of
    # perf.<metric> is the metric over time.
    for step, window in enumerate(found.performance):
        at = int(window.start.timestamp() * 1000)
        metrics.append(Metric("perf.rows", float(window.rows), at, step))
        for name, check in window.metrics.items():
            metrics.append(Metric(metric_key("perf", name), check.value, at, step))
    return metrics
