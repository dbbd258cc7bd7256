"""What one monitoring run found: the monitor step's result, which the MLflow run and the
reports are made from."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pipeline.monitoring.drift import DriftReport
from pipeline.monitoring.performance import PerformanceWindow


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
        """The data-set verdict: the share of drifted columns reached the configured share, or an
        important feature drifted strongly (``DriftReport.reason`` says which)."""
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
        drifted = self.drift.drifted_columns
        lines = [
            f"monitor run {self.run_id}: {self.model_name} v{self.model_version}, "
            f"{self.rows} predictions ({self.labelled_rows} labelled) from "
            f"{self.window_start.isoformat()} to {self.window_end.isoformat()}",
            f"drift: {len(drifted)} of {len(self.drift.columns)} columns "
            f"(share {self.drift.drifted_share:.2f})"
            + (f": {', '.join(drifted)}" if drifted else "")
            + (" -> data-set drift" if self.drift_detected else " -> no data-set drift")
            + (f" ({self.drift.reason})" if self.drift.reason else ""),
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
