"""Performance: the model's metrics per time window of labelled predictions, against the spread
of the same metrics over chunks of the held-out rows (the reference profile's performance).

Late labels (feedback) turn logged predictions into rows the evaluate step's own metric
function can score, so a window's accuracy means what the held-out accuracy meant.

The band is mean +- sigma * std * sqrt(chunk_rows / rows + 1 / chunks): the reference std was
measured over chunks of `chunk_rows` rows, and a metric's sampling noise goes as
1/sqrt(rows), so a window smaller than a chunk gets a wider band and a larger one a narrower
band; the 1 / chunks term is the uncertainty of the reference mean itself, which no window
size removes. The band is then clipped to the values the metric can take (accuracy is never
above 1, log loss never below 0).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from pandas.api.types import union_categoricals

from pipeline.contracts import PROBA_PREFIX
from pipeline.errors import ConfigError
from pipeline.metrics import metric as metric_info
from pipeline.metrics import prediction_metrics
from pipeline.monitoring.config import PerformanceMonitorConfig
from pipeline.monitoring.profile import PREDICTION, PerformanceReference

logger = logging.getLogger(__name__)

# The values each metric can take, for clipping its band; a metric not listed is unbounded.
_RANGES: dict[str, tuple[float, float]] = {
    "accuracy": (0.0, 1.0),
    "f1_macro": (0.0, 1.0),
    "roc_auc": (0.0, 1.0),
    "log_loss": (0.0, math.inf),
    "rmse": (0.0, math.inf),
    "mae": (0.0, math.inf),
    "r2": (-math.inf, 1.0),
}


@dataclass(frozen=True)
class MetricCheck:
    """One metric of one window against its reference band (mean +- sigma * std, the std
    scaled by `scale` to the window's size, clipped to the metric's range).

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
    scale: float = 1.0  # the reference std's factor for this window's size

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
            "scale": self.scale,
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


def check_window(window: str) -> None:
    """Refuse a `monitoring.performance.window` pandas cannot group by, before any reading."""
    try:
        pd.tseries.frequencies.to_offset(window)
    except ValueError as exc:
        raise ConfigError(
            f"monitoring.performance.window '{window}' is not a pandas offset alias; "
            "use one such as 1h, 6h or 1D"
        ) from exc


class LabelledRows:
    """The labelled rows of a window, chunk by chunk: only the few columns performance needs."""

    def __init__(self, task: str) -> None:
        self._task = task
        self._frames: list[pd.DataFrame] = []

    def update(self, chunk: pd.DataFrame) -> None:
        proba = [c for c in chunk.columns if c.startswith(PROBA_PREFIX)]
        rows = chunk.loc[chunk["label"].notna(), ["timestamp", PREDICTION, "label", *proba]]
        if self._task == "regression":
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
        self._frames.append(rows)

    def frame(self) -> pd.DataFrame:
        frames = self._frames
        if not frames:
            return pd.DataFrame()
        categorical = [
            c for c in ("label", PREDICTION) if isinstance(frames[0][c].dtype, pd.CategoricalDtype)
        ]
        # pd.concat turns categories that differ between chunks into plain objects; a union
        # keeps the labelled rows as small as they were per chunk.
        joined = pd.concat([f.drop(columns=categorical) for f in frames], ignore_index=True)
        for column in categorical:
            joined[column] = union_categoricals([f[column] for f in frames], ignore_order=True)
        return joined


def check_performance(
    task: str,
    settings: PerformanceMonitorConfig,
    reference: PerformanceReference | None,
    labels: pd.DataFrame,
) -> tuple[PerformanceWindow, ...]:
    """One window per `settings.window` of `labels` (from `LabelledRows`), each metric judged
    against its reference band; metrics without a finite reference band are left out."""
    if reference is None or labels.empty:
        return ()
    means, stds = reference.mean, reference.std
    bands = {
        metric: _Band(
            mean=means[metric],
            std=stds[metric],
            chunk_rows=reference.chunk_rows,
            chunks=sum(math.isfinite(v) for v in values),
        )
        for metric, values in reference.metric_chunks.items()
        if math.isfinite(means[metric]) and math.isfinite(stds[metric])
    }
    proba = [c for c in labels.columns if c.startswith(PROBA_PREFIX)]
    classes = [c.removeprefix(PROBA_PREFIX) for c in proba]
    offset = pd.tseries.frequencies.to_offset(settings.window)
    windows = []
    grouped = labels.groupby(pd.Grouper(key="timestamp", freq=settings.window), observed=True)
    for start, rows in grouped:
        if rows.empty:
            continue
        start = pd.Timestamp(start)
        has_proba = bool(proba) and not rows[proba].isna().to_numpy().any()
        values = _window_metrics(
            task, rows, proba if has_proba else [], classes, window=start.isoformat()
        )
        windows.append(
            PerformanceWindow(
                start=start.to_pydatetime(),
                end=(start + offset).to_pydatetime(),
                rows=len(rows),
                metrics=_checks(values, bands, settings.sigma, rows=len(rows)),
            )
        )
    return tuple(windows)


@dataclass(frozen=True)
class _Band:
    """What the reference knows of one metric: its mean and spread over the chunks."""

    mean: float
    std: float
    chunk_rows: int
    chunks: int


def _checks(
    values: Mapping[str, float], bands: Mapping[str, _Band], sigma: float, *, rows: int
) -> dict[str, MetricCheck]:
    checks = {}
    for metric, value in values.items():
        if metric not in bands or not math.isfinite(value):
            continue
        band = bands[metric]
        scale = math.sqrt(band.chunk_rows / rows + 1 / max(band.chunks, 1))
        low, high = _RANGES.get(metric, (-math.inf, math.inf))
        checks[metric] = MetricCheck(
            value=float(value),
            reference_mean=band.mean,
            reference_std=band.std,
            lower=max(band.mean - sigma * scale * band.std, low),
            upper=min(band.mean + sigma * scale * band.std, high),
            lower_is_better=metric_info(metric).lower_is_better,
            scale=scale,
        )
    return checks


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
        # set_categories, not pd.Categorical(values, categories=...): pandas deprecates the
        # latter when the column's categories (the whole log's) hold one this window lacks.
        y = rows["label"].cat.set_categories(names).cat.codes.to_numpy()
        predicted = rows[PREDICTION].cat.set_categories(names).cat.codes.to_numpy()
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
