"""Reference profile: what monitoring knows about the training-time data, without the data.

Built once at evaluation time and logged with the model (`monitoring/reference_profile.json`),
a profile holds, per feature and for the model's prediction, just enough summary to test a
window of production traffic against it:

- numeric columns: count, mean, standard deviation, missing count, the reference decile bin
  edges (outer edges -inf/+inf) with the reference count in each bin (for PSI), and fine
  quantiles (1,000 intervals by default) that stand in for the reference sample in the
  Wasserstein distance and the KS test;
- categorical columns: the count of every category and the missing count;
- optionally the held-out performance over reference chunks (for performance monitoring);
- optionally each feature's share of the model's importance (the data-set drift verdict's
  important-feature rule); a profile without it (older ones, models without importances) is
  read as "no importance known".

The prediction is one more column named `prediction`: categorical (the label's `str`) for a
classifier, numeric for a regressor, as in the prediction log.

Values that are not finite (NaN, +-inf) count as missing: an infinite value has no place on a
histogram and would make every distance infinite.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, cast

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, DataValidationError

PREDICTION = "prediction"
FORMAT_VERSION = 1
DEFAULT_QUANTILES = 1000

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class NumericReference:
    """Summary of one numeric column at training time.

    `quantiles[k]` is the reference quantile at probability k / (len(quantiles) - 1) (numpy's
    linear method), so quantiles[0] and quantiles[-1] are the reference minimum and maximum.
    Read as the points (quantiles[k], k / K) of a piecewise-linear CDF, they are the
    reference distribution monitoring compares with. Every inner decile edge is one of the
    quantiles. `n` counts the finite values; `missing` the others.
    """

    n: int
    mean: float
    std: float
    bin_edges: tuple[float, ...]
    bin_counts: tuple[int, ...]
    quantiles: tuple[float, ...]
    missing: int

    kind: ClassVar[Literal["numeric"]] = "numeric"


@dataclass(frozen=True)
class CategoricalReference:
    """Summary of one categorical column at training time: the count of each category."""

    n: int
    counts: Mapping[str, int]
    missing: int

    kind: ClassVar[Literal["categorical"]] = "categorical"


ColumnReference = NumericReference | CategoricalReference


@dataclass(frozen=True)
class PerformanceReference:
    """The model's held-out metrics, one value per reference chunk of `chunk_rows` rows."""

    metric_chunks: Mapping[str, tuple[float, ...]]
    chunk_rows: int

    @property
    def mean(self) -> dict[str, float]:
        """Mean of each metric over the chunks (NaN chunks skipped; NaN when all are)."""
        return {name: _nan_stat(values, np.mean) for name, values in self.metric_chunks.items()}

    @property
    def std(self) -> dict[str, float]:
        """Sample standard deviation over the chunks (ddof=1; 0.0 with a single chunk)."""
        return {name: _nan_stat(values, _sample_std) for name, values in self.metric_chunks.items()}


