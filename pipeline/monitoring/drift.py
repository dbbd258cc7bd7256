"""Drift: a window of the prediction log against the reference profile, in bounded memory.

`DriftAccumulator.update` takes the window chunk by chunk and keeps only counts, so the memory
it needs does not grow with the number of rows: per numeric column about 2,000 integer counts,
per categorical column one count per reference category and one for unseen ones.
`detect_drift` is the same thing for an iterable of chunks; the result does not depend on how
the window is cut into chunks (integer counts; only the sums behind the tail terms of the
Wasserstein distance and the current mean are float sums, equal to about 1e-15 relative).

One statistic per column, at every window size (docs/drift.md has the why and the numbers):

- numeric: the Wasserstein distance divided by the reference standard deviation;
- categorical (and a classifier's prediction): the Jensen-Shannon distance (base 2);
- a numeric column that was constant in the reference (std 0) cannot be normalised by its
  std: the JS distance between the shares below, at and above the constant decides instead;
- a column with values in the reference but none (all missing) in the window: drifted, test
  "missing"; a column with no reference values: not tested ("none").

**Calibration.** Both reference and window are samples, so even without drift the statistic
is above zero by an amount that shrinks as 1/sqrt(size), with size = n * m / (n + m) for a
reference of n values and a window of m (the two-sample effective size, as in Smirnov's KS
test). The null distribution of each column's statistic is simulated from the reference
itself: `null_samples` windows of the effective size drawn from the reference CDF (below),
each compared with it. Satterthwaite's approximation, a gamma distribution fitted by moments
to statistic**2 * size, turns those into a p-value for any statistic (squared distances of
this kind are sums of squared, roughly normal terms; the fit is exact for a scaled
chi-square). Simulations run at a power-of-two bucket of the size (at most
`_NULL_MAX_SIZE`) and are cached per (column, bucket): statistic**2 * size barely depends on
size, which is what lets one simulation serve every size in its bucket.

A column drifts when its p-value is <= `p_value` **and** its statistic reaches the effect
floor (`wasserstein` or `js`): significance alone would flag harmless differences in huge
windows against huge references. The critical value (the smallest statistic that drifts at
this window size) is reported as `threshold`.

**Data-set drift** when the share of drifted columns reaches `dataset_drift_share`, or when an
important feature drifts strongly: p-value <= `important_p_value` / (number of important
features), a Bonferroni bound that keeps the rule's own false-alarm rate at
`important_p_value`, and the effect floor reached. The important features are the fewest
top features by the importance recorded at training that hold `important_coverage` of it;
without recorded importance (older profiles, models without importances) every feature
counts as important, and the Bonferroni bound divides by all of them.

PSI (over the reference decile bins, empty bins smoothed with `psi_epsilon`) is reported for
every column with its band (stable < `psi_moderate` <= moderate < `psi_major` <= major) but
does not set the flag: it is a second opinion for the report. Its sampling noise alone is
about (bins - 1) * (1/n + 1/m), so on small windows it would raise false alarms.

How the reference is represented without its raw data: its fine quantiles q_0..q_K are read
as the piecewise-linear CDF through (q_k, k/K), i.e. mass 1/K spread evenly between
consecutive quantiles and point masses where quantiles repeat (discrete or constant
columns). Current values are counted in the bins this grid defines: one bin per distinct grid
point (values exactly equal to it) and one per open interval between grid points, plus the two
tails outside the reference range, where the sum of the values is kept too.

- Wasserstein-1 = integral of |F_ref - F_cur|. Inside each open interval F_ref is linear by
  construction and F_cur is taken as linear (its count spread evenly), so the integral of the
  difference is exact for that pair of CDFs; in the tails F_ref is 0 or 1 and the integral is
  E[(q_0 - X)+] or E[(X - q_K)+], exact from the tail's count and sum. The error against the
  raw samples is about the grid spacing times 1/K.
- Simulated windows are drawn by inverse transform: sorted uniforms counted against the
  reference CDF at the grid points give the grid counts of a sample of the reference without
  computing a single value.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import jensenshannon

from pipeline.errors import DataValidationError
from pipeline.monitoring.config import DriftConfig
from pipeline.monitoring.profile import (
    CategoricalReference,
    NumericReference,
    ReferenceProfile,
    as_float,
)

logger = logging.getLogger(__name__)

Kind = Literal["numeric", "categorical"]
Test = Literal["wasserstein", "js", "missing", "none"]
PsiBand = Literal["stable", "moderate", "major"]

UNSEEN = "<unseen>"
OTHER = "<other>"
_PLOT_BINS = 20
_PLOT_CATEGORIES = 30
_UNSEEN_EXAMPLES = 10
_METRIC_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. :/]")
# The null simulation's seed is fixed: the same window always gets the same verdict.
_NULL_SEED = 12
_NULL_MIN_SIZE = 8
_NULL_MAX_SIZE = 4096


@dataclass(frozen=True)
class Histogram:
    """Reference and current shares over the same bins, for plots.

    Numeric: `edges` are finite bin edges (len(reference) + 1), equal-width over the reference
    range, plus a bin below/above it when current values fall there; `edges` repeat when the
    reference is constant. Categorical: one label per bin in `categories` (reference
    categories, then `<unseen>` for categories the reference never had, `<other>` for the
    rest when there are many). Shares add up to 1 (current: 0 everywhere if no values).
    """

    reference: tuple[float, ...]
    current: tuple[float, ...]
    edges: tuple[float, ...] | None = None
    categories: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: Kind
    n: int  # current non-missing values
    missing: int  # current missing (or non-finite) values
    reference_n: int
    reference_missing: int
    test: Test  # the statistic that set `drifted`
    psi: float | None
    psi_band: PsiBand | None
    wasserstein: float | None  # normalised by the reference std
    js: float | None
    p_value: float | None  # of `statistic` under no drift, at this window's size
    statistic: float | None  # the value of the statistic that decided (`test`)
    threshold: float | None  # the smallest `statistic` that drifts at this window's size
    drifted: bool
    histogram: Histogram
    reference_mean: float | None = None
    current_mean: float | None = None
    reference_std: float | None = None
    current_std: float | None = None
    unseen_share: float | None = None  # categorical: share of current values never seen
    unseen: tuple[str, ...] = ()  # a few of those categories, for the report
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (NaN and infinities become null)."""
        return {
            "column": self.column,
            "kind": self.kind,
            "n": self.n,
            "missing": self.missing,
            "reference_n": self.reference_n,
            "reference_missing": self.reference_missing,
            "test": self.test,
            "drifted": self.drifted,
            "psi": _json_float(self.psi),
            "psi_band": self.psi_band,
            "wasserstein": _json_float(self.wasserstein),
            "js": _json_float(self.js),
            "p_value": _json_float(self.p_value),
            "statistic": _json_float(self.statistic),
            "threshold": _json_float(self.threshold),
            "reference_mean": _json_float(self.reference_mean),
            "current_mean": _json_float(self.current_mean),
            "reference_std": _json_float(self.reference_std),
            "current_std": _json_float(self.current_std),
            "unseen_share": _json_float(self.unseen_share),
            "unseen": list(self.unseen),
            "note": self.note,
            "histogram": {
                "edges": None
                if self.histogram.edges is None
                else [_json_float(e) for e in self.histogram.edges],
                "categories": None
                if self.histogram.categories is None
                else list(self.histogram.categories),
                "reference": [_json_float(s) for s in self.histogram.reference],
                "current": [_json_float(s) for s in self.histogram.current],
            },
        }


