"""Monitor: drift and performance of one model version over a window of its prediction log.

The reference is the profile logged with the model at training time, so monitoring never
needs the training data; the log is streamed in chunks, so memory is bounded by the chunk
size whatever the window holds. Late labels (feedback) turn into the model's metrics per time
window, computed by the evaluate step's own metric function and compared with the spread of
the same metrics over chunks of the held-out rows. Everything is logged as one run in the
monitoring experiment, tagged with the model version it watched.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import re
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pandas.api.types import union_categoricals

from pipeline.config import LOWER_IS_BETTER, PipelineConfig
from pipeline.errors import ConfigError, DataValidationError, PipelineError, RegistryError
from pipeline.monitoring.drift import ColumnDrift, DriftAccumulator, DriftReport
from pipeline.monitoring.prediction_log import PROBA_PREFIX, PredictionLog, describe_window, utc
from pipeline.monitoring.profile import ReferenceProfile
from pipeline.registry import production
from pipeline.steps.evaluate import REFERENCE_PROFILE_PATH, prediction_metrics

logger = logging.getLogger(__name__)

REPORT_HTML = "reports/drift_report.html"
REPORT_JSON = "reports/drift_report.json"
PREDICTION = "prediction"
# MLflow accepts these characters in metric names; a column name may hold others.
_METRIC_NAME_UNSAFE = re.compile(r"[^\w.\- /]")
_BATCH = 1000  # MLflow takes at most 1000 metrics per log_batch call


@dataclass(frozen=True)
class MetricCheck:
    """One metric of one window against the reference band mean +- sigma * std.

    A metric whose reference chunks show no spread (std 0: tiny chunks where, say, every
    chunk's ROC AUC is 1.0) has a band of zero width that any window would leave; it is
    reported but not judged.
    """

    value: float
    reference_mean: float
    reference_std: float
    lower: float
    upper: float
    lower_is_better: bool

    @property
    def judged(self) -> bool:
        return self.reference_std > 0

    @property
    def outside(self) -> bool:
        return self.judged and not self.lower <= self.value <= self.upper

    @property
    def degraded(self) -> bool:
        """Outside the band on the worse side (a better model is no reason to act)."""
        if not self.judged:
            return False
        return self.value > self.upper if self.lower_is_better else self.value < self.lower

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "reference_mean": self.reference_mean,
            "reference_std": self.reference_std,
            "lower": self.lower,
            "upper": self.upper,
            "judged": self.judged,
            "outside": self.outside,
            "degraded": self.degraded,
        }


@dataclass(frozen=True)
class PerformanceWindow:
    start: datetime
    end: datetime
    rows: int  # labelled predictions in the window
    metrics: Mapping[str, MetricCheck]

    @property
    def degraded(self) -> bool:
        return any(check.degraded for check in self.metrics.values())

    @property
    def degraded_metrics(self) -> tuple[str, ...]:
        return tuple(name for name, check in self.metrics.items() if check.degraded)

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "rows": self.rows,
            "degraded": self.degraded,
            "metrics": {name: check.to_dict() for name, check in self.metrics.items()},
        }


@dataclass(frozen=True)
class MonitorResult:
    run_id: str
    model_name: str
    model_version: str
    model_run_id: str
    window_start: datetime
    window_end: datetime
    rows: int
    labelled_rows: int
    drift: DriftReport
    performance: tuple[PerformanceWindow, ...]

    @property
    def drift_detected(self) -> bool:
        """The data-set verdict: the share of drifted columns reached the configured share."""
        return bool(self.drift.dataset_drift)

    @property
    def performance_degraded(self) -> bool:
        return any(window.degraded for window in self.performance)

    @property
    def needs_action(self) -> bool:
        return self.drift_detected or self.performance_degraded

    @property
    def verdict(self) -> str:
        found = [
            word
            for word, flag in (
                ("drift", self.drift_detected),
                ("degraded", self.performance_degraded),
            )
            if flag
        ]
        return "+".join(found) or "ok"

    def summary(self) -> str:
        """A few lines for the terminal: what was read, what drifted, how the model did."""
        drifted = [name for name, column in self.drift.columns.items() if column.drifted]
        lines = [
            f"monitor run {self.run_id}: {self.model_name} v{self.model_version}, "
            f"{self.rows} predictions ({self.labelled_rows} labelled) from "
            f"{self.window_start.isoformat()} to {self.window_end.isoformat()}",
            f"drift: {len(drifted)} of {len(self.drift.columns)} columns "
            f"(share {self.drift.drifted_share:.2f})"
            + (f": {', '.join(drifted)}" if drifted else "")
            + (" -> data-set drift" if self.drift_detected else " -> no data-set drift"),
        ]
        if not self.performance:
            lines.append("performance: no labelled predictions in the window")
        for window in self.performance:
            worse = ", ".join(
                f"{name} {window.metrics[name].value:.4f} outside "
                f"[{window.metrics[name].lower:.4f}, {window.metrics[name].upper:.4f}]"
                for name in window.degraded_metrics
            )
            values = ", ".join(f"{n}={c.value:.4f}" for n, c in window.metrics.items())
            lines.append(
                f"performance {window.start.isoformat()}: {window.rows} labelled, {values}"
                + (f" -> DEGRADED: {worse}" if worse else "")
            )
        lines.append(f"verdict: {self.verdict}")
        return "\n".join(lines)


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
    _check_window_alias(config.monitoring.performance.window)
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
    log = PredictionLog(Path(config.monitoring.log_dir), name)
    features = [column for column in profile.columns if column != PREDICTION]
    # Without labels the window is read without the request keys and probabilities.
    with_labels = profile.performance is not None and any(log.feedback_dir.glob("part-*.parquet"))
    accumulator = DriftAccumulator(profile, config.monitoring.drift)
    labelled: list[pd.DataFrame] = []
    rows = 0
    first: pd.Timestamp | None = None
    for chunk in log.read(
        features,
        chunk_rows=config.monitoring.chunk_rows,
        version=version,
        since=since,
        until=until,
        probabilities=with_labels and config.task == "classification",
        labels=with_labels,
    ):
        accumulator.update(chunk)  # it reads the profile's columns and ignores the rest
        rows += len(chunk)
        chunk_first = chunk["timestamp"].min()
        first = chunk_first if first is None else min(first, chunk_first)
        if with_labels:
            labelled.append(_labelled_rows(chunk, config.task))
    if rows == 0:
        raise _empty_window(log, config, version, since, until)
    drift = accumulator.result()
    window_start = since or (first.to_pydatetime() if first is not None else until)
    labels = _concat_labelled(labelled)
    findings = MonitorResult(
        run_id="",
        model_name=name,
        model_version=version,
        model_run_id=model_run_id,
        window_start=window_start,
        window_end=until,
        rows=rows,
        labelled_rows=len(labels),
        drift=drift,
        performance=tuple(_performance(config, profile, labels)) if len(labels) else (),
    )
    result = replace(findings, run_id=_log_run(client, config, findings, run_id=run_id))
    logger.info(
        "Monitored %s v%s over %d predictions: %s (run %s)",
        name,
        version,
        rows,
        result.verdict,
        result.run_id,
    )
    return result


def _check_window_alias(window: str) -> None:
    try:
        pd.tseries.frequencies.to_offset(window)
    except ValueError as exc:
        raise ConfigError(
            f"monitoring.performance.window '{window}' is not a pandas offset alias; "
            "use one such as 1h, 6h or 1D"
        ) from exc


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


def _labelled_rows(chunk: pd.DataFrame, task: str) -> pd.DataFrame:
    """The few columns performance needs, for the rows that have a label."""
    proba = [c for c in chunk.columns if c.startswith(PROBA_PREFIX)]
    rows = chunk.loc[chunk["label"].notna(), ["timestamp", PREDICTION, "label", *proba]]
    if task == "regression":
        rows = rows.assign(
            label=pd.to_numeric(rows["label"], errors="coerce"),
            prediction=pd.to_numeric(rows[PREDICTION], errors="coerce"),
        ).dropna(subset=["label", PREDICTION])
    else:
        # Categories keep a million labelled rows small.
        rows = rows.assign(
            label=rows["label"].astype(str).astype("category"),
            prediction=rows[PREDICTION].astype(str).astype("category"),
        )
    return rows


def _concat_labelled(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame()
    categorical = [
        c for c in ("label", PREDICTION) if isinstance(frames[0][c].dtype, pd.CategoricalDtype)
    ]
    # pd.concat turns categories that differ between chunks into plain objects; a union keeps
    # the labelled rows as small as they were per chunk.
    joined = pd.concat([f.drop(columns=categorical) for f in frames], ignore_index=True)
    for column in categorical:
        joined[column] = union_categoricals([f[column] for f in frames], ignore_order=True)
    return joined


def _performance(
    config: PipelineConfig, profile: ReferenceProfile, labels: pd.DataFrame
) -> list[PerformanceWindow]:
    reference = profile.performance
    if reference is None:
        return []
    settings = config.monitoring.performance
    means, stds = reference.mean, reference.std
    bands = {
        metric: (means[metric], stds[metric])
        for metric in reference.metric_chunks
        if math.isfinite(means[metric]) and math.isfinite(stds[metric])
    }
    proba = [c for c in labels.columns if c.startswith(PROBA_PREFIX)]
    classes = [c.removeprefix(PROBA_PREFIX) for c in proba]
    windows = []
    grouped = labels.groupby(pd.Grouper(key="timestamp", freq=settings.window), observed=True)
    offset = pd.tseries.frequencies.to_offset(settings.window)
    for start, rows in grouped:
        if rows.empty:
            continue
        has_proba = bool(proba) and not rows[proba].isna().to_numpy().any()
        values = _window_metrics(
            config.task,
            rows,
            proba if has_proba else [],
            classes,
            window=pd.Timestamp(start).isoformat(),
        )
        checks = {}
        for metric, value in values.items():
            if metric not in bands or not math.isfinite(value):
                continue
            mean, std = bands[metric]
            checks[metric] = MetricCheck(
                value=float(value),
                reference_mean=mean,
                reference_std=std,
                lower=mean - settings.sigma * std,
                upper=mean + settings.sigma * std,
                lower_is_better=f"test_{metric}" in LOWER_IS_BETTER,
            )
        window_start = pd.Timestamp(start).to_pydatetime()
        windows.append(
            PerformanceWindow(
                start=window_start,
                end=(pd.Timestamp(start) + offset).to_pydatetime(),
                rows=len(rows),
                metrics=checks,
            )
        )
    return windows


def _window_metrics(
    task: str, rows: pd.DataFrame, proba: Sequence[str], classes: Sequence[Any], *, window: str
) -> dict[str, float]:
    if task == "regression":
        y = rows["label"].to_numpy(dtype=float)
        predicted = rows[PREDICTION].to_numpy(dtype=float)
    else:
        # Integer codes instead of label strings: the metrics do not depend on how classes are
        # spelled, and sklearn sorts a million strings many times slower than integers.
        # Codes keep the order of `classes`, so probability column i is still class i.
        names = list(
            dict.fromkeys(
                [*classes, *map(str, rows["label"].unique()), *map(str, rows[PREDICTION].unique())]
            )
        )
        y = pd.Categorical(rows["label"], categories=names).codes
        predicted = pd.Categorical(rows[PREDICTION], categories=names).codes
        classes = list(range(len(classes)))
    with warnings.catch_warnings():
        # A window may lack some classes; sklearn warns and the value still stands.
        warnings.simplefilter("ignore")
        if proba:
            try:
                return prediction_metrics(
                    task,
                    y,
                    predicted,
                    proba=rows[list(proba)].to_numpy(dtype=float),
                    classes=classes,
                )
            except ValueError as exc:
                # Logged probabilities that are not a distribution (rows not adding up to 1)
                # cost the probability metrics of the window, not the whole monitoring run.
                logger.warning(
                    "Window %s: probability metrics skipped, the logged probabilities are "
                    "unusable: %s",
                    window,
                    str(exc).splitlines()[0],
                )
        return prediction_metrics(task, y, predicted)


def _log_run(
    client: MlflowClient, config: PipelineConfig, found: MonitorResult, *, run_id: str | None
) -> str:
    tags = {
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
    if run_id is None:
        experiment_id = _experiment_id(client, config.monitoring_experiment)
        run_name = f"{found.model_name}-v{found.model_version}-{found.window_end:%Y%m%dT%H%M%SZ}"
        run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
    try:
        client.log_batch(
            run_id,
            params=[Param(k, str(v)) for k, v in _params(config).items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        metrics = _metrics(found)
        for start in range(0, len(metrics), _BATCH):
            client.log_batch(run_id, metrics=metrics[start : start + _BATCH])
        client.log_dict(run_id, _json_report(found), REPORT_JSON)
        client.log_text(run_id, _html_report(found), REPORT_HTML)
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def _experiment_id(client: MlflowClient, name: str) -> str:
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
    drift, performance = found.drift, found.performance
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
    for step, window in enumerate(performance):
        at = int(window.start.timestamp() * 1000)
        metrics.append(Metric("perf.rows", float(window.rows), at, step))
        for name, check in window.metrics.items():
            metrics.append(Metric(metric_key("perf", name), check.value, at, step))
    return metrics


def metric_key(*parts: str) -> str:
    """An MLflow metric name built from parts that may hold characters MLflow refuses."""
    return ".".join(_METRIC_NAME_UNSAFE.sub("_", part) for part in parts)


def _json_report(found: MonitorResult) -> dict[str, Any]:
    return {
        "model": {
            "name": found.model_name,
            "version": found.model_version,
            "run_id": found.model_run_id,
        },
        "window": {"start": found.window_start.isoformat(), "end": found.window_end.isoformat()},
        "rows": found.rows,
        "labelled_rows": found.labelled_rows,
        "verdict": found.verdict,
        "drift": found.drift.to_dict(),
        "performance": {
            "degraded": found.performance_degraded,
            "windows": [w.to_dict() for w in found.performance],
        },
    }


def _html_report(found: MonitorResult) -> str:
    """One self-contained page: the verdict, a table per column, and one plot per column."""
    e = html.escape
    drift, performance = found.drift, found.performance
    name, version = found.model_name, found.model_version
    verdict = "data-set drift" if drift.dataset_drift else "no data-set drift"
    header = [
        ("Model", f"{name} v{version} (training run {found.model_run_id})"),
        ("Window", f"{found.window_start.isoformat()} to {found.window_end.isoformat()}"),
        ("Predictions", f"{found.rows} ({found.labelled_rows} labelled)"),
        (
            "Drift",
            f"{len(drift.drifted_columns)} of {len(drift.tested_columns)} columns drifted "
            f"(share {drift.drifted_share:.2f}, threshold {drift.dataset_drift_share:.2f}): "
            f"{verdict}",
        ),
        ("Verdict", found.verdict),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Drift report: {e(name)} v{e(version)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Drift report: {e(name)} v{e(version)}</h1>",
        _table(("", ""), header, header_row=False),
        "<h2>Columns</h2>",
        _table(
            (
                "column",
                "kind",
                "test",
                "rows",
                "missing",
                "PSI",
                "Wasserstein / std",
                "JS",
                "p-value",
                "drifted",
            ),
            [
                (
                    column.column,
                    column.kind,
                    column.test,
                    str(column.n),
                    str(column.missing),
                    _number(column.psi)
                    + (f" ({column.psi_band})" if column.psi_band is not None else ""),
                    _number(column.wasserstein),
                    _number(column.js),
                    _number(column.p_value),
                    "yes" if column.drifted else "no",
                )
                for column in drift.columns.values()
            ],
            flagged=[column.drifted for column in drift.columns.values()],
        ),
    ]
    if performance:
        parts.append("<h2>Performance</h2>")
        parts.append(
            _table(
                ("window start", "labelled", "metric", "value", "reference band", "degraded"),
                [
                    (
                        w.start.isoformat(),
                        str(w.rows),
                        metric,
                        _number(check.value),
                        f"[{_number(check.lower)}, {_number(check.upper)}]",
                        _judgement(check),
                    )
                    for w in performance
                    for metric, check in w.metrics.items()
                ],
                flagged=[check.degraded for w in performance for check in w.metrics.values()],
            )
        )
    parts.append("<h2>Distributions: reference vs current</h2>")
    for column in drift.columns.values():
        parts.append(f"<h3>{e(column.column)}{' (drifted)' if column.drifted else ''}</h3>")
        if column.note:
            parts.append(f"<p>{e(column.note)}</p>")
        if column.unseen:
            parts.append(f"<p>Categories never seen in training: {e(', '.join(column.unseen))}</p>")
        image = _plot(column)
        if image is not None:
            parts.append(
                f'<img alt="{e(column.column)}: reference vs current" '
                f'src="data:image/png;base64,{image}">'
            )
    parts.append("</body></html>")
    return "\n".join(parts)


_CSS = (
    "body{font-family:sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    "tr.flag td{background:#fde2e1}"
    "img{max-width:100%}"
)


def _table(
    head: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    header_row: bool = True,
    flagged: Sequence[bool] | None = None,
) -> str:
    e = html.escape
    lines = ["<table>"]
    if header_row:
        lines.append("<tr>" + "".join(f"<th>{e(cell)}</th>" for cell in head) + "</tr>")
    for index, row in enumerate(rows):
        flag = ' class="flag"' if flagged is not None and flagged[index] else ""
        lines.append(f"<tr{flag}>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>")
    lines.append("</table>")
    return "".join(lines)


def _judgement(check: MetricCheck) -> str:
    if not check.judged:
        return "not judged (no spread in the reference chunks)"
    return "yes" if check.degraded else "no"


def _number(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.4g}"


def _plot(column: ColumnDrift) -> str | None:
    """Reference and current shares as a base64 PNG (no pyplot: no global figure state)."""
    histogram = column.histogram
    if not histogram.reference and not histogram.current:
        return None
    figure = Figure(figsize=(6, 2.6), dpi=80)
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    reference = np.asarray(histogram.reference, dtype=float)
    current = np.asarray(histogram.current, dtype=float)
    if histogram.edges is not None and len(histogram.edges) == len(reference) + 1:
        edges = np.asarray(histogram.edges, dtype=float)
        axis.stairs(reference, edges, fill=True, alpha=0.4, label="reference")
        axis.stairs(current, edges, linewidth=2, label="current")
    else:
        labels = list(histogram.categories or [str(i) for i in range(len(reference))])
        positions = np.arange(len(labels))
        axis.bar(positions - 0.2, reference, width=0.4, label="reference", alpha=0.6)
        axis.bar(positions + 0.2, current, width=0.4, label="current")
        if len(labels) > 6:
            axis.set_xticks(positions, labels, rotation=30, ha="right")
        else:
            axis.set_xticks(positions, labels)
    axis.set_ylabel("share")
    axis.set_title(column.column)
    axis.legend(loc="best", fontsize="small", framealpha=0.7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
