"""Drift report: what one monitoring run found, as a JSON document and as one self-contained
HTML page (the verdict, a table per column and per performance window, one plot per column).

The page is self-contained (inline CSS, plots as data URIs) because the MLflow UI shows an
`.html` artifact in an iframe where links to other artifacts do not resolve.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.monitoring.drift import ColumnDrift
from pipeline.monitoring.findings import MonitorResult
from pipeline.monitoring.performance import MetricCheck
from pipeline.reports.render import render


def as_json(found: MonitorResult) -> dict[str, Any]:
    """The whole finding as a JSON-able dict (no NaN: the drift module writes null)."""
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


def render_html(found: MonitorResult) -> str:
    """The page; every name and value from the log or the registry is escaped."""
    drift = found.drift
    verdict = "data-set drift" if drift.dataset_drift else "no data-set drift"
    important = ", ".join(drift.important_columns) or "none"
    if not drift.importance_known:
        important += " (no importance recorded at training: every feature counts)"
    summary = [
        ("Model", f"{found.model_name} v{found.model_version} (training run {found.model_run_id})"),
        ("Window", f"{found.window_start.isoformat()} to {found.window_end.isoformat()}"),
        ("Predictions", f"{found.rows} ({found.labelled_rows} labelled)"),
        ("Drift", f"{drift.reason}: {verdict}"),
        ("Important features", important),
        ("Verdict", found.verdict),
    ]
    columns = drift.columns.values()
    return render(
        "drift_report.html.j2",
        title=f"Drift report: {found.model_name} v{found.model_version}",
        summary=summary,
        columns=[
            {"cells": _column_cells(c, c.column in drift.important_columns), "flag": c.drifted}
            for c in columns
        ],
        performance=[
            {"cells": _performance_cells(w.start.isoformat(), w.rows, m, c), "flag": c.degraded}
            for w in found.performance
            for m, c in w.metrics.items()
        ],
        distributions=[
            {
                "name": c.column,
                "drifted": c.drifted,
                "note": c.note,
                "unseen": ", ".join(c.unseen),
                "image": _plot(c),
            }
            for c in columns
        ],
    )


def _column_cells(column: ColumnDrift, important: bool) -> tuple[str, ...]:
    band = f" ({column.psi_band})" if column.psi_band is not None else ""
    return (
        column.column + (" *" if important else ""),
        column.kind,
        column.test,
        str(column.n),
        str(column.missing),
        _number(column.psi) + band,
        _number(column.wasserstein),
        _number(column.js),
        _number(column.threshold),
        _number(column.p_value),
        "yes" if column.drifted else "no",
    )


def _performance_cells(start: str, rows: int, metric: str, check: MetricCheck) -> tuple[str, ...]:
    if not check.judged:
        judgement = "not judged (no spread in the reference chunks)"
    else:
        judgement = "yes" if check.degraded else "no"
    band = f"[{_number(check.lower)}, {_number(check.upper)}]"
    return (start, str(rows), metric, _number(check.value), band, judgement)


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