@dataclass(frozen=True)
class DriftReport:
    columns: Mapping[str, ColumnDrift]
    rows: int  # rows in the window
    drifted_share: float  # drifted columns / tested columns
    dataset_drift: bool
    dataset_drift_share: float = 0.5  # the threshold the verdict used
    important_columns: tuple[str, ...] = ()  # most important first
    importance_known: bool = False  # False: every feature counted as important (fallback)
    important_p_value: float = 0.0  # per important feature: strong drift at or below (0: off)
    strongly_drifted: tuple[str, ...] = ()  # important columns past `important_p_value`

    @property
    def drifted_columns(self) -> tuple[str, ...]:
        return tuple(name for name, column in self.columns.items() if column.drifted)

    @property
    def tested_columns(self) -> tuple[str, ...]:
        return tuple(name for name, column in self.columns.items() if column.test != "none")

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "dataset_drift": self.dataset_drift,
            "drifted_share": self.drifted_share,
            "dataset_drift_share": self.dataset_drift_share,
            "drifted_columns": list(self.drifted_columns),
            "important_columns": list(self.important_columns),
            "importance_known": self.importance_known,
            "important_p_value": self.important_p_value,
            "strongly_drifted": list(self.strongly_drifted),
            "reason": self.reason,
            "columns": {name: column.to_dict() for name, column in self.columns.items()},
        }

    @property
    def reason(self) -> str:
        """Why the data-set verdict is what it is, in one sentence."""
        share = (
            f"{len(self.drifted_columns)} of {len(self.tested_columns)} columns drifted "
            f"(share {self.drifted_share:.2f}, data-set drift from {self.dataset_drift_share:.2f})"
        )
        if self.strongly_drifted:
            return (
                f"{share}; important feature(s) {', '.join(self.strongly_drifted)} drifted "
                f"strongly (p-value <= {self.important_p_value:.2g})"
            )
        return share

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics: the data-set verdict and, per column,
        `drift.<column>.psi|wasserstein|js|p_value|threshold|drifted`; statistics that do not
        apply to a column are left out."""
        result: dict[str, float] = {
            "drift.dataset_drift": float(self.dataset_drift),
            "drift.drifted_share": self.drifted_share,
            "drift.rows": float(self.rows),
        }
        for name, column in self.columns.items():
            for stat in ("psi", "wasserstein", "js", "p_value", "threshold"):
                value = getattr(column, stat)
                if value is not None and math.isfinite(value):
                    result[metric_key("drift", name, stat)] = float(value)
            if column.test != "none":
                result[metric_key("drift", name, "drifted")] = float(column.drifted)
        return result


def metric_key(*parts: str) -> str:
    """An MLflow metric name built from parts (column names) that may hold characters MLflow
    refuses in a metric name."""
    return ".".join(_METRIC_NAME_UNSAFE.sub("_", part) for part in parts)


class DriftAccumulator:
    """Counts of a prediction-log window, chunk by chunk, against one reference profile."""

    def __init__(self, profile: ReferenceProfile, config: DriftConfig) -> None:
        self._config = config
        self._rows = 0
        self._important = important_features(profile, config.important_coverage)
        self._importance_known = profile.importance is not None
        self._columns: dict[str, _NumericColumn | _CategoricalColumn] = {
            name: _NumericColumn(name, ref, config)
            if isinstance(ref, NumericReference)
            else _CategoricalColumn(name, ref, config)
            for name, ref in profile.columns.items()
        }

    @property
    def rows(self) -> int:
        return self._rows

    def update(self, chunk: pd.DataFrame) -> None:
        """Add one chunk (columns: the profile's feature names and `prediction`).

        The chunk is checked and converted whole before any count changes, so a bad chunk
        leaves the accumulator as it was.
        """
        absent = [name for name in self._columns if name not in chunk.columns]
        if absent:
            raise DataValidationError(
                f"column(s) {absent} of the reference profile are missing from the prediction "
                f"log window (it has: {', '.join(map(str, chunk.columns))}); monitor the model "
                "version that logged these predictions, or log every feature it was trained on"
            )
        prepared = []
        for name, column in self._columns.items():
            values = chunk[name]
            if isinstance(values, pd.DataFrame):
                raise DataValidationError(
                    f"column '{name}' appears more than once in the prediction log window"
                )
            prepared.append((column, column.prepare(values)))
        for column, data in prepared:
            column.add(data)
        self._rows += len(chunk)

    def result(self) -> DriftReport:
        if self._rows == 0:
            raise DataValidationError(
                "the monitoring window is empty: no logged predictions to compare with the "
                "reference profile; widen the time window (--since/--until) or check that the "
                "server logs predictions to the configured monitoring.log_dir"
            )
        config = self._config
        columns = {name: column.result() for name, column in self._columns.items()}
        tested = [column for column in columns.values() if column.test != "none"]
        drifted = sum(column.drifted for column in tested)
        share = drifted / len(tested) if tested else 0.0
        # Bonferroni: the rule fires by chance with probability <= important_p_value in all.
        level = config.important_p_value / max(len(self._important), 1)
        strong = tuple(
            name
            for name in self._important
            if level > 0 and columns[name].drifted and _strongly(columns[name], level)
        )
        report = DriftReport(
            columns=columns,
            rows=self._rows,
            drifted_share=share,
            dataset_drift=bool(tested) and (share >= config.dataset_drift_share or bool(strong)),
            dataset_drift_share=config.dataset_drift_share,
            important_columns=self._important,
            importance_known=self._importance_known,
            important_p_value=level,
            strongly_drifted=strong,
        )
        logger.info(
            "Drift over %d rows: %s (%s); data-set drift: %s",
            self._rows,
            report.reason,
            ", ".join(report.drifted_columns) or "none",
            report.dataset_drift,
        )
        return report


def important_features(profile: ReferenceProfile, coverage: float) -> tuple[str, ...]:
    """The fewest features, most important first, whose importance shares add up to at least
    `coverage`; every feature when the profile records no importance."""
    importance = profile.importance
    if importance is None:
        return profile.features
    ranked = sorted(profile.features, key=lambda f: -importance.get(f, 0.0))
    shares = np.cumsum([importance.get(f, 0.0) for f in ranked])
    # A hair below `coverage` by rounding still counts as reaching it.
    count = int(np.searchsorted(shares, coverage - 1e-12)) + 1
    return tuple(ranked[: min(count, len(ranked))])


def _strongly(column: ColumnDrift, level: float) -> bool:
    """Drifted past the important-feature level (a column gone missing always is)."""
    if column.test == "missing":
        return True
    return column.p_value is not None and column.p_value <= level


def detect_drift(
    profile: ReferenceProfile, chunks: Iterable[pd.DataFrame], config: DriftConfig
) -> DriftReport:
    """Drift of a window given as chunks (a single DataFrame is one chunk)."""
    accumulator = DriftAccumulator(profile, config)
    for chunk in (chunks,) if isinstance(chunks, pd.DataFrame) else chunks:
        accumulator.update(chunk)
    return accumulator.result()


class _NumericColumn:
    def __init__(self, name: str, ref: NumericReference, config: DriftConfig) -> None:
        self.name = name
        self.ref = ref
        self.config = config
        grid = _reference_grid(ref)
        self.quantiles = grid.quantiles
        self.decile_edges = grid.decile_edges
        self.edges = grid.edges
        self.at_or_below = grid.at_or_below
        self.below = grid.below
        self.counts = np.zeros(2 * self.edges.size + 1, dtype=np.int64)
        self.low_sum = 0.0
        self.high_sum = 0.0
        self.n = 0
        self.missing = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf

    def prepare(self, values: pd.Series) -> np.ndarray:
        return as_float(values, self.name)

    def add(self, values: np.ndarray) -> None:
        finite = np.isfinite(values)
        if not finite.all():
            self.missing += int(values.size - np.count_nonzero(finite))
            values = values[finite]
        if values.size == 0:
            return
        # Sorting the chunk and locating the ~1,000 grid points in it is about five times
        # faster than locating each value among the grid points (searchsorted per value).
        values = np.sort(values)
        size = values.size
        if self.edges.size:
            below = np.searchsorted(values, self.edges, side="left")
            at_or_below = np.searchsorted(values, self.edges, side="right")
            # Even bins are the open intervals between grid points (and the two tails), odd
            # bins the grid points themselves.
            bounds = np.empty(self.counts.size + 1, dtype=np.int64)
            bounds[0] = 0
            bounds[1:-1:2] = below
            bounds[2:-1:2] = at_or_below
            bounds[-1] = size
            self.counts += np.diff(bounds)
            self.low_sum += float(np.sum(values[: below[0]]))
            self.high_sum += float(np.sum(values[at_or_below[-1] :]))
        # Chan et al.'s pairwise update: the current mean and std, one pass per chunk.
        chunk_mean = float(np.mean(values))
        chunk_m2 = float(np.sum(np.square(values - chunk_mean)))
        total = self.n + size
        delta = chunk_mean - self.mean
        self.mean += delta * size / total
        self.m2 += chunk_m2 + delta * delta * self.n * size / total
        self.n = total
        self.min = min(self.min, float(values[0]))
        self.max = max(self.max, float(values[-1]))

    def result(self) -> ColumnDrift:
        ref = self.ref
        base: dict[str, Any] = {
            "column": self.name,
            "kind": "numeric",
            "n": self.n,
            "missing": self.missing,
            "reference_n": ref.n,
            "reference_missing": ref.missing,
            "reference_mean": _finite_or_none(ref.mean),
            "reference_std": _finite_or_none(ref.std),
            "current_mean": self.mean if self.n else None,
            "current_std": math.sqrt(self.m2 / self.n) if self.n else None,
        }
        if ref.n == 0:
            return _untested(base, Histogram(reference=(), current=(), edges=()))
        histogram = self._histogram()
        if self.n == 0:
            return _untested(base, histogram)
        config = self.config
        reference_shares = np.asarray(ref.bin_counts, dtype=np.float64) / ref.n
        current_shares = _group(self.counts, self.edges, self.decile_edges) / self.n
        psi = _psi(reference_shares, current_shares, config.psi_epsilon)
        grid = _reference_grid(ref)
        distance = _wasserstein(grid, self.counts, self.low_sum, self.high_sum)
        normalised = float(distance[()]) / ref.std if ref.std > 0 else None
        js: float | None = None
        note = ""
        test: Test
        if normalised is None:
            js = _js_distance(grid.shares, self.counts / self.n)
            statistic, floor, test = js, config.js, "js"
            note = "constant in the reference: JS distance of the shares below/at/above it"
        else:
            statistic, floor, test = normalised, config.wasserstein, "wasserstein"
        size = _effective_size(ref.n, self.n)
        null = _numeric_null(ref, _bucket(size), config.null_samples)
        return ColumnDrift(
            **base,
            **_decide(statistic, null, size, floor, config),
            test=test,
            psi=psi,
            psi_band=_band(psi, config),
            wasserstein=normalised,
            js=js,
            histogram=histogram,
            note=note,
        )

    def _histogram(self) -> Histogram:
        """Equal-width bins over the reference's 1%-99% range (so that a long tail does not
        squeeze the body into one bin), plus a bin on each side for the rest when it holds
        anything; inner bins are [a, b), the last one closed."""
        q = self.quantiles
        intervals = q.size - 1
        low, high = float(q[round(0.01 * intervals)]), float(q[round(0.99 * intervals)])
        if high <= low:
            low, high = float(q[0]), float(q[-1])
        if high <= low:  # a constant reference: one bin at the constant
            edges = [low, high]
            ref_shares = [0.0, 1.0, 0.0]
            cur_shares = (
                [float(c) / self.n for c in (self.counts[0], self.counts[1], self.counts[2])]
                if self.n
                else [0.0, 0.0, 0.0]
            )
        else:
            inner = np.linspace(low, high, _PLOT_BINS + 1)
            reference = np.concatenate(
                [
                    [0.0],
                    _reference_cdf(q, inner[:-1], right=False),
                    _reference_cdf(q, inner[-1:], right=True),
                    [1.0],
                ]
            )
            current = np.concatenate(
                [
                    [0.0],
                    self._current_cdf(inner[:-1], right=False),
                    self._current_cdf(inner[-1:], right=True),
                    [self.n],
                ]
            )
            edges = [float(e) for e in inner]
            ref_shares = [float(s) for s in np.diff(reference)]
            cur_shares = [float(s) / self.n if self.n else 0.0 for s in np.diff(current)]
        # Both share lists run [below, bins..., above]; the outer bins stay only if not empty.
        if ref_shares[-1] > 0 or cur_shares[-1] > 0:
            edges.append(max(self.max, float(q[-1])))
        else:
            ref_shares.pop()
            cur_shares.pop()
        if ref_shares[0] > 0 or cur_shares[0] > 0:
            edges.insert(0, min(self.min, float(q[0])))
        else:
            ref_shares.pop(0)
            cur_shares.pop(0)
        return Histogram(reference=tuple(ref_shares), current=tuple(cur_shares), edges=tuple(edges))

    def _current_cdf(self, x: np.ndarray, *, right: bool) -> np.ndarray:
        """Current count <= x (`right`) or < x, for x inside the reference range: exact at
        grid points, linear inside an open interval of the grid (as in the Wasserstein
        distance)."""
        edges, counts = self.edges, self.counts
        cumulative = np.concatenate([[0], np.cumsum(counts)])
        index = np.searchsorted(edges, x, side="left")  # grid points below x
        clipped = np.minimum(index, edges.size - 1)
        on_point = (index < edges.size) & (edges[clipped] == x)
        # Bins 0 .. 2j-1 are below grid point j, bin 2j+1 is the point itself.
        at_point = cumulative[2 * index + 2] if right else cumulative[2 * index + 1]
        previous = np.maximum(index - 1, 0)
        width = edges[clipped] - edges[previous]
        fraction = np.divide(
            x - edges[previous], width, out=np.zeros_like(x, dtype=np.float64), where=width > 0
        )
        inside = cumulative[2 * index] + fraction * counts[np.minimum(2 * index, counts.size - 1)]
        return np.where(on_point, at_point, inside)


@dataclass(frozen=True)
class _Grid:
    """What a numeric column's counting needs from its reference, computed once."""

    quantiles: np.ndarray
    decile_edges: np.ndarray
    edges: np.ndarray  # the distinct grid points
    at_or_below: np.ndarray  # reference CDF at each grid point, P(X <= e)
    below: np.ndarray  # and P(X < e)
    boundaries: np.ndarray  # below and at_or_below interleaved: where the counting bins meet
    shares: np.ndarray  # reference mass in each counting bin (tails, points, intervals)