@dataclass(frozen=True)
class ReferenceProfile:
    task: Task
    columns: Mapping[str, ColumnReference]
    performance: PerformanceReference | None = None
    importance: Mapping[str, float] | None = None  # feature -> share of the total, sums to 1

    @property
    def features(self) -> tuple[str, ...]:
        """The model's input features (every profiled column but the prediction)."""
        return tuple(name for name in self.columns if name != PREDICTION)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (no NaN or infinity: NaN is null, +-inf are "inf"/"-inf")."""
        return {
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "columns": {name: _column_to_dict(ref) for name, ref in self.columns.items()},
            "performance": None
            if self.performance is None
            else {
                "chunk_rows": self.performance.chunk_rows,
                "metric_chunks": {
                    name: [_encode_float(v) for v in values]
                    for name, values in self.performance.metric_chunks.items()
                },
            },
            "importance": None if self.importance is None else dict(self.importance),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, indent=1)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        """The inverse of `to_dict`; a malformed profile is a `DataValidationError`."""
        try:
            version = data.get("format_version")
            if version != FORMAT_VERSION:
                raise ValueError(
                    f"format_version {version!r} is not {FORMAT_VERSION}; "
                    "rebuild the profile with this version of the pipeline"
                )
            task = data["task"]
            if task not in ("classification", "regression"):
                raise ValueError(f"task {task!r} is not 'classification' or 'regression'")
            columns = {
                str(name): _column_from_dict(str(name), column)
                for name, column in data["columns"].items()
            }
            performance = data.get("performance")
            importance = data.get("importance")  # absent in profiles written before it existed
            return cls(
                task=task,
                columns=columns,
                performance=None
                if performance is None
                else PerformanceReference(
                    metric_chunks={
                        str(name): tuple(_decode_float(v) for v in values)
                        for name, values in performance["metric_chunks"].items()
                    },
                    chunk_rows=int(performance["chunk_rows"]),
                ),
                importance=None if importance is None else _importance_from_dict(importance),
            )
        except DataValidationError:
            raise
        except KeyError as exc:
            raise DataValidationError(f"reference profile: missing key {exc}") from exc
        except (TypeError, ValueError, AttributeError) as exc:
            raise DataValidationError(f"reference profile: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> ReferenceProfile:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataValidationError(f"reference profile: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise DataValidationError("reference profile: expected a JSON object at the top")
        return cls.from_dict(data)


def build_reference_profile(
    features: pd.DataFrame,
    predictions: Sequence[Any] | np.ndarray | pd.Series,
    *,
    numeric: Sequence[str],
    categorical: Sequence[str],
    task: str,
    performance: PerformanceReference | None = None,
    importance: Mapping[str, float] | pd.Series | None = None,
    n_bins: int = 10,
    n_quantiles: int = DEFAULT_QUANTILES,
    prediction_rows: np.ndarray | None = None,
) -> ReferenceProfile:
    """Profile the training-time `features` and the model's `predictions` on them.

    `prediction_rows`: the positions in `features` of the rows the model predicted, when it
    predicted a sample of them (the prediction's distribution is then that sample's); None:
    every row.

    `n_bins` is the number of PSI bins (reference deciles by default; pass the config's
    `monitoring.drift.psi_bins`); it is fixed here, at training time, for every later window.
    `importance` is the model's importance by feature, keyed by the raw feature names or by
    the fitted preprocessing's output names (`numeric__age`, `categorical__city_Paris`, as
    `get_feature_names_out` gives them); values below zero count as zero, the rest are summed
    per raw feature and stored as shares. None, or nothing above zero: no importance is
    recorded.
    """
    if task not in ("classification", "regression"):
        raise ConfigError(f"task '{task}' must be 'classification' or 'regression'")
    if not 2 <= n_bins <= n_quantiles:
        raise ConfigError(f"n_bins {n_bins} must be between 2 and n_quantiles ({n_quantiles})")
    both = sorted(set(numeric) & set(categorical))
    if both:
        raise DataValidationError(f"columns {both} are listed both as numeric and categorical")
    if PREDICTION in {*numeric, *categorical}:
        raise DataValidationError(
            f"a feature is named '{PREDICTION}', the name the profile gives the model's "
            "prediction; rename the feature"
        )
    absent = [name for name in (*numeric, *categorical) if name not in features.columns]
    if absent:
        raise DataValidationError(
            f"column(s) {absent} to profile are not in the data "
            f"(columns: {', '.join(map(str, features.columns))})"
        )
    predicted = pd.Series(np.asarray(predictions, dtype=object), name=PREDICTION)
    predicted_rows = len(features) if prediction_rows is None else len(prediction_rows)
    if len(predicted) != predicted_rows:
        raise DataValidationError(
            f"{len(predicted)} predictions for {predicted_rows} feature rows; "
            "profile the predictions made on these very rows"
        )
    columns: dict[str, ColumnReference] = {}
    for name in numeric:
        columns[name] = _numeric_reference(
            as_float(features[name], name), n_bins=n_bins, n_quantiles=n_quantiles
        )
    for name in categorical:
        columns[name] = _categorical_reference(features[name])
    if task == "classification":
        columns[PREDICTION] = _categorical_reference(predicted)
    else:
        columns[PREDICTION] = _numeric_reference(
            as_float(predicted, PREDICTION), n_bins=n_bins, n_quantiles=n_quantiles
        )
    return ReferenceProfile(
        task=cast(Task, task),
        columns=columns,
        performance=performance,
        importance=None
        if importance is None
        else _importance_shares(importance, numeric=numeric, categorical=categorical),
    )


def _importance_shares(
    importance: Mapping[str, float] | pd.Series,
    *,
    numeric: Sequence[str],
    categorical: Sequence[str],
) -> dict[str, float] | None:
    totals = dict.fromkeys((*numeric, *categorical), 0.0)
    for key, value in dict(importance).items():
        if not math.isfinite(float(value)):
            raise DataValidationError(f"feature importance of '{key}' is {value}, not a number")
        feature = _raw_feature(str(key), numeric=numeric, categorical=categorical)
        # A permutation importance below zero is noise (shuffling helped by chance), not
        # importance; magnitudes such as |coefficients| are the caller's to take.
        totals[feature] += max(float(value), 0.0)
    total = sum(totals.values())
    if total <= 0:
        return None
    return {feature: value / total for feature, value in totals.items()}


def _raw_feature(key: str, *, numeric: Sequence[str], categorical: Sequence[str]) -> str:
    """The raw feature an importance key belongs to: itself, or the feature behind a
    preprocessing output name (`<transformer>__<feature>`, one-hot `..._<category>`)."""
    names = (key, key.split("__", 1)[1]) if "__" in key else (key,)
    for name in names:
        if name in numeric or name in categorical:
            return name
    # One-hot columns: the longest categorical feature the output name starts with.
    owners = [f for f in categorical if any(n.startswith(f"{f}_") for n in names)]
    if owners:
        return max(owners, key=len)
    raise DataValidationError(
        f"feature importance names '{key}', which is none of the profiled features "
        f"({', '.join([*numeric, *categorical])}) nor a preprocessing output of one"
    )


def as_float(values: pd.Series, column: str) -> np.ndarray:
    """The column as float64 with NaN for missing values; non-numbers are a domain error."""
    try:
        return np.asarray(values.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataValidationError(
            f"column '{column}' is numeric in the reference profile but holds non-numeric "
            f"values (dtype {values.dtype}); log it as numbers, or profile it as categorical"
        ) from exc


def _numeric_reference(values: np.ndarray, *, n_bins: int, n_quantiles: int) -> NumericReference:
    finite = values[np.isfinite(values)]
    missing = int(values.size - finite.size)
    if finite.size == 0:
        return NumericReference(
            n=0,
            mean=math.nan,
            std=math.nan,
            bin_edges=(-math.inf, math.inf),
            bin_counts=(0,),
            quantiles=(),
            missing=missing,
        )
    # A multiple of n_bins, so that each decile probability i/n_bins is exactly one of the
    # fine probabilities k/K (both are the correctly rounded double of the same fraction):
    # the decile edges are then fine quantiles, and current decile counts can be read off the
    # fine-bin counts without a second pass over the data.
    intervals = n_bins * math.ceil(n_quantiles / n_bins)
    quantiles = np.quantile(finite, np.arange(intervals + 1) / intervals)
    # Interpolation may in principle break monotonicity by an ulp; the CDF must not.
    quantiles = np.maximum.accumulate(quantiles)
    step = intervals // n_bins
    inner = np.unique(quantiles[step:-step:step])
    counts = np.bincount(np.searchsorted(inner, finite, side="right"), minlength=inner.size + 1)
    return NumericReference(
        n=int(finite.size),
        mean=float(np.mean(finite)),
        std=float(np.std(finite)),
        bin_edges=(-math.inf, *inner.tolist(), math.inf),
        bin_counts=tuple(counts.tolist()),
        quantiles=tuple(quantiles.tolist()),
        missing=missing,
    )


def _categorical_reference(values: pd.Series) -> CategoricalReference:
    counts = values.value_counts(dropna=True, sort=False)
    counts = counts[counts > 0]  # a pandas Categorical lists unused categories too
    # Labels are compared as text (the prediction log stores text); 1 and "1" are one label.
    by_label: dict[str, int] = {}
    for label, count in zip(map(str, counts.index), counts.tolist(), strict=True):
        by_label[label] = by_label.get(label, 0) + int(count)
    n = sum(by_label.values())
    return CategoricalReference(
        n=n, counts=dict(sorted(by_label.items())), missing=int(values.size - n)
    )


def _nan_stat(values: tuple[float, ...], stat: Any) -> float:
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[~np.isnan(finite)]
    return float(stat(finite)) if finite.size else math.nan


def _sample_std(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if values.size > 1 else 0.0


def _encode_float(value: float) -> float | str | None:
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def _decode_float(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, str) and value in ("inf", "-inf"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _importance_from_dict(data: Mapping[str, Any]) -> dict[str, float]:
    shares = {str(name): _decode_float(value) for name, value in data.items()}
    if any(not math.isfinite(v) or v < 0 for v in shares.values()):
        raise ValueError("importance shares must be finite and >= 0")
    return shares


def _column_to_dict(ref: ColumnReference) -> dict[str, Any]:
    if isinstance(ref, NumericReference):
        return {
            "kind": "numeric",
            "n": ref.n,
            "missing": ref.missing,
            "mean": _encode_float(ref.mean),
            "std": _encode_float(ref.std),
            "bin_edges": [_encode_float(e) for e in ref.bin_edges],
            "bin_counts": list(ref.bin_counts),
            "quantiles": [_encode_float(q) for q in ref.quantiles],
        }
    return {"kind": "categorical", "n": ref.n, "missing": ref.missing, "counts": dict(ref.counts)}


def _column_from_dict(name: str, data: Mapping[str, Any]) -> ColumnReference:
    kind = data.get("kind")
    try:
        if kind == "numeric":
            ref = NumericReference(
                n=int(data["n"]),
                mean=_decode_float(data["mean"]),
                std=_decode_float(data["std"]),
                bin_edges=tuple(_decode_float(e) for e in data["bin_edges"]),
                bin_counts=tuple(int(c) for c in data["bin_counts"]),
                quantiles=tuple(_decode_float(q) for q in data["quantiles"]),
                missing=int(data["missing"]),
            )
            _check_numeric(ref)
            return ref
        if kind == "categorical":
            counts = {str(k): int(v) for k, v in data["counts"].items()}
            if sum(counts.values()) != int(data["n"]):
                raise ValueError("the category counts do not add up to n")
            return CategoricalReference(
                n=int(data["n"]), counts=counts, missing=int(data["missing"])
            )
        raise ValueError(f"kind {kind!r} is not 'numeric' or 'categorical'")
    except KeyError as exc:
        raise DataValidationError(f"reference profile: column '{name}': missing key {exc}") from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise DataValidationError(f"reference profile: column '{name}': {exc}") from exc


def _check_numeric(ref: NumericReference) -> None:
    edges = np.asarray(ref.bin_edges)
    quantiles = np.asarray(ref.quantiles)
    if len(ref.bin_counts) != len(ref.bin_edges) - 1:
        raise ValueError("bin_counts must have one count per bin (len(bin_edges) - 1)")
    if edges.size < 2 or edges[0] != -math.inf or edges[-1] != math.inf:
        raise ValueError("bin_edges must start at -inf and end at +inf")
    if np.any(np.diff(edges) <= 0):
        raise ValueError("bin_edges must be strictly increasing")
    if sum(ref.bin_counts) != ref.n:
        raise ValueError("the bin counts do not add up to n")
    if ref.n == 0:
        return
    if quantiles.size < 2 or not np.all(np.isfinite(quantiles)):
        raise ValueError("quantiles must be at least two finite numbers")
    if np.any(np.diff(quantiles) < 0):
        raise ValueError("quantiles must be non-decreasing")
    if not (math.isfinite(ref.std) and ref.std >= 0 and math.isfinite(ref.mean)):
        raise ValueError("mean and std must be finite (std >= 0)")
