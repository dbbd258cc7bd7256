"""Drift: a window of the prediction log against the reference profile, in bounded memory.

`DriftAccumulator.update` takes the window chunk by chunk and keeps only counts, so the memory
it needs does not grow with the number of rows: per numeric column about 2,000 integer counts
(plus, while the column has fewer than `small_sample_rows` values, those values for the KS
test), per categorical column one count per reference category and one for unseen ones.
`detect_drift` is the same thing for an iterable of chunks; the result does not depend on how
the window is cut into chunks (integer counts and sorted samples; only the sums behind the
tail terms of the Wasserstein distance and the current mean are float sums, equal to about
1e-15 relative).

Which statistic sets `drifted` (all thresholds from `DriftConfig`):

- numeric, at least `small_sample_rows` current values: the Wasserstein distance divided by
  the reference standard deviation, drifted at >= `wasserstein`;
- numeric, fewer values: a two-sample KS test, drifted at p <= `p_value`;
- categorical, at least `small_sample_rows` values: the Jensen-Shannon distance (base 2),
  drifted at >= `js`;
- categorical, fewer values: the chi-square test of homogeneity on the 2 x K table of
  reference and current counts (`scipy.stats.chi2_contingency`), drifted at p <= `p_value`;
- a numeric column that was constant in the reference (std 0) cannot be normalised by its
  std: with enough rows the JS distance between the shares below, at and above the constant
  decides instead (KS for small samples, as for any numeric column);
- a column with values in the reference but none (all missing) in the window: drifted, test
  "missing"; a column with no reference values: not tested ("none").

PSI (over the reference decile bins, empty bins smoothed with `psi_epsilon`) is reported for
every column with its band (stable < `psi_moderate` <= moderate < `psi_major` <= major) but
does not set the flag: it is a second opinion for the report. Its sampling noise alone is
about (bins - 1) * (1/n + 1/m), so on small windows it would raise false alarms the p-value
tests are calibrated against, and on large windows it agrees with the Wasserstein distance on
the shifts that matter.

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
- KS: the statistic is the exact sup |F_ref - F_cur| between the reference CDF above and the
  empirical CDF of the (kept) current values, evaluated on both sides of every current value
  and grid point (between them both CDFs are monotone and one is constant, so the sup is
  there). Its p-value is Smirnov's two-sample asymptotic formula with the reference's real
  size n and the current size m, `kstwo.sf(D, round(n*m / (n+m)))`, exactly what
  `scipy.stats.ks_2samp(method="asymp")` does: the reference sample's own noise is accounted
  for, which a one-sample test against the reference CDF would ignore (anti-conservative).
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
Test = Literal["wasserstein", "ks", "js", "chi2", "missing", "none"]
PsiBand = Literal["stable", "moderate", "major"]

UNSEEN = "<unseen>"
OTHER = "<other>"
_PLOT_BINS = 20
_PLOT_CATEGORIES = 30
_UNSEEN_EXAMPLES = 10
_METRIC_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. :/]")


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
    p_value: float | None  # KS (numeric, small samples) or chi-square (categorical)
    statistic: float | None  # KS D or the chi-square statistic behind p_value
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
            "columns": {name: column.to_dict() for name, column in self.columns.items()},
        }

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics: `drift.<column>.psi|wasserstein|js|p_value|drifted` and the
        data-set verdict; statistics that do not apply to a column are left out."""
        result: dict[str, float] = {
            "drift.dataset_drift": float(self.dataset_drift),
            "drift.drifted_share": self.drifted_share,
            "drift.rows": float(self.rows),
        }
        for name, column in self.columns.items():
            for stat in ("psi", "wasserstein", "js", "p_value"):
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
        columns = {name: column.result() for name, column in self._columns.items()}
        tested = [column for column in columns.values() if column.test != "none"]
        drifted = sum(column.drifted for column in tested)
        share = drifted / len(tested) if tested else 0.0
        report = DriftReport(
            columns=columns,
            rows=self._rows,
            drifted_share=share,
            dataset_drift=bool(tested) and share >= self._config.dataset_drift_share,
            dataset_drift_share=self._config.dataset_drift_share,
        )
        logger.info(
            "Drift over %d rows: %d of %d columns drifted (%s); data-set drift: %s",
            self._rows,
            drifted,
            len(tested),
            ", ".join(report.drifted_columns) or "none",
            report.dataset_drift,
        )
        return report


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
        self.sample: list[np.ndarray] | None = []

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
        if self.sample is not None:
            if self.n < self.config.small_sample_rows:
                self.sample.append(values)  # already a copy (np.sort)
            else:
                self.sample = None  # never needed again: the count only grows

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
        distance = self._wasserstein()
        normalised = distance / ref.std if ref.std > 0 else None
        js: float | None = None
        p_value: float | None = None
        statistic: float | None = None
        note = ""
        if self.sample is not None:
            statistic, p_value = self._ks()
            test: Test = "ks"
            drifted = p_value <= config.p_value
        elif normalised is None:
            js = _js_distance(self._reference_grid_shares(), self.counts / self.n)
            test = "js"
            drifted = js >= config.js
            note = "constant in the reference: JS distance of the shares below/at/above it"
        else:
            test = "wasserstein"
            drifted = normalised >= config.wasserstein
        return ColumnDrift(
            **base,
            test=test,
            psi=psi,
            psi_band=_band(psi, config),
            wasserstein=normalised,
            js=js,
            p_value=p_value,
            statistic=statistic,
            drifted=bool(drifted),
            histogram=histogram,
            note=note,
        )

    def _wasserstein(self) -> float:
        edges, counts, n = self.edges, self.counts, self.n
        after = self.at_or_below
        before_next = self.below[1:]
        cumulative = np.cumsum(counts) / n
        current_after = cumulative[1::2]  # just after each grid point
        current_before_next = cumulative[2:-1:2]  # end of each open interval
        interior = np.sum(
            np.diff(edges)
            * _mean_abs_linear(after[:-1] - current_after[:-1], before_next - current_before_next)
        )
        low = (edges[0] * counts[0] - self.low_sum) / n
        high = (self.high_sum - edges[-1] * counts[-1]) / n
        return float(max(interior + low + high, 0.0))

    def _ks(self) -> tuple[float, float]:
        assert self.sample is not None
        current = np.sort(np.concatenate(self.sample))
        m = current.size
        # Every quantile is a grid point, whose reference CDF is already known.
        points = np.concatenate([current, self.edges])
        distance = 0.0
        for right in (True, False):
            side: Literal["left", "right"] = "right" if right else "left"
            at_grid = self.at_or_below if right else self.below
            reference = np.concatenate(
                [_reference_cdf(self.quantiles, current, right=right), at_grid]
            )
            empirical = np.searchsorted(current, points, side=side) / m
            distance = max(distance, float(np.max(np.abs(reference - empirical))))
        effective = max(1.0, float(np.round(self.ref.n * m / (self.ref.n + m))))
        p_value = float(np.clip(stats.kstwo.sf(distance, effective), 0.0, 1.0))
        return distance, p_value

    def _reference_grid_shares(self) -> np.ndarray:
        """Reference mass in each bin of the counting grid (points and open intervals)."""
        boundaries = np.empty(self.counts.size + 1)
        boundaries[0] = 0.0
        boundaries[1:-1:2] = self.below
        boundaries[2:-1:2] = self.at_or_below
        boundaries[-1] = 1.0
        return np.diff(boundaries)

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