@functools.lru_cache(maxsize=256)
def _reference_grid(ref: NumericReference) -> _Grid:
    # Cached because a profile is compared with many windows (one accumulator each).
    quantiles = np.asarray(ref.quantiles, dtype=np.float64)
    decile_edges = np.asarray(ref.bin_edges[1:-1], dtype=np.float64)
    # The decile edges are fine quantiles in a profile built here; the union keeps the
    # grouping of grid counts into decile bins exact for any valid profile.
    edges = np.unique(np.concatenate([quantiles, decile_edges]))
    at_or_below = _reference_cdf(quantiles, edges, right=True)
    below = _reference_cdf(quantiles, edges, right=False)
    boundaries = np.empty(2 * edges.size)
    boundaries[0::2] = below
    boundaries[1::2] = at_or_below
    grid = _Grid(
        quantiles=quantiles,
        decile_edges=decile_edges,
        edges=edges,
        at_or_below=at_or_below,
        below=below,
        boundaries=boundaries,
        shares=np.diff(np.concatenate([[0.0], boundaries, [1.0]])),
    )
    for array in (quantiles, decile_edges, edges, at_or_below, below, boundaries, grid.shares):
        array.flags.writeable = False  # shared between accumulators
    return grid


def _wasserstein(
    grid: _Grid, counts: np.ndarray, low_sum: float | np.ndarray, high_sum: float | np.ndarray
) -> np.ndarray:
    """Wasserstein-1 distance between the reference and the counts (one window per row of a
    2-D `counts`; `low_sum`/`high_sum`: the sums of the values in the two tails)."""
    edges = grid.edges
    n = counts.sum(axis=-1)
    cumulative = np.cumsum(counts, axis=-1) / n[..., np.newaxis]
    current_after = cumulative[..., 1:-2:2]  # just after each grid point but the last
    current_before_next = cumulative[..., 2:-1:2]  # end of each open interval
    interior = np.sum(
        np.diff(edges)
        * _mean_abs_linear(
            grid.at_or_below[:-1] - current_after, grid.below[1:] - current_before_next
        ),
        axis=-1,
    )
    low = (edges[0] * counts[..., 0] - low_sum) / n
    high = (high_sum - edges[-1] * counts[..., -1]) / n
    return np.maximum(interior + low + high, 0.0)


