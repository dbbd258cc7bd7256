"""Monitoring's settings (the `monitoring:` section of a pipeline config): drift thresholds,
performance bands and where the prediction log lives. Validated with the rest of the config
by :mod:`pipeline.config`, which re-exports these classes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.contracts import PREDICTION_LOG_DIR


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DriftConfig(_Strict):
    """Thresholds of the drift tests; nothing downstream hard-codes one.

    A column drifts when its statistic is both unlikely under no drift at the window's size
    (calibrated p-value <= `p_value`) and large enough to matter (>= `wasserstein` or `js`).
    docs/drift.md explains each knob and how the thresholds scale with the window's size.
    """

    wasserstein: float = Field(
        default=0.1, gt=0, description="smallest Wasserstein distance / reference std that drifts"
    )
    psi_moderate: float = Field(default=0.1, gt=0, description="PSI band: moderate from here")
    psi_major: float = Field(default=0.25, gt=0, description="PSI band: major from here")
    js: float = Field(
        default=0.1, gt=0, le=1, description="smallest Jensen-Shannon distance that drifts"
    )
    p_value: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="per column: drift at or below this calibrated p-value",
    )
    null_samples: int = Field(
        default=200,
        ge=20,
        le=10_000,
        description="windows simulated from the reference per column and window-size bucket",
    )
    dataset_drift_share: float = Field(
        default=0.5, gt=0, le=1, description="share of drifted columns that means data-set drift"
    )
    important_coverage: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="important features: the fewest top ones holding this share of importance",
    )
    important_p_value: float = Field(
        default=0.001,
        ge=0,
        lt=1,
        description="data-set drift when an important feature's p-value is at or below this "
        "divided by their number (0: off)",
    )
    psi_bins: int = Field(default=10, ge=2, le=100)
    psi_epsilon: float = Field(default=1e-4, gt=0, lt=0.1, description="smoothing of empty bins")

    @model_validator(mode="after")
    def _ordered_bands(self) -> DriftConfig:
        if self.psi_major <= self.psi_moderate:
            raise ValueError("monitoring.drift.psi_major must be above psi_moderate")
        return self


class PerformanceMonitorConfig(_Strict):
    sigma: float = Field(
        default=3.0,
        gt=0,
        description="flag a window outside reference mean +- sigma * std (std scaled to the "
        "window's size)",
    )
    window: str = Field(default="1D", min_length=1, description="pandas offset alias, e.g. 1h, 1D")
    reference_chunks: int = Field(
        default=10, ge=2, description="held-out rows are split into this many reference chunks"
    )


class MonitoringConfig(_Strict):
    log_dir: str = Field(default=PREDICTION_LOG_DIR, min_length=1)
    experiment: str | None = Field(default=None, description="default: <experiment>-monitoring")
    chunk_rows: int = Field(default=200_000, ge=1, description="rows read per streaming chunk")
    drift: DriftConfig = DriftConfig()
    performance: PerformanceMonitorConfig = PerformanceMonitorConfig()