@functools.lru_cache(maxsize=256)
def _reference_grid(ref: NumericReference) -> _Grid:
    # Cached because a profile is compared with many windows (one accumulator each).
    quantiles = np.asarray(ref.quantiles, dtype=np.float64)
    decile_edges = np.asarray(ref.bin_edges[1:-1], dtype=np.float64)
    # The decile edges are fine quantiles in a profile built here; the union keeps the
    # grouping of grid counts into decile bins exact for any valid profile.
    edges = np.unique(np.concatenate([quantiles, decile_edges]))
    grid = _Grid(
        quantiles=quantiles,
        decile_edges=decile_edges,
        edges=edges,
        at_or_below=_reference_cdf(quantiles, edges, right=True),
        below=_reference_cdf(quantiles, edges, right=False),
    )
    for array in (quantiles, decile_edges, edges, grid.at_or_below, grid.below):
        array.flags.writeable = False  # shared between accumulators
    return grid


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
        statistic, p_value = _chi2(reference_counts, current_counts)
        if self.n < config.small_sample_rows:
            test: Test = "chi2"
            drifted = p_value <= config.p_value
        else:
            test = "js"
            drifted = js >= config.js
        return ColumnDrift(
            **base,
            test=test,
            psi=psi,
            psi_band=_band(psi, config),
            wasserstein=None,
            js=js,
            p_value=p_value,
            statistic=statistic,
            drifted=bool(drifted),
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
    # Rounding can leave the divergence a hair below 0 (sqrt: NaN) or the distance above 1.
    with np.errstate(invalid="ignore"):
        value = float(jensenshannon(p, q, base=2))
    return 0.0 if math.isnan(value) else min(value, 1.0)


def _chi2(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Chi-square test of homogeneity of the 2 x K table (categories seen on either side)."""
    seen = (reference + current) > 0
    if np.count_nonzero(seen) < 2:
        return 0.0, 1.0  # one category in all: nothing can differ
    result = stats.chi2_contingency(np.vstack([reference[seen], current[seen]]))
    return float(result.statistic), float(result.pvalue)


def _untested(base: dict[str, Any], histogram: Histogram) -> ColumnDrift:
    """A column no statistic applies to: no reference values (not tested), or no current
    values (drifted: the column went missing)."""
    no_statistics: dict[str, Any] = dict.fromkeys(
        ("psi", "psi_band", "wasserstein", "js", "p_value", "statistic")
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