@dataclass(frozen=True)
class _Null:
    """The distribution of a column's statistic T under no drift: Satterthwaite's gamma
    (shape, scale) fitted to T**2 * size; scale 0 when the simulated T never moved (a
    constant or one-category reference: any difference at all is drift)."""

    shape: float
    scale: float

    def p_value(self, statistic: float, size: float) -> float:
        if self.scale == 0:
            return 0.0 if statistic > 0 else 1.0
        return float(stats.gamma.sf(statistic**2 * size, self.shape, scale=self.scale))

    def critical(self, level: float, size: float) -> float:
        """The statistic whose p-value is `level` at this size."""
        if self.scale == 0:
            return 0.0
        return math.sqrt(float(stats.gamma.isf(level, self.shape, scale=self.scale)) / size)


def _fit_null(statistics: np.ndarray, size: float) -> _Null:
    squared = np.square(statistics) * size
    mean, variance = float(np.mean(squared)), float(np.var(squared, ddof=1))
    if mean <= 0 or variance <= 0:
        return _Null(shape=1.0, scale=0.0)
    return _Null(shape=mean * mean / variance, scale=variance / mean)


def _effective_size(reference: int, current: int) -> float:
    """The two-sample effective size: both samples' noise adds, as 1/n + 1/m."""
    return reference * current / (reference + current)


def _bucket(size: float) -> int:
    """The simulated window size standing in for `size`: a power of two <= size (within the
    simulated range), so that one simulation serves every window in the bucket."""
    exponent = math.floor(math.log2(max(size, 1.0)))
    return int(min(max(2**exponent, _NULL_MIN_SIZE), _NULL_MAX_SIZE))


@functools.lru_cache(maxsize=1024)
def _numeric_null(ref: NumericReference, size: int, replicates: int) -> _Null:
    """Windows of `size` values drawn from the reference (and a little past it), each
    compared with the reference as a real window is. Cached per (column, size bucket): every
    window of a monitoring run, and of later runs with the same reference, reuses it."""
    grid = _reference_grid(ref)
    rng = np.random.default_rng([_NULL_SEED, size])
    # A new value falls past the reference's range with probability about 1/(n + 1) on
    # each side; a small reference of a long-tailed column is exceeded by a lot, which a
    # window drawn within the range would never show.
    tail = 1.0 / (ref.n + 1)
    uniforms = np.sort(rng.random((replicates, size)), axis=1)
    # Inverse transform without computing values: sorted uniforms counted against the
    # reference CDF at the grid points give the grid counts. One searchsorted for all
    # replicates: row i is shifted into [i, i + 1).
    offsets = np.arange(replicates)[:, None]
    boundaries = tail + (1.0 - 2.0 * tail) * grid.boundaries + offsets
    positions = np.searchsorted((uniforms + offsets).ravel(), boundaries) - offsets * size
    counts = np.diff(positions, axis=1, prepend=0, append=size)
    if ref.std == 0:
        statistics = _js_distances(grid.shares, counts / size)
    else:
        # How far past: exponential with the mean excess of the outer tenth of the reference.
        low_scale, high_scale = _tail_scales(grid.quantiles)
        low, high = counts[:, 0], counts[:, -1]
        low_sum = low * grid.edges[0] - rng.gamma(low, low_scale)
        high_sum = high * grid.edges[-1] + rng.gamma(high, high_scale)
        statistics = _wasserstein(grid, counts, low_sum, high_sum) / ref.std
    return _fit_null(statistics, size)


def _tail_scales(quantiles: np.ndarray) -> tuple[float, float]:
    """Mean excess below the 10% and above the 90% reference quantile."""
    tenth = max((quantiles.size - 1) // 10, 1)
    low = quantiles[tenth] - np.mean(quantiles[: tenth + 1])
    high = np.mean(quantiles[-tenth - 1 :]) - quantiles[-tenth - 1]
    return max(float(low), 0.0), max(float(high), 0.0)  # rounding may leave -1e-17


@functools.lru_cache(maxsize=1024)
def _categorical_null(shares: tuple[float, ...], n: int, size: int, replicates: int) -> _Null:
    rng = np.random.default_rng([_NULL_SEED, size])
    probabilities = np.asarray(shares) / sum(shares)
    reference = rng.multinomial(n, probabilities, size=replicates) / n
    current = rng.multinomial(size, probabilities, size=replicates) / size
    return _fit_null(_js_distances(reference, current), _effective_size(n, size))


def _decide(
    statistic: float, null: _Null, size: float, floor: float, config: DriftConfig
) -> dict[str, Any]:
    """The calibrated fields of a tested column: p-value, threshold and the flag."""
    p_value = null.p_value(statistic, size)
    return {
        "statistic": statistic,
        "p_value": p_value,
        "threshold": max(floor, null.critical(config.p_value, size)),
        "drifted": p_value <= config.p_value and statistic >= floor,
    }


class _CategoricalColumn:
    def __init__(self, name: str, ref: CategoricalReference, config: DriftConfig) -> None:
        self.name = name
        self.ref = ref
        self.config = config
        self.categories = tuple(ref.counts)
        self.lookup = {category: i for i, category in enumerate(self.categories)}
        self.counts = np.zeros(len(self.categories), dtype=np.int64)
        self.unseen = 0
        self.examples: list[str] = []
        self.n = 0
        self.missing = 0

    def prepare(self, values: pd.Series) -> pd.Series:
        return values

    def add(self, values: pd.Series) -> None:
        present = values.value_counts(dropna=True, sort=False)
        counts = present.to_numpy(dtype=np.int64)
        total = int(counts.sum())
        self.missing += len(values) - total
        if total == 0:
            return
        self.n += total
        labels = present.index
        if not counts.all():  # a pandas Categorical lists its unused categories too
            labels, counts = labels[counts > 0], counts[counts > 0]
        # One step per distinct value of the chunk, not per row; labels compare as text, as
        # the prediction log stores them.
        names = [str(label) for label in labels.tolist()]
        position = np.fromiter(
            (self.lookup.get(name, -1) for name in names), dtype=np.intp, count=len(names)
        )
        known = position >= 0
        np.add.at(self.counts, position[known], counts[known])
        if not known.all():
            self.unseen += int(counts[~known].sum())
            for name, seen in zip(names, known.tolist(), strict=True):
                if len(self.examples) >= _UNSEEN_EXAMPLES:
                    break
                if not seen and name not in self.examples:
                    self.examples.append(name)

    def result(self) -> ColumnDrift:
        ref = self.ref
        base: dict[str, Any] = {
            "column": self.name,
            "kind": "categorical",
            "n": self.n,
            "missing": self.missing,
            "reference_n": ref.n,
            "reference_missing": ref.missing,
            "unseen_share": self.unseen / self.n if self.n else None,
            "unseen": tuple(sorted(self.examples)),
        }
        # Categories never seen in the reference are one bucket of their own: with zero
        # reference mass each adds the same to the JS divergence whether pooled or not, and
        # pooled they keep memory bounded and the chi-square table free of near-empty columns.
        reference_counts = np.append(
            np.fromiter(ref.counts.values(), dtype=np.int64, count=len(self.categories)), 0
        )
        current_counts = np.append(self.counts, self.unseen)
        if ref.n == 0:
            return _untested(base, Histogram(reference=(), current=(), categories=()))
        reference_shares = reference_counts / ref.n
        current_shares = current_counts / self.n if self.n else np.zeros_like(reference_shares)
        histogram = self._histogram(reference_shares, current_shares)
        if self.n == 0:
            return _untested(base, histogram)
        config = self.config
        psi = _psi(reference_shares, current_shares, config.psi_epsilon)
        js = _js_distance(reference_shares, current_shares)
        size = _effective_size(ref.n, self.n)
        null = _categorical_null(
            tuple(reference_shares.tolist()), ref.n, _bucket(self.n), config.null_samples
        )
        return ColumnDrift(
            **base,
            **_decide(js, null, size, config.js, config),
            test="js",
            psi=psi,
            psi_band=_band(psi, config),
            wasserstein=None,
            js=js,
            histogram=histogram,
        )

    def _histogram(self, reference: np.ndarray, current: np.ndarray) -> Histogram:
        labels = [*self.categories, UNSEEN]
        keep = np.ones(len(labels), dtype=bool)
        keep[-1] = self.unseen > 0
        if keep.sum() > _PLOT_CATEGORIES:
            order = np.argsort(-np.maximum(reference, current), kind="stable")
            keep[:] = False
            keep[order[: _PLOT_CATEGORIES - 1]] = True
        shown_ref = [float(s) for s in reference[keep]]
        shown_cur = [float(s) for s in current[keep]]
        shown = [label for label, kept in zip(labels, keep, strict=True) if kept]
        rest_ref, rest_cur = float(reference[~keep].sum()), float(current[~keep].sum())
        if rest_ref > 0 or rest_cur > 0:
            shown.append(OTHER)
            shown_ref.append(rest_ref)
            shown_cur.append(rest_cur)
        return Histogram(
            reference=tuple(shown_ref), current=tuple(shown_cur), categories=tuple(shown)
        )


def _reference_cdf(quantiles: np.ndarray, x: np.ndarray, *, right: bool) -> np.ndarray:
    """The reference CDF through (quantiles[k], k/K) at x: P(X <= x) if `right`, else P(X < x).

    With j the number of quantiles <= x (right) or < x (left), x lies in [q[j-1], q[j]) or
    (q[j-1], q[j]], so the interpolation never divides by zero, and repeated quantiles (point
    masses) give the jump on the correct side.
    """
    intervals = quantiles.size - 1
    j = np.searchsorted(quantiles, x, side="right" if right else "left")
    inside = (j > 0) & (j <= intervals)
    lower = quantiles[np.clip(j - 1, 0, intervals)]
    upper = quantiles[np.clip(j, 0, intervals)]
    width = np.where(inside, upper - lower, 1.0)
    fraction = np.where(inside, (x - lower) / width, 0.0)
    result = np.where(j > intervals, 1.0, (j - 1 + fraction) / intervals)
    return np.where(j == 0, 0.0, result)


def _mean_abs_linear(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Mean of |f| over [0, 1] for f linear from `start` to `end` (two triangles on a sign
    change)."""
    magnitude = np.abs(start) + np.abs(end)
    same_sign = start * end >= 0
    crossing = np.divide(
        np.square(start) + np.square(end),
        2 * magnitude,
        out=np.zeros_like(magnitude),
        where=~same_sign,
    )
    return np.where(same_sign, magnitude / 2, crossing)


def _group(counts: np.ndarray, edges: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
    """Counts of the grid bins summed into the bins [b_i, b_i+1) of `boundaries` (grid points;
    outer bins open to -inf/+inf)."""
    position = np.searchsorted(edges, boundaries)
    cuts = np.concatenate([[0], 2 * position + 1, [counts.size]])
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    return np.diff(cumulative[cuts]).astype(np.float64)


def _psi(reference: np.ndarray, current: np.ndarray, epsilon: float) -> float:
    reference = np.where(reference > 0, reference, epsilon)
    current = np.where(current > 0, current, epsilon)
    return float(np.sum((current - reference) * np.log(current / reference)))


def _band(psi: float, config: DriftConfig) -> PsiBand:
    if psi >= config.psi_major:
        return "major"
    if psi >= config.psi_moderate:
        return "moderate"
    return "stable"


def _js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance, base 2 (0 identical, 1 disjoint); inputs are shares."""
    return float(_js_distances(p, q[np.newaxis])[0])


def _js_distances(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The JS distance between `p` and each row of `q`."""
    # Rounding can leave the divergence a hair below 0 (sqrt: NaN) or the distance above 1.
    with np.errstate(invalid="ignore"):
        values = jensenshannon(np.broadcast_to(p, q.shape), q, base=2, axis=1)
    return np.minimum(np.nan_to_num(values, nan=0.0), 1.0)


def _untested(base: dict[str, Any], histogram: Histogram) -> ColumnDrift:
    """A column no statistic applies to: no reference values (not tested), or no current
    values (drifted: the column went missing)."""
    no_statistics: dict[str, Any] = dict.fromkeys(
        ("psi", "psi_band", "wasserstein", "js", "p_value", "statistic", "threshold")
    )
    if base["reference_n"] == 0:
        return ColumnDrift(
            **base,
            **no_statistics,
            test="none",
            drifted=False,
            histogram=histogram,
            note="the reference has no values in this column: nothing to compare",
        )
    return ColumnDrift(
        **base,
        **no_statistics,
        test="missing",
        drifted=True,
        histogram=histogram,
        note=f"no values in this window ({base['missing']} missing)",
    )


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _json_float(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)
